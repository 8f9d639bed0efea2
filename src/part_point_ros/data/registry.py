"""``load_dataset(kind, **paths)``: one entry point for every dataset loader.

Adding a dataset is one loader module plus one line in ``_LOADERS``. Loaders are imported when
asked for, so a missing optional dependency only matters for the dataset that needs it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from part_point_ros.data.base import PartDataset
from part_point_ros.data.errors import DataError

_LOADERS: dict[str, tuple[str, str]] = {
    "paco_lvis": ("part_point_ros.data.paco", "load_paco_lvis"),
    "instructpart": ("part_point_ros.data.instructpart", "load_instructpart"),
    "pointbench": ("part_point_ros.data.pointbench", "load_pointbench"),
    "synthetic": ("part_point_ros.data.synthetic", "load_synthetic"),
}

DATASET_KINDS = tuple(_LOADERS)


def load_dataset(kind: str, **paths: Any) -> PartDataset:
    """Load dataset ``kind`` (one of ``DATASET_KINDS``) with the loader's own keyword arguments,
    e.g. ``load_dataset("pointbench", root="data/pointbench")``."""
    key = kind.strip().lower().replace("-", "_")
    if key not in _LOADERS:
        raise DataError(f"unknown dataset kind '{kind}'; use one of {', '.join(DATASET_KINDS)}")
    module_name, function_name = _LOADERS[key]
    loader = getattr(importlib.import_module(module_name), function_name)
    try:
        inspect.signature(loader).bind(**paths)
    except TypeError as err:
        accepted = ", ".join(inspect.signature(loader).parameters)
        raise DataError(f"load_dataset('{key}'): {err}; {function_name} accepts: {accepted}") from None
    return loader(**paths)
