"""Peak memory: what a2p loads (no lm_head, decoder to the head's layer, vision tower cut) vs the whole model.

Measured by ``part_point_ros.cli.bench.peak_memory_mb``: the peak-RSS growth of a process of its own per
load, every kept weight read once. On a small fp32 config whose embeddings and head are most of its
weights, as in a real LLaVA with its 32k vocabulary.
"""

from __future__ import annotations

import pytest

from part_point_ros.backbones.tiny import build_tiny_llava
from part_point_ros.cli.bench import format_memory_report, memory_variants, peak_memory_mb


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    path = build_tiny_llava(
        tmp_path_factory.mktemp("memory"),
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        head_dim=64,  # hidden 256
        vocab_size=32000,  # embeddings and lm_head: 31 MB each in fp32
        init_std=None,
    )
    loads = {"whole": None, "a2p": {"max_layer": 0, "lm_head": False}}
    return peak_memory_mb(str(path), loads, head_layer=0, dtype="float32")


@pytest.mark.slow  # a fresh process per load
def test_a2p_load_peaks_lower_than_the_whole_model(measured):
    whole, a2p = measured["whole"], measured["a2p"]
    # the measure sees torch's memory: the whole model's peak holds at least all of its weights
    assert whole["load_mb"] >= 0.95 * whole["weights_mb"], whole
    assert a2p["weights_mb"] < 0.6 * whole["weights_mb"], (a2p, whole)  # the head and 3 of 4 layers
    assert a2p["load_mb"] / whole["load_mb"] < 0.85, (a2p, whole)
    # what is not kept is never allocated either: the peak drops by (nearly) all the weights left out
    saved = whole["weights_mb"] - a2p["weights_mb"]
    assert whole["load_mb"] - a2p["load_mb"] > 0.8 * saved, (a2p, whole, saved)


def test_memory_table_formats_every_variant():
    rows = {
        key: {"label": label, "weights_mb": 10.0, "load_mb": 20.0 / (i + 1), "over_whole": 1.0 / (i + 1)}
        for i, (key, (label, _)) in enumerate(memory_variants(6).items())
    }
    report = {"backbone": "b", "dtype": "bfloat16", "head_layer": 6, "measure": "m", "rows": rows}
    table = format_memory_report(report)
    assert "what a2p loads / whole model: 0.25x (target <= 0.70x)" in table
    assert all(row["label"] in table for row in rows.values())
    assert memory_variants(6)["a2p"][1] == {"max_layer": 6, "lm_head": False}
