"""One adapter per MLLM family: prompt, image-token grid, Q/K/V capture, truncated prefill."""

from part_point_ros.backbones.base import BackboneAdapter, BackboneInfo, Capture
from part_point_ros.backbones.registry import REGISTRY, load_backbone, parse_dtype

__all__ = ["REGISTRY", "BackboneAdapter", "BackboneInfo", "Capture", "load_backbone", "parse_dtype"]
