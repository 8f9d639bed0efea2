"""Synthetic world on disk: generate_dataset / CLI -> files -> load_synthetic, and malformed meta.json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from part_point_ros.data.synthetic import SyntheticDataError, load_synthetic
from part_point_ros.errors import InputError
from part_point_ros.sim.generate import generate_dataset, main, parse_seeds
from part_point_ros.sim.render import render_scene

W, H = 96, 72
SEEDS = (3, 5)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, SEEDS, "val", width=W, height=H)
    return root


@pytest.fixture()
def scene_copy(dataset_root, tmp_path) -> Path:
    """A private copy of one generated scene, free to break."""
    dst = tmp_path / "root" / "val" / "scene_000003"
    shutil.copytree(dataset_root / "val" / "scene_000003", dst)
    return dst


def test_round_trip_matches_the_in_memory_scene(dataset_root):
    ds = load_synthetic(dataset_root, "val")
    scenes = {seed: render_scene(seed, width=W, height=H) for seed in SEEDS}
    expected = sum(len(s.queries) for s in scenes.values())
    assert len(ds) == expected and not ds.skipped
    assert "nothing skipped" in ds.report()
    seen_kinds = set()
    for sample in ds:
        scene = scenes[sample.meta["scene_seed"]]
        index = int(sample.sample_id.rsplit("/", 1)[1])
        query = scene.queries[index]
        assert sample.query == query.text
        assert sample.meta["dataset"] == "synthetic"
        assert (sample.meta["object"], sample.meta["part"]) == (query.object_type, query.part)
        assert sample.meta["query_kind"] == query.kind and sample.meta["ambiguous"] == query.ambiguous
        assert sample.meta["intrinsics"] == scene.intrinsics.to_dict()
        np.testing.assert_allclose(sample.meta["camera_pose"], scene.camera_pose, atol=1e-6)
        want = [scene.part(i).point_3d for i in query.part_ids]
        np.testing.assert_allclose(np.array(sample.meta["gt_points_3d"]), np.array(want), atol=1e-6)
        np.testing.assert_array_equal(sample.load_mask(), scene.query_mask(query))
        seen_kinds.add(query.kind)
    assert seen_kinds == {"direct", "reasoning"}
    first = ds[0]
    np.testing.assert_array_equal(first.load_image(), scenes[SEEDS[0]].rgb)


def test_depth_and_id_images_on_disk(dataset_root):
    scene = render_scene(SEEDS[1], width=W, height=H)
    d = dataset_root / "val" / "scene_000005"
    depth_png = np.asarray(Image.open(d / "depth.png"))
    assert depth_png.dtype == np.uint16
    np.testing.assert_array_equal(depth_png, scene.depth_mm)
    np.testing.assert_array_equal(np.load(d / "depth_m.npy", allow_pickle=False), scene.depth_m)
    np.testing.assert_array_equal(np.asarray(Image.open(d / "parts.png")), scene.part_ids)
    np.testing.assert_array_equal(np.asarray(Image.open(d / "objects.png")), scene.object_ids)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["seed"] == SEEDS[1] and meta["split"] == "val"
    assert [p["id"] for p in meta["parts"]] == [p.part_id for p in scene.parts]


def test_malformed_meta_names_file_and_field(scene_copy):
    meta_path = scene_copy / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["queries"][1]["part_ids"] = "handle"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SyntheticDataError) as err:
        load_synthetic(scene_copy.parent.parent, "val")
    assert str(meta_path) in str(err.value) and "queries[1].part_ids" in str(err.value)
    assert isinstance(err.value, InputError)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.pop("intrinsics"), "intrinsics"),
        (lambda m: m["intrinsics"].update(fx="wide"), "intrinsics.fx"),
        (lambda m: m.update(camera_pose=[[1, 0, 0], [0, 1, 0]]), "camera_pose"),
        (lambda m: m["parts"][0].update(point_3d=[1.0, 2.0]), "parts[0].point_3d"),
        (lambda m: m["queries"][0].update(kind="poetic"), "queries[0].kind"),
        (lambda m: m["queries"][0].update(part_ids=[999]), "queries[0].part_ids"),
        (lambda m: m.update(version=99), "version"),
    ],
)
def test_each_bad_field_is_named(scene_copy, edit, field):
    meta_path = scene_copy / "meta.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SyntheticDataError, match=re.escape(f"meta.json: field '{field}'")):
        load_synthetic(scene_copy.parent.parent, "val")


def test_invalid_json_names_the_file(scene_copy):
    (scene_copy / "meta.json").write_text("{not json")
    with pytest.raises(SyntheticDataError, match="meta.json: not valid JSON"):
        load_synthetic(scene_copy.parent.parent, "val")


def test_incomplete_scenes_are_skipped_and_reported(scene_copy):
    root = scene_copy.parent.parent
    (scene_copy.parent / "scene_000009").mkdir()  # an interrupted write: no meta.json
    broken = scene_copy.parent / "scene_000004"
    shutil.copytree(scene_copy, broken)
    (broken / "rgb.png").unlink()
    ds = load_synthetic(root, "val")
    n_queries = len(json.loads((scene_copy / "meta.json").read_text())["queries"])
    assert len(ds) == n_queries
    assert ds.skipped == {"scenes without meta.json (incomplete)": 1, "scenes missing rgb.png": 1}
    assert "skipped 2" in ds.report()


def test_missing_split_says_how_to_create_it(tmp_path):
    with pytest.raises(InputError, match="part_point_ros.sim.generate"):
        load_synthetic(tmp_path, "train")


def test_cli_writes_scenes_and_rejects_bad_seeds(tmp_path, capsys):
    assert (
        main(["--out", str(tmp_path), "--seeds", "7:9", "--split", "test", "--width", "64", "--height", "48"])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == ["scene_000007", "scene_000008"]
    assert len(load_synthetic(tmp_path, "test")) > 0
    assert main(["--out", str(tmp_path), "--seeds", "a:b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad seed spec") and "Traceback" not in err


def test_parse_seeds_forms():
    assert parse_seeds("0:3") == [0, 1, 2]
    assert parse_seeds("4") == [4]
    assert parse_seeds("1,5:7") == [1, 5, 6]
    with pytest.raises(InputError):
        parse_seeds("3:3")
    with pytest.raises(InputError):
        generate_dataset("/tmp/unused", [0], "../escape")


def test_twin_seeds_are_written_as_twin_scenes_with_their_plural_queries(tmp_path):
    """A twin seed (1,000,000+) on disk is ``render_twin_scene``'s scene: its ambiguous and plural
    queries, each with the union of every instance's mask, so that a head can learn "every instance"."""
    from part_point_ros.sim.render import render_twin_scene

    seed = 1_000_001
    generate_dataset(tmp_path, [seed], "train_twins", width=W, height=H)
    ds = load_synthetic(tmp_path, "train_twins")
    scene = render_twin_scene(seed, width=W, height=H)
    assert [s.query for s in ds] == [q.text for q in scene.queries if scene.query_mask(q).any()]
    plural = [s for s in ds if s.meta["query_kind"] == "plural"]
    assert plural, "a twin scene asks at least one plural query"
    for sample in plural:
        query = next(q for q in scene.queries if q.text == sample.query)
        masks = scene.instance_part_masks(query)
        assert len(masks) >= 2 and sample.meta["part_ids"] == list(query.part_ids)
        np.testing.assert_array_equal(sample.load_mask(), np.logical_or.reduce(masks))
    # one call may mix them: each seed gives its own kind of scene
    generate_dataset(tmp_path, [SEEDS[0], seed], "mixed", width=W, height=H)
    ordinary = render_scene(SEEDS[0], width=W, height=H)
    want = [q.text for s in (ordinary, scene) for q in s.queries if s.query_mask(q).any()]
    assert [s.query for s in load_synthetic(tmp_path, "mixed")] == want


def test_several_splits_in_order_with_a_cap_per_split(tmp_path):
    generate_dataset(tmp_path, [3, 5], "train", width=W, height=H)
    generate_dataset(tmp_path, [1_000_001], "train_twins", width=W, height=H)
    train = load_synthetic(tmp_path, "train", absent=True)
    twins = load_synthetic(tmp_path, "train_twins", absent=True)
    both = load_synthetic(tmp_path, ["train", "train_twins"], absent=True)
    assert [s.sample_id for s in both] == [s.sample_id for s in (*train, *twins)]
    assert both.name == "synthetic/train+train_twins"
    capped = load_synthetic(tmp_path, ["train", "train_twins"], absent=True, max_per_split=7)
    assert [s.sample_id for s in capped] == [s.sample_id for s in (*train.samples[:7], *twins.samples[:7])]
    for bad, words in (([], "split must be"), (["train", ""], "split must be")):
        with pytest.raises(InputError, match=words):
            load_synthetic(tmp_path, bad)
    with pytest.raises(InputError, match="max_per_split must be an int >= 1"):
        load_synthetic(tmp_path, "train", max_per_split=0)
    with pytest.raises(InputError, match="no synthetic split at .*missing"):
        load_synthetic(tmp_path, ["train", "missing"])
