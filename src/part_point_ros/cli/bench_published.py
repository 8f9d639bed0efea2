"""``part-point bench-published``: a2p, attention and text pointing on 7B-shaped random-weight backbones.

What the robot's GPU will spend, before any weights are downloaded: the published configs of
llava-1.5-7b and Qwen2.5-VL-7B (``backbones/published.py``) built with random weights directly on
the device, each method loaded as ``PartPointer`` loads it (a2p / attention: decoder layers up to the
deepest localization head only; text: the whole model), timed on new 640x480 frames (median of
``reps`` after ``warmup``), with the peak memory of each method's model and run (CUDA: the
allocator's peak since the model was built; CPU: not measured). Rows: one query, five queries on
one frame (``point_many``), and one more query on a frame already seen (the prefix reused).

Heads: the shipped heads file's top 5 (Qwen2.5-VL-7B: POP's calibration, deepest layer 19);
LLaVA-1.5-7B has two published heads (L14H24, L14H13), so three more of layer 14 stand in for the
rest: the cost depends only on the deepest layer. The a2p head has the paper's size (d_h = the
backbone's head size, d_fused = 256) and random weights. Text pointing generates exactly
``max_new_tokens`` tokens (random weights never stop early; 16 is about what "Point: (0.52, 0.47)"
takes). ``scale="tiny"`` runs the same code on tiny shapes (CPU tests).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from part_point_ros.backbones.published import PUBLISHED, build_random_backbone, text_config
from part_point_ros.backbones.registry import check_device, parse_dtype
from part_point_ros.errors import InputError
from part_point_ros.types import HeadRef

QUERY = "the handle of the mug"
QUERIES = (
    "the handle of the mug",
    "the rim of the mug",
    "the lid of the pot",
    "the blade of the knife",
    "the spout",
)


def bench_heads(name: str, scale: str, num_layers: int, num_heads: int) -> list[HeadRef]:
    """Five localization heads: the shipped file's (padded in its deepest layer), or tiny ones."""
    if scale == "tiny":
        return [HeadRef(min(1 + i // num_heads, num_layers - 1), i % num_heads) for i in range(5)]
    from part_point_ros.grounding.localization_heads import load_heads

    heads = load_heads(PUBLISHED[name].heads_file).top(5)
    deepest = max(h.layer for h in heads)
    spare = (HeadRef(deepest, h) for h in range(num_heads) if HeadRef(deepest, h) not in heads)
    while len(heads) < 5:
        heads.append(next(spare))
    return heads


def _frames(width: int = 640, height: int = 480) -> Callable[[], np.ndarray]:
    """New frames: a fixed random image with a counter in its first pixel."""
    base = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    count = iter(range(1, 1 << 24))

    def new() -> np.ndarray:
        image = base.copy()
        image[0, 0] = np.frombuffer(next(count).to_bytes(3, "little"), dtype=np.uint8)
        return image

    return new


class _Meter:
    def __init__(self, device: torch.device, reps: int, warmup: int) -> None:
        self.device, self.reps, self.warmup = device, reps, warmup

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def ms(self, fn: Callable[[], Any]) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.reps):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)

    def reset_peak(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None


def run_published_bench(
    name: str,
    *,
    device: str = "cuda",
    dtype: str = "bfloat16",
    scale: str = "published",
    reps: int = 10,
    warmup: int = 2,
    max_new_tokens: int = 16,
    compile_vision: bool = False,
    methods: tuple[str, ...] = ("a2p", "attention", "text"),
) -> dict[str, Any]:
    """ms and peak GB per method and row; see the module docstring. ``methods``: a subset, e.g.
    without text where the whole model does not fit (a CPU run of the published shapes)."""
    from part_point_ros.grounding.pointer import PartPointer
    from part_point_ros.heads import HeadConfig, PartPointHead

    dev, torch_dtype = check_device(device), parse_dtype(dtype)
    meter, new_frame = _Meter(dev, reps, warmup), _frames()
    spec = PUBLISHED[name]
    text = text_config(name, scale)
    full_layers = text["num_hidden_layers"]
    heads = bench_heads(name, scale, full_layers, text["num_attention_heads"])
    report: dict[str, Any] = {"config": name, "hub_id": spec.hub_id, "device": str(dev), "dtype": dtype,
                              "scale": scale, "ms": {}, "peak_gb": {}, "layers_loaded": {}}  # fmt: skip
    unknown = set(methods) - {"a2p", "attention", "text"}
    if unknown or "a2p" not in methods:
        raise InputError(f"methods must include a2p and be among a2p, attention, text; got {list(methods)}")
    for method in methods:
        meter.reset_peak()
        deepest = None if method == "text" else max(h.layer for h in heads)
        backbone = build_random_backbone(name, device=dev, dtype=torch_dtype, scale=scale, max_layer=deepest)
        if compile_vision:
            backbone.compile_vision()
        options: dict[str, Any] = {"backbone": backbone, "method": method}
        if method == "a2p":
            info = backbone.info
            config = HeadConfig(backbone=info.__dict__, heads=[[h.layer, h.head] for h in heads],
                                d_head=info.head_dim, d_fused=256 if scale == "published" else 32,
                                norm_groups=8)  # fmt: skip
            options["head"] = PartPointHead(config).to(device=dev).eval()
        elif method == "attention":
            options["heads"] = heads
        else:
            options["max_new_tokens"] = max_new_tokens
        pointer = PartPointer(**options)
        report["layers_loaded"][method] = len(backbone.decoder_layers)
        ms = {"1_query": meter.ms(lambda p=pointer: p.point(new_frame(), QUERY))}
        if method != "text":
            ms["5_queries"] = meter.ms(lambda p=pointer: p.point_many(new_frame(), list(QUERIES)))
            seen = new_frame()
            pointer.point(seen, QUERY)
            ms["same_frame"] = meter.ms(lambda p=pointer, s=seen: p.point(s, QUERIES[1]))
        report["ms"][method] = ms
        report["peak_gb"][method] = meter.peak_gb()
        del pointer, backbone, options
    a2p = report["ms"]["a2p"]["1_query"]
    nan = float("nan")
    report["ratios"] = {
        "text_over_a2p": report["ms"].get("text", {}).get("1_query", nan) / a2p,
        "attention_over_a2p": report["ms"].get("attention", {}).get("1_query", nan) / a2p,
        "a2p_5_queries_over_1": report["ms"]["a2p"]["5_queries"] / a2p,
        "a2p_same_frame_over_1": report["ms"]["a2p"]["same_frame"] / a2p,
    }
    report["full_layers"] = full_layers
    return report


def format_published(report: dict[str, Any]) -> str:
    lines = [
        f"{report['config']} ({report['hub_id']} shapes, RANDOM weights, {report['scale']}) on "
        f"{report['device']}, {report['dtype']}",
        f"{'method':<10}{'layers':>8}{'1 query ms':>12}{'5 queries ms':>14}{'same frame ms':>15}"
        f"{'peak GB':>9}",
    ]
    for method, ms in report["ms"].items():
        peak = report["peak_gb"][method]
        lines.append(
            f"{method:<10}{report['layers_loaded'][method]:>5}/{report['full_layers']:<2}{ms['1_query']:>12.1f}"
            f"{ms.get('5_queries', float('nan')):>14.1f}{ms.get('same_frame', float('nan')):>15.1f}"
            f"{'-' if peak is None else f'{peak:.2f}':>9}"
        )
    r = report["ratios"]
    lines.append(
        f"text / a2p {r['text_over_a2p']:.2f}x   attention / a2p {r['attention_over_a2p']:.2f}x   "
        f"a2p 5 queries / 1 {r['a2p_5_queries_over_1']:.2f}x   "
        f"a2p same frame / new {r['a2p_same_frame_over_1']:.2f}x"
    )
    return "\n".join(lines)
