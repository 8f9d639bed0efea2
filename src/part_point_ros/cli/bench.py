"""``part-point bench``: latency of each method and stage on one backbone, medians over repetitions.

Default backbone: a tiny random LLaVA built into a temporary directory (the numbers then show the
RATIOS the design predicts, not real-model milliseconds). The a2p head is random (untrained): its
speed does not depend on its weights. One backbone load serves every method: the truncated prefill
is ``capture(truncate=True)`` on the same model, and a weights estimate says what a truncated
load (``max_layer``) would keep. Text pointing generates exactly ``max_new_tokens`` tokens
(``min_new_tokens`` forces it) so random weights cannot stop early.

Several parts of one frame (a2p and attention): one query on a new frame, five queries on a new
frame with ``point_many`` (suffixes batched, the default; one forward per query; no prefix reuse at
all, i.e. five ``point`` calls as before), and one more query on a frame already seen (the
same-frame prefix). Every "new frame" row alternates two frames that differ in one pixel, so the
kept prefix never matches. The report also gives the largest distance between the points with and
without reuse.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

QUERY = "the handle of the mug"
QUERIES = (QUERY, "the rim of the mug", "the lid of the kettle", "the blade", "the cap of the bottle")
_LM_LAYER = re.compile(r"language_model\.(?:model\.)?layers\.(\d+)\.")


def _median_ms(fn: Callable[[], Any], *, reps: int, warmup: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def _weights_mb(model: torch.nn.Module, max_layer: int | None) -> float | None:
    """MB of parameters kept when decoder layers past ``max_layer`` are not loaded (None: all)."""
    total, matched = 0, False
    for name, param in model.named_parameters():
        found = _LM_LAYER.search(name)
        matched = matched or found is not None
        if max_layer is not None and found and int(found.group(1)) > max_layer:
            continue
        total += param.numel() * param.element_size()
    return total / 2**20 if matched or max_layer is None else None


def _test_image(width: int = 640, height: int = 480) -> np.ndarray:
    """A deterministic RGB image: a gradient with a dark 'mug' and its 'handle'."""
    import cv2

    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    cv2.rectangle(image, (250, 180), (370, 340), (40, 40, 160), -1)
    cv2.ellipse(image, (390, 260), (35, 45), 0, -90, 90, (40, 40, 160), 12)
    return image


def _new_frames(image: np.ndarray) -> Callable[[], np.ndarray]:
    """A function giving ``image`` and a copy with one pixel changed in turn: always a new frame."""
    other = image.copy()
    other[0, 0, 0] ^= 1
    return itertools.cycle([image, other]).__next__


def _multi_query_ms(
    method: str,
    pointer_options: dict[str, Any],
    image: np.ndarray,
    timed: Callable[[Callable[[], Any]], float],
) -> dict[str, float]:
    """ms of one and of five queries on a new frame (three ways) and of one on a frame already seen."""
    from part_point_ros.grounding.pointer import PartPointer

    def pointer(**options: Any) -> PartPointer:
        return PartPointer(method=method, **pointer_options, **options)

    default, one_by_one = pointer(), pointer(batch_queries=False)
    uncached = pointer(reuse_prefix=False, batch_queries=False)
    new_frame = _new_frames(image)
    ms = {
        method: timed(lambda: default.point(new_frame(), QUERY)),
        f"{method}_5_queries": timed(lambda: default.point_many(new_frame(), QUERIES)),
        f"{method}_5_queries_one_by_one": timed(lambda: one_by_one.point_many(new_frame(), QUERIES)),
        f"{method}_5_queries_no_reuse": timed(lambda: uncached.point_many(new_frame(), QUERIES)),
    }
    default.point(image, QUERY)  # the frame is kept from now on
    ms[f"{method}_same_frame"] = timed(lambda: default.point(image, QUERIES[1]))
    return ms


def _multi_query_capture_ms(
    adapter: Any, heads: list[Any], image: np.ndarray, timed: Callable[[Callable[[], Any]], float]
) -> dict[str, float]:
    """``_multi_query_ms`` for the backbone alone: the captures, without head or decoding."""
    new_frame = _new_frames(image)
    ms = {
        "capture_5_queries": timed(lambda: adapter.capture_many(new_frame(), QUERIES, heads)),
        "capture_5_queries_one_by_one": timed(
            lambda: adapter.capture_many(new_frame(), QUERIES, heads, batch=False)
        ),
        "capture_5_queries_no_reuse": timed(
            lambda: [adapter.capture(new_frame(), q, heads) for q in QUERIES]
        ),
    }
    _, prefix = adapter.capture_and_prefix(image, QUERY, heads)
    if prefix is not None:
        ms["capture_same_frame"] = timed(lambda: adapter.capture_after_prefix(prefix, QUERIES[1:2], heads))
    return ms


def _reuse_shift_px(method: str, pointer_options: dict[str, Any], image: np.ndarray) -> float:
    """Largest distance (px) between the points of ``point_many`` (prefix reused, batched) and of one
    uncached ``point`` per query: 0 when reuse gives the same points."""
    from part_point_ros.grounding.pointer import PartPointer

    reused = PartPointer(method=method, **pointer_options).point_many(image, QUERIES)
    uncached = PartPointer(method=method, reuse_prefix=False, **pointer_options)
    alone = [uncached.point(image, query) for query in QUERIES]
    return max(math.dist((a.x, a.y), (b.x, b.y)) for a, b in zip(reused, alone, strict=True))


def _bench_heads(info: Any, heads: str | None) -> list[Any]:
    from part_point_ros.grounding.localization_heads import known_heads_name, load_heads
    from part_point_ros.types import HeadRef

    if heads or known_heads_name(info.name):
        return load_heads(heads or info.name).top(5)
    layer = max(2, info.num_layers // 2) if info.num_layers > 2 else info.num_layers - 1
    return [HeadRef(layer, h) for h in range(min(5, info.num_heads))]


def run_bench(
    *,
    backbone: str | None = None,
    heads: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    reps: int = 10,
    warmup: int = 2,
    max_new_tokens: int = 32,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Time every method and stage; return a JSON-ready report."""
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.grounding.text_pointing import text_prompt
    from part_point_ros.heads import HeadConfig, PartPointHead

    with tempfile.TemporaryDirectory(prefix="part_point_bench_") as tmp:
        name = backbone
        if name is None:
            from part_point_ros.backbones.tiny import build_tiny_llava

            name = str(
                build_tiny_llava(
                    Path(tmp) / "tiny_llava",
                    seed=0,
                    num_layers=8,
                    num_heads=8,
                    num_kv_heads=8,
                    head_dim=64,
                    image_size=224,
                )
            )
        adapter = load_backbone(name, device=device, dtype=dtype, allow_pickle=allow_pickle)
        info = adapter.info
        head_refs = _bench_heads(info, heads)
        torch.manual_seed(0)
        config = HeadConfig(
            backbone=asdict(info), heads=[(h.layer, h.head) for h in head_refs], d_head=info.head_dim
        )
        head = PartPointHead(config).to(adapter.device).eval()
        image = _test_image()

        def sync() -> None:
            if adapter.device.type == "cuda":
                torch.cuda.synchronize(adapter.device)

        options = {
            "a2p": {"backbone": adapter, "head": head},
            "attention": {"backbone": adapter, "heads": head_refs},
        }
        with torch.inference_mode():
            capture = adapter.capture(image, QUERY, head_refs, truncate=True).to(adapter.device)
        grid = (capture.grid.rows, capture.grid.cols)
        q = capture.queries.unsqueeze(0)  # (k, L, d) -> (1, k, L, d)
        mask = torch.ones(q.shape[:1] + q.shape[2:3], dtype=torch.bool, device=q.device)  # (1, L)
        keys, values = capture.image_keys.unsqueeze(0), capture.image_values.unsqueeze(0)  # (1, k, P, d)

        prompt = text_prompt(adapter.pointing_format, QUERY)
        inputs, _ = adapter.prepare(image, adapter.build_prompt(prompt))
        generated = {"n": 0}

        def text_generate() -> None:
            out = adapter.model.generate(
                **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
            )
            generated["n"] = int(out.shape[-1] - inputs["input_ids"].shape[-1])

        def timed(fn: Callable[[], Any]) -> float:
            with torch.inference_mode():
                return _median_ms(fn, reps=reps, warmup=warmup, sync=sync)

        n = len(QUERIES)
        q5, mask5 = q.expand(n, -1, -1, -1), mask.expand(n, -1)  # (1, ...) -> (5, ...): one frame, 5 queries
        keys5, values5 = keys.expand(n, -1, -1, -1), values.expand(n, -1, -1, -1)
        ms = {
            "head_only": timed(lambda: head(q, mask, keys, values, grid)),
            "head_only_5_queries": timed(lambda: head(q5, mask5, keys5, values5, grid)),
            "capture_truncated": timed(lambda: adapter.capture(image, QUERY, head_refs, truncate=True)),
            "capture_full": timed(lambda: adapter.capture(image, QUERY, head_refs, truncate=False)),
            **_multi_query_capture_ms(adapter, head_refs, image, timed),
            **_multi_query_ms("a2p", options["a2p"], image, timed),
            **_multi_query_ms("attention", options["attention"], image, timed),
            "text": timed(text_generate),
        }
        with torch.inference_mode():
            shift = {method: _reuse_shift_px(method, options[method], image) for method in options}
        deepest = max(h.layer for h in head_refs)
        return {
            "backbone": asdict(info),
            "tiny_backbone": backbone is None,
            "device": str(adapter.device),
            "dtype": dtype,
            "heads": [str(h) for h in head_refs],
            "grid": list(grid),
            "head_parameters": head.num_parameters(),
            "reps": reps,
            "warmup": warmup,
            "text_new_tokens": generated["n"],
            "latency_ms": ms,
            "ratios": {
                "text_over_a2p": ms["text"] / ms["a2p"],
                "full_over_truncated_forward": ms["capture_full"] / ms["capture_truncated"],
                "attention_over_a2p": ms["attention"] / ms["a2p"],
                "head_share_of_a2p": ms["head_only"] / ms["a2p"],
                **_multi_query_ratios(ms, "capture", one=ms["capture_truncated"]),
                **_multi_query_ratios(ms, "a2p"),
                **_multi_query_ratios(ms, "attention"),
            },
            "queries_per_frame": n,
            "reuse_max_shift_px": shift,
            "weights_mb": {
                "full": _weights_mb(adapter.model, None),
                f"truncated_at_layer_{deepest}": _weights_mb(adapter.model, deepest),
            },
            "peak_cuda_mb": (torch.cuda.max_memory_allocated(adapter.device) / 2**20)
            if adapter.device.type == "cuda"
            else None,
        }


