"""Tiny, randomly initialised Qwen2-VL / Qwen3-VL / Qwen3-VL-MoE checkpoints of the REAL classes.

Modelled on ``backbones/tiny.py``'s ``build_tiny_qwen2_5_vl``: a real ``*ForConditionalGeneration``
from a tiny config of the real config class, the real Qwen2-VL image processor (Qwen3-VL's settings:
16 px patches, mean/std 0.5), the word-level tokenizer and a ChatML template, all written with
``save_pretrained`` so that our ``load_backbone`` reads them through ``from_pretrained`` exactly as
it reads a hub id. fp32, deterministic in ``seed``, well under a second to build.
``processed_image`` rebuilds the image the ViT saw from a processor call (any Qwen-VL family).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from part_point_ros.backbones.qwen_processor import qwen_image_text_processor_class
from part_point_ros.backbones.tiny import (
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIALS,
    _init_weights,
    _words,
    word_level_tokenizer,
)

# Qwen3-VL's instruct template renders no default system turn (Qwen2-VL's does: QWEN_CHAT_TEMPLATE).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _mrope_section(head_dim: int) -> list[int]:
    """(temporal, height, width) split of the rotary half ``head_dim // 2`` (as the 7B's 16/24/24)."""
    if head_dim % 4:
        raise ValueError(f"head_dim must be a multiple of 4 for M-RoPE, got {head_dim}")
    half = head_dim // 2
    return [half - 2 * (half // 3), half // 3, half // 3]


def _text_config(
    tokenizer: Any, *, num_layers: int, num_heads: int, num_kv_heads: int, head_dim: int
) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    hidden = num_heads * head_dim
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": 4096,
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }


def _token_ids(tokenizer: Any) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _save(
    out: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    seed: int,
    processor_class: str,
    chat_template: str,
    image_processor: Any,
) -> Path:
    """Random weights, then model + processor + tokenizer + video settings, as a hub checkpoint has them."""
    _init_weights(model, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    processor = qwen_image_text_processor_class(processor_class)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template
    )
    processor.save_pretrained(out)
    tokenizer._set_processor_class(processor_class)  # as the hub's tokenizer_config.json says
    tokenizer.save_pretrained(out)
    # the video processor (needs torchvision) gets the image processor's settings, as on the hub
    video = {**image_processor.to_dict(), "video_processor_type": "Qwen2VLVideoProcessor"}
    video.pop("image_processor_type", None)
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    return out


def _tokenizer() -> Any:
    return word_level_tokenizer(_words(None), QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>")


def build_tiny_qwen2_vl(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    patch_size: int = 14,
    min_pixels: int = 4 * 28 * 28,
    max_pixels: int = 48 * 28 * 28,
) -> Path:
    """Write a tiny Qwen2-VL (ViT + 2x2 merger + Qwen2 with GQA and M-RoPE) to ``out_dir``; return it."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    out = Path(out_dir)
    tokenizer = _tokenizer()
    text = _text_config(
        tokenizer, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim
    )
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": _mrope_section(head_dim),
    }
    config = Qwen2VLConfig(
        text_config=text,
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": text["hidden_size"],  # the merger's output: the decoder's width
            "mlp_ratio": 2,
            "num_heads": 2,
            "patch_size": patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
    )
    return _save(
        out,
        model,
        tokenizer,
        seed=seed,
        processor_class="Qwen2VLProcessor",
        chat_template=QWEN_CHAT_TEMPLATE,
        image_processor=image_processor,
    )


def build_tiny_qwen3_vl(
    out_dir: str | Path,
    *,
    seed: int = 0,
    moe: bool = False,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    patch_size: int = 16,
    min_pixels: int = 4 * 32 * 32,
    max_pixels: int = 48 * 32 * 32,
    deepstack_visual_indexes: tuple[int, ...] = (0, 1),
) -> Path:
    """Write a tiny Qwen3-VL (``moe``: Qwen3-VL-MoE) to ``out_dir``; return it.

    Vision: 16 px patches, 2x2 merger, a learned 4x4 position grid (interpolated per image) and
    DeepStack mergers on ``deepstack_visual_indexes`` (the decoder adds their features to the image
    tokens after its layers 0..len-1). Text: Qwen3 attention (per-head q/k RMSNorm) with GQA and
    interleaved M-RoPE; with ``moe`` every layer's MLP is a 4-expert top-2 sparse block.
    """
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    out = Path(out_dir)
    tokenizer = _tokenizer()
    text = _text_config(
        tokenizer, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim
    )
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": _mrope_section(head_dim),
        "mrope_interleaved": True,
    }
    if moe:  # the MoE text config has no head_dim field: hidden / heads gives it
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=text["hidden_size"])
        text.update(decoder_sparse_step=1, mlp_only_layers=[])
    else:
        text["head_dim"] = head_dim
    vision = {
        "depth": max(deepstack_visual_indexes, default=0) + 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": text["hidden_size"],
        "patch_size": patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 16,
        "deepstack_visual_indexes": list(deepstack_visual_indexes),
    }
    prefix = "Qwen3VLMoe" if moe else "Qwen3VL"
    config_class = getattr(transformers, f"{prefix}Config")
    model_class = getattr(transformers, f"{prefix}ForConditionalGeneration")
    config = config_class(text_config=text, vision_config=vision, **_token_ids(tokenizer))
    torch.manual_seed(seed)
    model = model_class(config).eval()
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return _save(
        out,
        model,
        tokenizer,
        seed=seed,
        processor_class="Qwen3VLProcessor",
        chat_template=QWEN3_CHAT_TEMPLATE,
        image_processor=image_processor,
    )


def build_tiny_qwen3_vl_moe(out_dir: str | Path, **kwargs: Any) -> Path:
    """``build_tiny_qwen3_vl(out_dir, moe=True, ...)``."""
    return build_tiny_qwen3_vl(out_dir, moe=True, **kwargs)


def processed_image(adapter: Any, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """(H, W, 3) image the ViT saw, in [0, 1], rebuilt from the processor's patch rows (normalisation
    undone): what a marker painted in the original became, to check the grid against."""
    ip = adapter.processor.image_processor
    _, gh, gw = (int(v) for v in inputs["image_grid_thw"][0])
    m, p, t = ip.merge_size, ip.patch_size, ip.temporal_patch_size
    # (gh*gw, 3*t*p*p) -> (gh/m, gw/m, m, m, 3, t, p, p), first temporal copy
    pv = inputs["pixel_values"].float().reshape(gh // m, gw // m, m, m, 3, t, p, p)[:, :, :, :, :, 0]
    # (gh/m, gw/m, m, m, 3, p, p) -> (3, gh/m, m, p, gw/m, m, p) -> (3, gh*p, gw*p)
    img = pv.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)
    mean = torch.tensor(ip.image_mean).view(3, 1, 1)
    std = torch.tensor(ip.image_std).view(3, 1, 1)
    return (img * std + mean).permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)


BUILDERS = {
    "qwen2_vl": build_tiny_qwen2_vl,
    "qwen3_vl": build_tiny_qwen3_vl,
    "qwen3_vl_moe": build_tiny_qwen3_vl_moe,
}
