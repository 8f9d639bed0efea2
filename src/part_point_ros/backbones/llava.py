"""LLaVA-1.5 (``llava-hf/llava-1.5-*-hf``): CLIP ViT-L/14-336 + Llama/Vicuna, 24x24 image tokens.

Field of view. The hub's processor for LLaVA-1.5 is CLIP's: shortest edge -> 336, then a 336x336
centre crop, which throws away the sides of every non-square frame (12.5 % of each side of a
640x480 camera frame, 22 % of each side of 1280x720). LLaVA-1.5 itself was trained and evaluated
with ``image_aspect_ratio = "pad"``: the frame padded to a square in the processor's mean colour,
then resized. That is this adapter's default (``crop=False``), so every pixel reaches the model
and a part at the frame's edge can still be pointed at; ``crop=True`` keeps the hub's centre crop
(``field_of_view`` then says what is cut).

What is loaded: the vision tower only up to the layer LLaVA reads (``vision_feature_layer``, -2 on
every LLaVA: the last CLIP layer's output is never used), the decoder only up to ``max_layer``
and, with ``lm_head=False``, no language-model head (``hf_adapter.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from part_point_ros.backbones.hf_adapter import HFAdapter, supported_hint
from part_point_ros.errors import UnknownBackboneError
from part_point_ros.types import ImageGrid

# Vision towers whose output is a fixed square grid of patches (plus CLS for CLIP): what this adapter maps.
VISION_TOWERS = ("clip_vision_model", "siglip_vision_model")


def _size_value(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def pads_to_square(image_processor: Any) -> bool:
    """True for LLaVA's processor with ``do_pad``: pad to a square first. (``do_pad`` on other
    processors means padding AFTER the crop to ``pad_size``, which this family never sets.)"""
    return bool(getattr(image_processor, "do_pad", False)) and hasattr(image_processor, "pad_to_square")


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
    if pads_to_square(image_processor):
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


def pad_to_square_processor(image_processor: Any) -> Any:
    """LLaVA's own image processor with ``do_pad=True`` and every other setting of ``image_processor``
    (a CLIP processor has no pad step; LLaVA's pads with ``image_mean`` as the background colour)."""
    import transformers

    if pads_to_square(image_processor):
        return image_processor
    if hasattr(image_processor, "pad_to_square"):  # already LLaVA's: switch the pad on
        image_processor.do_pad = True
        return image_processor
    pil = getattr(image_processor, "backend", "pil") == "pil"
    cls = transformers.LlavaImageProcessorPil if pil else transformers.LlavaImageProcessor
    keys = (
        "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
        "do_normalize", "image_mean", "image_std", "do_convert_rgb",
    )  # fmt: skip
    settings = {k: v for k, v in image_processor.to_dict().items() if k in keys and v is not None}
    return cls(**settings, do_pad=True)


def trim_vision_tower(config: Any) -> None:
    """Cut ``config.vision_config`` to the layers LLaVA reads, before the model is built.

    LLaVA takes ``hidden_states[vision_feature_layer]`` of the vision tower (hidden_states[0] is the
    embedding output, hidden_states[i] the output of layer i - 1): layers past the deepest selected
    one never influence the model. The index is rewritten as a non-negative one, which selects the
    same tensor of the shorter tower (its last hidden state: CLIP's and SigLIP's towers return it
    before any final norm, ``tie_last_hidden_states=False``).
    """
    vision = config.vision_config
    n = vision.num_hidden_layers
    layers = config.vision_feature_layer
    wanted = [layers] if isinstance(layers, int) else list(layers)
    if any(not -(n + 1) <= i <= n for i in wanted):
        raise UnknownBackboneError(f"vision_feature_layer {layers} is outside the {n}-layer vision tower")
    resolved = [i % (n + 1) for i in wanted]  # hidden_states has n + 1 entries
    vision.num_hidden_layers = max(resolved)  # layers 0..max-1 produce hidden_states[max]
    config.vision_feature_layer = resolved[0] if isinstance(layers, int) else resolved


def check_vision_tower(name_or_path: str, config: Any, family: str) -> None:
    """A vision tower this family's grid code does not know -> one UnknownBackboneError line."""
    kind = getattr(config.vision_config, "model_type", None)
    if kind not in VISION_TOWERS:
        raise UnknownBackboneError(
            f"{name_or_path!r} is a {config.model_type!r} checkpoint with a {kind!r} vision tower; "
            f"part-point supports {family} with {' or '.join(VISION_TOWERS)} towers only (a Pixtral "
            f"LLaVA cuts the image into variable-size rows of patches it does not map); {supported_hint()}"
        )


class LlavaAdapter(HFAdapter):
    """LLaVA-1.5. Prompt ``USER: <image>\\n{instruction} ASSISTANT:``; grid = CLIP patches minus CLS."""

    family = "llava"
    model_types = ("llava",)
    crop_hint = (
        "load the backbone with crop=False to pad the frame to a square instead (LLaVA-1.5's own setting)"
    )

    @classmethod
    def _check_config(cls, name_or_path: str, config: Any) -> None:
        check_vision_tower(name_or_path, config, "LLaVA-1.5")

    @classmethod
    def _trim_config(cls, config: Any) -> None:
        trim_vision_tower(config)

    @classmethod
    def _model_class(cls) -> type:
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    @classmethod
    def _load_processor(cls, name_or_path: str) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(name_or_path)

    def _set_crop(self, crop: bool) -> None:
        ip = self.processor.image_processor
        if crop:
            if pads_to_square(ip):
                ip.do_pad = False  # the processor's resize and centre crop alone
        else:
            self.processor.image_processor = pad_to_square_processor(ip)

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
