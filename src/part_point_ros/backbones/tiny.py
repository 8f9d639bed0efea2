"""Tiny, randomly initialised checkpoints of the REAL supported model classes.

No 7B weights can be downloaded where the tests run, so every loading path is exercised on these:
a real ``LlavaForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` built from a
tiny config, a real processor (CLIP-style / Qwen2-VL image processor), a word-level tokenizer
built locally with ``tokenizers`` and a chat template, all written with ``save_pretrained`` so
that ``from_pretrained(dir)`` works exactly as it does for a hub id. Builds are deterministic in
``seed`` and take well under a second each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from part_point_ros.backbones.qwen_processor import qwen_image_text_processor_class

# Words the default vocabulary knows: prompt templates, instructions, common objects and parts.
DEFAULT_WORDS: tuple[str, ...] = (
    "user assistant system you are a helpful point to the of on in at with and or is it this that "
    "where which what find show me please click part object left right top bottom middle front back "
    "handle mug cup lid spout kettle knife blade bottle cap neck body screwdriver tip hammer head "
    "scissors drawer door knob chair leg seat bowl rim pan box red green blue yellow black white "
    "can grasp hold open pour cut x y answer coordinates"
).split() + list("0123456789.,:;!?()[]<>=\"'/-_")

UNK = "[UNK]"
PAD = "[PAD]"
BOS = "<s>"
EOS = "</s>"

# Chat templates of our own (HF renders them with trim_blocks: no newline right after a block tag).
# LLaVA-1.5's conversation format: "USER: <image>\n{text} ASSISTANT:" (a turn's images first).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'] | upper }}: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }} {% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }} {% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Qwen2.5-VL's ChatML format with the vision markers around the image placeholder.
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
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

QWEN_SPECIALS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def word_level_tokenizer(
    words: Sequence[str], specials: Sequence[str], *, bos: str | None, eos: str, pad: str
):  # -> PreTrainedTokenizerFast
    """A lower-casing word-level tokenizer: unknown words become ``[UNK]``; ``specials`` are atomic."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in [PAD, UNK, *specials, *(w.lower() for w in words)]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    backend.add_special_tokens(list(specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        additional_special_tokens=[s for s in specials if s not in (bos, eos, pad)],
    )
    tokenizer.padding_side = "left"
    return tokenizer


def _words(vocab_words: Sequence[str] | None) -> list[str]:
    return list(DEFAULT_WORDS) + list(vocab_words or ())


def _init_weights(model: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Deterministic random weights with a large enough spread that attention is not uniform."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight") or "layernorm" in name.lower() or "ln_" in name:
                param.fill_(1.0)
            elif param.ndim == 1:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def build_tiny_llava(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    image_size: int = 56,
    patch_size: int = 14,
    vocab_words: Sequence[str] | None = None,
    intermediate_size: int | None = None,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    vision_feature_layer: int = -2,
    pad_to_square: bool = False,
    init_std: float | None = 0.2,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny LLaVA-1.5 (CLIP vision tower + Llama with GQA) to ``out_dir``; return it.

    The image processor is CLIP's (shortest edge -> ``image_size``, centre crop ``image_size``),
    so the grid has ``(image_size // patch_size) ** 2`` image tokens (CLS dropped, as LLaVA-1.5).
    ``pad_to_square`` uses LLaVA's processor with ``do_pad`` instead, which pads the image to a
    square first so the whole image stays visible (the crop is then a no-op).
    ``init_std=None`` keeps transformers' own initialisation (for training from scratch) instead of
    the wide random spread that makes an untrained model's attention non-uniform.
    ``intermediate_size`` defaults to twice the hidden size. ``vocab_size`` (default: the tokenizer's)
    may be larger than the tokenizer, as a real LLaVA's is (32064 rows for 32002 tokens): it sizes the
    embeddings and the language-model head like a real model's. ``dtype``: of the saved weights.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessorPil,
        LlavaProcessor,
    )

    out = Path(out_dir)
    tokenizer = word_level_tokenizer(_words(vocab_words), [BOS, EOS, "<image>"], bos=BOS, eos=EOS, pad=PAD)
    hidden = num_heads * head_dim
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    text_config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate_size or 2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden_size,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=vision_feature_layer,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if init_std is not None:
        _init_weights(model, seed, std=init_std)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.to(dtype).save_pretrained(out)

    processor_class = LlavaImageProcessorPil if pad_to_square else CLIPImageProcessorPil
    pad = {"do_pad": True} if pad_to_square else {}
    image_processor = processor_class(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **pad
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


def build_tiny_qwen2_5_vl(
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
    vocab_words: Sequence[str] | None = None,
) -> Path:
    """Write a tiny Qwen2.5-VL (windowed ViT + 2x2 merger + Qwen2 with GQA and M-RoPE) to ``out_dir``.

    The image processor is Qwen2-VL's: ``smart_resize`` to multiples of ``patch_size * 2`` within
    ``[min_pixels, max_pixels]``; one image token per 2x2 patches.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    if head_dim % 4:
        raise ValueError(f"head_dim must be a multiple of 4 for M-RoPE, got {head_dim}")
    out = Path(out_dir)
    tokenizer = word_level_tokenizer(
        _words(vocab_words), QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>"
    )
    hidden = num_heads * head_dim
    half = head_dim // 2  # M-RoPE splits the rotary half into (temporal, height, width) sections
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_section,
            },
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 4 * patch_size * 2,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    _init_weights(model, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = qwen_image_text_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )
    processor.save_pretrained(out)
    tokenizer._set_processor_class("Qwen2_5_VLProcessor")  # as the hub's tokenizer_config.json says
    tokenizer.save_pretrained(out)
    # the video processor (needs torchvision) gets the image processor's settings, as on the hub
    video = {**image_processor.to_dict(), "video_processor_type": "Qwen2VLVideoProcessor"}
    video.pop("image_processor_type", None)
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    return out
