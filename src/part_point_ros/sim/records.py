"""JSON-ready records of a rendered scene's objects, parts and queries.

One description for both consumers: ``sim.disk`` writes every field to meta.json (numbers rounded
to 6 decimals); ``ros.sim_camera_node`` publishes a subset of the fields on /sim_camera/ground_truth
(full precision).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from part_point_ros.sim.scene import Scene


def floats(a: np.ndarray | None, *, decimals: int | None = None) -> list | None:
    """``a`` as nested lists of Python floats (rounded to ``decimals`` if given); None stays None."""
    if a is None:
        return None
    values = np.asarray(a, dtype=np.float64)
    return (values if decimals is None else values.round(decimals)).tolist()


def object_records(scene: Scene, *, decimals: int | None = None) -> list[dict[str, Any]]:
    """One dict per object: id, type, colour, pose (4x4 object -> base_link), part_ids."""
    return [
        {
            "id": o.object_id,
            "type": o.object_type,
            "colour": o.colour,
            "pose": floats(o.pose, decimals=decimals),
            "part_ids": list(o.part_ids),
        }
        for o in scene.objects
    ]


def part_records(scene: Scene, *, decimals: int | None = None) -> list[dict[str, Any]]:
    """One dict per part: ids, names, colour, pixel count and ground-truth points (None if hidden)."""
    return [
        {
            "id": p.part_id,
            "object_id": p.object_id,
            "object": p.object_type,
            "part": p.part,
            "colour": p.colour,
            "pixels": p.pixel_count,
            "point_2d": None if p.point_2d is None else list(p.point_2d),
            "point_3d_camera": floats(p.point_3d_camera, decimals=decimals),
            "point_3d": floats(p.point_3d, decimals=decimals),
        }
        for p in scene.parts
    ]


def query_records(scene: Scene) -> list[dict[str, Any]]:
    """One dict per query: text, kind, object, part, the part / object ids it refers to, colour, ambiguous."""
    return [
        {
            "text": q.text,
            "kind": q.kind,
            "object": q.object_type,
            "part": q.part,
            "part_ids": list(q.part_ids),
            "object_ids": list(q.object_ids),
            "colour": q.colour,
            "ambiguous": q.ambiguous,
        }
        for q in scene.queries
    ]


def select(records: Iterable[dict[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
    """Each record cut down to ``fields``, in that order."""
    return [{name: record[name] for name in fields} for record in records]
