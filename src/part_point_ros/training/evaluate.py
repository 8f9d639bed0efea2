"""Evaluation: Accuracy and Patch Accuracy (``metrics``) of a2p / attention / text on a dataset.

Predictions come from ``grounding.PartPointer`` (the inference path users run), or, for a2p, from
a feature cache (``predict_from_cache``: same head, same peak and pixel mapping, no backbone).
``run_evaluation`` writes ``report.md``, ``report.json``, ``predictions.jsonl`` and a plot.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from part_point_ros.training.batching import GridBucketBatchSampler, collate
from part_point_ros.training.config import TrainConfig
from part_point_ros.training.errors import ConfigError
from part_point_ros.training.feature_cache import FeatureCache, json_safe
from part_point_ros.training.metrics import PredictionRecord, score_prediction, summarize
from part_point_ros.training.report import write_report

A2P_THRESHOLD = 0.5  # found = patch probability under the peak >= 0.5 (as PartPointer's a2p)
# Data-set images are the user's own local files, scored as they are: the request-size limits that
# guard a robot's pointer (inputs.MAX_IMAGE_PIXELS, 8:1) would drop large photos from a benchmark.
DATASET_IMAGE_LIMITS = {"max_image_pixels": 1 << 40, "max_aspect_ratio": 1e6}


def predict_with_pointer(
    pointer: Any,
    samples: Sequence[Any],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[PredictionRecord]:
    """Run ``pointer.point`` on each sample and score it against the sample's mask."""
    records = []
    for i, sample in enumerate(samples):
        image = sample.load_image()
        result = pointer.point(image, sample.query)
        grid = result.grid  # every method reports the grid of its own processor call
        records.append(
            score_prediction(
                sample_id=sample.sample_id,
                method=result.method,
                x=result.x,
                y=result.y,
                score=result.score,
                found=result.found,
                mask=sample.load_mask(),
                grid=grid,
                meta=json_safe(sample.meta),
                latency_ms=result.latency_ms,
            )  # fmt: skip
        )
        if progress:
            progress(i + 1, len(samples))
    return records


@torch.no_grad()
def predict_from_cache(
    head: Any,
    cache: FeatureCache,
    *,
    device: str = "cpu",
    batch_size: int = 16,
    subpixel: bool = True,
    threshold: float = A2P_THRESHOLD,
    max_samples: int | None = None,
) -> list[PredictionRecord]:
    """a2p predictions from cached features: heatmap peak (LENS-refined) -> original pixels, decoded
    by ``grounding.methods.a2p.decode_a2p`` exactly as ``PartPointer`` does (padding cells never win)."""
    from part_point_ros.grounding.methods.a2p import decode_a2p, presence_probability, score_rule

    head = head.to(device).eval()
    count = len(cache) if max_samples is None else min(len(cache), max_samples)
    sampler = GridBucketBatchSampler(cache.grid_shapes()[:count], batch_size, shuffle=False)
    upscale = head.config.upscale
    records: list[PredictionRecord] = []
    for indices in sampler:
        batch = collate([cache[i] for i in indices], head.config).to(device)
        start = time.perf_counter()
        out = head(batch.queries, batch.query_mask, batch.keys, batch.values, batch.grid_shape)
        per_sample_ms = (time.perf_counter() - start) * 1000.0 / len(indices)
        for b, index in enumerate(indices):
            grid = cache.grid(index)
            # heatmap (s·rows, s·cols), attn logits (k, P) -> the best point in original pixels
            _, points = decode_a2p(
                out.heatmap[b],
                out.attn_logits[b],
                grid,
                upscale,
                subpixel=subpixel,
                score=score_rule(head.config),
                presence=presence_probability(out, b),
            )
            x, y, score = points[0]
            record = cache.records[index]
            records.append(
                score_prediction(
                    sample_id=record["sample_id"],
                    method="a2p",
                    x=x,
                    y=y,
                    score=score,
                    found=score >= threshold and math.isfinite(x),
                    mask=cache.mask(index),
                    grid=grid,
                    meta=record["meta"],
                    latency_ms=per_sample_ms,
                )  # fmt: skip
            )
    order = {record["sample_id"]: i for i, record in enumerate(cache.records)}
    return sorted(records, key=lambda r: order[r.sample_id])


