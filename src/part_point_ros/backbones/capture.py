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

What the model's softmax does besides ``q·k * scaling`` is recorded too, from the same call: the
``sliding_window`` (Gemma 2/3 sliding layers: the query at position p sees keys p - window < j <= p,
``masking_utils.sliding_window_overlay``) and the ``softcap`` (Gemma 2: ``cap * tanh(logits / cap)``
before the mask) each layer passes to its attention function, so that ``Capture`` recomputes the
model's own probabilities. Both come from the call, not the config: Gemma 3 has a config field
``attn_logit_softcapping`` its attention never applies. Where the call carries a mask tensor (eager,
and sdpa when the mask is not plain causal), the recorded query rows' mask is checked against causal +
window, so a model whose softmax sees other keys fails loudly instead of being recomputed wrongly.
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
    softmax: dict[int, tuple[int | None, float | None]] = field(default_factory=dict)  # layer -> window, cap

    def record(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        kwargs: dict[str, Any],
    ) -> None:
        layer, heads = self.targets[module]
        groups = query.shape[1] // key.shape[1]  # query heads per KV head (GQA)
        rows = [r.to(query.device) for r in self.query_rows]
        window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
        _check_mask(layer, attention_mask, window, rows, self.key_lengths, query.shape[2], key.shape[2])
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
        self.scalings.add(float(kwargs.get("scaling", module.scaling)))
        self.softmax[layer] = (
            None if window is None else int(window),
            None if softcap is None else float(softcap),
        )


def _check_mask(
    layer: int,
    mask: Any,
    window: int | None,
    rows: Sequence[torch.Tensor],
    key_lengths: Sequence[int | None],
    n_queries: int,
    n_keys: int,
) -> None:
    """Raise if the mask the attention function got lets a recorded query row see other keys than
    causal + ``window`` (the rule ``Capture`` recomputes with). No tensor (plain causal: sdpa's
    ``is_causal``, flash attention's ``sliding_window``): nothing to check."""
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
        return
    offset = n_keys - n_queries  # with a KV cache, query i is the token at key position offset + i
    for b, (r, n) in enumerate(zip(rows, key_lengths, strict=True)):
        n = n_keys if n is None else n
        got = mask[min(b, mask.shape[0] - 1), 0].index_select(0, r)[:, :n]  # (Q, K) -> (L_b, n)
        got = got if got.dtype == torch.bool else got == 0  # eager: 0 where seen, dtype min elsewhere
        pos = (r + offset)[:, None]  # (L_b, 1) sequence position of each recorded query row
        j = torch.arange(n, device=r.device)[None]  # (1, n)
        want = (j <= pos) & ((pos - j < window) if window is not None else True)
        if not torch.equal(got.to(want.device), want):
            raise RuntimeError(
                f"layer {layer}: the model's attention mask lets the captured query rows see other keys "
                f"than causal{f' + sliding window {window}' if window else ''}; Capture cannot recompute "
                "this model's attention"
            )


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
            recorder.record(module, query, key, value, attention_mask, kwargs)
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
    windows: tuple[int | None, ...] = ()  # per head: the sliding window its layer's softmax used
    softcaps: tuple[float | None, ...] = ()  # per head: the logit soft-cap its layer applied


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

    # per head; () where no head has one (the common case: a plain causal softmax)
    windows = tuple(recorder.softmax[r.layer][0] for r in heads)
    windows = windows if any(w is not None for w in windows) else ()
    softcaps = tuple(recorder.softmax[r.layer][1] for r in heads)
    softcaps = softcaps if any(c is not None for c in softcaps) else ()
    return [
        CapturedQKV(
            queries=stack(b, 0),
            keys=stack(b, 1),
            values=stack(b, 2),
            scaling=scaling,
            windows=windows,
            softcaps=softcaps,
        )
        for b in range(len(query_rows))
    ]


def _run(forward: Callable[[], Any], recorder: _Recorder) -> None:
    with _capturing(recorder), torch.inference_mode():
        try:
            forward()
        except _StopPrefill:
            pass
