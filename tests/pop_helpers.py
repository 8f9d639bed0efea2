"""A tiny random DINOv3 checkpoint (the REAL ``DINOv3ViTModel`` class) and textured test images,
shared by the POP and support-store tests."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

# What the hub's facebook/dinov3-vits16-pretrain-lvd1689m ships as preprocessor_config.json
# (DINOv3ViTImageProcessor itself needs torchvision, which the tests do not install).
HUB_PREPROCESSOR = {
    "crop_size": None,
    "do_center_crop": None,
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "DINOv3ViTImageProcessorFast",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224},
}


def build_tiny_dinov3(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    registers: int = 4,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> Path:
    """Write a tiny random DINOv3 ViT (patch 16, ``registers`` register tokens) with
    ``save_pretrained`` and its preprocessor_config.json (the hub's, or ``mean`` / ``std``)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    out = Path(out_dir)
    config = DINOv3ViTConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_register_tokens=registers,
        patch_size=16,
        image_size=64,
    )
    torch.manual_seed(seed)
    DINOv3ViTModel(config).eval().save_pretrained(out)
    processor = dict(HUB_PREPROCESSOR)
    if mean is not None:
        processor["image_mean"] = list(mean)
    if std is not None:
        processor["image_std"] = list(std)
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return out


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 smoothed colour noise: every 16 px patch looks different from the others."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (5, 5), 1.2)
