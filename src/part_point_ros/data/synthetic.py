"""Loader for the synthetic tabletop world written by ``python -m part_point_ros.sim.generate``.

One ``Sample`` per query of every scene under ``<root>/<split>/scene_*/``; images and masks are
read only when asked for. The format is described in docs/synthetic_world.md. Reading needs
numpy and Pillow only (no open3d).

``absent=True`` adds, after each scene's own queries, its questions about what is not there
(``sim.queries.make_absent_queries``, made from meta.json: nothing is written to disk): an empty
mask and ``meta["present"] = False``. They train a head's presence output (``HeadConfig.presence``,
"not here"); every other loss and metric leaves them out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from part_point_ros.data.base import PartDataset, Sample
from part_point_ros.data.errors import DataError
from part_point_ros.errors import InputError
from part_point_ros.sim.disk import FORMAT_NAME, FORMAT_VERSION
from part_point_ros.sim.queries import make_absent_queries, min_query_pixels
from part_point_ros.sim.scene import PLURAL_KIND, ObjectInstance, PartInstance

QUERY_KINDS = ("direct", "reasoning", PLURAL_KIND)  # plural: twin scenes only
_REGENERATE = "regenerate the scene with `python -m part_point_ros.sim.generate`"


class SyntheticDataError(DataError):
    """A synthetic scene on disk is malformed; the message names the file and the field."""


class _Reader:
    """Typed access to a parsed meta.json; every failure names the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> SyntheticDataError:
        return SyntheticDataError(f"{self.path}: field '{where}' {problem}; {_REGENERATE}")

    def get(self, obj: dict, key: str, kind: str, where: str = "", *, optional: bool = False) -> Any:
        where = f"{where}.{key}" if where else key
        if key not in obj:
            raise self.fail(where, "is missing")
        value = obj[key]
        if value is None and optional:
            return None
        checks = {
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str) and v.strip() != "",
            "bool": lambda v: isinstance(v, bool),
            "list": lambda v: isinstance(v, list),
            "dict": lambda v: isinstance(v, dict),
        }
        if not checks[kind](value):
            raise self.fail(
                where, f"must be {'a non-empty string' if kind == 'str' else 'a ' + kind}, got {value!r}"
            )
        return value

    def numbers(self, obj: dict, key: str, shape: tuple[int, ...], where: str, *, optional: bool = False):
        where_key = f"{where}.{key}" if where else key
        value = self.get(obj, key, "list", where, optional=optional)
        if value is None:
            return None
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise self.fail(where_key, f"must be numbers of shape {shape}") from None
        if arr.shape != shape or not np.all(np.isfinite(arr)):
            raise self.fail(where_key, f"must be finite numbers of shape {shape}, got shape {arr.shape}")
        return arr

    def ints(self, obj: dict, key: str, where: str) -> list[int]:
        value = self.get(obj, key, "list", where)
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.fail(f"{where}.{key}", f"must be a non-empty list of integers, got {value!r}")
        return value


