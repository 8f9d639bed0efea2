"""Qwen2.5-VL (``Qwen/Qwen2.5-VL-*-Instruct``): windowed ViT, 2x2 patch merger, M-RoPE decoder."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from part_point_ros.backbones.hf_adapter import HFAdapter
from part_point_ros.backbones.qwen_processor import qwen_image_text_processor_class
from part_point_ros.types import ImageGrid


class Qwen25VLAdapter(HFAdapter):
    """Qwen2.5-VL. Prompt from the processor's chat template; one image token per merged 2x2 patches.

    The image processor resizes the whole image (``smart_resize``: both sides multiples of
    ``patch_size * merge_size``, area within [min_pixels, max_pixels]); no crop, no pad.
    Qwen2-VL and Qwen3-VL share all of this and subclass it (``qwen2_vl.py``, ``qwen3_vl.py``): only
    their model class and processor class differ.
    """

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    processor_class_name: ClassVar[str] = "Qwen2_5_VLProcessor"  # the family's processor (no video part)

    @classmethod
    def _model_class(cls) -> type:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    @classmethod
    def _load_processor(cls, name_or_path: str) -> Any:
        from transformers import AutoProcessor
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            return AutoProcessor.from_pretrained(name_or_path)
        # the video processor needs torchvision; images and text go through the same code without it
        return qwen_image_text_processor_class(cls.processor_class_name).from_pretrained(name_or_path)

    def build_prompt(self, instruction: str) -> str:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction.strip()}]}
        ]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _position_ids(self, ids: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """M-RoPE positions (3, 1, S) of a whole prompt, from the model's own ``get_rope_index`` with the
        processor's own modality types: exactly what the forward computes when given no positions."""
        types = torch.tensor(self.processor.create_mm_token_type_ids([ids.tolist()]), device=ids.device)
        positions, _ = self.model.model.get_rope_index(
            ids[None], mm_token_type_ids=types, image_grid_thw=inputs["image_grid_thw"]
        )
        return positions

    def _grid(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor]) -> ImageGrid:
        _, grid_h, grid_w = (int(v) for v in inputs["image_grid_thw"][0])  # patches before merging
        merge = self.processor.image_processor.merge_size
        patch = self.processor.image_processor.patch_size
        pw, ph = grid_w * patch, grid_h * patch  # the resized image the ViT sees
        w, h = image_size
        return ImageGrid(
            rows=grid_h // merge,
            cols=grid_w // merge,
            orig_size=image_size,
            processed_size=(pw, ph),
            scale=(pw / w, ph / h),
            offset=(0.0, 0.0),
        )
