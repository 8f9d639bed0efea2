"""Writers of tiny dataset trees in the REAL on-disk formats, with the masks that were drawn.

Each writer returns the paths and the ground truth drawn into the files, so tests compare what a
loader returns against what was drawn, pixel for pixel. Rectangles are (y0, y1, x0, x1), half-open
like numpy slices; a COCO polygon with integer corners x0..x1, y0..y1 covers exactly those pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image


def rect_mask(shape: tuple[int, int], *rects: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for y0, y1, x0, x1 in rects:
        mask[y0:y1, x0:x1] = True
    return mask


def rect_polygon(y0: int, y1: int, x0: int, x1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def compressed_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE as stored in JSON (counts as a str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE, encoded here by hand: column-major runs, starting with background."""
    flat = mask.astype(np.uint8).ravel(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = int(pixel), 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_rgb(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random RGB image saved in the format its suffix names (JPEG or PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


# --------------------------------------------------------------------------------------------- PACO
@dataclass
class PacoFixture:
    json_path: Path
    image_root: Path
    masks: dict[tuple[int, int], np.ndarray]  # (image_id, category_id) -> drawn union of instances
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)


PACO_SHAPES = {1: (60, 80), 2: (50, 40), 3: (30, 30)}


def write_paco(root: Path, split: str = "test") -> PacoFixture:
    """COCO root with train2017/ and val2017/ images + ``annotations/paco_lvis_v1_{split}.json``.

    Kept samples: (1, mug:handle) two instances (compressed RLE + polygon) merged; (1, mug:body)
    uncompressed RLE; (1, mug:base) two 3-pixel instances, each < 0.1% but 0.125% merged;
    (2, glass:inner_body) one compressed RLE + one empty instance. Skipped: 1 object-only
    annotation, 3 empty segmentations, 1 part < 0.1% (mug:rim, 2 px), 1 part on a missing image.
    """
    h1, h2 = PACO_SHAPES[1], PACO_SHAPES[2]
    handle_a = rect_mask(h1, (5, 15, 10, 20))
    handle_b = rect_mask(h1, (30, 45, 40, 50))
    body = rect_mask(h1, (20, 50, 55, 70), (45, 55, 30, 70))  # an L shape
    rim = rect_mask(h1, (0, 1, 0, 2))  # 2 px = 0.04% of 4800
    base_a, base_b = rect_mask(h1, (58, 59, 0, 3)), rect_mask(h1, (58, 59, 77, 80))  # 3 px each
    yy, xx = np.mgrid[: h2[0], : h2[1]]
    inner = (yy - 25) ** 2 + (xx - 20) ** 2 <= 10**2  # a disk
    categories = [
        {"id": 1, "name": "mug", "supercategory": "OBJECT"},
        {"id": 2, "name": "glass_(drink_container)", "supercategory": "OBJECT"},
        {"id": 2000, "name": "mug:handle", "supercategory": "PART"},
        {"id": 2001, "name": "mug:body", "supercategory": "PART"},
        {"id": 2002, "name": "glass_(drink_container):inner_body", "supercategory": "PART"},
        {"id": 2003, "name": "mug:rim", "supercategory": "PART"},
        {"id": 2004, "name": "mug:base", "supercategory": "PART"},
    ]
    images = [
        {"id": 1, "file_name": "train2017/000000000001.jpg", "height": h1[0], "width": h1[1]},
        {"id": 2, "file_name": "val2017/000000000002.jpg", "height": h2[0], "width": h2[1]},
        {"id": 3, "file_name": "train2017/000000000003.jpg", "height": 30, "width": 30},  # not written
    ]
    segs = [
        (1, 2000, compressed_rle(handle_a)),
        (1, 1, [rect_polygon(0, 60, 0, 80)]),  # object-only category
        (1, 2000, [rect_polygon(30, 45, 40, 50)]),  # second handle instance, polygon
        (1, 2001, uncompressed_rle(body)),
        (1, 2003, compressed_rle(rim)),
        (2, 2002, []),  # empty
        (2, 2002, compressed_rle(inner)),
        (2, 2001, [[]]),  # empty
        (2, 2001, [[1, 2, 3, 4]]),  # degenerate polygon (two points): empty
        (3, 2000, [rect_polygon(0, 20, 0, 20)]),  # image file missing
        (1, 2004, compressed_rle(base_a)),
        (1, 2004, [rect_polygon(58, 59, 77, 80)]),
    ]
    annotations = [
        {
            "id": i + 1,
            "image_id": img,
            "category_id": cat,
            "segmentation": seg,
            "bbox": [0, 0, 1, 1],
            "area": 1,
        }
        for i, (img, cat, seg) in enumerate(segs)
    ]
    json_path = write_json(
        root / "annotations" / f"paco_lvis_v1_{split}.json",
        {"images": images, "annotations": annotations, "categories": categories},
    )
    image_root = root / "coco"
    write_rgb(image_root / images[0]["file_name"], *h1, seed=1)
    write_rgb(image_root / images[1]["file_name"], *h2, seed=2)
    masks = {
        (1, 2000): handle_a | handle_b,
        (1, 2001): body,
        (1, 2004): base_a | base_b,
        (2, 2002): inner,
    }
    return PacoFixture(json_path=json_path, image_root=image_root, masks=masks, sizes={1: h1, 2: h2})


# ------------------------------------------------------------------------------------- InstructPart
@dataclass
class InstructPartFixture:
    root: Path
    masks: dict[str, np.ndarray]  # "<base>-<object>-<part>" -> drawn mask
    instructions: dict[str, list[str]]


def _instructions(obj: str, part: str, n: int = 6) -> list[str]:
    all_six = [
        f"If I want to use the {obj}, which part should I hold?",
        f"Which part of the {obj} would you grab to use it?",
        f"the {part} of the {obj} is used for this",
        f"the {part} of the {obj} is used for holding",
        f"{part} of {obj}",
        f"{part} of {obj} hold",
    ]
    return all_six[:n]


def write_instructpart(root: Path) -> InstructPartFixture:
    """``test/`` and ``train/train200/`` trees. Masks are 8-bit 'L' PNGs holding 0 and 1.

    test entries: [0] kitchen_01.jpg: coffee mug/handle, knife/blade (per-part image copies);
    [1] kitchen_01.jpg again: pair of scissors/finger hole; [2] "garage 02.jpg" (space in the
    base name, plain image file): hammer/handle with only 2 instructions; [3] kitchen_03.jpg:
    cup/rim whose mask is missing.
    """
    shape = (40, 48)
    parts = [  # (entry, image_path, object, part, rect, n_instructions, per-part image copy)
        (0, "kitchen_01.jpg", "coffee mug", "handle", (5, 20, 30, 40), 6, True),
        (0, "kitchen_01.jpg", "knife", "blade", (25, 30, 2, 40), 6, True),
        (1, "kitchen_01.jpg", "pair of scissors", "finger hole", (10, 12, 10, 12), 6, True),
        (2, "garage 02.jpg", "hammer", "handle", (0, 40, 20, 24), 2, False),
        (3, "kitchen_03.jpg", "cup", "rim", (0, 2, 0, 48), 6, True),
    ]
    split_dir = root / "test"
    entries: list[dict] = []
    masks, instructions = {}, {}
    for entry, image_path, obj, part, rect, n, per_part in parts:
        if len(entries) <= entry:
            entries.append({"image_path": image_path, "part_list": []})
        texts = _instructions(obj, part, n)
        entries[entry]["part_list"].append(
            {"object": obj, "part": part, "affordance": "hold", "action": "grasp", "instruction": texts}
        )
        stem = f"{Path(image_path).stem}-{obj.replace(' ', '_')}-{part.replace(' ', '_')}"
        instructions[stem] = texts
        if per_part:
            write_rgb(split_dir / "images" / f"{stem}.jpg", *shape, seed=len(masks))
        else:
            write_rgb(split_dir / "images" / image_path, *shape, seed=len(masks))
        if obj == "cup":
            continue  # mask missing on purpose
        mask = rect_mask(shape, rect)
        (split_dir / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8)).save(split_dir / "masks" / f"{stem}.png")
        masks[stem] = mask
    write_json(split_dir / "data_test.json", entries)

    train_dir = root / "train" / "train200"
    stem = "lab_07-drill-trigger"
    write_rgb(train_dir / "images" / f"{stem}.jpg", *shape, seed=9)
    (train_dir / "masks").mkdir(parents=True, exist_ok=True)
    train_mask = rect_mask(shape, (10, 20, 10, 20))
    Image.fromarray(train_mask.astype(np.uint8)).save(train_dir / "masks" / f"{stem}.png")
    texts = _instructions("drill", "trigger")
    train_part = {
        "object": "drill",
        "part": "trigger",
        "affordance": "press",
        "action": "drill",
        "instruction": texts,
    }
    write_json(train_dir / "data_train.json", [{"image_path": "lab_07.jpg", "part_list": [train_part]}])
    masks[stem], instructions[stem] = train_mask, texts
    return InstructPartFixture(root=root, masks=masks, instructions=instructions)


# -------------------------------------------------------------------------------------- Point-Bench
@dataclass
class PointBenchFixture:
    root: Path
    big_mask_downsampled: np.ndarray  # expected mask of the 2000x1000 item after downsampling
    small_mask: np.ndarray  # expected mask of the small item (any channel > 127)


def write_pointbench(root: Path) -> PointBenchFixture:
    """data.json with 5 items: [0] affordable "mug photo.jpg" 2000x1000 (w x h) that must be
    downsampled to 1500x750; [1] spatial "shelf.png" 64x48 whose RGB mask mixes foreground
    (any channel > 127) and darker noise; [2] counting; [3] reasoning without mask_filename;
    [4] steerable whose mask file is missing."""
    big_h, big_w = 1000, 2000
    write_rgb(root / "selected_images" / "affordable" / "mug photo.jpg", big_h, big_w, seed=3)
    big = np.zeros((big_h, big_w, 3), dtype=np.uint8)
    big[200:600, 400:800] = 255
    _save_mask(root / "selected_masks" / "affordable" / "mug photo_mask.png", big)
    # nearest 2000 -> 1500: dst x in [300, 600) reads src x in [400, 800); same for y (by hand)
    big_expected = rect_mask((750, 1500), (150, 450, 300, 600))

    small_h, small_w = 48, 64
    write_rgb(root / "selected_images" / "spatial" / "shelf.png", small_h, small_w, seed=4)
    small = np.zeros((small_h, small_w, 3), dtype=np.uint8)
    small[0:10, 0:64] = (127, 127, 127)  # not foreground: no channel > 127
    small[10:20, 0:64] = (100, 50, 0)  # not foreground
    small[20:30, 5:25] = (0, 0, 200)  # foreground through the blue channel alone
    small[30:40, 40:60] = (255, 255, 255)
    small[40:41, 0:1] = (128, 0, 0)  # one pixel just above the threshold
    _save_mask(root / "selected_masks" / "spatial" / "shelf_mask.png", small)
    small_expected = rect_mask((small_h, small_w), (20, 30, 5, 25), (30, 40, 40, 60), (40, 41, 0, 1))

    write_rgb(root / "selected_images" / "counting" / "apples.jpg", 32, 32, seed=5)
    _save_mask(root / "selected_masks" / "counting" / "apples_mask.png", np.full((32, 32, 3), 255, np.uint8))
    write_rgb(root / "selected_images" / "reasoning" / "desk.jpg", 32, 32, seed=6)
    write_rgb(root / "selected_images" / "steerable" / "tool.jpg", 32, 32, seed=7)
    items = [
        {"image_filename": "mug photo.jpg", "mask_filename": "mug photo_mask.png", "category": "affordable",
         "user_input": "Point to the part of the mug you would hold."},
        {"image_filename": "shelf.png", "mask_filename": "shelf_mask.png", "category": "spatial",
         "user_input": "Point to the empty space left of the box."},
        {"image_filename": "apples.jpg", "mask_filename": "apples_mask.png", "category": "counting",
         "user_input": "Point to every apple.", "count": 3},
        {"image_filename": "desk.jpg", "category": "reasoning", "user_input": "Point to a pen."},
        {"image_filename": "tool.jpg", "mask_filename": "tool_mask.png", "category": "steerable",
         "user_input": "Point to the tip."},
    ]  # fmt: skip
    write_json(root / "data.json", items)
    return PointBenchFixture(root=root, big_mask_downsampled=big_expected, small_mask=small_expected)


def _save_mask(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
