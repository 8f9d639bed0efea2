"""Qwen2.5-VL's processor for images and text only, for machines without torchvision.

``Qwen2_5_VLProcessor`` insists on a video processor, and transformers' video processors need
torchvision. Images and text go through exactly the same code (``Qwen2VLImageProcessor`` and the
tokenizer, same token expansion); only videos are unsupported.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def qwen_image_text_processor_class() -> type:
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class Qwen25VLImageTextProcessor(Qwen2_5_VLProcessor):
        """``Qwen2_5_VLProcessor`` without the video processor; saves as ``Qwen2_5_VLProcessor``."""

        def __init__(
            self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw
        ):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kw)

        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["processor_class"] = "Qwen2_5_VLProcessor"
            return out

    return Qwen25VLImageTextProcessor
