"""7B-shaped backbones with RANDOM weights, from the published configs, for timing and memory only.

No weights can be downloaded here, and timing does not need them: the cost of a prefill, a capture
and a generation depends on the shapes (layers, widths, heads, image tokens), not on the values.
``build_random_backbone("llava-1.5-7b", ...)`` builds the model directly on the device from the
config values of the published ``config.json`` (transcribed below, with the hub id they come from),
behind the family's real adapter, with a word-level tokenizer (the real tokenizers cannot be
downloaded either: prompts have about as many text tokens as with the real ones; the image tokens,
which dominate, are exact: 576 for LLaVA-1.5 at 336 px, (H/28)·(W/28) for Qwen2.5-VL).

Never use these for pointing: the weights are random. ``scale="tiny"`` shrinks every width and the
layer count (same families, same code paths) so that the benchmark runs on a CPU in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from part_point_ros.backbones.base import BackboneAdapter, BackboneInfo
from part_point_ros.errors import InputError


@dataclass(frozen=True)
class Published:
    hub_id: str
    family: str
    text: dict[str, Any]
    vision: dict[str, Any]
    heads_file: str  # the shipped localization heads (grounding/heads_files/)


# Values of the hub's config.json files (text_config / vision_config), as published.
PUBLISHED: dict[str, Published] = {
    "llava-1.5-7b": Published(
        hub_id="llava-hf/llava-1.5-7b-hf",
        family="llava",
        text={  # Vicuna-7B v1.5 (Llama 2 7B)
            "vocab_size": 32064,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
        },
        vision={  # CLIP ViT-L/14 at 336 px
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 768,
        },
        heads_file="llava-1.5-7b",
    ),
    "qwen2.5-vl-7b": Published(
        hub_id="Qwen/Qwen2.5-VL-7B-Instruct",
        family="qwen2_5_vl",
        text={
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "mrope_section": [16, 24, 24],
        },
        vision={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "min_pixels": 3136,
            "max_pixels": 12845056,
        },
        heads_file="qwen2.5-vl-7b",
    ),
}

# scale "tiny": (text layers, text heads, kv heads, head dim, vision layers, vision width)
_TINY = {"llava-1.5-7b": (4, 4, 4, 16, 2, 32), "qwen2.5-vl-7b": (4, 4, 2, 16, 4, 32)}


def _tiny_text(name: str, text: dict[str, Any]) -> dict[str, Any]:
    layers, heads, kv, head_dim, _, _ = _TINY[name]
    out = dict(text, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv)
    out.update(hidden_size=heads * head_dim, intermediate_size=2 * heads * head_dim, vocab_size=512)
    if "mrope_section" in out:
        half = head_dim // 2
        out["mrope_section"] = [half - 2 * (half // 3), half // 3, half // 3]
    return out


def text_config(name: str, scale: str = "published") -> dict[str, Any]:
    """The decoder's config values of ``name`` at ``scale`` (layers, heads, widths)."""
    if name not in PUBLISHED:
        raise InputError(f"unknown published config {name!r}; known: {', '.join(PUBLISHED)}")
    if scale not in ("published", "tiny"):
        raise InputError(f"scale must be 'published' or 'tiny', got {scale!r}")
    text = PUBLISHED[name].text
    return dict(text) if scale == "published" else _tiny_text(name, text)


