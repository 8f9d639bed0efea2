"""Accuracy / Patch Accuracy against hand-made predictions; aggregation; paper numbers; report files."""

from __future__ import annotations

import json
import math

import numpy as np

from part_point_ros.training.metrics import patch_hit, patch_of, point_hit, score_prediction, summarize
from part_point_ros.training.paper_numbers import backbone_key, paper_accuracy
from part_point_ros.training.report import write_report
from part_point_ros.types import ImageGrid

# 100x100 image seen as is, 4x4 grid of 25 px cells
GRID = ImageGrid(4, 4, (100, 100), (100, 100), (1.0, 1.0), (0.0, 0.0))


def one_pixel_mask() -> np.ndarray:
    mask = np.zeros((100, 100), dtype=bool)
    mask[10, 60] = True  # row 10, col 60: inside cell (row 0, col 2)
    return mask


def test_point_hit_inside_outside_and_edges():
    mask = one_pixel_mask()
    assert point_hit(mask, 60.5, 10.5) and point_hit(mask, 60.0, 10.99)
    assert not point_hit(mask, 61.0, 10.5) and not point_hit(mask, 59.9, 10.5)
    assert not point_hit(mask, float("nan"), 10.0) and not point_hit(mask, -1.0, 10.0)
    full = np.ones((100, 100), dtype=bool)
    assert point_hit(full, 100.0, 100.0) and not point_hit(full, 100.5, 50.0)


def test_patch_accuracy_on_a_known_grid():
    mask = one_pixel_mask()
    assert patch_of(GRID, 52.0, 2.0) == (0, 2)
    assert patch_hit(mask, GRID, 52.0, 2.0) and not point_hit(mask, 52.0, 2.0)  # same cell, other pixel
    assert patch_hit(mask, GRID, 74.9, 24.9)
    assert not patch_hit(mask, GRID, 75.1, 10.0)  # the next cell to the right
    assert not patch_hit(mask, GRID, 60.0, 25.0)  # the cell below


def test_patch_accuracy_with_a_centre_crop():
    # 100x50 image, resized to 56x28 then centre-cropped to 28x28: offset -14 px, scale 0.56, 2x2 grid
    grid = ImageGrid(2, 2, (100, 50), (28, 28), (0.56, 0.56), (-14.0, 0.0))
    mask = np.zeros((50, 100), dtype=bool)
    mask[5, 30] = True  # processed x = 30*0.56-14 = 2.8: cell (0, 0), which covers x in [25, 50) px
    assert patch_of(grid, 45.0, 20.0) == (0, 0) and patch_hit(mask, grid, 45.0, 20.0)
    assert patch_of(grid, 10.0, 20.0) is None and not patch_hit(mask, grid, 10.0, 20.0)  # cropped away
    assert not patch_hit(mask, grid, 55.0, 20.0)  # cell (0, 1)


def rec(sample_id, method, x, y, meta, score=0.9, found=True):
    return score_prediction(
        sample_id=sample_id, method=method, x=x, y=y, meta=meta, mask=one_pixel_mask(), grid=GRID,
        score=score, found=found,
    )  # fmt: skip


def records():
    handle = {"dataset": "paco_lvis", "category": "mug:handle"}
    return [
        rec("a", "a2p", 60.5, 10.5, handle),  # hit
        rec("b", "a2p", 52.0, 2.0, handle),  # patch hit only
        rec("c", "a2p", 5.0, 90.0, {"dataset": "paco_lvis", "category": "knife:blade"}),  # miss
        rec("d", "a2p", 60.2, 10.2, {"dataset": "instructpart", "object": "mug"}),  # hit
        rec("a", "text", float("nan"), float("nan"), handle, score=0.0, found=False),  # no answer
    ]


def test_summary_per_method_dataset_and_category():
    summary = summarize(records())
    paco = summary["a2p"]["datasets"]["paco_lvis"]
    assert paco["overall"]["n"] == 3
    assert math.isclose(paco["overall"]["accuracy"], 1 / 3) and math.isclose(
        paco["overall"]["patch_accuracy"], 2 / 3
    )
    assert paco["by"]["category"]["mug:handle"]["accuracy"] == 0.5
    assert paco["by"]["category"]["mug:handle"]["patch_accuracy"] == 1.0
    assert paco["by"]["category"]["knife:blade"]["accuracy"] == 0.0
    assert summary["a2p"]["datasets"]["instructpart"]["by"]["object"]["mug"]["accuracy"] == 1.0
    assert summary["a2p"]["overall"]["accuracy"] == 0.5
    assert summary["text"]["overall"]["accuracy"] == 0.0 and summary["text"]["overall"]["found_rate"] == 0.0


def test_paper_numbers_lookup():
    assert backbone_key("llava-hf/llava-1.5-7b-hf") == "llava-1.5-7b"
    assert backbone_key("Qwen/Qwen2.5-VL-7B-Instruct") == "qwen2.5-vl-7b"
    assert backbone_key("/tmp/tiny_llava") is None
    assert paper_accuracy("llava-hf/llava-1.5-7b-hf", "paco_lvis", "a2p") == 0.463
    assert paper_accuracy("Qwen/Qwen2.5-VL-7B-Instruct", "instructpart", "text") == 0.708
    assert paper_accuracy("llava-hf/llava-1.5-7b-hf", "synthetic", "a2p") is None


def test_report_files_show_paper_numbers_when_they_apply(tmp_path):
    recs = records()
    files = write_report(summarize(recs), recs, tmp_path, backbone_name="llava-hf/llava-1.5-7b-hf")
    markdown = files["markdown"].read_text()
    assert "| a2p | paco_lvis | 3 | 0.333 | 0.463 | 0.667 |" in markdown
    assert "| a2p | instructpart | 1 | 1.000 | 0.783 |" in markdown
    data = json.loads(files["json"].read_text())
    assert data["paper_accuracy"]["text"]["paco_lvis"] == 0.068
    assert data["summary"]["a2p"]["datasets"]["paco_lvis"]["overall"]["n"] == 3
    lines = files["predictions"].read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[4])["x"] is None
    assert files["plot"].stat().st_size > 1000 and files["plot"].read_bytes()[:4] == b"\x89PNG"
