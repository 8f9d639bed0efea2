"""Training items, padded batches and the grid-bucketing batch sampler.

A batch holds samples of ONE image-token grid (LLaVA-1.5 always has 24x24; Qwen2.5-VL's grid
follows the image's aspect ratio), so keys/values stack without padding; text queries of different
lengths are right-padded and ``query_mask`` marks the real ones.

``GridBucketBatchSampler`` is the data-parallel sampler too. ``torch.utils.data.DistributedSampler``
shards single indices and cannot keep grids apart, so this sampler follows its contract instead:
the same seeded shuffle on every rank (``seed + epoch``, ``set_epoch``), the same number of steps on
every rank (a short global batch is padded with samples of its own bucket), and each rank takes a
contiguous slice of every GLOBAL batch of ``batch_size x num_replicas`` samples. With equal slices,
DDP's gradient average equals the gradient of the global batch's mean loss, so N processes with
``batch_size=b`` train like one process with ``batch_size=N*b`` (tested).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from part_point_ros.heads.config import HeadConfig
from part_point_ros.training.targets import heatmap_targets
from part_point_ros.types import ImageGrid


@dataclass
class FeatureItem:
    """One training sample: captured Q/K/V of the k heads and its targets."""

    sample_id: str
    queries: torch.Tensor  # (k, L, d) text queries Q_t
    keys: torch.Tensor  # (k, P, d) image keys K_v
    values: torch.Tensor  # (k, P, d) image values V_v
    grid: ImageGrid
    patch_target: torch.Tensor  # (P,) float in [0, 1]
    heatmap_mask: np.ndarray  # (s·rows, s·cols) bool
    index: int = -1  # position in its dataset / cache
    meta: dict = field(default_factory=dict)


@dataclass
class Batch:
    """Padded tensors ready for ``PartPointHead.forward`` and ``head_loss``."""

    queries: torch.Tensor  # (B, k, L_max, d)
    query_mask: torch.Tensor  # (B, L_max) bool
    keys: torch.Tensor  # (B, k, P, d)
    values: torch.Tensor  # (B, k, P, d)
    grid_shape: tuple[int, int]  # (rows, cols)
    patch_targets: torch.Tensor  # (B, P)
    heatmap_targets: dict[str, torch.Tensor]  # each (B, s·rows, s·cols)
    sample_ids: list[str]
    indices: list[int]
    present: torch.Tensor | None = None  # (B,) bool: the query's target is in the image (is_present)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            queries=self.queries.to(device),
            query_mask=self.query_mask.to(device),
            keys=self.keys.to(device),
            values=self.values.to(device),
            grid_shape=self.grid_shape,
            patch_targets=self.patch_targets.to(device),
            heatmap_targets={k: v.to(device) for k, v in self.heatmap_targets.items()},
            sample_ids=self.sample_ids,
            indices=self.indices,
            present=None if self.present is None else self.present.to(device),
        )

    def __len__(self) -> int:
        return len(self.sample_ids)


def collate(items: Sequence[FeatureItem], config: HeadConfig, dtype: torch.dtype = torch.float32) -> Batch:
    """Stack items of one grid into a ``Batch``; text queries are right-padded to the longest."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    shapes = {(it.grid.rows, it.grid.cols) for it in items}
    if len(shapes) != 1:
        raise ValueError(
            f"a batch must share one image-token grid, got {sorted(shapes)}: use GridBucketBatchSampler"
        )
    k, _, d = items[0].queries.shape
    length = max(it.queries.shape[1] for it in items)
    queries = torch.zeros(len(items), k, length, d, dtype=dtype)
    query_mask = torch.zeros(len(items), length, dtype=torch.bool)
    for i, it in enumerate(items):
        n = it.queries.shape[1]
        queries[i, :, :n] = it.queries.to(dtype)
        query_mask[i, :n] = True
    targets = [heatmap_targets(it.heatmap_mask, config) for it in items]
    return Batch(
        queries=queries,
        query_mask=query_mask,
        keys=torch.stack([it.keys.to(dtype) for it in items]),  # B x (k, P, d) -> (B, k, P, d)
        values=torch.stack([it.values.to(dtype) for it in items]),  # B x (k, P, d) -> (B, k, P, d)
        grid_shape=shapes.pop(),
        patch_targets=torch.stack([it.patch_target.float() for it in items]),  # B x (P,) -> (B, P)
        heatmap_targets={
            key: torch.from_numpy(np.stack([t[key] for t in targets])) for key in targets[0]
        },  # B x (H, W) -> (B, H, W)
        sample_ids=[it.sample_id for it in items],
        indices=[it.index for it in items],
        present=torch.tensor([is_present(it.meta) for it in items], dtype=torch.bool),
    )


def is_present(meta: dict) -> bool:
    """False for a sample about something not in its image (``meta["present"]`` False: the absent
    queries of ``load_synthetic(..., absent=True)``); True for every other sample."""
    return bool(meta.get("present", True))


class GridBucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices that share one grid; seeded, epoch-aware and data-parallel (see module doc)."""

    def __init__(
        self,
        grid_shapes: Sequence[tuple[int, int]],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must be in 0..{num_replicas - 1}")
        if not grid_shapes:
            raise ValueError("no samples to batch")
        self.grid_shapes = [tuple(s) for s in grid_shapes]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle differently (but identically on every rank) in each epoch."""
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """Every rank's batches of this epoch, before slicing: lists of ``batch_size x replicas``."""
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        buckets: dict[tuple[int, int], list[int]] = {}
        for index, shape in enumerate(self.grid_shapes):
            buckets.setdefault(shape, []).append(index)
        size = self.batch_size * self.num_replicas
        batches: list[list[int]] = []
        for shape in sorted(buckets):
            bucket = buckets[shape]
            if self.shuffle:
                bucket = [bucket[i] for i in torch.randperm(len(bucket), generator=gen).tolist()]
            for start in range(0, len(bucket), size):
                chunk = bucket[start : start + size]
                short = -len(chunk) % self.num_replicas  # pad so every rank gets the same count
                chunk = chunk + [bucket[i % len(bucket)] for i in range(short)]
                batches.append(chunk)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self.global_batches():
            per_rank = len(chunk) // self.num_replicas
            yield chunk[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __len__(self) -> int:
        size = self.batch_size * self.num_replicas
        counts: dict[tuple[int, int], int] = {}
        for shape in self.grid_shapes:
            counts[shape] = counts.get(shape, 0) + 1
        return sum(-(-n // size) for n in counts.values())
