"""Targets from masks, padded batches, and the grid-bucketing (data-parallel) batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from heads_helpers import tiny_head_config

from part_point_ros.training.batching import FeatureItem, GridBucketBatchSampler, collate
from part_point_ros.training.targets import mask_targets
from part_point_ros.types import ImageGrid


def identity_grid(size: int = 8, cells: int = 2) -> ImageGrid:
    return ImageGrid(cells, cells, (size, size), (size, size), (1.0, 1.0), (0.0, 0.0))


def test_mask_targets_on_a_known_grid():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:4, 0:4] = True  # exactly the top-left cell of a 2x2 grid
    mask[4:6, 4:8] = True  # half of the bottom-right cell
    t = mask_targets(mask, identity_grid(), upscale=2)
    np.testing.assert_allclose(t.patch, [1.0, 0.0, 0.0, 0.5], atol=1e-6)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0:2, 0:2] = True
    expected[2, 2:4] = True  # heatmap cells 2 px tall: row 2 is covered, row 3 is not
    np.testing.assert_array_equal(t.heatmap_mask, expected)


def item(index: int, length: int, grid: ImageGrid, k: int = 2, d: int = 8) -> FeatureItem:
    p = grid.rows * grid.cols
    gen = torch.Generator().manual_seed(index)
    mask = np.zeros((grid.rows * 4, grid.cols * 4), dtype=bool)
    mask[:2, :2] = True
    return FeatureItem(
        sample_id=f"s{index}",
        queries=torch.randn(k, length, d, generator=gen).half(),
        keys=torch.randn(k, p, d, generator=gen).half(),
        values=torch.randn(k, p, d, generator=gen).half(),
        grid=grid,
        patch_target=torch.rand(p, generator=gen),
        heatmap_mask=mask,
        index=index,
    )


def test_collate_pads_queries_and_builds_heatmap_targets():
    config = tiny_head_config(heads=[(1, 0), (2, 1)])
    grid = identity_grid(16, 4)
    items = [item(0, 3, grid), item(1, 5, grid)]
    batch = collate(items, config)
    assert batch.queries.shape == (2, 2, 5, 8) and batch.queries.dtype == torch.float32
    assert batch.query_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    torch.testing.assert_close(batch.queries[0, :, :3], items[0].queries.float())
    assert torch.count_nonzero(batch.queries[0, :, 3:]) == 0
    assert batch.keys.shape == (2, 2, 16, 8) and batch.grid_shape == (4, 4)
    sdf = batch.heatmap_targets["sdf"]
    assert sdf.shape == (2, 16, 16)
    assert sdf[0, 0, 0] < 0 < sdf[0, 10, 10]  # negative inside the mask, positive outside


def test_collate_refuses_mixed_grids():
    config = tiny_head_config(heads=[(1, 0), (2, 1)])
    with pytest.raises(ValueError, match="one image-token grid"):
        collate([item(0, 3, identity_grid(16, 4)), item(1, 3, identity_grid(16, 2))], config)


SHAPES = [(4, 4)] * 7 + [(3, 5)] * 5  # two buckets


def test_sampler_keeps_grids_apart_and_covers_every_sample_once():
    sampler = GridBucketBatchSampler(SHAPES, 3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2
    assert sorted(i for b in batches for i in b) == list(range(12))
    for b in batches:
        assert len({SHAPES[i] for i in b}) == 1


def test_sampler_is_seeded_and_changes_with_the_epoch():
    a, b = GridBucketBatchSampler(SHAPES, 3, seed=1), GridBucketBatchSampler(SHAPES, 3, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    unshuffled = list(GridBucketBatchSampler(SHAPES, 3, shuffle=False))
    assert unshuffled == [[7, 8, 9], [10, 11], [0, 1, 2], [3, 4, 5], [6]]  # buckets in sorted grid order


def test_sampler_splits_global_batches_evenly_over_ranks():
    ranks = [GridBucketBatchSampler(SHAPES, 2, seed=3, num_replicas=2, rank=r) for r in range(2)]
    single = GridBucketBatchSampler(SHAPES, 4, seed=3)
    per_rank = [list(s) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0])
    globals_ = ranks[0].global_batches()
    for step, chunk in enumerate(globals_):
        assert per_rank[0][step] + per_rank[1][step] == chunk
        assert len(per_rank[0][step]) == len(per_rank[1][step])  # padded: same count on both ranks
    assert sorted(set(i for c in globals_ for i in c)) == list(range(12))
    assert sum(len(c) for c in globals_) == 12 + 2  # 7 -> 4 + 3 (+1 pad), 5 -> 4 + 1 (+1 pad)
    # the same samples, step by step, as one process with batch 4 (padding is appended at the end)
    single_batches = single.global_batches()
    assert len(single_batches) == len(globals_)
    for mine, theirs in zip(globals_, single_batches, strict=True):
        assert mine[: len(theirs)] == theirs
