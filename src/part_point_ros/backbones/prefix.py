"""Image-prefix reuse: one frame, many queries, the image processed and prefilled once.

Both supported families put the image before the instruction (LLaVA-1.5: ``USER: <image>\\n{q}
ASSISTANT:``; Qwen2.5-VL: ``<|im_start|>system ... <|vision_start|><|image_pad|>...<|vision_end|>{q}
<|im_end|> ...``), so the prompt's tokens through its last image token (the prefix, P0 tokens) are
the same for every query on a frame. The first query of a frame runs as ``capture`` does (processor,
vision tower, truncated prefill of the whole prompt), with a KV cache: the cache's first P0
positions are the frame's ``ImagePrefix``, kept at no extra forward (a single query on a new frame,
the streaming case, costs what it did). Every other query runs only its suffix (the tokens after the
image) against a copy of that cache, at the positions the WHOLE prompt gives its tokens (Qwen's
M-RoPE: the model's own ``get_rope_index`` on the whole prompt, sliced), so its captured Q/K/V are
those of the uncached path. Several suffixes run in one forward, right-padded, with an attention
mask over the padding (``suffix_batch``). The prefix only holds the decoder layers the heads
read (the prefill is truncated after the deepest one, as ``capture`` is).

What the prefix is: the tokens the template puts before the instruction, found by rendering it with
two different instructions and comparing the token ids (``PROBES``), cut at the last image token
(``Capture``'s query rows start right after it). A template that put the instruction BEFORE the image
would leave no image in that prefix: then ``image_prefix_length`` is None, nothing is reused and each
query runs its whole prompt (reusing the vision tower alone would be possible there through
``mm_encoder_outputs``; no supported family needs it). The same holds for sliding-window attention
(its cache keeps only the window) and for a tokenizer that alone does not reproduce the processor's ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from part_point_ros.types import ImageGrid

# Two instructions that differ in their first token: the template's tokens before either are the prefix.
PROBES = ("a", "b")


@dataclass(frozen=True)
class ImagePrefix:
    """One frame's prompt prefix (through the last image token) prefilled once, for any query.

    Made by ``capture_and_prefix`` and never changed after: each suffix forward runs on a cache that
    starts from views of ``past`` and concatenates onto them, so one prefix serves any number of
    queries, also from several threads.
    """

    grid: ImageGrid
    ids: torch.Tensor  # (P0,) long: the prompt's tokens through the last image token, model device
    image_positions: torch.Tensor  # (P,) long: sequence index of each image token, grid row-major (CPU)
    image_inputs: dict[str, torch.Tensor]  # processor tensors the positions need (image_grid_thw); no pixels
    past: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # layers 0..depth-1: key, value (1, H_kv, P0, d)

    @property
    def length(self) -> int:
        """P0: the number of prefix tokens."""
        return int(self.ids.shape[0])

    @property
    def depth(self) -> int:
        """Decoder layers in the cache: heads in layers 0..depth-1 can be captured after it."""
        return len(self.past)


def common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of leading entries two 1D tensors share."""
    n = min(a.shape[0], b.shape[0])
    differ = torch.nonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.numel() else n


def image_prefix_length(ids_a: torch.Tensor, ids_b: torch.Tensor, image_token_id: int) -> int | None:
    """The reusable prefix of two prompts that differ only in their instruction: through the last image
    token, if every image token comes before the first token where they differ; else None."""
    image = torch.nonzero(ids_a == image_token_id).flatten()
    if image.numel() == 0:
        raise ValueError("the prompt has no image token")
    end = int(image[-1]) + 1
    return end if end <= common_prefix_length(ids_a, ids_b) else None


def expand_image_token(ids: torch.Tensor, image_token_id: int, n_tokens: int) -> torch.Tensor:
    """(S,) ids with one image placeholder -> the placeholder repeated ``n_tokens`` times, as the
    processor expands it (the placeholder is a special token: the text around it tokenizes the same)."""
    at = torch.nonzero(ids == image_token_id).flatten()
    if at.numel() != 1:
        raise ValueError(f"expected one image placeholder in the prompt, found {at.numel()}")
    i = int(at[0])
    return torch.cat([ids[:i], ids[i : i + 1].repeat(n_tokens), ids[i + 1 :]])


@dataclass
class SuffixBatch:
    """The forward inputs of B query suffixes after one prefix, right-padded to the longest."""

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, P0 + L) long: 1 for the prefix and real suffix tokens, 0 for padding
    position_ids: torch.Tensor  # (..., B, L) as the model's forward takes them: (B, L) or (3, B, L) M-RoPE
    lengths: tuple[int, ...]  # real suffix length of each row


def suffix_batch(
    prompts: Sequence[torch.Tensor], positions: Sequence[torch.Tensor], prefix_length: int, pad_id: int
) -> SuffixBatch:
    """Slice each whole prompt (S_b,) and its positions (..., 1, S_b) after ``prefix_length`` and pad.

    Padding sits after each row's real tokens, so the causal mask alone keeps every real token from
    seeing it; the attention mask marks it too, as transformers expects of a padded batch. Its query
    rows are computed and dropped (any position does for them: 0).
    """
    suffixes = [ids[prefix_length:] for ids in prompts]
    lengths = tuple(int(s.shape[0]) for s in suffixes)
    if min(lengths) < 1:
        raise ValueError("a prompt ends within the prefix: nothing to run after it")
    width = max(lengths)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[-1]), value=value)

    input_ids = torch.stack([pad(s, pad_id) for s in suffixes])  # B x (L_b,) -> (B, L)
    position_ids = torch.cat([pad(p[..., prefix_length:], 0) for p in positions], dim=-2)  # (..., B, L)
    real = torch.stack([pad(torch.ones_like(s), 0) for s in suffixes])  # (B, L)
    attention_mask = torch.cat([real.new_ones(len(suffixes), prefix_length), real], dim=1)  # (B, P0 + L)
    return SuffixBatch(input_ids, attention_mask, position_ids, lengths)


def cached_prefix(cache: Any, depth: int, length: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Keys and values of layers 0..depth-1 of a filled ``DynamicCache``, cut to the first ``length``
    positions: the prefix of the prompt that filled it."""
    return tuple((layer.keys[:, :, :length], layer.values[:, :, :length]) for layer in cache.layers[:depth])


def cache_from_prefix(prefix: ImagePrefix, batch: int, config: Any) -> Any:
    """A fresh ``DynamicCache`` whose layers start as views of the prefix's keys and values, broadcast
    to ``batch`` rows. The suffix forward concatenates its own onto them (a new tensor): the prefix
    is never written to, and is copied once per layer, by that concatenation, not before it. (It sets
    the layers' state directly: ``DynamicCache(ddp_cache_data=...)`` would copy every prefix first.)"""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for layer, (key, value) in zip(cache.layers, prefix.past, strict=False):  # layers past depth: unused
        layer.lazy_initialization(key, value)
        layer.keys = key.expand(batch, -1, -1, -1)  # (1, H_kv, P0, d) -> (B, H_kv, P0, d), no copy
        layer.values = value.expand(batch, -1, -1, -1)
    return cache
