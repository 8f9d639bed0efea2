"""Support-set store of POP: round trip on disk, one-line refusals, atomic writes, corrupt files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pop_helpers import build_tiny_dinov3, texture

from part_point_ros.errors import CheckpointError, InputError
from part_point_ros.grounding import supports as supports_module
from part_point_ros.grounding.features import DinoV3Extractor
from part_point_ros.grounding.supports import SupportStore, check_name, default_root, point_cell


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    path = build_tiny_dinov3(tmp_path_factory.mktemp("m") / "tiny-dinov3", seed=0, hidden=32, layers=1)
    return DinoV3Extractor.from_pretrained(str(path), long_side=64)


@pytest.fixture(scope="module")
def other_extractor(tmp_path_factory):
    path = build_tiny_dinov3(tmp_path_factory.mktemp("m") / "other-dinov3", seed=1, hidden=32, layers=1)
    return DinoV3Extractor.from_pretrained(str(path), long_side=64)


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text, text
    return text


def test_round_trip(tmp_path, extractor):
    store = SupportStore(tmp_path / "supports")
    assert store.list() == []
    first, second = texture(48, 80, seed=1), texture(60, 40, seed=2)
    store.teach("mug_handle", first, (70.0, 10.5), extractor, image_path="/data/mug1.png")
    taught = store.teach("mug_handle", second, (3, 59), extractor)
    assert len(taught) == 2
    assert store.list() == ["mug_handle"]
    loaded = store.load("mug_handle", extractor)
    assert loaded.name == "mug_handle" and len(loaded) == 2
    assert loaded.extractor == extractor.describe()
    for stored, image in zip(loaded.supports, (first, second), strict=True):
        fresh = extractor.extract(image)
        np.testing.assert_allclose(stored.features, fresh.features, atol=1e-6)
        assert stored.grid == fresh.grid
        assert stored.grid.orig_size == (image.shape[1], image.shape[0])
    assert loaded.supports[0].point == (70.0, 10.5)
    assert loaded.supports[0].image_path == "/data/mug1.png"
    assert loaded.supports[1].image_path is None
    assert loaded.supports[0].image_sha256 != loaded.supports[1].image_sha256
    # 64 px long side: the 80x48 image becomes 64x32 px, 2x4 cells; (70, 10.5) -> (56, 7) px: cell (0, 3)
    assert (loaded.supports[0].grid.rows, loaded.supports[0].grid.cols) == (2, 4)
    assert loaded.supports[0].cell == (0, 3)
    meta = json.loads((tmp_path / "supports" / "mug_handle.json").read_text())
    assert meta["supports"][1]["point"] == [3.0, 59.0]
    assert meta["supports"][1]["image_size"] == [40, 60]
    assert meta["extractor"]["key"] == extractor.key
    assert meta["created"] and meta["updated"]
    leftovers = [p.name for p in (tmp_path / "supports").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_delete_and_unknown_names(tmp_path, extractor):
    store = SupportStore(tmp_path)
    store.teach("b_set", texture(32, 32), (5, 5), extractor)
    store.teach("a_set", texture(32, 32), (5, 5), extractor)
    assert store.list() == ["a_set", "b_set"]
    with pytest.raises(InputError) as err:
        store.load("c_set")
    assert "a_set, b_set" in one_line(err)
    store.delete("a_set")
    assert store.list() == ["b_set"]
    assert not (tmp_path / "a_set.safetensors").exists()
    with pytest.raises(InputError) as err:
        store.delete("a_set")
    assert "b_set" in one_line(err)
    with pytest.raises(InputError) as err:
        SupportStore(tmp_path / "empty").load("x")
    assert "no set is stored yet" in one_line(err)


@pytest.mark.parametrize(
    "name", ["", "../up", "a/b", ".hidden", "x" * 65, "two  spaces", " lead", "trail ", "naïve", 3, None]
)
def test_bad_names(tmp_path, extractor, name):
    store = SupportStore(tmp_path)
    with pytest.raises(InputError) as err:
        store.teach(name, texture(32, 32), (1, 1), extractor)
    assert "support-set name" in one_line(err)
    with pytest.raises(InputError):
        store.load(name)
    assert list(tmp_path.iterdir()) == []


def test_good_names():
    for name in (
        "a",
        "mug_handle",
        "Kettle-spout.v2",
        "9" * 64,
        "drill grip",
        "the handle of the mug",
        "the drawer's knob",
    ):
        assert check_name(name) == name


@pytest.mark.parametrize(
    "point", [(40, 0), (0, 32), (-0.5, 3), (3, -1), (float("nan"), 1), (1, float("inf"))]
)
def test_point_outside_the_image(tmp_path, extractor, point):
    store = SupportStore(tmp_path)
    with pytest.raises(InputError) as err:
        store.teach("s", texture(32, 40), point, extractor)  # 40 wide, 32 high
    assert "outside the 40x32 image" in one_line(err)
    assert store.list() == []


def test_bad_point_and_image(tmp_path, extractor):
    store = SupportStore(tmp_path)
    with pytest.raises(InputError) as err:
        store.teach("s", texture(32, 40), "middle", extractor)
    one_line(err)
    with pytest.raises(InputError) as err:
        store.teach("s", texture(32, 40).astype(np.float32), (1, 1), extractor)
    one_line(err)


def test_extractor_mismatch(tmp_path, extractor, other_extractor):
    assert extractor.key != other_extractor.key
    store = SupportStore(tmp_path)
    store.teach("s", texture(32, 32), (5, 5), extractor)
    with pytest.raises(InputError) as err:
        store.teach("s", texture(32, 32), (5, 5), other_extractor)
    assert extractor.key in one_line(err) and other_extractor.key in str(err.value)
    with pytest.raises(InputError) as err:
        store.load("s", other_extractor)
    one_line(err)
    assert len(store.load("s")) == 1  # without an extractor, no check; the refused teach wrote nothing


def _corrupt_json(root):
    (root / "s.json").write_text("{not json")


def _truncate_tensors(root):
    data = (root / "s.safetensors").read_bytes()
    (root / "s.safetensors").write_bytes(data[: len(data) // 2])


def _remove_tensors(root):
    (root / "s.safetensors").unlink()


def _wrong_grid(root):
    meta = json.loads((root / "s.json").read_text())
    meta["supports"][0]["grid"]["rows"] += 1
    (root / "s.json").write_text(json.dumps(meta))


def _missing_support(root):
    meta = json.loads((root / "s.json").read_text())
    meta["supports"].append(meta["supports"][0])  # a second entry without its tensor
    (root / "s.json").write_text(json.dumps(meta))


def _no_extractor(root):
    meta = json.loads((root / "s.json").read_text())
    del meta["extractor"]
    (root / "s.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage",
    [_corrupt_json, _truncate_tensors, _remove_tensors, _wrong_grid, _missing_support, _no_extractor],
)
def test_corrupt_files(tmp_path, extractor, damage):
    store = SupportStore(tmp_path)
    store.teach("s", texture(32, 32), (5, 5), extractor)
    damage(tmp_path)
    with pytest.raises(CheckpointError) as err:
        store.load("s")
    assert "corrupt" in one_line(err)
    with pytest.raises(CheckpointError):  # teaching onto a corrupt set refuses too, it does not overwrite
        store.teach("s", texture(32, 32), (5, 5), extractor)


def test_crash_between_the_two_writes_keeps_the_old_set(tmp_path, extractor, monkeypatch):
    store = SupportStore(tmp_path)
    store.teach("s", texture(32, 32, seed=1), (5, 5), extractor)
    real_replace = supports_module.os.replace
    calls = []

    def crash_on_json(src, dst):
        calls.append(str(dst))
        if str(dst).endswith(".json"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(supports_module.os, "replace", crash_on_json)
    with pytest.raises(OSError):
        store.teach("s", texture(32, 32, seed=2), (6, 6), extractor)
    monkeypatch.undo()
    assert calls[0].endswith(".safetensors") and calls[1].endswith(".json")  # tensors first
    kept = store.load("s")  # the new tensors file holds the old support too
    assert len(kept) == 1 and kept.supports[0].point == (5.0, 5.0)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert len(store.teach("s", texture(32, 32, seed=3), (7, 7), extractor)) == 2


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PART_POINT_SUPPORTS", str(tmp_path / "mine"))
    assert default_root() == tmp_path / "mine"
    assert SupportStore().root == tmp_path / "mine"
    monkeypatch.delenv("PART_POINT_SUPPORTS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "part_point_ros" / "supports"


def test_point_cell_is_the_cell_containing_the_point(extractor):
    grid = extractor.grid_for(80, 60)  # -> 64 x 48 px, 3 x 4 cells of 16 px; scale 0.8
    assert (grid.rows, grid.cols) == (3, 4)
    assert point_cell(grid, 0, 0) == (0, 0)
    assert point_cell(grid, 19.9, 19.9) == (0, 0)  # 19.9 * 0.8 = 15.92 px: still the first cell
    assert point_cell(grid, 20.1, 20.1) == (1, 1)
    assert point_cell(grid, 79.99, 59.99) == (2, 3)