def _read_meta(path: Path) -> dict[str, Any]:
    """Parse and validate meta.json; returns the fields the loader uses, already checked."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SyntheticDataError(
            f"{path}: not valid JSON ({err.msg}, line {err.lineno}); {_REGENERATE}"
        ) from None
    r = _Reader(path)
    if not isinstance(raw, dict):
        raise r.fail("<root>", "must be a JSON object")
    if r.get(raw, "format", "str") != FORMAT_NAME:
        raise r.fail("format", f"must be {FORMAT_NAME!r}, got {raw['format']!r}")
    version = r.get(raw, "version", "int")
    if version != FORMAT_VERSION:
        raise r.fail("version", f"is {version}; this loader reads version {FORMAT_VERSION}")
    seed = r.get(raw, "seed", "int")
    intr = r.get(raw, "intrinsics", "dict")
    intrinsics = {k: float(r.get(intr, k, "number", "intrinsics")) for k in ("fx", "fy", "cx", "cy")}
    intrinsics |= {k: r.get(intr, k, "int", "intrinsics") for k in ("width", "height")}
    camera_pose = r.numbers(raw, "camera_pose", (4, 4), "")
    files = r.get(raw, "files", "dict")
    names = {k: r.get(files, k, "str", "files") for k in ("rgb", "parts", "depth_mm")}
    parts = {}
    for i, p in enumerate(r.get(raw, "parts", "list")):
        where = f"parts[{i}]"
        if not isinstance(p, dict):
            raise r.fail(where, "must be an object")
        pid = r.get(p, "id", "int", where)
        parts[pid] = {
            "object_id": r.get(p, "object_id", "int", where) if "object_id" in p else None,
            "object": r.get(p, "object", "str", where),
            "part": r.get(p, "part", "str", where),
            "pixels": r.get(p, "pixels", "int", where),
            "point_2d": r.numbers(p, "point_2d", (2,), where, optional=True),
            "point_3d": r.numbers(p, "point_3d", (3,), where, optional=True),
            "point_3d_camera": r.numbers(p, "point_3d_camera", (3,), where, optional=True),
        }
    objects = []
    for i, o in enumerate(r.get(raw, "objects", "list") if "objects" in raw else []):
        where = f"objects[{i}]"
        if not isinstance(o, dict):
            raise r.fail(where, "must be an object")
        objects.append(
            {
                "id": r.get(o, "id", "int", where),
                "type": r.get(o, "type", "str", where),
                "colour": r.get(o, "colour", "str", where),
                "part_ids": r.ints(o, "part_ids", where),
            }
        )
    queries = []
    for i, q in enumerate(r.get(raw, "queries", "list")):
        where = f"queries[{i}]"
        if not isinstance(q, dict):
            raise r.fail(where, "must be an object")
        kind = r.get(q, "kind", "str", where)
        if kind not in QUERY_KINDS:
            raise r.fail(f"{where}.kind", f"must be one of {QUERY_KINDS}, got {kind!r}")
        part_ids = r.ints(q, "part_ids", where)
        unknown = [pid for pid in part_ids if pid not in parts]
        if unknown:
            raise r.fail(f"{where}.part_ids", f"names part ids {unknown} that are not in 'parts'")
        queries.append(
            {
                "text": r.get(q, "text", "str", where),
                "kind": kind,
                "object": r.get(q, "object", "str", where),
                "part": r.get(q, "part", "str", where),
                "part_ids": part_ids,
                "colour": r.get(q, "colour", "str", where, optional=True),
                "ambiguous": r.get(q, "ambiguous", "bool", where),
            }
        )
    return {
        "seed": seed,
        "intrinsics": intrinsics,
        "camera_pose": camera_pose,
        "files": names,
        "parts": parts,
        "objects": objects,
        "queries": queries,
    }


def _absent_queries(meta: dict[str, Any]) -> list:
    """The scene's ``make_absent_queries`` from its meta.json (objects and visible pixel counts)."""
    objects = [
        ObjectInstance(o["id"], o["type"], o["colour"], np.eye(4), tuple(o["part_ids"]))
        for o in meta["objects"]
    ]
    parts = [
        PartInstance(pid, p["object_id"], p["object"], p["part"], "", p["pixels"], None, None, None)
        for pid, p in meta["parts"].items()
    ]
    if not objects or any(p.object_id is None for p in parts):
        raise SyntheticDataError(
            f"scene {meta['seed']}: meta.json lacks 'objects' or parts' 'object_id', which the absent "
            f"queries need; {_REGENERATE}"
        )
    size = meta["intrinsics"]
    return make_absent_queries(
        meta["seed"], objects, parts, min_pixels=min_query_pixels(size["width"], size["height"])
    )


def _image_loader(path: Path):
    def load() -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))  # (H, W, 3) uint8

    return load


def _mask_loader(path: Path, part_ids: list[int]):
    def load() -> np.ndarray:
        with Image.open(path) as im:
            ids = np.asarray(im)  # (H, W) uint16 part instance ids
        return np.isin(ids, part_ids)

    return load


def load_synthetic(
    root: str | Path,
    split: str | Sequence[str] = "train",
    absent: bool = False,
    max_per_split: int | None = None,
) -> PartDataset:
    """Every query of every scene in ``<root>/<split>``, as a lazily loaded ``PartDataset``; with
    ``absent``, each scene's absent-object and absent-part questions after its own (module doc).

    ``split`` may be a list of splits, read in order (e.g. ``["train", "train_twins"]``: the ordinary
    train scenes, then twin scenes for "every instance"); ``max_per_split`` keeps the first N samples
    of each, so that adding a split never changes what is taken from the others.

    Skipped (and counted in ``PartDataset.skipped``): scene folders without meta.json (unfinished),
    scenes whose rgb.png or parts.png is missing, queries whose parts have no visible pixel.
    A malformed meta.json raises ``SyntheticDataError`` naming the file and the field.
    """
    splits = [split] if isinstance(split, str) else list(split)
    if not splits or not all(isinstance(s, str) and s for s in splits):
        raise InputError(f"split must be a split name or a list of them, e.g. train; got {split!r}")
    if max_per_split is not None and (
        isinstance(max_per_split, bool) or not isinstance(max_per_split, int) or max_per_split < 1
    ):
        raise InputError(f"max_per_split must be an int >= 1 or null, got {max_per_split!r}")
    if len(splits) == 1 and max_per_split is None:
        return _load_split(Path(root), splits[0], absent)
    parts = [_load_split(Path(root), name, absent) for name in splits]
    samples = [sample for part in parts for sample in part.samples[:max_per_split]]
    skipped: Counter[str] = Counter()
    for part in parts:
        skipped.update(part.skipped)
    return PartDataset(
        name=f"synthetic/{'+'.join(splits)}", samples=samples, skipped=skipped,
        source=", ".join(str(part.source) for part in parts),
    )  # fmt: skip


