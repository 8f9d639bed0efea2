"""Depth images: to metres, and a robust depth reading at a pixel (in a window, or in a part mask)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from part_point_ros.errors import InputError

# encodings of aligned depth images: 16-bit millimetres (RealSense, Kinect) or float metres
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


def depth_to_metres(depth: np.ndarray, encoding: str) -> np.ndarray:
    """A depth image (H, W) in its encoding -> float32 metres, invalid pixels (0, NaN, inf) -> NaN."""
    if encoding in ("16UC1", "mono16"):
        if depth.dtype != np.uint16:
            raise InputError(f"{encoding} depth must be uint16 millimetres, got {depth.dtype}")
        out = depth.astype(np.float32) * np.float32(0.001)
        out[depth == 0] = np.nan
        return out
    if encoding == "32FC1":
        out = np.asarray(depth, dtype=np.float32).copy()
        out[~np.isfinite(out) | (out <= 0)] = np.nan
        return out
    raise InputError(f"depth encoding {encoding!r} is not supported: use one of {', '.join(DEPTH_ENCODINGS)}")


@dataclass(frozen=True)
class DepthReading:
    """Robust depth at a pixel: ``value`` in metres, or None with a one-line ``reason``.

    ``source`` says which pixels were read: ``"window"`` (the box around the pixel) or ``"mask"``
    (the pixels of the box that are also in the part mask).
    """

    value: float | None
    n_valid: int
    reason: str = ""
    source: str = "window"

    @property
    def ok(self) -> bool:
        return self.value is not None


def window_box(shape: tuple[int, ...], u: float, v: float, window: int) -> tuple[slice, slice]:
    """(rows, cols) slices of the ``window`` x ``window`` box centred on the pixel nearest (u, v),
    cut at the image border (``shape``: (H, W, ...))."""
    col, row = int(round(u)), int(round(v))
    half = max(window, 1) // 2
    return (
        slice(max(row - half, 0), min(row + half + 1, shape[0])),
        slice(max(col - half, 0), min(col + half + 1, shape[1])),
    )


def robust_depth(
    depth_m: np.ndarray,
    u: float,
    v: float,
    *,
    window: int = 5,
    min_depth: float = 0.1,
    max_depth: float = 10.0,
    min_valid: int = 3,
) -> DepthReading:
    """Median depth of the valid pixels in a ``window`` x ``window`` box centred on (u, v).

    Valid means finite and within [min_depth, max_depth] metres. Fewer than ``min_valid`` valid
    pixels (or a pixel off the image) gives ``DepthReading(None, n, reason)``.
    """
    h, w = depth_m.shape[:2]
    col, row = int(round(u)), int(round(v))
    if not (0 <= col < w and 0 <= row < h):
        return DepthReading(None, 0, f"pixel ({u:.1f}, {v:.1f}) is outside the {w}x{h} depth image")
    patch = depth_m[window_box(depth_m.shape, u, v, window)]
    valid = patch[np.isfinite(patch) & (patch >= min_depth) & (patch <= max_depth)]
    if valid.size < min_valid:
        return DepthReading(
            None,
            int(valid.size),
            f"no valid depth at ({u:.1f}, {v:.1f}): {valid.size} of {patch.size} pixels in the "
            f"{window}x{window} window are within [{min_depth}, {max_depth}] m",
        )
    return DepthReading(float(np.median(valid)), int(valid.size))


def as_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` as a bool (H, W) array (nonzero = part), or a one-line ``InputError`` when it is not
    2D or not the size of the image ``shape`` (H, W) it must be aligned with."""
    part = np.asarray(mask)
    if part.ndim != 2:
        raise InputError(f"a part mask must be 2D (H, W), got shape {part.shape}")
    if part.shape != tuple(shape[:2]):
        raise InputError(
            f"the part mask is {part.shape[1]}x{part.shape[0]} but the depth image is {shape[1]}x{shape[0]}: "
            "use a mask of the image the depth is aligned to"
        )
    return part.astype(bool, copy=False)


def mask_depth(
    depth_m: np.ndarray,
    mask: np.ndarray,
    u: float,
    v: float,
    *,
    window: int = 5,
    min_depth: float = 0.1,
    max_depth: float = 10.0,
    min_valid: int = 3,
) -> DepthReading:
    """Median depth of the valid pixels that lie BOTH in the part ``mask`` (H, W) and in the
    ``window`` x ``window`` box centred on (u, v).

    Why: at a part's edge most of the box can see the background behind the part, and the plain
    window median (``robust_depth``) then lands on the table; the mask keeps the part's pixels only.
    Valid means finite and within [min_depth, max_depth] metres (NaN / 0 depth never counts).
    An empty mask (no pixel at all) falls back to ``robust_depth`` (``source="window"``); fewer than
    ``min_valid`` valid pixels in mask and box gives ``DepthReading(None, n, reason, "mask")``.
    """
    part = as_mask(mask, depth_m.shape[:2])
    if not part.any():
        return robust_depth(
            depth_m, u, v, window=window, min_depth=min_depth, max_depth=max_depth, min_valid=min_valid
        )
    h, w = depth_m.shape[:2]
    col, row = int(round(u)), int(round(v))
    if not (0 <= col < w and 0 <= row < h):
        return DepthReading(None, 0, f"pixel ({u:.1f}, {v:.1f}) is outside the {w}x{h} depth image", "mask")
    box = window_box(depth_m.shape, u, v, window)
    patch, in_part = depth_m[box], part[box]
    valid = patch[in_part & np.isfinite(patch) & (patch >= min_depth) & (patch <= max_depth)]
    if valid.size < min_valid:
        return DepthReading(
            None,
            int(valid.size),
            f"no valid depth in the part mask at ({u:.1f}, {v:.1f}): {valid.size} of the "
            f"{int(in_part.sum())} mask pixels in the {window}x{window} window are within "
            f"[{min_depth}, {max_depth}] m",
            "mask",
        )
    return DepthReading(float(np.median(valid)), int(valid.size), source="mask")
