"""Peaks of 2D maps: argmax, LENS sub-pixel refinement, NMS multi-peaks, Gaussian smoothing.

Coordinates are (row, col) of the map, continuous where refined; pixel (i, j) is the CENTRE of cell
(i, j), which is what ``ImageGrid.heatmap_to_pixel`` expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Peak:
    """A peak of a map: continuous (row, col) and the map value at the integer peak."""

    row: float
    col: float
    value: float


def _as_map(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty 2D map, got shape {arr.shape}")
    return arr


def gaussian_smooth(values: np.ndarray, *, sigma: float = 1.0, size: int = 7) -> np.ndarray:
    """``size`` x ``size`` Gaussian blur with ``sigma`` (Kang et al.: 7x7, sigma 1), reflected borders."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D map, got shape {arr.shape}")
    return cv2.GaussianBlur(arr, (size, size), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def argmax_peak(values: np.ndarray) -> Peak:
    """The highest cell (the first one in row-major order on ties). NaN cells are ignored."""
    arr = _as_map(values)
    if np.isnan(arr).all():
        raise ValueError("the map is all NaN")
    flat = int(np.nanargmax(arr))
    row, col = divmod(flat, arr.shape[1])  # (H*W,) index -> (row, col)
    return Peak(float(row), float(col), float(arr[row, col]))


def subpixel_offset(values: np.ndarray, row: int, col: int, *, eps: float = 1e-6) -> tuple[float, float]:
    """LENS S1.2: one regularised Newton step on the 3x3 finite-difference Taylor model at (row, col).

    delta = -(H + eps I)^-1 g, clipped component-wise to [-1, 1]; a diagonal fallback
    delta_x = -Dx / (Dxx + eps) is used when H + eps I is ill-conditioned (or the step is not
    finite). Along an axis where (row, col) is on the border there is no central difference and the
    offset on that axis is 0. Returns (d_row, d_col).
    """
    arr = _as_map(values)
    h, w = arr.shape
    r, c = int(row), int(col)
    on_x = 0 < c < w - 1
    on_y = 0 < r < h - 1

    def v(dr: int, dc: int) -> float:
        return float(arr[min(max(r + dr, 0), h - 1), min(max(c + dc, 0), w - 1)])

    v0 = v(0, 0)
    dx = 0.5 * (v(0, 1) - v(0, -1)) if on_x else 0.0
    dy = 0.5 * (v(1, 0) - v(-1, 0)) if on_y else 0.0
    dxx = v(0, 1) - 2 * v0 + v(0, -1) if on_x else 0.0
    dyy = v(1, 0) - 2 * v0 + v(-1, 0) if on_y else 0.0
    dxy = 0.25 * (v(1, 1) + v(-1, -1) - v(1, -1) - v(-1, 1)) if on_x and on_y else 0.0
    g = np.array([dx, dy])
    hess = np.array([[dxx, dxy], [dxy, dyy]]) + eps * np.eye(2)
    delta = None
    if on_x and on_y and np.isfinite(hess).all() and np.linalg.cond(hess) < 1e6:
        step = -np.linalg.solve(hess, g)
        if np.isfinite(step).all():
            delta = step
    if delta is None:  # diagonal fallback (also the 1D case on a border)
        ddx = -dx / (dxx + eps) if on_x and dxx + eps != 0 else 0.0
        ddy = -dy / (dyy + eps) if on_y and dyy + eps != 0 else 0.0
        delta = np.array([ddx, ddy])
    delta = np.nan_to_num(np.clip(delta, -1.0, 1.0))
    return float(delta[1]), float(delta[0])


def refine_peak(values: np.ndarray, peak: Peak, *, eps: float = 1e-6) -> Peak:
    """``peak`` moved by ``subpixel_offset``; the value stays that of the integer cell."""
    d_row, d_col = subpixel_offset(values, int(peak.row), int(peak.col), eps=eps)
    return Peak(peak.row + d_row, peak.col + d_col, peak.value)


def nms_peaks(
    values: np.ndarray,
    *,
    radius: float = 4.0,
    max_points: int = 16,
    min_value: float = 0.0,
    subpixel: bool = False,
    eps: float = 1e-6,
) -> list[Peak]:
    """LENS S1.1 NMS: take the highest cell, suppress everything within Euclidean ``radius`` cells,
    repeat until no value exceeds ``min_value`` or ``max_points`` are taken. Highest first.

    Sub-pixel refinement (if asked) uses the ORIGINAL map, not the suppressed one.
    """
    arr = _as_map(values)
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    work = np.where(np.isnan(arr), -np.inf, arr)
    rows, cols = np.mgrid[0 : arr.shape[0], 0 : arr.shape[1]]
    peaks: list[Peak] = []
    while len(peaks) < max_points:
        flat = int(np.argmax(work))
        r, c = divmod(flat, arr.shape[1])
        if not work[r, c] > min_value:
            break
        peak = Peak(float(r), float(c), float(arr[r, c]))
        peaks.append(refine_peak(arr, peak, eps=eps) if subpixel else peak)
        work[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = -np.inf
    return peaks
