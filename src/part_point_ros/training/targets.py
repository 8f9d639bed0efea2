"""Per-sample training targets from a part mask and the model's ``ImageGrid`` (method.md §4).

- patch target M_p: the fraction of each grid cell covered by the mask (soft; **unverified** rule,
  the paper's default), ``ImageGrid.resample_mask(mask)`` flattened row-major -> (P,).
- heatmap mask: the mask at heatmap resolution (``upscale`` x the grid), a cell is inside when at
  least half of it is covered; the SDF / L2 / Gaussian targets of ``HeadConfig.supervision`` are
  built from it by ``heads.losses.build_heatmap_targets``.

The cache stores the patch target and the heatmap mask; the supervision-specific heatmap target is
built when a batch is made, so one cache serves every supervision ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from part_point_ros.heads.config import HeadConfig
from part_point_ros.heads.losses import build_heatmap_targets
from part_point_ros.types import ImageGrid

HEATMAP_INSIDE = 0.5  # a heatmap cell is inside the part when >= half of it is covered


@dataclass
class MaskTargets:
    """What one sample is supervised with, independent of the supervision kind."""

    patch: np.ndarray  # (P,) float32 in [0, 1], grid row-major
    heatmap_mask: np.ndarray  # (upscale * rows, upscale * cols) bool


def mask_targets(mask: np.ndarray, grid: ImageGrid, upscale: int) -> MaskTargets:
    """Patch fractions and heatmap-resolution mask of a (H, W) mask in original-image pixels."""
    mask = np.asarray(mask)
    if mask.ndim == 3:  # (N, H, W) instances -> (H, W) union
        mask = mask.any(axis=0)
    patch = grid.resample_mask(mask.astype(bool)).reshape(-1)  # (rows, cols) -> (P,) row-major
    fine = grid.resample_mask(mask.astype(bool), upscale)  # (s·rows, s·cols) coverage
    return MaskTargets(patch=patch.astype(np.float32), heatmap_mask=fine >= HEATMAP_INSIDE)


def heatmap_targets(heatmap_mask: np.ndarray, config: HeadConfig) -> dict[str, np.ndarray]:
    """The heatmap target of ``config.supervision`` (SDF in ``config.sdf_units``, mask or Gaussian)."""
    if heatmap_mask.shape[0] % config.upscale or heatmap_mask.shape[1] % config.upscale:
        raise ValueError(
            f"heatmap mask of {heatmap_mask.shape} is not a multiple of the head's upscale {config.upscale}"
        )
    return build_heatmap_targets(heatmap_mask, config)
