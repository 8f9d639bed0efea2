"""The tiny backbone description and HeadConfig shared by the heads and training tests."""

from __future__ import annotations

from typing import Any

from part_point_ros.heads import HeadConfig


def tiny_backbone(head_dim: int = 8, **changes: Any) -> dict[str, Any]:
    """HeadConfig.backbone of a tiny LLaVA (4 layers x 4 heads, 2 KV heads), with ``changes``."""
    base = {"name": "tiny", "family": "llava", "num_layers": 4, "num_heads": 4, "num_kv_heads": 2}
    return base | {"head_dim": head_dim} | changes


def tiny_head_config(head_dim: int = 8, **fields: Any) -> HeadConfig:
    """A HeadConfig on ``tiny_backbone(head_dim)``: heads L1H0 + L2H3 and d_head = head_dim unless
    ``fields`` say otherwise."""
    return HeadConfig(
        backbone=tiny_backbone(head_dim), **({"heads": [[1, 0], [2, 3]], "d_head": head_dim} | fields)
    )
