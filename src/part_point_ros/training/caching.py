"""``cache_splits(config)``: load the frozen backbone once and write the feature caches of a config."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from part_point_ros.heads import HeadConfig
from part_point_ros.training.config import TrainConfig
from part_point_ros.training.errors import ConfigError
from part_point_ros.training.feature_cache import write_cache

SPLITS = ("train", "eval")


def head_upscale(config: TrainConfig) -> int:
    """Heatmap size / grid size of the head this config trains (2 ** n_upsample)."""
    default = next(f.default for f in fields(HeadConfig) if f.name == "n_upsample")
    return 2 ** int(config.head.get("n_upsample", default))


def cache_splits(
    config: TrainConfig,
    splits: Sequence[str] = SPLITS,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write ``<cache_dir>/<split>`` for each split whose data is configured; resumes finished chunks."""
    from part_point_ros.backbones import load_backbone
    from part_point_ros.data import load_dataset

    specs = {"train": config.train_data, "eval": config.eval_data}
    unknown = [s for s in splits if s not in specs]
    if unknown:
        raise ConfigError(f"unknown split {unknown[0]!r}: use train, eval or all")
    todo = {s: specs[s] for s in splits if specs[s] is not None}
    if not todo:
        raise ConfigError(f"no data configured for {', '.join(splits)}: set train_data / eval_data")
    if not config.backbone:
        raise ConfigError("backbone is not set: give a hub id or directory (backbone: ... or backbone=...)")
    heads = config.head_refs()
    device = config.resolved_device()
    dtype = config.backbone_dtype if device.startswith("cuda") else "float32"  # half precision is slow on CPU
    adapter = load_backbone(  # only what the capture reads: no layers past the heads', no lm_head
        config.backbone, device=device, dtype=dtype, max_layer=max(h.layer for h in heads), lm_head=False
    )
    written: dict[str, Path] = {}
    for split, spec in todo.items():
        dataset = load_dataset(spec.kind, **spec.args)
        if log:
            log(dataset.report())
        bar = _bar(progress, f"cache {split}")
        written[split] = write_cache(
            adapter, dataset, config.cache_path(split), heads=heads, upscale=head_upscale(config),
            dtype=config.cache_dtype, chunk_size=config.chunk_size, data_spec=spec.describe(),
            max_samples=spec.max_samples, progress=bar,
        )  # fmt: skip
    return written


def _bar(enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    state = {"bar": None}

    def update(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=total, desc=desc, dynamic_ncols=True)
        state["bar"].n = done
        state["bar"].refresh()
        if done >= total:
            state["bar"].close()

    return update
