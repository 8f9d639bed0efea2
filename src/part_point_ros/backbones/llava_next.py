"""LLaVA-NeXT (``llava_next``: ``llava-hf/llava-v1.6-*``) and LLaVA-OneVision (``llava_onevision``):
"anyres" tiling, one base image plus high-resolution tiles.

What the processor makes of one frame (w x h), transformers' own arithmetic:
  - the base image: the whole frame resized to the vision tower's input S x S (squashed: no crop,
    no pad), ``g x g`` tokens (g = S // patch: 24 for NeXT's CLIP-336, 27 for OneVision's SigLIP-384,
    whose 27 x 14 = 378 px leave the last 6 px of every 384 px image unseen);
  - the tiles: the frame resized with its aspect ratio kept into the best "pinpoint" resolution
    (H*, W*) (``select_best_resolution``), padded with black to it, centred, cut into
    (H*/S) x (W*/S) tiles of S x S px, ``g x g`` tokens each.
The model (``pack_image_features``) puts the base's g*g tokens first, row-major, then the tiles'
tokens as ONE (H*/S * g) x (W*/S * g) grid, minus the token rows (or columns) that lie in the
black padding (``unpad_image``: the same number on both sides, by its own rounding); OneVision
shrinks that grid bilinearly when it holds more than ``max_num_patches * g * g`` tokens
(``vision_aspect_ratio = "anyres_max_9"``); an ``image_newline`` token ends every row.

The grid the methods (a2p, attention) read is the BASE image's g x g. Why:
  - it sees the whole frame exactly once: every pixel, no padding, no unpad rounding;
  - its size is the same for every frame size and aspect ratio, as LLaVA-1.5's is: heads are
    selected, maps smoothed and the a2p decoder trained on one fixed grid; the high-res grid changes
    shape with the aspect ratio (and, on OneVision, is resampled);
  - the tiles stay in the prompt (the model sees them, the last token attends to them) and
    ``ImageGrid.token_boxes`` maps every image token of the prompt (base, tiles, newlines as NaN
    rows) to its box in original pixels, so a method can read them too.
``image_token_positions`` returns the base tokens, row-major: the first g*g image tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from part_point_ros.backbones.hf_adapter import HFAdapter
from part_point_ros.backbones.llava import check_vision_tower, trim_vision_tower
from part_point_ros.types import ImageGrid

# LLaVA-1.5's conversation format, for a checkpoint whose processor has no chat template
FALLBACK_PROMPT = "USER: <image>\n{instruction} ASSISTANT:"


@dataclass(frozen=True)
class AnyresLayout:
    """Where the processor and ``pack_image_features`` put one frame's pixels and tokens."""

    frame: tuple[int, int]  # (w, h) of the original frame
    tile: int  # S: processed pixels of the base image and of each tile (the vision tower's image_size)
    patch: int  # P: pixels of one vision patch
    best: tuple[int, int]  # (H*, W*): the pinpoint resolution the tiles are cut from
    resized: tuple[int, int]  # (h', w'): the frame resized into it, aspect ratio kept
    paste: tuple[int, int]  # (top, left): the black padding before the resized frame
    kept_rows: tuple[int, int]  # [r0, r1): token rows of the tiles' grid left after unpadding
    kept_cols: tuple[int, int]  # [c0, c1)
    out: tuple[int, int]  # (rows, cols) of the tiles' grid in the prompt (OneVision may shrink it)

    @property
    def g(self) -> int:
        """Tokens per side of the base image and of each tile."""
        return self.tile // self.patch

    @property
    def n_tokens(self) -> int:
        """Image tokens of the prompt: base, tiles' rows, one newline per row."""
        return self.g * self.g + self.out[0] * (self.out[1] + 1)


def select_best_resolution(size_hw: tuple[int, int], pinpoints: list) -> tuple[int, int]:
    """transformers' ``select_best_resolution``: the pinpoint (H, W) showing the most of the frame at
    the highest resolution, least padding on ties."""
    from transformers.image_processing_utils import select_best_resolution as best

    return tuple(int(v) for v in best(size_hw, pinpoints))


