"""Localization-head selection maths on hand-built maps, and the heads-file format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from part_point_ros.errors import CheckpointError
from part_point_ros.grounding.localization_heads import (
    HeadsFile,
    elbow_index,
    elbow_threshold,
    image_attention_mass,
    known_heads_name,
    load_heads,
    select_heads,
    spatial_entropy,
)
from part_point_ros.types import HeadRef


def blob_map(centres, size=12, radius=1):
    a = np.full((size, size), 1e-4)
    for r, c in centres:
        a[max(r - radius, 0) : r + radius + 1, max(c - radius, 0) : c + radius + 1] = 0.05
    return a / a.sum()


def test_single_blob_has_lower_entropy_than_scattered_blobs():
    one = spatial_entropy(blob_map([(5, 5)]))
    two = spatial_entropy(blob_map([(2, 2), (9, 9)]))
    four = spatial_entropy(blob_map([(2, 2), (2, 9), (9, 2), (9, 9)]))
    assert one == pytest.approx(0.0)
    assert two == pytest.approx(np.log(2))
    assert four == pytest.approx(np.log(4))
    assert one < two < four


def test_entropy_uses_8_connectivity_and_the_binarise_threshold():
    a = np.zeros((8, 8))
    a[2, 2] = a[3, 3] = 1.0  # diagonal neighbours: ONE component under 8-connectivity
    assert spatial_entropy(a) == pytest.approx(0.0)
    a[6, 6] = 1.0
    assert spatial_entropy(a) > 0.5
    assert spatial_entropy(np.full((5, 5), 0.04)) == float("inf")  # nothing above the mean
    faint = np.zeros((10, 10))
    faint[2, 2], faint[7, 7] = 1.0, 0.0105  # B at (7, 7) is ~4e-4 < 1e-3 after removing the mean
    assert spatial_entropy(faint) == pytest.approx(0.0)
    faint[7, 7] = 0.02  # now above the threshold: a second component
    assert spatial_entropy(faint) > 0.0


def test_elbow_of_known_curves():
    # flat then a sharp rise: the elbow is the last flat point
    values = [0.10, 0.11, 0.12, 0.13, 0.14, 0.15, 0.50, 0.90]
    assert elbow_index(values) == 5
    assert elbow_threshold(values) == pytest.approx(0.15)
    # order of the input does not matter (values are sorted ascending)
    assert elbow_threshold(values[::-1]) == pytest.approx(0.15)
    # exponential curve: elbow of y = exp(x) on 0..5 in scaled coordinates
    # analytically: max of t - (e^{5t} - 1) / (e^5 - 1) at t = ln((e^5 - 1) / 5) / 5 = 0.677
    idx = elbow_index(np.exp(np.linspace(0, 5, 101)))
    assert idx / 100 == pytest.approx(np.log((np.exp(5) - 1) / 5) / 5, abs=0.01)
    assert elbow_index([1.0, 1.0, 1.0]) == 0


def test_select_heads_ranks_by_frequency_among_high_mass_heads():
    heads = [HeadRef(2, h) for h in range(6)]
    # heads 4 and 5 look at the image a lot; the others hardly
    masses = np.tile([0.01, 0.011, 0.012, 0.013, 0.6, 0.7], (4, 1))
    entropies = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.2, 0.9],  # head 0-3 have low entropy but fail criterion 1
            [0.0, 0.0, 0.0, 0.0, 0.1, 0.8],
            [0.0, 0.0, 0.0, 0.0, 0.5, 0.3],
            [0.0, 0.0, 0.0, 0.0, 0.6, 0.5],
        ]
    )
    sel = select_heads(masses, entropies, heads, k=1, per_sample=1)
    assert sel.passing == [HeadRef(2, 4), HeadRef(2, 5)]
    assert sel.heads == [(HeadRef(2, 4), 0.5)]  # 2 of 4 samples; tie broken by lower mean entropy
    sel = select_heads(masses, entropies, heads, k=5, per_sample=10)
    assert [h for h, _ in sel.heads] == [HeadRef(2, 4), HeadRef(2, 5)]
    assert [f for _, f in sel.heads] == [1.0, 1.0]
    with pytest.raises(ValueError, match="n_samples"):
        select_heads(masses[:, :3], entropies, heads)


def test_image_attention_mass():
    attn = np.array([[0.1, 0.2, 0.3], [0.0, 0.0, 0.05]])
    assert image_attention_mass(attn) == pytest.approx([0.6, 0.05])


def test_shipped_heads_files_and_loader(tmp_path):
    llava = load_heads("llava-1.5-7b")
    assert llava.top() == [HeadRef(14, 24), HeadRef(14, 13)]
    assert "Kang" in llava.source and "select-heads" in llava.note
    qwen = load_heads("Qwen/Qwen2.5-VL-7B-Instruct")
    assert qwen.top(3) == [HeadRef(16, 1), HeadRef(18, 15), HeadRef(19, 23)]
    assert qwen.heads[0][1] == pytest.approx(0.523) and qwen.backbone["num_kv_heads"] == 4
    assert known_heads_name("llava-hf/llava-1.5-7b-hf") == "llava-1.5-7b"
    assert known_heads_name("/models/tiny") is None

    written = HeadsFile(
        backbone={"name": "x"}, heads=[(HeadRef(3, 1), 0.4)], k=1, calibration={"n_samples": 5, "source": "s"}
    ).save(tmp_path / "h.json")
    again = load_heads(written)
    assert again.top() == [HeadRef(3, 1)] and again.calibration["n_samples"] == 5

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"heads": [["a", 1]]}))
    with pytest.raises(CheckpointError, match="not \\[layer, head"):
        load_heads(bad)
    with pytest.raises(CheckpointError, match="select-heads"):
        load_heads(tmp_path / "missing.json")


# POP's published lists (seantsai1105/POP, model/vlm_modules/vlm_selected_heads_files/), as shipped
POP_INTERNVL3_8B = [(14, 8, 0.574), (19, 20, 0.549), (17, 24, 0.513), (12, 24, 0.471), (11, 24, 0.416)]
POP_MOLMO_7B_D_HIGH = [(19, 23, 0.396), (19, 17, 0.343), (19, 22, 0.33), (16, 1, 0.317), (14, 15, 0.29)]
POP_MOLMO_7B_D_LOW = [(16, 1, 0.455), (19, 15, 0.449), (19, 23, 0.445), (19, 17, 0.421), (19, 22, 0.418)]


@pytest.mark.parametrize(
    ("backbone", "name", "family", "expected"),
    [
        ("OpenGVLab/InternVL3-8B-hf", "internvl3-8b", "internvl", POP_INTERNVL3_8B),
        ("OpenGVLab/InternVL3-8B", "internvl3-8b", "internvl", POP_INTERNVL3_8B),
        ("allenai/Molmo-7B-D-0924", "molmo-7b-d", "molmo", POP_MOLMO_7B_D_HIGH),
        ("molmo-7b-d-low-res", "molmo-7b-d-low-res", "molmo", POP_MOLMO_7B_D_LOW),
    ],
)
def test_pop_heads_files_by_hub_id(backbone, name, family, expected):
    assert known_heads_name(backbone) == name
    hf = load_heads(backbone)
    assert [(h.layer, h.head, f) for h, f in hf.heads[:5]] == expected
    assert len(hf.heads) == hf.k == 10
    assert hf.backbone["family"] == family
    assert (hf.backbone["num_layers"], hf.backbone["num_heads"], hf.backbone["num_kv_heads"]) == (28, 28, 4)
    assert all(0 <= h.layer < 28 and 0 <= h.head < 28 for h in hf.top())
    assert "seantsai1105/POP" in hf.source and "vlm_selected_heads_files" in hf.source
    frequencies = [f for _, f in hf.heads]
    assert frequencies == sorted(frequencies, reverse=True)  # ranked as published


@pytest.mark.parametrize(
    "backbone",
    [
        "allenai/Molmo2-8B",  # Molmo2 is not Molmo-7B-D: POP published no heads for it
        "OpenGVLab/InternVL3_5-8B-HF",
        "OpenGVLab/InternVL3-38B-hf",
        "OpenGVLab/InternVL3-2B-hf",
        "allenai/Molmo-7B-O-0924",
    ],
)
def test_no_heads_file_for_other_checkpoints_of_the_families(backbone):
    assert known_heads_name(backbone) is None
    with pytest.raises(CheckpointError, match="select-heads"):
        load_heads(backbone)