def _load_split(root: Path, split: str, absent: bool) -> PartDataset:
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise InputError(
            f"no synthetic split at {split_dir}; create it with "
            f"`python -m part_point_ros.sim.generate --out {root} --seeds 0:100 --split {split}`"
        )
    samples: list[Sample] = []
    skipped: Counter[str] = Counter()
    for scene_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and d.name.startswith("scene_")):
        meta_path = scene_dir / "meta.json"
        if not meta_path.is_file():
            skipped["scenes without meta.json (incomplete)"] += 1
            continue
        meta = _read_meta(meta_path)
        rgb_path, parts_path = scene_dir / meta["files"]["rgb"], scene_dir / meta["files"]["parts"]
        missing = [p.name for p in (rgb_path, parts_path) if not p.is_file()]
        if missing:
            skipped[f"scenes missing {' and '.join(missing)}"] += 1
            continue
        parts = meta["parts"]
        for qi, q in enumerate(meta["queries"]):
            if all(parts[pid]["pixels"] == 0 for pid in q["part_ids"]):
                skipped["queries whose parts are not visible"] += 1
                continue
            refs = [parts[pid] for pid in q["part_ids"]]
            fields = {
                "category": q["object"],
                "object": q["object"],
                "part": q["part"],
                "query_kind": q["kind"],
                "ambiguous": q["ambiguous"],
                "colour": q["colour"],
                "part_ids": list(q["part_ids"]),
                "gt_points_2d": [p["point_2d"] for p in refs if p["point_2d"] is not None],
                "gt_points_3d": [p["point_3d"] for p in refs if p["point_3d"] is not None],
                "gt_points_3d_camera": [
                    p["point_3d_camera"] for p in refs if p["point_3d_camera"] is not None
                ],
            }
            where = (meta, split, scene_dir, rgb_path, parts_path)
            samples.append(_scene_sample(*where, f"{qi:03d}", q["text"], q["part_ids"], fields))
        if absent:
            samples += _absent_samples(meta, split, scene_dir, rgb_path, parts_path)
    return PartDataset(name=f"synthetic/{split}", samples=samples, skipped=skipped, source=str(split_dir))


def _scene_sample(meta, split, scene_dir, rgb_path, parts_path, name, text, part_ids, fields) -> Sample:
    """One query of a scene as a ``Sample``: id ``synthetic/<split>/<scene>/<name>``, the mask of
    ``part_ids`` (their union; none: all False), meta = the scene's fields + the query's ``fields``."""
    info = {
        "dataset": "synthetic",
        "split": split,
        "scene_seed": meta["seed"],
        "scene_dir": str(scene_dir),
        **fields,
        "intrinsics": dict(meta["intrinsics"]),
        "camera_pose": meta["camera_pose"],
        "depth_path": str(scene_dir / meta["files"]["depth_mm"]),
    }
    return Sample(
        sample_id=f"synthetic/{split}/{scene_dir.name}/{name}",
        image_path=rgb_path,
        query=text,
        load_image=_image_loader(rgb_path),
        load_mask=_mask_loader(parts_path, list(part_ids)),
        meta=info,
    )


def _absent_samples(meta: dict[str, Any], split: str, scene_dir: Path, rgb_path: Path, parts_path: Path):
    """Samples of the scene's absent queries: ids ``.../a00``, ``.../a01``, ..., an empty mask."""
    samples = []
    for ai, q in enumerate(_absent_queries(meta)):
        fields = {
            "category": q.object_type,
            "object": q.object_type,
            "part": q.part,
            "query_kind": q.kind,
            "ambiguous": False,
            "colour": q.colour,
            "part_ids": [],
            "present": False,
            "gt_points_2d": [],
            "gt_points_3d": [],
            "gt_points_3d_camera": [],
        }
        where = (meta, split, scene_dir, rgb_path, parts_path)
        samples.append(_scene_sample(*where, f"a{ai:02d}", q.text, (), fields))  # np.isin(ids, []): no pixel
    return samples
