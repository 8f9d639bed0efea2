"""``part-point`` as users run it: a subprocess, exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHIPPED_BACKBONE = REPO / "models" / "tiny-tabletop-llava"
SHIPPED_HEAD = REPO / "models" / "tiny-tabletop-a2p"


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "part_point_ros.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("part-point: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def image_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 256, size=(72, 96, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def llava_head(tiny_llava_dir, tmp_path_factory) -> Path:
    """A fresh random head for the tiny LLaVA (real HeadConfig + safetensors, built by the heads code)."""
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.heads import HeadConfig, PartPointHead

    info = load_backbone(str(tiny_llava_dir), max_layer=0).info
    torch.manual_seed(0)
    config = HeadConfig(
        backbone=asdict(info), heads=[(1, 0), (2, 1)], d_head=info.head_dim, d_fused=32, norm_groups=8
    )
    return PartPointHead(config).save_pretrained(tmp_path_factory.mktemp("head"))


def test_point_json_and_overlay(image_png, tiny_llava_dir, llava_head, tmp_path):
    overlay = tmp_path / "overlay.png"
    proc = run_cli(
        "point", str(image_png), "the handle of the mug", "--head", str(llava_head), "--backbone",
        str(tiny_llava_dir), "--json", "--overlay", str(overlay),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("x", "y", "score", "found", "method", "latency_ms"):
        assert key in out
    assert out["method"] == "a2p" and 0 <= out["x"] <= 96 and 0 <= out["y"] <= 72
    assert isinstance(out["found"], bool) and out["latency_ms"] > 0
    written = cv2.imread(str(overlay))
    assert written.shape == (72, 96, 3)
    assert not np.array_equal(written, cv2.imread(str(image_png)))  # heatmap and marker drawn


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: (d / "notes.png").write_text("not an image") and d / "notes.png", "cannot decode"),
        (lambda d: cv2.imwrite(str(d / "deep.png"), np.zeros((8, 8), np.uint16)) and d / "deep.png", "16"),
        (
            lambda d: cv2.imwrite(str(d / "rgba.png"), np.zeros((8, 8, 4), np.uint8)) and d / "rgba.png",
            "alpha",
        ),
        (
            lambda d: cv2.imwrite(str(d / "grey.png"), np.zeros((8, 8), np.uint8)) and d / "grey.png",
            "--allow-grey",
        ),
    ],
)
def test_bad_image_files(tmp_path, make, needle):
    path = make(tmp_path)
    proc = run_cli("point", str(path), "the handle of the mug", "--backbone", "unused")
    assert_one_line_error(proc, needle)


@pytest.mark.parametrize(
    ("query", "needle"), [("", "query is empty"), ("  ", "query is empty"), ("q" * 1200, "1000")]
)
def test_bad_queries(image_png, query, needle):
    assert_one_line_error(run_cli("point", str(image_png), query, "--backbone", "unused"), needle)


def test_unknown_backbone_dir(image_png, tmp_path, capsys):
    """In-process (same code path as the console script; saves one transformers import)."""
    from part_point_ros.cli.main import main

    code = main(
        ["point", str(image_png), "the lid", "--backbone", str(tmp_path / "nowhere"), "--method", "text"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("part-point: error: ") and "nowhere" in err[0]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    code = main(
        ["point", str(image_png), "the lid", "--backbone", str(tmp_path / "other"), "--method", "text"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "not supported" in err[0]


def test_head_for_another_backbone(image_png, tiny_qwen_dir, llava_head):
    proc = run_cli(
        "point", str(image_png), "the lid", "--backbone", str(tiny_qwen_dir), "--head", str(llava_head)
    )
    assert_one_line_error(proc, "family", "llava", "qwen2_5_vl")


def test_missing_head_dir(image_png, tmp_path):
    proc = run_cli("point", str(image_png), "the lid", "--head", str(tmp_path / "nohead"))
    assert_one_line_error(proc, "nohead")


def test_placeholders_and_usage():
    proc = run_cli("train", "cache_dir=/nonexistent/cache")  # no cache yet: says which verb to run first
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "run part-point cache" in proc.stderr
    proc = run_cli("point")
    assert proc.returncode == 2 and "usage" in proc.stderr  # argparse: missing IMAGE and QUERY
    proc = run_cli("--help")
    assert proc.returncode == 0 and "select-heads" in proc.stdout and "bench" in proc.stdout


@pytest.mark.parametrize("query", ["the <image> handle", "the handle</s>"])
def test_a_special_token_in_the_query_is_refused_in_one_line(image_png, tiny_llava_dir, llava_head, query):
    """The query reaches the prompt as text: a special token would add an image slot or end the turn."""
    proc = run_cli(
        "point", str(image_png), query, "--backbone", str(tiny_llava_dir), "--head", str(llava_head)
    )
    assert_one_line_error(proc, "special token of the backbone's prompt")


@pytest.mark.parametrize(
    ("mode", "size", "needle"),
    [
        ("RGB", (20000, 2), "big.png is 20000x2 px, aspect ratio 10000.0:1, over the limit of 8:1"),
        ("RGB", (2, 20000), "big.png is 2x20000 px, aspect ratio 10000.0:1, over the limit of 8:1"),
        ("P", (5000, 5000), "big.png is 5000x5000 = 25000000 px, over the limit of 8847360 px"),
        ("1", (14000, 13000), "big.png: too large to decode (Image size (182000000 pixels) exceeds limit"),
    ],
    ids=["wide", "tall", "huge", "decompression_bomb"],
)
def test_oversized_image_files_are_refused_in_one_line(tmp_path, mode, size, needle):
    """Checked from the file's header, before decoding and before any model loads; the line says which
    option changes the limit. (A 20000x2 image used to take 5.5 GB through LLaVA's pad-to-square.)"""
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new(mode, size).save(path)  # tiny files: one colour compresses to almost nothing
    proc = run_cli("point", str(path), "the handle of the mug", "--backbone", "unused")
    assert_one_line_error(proc, needle, "--max-")


def test_image_limit_flags(tmp_path):
    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), np.full((20, 400, 3), 128, np.uint8))  # 20:1
    models = ("--head", str(SHIPPED_HEAD), "--backbone", str(SHIPPED_BACKBONE))
    proc = run_cli("point", str(wide), "the handle of the mug", *models, "--json", "--max-aspect-ratio", "20")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert 0 <= out["x"] <= 399 and 0 <= out["y"] <= 19
    assert_one_line_error(run_cli("point", str(wide), "the lid", *models), "aspect ratio 20.0:1")
    proc = run_cli("point", str(wide), "the lid", "--backbone", "unused", "--max-image-pixels", "3")
    assert_one_line_error(proc, "max_image_pixels must be an integer >= 4")
    proc = run_cli("point", str(wide), "the lid", "--backbone", "unused", "--max-aspect-ratio", "0.5")
    assert_one_line_error(proc, "max_aspect_ratio must be a number >= 1")


