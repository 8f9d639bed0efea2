"""load_dataset: one entry point that dispatches to the real loaders."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_data import write_instructpart, write_paco

from part_point_ros.data import DATASET_KINDS, DataError, PartDataset, load_dataset
from part_point_ros.errors import InputError


def test_kinds():
    assert DATASET_KINDS == ("paco_lvis", "instructpart", "pointbench", "synthetic")


def test_dispatches_to_the_loaders(tmp_path):
    paco = write_paco(tmp_path / "paco")
    ds = load_dataset("paco_lvis", annotation_json=paco.json_path, image_root=paco.image_root)
    assert isinstance(ds, PartDataset) and len(ds) == 4 and ds.name == "paco_lvis_test"
    tree = write_instructpart(tmp_path / "ip")
    ds = load_dataset("InstructPart", root=tree.root, split="train200")  # case-insensitive
    assert np.array_equal(ds[0].load_mask(), tree.masks["lab_07-drill-trigger"])


def test_unknown_kind_and_wrong_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset kind 'coco'; use one of paco_lvis, instructpart"):
        load_dataset("coco", root=tmp_path)
    with pytest.raises(DataError, match="load_dataset\\('pointbench'\\).*accepts: root, categories") as err:
        load_dataset("pointbench", path=tmp_path)
    assert isinstance(err.value, InputError) and "\n" not in str(err.value)


def test_synthetic_is_imported_lazily_with_its_own_signature(tmp_path):
    with pytest.raises(DataError, match="load_synthetic accepts: root, split"):
        load_dataset("synthetic", folder=tmp_path)
