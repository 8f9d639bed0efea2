"""Qwen3-VL (``Qwen/Qwen3-VL-*``), dense and MoE (``Qwen3-VL-30B-A3B``, ``-235B-A22B``).

What differs from Qwen2.5-VL, and why the adapter is still Qwen2.5-VL's:

- Patches are 16 px (not 14), so ``smart_resize`` rounds both sides to multiples of 32. The image
  processor class is the same (``Qwen2VLImageProcessor``: resize only, no crop, no pad) and the
  grid is read from ``image_grid_thw`` and the processor's own ``patch_size`` / ``merge_size``.
- DeepStack: the vision tower also emits features of some of its intermediate layers, which the
  decoder ADDS to the image tokens' hidden states after its first layers (``deepstack_visual_embeds``
  in ``Qwen3VLTextModel.forward``). Capture reads Q/K/V inside each attention call, so whatever was
  added before a layer is in its Q/K/V; a cached image prefix holds the keys/values of those
  layers already made with it; suffix tokens are text, which DeepStack never touches.
- M-RoPE is interleaved and the text after an image continues at ``max(h, w)`` merged positions:
  the model's own ``get_rope_index`` (same signature as Qwen2.5-VL's) gives the positions.
- No default system prompt in the chat template: whatever the processor's template renders is used.
- ``qwen3_vl_moe``: sparse-MoE MLPs; attention (what is captured) is the dense model's. Both model
  types are loaded through ``AutoModelForImageTextToText``, which picks the class from the config.
"""

from __future__ import annotations

from part_point_ros.backbones.qwen2_5_vl import Qwen25VLAdapter


class Qwen3VLAdapter(Qwen25VLAdapter):
    """Qwen3-VL and Qwen3-VL-MoE: Qwen2.5-VL's prompt, grid and positions (``Qwen25VLAdapter``)."""

    family = "qwen3_vl"
    model_types = ("qwen3_vl", "qwen3_vl_moe")
    processor_class_name = "Qwen3VLProcessor"  # both model types use it

    @classmethod
    def _model_class(cls) -> type:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText  # Qwen3VL- or Qwen3VLMoeForConditionalGeneration, by model_type
