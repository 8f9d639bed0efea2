"""PACO-LVIS loader: one sample per (image, object-part), the union of all its instances.

File: ``paco_lvis_v1_{train,val,test}.json`` (COCO/LVIS style). Part categories are named
``"object:part"`` (ids from 2000 up); object categories keep their LVIS ids and names without a
colon, and are not part samples. ``file_name`` is relative to the COCO-2017 root
(``train2017/...`` or ``val2017/...``). Segmentations may be compressed RLE, uncompressed RLE or
polygons. Following seed 000 §4, instances are merged BEFORE the area filter (< 0.1% dropped).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from part_point_ros.data.base import PartDataset, Sample
from part_point_ros.data.errors import DataError, expect, field, read_json
from part_point_ros.data.masks import read_rgb
from part_point_ros.data.prompts import paco_query
from part_point_ros.errors import MissingDependencyError

try:
    import pycocotools.mask as mask_utils
except ImportError as _err:  # polygons -> RLE, merge and area come from pycocotools
    raise MissingDependencyError(
        "PACO-LVIS loading needs pycocotools: pip install 'pycocotools>=2.0.8'"
    ) from _err

SKIP_OBJECT_ONLY = "annotations of object-only categories (not parts)"
SKIP_EMPTY_SEGMENTATION = "annotations with an empty segmentation"
SKIP_MISSING_IMAGE = "object-parts whose image file is missing"

_SPLIT_IN_NAME = re.compile(r"paco_lvis_v1_(\w+)\.json$")


def skip_small(min_area_frac: float) -> str:
    """The skip reason for the area filter, e.g. 'object-parts with merged mask < 0.1% of the image'."""
    return f"object-parts with merged mask < {min_area_frac * 100:g}% of the image"


def load_paco_lvis(
    annotation_json: str | Path,
    image_root: str | Path,
    *,
    split: str | None = None,
    min_area_frac: float = 0.001,
    check_files: bool = True,
) -> PartDataset:
    """Load a PACO-LVIS split as part-pointing samples.

    ``annotation_json`` is the split file, or a folder holding ``paco_lvis_v1_{split}.json`` (then
    ``split`` is required). ``image_root`` is the COCO-2017 root. ``split`` names the dataset
    (inferred from the file name when not given). With ``check_files`` a sample whose image is
    missing is skipped; if every image is missing, ``image_root`` is wrong and DataError is raised.
    """
    json_path = _resolve_json(Path(annotation_json), split)
    if split is None:
        found = _SPLIT_IN_NAME.search(json_path.name)
        split = found.group(1) if found else json_path.stem
    if not 0.0 <= min_area_frac < 1.0:
        raise DataError(f"min_area_frac={min_area_frac} must be in [0, 1); the paper uses 0.001 (0.1%)")
    image_root = Path(image_root)
    data = expect(read_json(json_path), dict, file=json_path, where="the top level")
    categories = _read_categories(data, json_path)
    images = _read_images(data, json_path)
    skipped: Counter[str] = Counter()
    groups = _group_part_instances(data, json_path, categories, images, skipped)

    samples: list[Sample] = []
    exists: dict[int, bool] = {}
    first_missing: str | None = None
    for (image_id, category_id), (rles, n_instances) in sorted(groups.items()):
        file_name, height, width = images[image_id]
        merged = rles[0] if len(rles) == 1 else mask_utils.merge(rles)
        frac = float(mask_utils.area(merged)) / float(height * width)
        if frac < min_area_frac:
            skipped[skip_small(min_area_frac)] += 1
            continue
        path = image_root / file_name
        if check_files:
            if image_id not in exists:
                exists[image_id] = path.is_file()
            if not exists[image_id]:
                skipped[SKIP_MISSING_IMAGE] += 1
                first_missing = first_missing or str(path)
                continue
        object_name, part_name = categories[category_id]
        samples.append(
            Sample(
                sample_id=f"paco_lvis/{split}/{image_id}/{category_id}",
                image_path=path,
                query=paco_query(object_name, part_name),
                load_image=partial(_load_image, path, (height, width), json_path.name),
                load_mask=partial(_decode_rle, merged),
                meta={
                    "dataset": "paco_lvis",
                    "split": split,
                    "image_id": image_id,
                    "category_id": category_id,
                    "category": f"{object_name}:{part_name}",
                    "object": object_name,
                    "part": part_name,
                    "num_instances": n_instances,
                    "area_frac": frac,
                    "height": height,
                    "width": width,
                },
            )
        )
    if not samples and first_missing is not None:
        raise DataError(
            f"{image_root}: no image of {json_path.name} found (first missing: {first_missing}); "
            "image_root must be the COCO-2017 root holding train2017/ and val2017/"
        )
    return PartDataset(name=f"paco_lvis_{split}", samples=samples, skipped=skipped, source=str(json_path))


def _resolve_json(path: Path, split: str | None) -> Path:
    if path.is_dir():
        if split is None:
            raise DataError(f"{path}: is a folder; pass split='train'|'val'|'test' or the json file itself")
        return path / f"paco_lvis_v1_{split}.json"
    return path


def _read_categories(data: dict, file: Path) -> dict[int, tuple[str, str] | None]:
    """category id -> (object, part), or None for an object-only category."""
    out: dict[int, tuple[str, str] | None] = {}
    for i, cat in enumerate(field(data, "categories", list, file=file, where="the top level")):
        where = f"categories[{i}]"
        cat = expect(cat, dict, file=file, where=where)
        cat_id = field(cat, "id", int, file=file, where=where)
        name = field(cat, "name", str, file=file, where=where)
        if ":" in name:
            object_name, part_name = name.split(":", 1)
            out[cat_id] = (object_name, part_name)
        else:
            out[cat_id] = None
    return out


def _read_images(data: dict, file: Path) -> dict[int, tuple[str, int, int]]:
    """image id -> (file_name relative to the COCO root, height, width)."""
    out: dict[int, tuple[str, int, int]] = {}
    for i, img in enumerate(field(data, "images", list, file=file, where="the top level")):
        where = f"images[{i}]"
        img = expect(img, dict, file=file, where=where)
        image_id = field(img, "id", int, file=file, where=where)
        if "file_name" in img or "coco_url" not in img:
            file_name = field(img, "file_name", str, file=file, where=where)
        else:  # LVIS style: .../train2017/000000391895.jpg -> train2017/000000391895.jpg
            file_name = "/".join(field(img, "coco_url", str, file=file, where=where).split("/")[-2:])
        height = field(img, "height", int, file=file, where=where)
        width = field(img, "width", int, file=file, where=where)
        if height <= 0 or width <= 0:
            raise DataError(f"{file.name}: {where} has size {height}x{width}; height and width must be > 0")
        out[image_id] = (file_name, height, width)
    return out


def _group_part_instances(
    data: dict,
    file: Path,
    categories: dict[int, tuple[str, str] | None],
    images: dict[int, tuple[str, int, int]],
    skipped: Counter[str],
) -> dict[tuple[int, int], tuple[list[dict], int]]:
    """(image id, part category id) -> (RLEs of all its non-empty instances, instance count)."""
    rles: dict[tuple[int, int], list[dict]] = defaultdict(list)
    counts: Counter[tuple[int, int]] = Counter()
    for i, ann in enumerate(field(data, "annotations", list, file=file, where="the top level")):
        where = f"annotations[{i}]"
        ann = expect(ann, dict, file=file, where=where)
        category_id = field(ann, "category_id", int, file=file, where=where)
        image_id = field(ann, "image_id", int, file=file, where=where)
        segmentation = field(ann, "segmentation", (list, dict), file=file, where=where)
        if category_id not in categories:
            raise DataError(f"{file.name}: {where}['category_id'] = {category_id} is not in 'categories'")
        if image_id not in images:
            raise DataError(f"{file.name}: {where}['image_id'] = {image_id} is not in 'images'")
        if categories[category_id] is None:
            skipped[SKIP_OBJECT_ONLY] += 1
            continue
        _, height, width = images[image_id]
        instance = _to_rles(segmentation, height, width, file=file, where=f"{where}['segmentation']")
        if not instance or _total_area(instance, file, where) == 0:
            skipped[SKIP_EMPTY_SEGMENTATION] += 1
            continue
        rles[(image_id, category_id)].extend(instance)
        counts[(image_id, category_id)] += 1
    return {key: (value, counts[key]) for key, value in rles.items()}


def _to_rles(seg: Any, height: int, width: int, *, file: Path, where: str) -> list[dict]:
    """COCO segmentation (polygons, compressed or uncompressed RLE) -> compressed RLEs; [] if empty."""
    if isinstance(seg, dict):
        counts = field(seg, "counts", (str, list), file=file, where=where)
        size = field(seg, "size", list, file=file, where=where)
        if [int(s) for s in size if isinstance(s, int)] != [height, width]:
            raise DataError(
                f"{file.name}: {where}['size'] = {size} does not match the image size [{height}, {width}]"
            )
        if not counts:
            return []
        if isinstance(counts, str):
            try:
                runs = rle_string_counts(counts.encode("ascii"))
            except (UnicodeEncodeError, ValueError) as err:
                raise DataError(f"{file.name}: {where}['counts'] is not a COCO RLE string ({err})") from err
            if runs.sum() != height * width:
                raise DataError(
                    f"{file.name}: {where}['counts'] covers {runs.sum()} pixels, "
                    f"not height*width = {height * width}"
                )
            return [{"size": [height, width], "counts": counts.encode("ascii")}]
        for j, run in enumerate(counts):
            if isinstance(run, bool) or not isinstance(run, int) or run < 0:
                raise DataError(f"{file.name}: {where}['counts'][{j}] = {run!r} is not a run length")
        if sum(counts) != height * width:
            raise DataError(
                f"{file.name}: {where}['counts'] sums to {sum(counts)}, not height*width = {height * width}"
            )
        return [mask_utils.frPyObjects(seg, height, width)]
    polygons = []
    for j, poly in enumerate(seg):
        poly = expect(poly, list, file=file, where=f"{where}[{j}]")
        for k, v in enumerate(poly):
            expect(v, (int, float), file=file, where=f"{where}[{j}][{k}]")
        if len(poly) % 2:
            raise DataError(f"{file.name}: {where}[{j}] has an odd number of coordinates ({len(poly)})")
        if len(poly) >= 6:  # a polygon needs three points; fewer is an empty (degenerate) polygon
            polygons.append([float(v) for v in poly])
    return mask_utils.frPyObjects(polygons, height, width) if polygons else []


def rle_string_counts(counts: bytes) -> np.ndarray:
    """Run lengths of a COCO compressed-RLE string (column-major, background first).

    The format: each run is a signed varint of 5-bit chunks, char = chunk + 48, bit 0x20 means
    "more chunks follow", bit 0x10 of the last chunk is the sign; from the fourth run on a run is
    stored as the difference to the run two places before. Checked here because pycocotools
    decodes without bounds checks (a corrupt string would write past the mask).
    """
    v = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if v.size == 0:
        return np.zeros(0, dtype=np.int64)
    if v.min() < 0 or v.max() > 63:
        raise ValueError("character outside the RLE alphabet")
    more = (v & 0x20) != 0
    if more[-1]:
        raise ValueError("truncated run")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    number = np.repeat(np.arange(ends.size), ends - starts + 1)  # char -> index of its run
    chunk = np.arange(v.size) - starts[number]  # chunk position inside its run
    if chunk.max() > 11:
        raise ValueError("run too long")
    x = np.add.reduceat((v & 0x1F) << (5 * chunk), starts)
    negative = (v[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * (chunk[ends][negative] + 1))
    runs = x.copy()
    if x.size > 3:  # runs 3, 5, 7, ... are deltas to the run two before, chained from run 1
        runs[3::2] = x[1] + np.cumsum(x[3::2])
    if x.size > 4:  # runs 4, 6, ... chained from run 2 (runs 0-2 are stored as is)
        runs[4::2] = x[2] + np.cumsum(x[4::2])
    if runs.min() < 0:
        raise ValueError("negative run length")
    return runs


def _total_area(rles: list[dict], file: Path, where: str) -> int:
    try:
        return int(np.sum(mask_utils.area(rles)))
    except Exception as err:  # pycocotools raises bare ValueError/TypeError on malformed input
        raise DataError(f"{file.name}: {where}['segmentation'] is not a valid RLE ({err})") from err


def _decode_rle(rle: dict) -> np.ndarray:
    """bool (H, W) from a compressed RLE (decoded here: bounds-checked, no pycocotools warning)."""
    height, width = rle["size"]
    runs = rle_string_counts(rle["counts"])
    if runs.sum() != height * width:
        raise DataError(
            f"RLE covers {runs.sum()} pixels, not {height}x{width}; the annotation file is corrupt"
        )
    values = (np.arange(runs.size) % 2).astype(bool)  # runs alternate background, foreground
    flat = np.repeat(values, runs)  # column-major pixels, (W*H,)
    return np.ascontiguousarray(flat.reshape(width, height).T)  # (W*H,) -> (W, H) -> (H, W)


def _load_image(path: Path, size: tuple[int, int], json_name: str) -> np.ndarray:
    image = read_rgb(path)
    if image.shape[:2] != size:
        raise DataError(
            f"{path}: image is {image.shape[0]}x{image.shape[1]} but {json_name} says {size[0]}x{size[1]}; "
            "is image_root the COCO-2017 root?"
        )
    return image
