"""Tiny random InternVL3 and Molmo2 checkpoints of the REAL transformers classes, written with
``save_pretrained`` so that ``load_backbone(dir)`` reads them as it reads a hub id.

Each builds in well under a second: a word-level tokenizer with the family's special tokens, the
family's real image processor and processor (the torchvision-free variants the adapters load when
torchvision is missing), a chat template of our own in the family's format, and the real
``*ForConditionalGeneration`` from a tiny config with wide random weights (so attention is not uniform).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from part_point_ros.backbones.tiny import DEFAULT_WORDS, _init_weights, word_level_tokenizer

CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# InternVL3-hf's format: ChatML, the image as one <IMG_CONTEXT> line before the text of the user turn.
INTERNVL_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Molmo2's format: ChatML without a system turn, the image placeholder right before the user's text
# (the processor puts the BOS token in front of the whole prompt).
MOLMO2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<|image|>' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MOLMO2_IMAGE_SPECIALS = (
    "<im_patch>",
    "<im_col>",
    "<im_start>",
    "<low_res_im_start>",
    "<frame_start>",
    "<im_end>",
    "<frame_end>",
    "<im_low>",
    "<|image|>",
    "<|video|>",
)


def build_tiny_internvl(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    tile_size: int = 84,
    patch_size: int = 14,
    max_patches: int = 6,
    crop_to_patches: bool = True,
    vocab_words: Sequence[str] | None = None,
) -> Path:
    """Write a tiny InternVL3 (InternViT + pixel shuffle 0.5 + Qwen2 with GQA) to ``out_dir``; return it.

    Tiles of ``tile_size`` px, ``patch_size`` px patches: ``(tile_size / patch_size / 2) ** 2`` tokens per
    view (9 by default), up to ``max_patches`` tiles plus the thumbnail.
    """
    from transformers import InternVLConfig, InternVLForConditionalGeneration, PreTrainedTokenizerFast
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from part_point_ros.backbones.internvl import internvl_image_text_processor_class

    out = Path(out_dir)
    image_specials = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    words = list(DEFAULT_WORDS) + list(vocab_words or ())
    base = word_level_tokenizer(
        words, [*CHATML_SPECIALS, *image_specials.values()], bos=None, eos="<|im_end|>", pad="<|endoftext|>"
    )
    # InternVL3-hf's tokenizer names its image tokens (extra_special_tokens): the processor reads them
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        unk_token=base.unk_token,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        extra_special_tokens=image_specials,
    )
    if tile_size % (2 * patch_size):
        raise ValueError(f"tile_size must be a multiple of 2 * patch_size, got {tile_size} and {patch_size}")
    side = tile_size // patch_size // 2
    hidden = num_heads * head_dim
    ids = tokenizer.convert_tokens_to_ids
    config = InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": [tile_size, tile_size],
            "patch_size": [patch_size, patch_size],
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads,
            "max_position_embeddings": 2048,
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        image_token_id=ids("<IMG_CONTEXT>"),
        image_seq_length=side * side,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    _init_weights(model, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)

    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile_size, "width": tile_size},
        crop_to_patches=crop_to_patches,
        min_patches=1,
        max_patches=max_patches,
    )
    processor = internvl_image_text_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=side * side,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


def build_tiny_molmo2(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    crop_size: int = 70,
    patch_size: int = 14,
    max_crops: int = 6,
    overlap_margins: tuple[int, int] = (1, 1),
    vocab_words: Sequence[str] | None = None,
) -> Path:
    """Write a tiny Molmo2 (ViT + 2x2 attention pooling + Qwen3-style decoder with GQA) to ``out_dir``.

    Crops of ``crop_size`` px (5x5 patches by default: an odd count, so the 2x2 pooling pads), overlapping
    by ``overlap_margins`` patches, up to ``max_crops`` plus the low-resolution view of the whole frame.
    """
    from transformers import Molmo2Config, Molmo2ForConditionalGeneration

    from part_point_ros.backbones.molmo2 import (
        molmo2_image_processor_class,
        molmo2_image_text_processor_class,
    )

    out = Path(out_dir)
    words = list(DEFAULT_WORDS) + list(vocab_words or ())
    tokenizer = word_level_tokenizer(
        words, [*CHATML_SPECIALS, *MOLMO2_IMAGE_SPECIALS], bos=None, eos="<|im_end|>", pad="<|endoftext|>"
    )
    hidden = num_heads * head_dim
    ids = tokenizer.convert_tokens_to_ids
    config = Molmo2Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "image_size": [crop_size, crop_size],
            "patch_size": patch_size,
        },
        adapter_config={
            "vision_feature_layer": [-1, 0],
            "hidden_size": 32,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 64,
            "text_hidden_size": hidden,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "additional_vocab_size": 0,
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        image_start_token_id=ids("<im_start>"),
        low_res_image_start_token_id=ids("<low_res_im_start>"),
        image_end_token_id=ids("<im_end>"),
        image_patch_id=ids("<im_patch>"),
        frame_start_token_id=ids("<frame_start>"),
        frame_end_token_id=ids("<frame_end>"),
    )
    torch.manual_seed(seed)
    model = Molmo2ForConditionalGeneration(config).eval()
    _init_weights(model, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)

    image_processor = molmo2_image_processor_class()(
        size={"height": crop_size, "width": crop_size},
        patch_size=patch_size,
        max_crops=max_crops,
        overlap_margins=list(overlap_margins),
        pooling_size=[2, 2],
    )
    processor = molmo2_image_text_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=MOLMO2_CHAT_TEMPLATE
    )
    processor.save_pretrained(out)
    return out