MULTI_QUERY_ROWS = {  # latency key suffix -> (label, ratio key suffix)
    "5_queries": ("point_many, suffixes batched (default)", "5_over_1"),
    "5_queries_one_by_one": ("point_many, one forward per query", "5_one_by_one_over_1"),
    "5_queries_no_reuse": ("5 x point(), no prefix reuse", "5_no_reuse_over_1"),
    "same_frame": ("1 query on a frame already seen", "same_frame_over_new"),
}
MULTI_QUERY_COLUMNS = ("capture", "a2p", "attention")  # capture: the backbone's Q/K/V alone


def _multi_query_ratios(ms: dict[str, float], method: str, *, one: float | None = None) -> dict[str, float]:
    """Each multi-query row of ``method`` over one query on a new frame (``one``, default ms[method])."""
    one = ms[method] if one is None else one
    return {
        f"{method}_{ratio}": ms[f"{method}_{key}"] / one
        for key, (_, ratio) in MULTI_QUERY_ROWS.items()
        if f"{method}_{key}" in ms
    }


def _multi_query_lines(report: dict[str, Any]) -> list[str]:
    """The multi-query table: ms and ratio to one query on a new frame, per column (the backbone's
    captures alone, a2p, attention)."""
    ms, ratios = report["latency_ms"], report["ratios"]
    one = {"capture": ms["capture_truncated"], "a2p": ms["a2p"], "attention": ms["attention"]}
    title = f"{report['queries_per_frame']} queries on one frame (target <= 1.5x one)"
    lines = [
        f"{title:<44}" + "".join(f"{f'{c} ms':>14}{'/ 1 q':>8}" for c in MULTI_QUERY_COLUMNS),
        f"{'1 query on a new frame':<44}"
        + "".join(f"{one[c]:>14.2f}{'1.00x':>8}" for c in MULTI_QUERY_COLUMNS),
    ]
    for key, (label, ratio) in MULTI_QUERY_ROWS.items():
        cells = [
            f"{ms[f'{c}_{key}']:>14.2f}{ratios[f'{c}_{ratio}']:>7.2f}x"
            if f"{c}_{key}" in ms
            else f"{'-':>22}"
            for c in MULTI_QUERY_COLUMNS
        ]
        lines.append(f"{label:<44}{''.join(cells)}")
    shift = report["reuse_max_shift_px"]
    lines.append(
        f"points with vs without prefix reuse: largest shift a2p {shift['a2p']:.2g} px, "
        f"attention {shift['attention']:.2g} px"
    )
    return lines


