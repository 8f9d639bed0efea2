"""SmolVLM (``HuggingFaceTB/SmolVLM*``) and Idefics3 (``HuggingFaceM4/Idefics3-8B-Llama3``): a SigLIP
tower on square crops, pixel shuffle by ``scale_factor``, a Llama-style decoder.

What the adapter relies on (transformers 5, ``models/{smolvlm,idefics3}``; both families share it):

- Image processor: resize the longest edge to ``size["longest_edge"]`` keeping the aspect ratio;
  with ``do_image_splitting``, resize again to multiples of ``M = max_image_size["longest_edge"]``
  (each side separately: the aspect ratio changes a little) and cut ``rows x cols`` crops of M x M,
  then add the whole frame squeezed to M x M (the global image). Without splitting (or when the frame
  fits one crop: rows = cols = 0) the global image is the only one. Every frame is M x M, so no pad.
  Both resizes map pixel edges linearly, so the crops' scale is (cols*M / w, rows*M / h) and the global
  image's (M / w, M / h).
- Tokens: each crop becomes ``(M / patch / scale_factor)^2`` = ``image_seq_len`` image tokens, row-major
  (the connector's pixel shuffle merges scale_factor x scale_factor patches). The prompt's ``<image>``
  becomes, per crop row, ``<fake_token_around_image><row_r_col_c><image>*n`` per column and ``\\n``, then
  ``\\n<fake_token_around_image><global-img><image>*n<fake_token_around_image>``: the global image last.
- The decoder is ``model.model.text_model`` (not ``language_model``): full causal attention, 1D RoPE.

The grid the methods read is the GLOBAL image: the whole frame exactly once, at the same token count
for every frame size, and closest to the instruction. The crops see the frame again at a higher
resolution, but how many there are depends on the frame's size, so a grid over them would change shape
(and heads calibrated on one layout would not transfer), and maps smoothed across crops would blur over
their seams. ``ImageGrid.token_boxes`` still maps every image token of the prompt (crops first, then the
global image) to its box in original pixels, for methods that read them all.

Prefix reuse is exact here: the image comes before the instruction and every frame's expanded image
segment is copied from the frame's own processor ids (the tokenizer alone never sees the crop layout).
"""

from __future__ import annotations

import math
import re
import warnings
from functools import cache, cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from part_point_ros.backbones.gemma3 import chat_prompt
from part_point_ros.backbones.hf_adapter import HFAdapter, read_config
from part_point_ros.backbones.prefix import PROBES, ImagePrefix, image_prefix_length
from part_point_ros.types import ImageGrid

_ROW_COL = re.compile(r"<row_(\d+)_col_(\d+)>")


