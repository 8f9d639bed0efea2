"""``part-point select-heads`` on a small Point-Bench-format folder and ``part-point bench``.

Run in-process through ``main(argv)`` (the console script's own function; the subprocess path is
covered by test_cli_point.py) to avoid two more transformers imports.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from part_point_ros.cli.bench import format_report
from part_point_ros.cli.main import main
from part_point_ros.grounding.localization_heads import load_heads


@pytest.fixture
def pointbench_root(tmp_path):
    rng = np.random.default_rng(3)
    items = []
    for i, query in enumerate(["the handle of the mug", "the blade of the knife", "the lid"]):
        (tmp_path / "selected_images" / "affordable").mkdir(parents=True, exist_ok=True)
        (tmp_path / "selected_masks" / "affordable").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(tmp_path / f"selected_images/affordable/im {i}.png"),
            rng.integers(0, 256, (50, 70, 3), np.uint8),
        )
        mask = np.zeros((50, 70), np.uint8)
        mask[10:20, 10:30] = 255
        cv2.imwrite(str(tmp_path / f"selected_masks/affordable/im {i}_mask.png"), mask)
        items.append(
            {"image_filename": f"im {i}.png", "mask_filename": f"im {i}_mask.png", "category": "affordable",
             "user_input": query}
        )  # fmt: skip
    (tmp_path / "data.json").write_text(json.dumps(items))
    return tmp_path


def test_select_heads_writes_a_valid_file(tiny_llava_dir, pointbench_root, tmp_path, capsys):
    out = tmp_path / "heads.json"
    code = main(
        ["select-heads", "--backbone", str(tiny_llava_dir), "--data", f"pointbench:{pointbench_root}",
         "--k", "3", "--per-sample", "2", "--out", str(out)]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "pointbench: 3 samples" in captured.err and f"wrote {out}" in captured.out
    data = json.loads(out.read_text())
    assert set(data) >= {"backbone", "k", "heads", "calibration", "criteria"}
    assert data["calibration"]["n_samples"] == 3 and data["k"] == len(data["heads"]) <= 3
    assert all(len(h) == 3 and h[0] >= 2 for h in data["heads"])  # [layer, head, frequency], layers >= 2
    assert [(r.layer, r.head) for r in load_heads(out).top()] == [(h[0], h[1]) for h in data["heads"]]


def test_select_heads_bad_data_spec(tiny_llava_dir, tmp_path, capsys):
    code = main(
        ["select-heads", "--backbone", str(tiny_llava_dir), "--data", "nosuchkind:/x", "--out", "h.json"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "unknown dataset kind" in err[0]
    code = main(["select-heads", "--backbone", "b", "--data", f"pointbench:{tmp_path}", "--out", "h.json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "data.json" in err[0]


def test_bench_json(capsys):
    code = main(["bench", "--reps", "1", "--warmup", "0", "--max-new-tokens", "3", "--json", "--no-memory"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    ms = report["latency_ms"]
    rows = ("_5_queries", "_5_queries_one_by_one", "_5_queries_no_reuse", "_same_frame")
    multi_query = {f"{column}{row}" for column in ("capture", "a2p", "attention") for row in rows}
    assert set(ms) == {"head_only", "head_only_5_queries", "capture_truncated", "capture_full", "a2p",
                       "attention", "text"} | multi_query  # fmt: skip
    assert all(v > 0 for v in ms.values())
    assert report["text_new_tokens"] == 3  # forced: random weights cannot stop early
    ratios = report["ratios"]
    assert ratios["text_over_a2p"] == pytest.approx(ms["text"] / ms["a2p"])
    assert ratios["a2p_5_over_1"] == pytest.approx(ms["a2p_5_queries"] / ms["a2p"])
    assert ratios["capture_5_over_1"] == pytest.approx(ms["capture_5_queries"] / ms["capture_truncated"])
    assert ratios["attention_same_frame_over_new"] == pytest.approx(
        ms["attention_same_frame"] / ms["attention"]
    )
    assert report["queries_per_frame"] == 5
    # the same points with and without the image prefix reused (a2p: sub-pixel refinement of equal maps)
    assert report["reuse_max_shift_px"]["attention"] == 0.0 and report["reuse_max_shift_px"]["a2p"] < 1e-3
    table = format_report(report)
    assert "point_many, suffixes batched (default)" in table and "1 query on a frame already seen" in table
    weights = list(report["weights_mb"].values())
    assert weights[1] < weights[0]  # a truncated load keeps fewer decoder layers