def anyres_layout(
    frame: tuple[int, int], *, tile: int, patch: int, pinpoints: list, max_num_patches: int | None
) -> AnyresLayout:
    """The layout of a (w, h) frame: ``get_patch_output_size`` / ``_get_padding_size`` of the image
    processor, ``unpad_image`` and (OneVision, ``max_num_patches``) the shrink of the model."""
    w, h = frame
    g = tile // patch
    big_h, big_w = select_best_resolution((h, w), pinpoints)
    if big_w / w < big_h / h:  # get_patch_output_size
        new_w, new_h = big_w, min(math.ceil(h * big_w / w), big_h)
    else:
        new_h, new_w = big_h, min(math.ceil(w * big_h / h), big_w)
    paste = ((big_h - new_h) // 2, (big_w - new_w) // 2)
    rows, cols = big_h // tile * g, big_w // tile * g  # the tiles' token grid before unpadding
    r0, r1, c0, c1 = 0, rows, 0, cols
    if w / h > cols / rows:  # unpad_image: the same rounding
        pad = (rows - int(round(h * (cols / w), 7))) // 2
        r0, r1 = pad, rows - pad
    else:
        pad = (cols - int(round(w * (rows / h), 7))) // 2
        c0, c1 = pad, cols - pad
    out = (r1 - r0, c1 - c0)
    if max_num_patches is not None:
        ratio = math.sqrt(out[0] * out[1] / (max_num_patches * g * g))
        if ratio > 1.1:  # interpolate(..., [int(h // ratio), int(w // ratio)], mode="bilinear")
            out = (int(out[0] // ratio), int(out[1] // ratio))
    return AnyresLayout(
        frame=frame,
        tile=tile,
        patch=patch,
        best=(big_h, big_w),
        resized=(new_h, new_w),
        paste=paste,
        kept_rows=(r0, r1),
        kept_cols=(c0, c1),
        out=out,
    )


def _token_edge(u: np.ndarray, g: int, tile: int, patch: int, *, end: bool) -> np.ndarray:
    """Continuous token coordinates of the tiles' grid -> processed pixels of the padded (H*, W*) image.

    Token ``k`` is patch ``k % g`` of tile ``k // g``: it starts at ``(k // g) * S + (k % g) * P``.
    Where S > g * P (SigLIP-384) a tile's last pixels lie between two tokens; an ``end`` edge is taken
    from the left (the end of the token before it), so a token's box never spans that gap.
    """
    k = np.floor(u - 1e-9).astype(np.int64) if end else np.floor(u).astype(np.int64)
    frac = u - k  # in (0, 1] for an end edge, [0, 1) for a start edge
    return (k // g) * tile + (k % g + frac) * patch


def anyres_token_boxes(layout: AnyresLayout) -> np.ndarray:
    """(N, 4) float (x0, y0, x1, y1) in original pixels of every image token of the prompt, in
    sequence order: base g*g row-major, then each row of the tiles' grid and its newline (NaN).

    A token of the shrunk OneVision grid blends the tokens under its footprint (bilinear): its box is
    that footprint. Boxes are clipped to the frame; a token that sees only padding is NaN.
    """
    w, h = layout.frame
    g, tile, patch = layout.g, layout.tile, layout.patch
    # base: the frame squashed to S x S; token (r, c) covers patch (r, c)
    edges = np.arange(g + 1) * patch  # processed pixels
    bx, by = edges * w / tile, edges * h / tile
    base = np.stack(
        np.broadcast_arrays(bx[None, :-1], by[:-1, None], bx[None, 1:], by[1:, None]), axis=-1
    ).reshape(-1, 4)  # (g, g, 4) -> (g*g, 4)

    # tiles: output token (i, j) of an (n_r, n_c) grid covers kept-grid rows [r0 + i * step_r, ...)
    (r0, r1), (c0, c1) = layout.kept_rows, layout.kept_cols
    n_r, n_c = layout.out
    rows = r0 + np.arange(n_r + 1) * (r1 - r0) / n_r  # token-row edges (continuous)
    cols = c0 + np.arange(n_c + 1) * (c1 - c0) / n_c
    top, left = layout.paste
    new_h, new_w = layout.resized
    y0 = (_token_edge(rows[:-1], g, tile, patch, end=False) - top) * h / new_h  # processed -> original
    y1 = (_token_edge(rows[1:], g, tile, patch, end=True) - top) * h / new_h
    x0 = (_token_edge(cols[:-1], g, tile, patch, end=False) - left) * w / new_w
    x1 = (_token_edge(cols[1:], g, tile, patch, end=True) - left) * w / new_w
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    grid = np.stack(
        np.broadcast_arrays(x0[None], y0[:, None], x1[None], y1[:, None]), axis=-1
    )  # (n_r, n_c, 4)
    empty = (grid[..., 2] <= grid[..., 0]) | (grid[..., 3] <= grid[..., 1])
    grid[empty] = np.nan
    newline = np.full((n_r, 1, 4), np.nan)
    tiles = np.concatenate([grid, newline], axis=1).reshape(-1, 4)  # (n_r, n_c + 1, 4) -> (n_r*(n_c+1), 4)
    return np.concatenate([base, tiles]).astype(np.float64)


def _tile_size(image_processor: Any) -> int:
    """S: the image processor's tile (and base) size, as its ``_preprocess`` picks it."""
    crop = getattr(image_processor, "crop_size", None)
    size = image_processor.size
    for value in (
        getattr(crop, "height", None),
        getattr(size, "height", None),
        getattr(size, "shortest_edge", None),
    ):
        if value:
            return int(value)
    raise ValueError(f"cannot tell the tile size from {type(image_processor).__name__}'s size {size}")


class LlavaNextAdapter(HFAdapter):
    """LLaVA-NeXT: CLIP-336 + Llama/Mistral/Vicuna; base 24x24 tokens plus anyres tiles (module docstring).

    Prompt: the processor's chat template (image, then the instruction), LLaVA-1.5's without one.
    """

    family = "llava_next"
    model_types = ("llava_next",)
    label: ClassVar[str] = "LLaVA-NeXT"

    @classmethod
    def _check_config(cls, name_or_path: str, config: Any) -> None:
        check_vision_tower(name_or_path, config, cls.label)

    @classmethod
    def _trim_config(cls, config: Any) -> None:
        trim_vision_tower(config)

    @classmethod
    def _model_class(cls) -> type:
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration

    @classmethod
    def _load_processor(cls, name_or_path: str) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(name_or_path)

    def build_prompt(self, instruction: str) -> str:
        if not getattr(self.processor, "chat_template", None):
            return FALLBACK_PROMPT.format(instruction=instruction.strip())
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction.strip()}]}
        ]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @property
    def base_tokens(self) -> int:
        """g: tokens per side of the base image (the grid the methods read)."""
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def image_token_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        g = self.base_tokens
        return torch.nonzero(input_ids == self.image_token_id).flatten()[: g * g]  # the base comes first

    def _max_num_patches(self) -> int | None:
        """OneVision's shrink limit (``anyres_max_N``); None: no shrink (LLaVA-NeXT)."""
        return None

    def layout(self, image_size: tuple[int, int]) -> AnyresLayout:
        """The anyres layout of a frame of ``image_size`` (width, height) under this processor."""
        ip = self.processor.image_processor
        vision = self.model.config.vision_config
        tile = _tile_size(ip)
        if tile != vision.image_size:
            raise ValueError(
                f"{self.info.name}: the image processor makes {tile} px tiles but the vision tower takes "
                f"{vision.image_size} px images; use the checkpoint's own preprocessor_config.json"
            )
        return anyres_layout(
            image_size,
            tile=tile,
            patch=vision.patch_size,
            pinpoints=ip.image_grid_pinpoints,
            max_num_patches=self._max_num_patches(),
        )

    def _grid(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor]) -> ImageGrid:
        layout = self.layout(image_size)
        s = int(inputs["pixel_values"].shape[-1])  # (1, n_tiles + 1, 3, S, S)
        if s != layout.tile:
            raise ValueError(f"the processor made {s} px tiles, expected {layout.tile}")
        w, h = image_size
        g, seen = layout.g, layout.g * layout.patch  # the base tokens see [0, g * P) of the S x S image
        tiles = f"{layout.best[0] // layout.tile}x{layout.best[1] // layout.tile}"
        return ImageGrid(
            rows=g,
            cols=g,
            orig_size=image_size,
            processed_size=(seen, seen),
            scale=(layout.tile / w, layout.tile / h),
            offset=(0.0, 0.0),
            token_boxes=anyres_token_boxes(layout),
            source=(
                f"base image, {g}x{g} of {layout.n_tokens} image tokens (the whole frame squashed to "
                f"{layout.tile}x{layout.tile}; then {tiles} tiles as {layout.out[0]}x{layout.out[1]} "
                "tokens + newlines, not read)"
            ),
        )


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: SigLIP-384 + Qwen2; base 27x27 tokens plus anyres tiles, shrunk to at most
    ``anyres_max_9`` tiles' worth of tokens (module docstring). Images only: no video processor."""

    family = "llava_onevision"
    model_types = ("llava_onevision",)
    label: ClassVar[str] = "LLaVA-OneVision"
    crop_hint = (
        "the vision tower's patches do not reach the edge of its input (SigLIP-384: 27 x 14 = 378 px); "
        "no load option changes that"
    )

    @classmethod
    def _model_class(cls) -> type:
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration

    @classmethod
    def _load_processor(cls, name_or_path: str) -> Any:
        from transformers import AutoProcessor
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            return AutoProcessor.from_pretrained(name_or_path)
        # the video processor needs torchvision; images and text go through the same code without it
        return onevision_image_text_processor_class().from_pretrained(name_or_path)

    def _max_num_patches(self) -> int | None:
        aspect = str(self.model.config.vision_aspect_ratio)
        if not aspect.startswith("anyres_max_"):
            raise ValueError(f"{self.info.name}: vision_aspect_ratio {aspect!r} is not anyres_max_N")
        return int(aspect.removeprefix("anyres_max_"))