@cache
def smolvlm_image_text_processor_class() -> type:
    """``SmolVLMProcessor`` for images and text only: no video processor (it needs torchvision) and no
    ``num2words`` (used for video prompts only). Images and text go through the same code."""
    from transformers import SmolVLMProcessor
    from transformers.processing_utils import ProcessorMixin

    class SmolVLMImageTextProcessor(SmolVLMProcessor):
        """``SmolVLMProcessor`` without videos; saves as ``SmolVLMProcessor``."""

        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            image_seq_len: int = 169,
            chat_template: Any = None,
            **kwargs: Any,
        ) -> None:
            self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
            self.image_token = getattr(tokenizer, "image_token", "<image>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
            self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
            self.image_seq_len = image_seq_len
            self.video_token = getattr(tokenizer, "video_token", "<video>")
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

        def apply_chat_template(self, conversation: Any, chat_template: Any = None, **kwargs: Any) -> Any:
            # SmolVLMProcessor's own reads the video processor's frame settings; text and images need none
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["processor_class"] = "SmolVLMProcessor"
            return out

    return SmolVLMImageTextProcessor


def _torchvision_and_num2words() -> bool:
    from importlib.util import find_spec

    return find_spec("torchvision") is not None and find_spec("num2words") is not None


class SmolVLMAdapter(HFAdapter):
    """SmolVLM / Idefics3. Grid: the global image's tokens; ``token_boxes``: every image token's box."""

    family = "smolvlm"
    model_types = ("smolvlm", "idefics3")

    @classmethod
    def _model_class(cls) -> type:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText  # SmolVLM- or Idefics3ForConditionalGeneration, by model_type

    @classmethod
    def _load_processor(cls, name_or_path: str) -> Any:
        from transformers import AutoProcessor

        if read_config(name_or_path).model_type == "smolvlm" and not _torchvision_and_num2words():
            # SmolVLMProcessor wants its video processor (torchvision) and num2words, for videos only
            return smolvlm_image_text_processor_class().from_pretrained(name_or_path)
        return AutoProcessor.from_pretrained(name_or_path)

    language_model_path = "model.text_model"

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.text_model.layers

    @property
    def tokens_per_image(self) -> int:
        """Image tokens per crop (and of the global image): the processor's ``image_seq_len``."""
        return int(self.processor.image_seq_len)

    def build_prompt(self, instruction: str) -> str:
        return chat_prompt(self.processor, instruction)

    def image_token_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(P,) the global image's tokens: the prompt's last ``image_seq_len`` image tokens, row-major."""
        every = torch.nonzero(input_ids == self.image_token_id).flatten()
        return every[-self.tokens_per_image :]

    def prepare(self, image: np.ndarray, prompt: str) -> tuple[dict[str, torch.Tensor], ImageGrid]:
        inputs, grid = super().prepare(image, prompt)
        mask = inputs.get("pixel_attention_mask")
        if mask is not None and bool(mask.all()):
            # one frame's crops are all M x M, so the mask is all ones, which is what the model assumes
            # without it; dropped so that an ImagePrefix does not keep (crops, M, M) int64 of ones
            del inputs["pixel_attention_mask"]
        return inputs, grid

    def _crop_layout(self, input_ids: torch.Tensor) -> tuple[int, int]:
        """(rows, cols) of the crops from the ``<row_r_col_c>`` tokens of a prompt (0, 0: no crops)."""
        tokens = self.processor.tokenizer.convert_ids_to_tokens(input_ids.tolist())
        cells = [tuple(int(v) for v in m.groups()) for t in tokens if (m := _ROW_COL.fullmatch(str(t)))]
        if not cells:
            return 0, 0
        rows, cols = max(r for r, _ in cells), max(c for _, c in cells)
        if sorted(cells) != [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]:
            raise ValueError(f"the prompt's crop tokens do not form a grid: {cells}")
        return rows, cols

    def _grid(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor]) -> ImageGrid:
        ids = inputs["input_ids"][0]
        _, frames, _, ph, pw = inputs["pixel_values"].shape  # (1, crops + 1, 3, M, M)
        if ph != pw:
            raise ValueError(f"expected square frames from the image processor, got {pw}x{ph}")
        side = int(pw)  # M
        n = self.tokens_per_image
        per_side = math.isqrt(n)  # tokens per side of one frame
        vision = self.model.config.vision_config
        if (
            per_side * per_side != n
            or side // vision.patch_size // self.model.config.scale_factor != per_side
        ):
            raise ValueError(
                f"image_seq_len {n} does not match {side} px frames, patch {vision.patch_size} and "
                f"scale_factor {self.model.config.scale_factor}"
            )
        rows, cols = self._crop_layout(ids)
        if frames != rows * cols + 1:
            raise ValueError(f"{frames} frames for {rows}x{cols} crops and the global image")
        n_tokens = int((ids == self.image_token_id).sum())
        if n_tokens != frames * n:
            raise ValueError(f"{n_tokens} image tokens for {frames} frames of {n}")
        w, h = image_size
        return ImageGrid(
            rows=per_side,
            cols=per_side,
            orig_size=image_size,
            processed_size=(side, side),
            scale=(side / w, side / h),  # the global image: the whole frame squeezed to M x M
            offset=(0.0, 0.0),
            token_boxes=_token_boxes(image_size, rows, cols, per_side),
            source=(
                f"global image, {per_side}x{per_side} tokens after {rows}x{cols} crops: covers the whole "
                "frame once, at the same size for every frame"
                if rows
                else f"global image, {per_side}x{per_side} tokens (no crops)"
            ),
        )

    # ----- image-prefix reuse: the frame's crop layout is in its ids, not in the tokenizer's ---------

    def _template_ids(self, instruction: str) -> torch.Tensor:
        """(S',) the tokenizer's ids of the prompt for ``instruction``, with its one ``<image>``
        placeholder where the processor puts the frame's crops and global image (model device)."""
        ids = self.processor.tokenizer(self.build_prompt(instruction), return_tensors="pt")["input_ids"][0]
        return ids.to(self.device)

    def _template_tail(self, instruction: str) -> torch.Tensor:
        """The tokenizer's ids of the prompt after the image placeholder: the instruction and the rest."""
        ids = self._template_ids(instruction)
        at = torch.nonzero(ids == self.image_token_id).flatten()
        if at.numel() != 1:
            raise ValueError(f"expected one image placeholder in the prompt, found {at.numel()}")
        return ids[int(at[0]) + 1 :]

    @cached_property
    def _template_head(self) -> torch.Tensor | None:
        """The tokenizer's ids of the prompt before the image placeholder, the same for every
        instruction; None where the instruction comes before the image (no prefix holds the image)."""
        probes = [self._template_ids(probe) for probe in PROBES]
        length = image_prefix_length(*probes, self.image_token_id)  # through the placeholder
        return None if length is None else probes[0][: length - 1]

    def _after_image(self) -> torch.Tensor:
        """(1,) the token between the global image's last ``<image>`` and the instruction."""
        fake = self.processor.tokenizer.convert_tokens_to_ids(self.processor.fake_image_token)
        return torch.tensor([fake], device=self.device)

    def _reusable_prefix_length(self, instruction: str, ids: torch.Tensor) -> int | None:
        """Through the global image's last token, if the frame's ids ``ids`` (S,) are the template's head,
        the frame's image segment (crops, global image) and the template's tail for ``instruction``."""
        head = self._template_head
        if head is None:
            return None
        last = int(self.image_token_positions(ids)[-1])
        rebuilt = torch.cat([ids[: last + 1], self._after_image(), self._template_tail(instruction)])
        if not (torch.equal(ids[: head.shape[0]], head) and torch.equal(rebuilt, ids)):
            warnings.warn(
                f"{self.info.name}: the tokenizer alone does not give the processor's prompt ids, so "
                "the image prefix is not reused (each query runs the whole prompt)",
                stacklevel=4,
            )
            return None
        return last + 1

    def _prompt_after(self, prefix: ImagePrefix, instruction: str) -> torch.Tensor:
        """(S,) the whole prompt's ids for ``instruction``: the frame's prefix (with its own crop layout),
        the token closing the image, the template's tail for ``instruction``."""
        return torch.cat([prefix.ids, self._after_image(), self._template_tail(instruction)])


def _token_boxes(image_size: tuple[int, int], rows: int, cols: int, per_side: int) -> np.ndarray:
    """(N, 4) float (x0, y0, x1, y1) in original pixels of every image token in prompt order: the crops
    row by row (each ``per_side``² tokens, row-major), then the global image."""
    w, h = image_size
    cell = np.arange(per_side, dtype=np.float64)
    gy, gx = np.meshgrid(cell, cell, indexing="ij")  # (n, n) token row, token column
    gx, gy = gx.reshape(-1), gy.reshape(-1)  # (n, n) -> (n²,) row-major
    boxes = []
    for r in range(rows):  # crop (r, c) spans [c, c + 1) x [r, r + 1) of a cols x rows frame grid
        for c in range(cols):
            x0, y0 = (c + gx / per_side) * w / cols, (r + gy / per_side) * h / rows
            boxes.append(np.stack([x0, y0, x0 + w / cols / per_side, y0 + h / rows / per_side], axis=1))
    x0, y0 = gx / per_side * w, gy / per_side * h  # the global image spans the whole frame
    boxes.append(np.stack([x0, y0, x0 + w / per_side, y0 + h / per_side], axis=1))
    return np.concatenate(boxes).astype(np.float64)  # frames x (n², 4) -> (N, 4)
