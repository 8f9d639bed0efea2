"""Which way a part runs, from its mask and the aligned depth: the grasp's x axis along a handle.

A parallel gripper closing across a handle holds it best when its fingers close across the
handle's long axis; with the grasp frame of ``grasp.py`` (z = approach, x in the surface plane) that
means x along the handle. ``principal_axis`` is PCA of the part's 3D points: the first principal
direction, and how much longer the part is along it than across it (``elongation``).

Elongation = sqrt(lambda1 / lambda2), the ratio of the standard deviations along the first two
principal directions (for a uniform rod of length L and width w it is L / w). Below
``MIN_ELONGATION`` = 2 the axis is not trusted: a disc or a square has ratio 1 and an arbitrary
first direction, and at 2 the first direction carries 80 % of the in-plane variance
(lambda1 / (lambda1 + lambda2) = 4 / 5), which noise on a round part's mask does not reach.

numpy / OpenCV only; nothing here knows about models.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from part_point_ros.geometry.camera import PinholeCamera

MIN_ELONGATION = 2.0
MAD_TO_SIGMA = 1.4826  # MAD x this = standard deviation, for Gaussian data


@dataclass(frozen=True)
class PartAxis:
    """First principal ``direction`` (3,) unit of a part's points, their ``centroid`` (3,), the
    ``elongation`` sqrt(lambda1 / lambda2) (inf for collinear points) and ``n_points``.

    The sign is fixed so the axis is deterministic: its camera-x component is positive (toward
    image right); when that is ~0, its y component (image down), then its z component.
    """

    direction: np.ndarray
    centroid: np.ndarray
    elongation: float
    n_points: int

    def elongated(self, min_elongation: float = MIN_ELONGATION) -> bool:
        """Whether the part is long enough for its axis to mean something (see the module doc)."""
        return self.elongation >= min_elongation


def principal_axis(points: np.ndarray) -> PartAxis:
    """PCA of ``points`` (N, 3), N >= 3: the direction of largest spread, see ``PartAxis``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if pts.shape[0] < 3:
        raise ValueError(f"a principal axis needs at least 3 finite points, got {pts.shape[0]}")
    centroid = pts.mean(axis=0)
    centred = pts - centroid
    cov = centred.T @ centred / pts.shape[0]  # (3, 3)
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    direction = eigvecs[:, 2]
    for component in direction:  # sign: first clearly non-zero of x, y, z positive
        if abs(component) > 1e-6:
            direction = direction if component > 0 else -direction
            break
    lam1, lam2 = float(eigvals[2]), max(float(eigvals[1]), 0.0)
    elongation = float(np.sqrt(lam1 / lam2)) if lam2 > 0 else float("inf")
    return PartAxis(direction=direction, centroid=centroid, elongation=elongation, n_points=int(pts.shape[0]))


def mask_points(
    depth_m: np.ndarray,
    camera: PinholeCamera,
    mask: np.ndarray,
    *,
    min_depth: float = 0.1,
    max_depth: float = 10.0,
    outlier_mads: float = 3.0,
    min_band: float = 0.01,
    max_points: int = 20000,
) -> np.ndarray:
    """3D points (N, 3), optical frame, of the bool ``mask`` (H, W) pixels with valid depth.

    Valid: finite, within [min_depth, max_depth] m. Depth outliers (a mask that bleeds onto the
    table behind a thin handle) are dropped: points farther than ``outlier_mads`` robust standard
    deviations (MAD x 1.4826), and at least ``min_band`` metres, from the median depth. A long
    part tilted in depth keeps all its points (its depths spread evenly, so its MAD is wide).
    At most ``max_points`` evenly spaced pixels are used (row-major order), which PCA does not need more of.
    """
    rows, cols = np.nonzero(mask)
    depth = depth_m[rows, cols]
    ok = np.isfinite(depth) & (depth >= min_depth) & (depth <= max_depth)
    rows, cols, depth = rows[ok], cols[ok], depth[ok]
    if depth.size == 0:
        return np.empty((0, 3))
    median = float(np.median(depth))
    band = max(outlier_mads * MAD_TO_SIGMA * float(np.median(np.abs(depth - median))), min_band)
    keep = np.abs(depth - median) <= band
    rows, cols, depth = rows[keep], cols[keep], depth[keep]
    if depth.size > max_points:
        pick = np.linspace(0, depth.size - 1, max_points).round().astype(np.int64)
        rows, cols, depth = rows[pick], cols[pick], depth[pick]
    uv = np.column_stack([cols, rows]).astype(np.float64)  # (N, 2) pixel centres
    return camera.deproject(uv, depth)


def mask_component(mask: np.ndarray, col: int, row: int) -> np.ndarray:
    """The 8-connected component of the bool ``mask`` (H, W) that holds pixel (col, row), as a bool
    mask; all False when that pixel is not in the mask. A part mask can have several blobs (both
    handles of the scissors); the grasp is on the one under the point."""
    if not mask[row, col]:
        return np.zeros_like(mask, dtype=bool)
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return labels == labels[row, col]


def nearest_mask_pixel(mask: np.ndarray, u: float, v: float) -> tuple[int, int, float] | None:
    """(col, row, distance in pixels) of the ``mask`` pixel nearest (u, v); None for an empty mask.
    (u, v) itself when it rounds to a mask pixel. Ties go to the first pixel in row-major order."""
    h, w = mask.shape
    col, row = int(round(u)), int(round(v))
    if 0 <= col < w and 0 <= row < h and mask[row, col]:
        return col, row, float(np.hypot(u - col, v - row))
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    dist2 = (cols - u) ** 2 + (rows - v) ** 2
    i = int(np.argmin(dist2))
    return int(cols[i]), int(rows[i]), float(np.sqrt(dist2[i]))
