"""PointArena Point-Bench loader (the four tasks of seed 000 §4; counting excluded by default).

Layout: ``root/data.json`` (a list of ``{image_filename, mask_filename, category, user_input}``),
``root/selected_images/<category>/<image_filename>``, ``root/selected_masks/<category>/<stem>_mask.png``.
Mask foreground is where any channel is > 127. Image names may contain spaces. Following the
paper, images are downsampled so that height and width are <= ``max_side`` (1,500 px); the loaded
image AND mask are the downsampled ones (mask: nearest neighbour), ``meta`` keeps the scale and the
original size (original pixel = loaded pixel / scale).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from part_point_ros.data.base import PartDataset, Sample
from part_point_ros.data.errors import DataError, expect, field, read_json
from part_point_ros.data.masks import fit_max_side, image_size, read_mask, read_rgb, resize_image, resize_mask

CATEGORIES = ("affordable", "spatial", "reasoning", "steerable")  # the paper's four tasks
ALL_CATEGORIES = (*CATEGORIES, "counting")
MASK_THRESHOLD = 127

SKIP_NO_MASK = "items without mask_filename"
SKIP_MISSING_IMAGE = "items whose image file is missing"
SKIP_MISSING_MASK = "items whose mask file is missing"


def skip_category(category: str) -> str:
    return f"items of category '{category}' (not selected)"


def load_pointbench(
    root: str | Path,
    *,
    categories: Sequence[str] = CATEGORIES,
    max_side: int | None = 1500,
    check_files: bool = True,
) -> PartDataset:
    """Load Point-Bench items of ``categories`` as samples downsampled to ``max_side`` (None: keep size).

    With ``check_files`` items whose image or mask is missing are skipped and reported; the image
    header is read here to know the original size (pixels are read only by ``load_image``).
    """
    root = Path(root)
    if isinstance(categories, str):
        categories = (categories,)
    if max_side is not None and max_side < 1:
        raise DataError(f"max_side={max_side} must be >= 1 (the paper uses 1500) or None")
    json_path = root / "data.json"
    items = expect(read_json(json_path), list, file=json_path, where="the top level")
    skipped: Counter[str] = Counter()
    samples: list[Sample] = []
    for i, item in enumerate(items):
        where = f"[{i}]"
        item = expect(item, dict, file=json_path, where=where)
        category = field(item, "category", str, file=json_path, where=where)
        if category not in categories:
            skipped[skip_category(category)] += 1
            continue
        image_filename = field(item, "image_filename", str, file=json_path, where=where)
        query = field(item, "user_input", str, file=json_path, where=where).strip()
        if item.get("mask_filename") in (None, ""):
            skipped[SKIP_NO_MASK] += 1
            continue
        mask_filename = field(item, "mask_filename", str, file=json_path, where=where)
        if not query:
            raise DataError(f"{json_path.name}: {where}['user_input'] is empty")
        images, masks = root / "selected_images", root / "selected_masks"
        image_path = _first_file(images / category / image_filename, images / image_filename)
        mask_path = _first_file(masks / category / mask_filename, masks / mask_filename)
        if check_files and not image_path.is_file():
            skipped[SKIP_MISSING_IMAGE] += 1
            continue
        if check_files and not mask_path.is_file():
            skipped[SKIP_MISSING_MASK] += 1
            continue
        meta = {"dataset": "pointbench", "category": category, "index": i, "mask_path": mask_path}
        size = None
        if check_files:
            height, width = image_size(image_path)
            new_h, new_w, scale = fit_max_side(height, width, max_side)
            size = (new_h, new_w)
            meta.update(original_size=(height, width), size=size, scale=scale)
        samples.append(
            Sample(
                sample_id=f"pointbench/{category}/{i}/{image_filename}",
                image_path=image_path,
                query=query,
                load_image=partial(_load_image, image_path, max_side),
                load_mask=partial(_load_mask, mask_path, image_path, size, max_side),
                meta=meta,
            )
        )
    return PartDataset(name="pointbench", samples=samples, skipped=skipped, source=str(json_path))


def _first_file(*candidates: Path) -> Path:
    return next((p for p in candidates if p.is_file()), candidates[0])


def _load_image(path: Path, max_side: int | None) -> np.ndarray:
    image = read_rgb(path)
    new_h, new_w, _ = fit_max_side(image.shape[0], image.shape[1], max_side)
    return resize_image(image, (new_h, new_w))


def _load_mask(
    mask_path: Path, image_path: Path, size: tuple[int, int] | None, max_side: int | None
) -> np.ndarray:
    """The mask at the loaded image's size (nearest neighbour), whatever size it is stored at."""
    if size is None:
        height, width = image_size(image_path)
        size = fit_max_side(height, width, max_side)[:2]
    return resize_mask(read_mask(mask_path, threshold=MASK_THRESHOLD), size)
