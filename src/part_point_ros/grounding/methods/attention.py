"""``attention``: Kang et al.'s attention pointing over the localization heads (baseline).

Per head, the last token's attention over the image tokens, Gaussian-smoothed and summed
(``attention_pointing``); the argmax cell's centre (Kang et al.; sub-pixel refinement optional).
``score`` = share of the map's mass in the 3x3 cells around the peak: no calibrated confidence, so
the default threshold is 0.0 (always found).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from part_point_ros.grounding.attention_pointing import (
    attention_heatmap,
    cells_on_image,
    clamp_to_image,
    peak_share,
)
from part_point_ros.grounding.methods.base import CaptureFn, PeakOptions, PointingMethod, find_peaks
from part_point_ros.grounding.result import PointResult
from part_point_ros.types import HeadRef


class AttentionMethod(PointingMethod):
    name = "attention"
    default_threshold = 0.0

    def __init__(self, heads: Sequence[HeadRef], peaks: PeakOptions) -> None:
        self.heads = tuple(heads)
        self.peaks = peaks

    def point_many(self, image: np.ndarray, queries: Sequence[str], captures: CaptureFn) -> list[PointResult]:
        results = []
        for capture, query in zip(captures(queries), queries, strict=True):
            grid = capture.grid
            heatmap = attention_heatmap(capture)
            peaks = find_peaks(heatmap, cells_on_image(grid), self.peaks)
            points = [
                (*clamp_to_image(grid, *grid.heatmap_to_pixel(p.row, p.col, 1)), peak_share(heatmap, p))
                for p in peaks
            ]
            x, y, score = points[0]
            results.append(
                PointResult(
                    x=x,
                    y=y,
                    score=score,
                    found=False,
                    method=self.name,
                    latency_ms=0.0,
                    query=query,
                    heatmap=heatmap,
                    grid=grid,
                    upscale=1,
                    points=points,
                )  # fmt: skip
            )
        return results
