"""Point-Bench loader on a tiny tree: downsampling, any-channel threshold, what is skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_data import write_json, write_pointbench

from part_point_ros.data import DataError
from part_point_ros.data.pointbench import (
    SKIP_MISSING_MASK,
    SKIP_NO_MASK,
    load_pointbench,
    skip_category,
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_pointbench(tmp_path_factory.mktemp("pointbench"))


def test_big_image_and_mask_are_downsampled_together(bench):
    ds = load_pointbench(bench.root)
    big = next(s for s in ds if s.meta["category"] == "affordable")
    assert big.image_path.name == "mug photo.jpg"
    assert big.meta["original_size"] == (1000, 2000) and big.meta["size"] == (750, 1500)
    assert big.meta["scale"] == pytest.approx(0.75)
    image, mask = big.load_image(), big.load_mask()
    assert image.shape == (750, 1500, 3) and image.dtype == np.uint8
    assert np.array_equal(mask, bench.big_mask_downsampled)


def test_small_mask_uses_any_channel_above_127(bench):
    small = next(s for s in load_pointbench(bench.root) if s.meta["category"] == "spatial")
    assert small.meta["scale"] == 1.0 and small.load_image().shape == (48, 64, 3)
    assert np.array_equal(small.load_mask(), bench.small_mask)
    assert small.query == "Point to the empty space left of the box."


def test_skips_counting_items_without_mask_and_missing_files(bench):
    ds = load_pointbench(bench.root)
    assert len(ds) == 2
    assert dict(ds.skipped) == {skip_category("counting"): 1, SKIP_NO_MASK: 1, SKIP_MISSING_MASK: 1}
    with_counting = load_pointbench(bench.root, categories=("counting", "spatial"))
    assert sorted(s.meta["category"] for s in with_counting) == ["counting", "spatial"]
    assert with_counting.skipped[skip_category("affordable")] == 1


def test_max_side_none_keeps_the_original_size(bench):
    big = next(s for s in load_pointbench(bench.root, max_side=None) if s.meta["category"] == "affordable")
    mask = big.load_mask()
    assert mask.shape == (1000, 2000) and mask[200:600, 400:800].all() and mask.sum() == 400 * 400


def test_malformed_items_name_file_and_field(bench, tmp_path):
    data = json.loads((bench.root / "data.json").read_text())
    data[1].pop("user_input")
    write_json(tmp_path / "data.json", data)
    with pytest.raises(DataError) as err:
        load_pointbench(tmp_path)
    assert str(err.value) == "data.json: [1] has no 'user_input'"
    write_json(tmp_path / "data.json", {"items": []})
    with pytest.raises(DataError, match=r"data.json: the top level should be a list, got dict"):
        load_pointbench(tmp_path)
    with pytest.raises(DataError, match="data.json: file not found"):
        load_pointbench(tmp_path / "elsewhere")
