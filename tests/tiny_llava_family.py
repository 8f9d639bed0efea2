"""Tiny random LLaVA-NeXT / LLaVA-OneVision checkpoints of the REAL transformers classes, for tests.

Each builder writes a real ``*ForConditionalGeneration`` (tiny config, wide random weights so that
attention is not uniform), its real processor and a word-level tokenizer with ``save_pretrained``,
so that ``load_backbone(dir)`` goes through ``from_pretrained`` exactly as for a hub id. The
geometry is the families' own, scaled down: LLaVA-NeXT's pinpoints are 1x2, 2x1, 2x2, 1x3 and 3x1
tiles of the vision tower's input; OneVision's up to 3x3 with ``anyres_max_4`` so that big frames
are shrunk, and a SigLIP input (60 px) that its 14 px patches do not tile, as SigLIP-384's do not.
"""

from __future__ import annotations

from pathlib import Path

import torch

from part_point_ros.backbones.tiny import (
    BOS,
    DEFAULT_WORDS,
    EOS,
    LLAVA_CHAT_TEMPLATE,
    PAD,
    _init_weights,
    word_level_tokenizer,
)

# LLaVA-OneVision's ChatML conversation with the image placeholder before the text of a turn
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ONEVISION_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")


def build_tiny_llava_next(
    out_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 56,
    patch_size: int = 14,
    num_layers: int = 4,
    vision_layers: int = 2,
    tie_word_embeddings: bool = False,
) -> Path:
    """A tiny LLaVA-NeXT (CLIP tower, CLS dropped, feature layer -2; Llama with GQA 4 -> 2 heads)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    out = Path(out_dir)
    tokenizer = word_level_tokenizer(DEFAULT_WORDS, [BOS, EOS, "<image>"], bos=BOS, eos=EOS, pad=PAD)
    s = image_size
    pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [s, 3 * s], [3 * s, s]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=s,
            patch_size=patch_size,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=tie_word_embeddings,
    )
    _save_model(LlavaNextForConditionalGeneration(config), tokenizer, out, seed)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": s}, crop_size={"height": s, "width": s}, image_grid_pinpoints=pinpoints
    )
    LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    ).save_pretrained(out)
    return out


def build_tiny_llava_onevision(
    out_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 60,
    patch_size: int = 14,
    num_layers: int = 4,
    vision_layers: int = 2,
    max_num_patches: int = 4,
    tie_word_embeddings: bool = True,
) -> Path:
    """A tiny LLaVA-OneVision (SigLIP tower, all tokens kept; Qwen2 with GQA and tied embeddings as the
    0.5B model has). Feature layer -2, not OneVision's -1, so that the tower is cut on a SigLIP too."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
        SiglipVisionConfig,
    )

    from part_point_ros.backbones.llava_next import onevision_image_text_processor_class

    out = Path(out_dir)
    tokenizer = word_level_tokenizer(
        DEFAULT_WORDS, ONEVISION_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>"
    )
    s = image_size
    pinpoints = [[s * i, s * j] for i in range(1, 4) for j in range(1, 4)]
    ids = tokenizer.convert_tokens_to_ids
    aspect = f"anyres_max_{max_num_patches}"
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=s,
            patch_size=patch_size,
            vision_use_head=False,
        ),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            tie_word_embeddings=tie_word_embeddings,
        ),
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-2,
        vision_aspect_ratio=aspect,
        tie_word_embeddings=tie_word_embeddings,
    )
    _save_model(LlavaOnevisionForConditionalGeneration(config), tokenizer, out, seed)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": s, "width": s}, image_grid_pinpoints=pinpoints
    )
    onevision_image_text_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(s // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=aspect,
        chat_template=ONEVISION_CHAT_TEMPLATE,
    ).save_pretrained(out)
    return out


def _save_model(model: torch.nn.Module, tokenizer, out: Path, seed: int) -> None:
    """Wide deterministic random weights (the image newline too), generation ids, ``save_pretrained``."""
    model.eval()
    _init_weights(model, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