def _break_weights(directory: Path, how: str, tensor: str = "layers.0.self_attn.q_proj.weight") -> None:
    """Spoil a copied model directory's model.safetensors the way a bad download or a user might;
    ``wrong_shape`` gives the tensor whose name ends in ``tensor`` 2 more rows."""
    from safetensors.torch import load, save_file

    weights = directory / "model.safetensors"

    def load_file(path: Path) -> dict[str, torch.Tensor]:  # read into memory: the file is rewritten
        return load(path.read_bytes())

    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "pickled":  # a pickle under the safetensors name
        torch.save(load_file(weights), weights)
    elif how == "wrong_shape":
        tensors = load_file(weights)
        name = next(k for k in sorted(tensors) if k.endswith(tensor))
        tensors[name] = torch.zeros(tensors[name].shape[0] + 2, *tensors[name].shape[1:])
        save_file(tensors, str(weights), metadata={"format": "pt"})
    elif how == "bin_only":  # what old checkpoints on the hub hold: pickled weights, no safetensors
        torch.save(load_file(weights), directory / "pytorch_model.bin")
        weights.unlink()
    elif how == "missing":
        weights.unlink()
    else:
        raise ValueError(how)


@pytest.mark.parametrize(
    ("how", "needles"),
    [
        ("truncated", ("cannot read its weights", "truncated", "copy or download it again")),
        ("pickled", ("cannot read its weights", "not a safetensors file", "copy or download it again")),
        (
            "wrong_shape",
            (
                "1 weight(s) in the checkpoint do not have the shape its config.json gives them",
                "layers.0.self_attn.q_proj.weight (130, 128) != (128, 128)",
                "use the model's own files",
            ),
        ),
        (
            "bin_only",
            (
                "has pickled weights only (pytorch_model.bin), no model.safetensors",
                "unpickling a file can run code",
                "--allow-pickle-weights",
            ),
        ),
        ("missing", ("has no weights (no model.safetensors beside its config.json)", "copy or download")),
    ],
)
def test_broken_backbone_weights_are_one_line(tmp_path, image_png, how, needles):
    backbone = Path(shutil.copytree(SHIPPED_BACKBONE, tmp_path / "backbone"))
    _break_weights(backbone, how)
    proc = run_cli(
        "point",
        str(image_png),
        "the handle of the mug",
        "--head",
        str(SHIPPED_HEAD),
        "--backbone",
        str(backbone),
    )
    assert_one_line_error(proc, *needles)


def test_pickled_backbone_loads_only_when_allowed(tmp_path, image_png):
    """The opt-in reads pytorch_model.bin and points exactly as the safetensors copy does."""
    backbone = Path(shutil.copytree(SHIPPED_BACKBONE, tmp_path / "backbone"))
    _break_weights(backbone, "bin_only")
    args = ("point", str(image_png), "the handle of the mug", "--head", str(SHIPPED_HEAD), "--json")
    proc = run_cli(*args, "--backbone", str(backbone), "--allow-pickle-weights")
    assert proc.returncode == 0, proc.stderr
    reference = run_cli(*args, "--backbone", str(SHIPPED_BACKBONE))
    assert reference.returncode == 0, reference.stderr
    pickled, safe = json.loads(proc.stdout), json.loads(reference.stdout)
    # the same weights: the same point up to float noise (two processes on a loaded machine differed
    # by 1e-4 px once); other weights move it by pixels
    assert pickled["x"] == pytest.approx(safe["x"], abs=1e-2) and pickled["y"] == pytest.approx(
        safe["y"], abs=1e-2
    )
    assert pickled["score"] == pytest.approx(safe["score"], abs=1e-4)


@pytest.mark.parametrize(
    ("how", "needles"),
    [
        ("truncated", ("model.safetensors: not a readable safetensors file", "copy it again")),
        (
            "wrong_shape",
            ("model.safetensors: shape a2p.fuse.bias (66,) != (64,)", "another version or config"),
        ),
    ],
)
def test_broken_head_weights_are_one_line(tmp_path, image_png, how, needles):
    head = Path(shutil.copytree(SHIPPED_HEAD, tmp_path / "head"))
    _break_weights(head, how, tensor="a2p.fuse.bias")
    proc = run_cli(
        "point",
        str(image_png),
        "the handle of the mug",
        "--head",
        str(head),
        "--backbone",
        str(SHIPPED_BACKBONE),
    )
    assert_one_line_error(proc, *needles)
