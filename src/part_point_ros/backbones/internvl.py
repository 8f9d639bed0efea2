"""InternVL3 (``OpenGVLab/InternVL3-*-hf``): InternViT, pixel-shuffle MLP projector, Qwen2.5 decoder.

What the adapter relies on (transformers 5, ``models/internvl`` and ``models/got_ocr2``):

- Views: the image processor (GotOcr2's, ``crop_to_patches``, which ``InternVLProcessor`` turns on by
  default) picks the tile grid ``cols x rows`` (1 <= cols*rows <= ``max_patches``) whose aspect ratio is
  closest to the frame's (``get_optimal_tiled_canvas``), resizes the WHOLE frame to ``cols*T x rows*T``
  (T = ``size``, 448) without keeping its aspect ratio (no crop, no pad: a mosaic stretches the frame),
  cuts that into ``cols*rows`` tiles, row-major, and, when there is more than one tile, adds a
  thumbnail: the whole frame resized to ``T x T``. ``pixel_values`` is (views, 3, T, T), tiles first.
- Tokens: InternViT cuts a view into (T/14)^2 patches (CLS dropped, ``vision_feature_select_strategy``
  "default"); pixel shuffle (``downsample_ratio`` 0.5) folds each 2x2 block of patches into one token,
  so a view gives ``image_seq_length`` = (T/28)^2 tokens, row-major over the blocks (the two permutes of
  ``InternVLModel.pixel_shuffle`` cancel). Prompt: the chat template writes one ``<IMG_CONTEXT>``; the
  processor makes it ``<img>`` + ``<IMG_CONTEXT>`` x (views * image_seq_length) + ``</img>``.
- Decoder: ``model.model.language_model`` (Qwen2), 1D RoPE, full attention, 1/sqrt(head_dim).

Grid the methods read: the LAST view, the thumbnail (the single view when the frame fits one tile). It
sees the whole frame once, always as a 16x16 grid for T = 448, and it is exactly the view POP calibrated
InternVL3-8B's localization heads on (one 448x448 resize of the whole frame, 16x16 tokens;
``seantsai1105/POP``, ``model/vlm_modules/internvl3/internvl3.py``), so the shipped heads read what they
were chosen on. The tiles are in the prompt as the model expects them, and ``ImageGrid.token_boxes``
maps every one of their tokens too (a finer map than the thumbnail, with a grid that changes with the
frame's aspect ratio). With ``crop_to_patches=False`` the processor makes that one view only.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from typing import Any

import numpy as np
import torch

from part_point_ros.backbones.hf_adapter import HFAdapter
from part_point_ros.types import ImageGrid


@cache
def internvl_image_text_processor_class() -> type:
    """``InternVLProcessor`` for images and text only: its video processor needs torchvision, which
    images and text never use (same image processor, same token expansion); saves as ``InternVLProcessor``."""
    from transformers import InternVLProcessor
    from transformers.processing_utils import ProcessorMixin

    class InternVLImageTextProcessor(InternVLProcessor):
        """``InternVLProcessor`` without the video processor."""

        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            image_seq_length: int = 256,
            chat_template: Any = None,
            **kwargs: Any,
        ) -> None:
            self.image_seq_length = image_seq_length
            self.start_image_token = tokenizer.start_image_token
            self.end_image_token = tokenizer.end_image_token
            self.start_image_token_id = tokenizer.start_image_token_id
            self.end_image_token_id = tokenizer.end_image_token_id
            self.image_token = tokenizer.context_image_token
            self.image_token_id = tokenizer.context_image_token_id
            self.video_token = tokenizer.video_token
            self.multimodal_pattern = re.compile(  # InternVLProcessor.__call__ orders the visuals with it
                f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})"
            )
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["processor_class"] = "InternVLProcessor"
            return out

    return InternVLImageTextProcessor


def _size_hw(size: Any) -> tuple[int, int]:
    """(height, width) of a processor ``size`` (dict or SizeDict)."""
    if isinstance(size, dict):
        return int(size["height"]), int(size["width"])
    return int(size.height), int(size.width)


def tile_layout(
    image_processor: Any, images_kwargs: dict[str, Any], image_size: tuple[int, int]
) -> tuple[int, int]:
    """(cols, rows) of the tile mosaic the processor makes of a frame of ``image_size`` (width, height):
    its own ``get_optimal_tiled_canvas`` with the settings the processor call uses; (1, 1): one view."""
    w, h = image_size
    crop = images_kwargs.get("crop_to_patches", image_processor.crop_to_patches)
    min_patches = images_kwargs.get("min_patches", image_processor.min_patches)
    max_patches = images_kwargs.get("max_patches", image_processor.max_patches)
    if not crop or max_patches <= 1:
        return 1, 1
    module = sys.modules[type(image_processor).__module__]
    canvas = getattr(module, "get_optimal_tiled_canvas", None)
    if canvas is None:  # an image processor class of its own: GotOcr2's function is the one InternVL uses
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        canvas = get_optimal_tiled_canvas
    tile = _size_hw(images_kwargs.get("size") or image_processor.size)
    cols, rows = canvas((h, w), tile, min_patches, max_patches)
    return int(cols), int(rows)


def view_token_boxes(
    image_size: tuple[int, int], tile: tuple[int, int], cols: int, rows: int, side: int
) -> np.ndarray:
    """(views * side^2, 4) original-pixel boxes of every image token, in prompt order: the ``cols*rows``
    tiles row-major, then the thumbnail (only when there is more than one tile); within a view the
    ``side x side`` tokens row-major. A resize maps pixel edges linearly: x_orig = x_resized * w / W."""
    w, h = image_size
    th, tw = tile
    cell = np.arange(side + 1, dtype=np.float64)  # token edges within a view, in tokens
    views: list[tuple[float, float, float, float]] = []  # (x origin, y origin, x scale, y scale) per view
    for index in range(cols * rows):
        col, row = index % cols, index // cols
        views.append((col * tw, row * th, w / (cols * tw), h / (rows * th)))
    if cols * rows > 1:
        views.append((0.0, 0.0, w / tw, h / th))  # thumbnail
    boxes = []
    for ox, oy, sx, sy in views:
        xs = (ox + cell * tw / side) * sx  # (side + 1,) token edges in original pixels
        ys = (oy + cell * th / side) * sy
        x0, y0 = np.meshgrid(xs[:-1], ys[:-1])  # (side, side) each, [row, col]
        x1, y1 = np.meshgrid(xs[1:], ys[1:])
        boxes.append(np.stack([x0, y0, x1, y1], axis=-1).reshape(side * side, 4))  # (side, side, 4) -> (P, 4)
    return np.concatenate(boxes)


class InternVLAdapter(HFAdapter):
    """InternVL3 (``InternVLForConditionalGeneration``). Grid: the thumbnail's tokens (module docstring)."""

    family = "internvl"
    model_types = ("internvl",)

    @classmethod
    def _model_class(cls) -> type:
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration

    @classmethod
    def _load_processor(cls, name_or_path: str) -> Any:
        from transformers import AutoProcessor
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            return AutoProcessor.from_pretrained(name_or_path)
        return internvl_image_text_processor_class().from_pretrained(name_or_path)

    def build_prompt(self, instruction: str) -> str:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction.strip()}]}
        ]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @property
    def tokens_per_view(self) -> int:
        return int(self.processor.image_seq_length)

    def image_token_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The last view's ``image_seq_length`` tokens (the thumbnail), row-major."""
        every = torch.nonzero(input_ids == self.image_token_id).flatten()
        n = self.tokens_per_view
        if every.numel() == 0 or every.numel() % n:
            raise ValueError(f"{every.numel()} image tokens in the prompt: not whole views of {n} tokens")
        return every[-n:]

    def _grid(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor]) -> ImageGrid:
        ip = self.processor.image_processor
        images_kwargs = self.processor._merge_kwargs(
            tokenizer_init_kwargs=self.processor.tokenizer.init_kwargs
        )["images_kwargs"]
        cols, rows = tile_layout(ip, images_kwargs, image_size)
        views = cols * rows + (1 if cols * rows > 1 else 0)
        n_views, _, th, tw = inputs["pixel_values"].shape  # (views, 3, T, T)
        if n_views != views:
            raise ValueError(
                f"the processor made {n_views} views of a {image_size[0]}x{image_size[1]} frame; its tile "
                f"layout {cols}x{rows} gives {views}"
            )
        side = round(self.tokens_per_view**0.5)
        patch = self.model.config.vision_config.patch_size
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        if side * side != self.tokens_per_view or th // patch * self.model.config.downsample_ratio != side:
            raise ValueError(
                f"image_seq_length {self.tokens_per_view} is not ({th} / {patch} * "
                f"{self.model.config.downsample_ratio})^2 tokens per view"
            )
        w, h = image_size
        what = "thumbnail" if views > 1 else "single view"
        return ImageGrid(
            rows=side,
            cols=side,
            orig_size=image_size,
            processed_size=(int(tw), int(th)),
            scale=(tw / w, th / h),
            offset=(0.0, 0.0),
            token_boxes=view_token_boxes(image_size, (int(th), int(tw)), cols, rows, side),
            source=(
                f"{what}, {side}x{side} of {views} views ({cols}x{rows} tiles"
                f"{' + thumbnail' if views > 1 else ''}): the whole frame once, POP's calibration view"
            ),
        )

    def prompt_ids(self, instruction: str, n_image_tokens: int) -> torch.Tensor:
        """(S,) the processor's ids of the prompt for ``instruction`` with ``n_image_tokens`` context
        tokens (whole views): the template's one placeholder becomes the processor's own replacement,
        ``<img>`` + context tokens + ``</img>``, all special tokens, so the text around it tokenizes alike."""
        tokenizer = self.processor.tokenizer
        n_views, rest = divmod(n_image_tokens, self.tokens_per_view)
        if rest or n_views < 1:
            raise ValueError(f"{n_image_tokens} image tokens are not whole views of {self.tokens_per_view}")
        block = self.processor.replace_image_token({"num_patches": [n_views]}, 0)
        block_ids = tokenizer(block, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        ids = tokenizer(self.build_prompt(instruction), return_tensors="pt")["input_ids"][0]
        at = torch.nonzero(ids == self.image_token_id).flatten()
        if at.numel() != 1:
            raise ValueError(f"expected one image placeholder in the template, found {at.numel()}")
        i = int(at[0])
        return torch.cat([ids[:i], block_ids, ids[i + 1 :]]).to(self.device)
