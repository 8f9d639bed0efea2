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

Peak memory (``run_memory_bench``): the whole model as transformers loads it vs what a2p loads
(decoder up to the deepest head, no language-model head, vision tower cut at its feature layer), each
measured as the peak-RSS growth of a process of its own, on a random 24-layer LLaVA-shaped model.
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
    memory: bool = True,
    crop: bool = False,
    quantization: str | None = None,
) -> dict[str, Any]:
    """Time every method and stage; return a JSON-ready report. ``memory``: also the peak memory of the
    whole model vs what a2p loads (``run_memory_bench``: the random ``MEMORY_MODEL``, or ``backbone``
    with its heads' deepest layer), under ``peak_memory``."""
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
        adapter = load_backbone(
            name, device=device, dtype=dtype, allow_pickle=allow_pickle, crop=crop, quantization=quantization
        )
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
        report = {
            "backbone": asdict(info),
            "tiny_backbone": backbone is None,
            "device": str(adapter.device),
            "dtype": dtype,
            "quantization": quantization,
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
    if memory:
        options = {} if backbone is None else {"backbone": backbone, "head_layer": deepest, "dtype": dtype}
        report["peak_memory"] = run_memory_bench(**options)
    return report


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
        f"{report['dtype']}{' ' + report['quantization'] if report.get('quantization') else ''}; "
        f"heads {', '.join(report['heads'])}; "
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
    if report.get("peak_memory"):
        lines += ["", format_memory_report(report["peak_memory"])]
    return "\n".join(lines)


# ----- peak memory: the whole model vs what a method loads ------------------------------------------

# A LLaVA-1.5-shaped model at 1/8 of 7B's width: 24 decoder layers, a 32064-token vocabulary (its
# embeddings and head are as large a share as 7B's), a CLIP tower read at layer -2; bf16 weights.
MEMORY_MODEL: dict[str, Any] = {
    "num_layers": 24,
    "num_heads": 8,
    "num_kv_heads": 8,
    "head_dim": 64,
    "intermediate_size": 1376,
    "vocab_size": 32064,
    "image_size": 224,
    "vision_hidden_size": 256,
    "vision_layers": 6,
    "vision_heads": 4,
    "init_std": None,
    "dtype": torch.bfloat16,
}
MEMORY_HEAD_LAYER = 6  # the deepest localization head: what a2p / attention load up to
# imported by the measuring processes' parent once, so that each measurement starts with them loaded
MEMORY_PRELOAD = [
    "torch",
    "transformers",
    "PIL.Image",
    "part_point_ros.cli.bench",
    "part_point_ros.backbones.registry",
]


def memory_variants(head_layer: int) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """name -> (label, ``load_backbone`` options; None: transformers' whole model, generating a token)."""
    return {
        "whole": ("whole model (transformers), prefill + 1 token", None),
        "backbone": ("load_backbone(): vision tower cut, capture", {}),
        "max_layer": (f"+ max_layer={head_layer}", {"max_layer": head_layer}),
        "a2p": ("+ lm_head=False: what a2p loads", {"max_layer": head_layer, "lm_head": False}),
    }


def _rss_mb(field: str) -> float:
    """``VmHWM`` (peak resident set size of this process's address space) or ``VmRSS`` from
    /proc/self/status, in MB. (``ru_maxrss`` is no good here: Linux carries a parent's peak over into a
    child, so a child of a big process would start "big".)"""
    status = Path("/proc/self/status")
    if not status.is_file():
        raise RuntimeError("peak memory is read from /proc/self/status (VmHWM), which only Linux has")
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB -> MB
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _measure_memory(spec: dict[str, Any]) -> dict[str, float]:
    """In a process of its own (forked from a parent that imported ``MEMORY_PRELOAD`` and nothing else):
    load the backbone as ``spec`` says, read every kept weight once, run what the method runs on one
    640x480 frame; return the peak RSS before (``baseline_mb``) and after (``peak_mb``).

    Every kept weight is read because safetensors weights in the load dtype stay memory-mapped on a
    CPU: a page nothing reads is never resident, which would flatter a model whose head or deep layers
    are loaded but not run; moving the model to a GPU reads them all the same way.
    """
    from part_point_ros.backbones.base import BackboneInfo
    from part_point_ros.backbones.hf_adapter import read_config
    from part_point_ros.backbones.registry import REGISTRY, load_backbone, parse_dtype
    from part_point_ros.types import HeadRef

    torch.set_num_threads(1)
    path, dtype, load = spec["backbone"], parse_dtype(spec["dtype"]), spec["load"]
    adapter_class = REGISTRY[read_config(path).model_type]
    adapter_class._model_class()  # its modules imported before the baseline, as for every variant
    image = _test_image()
    heads = [HeadRef(spec["head_layer"], 0)]
    try:  # the peak so far := the current RSS (Linux >= 4.0); a fresh fork starts there anyway
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    baseline = _rss_mb("VmHWM")
    with torch.inference_mode():
        if load is None:  # everything the checkpoint holds, as transformers loads it
            model = adapter_class._model_class().from_pretrained(path, dtype=dtype).eval()
            text = model.config.get_text_config()
            info = BackboneInfo(path, adapter_class.family, text.num_hidden_layers, 1, 1, 1)
            adapter = adapter_class(model=model, processor=adapter_class._load_processor(path), info=info)
            adapter._set_crop(False)  # the same processing as load_backbone's (the whole frame)
        else:
            adapter = load_backbone(path, dtype=dtype, **load)
        for param in adapter.model.parameters():
            param.sum()  # read every page of it
        if load is None:
            adapter.generate(image, QUERY, max_new_tokens=1)
        else:
            adapter.capture(image, QUERY, heads)
    weights = sum(p.numel() * p.element_size() for p in adapter.model.parameters()) / 2**20
    return {"baseline_mb": baseline, "peak_mb": _rss_mb("VmHWM"), "weights_mb": weights}


def peak_memory_mb(
    backbone: str, loads: dict[str, dict[str, Any] | None], *, head_layer: int, dtype: str = "bfloat16"
) -> dict[str, dict[str, float]]:
    """Peak memory of loading ``backbone`` with each of ``loads`` (name -> ``load_backbone`` options;
    None: the whole model) and running one frame, each in a process of its own.

    Measured as the growth of the peak resident set size (``VmHWM``) of a process forked for that one
    measurement from a parent that imported ``MEMORY_PRELOAD`` and nothing else (multiprocessing's
    forkserver): everything the load and the forward allocate counts, torch's CPU tensors and the
    safetensors pages read included, and nothing freed earlier hides in it. (``tracemalloc`` sees none of
    torch's memory; torch keeps no CPU allocator statistics.) Per name: ``baseline_mb``, ``peak_mb``,
    ``load_mb`` (their difference) and ``weights_mb`` (the parameters kept).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(MEMORY_PRELOAD)
    results = {}
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for name, load in loads.items():
            spec = {"backbone": backbone, "dtype": dtype, "load": load, "head_layer": head_layer}
            result = pool.submit(_measure_memory, spec).result()
            results[name] = {**result, "load_mb": result["peak_mb"] - result["baseline_mb"]}
    return results


def run_memory_bench(
    *, backbone: str | None = None, head_layer: int = MEMORY_HEAD_LAYER, dtype: str = "bfloat16"
) -> dict[str, Any]:
    """Peak memory of each ``memory_variants`` row. Default backbone: the random ``MEMORY_MODEL`` built
    into a temporary directory."""
    variants = memory_variants(head_layer)
    with tempfile.TemporaryDirectory(prefix="part_point_memory_") as tmp:
        name = backbone
        if name is None:
            from part_point_ros.backbones.tiny import build_tiny_llava

            name = str(build_tiny_llava(Path(tmp) / "llava_24_layers", **MEMORY_MODEL))
        measured = peak_memory_mb(
            name, {k: load for k, (_, load) in variants.items()}, head_layer=head_layer, dtype=dtype
        )
    whole = measured["whole"]["load_mb"]
    rows = {
        k: {"label": variants[k][0], **m, "over_whole": m["load_mb"] / whole} for k, m in measured.items()
    }
    return {
        "backbone": "random 24-layer LLaVA (MEMORY_MODEL)" if backbone is None else backbone,
        "dtype": dtype,
        "head_layer": head_layer,
        "measure": "peak RSS (VmHWM) growth of a process forked for each row; every kept weight read once",
        "rows": rows,
    }


def format_memory_report(report: dict[str, Any]) -> str:
    """The peak-memory table; target: what a2p loads <= 0.7x the whole model."""
    lines = [
        f"peak memory, {report['backbone']} {report['dtype']}, heads up to layer {report['head_layer']}, one "
        "640x480 frame",
        f"({report['measure']})",
        f"{'variant':<48}{'weights MB':>12}{'peak MB':>10}{'/ whole':>9}",
    ]
    for row in report["rows"].values():
        lines.append(
            f"{row['label']:<48}{row['weights_mb']:>12.1f}{row['load_mb']:>10.1f}{row['over_whole']:>8.2f}x"
        )
    ratio = report["rows"]["a2p"]["over_whole"]
    lines.append(f"what a2p loads / whole model: {ratio:.2f}x (target <= 0.70x)")
    return "\n".join(lines)
