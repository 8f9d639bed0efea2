"""PACO-LVIS loader on a tiny json in the real format (compressed/uncompressed RLE, polygons)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from fixtures_data import write_json, write_paco

from part_point_ros.data import DataError
from part_point_ros.data.paco import (
    SKIP_EMPTY_SEGMENTATION,
    SKIP_MISSING_IMAGE,
    SKIP_OBJECT_ONLY,
    load_paco_lvis,
    rle_string_counts,
    skip_small,
)
from part_point_ros.data.prompts import paco_query, readable_name


@pytest.fixture()
def paco(tmp_path):
    return write_paco(tmp_path)


def _by_key(ds):
    return {(s.meta["image_id"], s.meta["category_id"]): s for s in ds}


def test_merged_masks_match_what_was_drawn(paco):
    ds = load_paco_lvis(paco.json_path, paco.image_root)
    samples = _by_key(ds)
    assert set(samples) == set(paco.masks)
    for key, sample in samples.items():
        mask = sample.load_mask()
        assert mask.dtype == bool and mask.shape == paco.sizes[key[0]]
        assert np.array_equal(mask, paco.masks[key]), key
    assert samples[(1, 2000)].meta["num_instances"] == 2
    assert samples[(2, 2002)].meta["num_instances"] == 1  # the empty instance is not counted


def test_skip_reasons_and_counts(paco):
    ds = load_paco_lvis(paco.json_path, paco.image_root)
    assert len(ds) == 4
    assert dict(ds.skipped) == {
        SKIP_OBJECT_ONLY: 1,
        SKIP_EMPTY_SEGMENTATION: 3,
        skip_small(0.001): 1,
        SKIP_MISSING_IMAGE: 1,
    }
    assert "< 0.1% of the image" in ds.report() and "object-only" in ds.report()


def test_merge_happens_before_the_area_filter(paco):
    # mug:base is two 3-px instances: each 0.0625% of 4800 px, merged 0.125% -> kept
    sample = _by_key(load_paco_lvis(paco.json_path, paco.image_root))[(1, 2004)]
    assert sample.meta["area_frac"] == pytest.approx(6 / 4800)
    stricter = load_paco_lvis(paco.json_path, paco.image_root, min_area_frac=0.002)
    assert (1, 2004) not in _by_key(stricter) and stricter.skipped[skip_small(0.002)] == 2
    everything = load_paco_lvis(paco.json_path, paco.image_root, min_area_frac=0.0)
    assert (1, 2003) in _by_key(everything) and _by_key(everything)[(1, 2003)].load_mask().sum() == 2


def test_queries_and_meta(paco):
    samples = _by_key(load_paco_lvis(paco.json_path, paco.image_root))
    assert samples[(1, 2000)].query == "Point to the handle of the mug."
    assert samples[(2, 2002)].query == "Point to the inner body of the glass."
    meta = samples[(2, 2002)].meta
    assert (meta["object"], meta["part"], meta["split"]) == ("glass_(drink_container)", "inner_body", "test")
    assert samples[(2, 2002)].image_path == paco.image_root / "val2017" / "000000000002.jpg"
    assert samples[(1, 2000)].sample_id == "paco_lvis/test/1/2000"


def test_prompt_helpers():
    assert readable_name("glass_(drink_container)") == "glass"
    assert readable_name("inner_body") == "inner body"
    assert paco_query("car_(automobile)", "side_view_mirror") == "Point to the side view mirror of the car."


def test_images_load_lazily_and_samples_pickle(paco):
    ds = load_paco_lvis(paco.json_path, paco.image_root)
    image = ds[0].load_image()
    assert image.shape == (60, 80, 3) and image.dtype == np.uint8
    clone = pickle.loads(pickle.dumps(ds[0]))  # DataLoader workers pickle samples
    assert np.array_equal(clone.load_mask(), ds[0].load_mask())


def test_folder_and_split_resolve_the_file(paco):
    ds = load_paco_lvis(paco.json_path.parent, paco.image_root, split="test")
    assert len(ds) == 4 and ds.name == "paco_lvis_test"
    with pytest.raises(DataError, match="split"):
        load_paco_lvis(paco.json_path.parent, paco.image_root)


def test_wrong_image_root_raises_one_line(paco, tmp_path):
    with pytest.raises(DataError, match="COCO-2017 root") as err:
        load_paco_lvis(paco.json_path, tmp_path / "nowhere")
    assert "\n" not in str(err.value)


def test_image_size_mismatch_names_the_file(paco):
    data = json.loads(paco.json_path.read_text())
    data["images"][0]["height"] = 61
    for ann in data["annotations"]:  # keep the json self-consistent except for the image itself
        if ann["image_id"] == 1 and isinstance(ann["segmentation"], dict):
            ann["segmentation"] = [[0, 0, 10, 0, 10, 10, 0, 10]]
    write_json(paco.json_path, data)
    ds = load_paco_lvis(paco.json_path, paco.image_root)
    with pytest.raises(DataError, match="000000000001.jpg.*60x80.*61x80"):
        _by_key(ds)[(1, 2000)].load_image()


def _corrupt(paco, edit):
    original = paco.json_path.read_text()
    data = json.loads(original)
    edit(data)
    write_json(paco.json_path, data)
    try:
        with pytest.raises(DataError) as err:
            load_paco_lvis(paco.json_path, paco.image_root)
    finally:
        paco.json_path.write_text(original)
    message = str(err.value)
    assert "\n" not in message and message.startswith("paco_lvis_v1_test.json: ")
    return message


def test_malformed_files_name_file_and_field(paco):
    assert _corrupt(paco, lambda d: d["annotations"][3].pop("category_id")) == (
        "paco_lvis_v1_test.json: annotations[3] has no 'category_id'"
    )
    assert "annotations[0]['image_id'] = 99 is not in 'images'" in _corrupt(
        paco, lambda d: d["annotations"][0].update(image_id=99)
    )
    assert "categories[2]['name'] should be a string" in _corrupt(
        paco, lambda d: d["categories"][2].update(name=7)
    )
    assert "images[1] has no 'height'" in _corrupt(paco, lambda d: d["images"][1].pop("height"))
    assert "annotations[0]['segmentation']['size']" in _corrupt(
        paco, lambda d: d["annotations"][0]["segmentation"].update(size=[10, 10])
    )
    assert "annotations[3]['segmentation']['counts'] sums to" in _corrupt(
        paco, lambda d: d["annotations"][3]["segmentation"]["counts"].append(5)
    )
    assert "annotations[0]['segmentation']['counts'] covers" in _corrupt(
        paco, lambda d: d["annotations"][0]["segmentation"].update(counts="0>")
    )
    assert "annotations[2]['segmentation'][0] has an odd number" in _corrupt(
        paco, lambda d: d["annotations"][2]["segmentation"][0].append(3)
    )
    assert "the top level has no 'annotations'" in _corrupt(paco, lambda d: d.pop("annotations"))


def test_invalid_json_and_missing_file(paco, tmp_path):
    paco.json_path.write_text('{"images": [')
    with pytest.raises(DataError, match=r"paco_lvis_v1_test.json: not valid JSON \(line 1"):
        load_paco_lvis(paco.json_path, paco.image_root)
    with pytest.raises(DataError, match="nope.json: file not found"):
        load_paco_lvis(tmp_path / "nope.json", paco.image_root)


def test_rle_string_decoder_matches_pycocotools():
    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if trial % 4 == 0:  # long runs exercise multi-chunk and negative deltas
            mask = np.zeros((h, w), np.uint8)
            mask[rng.integers(0, h) :, rng.integers(0, w) :] = 1
        runs = rle_string_counts(mask_utils.encode(np.asfortranarray(mask))["counts"])
        values = np.arange(runs.size) % 2  # runs alternate background, foreground
        assert np.array_equal(np.repeat(values, runs), mask.ravel(order="F")), trial
    with pytest.raises(ValueError):
        rle_string_counts(b"0\x01")
