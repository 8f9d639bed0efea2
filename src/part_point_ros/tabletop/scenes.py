"""Rendered scenes for backbone training: shards of RGB, part-id images and the scene facts.

Each split's seeds (``sim.vqa.SPLIT_SEEDS``: train 0.., val 100000.., test 200000..) are rendered once,
in shards of ``SHARD`` scenes (``<cache>/<split>/shard_<first seed>.npz``), by ``jobs`` processes.
A shard is written atomically; an existing shard is kept, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from part_point_ros.sim.vqa import SPLIT_SEEDS, SceneFacts

SHARD = 250
DEFAULT_SIZE = (320, 240)  # the demo's and the data sets' frame size: no resolution gap at test time


@dataclass
class SceneSet:
    """Scenes of one split: ``rgb`` (N, H, W, 3) uint8, ``part_ids`` (N, H, W) uint16, ``facts``."""

    rgb: np.ndarray
    part_ids: np.ndarray
    facts: list[SceneFacts]

    def __len__(self) -> int:
        return len(self.facts)

    def head(self, n: int) -> SceneSet:
        return SceneSet(self.rgb[:n], self.part_ids[:n], self.facts[:n])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shard_path(cache: Path, split: str, start: int) -> Path:
    return Path(cache) / split / f"shard_{start:06d}.npz"


def _render_shard(job: tuple[str, int, int, int, int]) -> str:
    from part_point_ros.sim import render_scene

    path, start, stop, width, height = job
    rgb, part_ids, facts = [], [], []
    for seed in range(start, stop):
        scene = render_scene(seed, width=width, height=height)
        rgb.append(scene.rgb)
        part_ids.append(scene.part_ids)
        facts.append(SceneFacts.from_scene(scene).to_dict())
    tmp = Path(path).with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp, rgb=np.stack(rgb), part_ids=np.stack(part_ids), facts=np.array(json.dumps(facts))
    )
    tmp.rename(path)
    return path


def build(cache: Path, split: str, n: int, *, size=DEFAULT_SIZE, jobs: int = 2) -> None:
    """Render the first ``n`` seeds of ``split`` (existing shards are kept)."""
    lo, hi = SPLIT_SEEDS[split]
    if lo + n > hi:
        raise ValueError(f"{n} {split} scenes exceed the {split} seed range {lo}:{hi}")
    (Path(cache) / split).mkdir(parents=True, exist_ok=True)
    todo = [
        (str(shard_path(cache, split, start)), start, min(start + SHARD, lo + n), *size)
        for start in range(lo, lo + n, SHARD)
        if not shard_path(cache, split, start).exists()
    ]
    if not todo:
        return
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for path in pool.map(_render_shard, todo):
            log(f"scenes {split}: {Path(path).name}")


def load(cache: Path, split: str, n: int) -> SceneSet:
    """The first ``n`` scenes of ``split``; a missing shard says which command renders it."""
    lo = SPLIT_SEEDS[split][0]
    rgb, part_ids, facts = [], [], []
    for start in range(lo, lo + n, SHARD):
        path = shard_path(cache, split, start)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: run `part-point backbone scenes --cache {cache}` first"
            )
        with np.load(path, allow_pickle=False) as z:
            rgb.append(z["rgb"])
            part_ids.append(z["part_ids"])
            facts += [SceneFacts.from_dict(d) for d in json.loads(str(z["facts"]))]
    return SceneSet(np.concatenate(rgb)[:n], np.concatenate(part_ids)[:n], facts[:n])
