"""PartPointer end to end on tiny real checkpoints of both families (random weights)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch

from part_point_ros.errors import CheckpointError, HeadMismatchError, InputError
from part_point_ros.grounding import PartPointer
from part_point_ros.grounding.localization_heads import HeadsFile, calibrate, load_heads
from part_point_ros.types import HeadRef

QUERY = "the handle of the mug"


def make_head(backbone_dir, out_dir, heads):
    """A freshly initialised (untrained) head for the backbone in ``backbone_dir``, saved to ``out_dir``."""
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.heads import HeadConfig, PartPointHead

    info = load_backbone(str(backbone_dir), max_layer=0).info
    torch.manual_seed(0)
    config = HeadConfig(backbone=asdict(info), heads=heads, d_head=info.head_dim, d_fused=32, norm_groups=8)
    return PartPointHead(config).save_pretrained(out_dir)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)  # wide, not square


@pytest.fixture(scope="module")
def llava_head(tiny_llava_dir, tmp_path_factory):
    return make_head(tiny_llava_dir, tmp_path_factory.mktemp("llava_head"), [(1, 0), (2, 3)])


@pytest.fixture(scope="module")
def llava_a2p(tiny_llava_dir, llava_head):
    return PartPointer.from_pretrained(backbone=str(tiny_llava_dir), head=str(llava_head), method="a2p")


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_a2p_point_inside_image_with_4x_heatmap(family, tiny_llava_dir, tiny_qwen_dir, tmp_path, image):
    backbone = tiny_llava_dir if family == "llava" else tiny_qwen_dir
    head_dir = make_head(backbone, tmp_path / "head", [(1, 1), (2, 0)])
    # backbone taken from the head's config; loaded only up to the deepest head layer (2 of 4)
    pointer = PartPointer.from_pretrained(head=str(head_dir), method="a2p")
    assert len(pointer.backbone.model.model.language_model.layers) == 3
    result = pointer.point(image, QUERY)
    h, w = image.shape[:2]
    assert 0 <= result.x <= w and 0 <= result.y <= h
    assert result.latency_ms > 0 and result.method == "a2p"
    assert 0.0 <= result.score <= 1.0 and result.found == (result.score >= 0.5)
    grid = result.grid
    assert result.heatmap.shape == (4 * grid.rows, 4 * grid.cols) and result.heatmap.dtype == np.float32
    assert result.heatmap.sum() == pytest.approx(1.0, abs=1e-4)
    assert grid.orig_size == (w, h)
    assert result.points and result.points[0][:2] == (result.x, result.y)
    on_image = result.heatmap_on_image()
    assert on_image.shape == (h, w) and on_image.max() > 0


def test_a2p_point_is_the_heatmap_peak(llava_a2p, image):
    llava_a2p.subpixel = False
    try:
        result = llava_a2p.point(image, QUERY)
    finally:
        llava_a2p.subpixel = True
    i, j = np.unravel_index(int(np.argmax(result.heatmap)), result.heatmap.shape)
    assert (result.x, result.y) == pytest.approx(result.grid.heatmap_to_pixel(i, j, 4))
    refined = llava_a2p.point(image, QUERY)
    assert abs(refined.x - result.x) <= result.grid.cell_size[0] / 4 / result.grid.scale[0] + 1e-6


def test_attention_method_on_both_families(tiny_llava_dir, tiny_qwen_dir, image, tmp_path):
    heads_path = HeadsFile(backbone={}, heads=[(HeadRef(2, 1), 0.5), (HeadRef(3, 0), 0.4)], k=2).save(
        tmp_path / "heads.json"
    )
    for backbone in (tiny_llava_dir, tiny_qwen_dir):
        pointer = PartPointer.from_pretrained(
            backbone=str(backbone), method="attention", heads=str(heads_path)
        )
        assert pointer.heads == (HeadRef(2, 1), HeadRef(3, 0))
        result = pointer.point(image, QUERY)
        grid = result.grid
        assert result.heatmap.shape == (grid.rows, grid.cols) and result.upscale == 1
        assert 0 <= result.x <= image.shape[1] and 0 <= result.y <= image.shape[0]
        assert result.found and result.latency_ms > 0
        # Kang et al.: by default the point is the argmax patch's centre (no sub-pixel refinement)
        r, c = np.unravel_index(int(np.argmax(result.heatmap)), result.heatmap.shape)
        # (clamped onto the image: a cell partly in the pad-to-square padding has its centre off it)
        x, y = grid.cell_center(int(r), int(c))
        assert (result.x, result.y) == pytest.approx(
            (min(x, grid.orig_size[0] - 1), min(y, grid.orig_size[1] - 1))
        )


def test_text_method_random_weights_is_not_found(tiny_llava_dir, tiny_qwen_dir, image):
    for backbone in (tiny_llava_dir, tiny_qwen_dir):
        pointer = PartPointer.from_pretrained(backbone=str(backbone), method="text", max_new_tokens=8)
        result = pointer.point(image, QUERY)
        assert result.method == "text" and isinstance(result.text, str)
        assert result.found is False and result.score == 0.0
        assert math.isnan(result.x) and result.heatmap is None
        # the grid of the generation's own processor call (for patch accuracy), not a second pass
        _, grid = pointer.backbone.prepare(image, pointer.backbone.build_prompt(QUERY))
        assert result.grid is not None and result.grid.orig_size == (image.shape[1], image.shape[0])
        assert (result.grid.rows, result.grid.cols) == (grid.rows, grid.cols)


def test_head_for_another_backbone_is_refused(tiny_qwen_dir, llava_head):
    with pytest.raises(HeadMismatchError, match="family is qwen2_5_vl on this backbone but llava"):
        PartPointer.from_pretrained(backbone=str(tiny_qwen_dir), head=str(llava_head))


def test_heads_outside_the_backbone_are_refused(tiny_llava_dir):
    with pytest.raises(HeadMismatchError, match="another backbone"):
        PartPointer.from_pretrained(backbone=str(tiny_llava_dir), method="attention", heads="llava-1.5-7b")
    with pytest.raises(CheckpointError, match="select-heads"):
        PartPointer.from_pretrained(backbone=str(tiny_llava_dir), method="attention")
    with pytest.raises(CheckpointError, match="needs a trained head"):
        PartPointer.from_pretrained(backbone=str(tiny_llava_dir), method="a2p")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((20, 30, 4), np.uint8), "RGBA"),
        (np.zeros((20, 30), np.uint8), "greyscale"),
        (np.zeros((20, 30, 3), np.uint16), "uint16"),
        (np.zeros((20, 30, 3), np.float32), "float32"),
        ([[1, 2, 3]], "numpy array"),
        (np.zeros((20, 30, 2), np.uint8), r"\(20, 30, 2\)"),
    ],
)
def test_bad_images_say_what_they_got(llava_a2p, bad, message):
    with pytest.raises(InputError, match=message):
        llava_a2p.point(bad, QUERY)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 20000, 3), "image is 20000x2 px, aspect ratio 10000.0:1, over the limit of 8:1: crop it"),
        ((20000, 2, 3), "image is 2x20000 px, aspect ratio 10000.0:1, over the limit of 8:1: crop it"),
        ((4100, 4100, 3), "image is 4100x4100 = 16810000 px, over the limit of 8847360 px: downscale it"),
        ((4100, 4100), "image is 4100x4100 = 16810000 px"),  # grey: refused before it is copied to RGB
    ],
    ids=["wide", "tall", "huge", "huge_grey"],
)
def test_oversized_images_are_refused_before_the_processor(llava_a2p, monkeypatch, shape, message):
    """A 20000x2 image is a 20000x20000 canvas for LLaVA's pad-to-square (17 s, 5.5 GB): refused at once."""

    def never(*args, **kwargs):
        raise AssertionError("the processor was reached")

    monkeypatch.setattr(llava_a2p.backbone, "prepare", never)
    image = np.broadcast_to(np.zeros((1, 1) + shape[2:], np.uint8), shape)  # no memory for the pixels
    llava_a2p.allow_grey = len(shape) == 2
    start = time.perf_counter()
    try:
        with pytest.raises(InputError) as info:
            llava_a2p.point(image, QUERY)
    finally:
        llava_a2p.allow_grey = False
    assert time.perf_counter() - start < 1.0
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)
    assert ("raise max_aspect_ratio" if "aspect" in message else "raise max_image_pixels") in str(info.value)


