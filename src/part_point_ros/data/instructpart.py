"""InstructPart loader: task instructions paired with part masks.

Layout (the public release)::

    root/test/{images, masks, data_test.json}
    root/train/train{200,600,1200,1800}/{images, masks, data_train.json}

``data_*.json`` is a list of ``{image_path, part_list: [{object, part, affordance, action,
instruction: [...]}]}``; one image can appear in several entries. The mask of a part is
``masks/<base>-<object>-<part>.png`` (spaces in object/part turned into ``_``), 8-bit with values
0 and 1, so foreground is ``> 0`` (a ``> 127`` threshold finds nothing). Images are stored per
part as ``images/<base>-<object>-<part>.jpg``; the plain ``images/<image_path>`` is used if that
file is absent. The ``instruction`` list holds six kinds (index: kind), see ``INSTRUCTION_KINDS``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from part_point_ros.data.base import PartDataset, Sample
from part_point_ros.data.errors import DataError, expect, field, read_json
from part_point_ros.data.masks import read_mask, read_rgb

SPLITS = ("test", "train200", "train600", "train1200", "train1800")
INSTRUCTION_KINDS = (
    "human",  # 0: human-written task instruction (the "Long_instruction" of seed 000 Fig. 5)
    "gpt4_rewritten",  # 1
    "part_of_object_sentence",  # 2
    "part_of_object_affordance_sentence",  # 3
    "part_of_object",  # 4
    "part_of_object_affordance",  # 5
)
MASK_THRESHOLD = 0  # masks hold 0 and 1

SKIP_MISSING_MASK = "parts whose mask file is missing"
SKIP_MISSING_IMAGE = "parts whose image file is missing"
SKIP_EMPTY_INSTRUCTION = "empty instructions"


def skip_no_instruction(index: int) -> str:
    return f"parts without instruction [{index}]"


def load_instructpart(
    root: str | Path,
    split: str = "test",
    *,
    instruction_ids: Sequence[int] | None = (0,),
    check_files: bool = True,
) -> PartDataset:
    """Load an InstructPart split: one sample per (entry, part, selected instruction).

    ``instruction_ids`` picks entries of each part's ``instruction`` list (default: the
    human-written task instruction only, which gives the paper's 600 test / 1,800 train samples);
    ``None`` takes every instruction, one sample each. With ``check_files`` parts whose image or
    mask file is missing are skipped and reported.
    """
    split_dir, json_path = _split_paths(Path(root), split)
    entries = expect(read_json(json_path), list, file=json_path, where="the top level")
    skipped: Counter[str] = Counter()
    samples: list[Sample] = []
    for ei, entry in enumerate(entries):
        where = f"[{ei}]"
        entry = expect(entry, dict, file=json_path, where=where)
        image_path = field(entry, "image_path", str, file=json_path, where=where)
        part_list = field(entry, "part_list", list, file=json_path, where=where)
        base = Path(image_path).stem
        for pi, item in enumerate(part_list):
            pwhere = f"{where}['part_list'][{pi}]"
            item = expect(item, dict, file=json_path, where=pwhere)
            object_name = field(item, "object", str, file=json_path, where=pwhere)
            part_name = field(item, "part", str, file=json_path, where=pwhere)
            instructions = field(item, "instruction", list, file=json_path, where=pwhere)
            for ii, text in enumerate(instructions):
                expect(text, str, file=json_path, where=f"{pwhere}['instruction'][{ii}]")
            stem = f"{base}-{object_name.replace(' ', '_')}-{part_name.replace(' ', '_')}"
            mask_path = split_dir / "masks" / f"{stem}.png"
            image_file = _image_file(split_dir, image_path, stem)
            chosen = range(len(instructions)) if instruction_ids is None else instruction_ids
            if check_files and not mask_path.is_file():
                skipped[SKIP_MISSING_MASK] += 1
                continue
            if check_files and not image_file.is_file():
                skipped[SKIP_MISSING_IMAGE] += 1
                continue
            for ii in chosen:
                if not 0 <= ii < len(instructions):
                    skipped[skip_no_instruction(ii)] += 1
                    continue
                query = instructions[ii].strip()
                if not query:
                    skipped[SKIP_EMPTY_INSTRUCTION] += 1
                    continue
                samples.append(
                    Sample(
                        sample_id=f"instructpart/{split}/{ei}/{stem}/{ii}",
                        image_path=image_file,
                        query=query,
                        load_image=partial(read_rgb, image_file),
                        load_mask=partial(read_mask, mask_path, threshold=MASK_THRESHOLD),
                        meta={
                            "dataset": "instructpart",
                            "split": split,
                            "object": object_name,
                            "part": part_name,
                            "affordance": item.get("affordance"),
                            "action": item.get("action"),
                            "instruction_id": ii,
                            "instruction_kind": _kind(ii),
                            "entry_index": ei,
                            "image_name": image_path,
                            "mask_path": mask_path,
                        },
                    )
                )
    return PartDataset(name=f"instructpart_{split}", samples=samples, skipped=skipped, source=str(json_path))


def _split_paths(root: Path, split: str) -> tuple[Path, Path]:
    if split == "test":
        split_dir, json_name = root / "test", "data_test.json"
    elif split in SPLITS:
        split_dir, json_name = root / "train" / split, "data_train.json"
    else:
        raise DataError(f"unknown InstructPart split '{split}'; use one of {', '.join(SPLITS)}")
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder not found; root must hold test/ and train/train200/ ...")
    return split_dir, split_dir / json_name


def _image_file(split_dir: Path, image_path: str, stem: str) -> Path:
    """The per-part copy ``images/<stem><ext>`` if present, else ``images/<image_path>``."""
    per_part = split_dir / "images" / f"{stem}{Path(image_path).suffix or '.jpg'}"
    if per_part.is_file():
        return per_part
    return split_dir / "images" / image_path


def _kind(index: int) -> str | None:
    return INSTRUCTION_KINDS[index] if index < len(INSTRUCTION_KINDS) else None
