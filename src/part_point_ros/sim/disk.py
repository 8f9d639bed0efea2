"""Write a rendered scene to disk: PNG images, one NumPy array, and meta.json (no pickle).

Layout (documented in docs/synthetic_world.md)::

    <root>/<split>/scene_<seed:06d>/
        rgb.png        8-bit RGB
        depth.png      16-bit grey, z-depth in millimetres, 0 = no hit
        depth_m.npy    float32 metres, NaN = no hit (np.load(..., allow_pickle=False))
        parts.png      16-bit grey, part instance id per pixel, 0 = table, floor or nothing
        objects.png    16-bit grey, object instance id per pixel, 0 = not an object
        meta.json      intrinsics, camera pose, objects, parts, colours, GT points, queries
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from part_point_ros.sim.scene import Scene

FORMAT_NAME = "part_point_ros.synthetic"
FORMAT_VERSION = 1
FILES = {
    "rgb": "rgb.png",
    "depth_mm": "depth.png",
    "depth_m": "depth_m.npy",
    "parts": "parts.png",
    "objects": "objects.png",
}
CAMERA_FRAME = "camera_color_optical_frame"
WORLD_FRAME = "base_link"


def scene_dir_name(seed: int) -> str:
    return f"scene_{seed:06d}"


def _floats(a: np.ndarray | None) -> list | None:
    return None if a is None else np.asarray(a, dtype=np.float64).round(6).tolist()


def scene_meta(scene: Scene, *, split: str) -> dict[str, Any]:
    """The JSON-ready description of ``scene`` that goes to meta.json."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "seed": int(scene.seed),
        "split": split,
        "files": dict(FILES),
        "frames": {"camera": CAMERA_FRAME, "world": WORLD_FRAME},
        "depth": {"png_unit_m": 0.001, "png_invalid": 0, "npy_invalid": "NaN", "kind": "z-depth"},
        "intrinsics": scene.intrinsics.to_dict(),
        "camera_pose": _floats(scene.camera_pose),
        "light_dir": _floats(scene.light_dir),
        "objects": [
            {
                "id": o.object_id,
                "type": o.object_type,
                "colour": o.colour,
                "pose": _floats(o.pose),
                "part_ids": list(o.part_ids),
            }
            for o in scene.objects
        ],
        "parts": [
            {
                "id": p.part_id,
                "object_id": p.object_id,
                "object": p.object_type,
                "part": p.part,
                "colour": p.colour,
                "pixels": p.pixel_count,
                "point_2d": None if p.point_2d is None else list(p.point_2d),
                "point_3d_camera": _floats(p.point_3d_camera),
                "point_3d": _floats(p.point_3d),
            }
            for p in scene.parts
        ],
        "queries": [
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
        ],
    }


_NUMBER_LIST = re.compile(r"\[\s+([-+0-9.eE,\s]+?)\s+\]")


def _dumps(meta: dict[str, Any]) -> str:
    """Indented JSON with every list of numbers on one line (a 4x4 pose is four short lines)."""
    text = json.dumps(meta, indent=1)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def write_scene(scene: Scene, root: str | Path, *, split: str) -> Path:
    """Write ``scene`` under ``<root>/<split>/scene_<seed>/`` and return that directory."""
    out = Path(root) / split / scene_dir_name(scene.seed)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.rgb).save(out / FILES["rgb"])
    Image.fromarray(scene.depth_mm).save(out / FILES["depth_mm"])  # uint16 -> 16-bit PNG
    np.save(out / FILES["depth_m"], scene.depth_m.astype(np.float32), allow_pickle=False)
    Image.fromarray(scene.part_ids.astype(np.uint16)).save(out / FILES["parts"])
    Image.fromarray(scene.object_ids.astype(np.uint16)).save(out / FILES["objects"])
    meta = scene_meta(scene, split=split)
    tmp = out / "meta.json.tmp"
    tmp.write_text(_dumps(meta) + "\n", encoding="utf-8")
    tmp.replace(out / "meta.json")  # meta.json last: its presence marks a complete scene
    return out