def test_image_limits_are_options(tiny_llava_dir, llava_head):
    pointer = PartPointer.from_pretrained(
        backbone=str(tiny_llava_dir), head=str(llava_head), max_image_pixels=1000, max_aspect_ratio=25.0
    )
    assert pointer.point(np.zeros((4, 100, 3), np.uint8), QUERY).grid.orig_size == (100, 4)  # 25:1
    assert pointer.point(np.zeros((10, 100, 3), np.uint8), QUERY).grid.orig_size == (100, 10)  # 1000 px
    with pytest.raises(InputError, match="100x11 = 1100 px, over the limit of 1000 px"):
        pointer.point(np.zeros((11, 100, 3), np.uint8), QUERY)
    with pytest.raises(InputError, match=r"over the limit of 25:1"):
        pointer.point(np.zeros((3, 100, 3), np.uint8), QUERY)
    with pytest.raises(InputError, match="max_aspect_ratio must be a number >= 1"):
        PartPointer(backbone=pointer.backbone, head=pointer.head, max_aspect_ratio=0.5)
    with pytest.raises(InputError, match="max_image_pixels must be an integer >= 4"):
        PartPointer(backbone=pointer.backbone, head=pointer.head, max_image_pixels=0)


def test_evaluation_scores_data_set_images_over_the_request_limits(tiny_llava_dir, llava_head):
    """A benchmark's large photo is scored, not refused: the request limits guard a robot's pointer."""
    from part_point_ros.training.evaluate import DATASET_IMAGE_LIMITS

    wide = np.zeros((200, 2000, 3), np.uint8)  # 10:1, over the default 8:1
    default = PartPointer.from_pretrained(backbone=str(tiny_llava_dir), head=str(llava_head))
    with pytest.raises(InputError, match="over the limit of 8:1"):
        default.point(wide, QUERY)
    evaluation = PartPointer(backbone=default.backbone, head=default.head, **DATASET_IMAGE_LIMITS)
    assert evaluation.point(wide, QUERY).grid.orig_size == (2000, 200)


