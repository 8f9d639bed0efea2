"""Record per-(layer, head) Q/K/V exactly as the language model uses them, in one (truncated) prefill.

Mechanism: transformers dispatches every attention call through ``ALL_ATTENTION_FUNCTIONS`` under
the name in ``module.config._attn_implementation``. While a capture runs, the decoder's config
(only the language model's: vision towers have their own config and are never touched) points
at a registered wrapper ``part_point_capture_<impl>``. The wrapper receives ``query`` (B, H, S, d)
and ``key``/``value`` (B, H_kv, S, d) after the rotary embedding (1D RoPE or M-RoPE, whatever
the model applied), records the selected heads of the selected layers, then delegates to the
original implementation (``sdpa``, the model's own ``eager`` function, ...). The masks are built
by the original implementation's mask function. After the deepest needed layer is recorded, a
private exception ends the forward so later layers never run.

With a KV cache (image-prefix reuse, ``backbones/prefix.py``) the wrapper sees ``key``/``value``
of the cached prefix and the new tokens, ``query`` of the new tokens only; a batch of right-padded
suffixes is recorded row by row (``capture_qkv_batch``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from part_point_ros.types import HeadRef

_PREFIX = "part_point_capture_"


class _StopPrefill(Exception):
    """Raised inside the forward once every requested layer has been recorded."""


@dataclass
class _Recorder:
    """What to record: attention module -> (layer, query heads of that layer), for each batch row."""

    targets: dict[nn.Module, tuple[int, tuple[int, ...]]]
    query_rows: tuple[torch.Tensor, ...]  # per batch row: (L_b,) long indices into the query axis to keep
    key_lengths: tuple[int | None, ...]  # per batch row: keys kept (a right-padded row's length; None: all)
    stop_module: nn.Module | None  # raise _StopPrefill after recording this one
    records: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = field(
        default_factory=dict
    )
    scalings: set[float] = field(default_factory=set)

    def record(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling):
        layer, heads = self.targets[module]
        groups = query.shape[1] // key.shape[1]  # query heads per KV head (GQA)
        rows = [r.to(query.device) for r in self.query_rows]
        for h in heads:
            kv = h // groups
            self.records[(layer, h)] = [
                (
                    query[b, h].index_select(0, rows[b]).detach().clone(),  # (S, d) -> (L_b, d)
                    key[b, kv, :n].detach().clone(),  # (S_kv, d) -> (n, d)
                    value[b, kv, :n].detach().clone(),
                )
                for b, n in enumerate(self.key_lengths)
            ]
        self.scalings.add(float(scaling))


_ACTIVE: ContextVar[_Recorder | None] = ContextVar("part_point_capture_recorder", default=None)


def _base_function(base: str, module: nn.Module) -> Callable[..., Any]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":  # each model file defines its own eager function; use the module's
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def _make_capture_function(base: str) -> Callable[..., Any]:
    def capture_attention(module, query, key, value, attention_mask, **kwargs):
        recorder = _ACTIVE.get()
        if recorder is not None and module in recorder.targets:
            recorder.record(module, query, key, value, kwargs.get("scaling", module.scaling))
            if module is recorder.stop_module:
                raise _StopPrefill
        return _base_function(base, module)(module, query, key, value, attention_mask, **kwargs)

    capture_attention.__name__ = f"{_PREFIX}{base}"
    return capture_attention


def capture_implementation(base: str) -> str:
    """Register (once) and return the name of the capturing wrapper around implementation ``base``."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if base.startswith(_PREFIX):
        return base
    name = f"{_PREFIX}{base}"
    if name not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        if base != "eager" and base not in ALL_ATTENTION_FUNCTIONS.valid_keys():
            raise ValueError(f"attention implementation {base!r} is not registered in transformers")
        AttentionInterface.register(name, _make_capture_function(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


@contextmanager
def _capturing(recorder: _Recorder) -> Iterator[None]:
    configs = {id(m.config): m.config for m in recorder.targets}
    saved = {key: cfg._attn_implementation for key, cfg in configs.items()}
    token = _ACTIVE.set(recorder)
    try:
        for key, cfg in configs.items():
            cfg._attn_implementation = capture_implementation(saved[key])
        yield
    finally:
        for key, cfg in configs.items():
            cfg._attn_implementation = saved[key]
        _ACTIVE.reset(token)


@dataclass
class CapturedQKV:
    """Stacked tensors in the order of ``heads``; float32 on the CPU."""

    queries: torch.Tensor  # (k, L, d)
    keys: torch.Tensor  # (k, S, d)
    values: torch.Tensor  # (k, S, d)
    scaling: float


def capture_qkv(
    forward: Callable[[], Any],
    attention_modules: Sequence[nn.Module],
    heads: Sequence[HeadRef],
    query_rows: torch.Tensor,
    *,
    truncate: bool = True,
) -> CapturedQKV:
    """Run ``forward()`` (one prefill of batch size 1) and return Q/K/V of ``heads``.

    ``attention_modules[i]`` is the self-attention module of decoder layer ``i``; ``query_rows``
    the sequence positions whose query rows are kept. With ``truncate`` the forward stops right
    after the deepest layer in ``heads`` has been recorded.
    """
    return capture_qkv_batch(forward, attention_modules, heads, [query_rows], [None], truncate=truncate)[0]


def capture_qkv_batch(
    forward: Callable[[], Any],
    attention_modules: Sequence[nn.Module],
    heads: Sequence[HeadRef],
    query_rows: Sequence[torch.Tensor],
    key_lengths: Sequence[int | None],
    *,
    truncate: bool = True,
) -> list[CapturedQKV]:
    """``capture_qkv`` for a forward over a batch: one ``CapturedQKV`` per batch row.

    Row ``b`` keeps the query rows ``query_rows[b]`` (indices into the forward's query axis: with a
    KV cache, the new tokens only) and the first ``key_lengths[b]`` keys and values (the cache and
    the row's real tokens, without its right padding; None: all).
    """
    if not heads:
        raise ValueError("capture needs at least one (layer, head)")
    if len(query_rows) != len(key_lengths):
        raise ValueError(f"{len(query_rows)} query_rows for {len(key_lengths)} key_lengths")
    by_layer: dict[int, list[int]] = {}
    for ref in heads:
        by_layer.setdefault(ref.layer, []).append(ref.head)
    targets = {attention_modules[layer]: (layer, tuple(hs)) for layer, hs in by_layer.items()}
    deepest = attention_modules[max(by_layer)]
    recorder = _Recorder(
        targets=targets,
        query_rows=tuple(query_rows),
        key_lengths=tuple(key_lengths),
        stop_module=deepest if truncate else None,
    )
    _run(forward, recorder)
    missing = [str(ref) for ref in heads if (ref.layer, ref.head) not in recorder.records]
    if missing:
        raise RuntimeError(f"the forward never reached heads {missing}: is the model's attention dispatched?")
    if len(recorder.scalings) != 1:
        raise RuntimeError(f"layers use different softmax scales {sorted(recorder.scalings)}")
    scaling = recorder.scalings.pop()

    def stack(b: int, i: int) -> torch.Tensor:
        return torch.stack([recorder.records[(r.layer, r.head)][b][i] for r in heads]).float().cpu()

    return [
        CapturedQKV(queries=stack(b, 0), keys=stack(b, 1), values=stack(b, 2), scaling=scaling)
        for b in range(len(query_rows))
    ]


def _run(forward: Callable[[], Any], recorder: _Recorder) -> None:
    with _capturing(recorder), torch.inference_mode():
        try:
            forward()
        except _StopPrefill:
            pass