def format_report(report: dict[str, Any]) -> str:
    """Human-readable table of the report."""
    info = report["backbone"]
    lines = [
        f"backbone {info['name']} ({info['family']}, {info['num_layers']} layers) on {report['device']} "
        f"{report['dtype']}; heads {', '.join(report['heads'])}; "
        f"grid {report['grid'][0]}x{report['grid'][1]}; "
        f"median of {report['reps']} after {report['warmup']} warm-up",
        "",
        f"{'stage / method':<34}{'ms':>10}",
    ]
    labels = {
        "head_only": "head only (Q-Synth + A2P)",
        "head_only_5_queries": f"head only, {report['queries_per_frame']} queries batched",
        "capture_truncated": "prefill, truncated at deepest head",
        "capture_full": "prefill, all layers",
        "a2p": "a2p point() end to end",
        "attention": "attention point() end to end",
        "text": f"text: generate {report['text_new_tokens']} tokens",
    }
    for key, label in labels.items():
        lines.append(f"{label:<34}{report['latency_ms'][key]:>10.2f}")
    lines += ["", *_multi_query_lines(report)]
    r = report["ratios"]
    lines += [
        "",
        f"text / a2p {r['text_over_a2p']:.2f}x   "
        f"full / truncated forward {r['full_over_truncated_forward']:.2f}x   "
        f"attention / a2p {r['attention_over_a2p']:.2f}x   head share of a2p {r['head_share_of_a2p']:.1%}",
    ]
    weights = ", ".join(f"{k} {v:.1f} MB" for k, v in report["weights_mb"].items() if v is not None)
    if weights:
        lines.append(f"weights: {weights}")
    if report.get("tiny_backbone"):
        lines.append(
            f"note: tiny random backbone; the head (the paper's layout, k = {len(report['heads'])}, at this "
            f"backbone's d_h = {info['head_dim']}) outweighs it, so text / a2p and a2p's multi-query ratio "
            "here are not the 7B ones (paper: text / a2p 5.0x LLaVA, 3.3x Qwen): run with --backbone for "
            "real numbers"
        )
    params = report["head_parameters"]
    lines.append(
        f"head parameters: Q-Synth {params['query_synthesis']:,}, A2P {params['attention_to_point']:,} "
        "(paper, k=5, d_h=128: 2.3 M / 1.7 M)"
    )
    if report.get("peak_cuda_mb") is not None:
        lines.append(f"peak CUDA memory {report['peak_cuda_mb']:.0f} MB")
    return "\n".join(lines)