def test_grey_is_converted_only_when_allowed(llava_a2p):
    grey = np.full((40, 50), 128, np.uint8)
    llava_a2p.allow_grey = True
    try:
        result = llava_a2p.point(grey, QUERY)
    finally:
        llava_a2p.allow_grey = False
    assert result.grid.orig_size == (50, 40)


@pytest.mark.parametrize(
    ("query", "message"), [("", "empty"), ("   \n", "empty"), ("x" * 1001, "limit is 1000")]
)
def test_bad_queries(llava_a2p, image, query, message):
    with pytest.raises(InputError, match=message):
        llava_a2p.point(image, query)


def test_select_heads_on_tiny_backbone(tiny_llava_dir, tmp_path):
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.data.base import Sample

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8) for _ in range(3)]
    samples = [
        Sample(f"s{i}", tmp_path / f"{i}.png", q, (lambda im=im: im), (lambda: np.zeros((60, 80), bool)))
        for i, (im, q) in enumerate(
            zip(images, ["the handle of the mug", "the lid", "the blade of the knife"], strict=True)
        )
    ]
    backbone = load_backbone(str(tiny_llava_dir))
    heads_file = calibrate(backbone, samples, k=3, per_sample=2, source="test")
    path = heads_file.save(tmp_path / "heads.json")
    loaded = load_heads(path)
    assert loaded.calibration == {"n_samples": 3, "source": "test"}
    assert loaded.backbone["num_layers"] == 4 and 1 <= len(loaded.heads) <= 3
    assert all(ref.layer >= 2 for ref in loaded.top())  # first two layers excluded
    freqs = [f for _, f in loaded.heads]
    assert freqs == sorted(freqs, reverse=True) and all(0 < f <= 1 for f in freqs)
    # the file drives the attention baseline directly
    pointer = PartPointer(backbone=backbone, method="attention", heads=loaded.top())
    assert pointer.point(images[0], "the lid").found


def test_overlay_draws_heatmap_and_marker(llava_a2p, image):
    from part_point_ros.grounding.result import PointResult, draw_overlay

    result = llava_a2p.point(image, QUERY)
    overlay = draw_overlay(image, result)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    assert not np.array_equal(overlay, image)
    nothing = PointResult(
        x=float("nan"), y=float("nan"), score=0.0, found=False, method="text", latency_ms=1.0
    )
    assert np.array_equal(draw_overlay(image, nothing), image)


def test_head_deeper_than_the_backbone_is_refused(tmp_path, image):
    from part_point_ros.backbones.tiny import build_tiny_llava

    deep = build_tiny_llava(tmp_path / "deep", num_layers=4)
    shallow = build_tiny_llava(tmp_path / "shallow", num_layers=2)
    head_dir = make_head(deep, tmp_path / "head", [(3, 0)])
    with pytest.raises(HeadMismatchError, match="need layer 3"):
        PartPointer.from_pretrained(backbone=str(shallow), head=str(head_dir))


def test_compiled_vision_tower_gives_the_same_point(tiny_llava_dir, image, tmp_path):
    """compile_vision=True (torch.compile of the vision tower, inductor on the CPU here) changes speed,
    not answers."""
    heads_path = HeadsFile(backbone={}, heads=[(HeadRef(2, 1), 0.5), (HeadRef(3, 0), 0.4)], k=2).save(
        tmp_path / "heads.json"
    )
    options = {"backbone": str(tiny_llava_dir), "method": "attention", "heads": str(heads_path)}
    eager = PartPointer.from_pretrained(**options)
    compiled = PartPointer.from_pretrained(**options, compile_vision=True)
    tower = compiled.backbone.model.model.vision_tower
    assert type(tower).__name__ == "OptimizedModule"  # torch.compile's wrapper
    a, b = eager.point(image, QUERY), compiled.point(image, QUERY)
    np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)
    assert (a.x, a.y) == (b.x, b.y)
