"""Qwen-VL processors for images and text only, for machines without torchvision.

``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor`` and ``Qwen3VLProcessor`` insist on a video processor,
and transformers' video processors need torchvision. Images and text go through exactly the same
code (the Qwen2-VL image processor and the tokenizer, same token expansion); only videos are
unsupported.
"""

from __future__ import annotations

from functools import cache
from typing import Any

# The processors this works for: their __init__ takes (image_processor, tokenizer, video_processor).
QWEN_PROCESSORS = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor", "Qwen3VLProcessor")


@cache
def qwen_image_text_processor_class(base_name: str = "Qwen2_5_VLProcessor") -> type:
    """``base_name`` (one of ``QWEN_PROCESSORS``) without the video processor; saves as ``base_name``.

    The subclass's ``__init__`` names only the image processor and the tokenizer, so transformers
    (which reads a processor's parts from its ``__init__`` signature) neither loads nor requires a
    video processor; the base ``__init__`` still sets the image / video / vision-marker token ids.
    """
    import transformers

    if base_name not in QWEN_PROCESSORS:
        raise ValueError(f"{base_name!r} is not one of {', '.join(QWEN_PROCESSORS)}")
    base = getattr(transformers, base_name)

    class QwenImageTextProcessor(base):
        def __init__(
            self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any
        ) -> None:
            # ProcessorMixin zips the positional parts with this class's two: the None video part drops out
            base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kw)

        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["processor_class"] = base_name
            return out

    QwenImageTextProcessor.__name__ = QwenImageTextProcessor.__qualname__ = f"{base_name}ImageText"
    return QwenImageTextProcessor
