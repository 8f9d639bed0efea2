"""Peaks of 2D maps: argmax, LENS sub-pixel refinement, NMS multi-peaks, Gaussian smoothing.

Coordinates are (row, col) of the map, continuous where refined; pixel (i, j) is the CENTRE of cell
(i, j), which is what ``ImageGrid.heatmap_to_pixel`` expects.

``valid`` (a bool map of the same shape, optional): only those cells can be peaks, and the sub-pixel
refinement treats the others like the map's border (e.g. the cells of a pad-to-square map that lie
wholly in the padding: ``attention_pointing.cells_on_image``). NaN cells are never peaks either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage


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


def _masked(values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """The map as float64, NaN outside ``valid``."""
    arr = _as_map(values)
    if valid is None:
        return arr
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != arr.shape:
        raise ValueError(f"valid mask has shape {valid.shape} but the map has {arr.shape}")
    return np.where(valid, arr, np.nan)


def gaussian_smooth(values: np.ndarray, *, sigma: float = 1.0, size: int = 7) -> np.ndarray:
    """``size`` x ``size`` Gaussian blur with ``sigma`` (Kang et al.: 7x7, sigma 1), reflected borders."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D map, got shape {arr.shape}")
    return cv2.GaussianBlur(arr, (size, size), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def argmax_peak(values: np.ndarray, valid: np.ndarray | None = None) -> Peak:
    """The highest cell (the first one in row-major order on ties). NaN cells and cells outside
    ``valid`` are ignored."""
    arr = _masked(values, valid)
    if np.isnan(arr).all():
        raise ValueError("the map is all NaN (or has no valid cell)")
    flat = int(np.nanargmax(arr))
    row, col = divmod(flat, arr.shape[1])  # (H*W,) index -> (row, col)
    return Peak(float(row), float(col), float(arr[row, col]))


def subpixel_offset(
    values: np.ndarray, row: int, col: int, *, eps: float = 1e-6, valid: np.ndarray | None = None
) -> tuple[float, float]:
    """LENS S1.2: one regularised Newton step on the 3x3 finite-difference Taylor model at (row, col).

    delta = -(H + eps I)^-1 g, clipped component-wise to [-1, 1]; a diagonal fallback
    delta_x = -Dx / (Dxx + eps) is used when H + eps I is ill-conditioned (or the step is not
    finite). Along an axis where (row, col) is on the border, or a neighbour on that axis is
    outside ``valid`` / not finite, there is no central difference and the offset on that axis is 0
    (so the step never goes toward an invalid cell). Returns (d_row, d_col).
    """
    arr = _masked(values, valid)
    h, w = arr.shape
    r, c = int(row), int(col)

    def v(dr: int, dc: int) -> float:
        return float(arr[min(max(r + dr, 0), h - 1), min(max(c + dc, 0), w - 1)])

    def has(dr: int, dc: int) -> bool:
        return 0 <= r + dr < h and 0 <= c + dc < w and math.isfinite(v(dr, dc))

    on_x = has(0, -1) and has(0, 1)
    on_y = has(-1, 0) and has(1, 0)
    corners = on_x and on_y and all(has(dr, dc) for dr in (-1, 1) for dc in (-1, 1))
    v0 = v(0, 0)
    dx = 0.5 * (v(0, 1) - v(0, -1)) if on_x else 0.0
    dy = 0.5 * (v(1, 0) - v(-1, 0)) if on_y else 0.0
    dxx = v(0, 1) - 2 * v0 + v(0, -1) if on_x else 0.0
    dyy = v(1, 0) - 2 * v0 + v(-1, 0) if on_y else 0.0
    dxy = 0.25 * (v(1, 1) + v(-1, -1) - v(1, -1) - v(-1, 1)) if corners else 0.0
    g = np.array([dx, dy])
    hess = np.array([[dxx, dxy], [dxy, dyy]]) + eps * np.eye(2)
    delta = None
    if corners and np.isfinite(hess).all() and np.linalg.cond(hess) < 1e6:
        step = -np.linalg.solve(hess, g)
        if np.isfinite(step).all():
            delta = step
    if delta is None:  # diagonal fallback (also the 1D case on a border)
        ddx = -dx / (dxx + eps) if on_x and dxx + eps != 0 else 0.0
        ddy = -dy / (dyy + eps) if on_y and dyy + eps != 0 else 0.0
        delta = np.array([ddx, ddy])
    delta = np.nan_to_num(np.clip(delta, -1.0, 1.0))
    return float(delta[1]), float(delta[0])


def refine_peak(
    values: np.ndarray, peak: Peak, *, eps: float = 1e-6, valid: np.ndarray | None = None
) -> Peak:
    """``peak`` moved by ``subpixel_offset``; the value stays that of the integer cell."""
    d_row, d_col = subpixel_offset(values, int(peak.row), int(peak.col), eps=eps, valid=valid)
    return Peak(peak.row + d_row, peak.col + d_col, peak.value)


def nms_peaks(
    values: np.ndarray,
    *,
    radius: float = 4.0,
    max_points: int = 16,
    min_value: float = 0.0,
    subpixel: bool = False,
    eps: float = 1e-6,
    valid: np.ndarray | None = None,
    local_max: bool = True,
    one_per_region: bool = False,
) -> list[Peak]:
    """LENS S1.1 NMS: take the highest cell, suppress everything within Euclidean ``radius`` cells,
    repeat until no value exceeds ``min_value`` or ``max_points`` are taken. Highest first.
    Only cells in ``valid`` (default: all) are taken; with ``local_max`` (default), only cells that
    are >= each of their 8 neighbours: a broad blob wider than the radius would otherwise give its
    shoulders as further "peaks" (one mug handle answered as three instances). With
    ``one_per_region``, at most one peak per connected region of cells above ``min_value``: two
    peaks joined by a ridge that never falls to ``min_value`` (along one long hammer handle) are one
    instance; two objects need a valley between them.

    Sub-pixel refinement (if asked) uses the ORIGINAL map, not the suppressed one.
    """
    arr = _masked(values, valid)
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    work = np.where(np.isnan(arr), -np.inf, arr)
    if local_max:
        neighbourhood = ndimage.maximum_filter(work, size=3, mode="constant", cval=-np.inf)
        work = np.where(work >= neighbourhood, work, -np.inf)
    rows, cols = np.mgrid[0 : arr.shape[0], 0 : arr.shape[1]]
    regions = ndimage.label(np.nan_to_num(arr, nan=-np.inf) > min_value)[0] if one_per_region else None
    peaks: list[Peak] = []
    while len(peaks) < max_points:
        flat = int(np.argmax(work))
        r, c = divmod(flat, arr.shape[1])
        if not work[r, c] > min_value:
            break
        peak = Peak(float(r), float(c), float(arr[r, c]))
        peaks.append(refine_peak(arr, peak, eps=eps) if subpixel else peak)  # arr: NaN off ``valid``
        work[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = -np.inf
        if regions is not None:
            work[regions == regions[r, c]] = -np.inf
    return peaks