def onevision_image_text_processor_class() -> type:
    """``LlavaOnevisionProcessor`` without its video processor (which needs torchvision): its
    ``__init__`` names the image processor and the tokenizer but no video processor, so transformers
    neither loads nor requires one (it reads a processor's parts and settings from that signature);
    images and text go through the same code. Saves as ``LlavaOnevisionProcessor``."""
    from transformers import LlavaOnevisionProcessor

    class LlavaOnevisionImageTextProcessor(LlavaOnevisionProcessor):
        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            num_image_tokens: int | None = None,
            vision_feature_select_strategy: str | None = None,
            chat_template: Any = None,
            image_token: str = "<image>",
            video_token: str = "<video>",
            vision_aspect_ratio: str = "anyres_max_9",
            **kwargs: Any,
        ) -> None:
            LlavaOnevisionProcessor.__init__(
                self,
                image_processor,
                tokenizer,
                None,  # the video processor: ProcessorMixin drops the part this class does not name
                num_image_tokens=num_image_tokens,
                vision_feature_select_strategy=vision_feature_select_strategy,
                chat_template=chat_template,
                image_token=image_token,
                video_token=video_token,
                vision_aspect_ratio=vision_aspect_ratio,
                **kwargs,
            )

        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["processor_class"] = "LlavaOnevisionProcessor"
            return out

    return LlavaOnevisionImageTextProcessor