@dataclass
class EvalOutcome:
    summary: dict[str, Any]
    records: list[PredictionRecord]
    files: dict[str, Path]


def _eval_samples(config: TrainConfig, max_samples: int | None) -> Any:
    from part_point_ros.data import load_dataset

    if config.eval_data is None:
        raise ConfigError("eval_data is not set: add eval_data: {kind: ..., args: {...}} to the config")
    dataset = load_dataset(config.eval_data.kind, **config.eval_data.args)
    limit = max_samples or config.eval_max_samples or config.eval_data.max_samples
    return dataset.samples[:limit] if limit else dataset.samples


def run_evaluation(
    config: TrainConfig,
    *,
    methods: Sequence[str] | None = None,
    head_dir: str | Path | None = None,
    from_cache: bool = False,
    out_dir: str | Path | None = None,
    max_samples: int | None = None,
    dtype: str = "float32",
    log: Callable[[str], None] | None = None,
) -> EvalOutcome:
    """Evaluate ``methods`` (default ``config.eval_methods``) and write the report to ``out_dir``.

    a2p uses ``head_dir`` (default ``<out_dir of training>/head``); with ``from_cache`` it reads
    ``<cache_dir>/eval`` instead of running the backbone. attention/text load the backbone.
    """
    from part_point_ros.heads import PartPointHead

    methods = list(methods or config.eval_methods)
    head_dir = Path(head_dir) if head_dir else Path(config.out_dir) / "head"
    out = Path(out_dir) if out_dir else Path(config.out_dir) / "eval"
    device = config.resolved_device()
    records: list[PredictionRecord] = []
    samples = None
    backbone_name = config.backbone
    for method in methods:
        if log:
            log(f"evaluating {method} ...")
        if method == "a2p" and from_cache:
            head = PartPointHead.from_pretrained(head_dir, device=device)
            cache = FeatureCache(config.cache_path("eval"))
            cache.check_matches(upscale=head.config.upscale)
            cache.use_heads(head.config.head_refs)  # checks them: the first k cached heads
            backbone_name = backbone_name or cache.backbone["name"]
            limit = max_samples or config.eval_max_samples
            records += predict_from_cache(head, cache, device=device, max_samples=limit)
            continue
        from part_point_ros.grounding import PartPointer

        if samples is None:
            samples = _eval_samples(config, max_samples)
        if method == "a2p":
            pointer = PartPointer.from_pretrained(
                backbone=config.backbone or None,
                head=str(head_dir),
                method="a2p",
                device=device,
                dtype=dtype,
                **DATASET_IMAGE_LIMITS,
            )
        else:
            if not config.backbone:
                raise ConfigError(f"method {method} needs backbone: set it in the config or with --backbone")
            heads = config.head_refs() if config.heads else None
            pointer = PartPointer.from_pretrained(
                backbone=config.backbone,
                method=method,
                device=device,
                dtype=dtype,
                heads=heads,
                k=config.k,
                **DATASET_IMAGE_LIMITS,
            )
        backbone_name = backbone_name or pointer.backbone.info.name
        records += predict_with_pointer(pointer, samples)
        del pointer
    summary = summarize(records)
    files = write_report(summary, records, out, backbone_name=backbone_name)
    return EvalOutcome(summary=summary, records=records, files=files)


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """The ``predictions.jsonl`` a report wrote (one dict per prediction)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def accuracy(records: Sequence[PredictionRecord]) -> float:
    return float(np.mean([r.hit for r in records])) if records else float("nan")
