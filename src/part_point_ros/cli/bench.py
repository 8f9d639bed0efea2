"""``part-point bench``: latency of each method and stage on one backbone, medians over repetitions.

Default backbone: a tiny random LLaVA built into a temporary directory (the numbers then show the
RATIOS the design predicts, not real-model milliseconds). The a2p head is random (untrained): its
speed does not depend on its weights. One backbone load serves every method: the truncated prefill
is ``capture(truncate=True)`` on the same model, and a weights estimate says what a truncated
load (``max_layer``) would keep. Text pointing generates exactly ``max_new_tokens`` tokens
(``min_new_tokens`` forces it) so random weights cannot stop early.
"""

from __future__ import annotations

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
) -> dict[str, Any]:
    """Time every method and stage; return a JSON-ready report."""
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.grounding.pointer import PartPointer
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
        adapter = load_backbone(name, device=device, dtype=dtype)
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

        a2p = PartPointer(backbone=adapter, method="a2p", head=head)
        attention = PartPointer(backbone=adapter, method="attention", heads=head_refs)
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

        ms = {
            "head_only": timed(lambda: head(q, mask, keys, values, grid)),
            "capture_truncated": timed(lambda: adapter.capture(image, QUERY, head_refs, truncate=True)),
            "capture_full": timed(lambda: adapter.capture(image, QUERY, head_refs, truncate=False)),
            "a2p": timed(lambda: a2p.point(image, QUERY)),
            "attention": timed(lambda: attention.point(image, QUERY)),
            "text": timed(text_generate),
        }
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
            },
            "weights_mb": {
                "full": _weights_mb(adapter.model, None),
                f"truncated_at_layer_{deepest}": _weights_mb(adapter.model, deepest),
            },
            "peak_cuda_mb": (torch.cuda.max_memory_allocated(adapter.device) / 2**20)
            if adapter.device.type == "cuda"
            else None,
        }


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
        "capture_truncated": "prefill, truncated at deepest head",
        "capture_full": "prefill, all layers",
        "a2p": "a2p point() end to end",
        "attention": "attention point() end to end",
        "text": f"text: generate {report['text_new_tokens']} tokens",
    }
    for key, label in labels.items():
        lines.append(f"{label:<34}{report['latency_ms'][key]:>10.2f}")
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
            "note: tiny random backbone; the paper-size head outweighs it, so text / a2p here is not the "
            "7B ratio (paper: 5.0x LLaVA, 3.3x Qwen): run with --backbone for real numbers"
        )
    params = report["head_parameters"]
    lines.append(
        f"head parameters: Q-Synth {params['query_synthesis']:,}, A2P {params['attention_to_point']:,} "
        "(paper, k=5, d_h=128: 2.3 M / 1.7 M)"
    )
    if report.get("peak_cuda_mb") is not None:
        lines.append(f"peak CUDA memory {report['peak_cuda_mb']:.0f} MB")
    return "\n".join(lines)