def build_random_backbone(
    name: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    max_layer: int | None = None,
    scale: str = "published",
    seed: int = 0,
) -> BackboneAdapter:
    """The ``name`` model (a key of ``PUBLISHED``) with random weights, built on ``device``.

    ``max_layer``: only decoder layers 0..max_layer are built (what a2p / attention load).
    ``scale``: "published" (the real shapes) or "tiny" (for a CPU test of the same code).
    """
    text = text_config(name, scale)
    spec = PUBLISHED[name]
    vision = dict(spec.vision)
    if scale == "tiny":
        _, _, _, _, vision_layers, width = _TINY[name]
        vision = _tiny_vision(spec.family, vision, vision_layers, width, text["hidden_size"])
    num_layers = text["num_hidden_layers"]
    if max_layer is not None:
        if not 0 <= max_layer < num_layers:
            raise InputError(f"max_layer must be in 0..{num_layers - 1} for {name}, got {max_layer}")
        text = dict(text, num_hidden_layers=max_layer + 1)
    torch.manual_seed(seed)
    build = _build_llava if spec.family == "llava" else _build_qwen
    config, processor, adapter_class = build(text, vision)
    info = BackboneInfo(
        name=f"random {name} ({scale})",
        family=spec.family,
        num_layers=num_layers,
        num_heads=text["num_attention_heads"],
        num_kv_heads=text["num_key_value_heads"],
        head_dim=text["hidden_size"] // text["num_attention_heads"],
    )
    with torch.device(device):
        module = adapter_class._model_class()._from_config(config, dtype=dtype)
    module.eval().requires_grad_(False)
    module.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    module.generation_config.eos_token_id = None  # random weights: every answer has max_new_tokens
    return adapter_class(model=module, processor=processor, info=info)


def _tiny_vision(family: str, vision: dict[str, Any], layers: int, width: int, out: int) -> dict[str, Any]:
    if family == "llava":
        return dict(
            vision, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
            num_attention_heads=2, image_size=56, projection_dim=width,
        )  # fmt: skip
    return dict(
        vision, depth=layers, hidden_size=width, intermediate_size=2 * width, num_heads=2,
        out_hidden_size=out, fullatt_block_indexes=[layers - 1], max_pixels=48 * 28 * 28,
    )  # fmt: skip


def _build_llava(text: dict[str, Any], vision: dict[str, Any]) -> tuple[Any, Any, type]:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaImageProcessorPil,
        LlavaProcessor,
    )

    from part_point_ros.backbones.llava import LlavaAdapter
    from part_point_ros.backbones.tiny import BOS, EOS, LLAVA_CHAT_TEMPLATE, PAD, _words, word_level_tokenizer

    tokenizer = word_level_tokenizer(_words(None), [BOS, EOS, "<image>"], bos=BOS, eos=EOS, pad=PAD)
    size = vision["image_size"]
    config = LlavaConfig(
        text_config=LlamaConfig(**text, pad_token_id=tokenizer.pad_token_id),
        vision_config=CLIPVisionConfig(**vision),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(size // vision["patch_size"]) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    image_processor = LlavaImageProcessorPil(  # pad to square: the whole frame is seen
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_pad=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return config, processor, LlavaAdapter


def _build_qwen(text: dict[str, Any], vision: dict[str, Any]) -> tuple[Any, Any, type]:
    from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessorPil

    from part_point_ros.backbones.qwen2_5_vl import Qwen25VLAdapter
    from part_point_ros.backbones.qwen_processor import qwen_image_text_processor_class
    from part_point_ros.backbones.tiny import QWEN_CHAT_TEMPLATE, QWEN_SPECIALS, _words, word_level_tokenizer

    tokenizer = word_level_tokenizer(
        _words(None), QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>"
    )
    ids = tokenizer.convert_tokens_to_ids
    text = dict(text)
    rope = {"rope_type": "default", "rope_theta": text.pop("rope_theta", 10000.0)}
    rope["mrope_section"] = text.pop("mrope_section")
    vision = dict(vision)
    pixels = {"min_pixels": vision.pop("min_pixels"), "max_pixels": vision.pop("max_pixels")}
    config = Qwen2_5_VLConfig(
        text_config={
            **text,
            "rope_parameters": rope,
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    image_processor = Qwen2VLImageProcessorPil(
        **pixels, patch_size=vision["patch_size"], merge_size=2, temporal_patch_size=2
    )
    processor = qwen_image_text_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )
    return config, processor, Qwen25VLAdapter
