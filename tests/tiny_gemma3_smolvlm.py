"""Tiny random checkpoints of the REAL Gemma 3, SmolVLM and Idefics3 classes, for the adapter tests.

Like ``part_point_ros.backbones.tiny``: a real ``*ForConditionalGeneration`` from a tiny config, the
family's real image processor and processor, a local word-level tokenizer with the family's special
tokens and a chat template of the family's shape, all written with ``save_pretrained`` so that
``load_backbone(dir)`` reads them as it reads a hub checkpoint. Deterministic in ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import processors

from part_point_ros.backbones.tiny import DEFAULT_WORDS, PAD, UNK, _init_weights

# Gemma 3's turns: "<bos><start_of_turn>user\n<start_of_image>{text}<end_of_turn>\n<start_of_turn>model\n"
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
GEMMA3_SPECIALS = ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                   "<image_soft_token>")  # fmt: skip

# SmolVLM / Idefics3's format: "<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant:"
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SMOLVLM_SPECIALS = (
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)


def _tokenizer(specials: Sequence[str], *, bos: str | None, eos: str, extra: dict[str, str], add_bos: bool):
    """A lower-casing word-level tokenizer (as ``tiny.word_level_tokenizer``) with named extra special tokens
    (``tokenizer.boi_token`` ...); ``add_bos``: it prepends ``bos`` itself, as Gemma's tokenizer does."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in [PAD, UNK, *specials, *(w.lower() for w in (*DEFAULT_WORDS, "model"))]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(list(specials))
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=PAD,
        bos_token=bos,
        eos_token=eos,
        extra_special_tokens=extra,
    )


def build_tiny_gemma3(
    out_dir: str | Path,
    *,
    seed: int = 0,
    layer_types: Sequence[str] = (
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "full_attention",
    ),
    sliding_window: int = 16,
    query_pre_attn_scalar: int = 24,
    attn_logit_softcapping: float | None = None,
    image_size: int = 64,
    patch_size: int = 8,
    tokens_per_side: int = 4,
) -> Path:
    """Write a tiny Gemma 3 (SigLIP tower, avg-pooled to ``tokens_per_side``² image tokens, Gemma 3 decoder
    with q/k norms, sliding + full layers, GQA 4 heads on 2 KV heads, head_dim 16) to ``out_dir``.

    ``sliding_window`` 16 is shorter than any prompt (16 image tokens + the template), so a sliding
    layer's window cuts the prefix, through the image; ``query_pre_attn_scalar`` 24 != head_dim makes
    the softmax scale differ from 1/sqrt(head_dim). ``attn_logit_softcapping`` is a Gemma3TextConfig
    field that Gemma 3's attention never applies (only Gemma 2's does).
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    out = Path(out_dir)
    extra = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tokenizer = _tokenizer(GEMMA3_SPECIALS, bos="<bos>", eos="<eos>", extra=extra, add_bos=True)
    ids = tokenizer.convert_tokens_to_ids
    heads, kv_heads, head_dim = 4, 2, 16
    text_config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=heads * head_dim,
        intermediate_size=2 * heads * head_dim,
        num_hidden_layers=len(layer_types),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=2048,
        query_pre_attn_scalar=query_pre_attn_scalar,
        sliding_window=sliding_window,
        layer_types=list(layer_types),
        attn_logit_softcapping=attn_logit_softcapping,
        bos_token_id=ids("<bos>"),
        eos_token_id=ids("<eos>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=tokens_per_side**2,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    _init_weights(model, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = ids("<eos>")
    model.save_pretrained(out)

    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=tokens_per_side**2,
    )
    processor.save_pretrained(out)
    return out


def build_tiny_smolvlm(
    out_dir: str | Path,
    *,
    model_type: str = "smolvlm",
    seed: int = 0,
    num_layers: int = 4,
    crop_size: int = 64,
    longest_edge: int = 192,
    patch_size: int = 8,
    scale_factor: int = 2,
    do_image_splitting: bool = True,
) -> Path:
    """Write a tiny SmolVLM (``model_type="smolvlm"``) or Idefics3 (``"idefics3"``): SigLIP-style tower on
    ``crop_size`` crops, pixel shuffle by ``scale_factor`` (16 image tokens per crop), Llama decoder with
    GQA (4 heads on 2 KV heads, head_dim 16).

    The image processor resizes the longest edge to ``longest_edge`` (3 crops wide at most), splits into
    ``crop_size`` crops and adds the whole frame squeezed to one crop (the global image).
    """
    import transformers

    if model_type not in ("smolvlm", "idefics3"):
        raise ValueError(f"model_type must be smolvlm or idefics3, got {model_type!r}")
    prefix = "SmolVLM" if model_type == "smolvlm" else "Idefics3"
    config_class = getattr(transformers, f"{prefix}Config")
    vision_class = getattr(transformers, f"{prefix}VisionConfig")
    model_class = getattr(transformers, f"{prefix}ForConditionalGeneration")
    image_processor_class = getattr(transformers, f"{prefix}ImageProcessorPil")

    out = Path(out_dir)
    extra = {
        "fake_image_token": "<fake_token_around_image>",
        "image_token": "<image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
    }
    tokenizer = _tokenizer(
        SMOLVLM_SPECIALS, bos="<|im_start|>", eos="<end_of_utterance>", extra=extra, add_bos=False
    )
    ids = tokenizer.convert_tokens_to_ids
    heads, kv_heads, head_dim = 4, 2, 16
    text_config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=heads * head_dim,
        intermediate_size=2 * heads * head_dim,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=2048,
        bos_token_id=ids("<|im_start|>"),
        eos_token_id=ids("<end_of_utterance>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = vision_class(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=crop_size,
        patch_size=patch_size,
    )
    config = config_class(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=scale_factor,
        image_token_id=ids("<image>"),
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    _init_weights(model, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = ids("<end_of_utterance>")
    model.save_pretrained(out)

    image_processor = image_processor_class(
        size={"longest_edge": longest_edge},
        max_image_size={"longest_edge": crop_size},
        do_image_splitting=do_image_splitting,
    )
    seq_len = (crop_size // patch_size // scale_factor) ** 2
    if model_type == "smolvlm":
        from part_point_ros.backbones.smolvlm import smolvlm_image_text_processor_class

        processor = smolvlm_image_text_processor_class()(
            image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
            chat_template=SMOLVLM_CHAT_TEMPLATE,
        )  # fmt: skip
    else:
        processor = transformers.Idefics3Processor(
            image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
            chat_template=SMOLVLM_CHAT_TEMPLATE,
        )  # fmt: skip
    processor.save_pretrained(out)
    return out
