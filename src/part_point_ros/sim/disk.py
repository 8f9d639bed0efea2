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

from part_point_ros.sim.records import floats, object_records, part_records, query_records
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
DECIMALS = 6  # numbers in meta.json: micrometres / micro-radians


def scene_dir_name(seed: int) -> str:
    return f"scene_{seed:06d}"


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
        "camera_pose": floats(scene.camera_pose, decimals=DECIMALS),
        "light_dir": floats(scene.light_dir, decimals=DECIMALS),
        "objects": object_records(scene, decimals=DECIMALS),
        "parts": part_records(scene, decimals=DECIMALS),
        "queries": query_records(scene),
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
