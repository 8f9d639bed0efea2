"""Gemma 3 (``google/gemma-3-*-it``): SigLIP tower, 4x4 average pooling to 16x16 image tokens, a
decoder that interleaves sliding-window and full-attention layers.

What the adapter relies on (transformers 5, ``models/gemma3``):

- Prompt: the processor's chat template, ``<bos><start_of_turn>user\\n<start_of_image>{text}<end_of_turn>
  \\n<start_of_turn>model\\n``. The processor replaces ``<start_of_image>`` (the boi token) with
  ``\\n\\n<start_of_image>`` + ``mm_tokens_per_image`` x ``<image_soft_token>`` (``config.image_token_id``)
  + ``<end_of_image>\\n\\n``. The rendered template starts with ``<bos>`` and Gemma's tokenizer adds one
  itself, so ``build_prompt`` drops the template's (``processor.apply_chat_template(tokenize=True)``
  does the same): one ``<bos>``, as the model was trained.
- Grid: the image processor resizes the whole image to ``size`` (896x896) WITHOUT keeping the aspect
  ratio (no crop, no pad); SigLIP cuts it into 64x64 patches of 14 px, the projector average-pools
  them to ``sqrt(mm_tokens_per_image)`` = 16 per side, row-major. So scale = (896 / w, 896 / h).
- Pan-and-scan (extra crops of a long image after the whole one) is off unless a call asks for it
  (``do_pan_and_scan=True``: the processor's default overrides the image processor's config); this
  adapter never asks, and refuses a frame that comes back with crops.
- Attention: ``scaling = query_pre_attn_scalar ** -0.5`` (not 1/sqrt(head_dim)); q/k RMS norms before
  RoPE (the capture sees q/k after both); sliding layers see the last ``sliding_window`` positions
  (``config.layer_types``), full layers the whole prefix; image tokens attend bidirectionally within
  their image (``token_type_ids``), which never concerns the captured text query rows.
  ``attn_logit_softcapping`` is a config field Gemma 3's attention does not apply; the capture records
  what the layers pass (``backbones/capture.py``), so none is applied.
- Prefix reuse: never (``_reusable_prefix_length``): a sliding layer's cache keeps only its window, so
  the captured keys would be cut. Each query runs its whole prompt.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from part_point_ros.backbones.hf_adapter import HFAdapter
from part_point_ros.errors import InputError
from part_point_ros.types import ImageGrid


def chat_prompt(processor: Any, instruction: str) -> str:
    """The processor's chat template around one image and ``instruction``, with the generation prompt.

    A template that starts with the BOS token its tokenizer adds by itself would give two BOS tokens once
    the processor tokenizes it; the template's is dropped then, as ``apply_chat_template(tokenize=True)``
    does (``add_special_tokens=False`` there, one BOS either way)."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction.strip()}]}
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tokenizer = processor.tokenizer
    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos):
        added = tokenizer("", add_special_tokens=True)["input_ids"]
        if tokenizer.bos_token_id in added:
            prompt = prompt[len(bos) :]
    return prompt


class Gemma3Adapter(HFAdapter):
    """Gemma 3. Grid: the 16x16 pooled SigLIP tokens of the whole image squeezed to a square."""

    family = "gemma3"
    model_types = ("gemma3",)

    @classmethod
    def _model_class(cls) -> type:
        from transformers import Gemma3ForConditionalGeneration

        return Gemma3ForConditionalGeneration

    @classmethod
    def _load_processor(cls, name_or_path: str) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(name_or_path)

    def build_prompt(self, instruction: str) -> str:
        return chat_prompt(self.processor, instruction)

    def _reusable_prefix_length(self, instruction: str, ids: torch.Tensor) -> int | None:
        """Never reused. Gemma 3's sliding layers cache only their window, so the keys the capture reads
        would be cut (``HFAdapter`` refuses any sliding-window model for that); and the processor wraps
        the image tokens in newlines the tokenizer alone would merge with the template's, so even a
        config without sliding layers could not rebuild the processor's ids from the tokenizer's."""
        return None

    def _grid(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor]) -> ImageGrid:
        images, _, ph, pw = inputs["pixel_values"].shape  # (1 + crops, 3, H, W)
        if images != 1:
            raise InputError(
                f"the processor made {images - 1} pan-and-scan crops of the image: not supported, "
                "call the processor with do_pan_and_scan=False (its default)"
            )
        side = math.isqrt(int(self.model.config.mm_tokens_per_image))  # pooled tokens per side
        if side * side != int(self.model.config.mm_tokens_per_image):
            raise ValueError(f"mm_tokens_per_image {self.model.config.mm_tokens_per_image} is not a square")
        w, h = image_size
        return ImageGrid(
            rows=side,
            cols=side,
            orig_size=image_size,
            processed_size=(int(pw), int(ph)),
            scale=(pw / w, ph / h),  # the whole image squeezed to the square; no crop, no pad
            offset=(0.0, 0.0),
        )
