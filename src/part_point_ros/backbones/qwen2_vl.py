"""Qwen2-VL (``Qwen/Qwen2-VL-*-Instruct``): ViT with 2D RoPE, 2x2 patch merger, M-RoPE decoder.

Everything the adapter does is what Qwen2.5-VL's does: the same chat template style, the same
image processor (``Qwen2VLImageProcessor``: ``smart_resize`` to multiples of 28, no crop, no pad),
the same image-token expansion and the same ``get_rope_index`` signature. Only the vision tower
differs (no window attention), which the adapter never touches; so this is Qwen2.5-VL's adapter
with Qwen2-VL's model class and processor.
"""

from __future__ import annotations

from part_point_ros.backbones.qwen2_5_vl import Qwen25VLAdapter


class Qwen2VLAdapter(Qwen25VLAdapter):
    """Qwen2-VL: Qwen2.5-VL's prompt, grid and M-RoPE positions (``Qwen25VLAdapter``)."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    processor_class_name = "Qwen2VLProcessor"

    @classmethod
    def _model_class(cls) -> type:
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration
