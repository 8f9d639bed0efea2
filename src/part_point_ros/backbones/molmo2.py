"""Molmo2 (``allenai/Molmo2-*``): SigLIP-style ViT, 2x2 attention pooling, Qwen3-style decoder.

Native in transformers 5 (``models/molmo2``): no remote code; a tiny ``Molmo2Config`` builds the real
``Molmo2ForConditionalGeneration``. Its image processor and its video processor are torchvision
classes; where torchvision is missing this file supplies the same image processor with its two
torchvision calls (bilinear resize without antialias, mean/std normalisation) done by torch itself,
which is what torchvision runs for float tensors, and the processor without videos.

What the adapter relies on (``image_processing_molmo2.py``, ``processing_molmo2.py``, ``modeling_molmo2.py``):

- Views: crop 0 is the whole frame resized to ``size`` (378x378) without keeping its aspect ratio (the
  low-resolution view). Then the frame is resized (again stretched, no pad) to a canvas of
  ``tiling * window + margins`` pixels (``compute_crop_geometry``: the tiling ``tiling_h x tiling_w``
  <= ``max_crops`` that fits best) and cut into overlapping ``size``-px crops, one every ``window`` px.
- Tokens: each crop is cut into 14-px patches; each image token pools (cross-attention over) up to
  2x2 patches, ``image_token_pooling`` holding their indices (-1: padding where a patch count is odd).
  The low-resolution view gives ``ceil(27 / 2)^2`` = 14x14 tokens; the high-resolution tokens pool the
  CANVAS's patch grid, each canvas patch taken from exactly one crop (the overlap margins of the inner
  crops are dropped), so they form one row-major grid over the whole canvas.
- Prompt: the template's ``<|image|>`` becomes ``<low_res_im_start>`` + rows of (``<im_patch>`` x cols +
  ``<im_col>``) + ``<im_end>``, then ``<im_start>`` + the high-resolution rows the same way + ``<im_end>``;
  only ``<im_patch>`` (``config.image_patch_id``) receives image features. The processor puts the BOS
  token (the EOS token where there is none) in front of the prompt. During the prefill every image
  token attends to every other one (``mm_token_type_ids``); text tokens, the captured query rows, are
  causal as usual.
- Decoder: ``model.model.language_model``, 1D RoPE, full attention, q/k RMS norms before RoPE,
  1/sqrt(head_dim).

Grid the methods read: the high-resolution tokens. They cover the whole frame exactly once, at the
finest resolution the model sees (the low-resolution view is a fixed 14x14 downsample), and they come
last, so the text after them is the query. ``ImageGrid.token_boxes`` maps the low-resolution tokens too.
POP calibrated heads for each view of Molmo-7B-D (``high_resolution`` / ``low_resolution``).
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import numpy as np
import torch

from part_point_ros.backbones.hf_adapter import HFAdapter
from part_point_ros.backbones.prefix import PROBES, ImagePrefix, common_prefix_length, image_prefix_length
from part_point_ros.types import ImageGrid


@cache
def molmo2_image_processor_class() -> type:
    """``Molmo2ImageProcessor`` whose resize and normalisation are torch's own (it needs no torchvision);
    saves as ``Molmo2ImageProcessor``. Molmo2 resizes float tensors, bilinear, no antialias: torchvision
    runs ``torch.nn.functional.interpolate(align_corners=False)`` for that, the same call as here."""
    import torch.nn.functional as F
    from transformers.image_utils import PILImageResampling

    # the module, not ``transformers.Molmo2ImageProcessor``: that name is a placeholder without torchvision
    from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor

    modes = {PILImageResampling.BILINEAR: "bilinear", PILImageResampling.BICUBIC: "bicubic"}

    class Molmo2ImageProcessorTorch(Molmo2ImageProcessor):
        """``Molmo2ImageProcessor`` with the torchvision calls done by torch."""

        def resize(
            self, image: torch.Tensor, size: Any, resample: Any = None, antialias: bool = True, **kwargs: Any
        ) -> torch.Tensor:
            mode = modes.get(
                PILImageResampling(PILImageResampling.BILINEAR if resample is None else resample)
            )
            if mode is None or not (size.height and size.width) or not image.is_floating_point():
                raise ValueError(
                    f"resizing a {image.dtype} image to {size} with resample {resample} needs torchvision"
                )
            if (image.shape[-2], image.shape[-1]) == (size.height, size.width):
                return image  # torchvision returns the image itself too
            return F.interpolate(
                image, size=(size.height, size.width), mode=mode, align_corners=False, antialias=antialias
            )

        def normalize(
            self, image: torch.Tensor, mean: Any, std: Any, inplace: bool = False, **kw
        ) -> torch.Tensor:
            mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
            std = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
            return (image - mean) / std  # (C, 1, 1) broadcast over (..., C, H, W)

        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["image_processor_type"] = "Molmo2ImageProcessor"
            return out

    return Molmo2ImageProcessorTorch


@cache
def molmo2_image_text_processor_class() -> type:
    """``Molmo2Processor`` for images and text only (no video processor: it needs torchvision), over
    ``molmo2_image_processor_class``; saves as ``Molmo2Processor``."""
    from transformers import AutoTokenizer, Molmo2Processor
    from transformers.processing_utils import ProcessorMixin

    class Molmo2ImageTextProcessor(Molmo2Processor):
        """``Molmo2Processor`` without videos."""

        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            chat_template: str | None = None,
            image_use_col_tokens: bool | None = True,
            use_single_crop_col_tokens: bool | None = None,
            use_single_crop_start_token: bool | None = True,
            video_use_col_tokens: bool | None = False,
            use_frame_special_tokens: bool | None = True,
            **kwargs: Any,
        ) -> None:
            # the attributes Molmo2Processor.__init__ sets, then the mixin with two sub-processors
            self.image_use_col_tokens = image_use_col_tokens
            self.use_single_crop_col_tokens = use_single_crop_col_tokens
            self.use_single_crop_start_token = use_single_crop_start_token
            self.video_use_col_tokens = video_use_col_tokens
            self.use_frame_special_tokens = use_frame_special_tokens
            self.image_token = getattr(tokenizer, "image_token", "<|image|>")
            self.video_token = getattr(tokenizer, "video_token", "<|video|>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            self.image_token_ids = tokenizer.convert_tokens_to_ids(
                [
                    "<im_patch>",
                    "<im_col>",
                    "<im_start>",
                    "<low_res_im_start>",
                    "<frame_start>",
                    "<im_end>",
                    "<frame_end>",
                    "<im_low>",
                ]
            )
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

        @classmethod
        def _get_arguments_from_pretrained(cls, name_or_path: Any, processor_dict: Any = None, **kwargs: Any):
            # AutoImageProcessor would pick the torchvision class: read the same config into ours
            kwargs.pop("subfolder", None)
            image_processor = molmo2_image_processor_class().from_pretrained(name_or_path, **kwargs)
            return [image_processor, AutoTokenizer.from_pretrained(name_or_path, **kwargs)]

        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["processor_class"] = "Molmo2Processor"
            return out

    return Molmo2ImageTextProcessor


def pooled_token_boxes(
    pooling: np.ndarray,
    *,
    image_size: tuple[int, int],
    crop_size: int,
    patch_size: int,
    window_size: int,
    tiling_w: int,
    canvas_size: tuple[int, int],
) -> np.ndarray:
    """(N, 4) original-pixel boxes of the tokens whose pooled patches are ``pooling`` (N, k) (indices into
    the crops' flattened patches, -1 padding): the union of the boxes of their patches.

    Crop 0 is the whole frame resized to ``crop_size`` square; crop ``1 + i*tiling_w + j`` starts at
    ``(j, i) * window_size`` on the canvas (``canvas_size`` = (width, height)), the whole frame resized.
    """
    w, h = image_size
    canvas_w, canvas_h = canvas_size
    per_side = crop_size // patch_size
    valid = pooling >= 0  # (N, k)
    index = np.where(valid, pooling, 0)
    crop, patch = np.divmod(index, per_side * per_side)
    row, col = np.divmod(patch, per_side)
    tile_row, tile_col = np.divmod(np.maximum(crop - 1, 0), tiling_w)
    low = crop == 0
    # patch corner in the pixels of its own view: the low-resolution square, or the canvas
    x = np.where(low, 0, tile_col * window_size) + col * patch_size  # (N, k)
    y = np.where(low, 0, tile_row * window_size) + row * patch_size
    sx = np.where(low, w / crop_size, w / canvas_w)  # view pixels -> original pixels
    sy = np.where(low, h / crop_size, h / canvas_h)
    inf = np.inf
    x0 = np.where(valid, x * sx, inf).min(axis=1)  # (N, k) -> (N,)
    y0 = np.where(valid, y * sy, inf).min(axis=1)
    x1 = np.where(valid, (x + patch_size) * sx, -inf).max(axis=1)
    y1 = np.where(valid, (y + patch_size) * sy, -inf).max(axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.float64)
    boxes[~valid.any(axis=1)] = np.nan  # pools nothing: sees no pixel
    return boxes


class Molmo2Adapter(HFAdapter):
    """Molmo2 (``Molmo2ForConditionalGeneration``). Grid: the high-resolution tokens (module docstring)."""

    family = "molmo2"
    model_types = ("molmo2",)

    @classmethod
    def _model_class(cls) -> type:
        from transformers import Molmo2ForConditionalGeneration

        return Molmo2ForConditionalGeneration

    @classmethod
    def _load_processor(cls, name_or_path: str) -> Any:
        from transformers import AutoProcessor
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            return AutoProcessor.from_pretrained(name_or_path)
        return molmo2_image_text_processor_class().from_pretrained(name_or_path)

    def build_prompt(self, instruction: str) -> str:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction.strip()}]}
        ]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def image_token_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The high-resolution ``<im_patch>`` tokens: those after the last ``<im_start>``, row-major."""
        starts = torch.nonzero(input_ids == int(self.model.config.image_start_token_id)).flatten()
        if starts.numel() == 0:
            raise ValueError("the prompt has no <im_start> token: no high-resolution image block")
        patches = torch.nonzero(input_ids == self.image_token_id).flatten()
        return patches[patches > starts[-1]]

    def _images_kwargs(self) -> dict[str, Any]:
        merged = self.processor._merge_kwargs(tokenizer_init_kwargs=self.processor.tokenizer.init_kwargs)
        ip = self.processor.image_processor
        kw = merged["images_kwargs"]
        size = kw.get("size") or ip.size
        return {
            "crop_size": int(size["height"] if isinstance(size, dict) else size.height),
            "patch_size": int(kw.get("patch_size") or ip.patch_size),
            "max_crops": int(kw.get("max_crops") or ip.max_crops),
            "overlap_margins": list(kw.get("overlap_margins") or ip.overlap_margins),
            "pooling_size": list(kw.get("pooling_size") or ip.pooling_size),
        }

    def _grid(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor]) -> ImageGrid:
        from transformers.models.molmo2.image_processing_molmo2 import compute_crop_geometry

        settings = self._images_kwargs()
        crop_size, patch = settings["crop_size"], settings["patch_size"]
        pool_h, pool_w = settings["pooling_size"]
        w, h = image_size
        tiling_h, tiling_w, canvas_h, canvas_w = compute_crop_geometry(
            h, w, settings["max_crops"], settings["overlap_margins"], crop_size, patch
        )
        low_h, low_w, rows, cols = (int(v) for v in inputs["image_grids"][0])
        n_crops = int(inputs["image_num_crops"][0])
        pooling = inputs["image_token_pooling"].cpu().numpy()  # (low_h*low_w + rows*cols, pool_h*pool_w)
        if n_crops != 1 + tiling_h * tiling_w or len(pooling) != low_h * low_w + rows * cols:
            raise ValueError(
                f"the processor made {n_crops} crops and {len(pooling)} tokens of a {w}x{h} frame; its "
                f"geometry gives 1 + {tiling_h}x{tiling_w} crops and {low_h}x{low_w} + {rows}x{cols} tokens"
            )
        margin = sum(settings["overlap_margins"])
        window = (crop_size // patch - margin) * patch
        boxes = pooled_token_boxes(
            pooling,
            image_size=image_size,
            crop_size=crop_size,
            patch_size=patch,
            window_size=window,
            tiling_w=tiling_w,
            canvas_size=(canvas_w, canvas_h),
        )
        # the pooling pads the canvas's patch grid to whole 2x2 windows, half before (rounded down)
        pad_top = (pool_h * rows - canvas_h // patch) // 2
        pad_left = (pool_w * cols - canvas_w // patch) // 2
        return ImageGrid(
            rows=rows,
            cols=cols,
            orig_size=image_size,
            processed_size=(cols * pool_w * patch, rows * pool_h * patch),
            scale=(canvas_w / w, canvas_h / h),
            offset=(float(pad_left * patch), float(pad_top * patch)),
            token_boxes=boxes,
            source=(
                f"high-resolution tokens, {rows}x{cols} over {tiling_h}x{tiling_w} overlapping crops (after "
                f"the {low_h}x{low_w} low-resolution view): the whole frame once, at the finest resolution"
            ),
        )

    # ----- the image block: bidirectional in the prefill, so the query rows start after it ----------

    def _block_span(self, ids: torch.Tensor) -> tuple[int, int]:
        """(start, end) sequence indices of the image block, from its first special token to just past its
        closing ``<im_end>``. In the prefill the block's tokens, the ``<im_col>`` / ``<im_end>`` after the
        last patch too, attend to each other both ways, so only tokens after ``end`` are causal query rows
        (and a reused prefix must hold the whole block: a suffix forward would run them causally)."""
        special = [t for t in self.processor.image_token_ids if t is not None]
        inside = torch.nonzero(torch.isin(ids, torch.tensor(special, device=ids.device))).flatten()
        if inside.numel() == 0:
            raise ValueError("the prompt has no image block")
        return int(inside[0]), int(inside[-1]) + 1

    def _first_query_row(self, ids: torch.Tensor) -> int:
        """After the whole image block (``_block_span``), not after its last patch token."""
        return self._block_span(ids)[1]

    # ----- image-prefix reuse: the image block depends on the crop layout, not only its token count --

    def _prompt_with_block(self, instruction: str, block_ids: torch.Tensor) -> torch.Tensor:
        """(S,) BOS + the template for ``instruction`` with its image placeholder replaced by ``block_ids``
        (all special tokens, so the text around them tokenizes alike), as Molmo2Processor makes it."""
        tokenizer = self.processor.tokenizer
        text = self.build_prompt(instruction)
        bos = tokenizer.bos_token or tokenizer.eos_token  # what Molmo2Processor.__call__ puts first
        text = text if text.startswith(bos) else bos + text
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        at = torch.nonzero(ids == self.processor.image_token_id).flatten()
        if at.numel() != 1:
            raise ValueError(f"expected one image placeholder in the template, found {at.numel()}")
        i = int(at[0])
        return torch.cat([ids[:i], block_ids.to(ids.device), ids[i + 1 :]]).to(self.device)

    def prompt_ids_for_grids(self, instruction: str, image_grids: torch.Tensor) -> torch.Tensor:
        """(S,) the processor's ids of the prompt for ``instruction`` on a frame whose processor output had
        ``image_grids`` (1, 4): the image block is the processor's own ``replace_image_token``."""
        grid = [int(v) for v in image_grids.reshape(-1)]
        block = self.processor.replace_image_token({"image_grids": [grid]}, 0)
        block_ids = self.processor.tokenizer(block, add_special_tokens=False, return_tensors="pt")[
            "input_ids"
        ][0]
        return self._prompt_with_block(instruction, block_ids)

    def prompt_ids(self, instruction: str, n_image_tokens: int) -> torch.Tensor:
        raise ValueError(
            "Molmo2's image block depends on its crop layout, not only on its token count: use "
            "prompt_ids_for_grids(instruction, image_grids)"
        )

    def _reusable_prefix_length(self, instruction: str, ids: torch.Tensor) -> int | None:
        """As ``HFAdapter``'s, with the frame's own image block (read from ``ids``: from its first image
        special token to its last) in place of one made from a token count, and the prefix through the
        END of that block (``_block_span``), not through its last patch."""
        layer_types = getattr(self.model.config.get_text_config(), "layer_types", None) or ()
        if any(kind != "full_attention" for kind in layer_types):
            return None  # a sliding-window cache keeps only the window: the captured keys would be cut
        start, end = self._block_span(ids)
        block = ids[start:end]
        if not torch.equal(self._prompt_with_block(instruction, block), ids):
            warnings.warn(
                f"{self.info.name}: the tokenizer alone does not give the processor's prompt ids, so "
                "the image prefix is not reused (each query runs the whole prompt)",
                stacklevel=4,
            )
            return None
        probes = [self._prompt_with_block(probe, block) for probe in PROBES]
        if image_prefix_length(*probes, self.image_token_id) is None or common_prefix_length(*probes) < end:
            return None  # the instruction comes before (part of) the image block
        return end if torch.equal(ids[:end], probes[0][:end]) else None

    def _prompt_after(self, prefix: ImagePrefix, instruction: str) -> torch.Tensor:
        ids = self.prompt_ids_for_grids(instruction, prefix.image_inputs["image_grids"])
        if not torch.equal(ids[: prefix.length], prefix.ids):
            raise RuntimeError(f"the prompt for {instruction!r} does not start with the frame's prefix")
        return ids
