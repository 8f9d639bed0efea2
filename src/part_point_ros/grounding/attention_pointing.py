"""Attention-pointing baseline (Kang et al., CVPR 2025): where the localization heads look.

Per head: the last input token's attention over the image tokens, reshaped to the token grid,
smoothed with a 7x7 Gaussian (sigma 1); the heads' maps are summed; cells that lie wholly in the
processor's padding (pad-to-square) are set to zero, since a point there is never on the image; the
argmax cell's centre is the point, mapped to original pixels through the ``ImageGrid``.

Score: the baseline has no calibrated confidence. ``score`` is the share of the summed map's mass in
the 3x3 cells around the peak (1.0 = all attention on one spot, 9 / P = uniform); callers decide on
a threshold (``PartPointer`` uses 0.0 for this method, i.e. always "found").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from part_point_ros.backbones.base import Capture
from part_point_ros.grounding.peaks import Peak, argmax_peak, gaussian_smooth


@dataclass
class AttentionPoint:
    """Result of the attention baseline in grid cells and original pixels."""

    x: float
    y: float
    score: float
    peak: Peak  # (row, col) cell of the argmax
    heatmap: np.ndarray  # (rows, cols) float32, sums to 1


def head_attention_maps(capture: Capture) -> np.ndarray:
    """(k, rows, cols) last-token attention of each captured head over the image-token grid."""
    attn = capture.last_token_attention().detach().float().cpu().numpy()  # (k, P)
    rows, cols = capture.grid.rows, capture.grid.cols
    if attn.shape[1] != rows * cols:
        raise ValueError(f"capture has {attn.shape[1]} image tokens but the grid is {rows}x{cols}")
    return attn.reshape(attn.shape[0], rows, cols)  # (k, P) -> (k, rows, cols)


def cells_on_image(grid, upscale: int = 1) -> np.ndarray:
    """(rows·s, cols·s) bool, s = ``upscale``: cells of the token grid (s = 1) or of a map s times
    finer (the a2p heatmap) that cover some of the original image (not only padding).

    From the grid geometry alone (the image's corners in grid coordinates): no per-request warp.
    """
    width, height = grid.orig_size
    gx0, gy0 = grid.pixel_to_grid(0.0, 0.0)
    gx1, gy1 = grid.pixel_to_grid(float(width), float(height))
    cols, rows = np.arange(grid.cols * upscale), np.arange(grid.rows * upscale)
    # cell c covers [c / s, (c + 1) / s) in grid coordinates: on the image if that overlaps [gx0, gx1)
    on_cols = ((cols + 1) / upscale > gx0) & (cols / upscale < gx1)
    on_rows = ((rows + 1) / upscale > gy0) & (rows / upscale < gy1)
    return on_rows[:, None] & on_cols[None, :]


def clamp_to_image(grid, x: float, y: float) -> tuple[float, float]:
    """(x, y) moved onto the original image (the centre of a cell only partly on it may not be):
    into [0, W - 1] x [0, H - 1], the pixel centres, as every method's points are."""
    width, height = grid.orig_size
    return min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)


def attention_heatmap(capture: Capture, *, sigma: float = 1.0, size: int = 7) -> np.ndarray:
    """(rows, cols) float32: the per-head smoothed maps summed, zero on padding-only cells,
    normalised to sum 1."""
    maps = head_attention_maps(capture)
    total = np.sum([gaussian_smooth(m, sigma=sigma, size=size) for m in maps], axis=0)
    on_image = cells_on_image(capture.grid)
    total = np.maximum(total, 0.0) * on_image
    mass = float(total.sum())
    if mass > 0:
        total = total / mass
    else:  # no attention on the image at all: uniform over its cells
        total = on_image / max(int(on_image.sum()), 1)
    return total.astype(np.float32)


def peak_share(heatmap: np.ndarray, peak: Peak, *, half: int = 1) -> float:
    """Mass of a normalised map in the (2*half+1)^2 cells around ``peak``."""
    r, c = int(peak.row), int(peak.col)
    window = heatmap[max(r - half, 0) : r + half + 1, max(c - half, 0) : c + half + 1]
    return float(window.sum() / max(float(heatmap.sum()), 1e-12))


def attention_point(capture: Capture, *, sigma: float = 1.0, size: int = 7) -> AttentionPoint:
    """The Kang et al. point: argmax cell of the summed smoothed maps -> its centre in original pixels."""
    heatmap = attention_heatmap(capture, sigma=sigma, size=size)
    peak = argmax_peak(heatmap)
    x, y = clamp_to_image(capture.grid, *capture.grid.cell_center(int(peak.row), int(peak.col)))
    return AttentionPoint(x=x, y=y, score=peak_share(heatmap, peak), peak=peak, heatmap=heatmap)
