"""Attention pointing never points into the processor's padding (pad-to-square images)."""

from __future__ import annotations

import numpy as np
import torch

from part_point_ros.backbones.base import Capture
from part_point_ros.grounding.attention_pointing import attention_point, cells_on_image
from part_point_ros.types import HeadRef, ImageGrid

# a 320x240 image padded to 112x112: 14 px of padding above and below (1.75 cells each)
GRID = ImageGrid(rows=14, cols=14, orig_size=(320, 240), processed_size=(112, 112), scale=(0.35, 0.35),
                 offset=(0.0, 14.0))  # fmt: skip


def capture_looking_at(cell: int, strength: float = 30.0) -> Capture:
    """A one-head capture whose last token attends (almost) only to image token ``cell``."""
    p, d = GRID.rows * GRID.cols, 8
    keys = torch.zeros(1, p + 1, d)
    keys[0, cell, 0] = strength
    queries = torch.zeros(1, 1, d)
    queries[0, 0, 0] = strength
    return Capture(
        heads=(HeadRef(0, 0),), queries=queries, keys=keys, values=torch.zeros(1, p + 1, d),
        image_positions=torch.arange(p), text_positions=torch.tensor([p]), scaling=1.0, grid=GRID,
    )  # fmt: skip


def test_cells_on_image_are_the_rows_the_image_covers():
    on = cells_on_image(GRID)
    assert on.shape == (14, 14)
    assert not on[0].any() and not on[13].any()  # pure padding
    assert on[1:13].all()  # rows 1 and 12 are partly image
    # the same cells as resampling a full image onto the grid
    assert np.array_equal(on, GRID.resample_mask(np.ones((240, 320), dtype=bool)) > 0)


def test_attention_on_padding_still_gives_a_point_on_the_image():
    result = attention_point(capture_looking_at(cell=3))  # row 0: padding only
    assert 1 <= result.peak.row <= 12
    assert 0 <= result.x < 320 and 0 <= result.y < 240
    assert np.isclose(result.heatmap.sum(), 1.0) and result.heatmap[0].sum() == 0
    on_image = attention_point(capture_looking_at(cell=5 * 14 + 6))  # a cell on the image wins
    assert (on_image.peak.row, on_image.peak.col) == (5, 6)
