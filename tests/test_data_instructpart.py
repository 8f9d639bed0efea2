"""InstructPart loader on a tiny tree in the release layout (0/1 masks, spaces, shared images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_data import write_instructpart, write_json

from part_point_ros.data import DataError
from part_point_ros.data.instructpart import (
    SKIP_MISSING_MASK,
    load_instructpart,
    skip_no_instruction,
)


@pytest.fixture()
def tree(tmp_path):
    return write_instructpart(tmp_path / "InstructPart")


def _stem(sample):
    return sample.sample_id.split("/")[3]


def test_masks_match_what_was_drawn_with_zero_one_values(tree):
    ds = load_instructpart(tree.root, "test")
    assert len(ds) == 4
    for sample in ds:
        mask = sample.load_mask()
        assert mask.dtype == bool and mask.any()
        assert np.array_equal(mask, tree.masks[_stem(sample)]), sample.sample_id
        assert sample.load_image().shape[:2] == mask.shape


def test_default_is_the_human_instruction_per_part(tree):
    ds = load_instructpart(tree.root)
    for sample in ds:
        assert sample.query == tree.instructions[_stem(sample)][0]
        assert sample.meta["instruction_id"] == 0 and sample.meta["instruction_kind"] == "human"
    assert dict(ds.skipped) == {SKIP_MISSING_MASK: 1}  # cup/rim has no mask file


def test_one_sample_per_instruction_when_asked(tree):
    ds = load_instructpart(tree.root, instruction_ids=None)
    assert len(ds) == 6 + 6 + 6 + 2  # hammer/handle carries only two instructions
    queries = [s.query for s in ds if _stem(s) == "kitchen_01-knife-blade"]
    assert queries == tree.instructions["kitchen_01-knife-blade"]
    picked = load_instructpart(tree.root, instruction_ids=(1, 4))
    assert len(picked) == 7 and picked.skipped[skip_no_instruction(4)] == 1


def test_spaces_become_underscores_and_one_image_in_two_entries(tree):
    ds = load_instructpart(tree.root)
    stems = {_stem(s): s for s in ds}
    scissors = stems["kitchen_01-pair_of_scissors-finger_hole"]
    assert (scissors.meta["object"], scissors.meta["part"]) == ("pair of scissors", "finger hole")
    from_kitchen = [s for s in ds if s.meta["image_name"] == "kitchen_01.jpg"]
    assert sorted(s.meta["entry_index"] for s in from_kitchen) == [0, 0, 1]
    assert len({s.sample_id for s in ds}) == len(ds)
    hammer = stems["garage 02-hammer-handle"]  # the base keeps its space; only object/part change
    assert hammer.image_path.name == "garage 02.jpg"  # plain image used when no per-part copy exists
    assert scissors.image_path.name == "kitchen_01-pair_of_scissors-finger_hole.jpg"


def test_train_split_layout(tree):
    ds = load_instructpart(tree.root, "train200")
    assert len(ds) == 1 and ds.name == "instructpart_train200"
    assert np.array_equal(ds[0].load_mask(), tree.masks["lab_07-drill-trigger"])


def test_bad_split_and_missing_folder(tree, tmp_path):
    with pytest.raises(DataError, match="train300.*test, train200"):
        load_instructpart(tree.root, "train300")
    with pytest.raises(DataError, match="train1800: folder not found"):
        load_instructpart(tree.root, "train1800")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d[1]["part_list"][0].pop("object"), "data_test.json: [1]['part_list'][0] has no 'object'"),
        (lambda d: d[0].pop("image_path"), "data_test.json: [0] has no 'image_path'"),
        (
            lambda d: d[2]["part_list"][0].update(instruction="hold it"),
            "data_test.json: [2]['part_list'][0]['instruction'] should be a list, got str",
        ),
    ],
)
def test_malformed_json_names_file_and_field(tree, edit, expected):
    path = tree.root / "test" / "data_test.json"
    data = json.loads(path.read_text())
    edit(data)
    write_json(path, data)
    with pytest.raises(DataError) as err:
        load_instructpart(tree.root)
    assert str(err.value) == expected
