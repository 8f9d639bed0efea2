"""LLaVA-1.5 (``llava-hf/llava-1.5-*-hf``): CLIP ViT-L/14-336 + Llama/Vicuna, 24x24 image tokens."""

from __future__ import annotations

from typing import Any

import torch

from part_point_ros.backbones.hf_adapter import HFAdapter
from part_point_ros.types import ImageGrid


def _size_value(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def clip_geometry(
    image_processor: Any, orig_size: tuple[int, int]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, offset) of a CLIP-style processor: [pad to square] -> resize -> [centre crop].

    Mirrors transformers' arithmetic: the pad puts the image at ``(side - w) // 2``; a
    ``shortest_edge`` resize makes the long side ``int(edge * long / short)``; the crop starts at
    ``(h - crop_h) // 2``. A resize maps pixel edges linearly: ``x' = x * new_w / w``.
    """
    w, h = orig_size
    ox = oy = 0.0
    if getattr(image_processor, "do_pad", False):  # LlavaImageProcessor(do_pad=True): pad to square first
        side = max(w, h)
        ox, oy = float((side - w) // 2), float((side - h) // 2)
        w = h = side
    sx = sy = 1.0
    if image_processor.do_resize:
        size = image_processor.size
        edge = _size_value(size, "shortest_edge")
        if edge is not None:
            short, long = min(w, h), max(w, h)
            new_long = int(edge * long / short)
            nw, nh = (edge, new_long) if w <= h else (new_long, edge)
        else:
            nw, nh = _size_value(size, "width"), _size_value(size, "height")
        sx, sy = nw / w, nh / h
        ox, oy, w, h = ox * sx, oy * sy, nw, nh
    if image_processor.do_center_crop:
        cw, ch = (
            _size_value(image_processor.crop_size, "width"),
            _size_value(image_processor.crop_size, "height"),
        )
        if cw > w or ch > h:
            raise ValueError(f"centre crop {cw}x{ch} larger than the resized {w}x{h} image is not supported")
        ox, oy = ox - (w - cw) // 2, oy - (h - ch) // 2
    return (sx, sy), (ox, oy)


class LlavaAdapter(HFAdapter):
    """LLaVA-1.5. Prompt ``USER: <image>\\n{instruction} ASSISTANT:``; grid = CLIP patches minus CLS."""

    family = "llava"
    model_types = ("llava",)

    @classmethod
    def _model_class(cls) -> type:
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    @classmethod
    def _load_processor(cls, name_or_path: str) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(name_or_path)

    def build_prompt(self, instruction: str) -> str:
        return f"USER: <image>\n{instruction.strip()} ASSISTANT:"

    def _grid(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor]) -> ImageGrid:
        ph, pw = inputs["pixel_values"].shape[-2:]  # (1, 3, H, W)
        patch = self.model.config.vision_config.patch_size
        scale, offset = clip_geometry(self.processor.image_processor, image_size)
        return ImageGrid(
            rows=ph // patch,
            cols=pw // patch,
            orig_size=image_size,
            processed_size=(int(pw), int(ph)),
            scale=scale,
            offset=offset,
        )
