"""Point metrics of the paper (method.md §5), per sample and aggregated.

- **Accuracy** (hit-or-miss): the predicted point lies inside the GT mask (the union of every
  instance of the part). The point (x, y) in continuous original-image pixels falls in pixel
  (row, col) = (floor(y), floor(x)) (x = width or y = height count as the last pixel); a point
  outside the image, or a missing one (NaN: no answer), is a miss.
- **Patch Accuracy** (the paper does not define it; **unverified**, our default): the
  model-grid patch containing the predicted point overlaps the GT mask. The patch is the image-token
  cell (row, col) = floor of ``ImageGrid.pixel_to_grid(x, y)``; its box in original pixels is
  ``ImageGrid.cell_box(row, col)`` (clipped to the image); it overlaps the mask when any mask pixel
  intersects the box with positive area (pixel columns floor(x0) .. ceil(x1) - 1, rows likewise).
  A point outside the model's view (e.g. in a centre-cropped margin) or outside the image is a miss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from part_point_ros.types import ImageGrid

GROUP_KEYS = ("category", "object", "part", "query_kind", "instruction_kind", "mask_size")
SMALL_MASK_PIXELS = 400  # targets under this many pixels are reported apart ("mask_size" group)


def _pixel(mask: np.ndarray, x: float, y: float) -> tuple[int, int] | None:
    h, w = mask.shape[:2]
    if not (math.isfinite(x) and math.isfinite(y)) or not (0 <= x <= w and 0 <= y <= h):
        return None
    return min(int(math.floor(y)), h - 1), min(int(math.floor(x)), w - 1)


def point_hit(mask: np.ndarray, x: float, y: float) -> bool:
    """Accuracy of one prediction: (x, y) inside ``mask`` (H, W) bool."""
    pixel = _pixel(mask, x, y)
    return pixel is not None and bool(mask[pixel])


def patch_of(grid: ImageGrid, x: float, y: float) -> tuple[int, int] | None:
    """(row, col) of the model-grid cell that contains original pixel (x, y), or None outside it."""
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    gx, gy = grid.pixel_to_grid(x, y)
    row, col = int(math.floor(gy)), int(math.floor(gx))
    if not (0 <= row < grid.rows and 0 <= col < grid.cols):
        return None
    return row, col


def patch_hit(mask: np.ndarray, grid: ImageGrid, x: float, y: float) -> bool:
    """Patch Accuracy of one prediction (definition in the module docstring)."""
    if _pixel(mask, x, y) is None:
        return False
    cell = patch_of(grid, x, y)
    if cell is None:
        return False
    x0, y0, x1, y1 = grid.cell_box(*cell)
    h, w = mask.shape[:2]
    c0, c1 = max(0, math.floor(x0)), min(w, math.ceil(x1))
    r0, r1 = max(0, math.floor(y0)), min(h, math.ceil(y1))
    return bool(mask[r0:r1, c0:c1].any())


@dataclass
class PredictionRecord:
    """One scored prediction."""

    sample_id: str
    method: str
    x: float
    y: float
    score: float
    found: bool
    hit: bool
    patch_hit: bool
    latency_ms: float = float("nan")
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return str(self.meta.get("dataset", "unknown"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("x", "y", "score", "latency_ms"):
            if not math.isfinite(out[key]):
                out[key] = None
        return out


def score_prediction(
    *,
    sample_id: str,
    method: str,
    x: float,
    y: float,
    score: float,
    found: bool,
    mask: np.ndarray,
    grid: ImageGrid | None,
    meta: dict[str, Any] | None = None,
    latency_ms: float = float("nan"),
) -> PredictionRecord:
    """Score (x, y) against ``mask``; without a ``grid`` patch accuracy cannot be computed (False)."""
    mask = np.asarray(mask, dtype=bool)
    meta = dict(meta or {})
    meta.setdefault("mask_size", "small" if int(mask.sum()) < SMALL_MASK_PIXELS else "large")
    return PredictionRecord(
        sample_id=sample_id,
        method=method,
        x=float(x),
        y=float(y),
        score=float(score),
        found=bool(found),
        hit=point_hit(mask, x, y),
        patch_hit=patch_hit(mask, grid, x, y) if grid is not None else False,
        latency_ms=float(latency_ms),
        meta=meta,
    )


def _stats(records: Sequence[PredictionRecord]) -> dict[str, Any]:
    n = len(records)
    latencies = [r.latency_ms for r in records if math.isfinite(r.latency_ms)]
    return {
        "n": n,
        "accuracy": sum(r.hit for r in records) / n if n else float("nan"),
        "patch_accuracy": sum(r.patch_hit for r in records) / n if n else float("nan"),
        "found_rate": sum(r.found for r in records) / n if n else float("nan"),
        "latency_ms_mean": float(np.mean(latencies)) if latencies else float("nan"),
    }


def summarize(records: Iterable[PredictionRecord], group_keys: Sequence[str] = GROUP_KEYS) -> dict[str, Any]:
    """Accuracy per method, dataset and group.

    Returns ``{method: {"overall": stats, "datasets": {dataset: {"overall": stats,
    "by": {key: {value: stats}}}}}}``.
    """
    by_method: dict[str, list[PredictionRecord]] = {}
    for record in records:
        by_method.setdefault(record.method, []).append(record)
    out: dict[str, Any] = {}
    for method, recs in by_method.items():
        datasets: dict[str, Any] = {}
        for name in sorted({r.dataset for r in recs}):
            subset = [r for r in recs if r.dataset == name]
            groups: dict[str, Any] = {}
            for key in group_keys:
                values = sorted({str(r.meta[key]) for r in subset if r.meta.get(key) is not None})
                if values:
                    groups[key] = {
                        v: _stats([r for r in subset if str(r.meta.get(key)) == v]) for v in values
                    }
            datasets[name] = {"overall": _stats(subset), "by": groups}
        out[method] = {"overall": _stats(recs), "datasets": datasets}
    return out
