"""Synthetic tabletop RGB-D world with ground truth: scenes, renderer, queries, disk format.

``render_scene(seed, width=..., height=...)`` gives a ``Scene`` in memory (for the sim camera node);
``render_twin_scene(seed)`` a scene with two or three instances of one type (seeds 1,000,000 on);
``absent_queries(scene)`` questions about what the scene does not hold ("is it here?");
``generate_dataset(root, seeds, split)`` writes scenes to disk for ``data.synthetic.load_synthetic``.
Names are imported lazily so that ``import part_point_ros.sim`` does not load open3d.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "render_scene": "render",
    "render_twin_scene": "render",
    "absent_queries": "queries",
    "TWIN_SPLIT_SEEDS": "layout",
    "Scene": "scene",
    "Query": "scene",
    "PartInstance": "scene",
    "ObjectInstance": "scene",
    "CameraIntrinsics": "camera",
    "OBJECT_TYPES": "catalog",
    "PALETTE": "catalog",
    "object_part_pairs": "catalog",
    "generate_dataset": "generate",
    "write_scene": "disk",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
