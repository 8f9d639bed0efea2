"""``PointResult``: one answer of the pointer, with its heatmap and the transform to image pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from part_point_ros.types import ImageGrid


@dataclass
class PointResult:
    """A point in ORIGINAL-image pixels with its score, and how it was found.

    ``heatmap`` is a float32 (rows * upscale, cols * upscale) map over the token grid of ``grid``
    (a probability map summing to 1 for ``a2p`` and ``attention``; None for ``text``). Heatmap pixel
    (i, j) maps to original pixels with ``grid.heatmap_to_pixel(i, j, upscale)``.
    ``points`` are further peaks (x, y, score), best first; ``points[0]`` is (x, y).
    """

    x: float
    y: float
    score: float
    found: bool
    method: str
    latency_ms: float
    query: str = ""
    heatmap: np.ndarray | None = None
    grid: ImageGrid | None = None
    upscale: int = 1
    points: list[tuple[float, float, float]] = field(default_factory=list)
    text: str | None = None  # the raw answer of the text method

    def heatmap_on_image(self) -> np.ndarray:
        """The heatmap resampled (bilinear) to the original image: float32 (H, W).

        Exact under the processor's resize / pad / crop: each original pixel centre is mapped into
        heatmap coordinates through ``grid``. Pixels that fall outside the model's view are 0.
        """
        if self.heatmap is None or self.grid is None:
            raise ValueError(f"method {self.method!r} produced no heatmap")
        width, height = self.grid.orig_size
        xs = np.arange(width, dtype=np.float64) + 0.5
        ys = np.arange(height, dtype=np.float64) + 0.5
        gx, _ = self.grid.pixel_to_grid(xs, np.zeros_like(xs))  # (W,) continuous grid columns
        _, gy = self.grid.pixel_to_grid(np.zeros_like(ys), ys)  # (H,) continuous grid rows
        map_x = np.broadcast_to((gx * self.upscale - 0.5)[None, :], (height, width)).astype(np.float32)
        map_y = np.broadcast_to((gy * self.upscale - 0.5)[:, None], (height, width)).astype(np.float32)
        return cv2.remap(
            self.heatmap.astype(np.float32),
            map_x,
            map_y,
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no heatmap array)."""
        out: dict[str, Any] = {
            "x": self.x,
            "y": self.y,
            "score": self.score,
            "found": self.found,
            "method": self.method,
            "latency_ms": self.latency_ms,
            "query": self.query,
            "points": [{"x": x, "y": y, "score": s} for x, y, s in self.points],
        }
        if self.grid is not None:
            out["image_size"] = list(self.grid.orig_size)
            out["grid"] = [self.grid.rows, self.grid.cols]
            out["upscale"] = self.upscale
        if self.text is not None:
            out["text"] = self.text
        return out


def draw_overlay(image: np.ndarray, result: PointResult, *, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image with the heatmap blended in (if any) and a marker at the point."""
    out = np.ascontiguousarray(image.copy())
    if result.heatmap is not None and result.grid is not None:
        heat = result.heatmap_on_image()
        span = float(heat.max() - heat.min())
        norm = ((heat - heat.min()) / span * 255.0) if span > 0 else np.zeros_like(heat)
        colour = cv2.applyColorMap(norm.astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
        out = cv2.addWeighted(out, 1.0 - alpha, np.ascontiguousarray(colour), alpha, 0.0)
    if not (np.isfinite(result.x) and np.isfinite(result.y)):
        return out  # nothing was found (text method): no marker
    size = max(6, int(0.04 * max(out.shape[:2])))
    centre = (int(round(result.x)), int(round(result.y)))
    marker_colour = (0, 255, 0) if result.found else (255, 0, 0)
    cv2.drawMarker(out, centre, (255, 255, 255), cv2.MARKER_CROSS, size + 4, 4)
    cv2.drawMarker(out, centre, marker_colour, cv2.MARKER_CROSS, size, 2)
    return out
