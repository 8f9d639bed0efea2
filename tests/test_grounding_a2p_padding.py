"""A2P never answers a point outside the image (issue #10 item 4).

With a pad-to-square processor (LLaVA ``do_pad``) part of the a2p heatmap lies in the padding; those
cells must never win, a peak in a cell only partly on the image is clamped onto it, and the
evaluation from cached features decodes the same way as ``PartPointer.point``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from part_point_ros.grounding.attention_pointing import cells_on_image
from part_point_ros.grounding.methods.a2p import decode_a2p
from part_point_ros.grounding.peaks import argmax_peak, nms_peaks, refine_peak
from part_point_ros.types import ImageGrid

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = ROOT / "models" / "tiny-tabletop-llava"
HEAD = ROOT / "models" / "tiny-tabletop-a2p"
QUERY = "the handle of the mug"
SIZES = [(640, 120), (120, 640), (500, 90), (90, 500), (400, 160)]  # (width, height): wide and tall

# a 320x236 image in a padded 112x112 input (scale 0.35, 13.5 px of padding above, 15.9 below): at
# 4x the 14x14 token grid, heatmap rows 0-5 and 49-55 are padding only, rows 6 and 48 only partly
# image (with their centres off it: y -1.4 and 238.6).
UPSCALE = 4
GRID = ImageGrid(rows=14, cols=14, orig_size=(320, 236), processed_size=(112, 112), scale=(0.35, 0.35),
                 offset=(0.0, 13.5))  # fmt: skip
WIDTH, HEIGHT = GRID.orig_size


def inside(x: float, y: float, width: int, height: int) -> bool:
    return 0.0 <= x <= width - 1 and 0.0 <= y <= height - 1


def random_images(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        width, height = SIZES[i % len(SIZES)]
        yield rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ geometry / peaks
def test_heatmap_cells_on_image_at_4x():
    valid = cells_on_image(GRID, UPSCALE)
    assert valid.shape == (56, 56)
    assert not valid[:6].any() and valid[6:49].all() and not valid[49:].any()
    # a token cell is on the image iff one of its 4x4 heatmap cells is
    assert np.array_equal(cells_on_image(GRID), valid.reshape(14, 4, 14, 4).any(axis=(1, 3)))


def test_peak_search_skips_invalid_cells():
    values = np.zeros((8, 8))
    values[1, 1] = 5.0  # global max, invalid
    values[5, 4] = 2.0
    values[5, 5] = 1.9
    values[2, 6] = 1.5
    valid = np.ones((8, 8), dtype=bool)
    valid[:3] = False
    assert (argmax_peak(values, valid).row, argmax_peak(values, valid).col) == (5.0, 4.0)
    peaks = nms_peaks(values, radius=1.5, max_points=4, min_value=0.5, valid=valid)
    assert [(p.row, p.col) for p in peaks] == [(5.0, 4.0)]  # (5, 5) suppressed; (1, 1), (2, 6) invalid
    # refinement never steps toward an invalid neighbour: row 3 next to the invalid row 2 stays put
    edge = np.zeros((8, 8))
    edge[3, 4], edge[2, 4], edge[4, 4], edge[3, 5] = 2.0, 10.0, 1.0, 1.5
    refined = refine_peak(edge, argmax_peak(edge, valid), valid=valid)
    assert refined.row == 3.0 and 4.0 < refined.col <= 5.0


# ------------------------------------------------------------------------------ decode_a2p
def test_global_max_in_padding_loses_to_the_best_on_image_cell():
    logits = torch.zeros(56, 56)
    logits[2, 30] = 50.0  # global max: wholly in the padding above the image
    logits[52, 10] = 45.0  # padding below
    logits[20, 40] = 10.0  # best cell on the image
    logits[35, 8] = 9.8  # second on the image, far away
    attn = torch.zeros(2, 14 * 14)
    attn[:, 5 * 14 + 10] = 3.0  # token cell under (20, 40)
    heatmap, points = decode_a2p(logits, attn, GRID, UPSCALE, subpixel=False, max_points=3)
    valid = cells_on_image(GRID, UPSCALE)
    assert heatmap.shape == (56, 56) and heatmap.dtype == np.float32
    assert heatmap[~valid].max() == 0.0 and heatmap.sum() == pytest.approx(1.0, abs=1e-5)
    assert points[0][:2] == pytest.approx(GRID.heatmap_to_pixel(20, 40, UPSCALE))
    assert points[0][2] == pytest.approx(float(torch.sigmoid(torch.tensor(3.0))))
    assert points[1][:2] == pytest.approx(GRID.heatmap_to_pixel(35, 8, UPSCALE))
    assert all(inside(x, y, WIDTH, HEIGHT) for x, y, _ in points)
    # with sub-pixel refinement the best point stays by the same cell
    _, refined = decode_a2p(logits, attn, GRID, UPSCALE, subpixel=True)
    assert len(refined) == 1 and np.hypot(refined[0][0] - points[0][0], refined[0][1] - points[0][1]) < 8


def test_peak_in_a_partly_covered_cell_is_clamped_onto_the_image():
    logits = torch.zeros(56, 56)
    logits[6, 55] = 20.0  # row 6 is partly image (its centre is above it), col 55 the last column
    logits[48, 0] = 19.8  # row 48 is partly image at the bottom (centre below it), col 0 the first
    attn = torch.zeros(2, 14 * 14)
    for subpixel in (False, True):
        _, points = decode_a2p(logits, attn, GRID, UPSCALE, subpixel=subpixel, max_points=2)
        cx, cy = GRID.heatmap_to_pixel(6, 55, UPSCALE)
        assert cy < 0  # the cell centre itself is off the image
        assert points[0][:2] == pytest.approx((min(cx, WIDTH - 1.0), 0.0))
        bx, by = GRID.heatmap_to_pixel(48, 0, UPSCALE)
        assert by > HEIGHT - 1
        assert points[1][:2] == pytest.approx((max(bx, 0.0), HEIGHT - 1.0))
        assert all(inside(x, y, WIDTH, HEIGHT) for x, y, _ in points)


def test_softmax_near_score_is_the_attention_share_within_one_cell():
    """Heads trained with a softmax patch term: score = mean over heads of the share of each head's
    softmax over the on-image cells lying in the 3x3 cells around the peak's cell."""
    logits = torch.zeros(56, 56)
    logits[20, 40] = 10.0  # token cell (5, 10)
    attn = torch.full((2, 14 * 14), -1e4)
    attn[:, 0 * 14 + 3] = 50.0  # token row 0 is wholly padding: never counted
    on = np.flatnonzero(cells_on_image(GRID).reshape(-1))
    attn[0, on] = 0.0  # head 0: uniform over the on-image cells
    attn[1, on] = -1e4
    attn[1, [5 * 14 + 10, 4 * 14 + 11, 5 * 14 + 12]] = 0.0  # head 1: 1/3 on each; (5, 12) is 2 cells away
    _, points = decode_a2p(logits, attn, GRID, UPSCALE, subpixel=False, score="softmax_near")
    expected = (9 / len(on) + 2 / 3) / 2
    assert points[0][2] == pytest.approx(expected, rel=1e-5)
    _, sig = decode_a2p(logits, attn, GRID, UPSCALE, subpixel=False)
    assert sig[0][2] == pytest.approx(0.5)  # sigmoid(0) at the cell, both heads
    with pytest.raises(ValueError, match="softmax_near"):
        decode_a2p(logits, attn, GRID, UPSCALE, score="max")


def test_decode_a2p_refuses_a_heatmap_of_the_wrong_shape():
    with pytest.raises(ValueError, match="grid x upscale"):
        decode_a2p(torch.zeros(28, 28), torch.zeros(2, 196), GRID, UPSCALE)


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def shipped_a2p():
    from part_point_ros.grounding import PartPointer

    return PartPointer.from_pretrained(backbone=str(BACKBONE), head=str(HEAD), method="a2p")


def test_shipped_tiny_tabletop_points_stay_on_wide_and_tall_images(shipped_a2p):
    assert shipped_a2p.backbone.processor.image_processor.do_pad  # pad-to-square: the case at hand
    for image in random_images(20, seed=10):
        height, width = image.shape[:2]
        result = shipped_a2p.point(image, QUERY)
        assert inside(result.x, result.y, width, height), (width, height, result.x, result.y)
        assert len(result.points) >= 1 and result.points[0][:2] == (result.x, result.y)
        for x, y, score in result.points:  # every peak
            assert inside(x, y, width, height), (width, height, x, y)
            assert 0.0 <= score <= 1.0
        valid = cells_on_image(result.grid, result.upscale)
        assert not valid.all()  # some of the heatmap is padding ...
        assert result.heatmap[~valid].max() == 0.0  # ... and none of the mass is there


def test_random_padded_llava_points_stay_on_the_image(tmp_path):
    from dataclasses import asdict

    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.backbones.tiny import build_tiny_llava
    from part_point_ros.grounding import PartPointer
    from part_point_ros.heads import HeadConfig, PartPointHead

    backbone_dir = build_tiny_llava(tmp_path / "llava", seed=3, pad_to_square=True)
    info = load_backbone(str(backbone_dir), max_layer=0).info
    torch.manual_seed(0)
    config = HeadConfig(
        backbone=asdict(info), heads=[(1, 0), (2, 3)], d_head=info.head_dim, d_fused=32, norm_groups=8
    )
    head_dir = PartPointHead(config).save_pretrained(tmp_path / "head")
    a2p = PartPointer.from_pretrained(backbone=str(backbone_dir), head=str(head_dir), method="a2p")
    for image in random_images(10, seed=11):
        height, width = image.shape[:2]
        result = a2p.point(image, QUERY)
        assert all(inside(x, y, width, height) for x, y, _ in result.points), (width, height, result.points)
        assert result.points[0][:2] == (result.x, result.y)


def test_evaluation_from_cache_decodes_like_the_pointer(shipped_a2p, tmp_path):
    from part_point_ros.data.base import Sample
    from part_point_ros.training.evaluate import predict_from_cache
    from part_point_ros.training.feature_cache import FeatureCache, write_cache

    images = list(random_images(5, seed=12))
    samples = [
        Sample(
            f"s{i}",
            tmp_path / f"{i}.png",
            QUERY,
            (lambda im=im: im),
            (lambda im=im: np.zeros(im.shape[:2], dtype=bool)),
        )  # fmt: skip
        for i, im in enumerate(images)
    ]
    root = write_cache(
        shipped_a2p.backbone, samples, tmp_path / "cache", heads=shipped_a2p.heads, upscale=4, dtype="float32"
    )
    records = predict_from_cache(shipped_a2p.head, FeatureCache(root), batch_size=2)
    assert [r.sample_id for r in records] == [s.sample_id for s in samples]
    for image, record in zip(images, records, strict=True):
        height, width = image.shape[:2]
        result = shipped_a2p.point(image, QUERY)
        assert inside(record.x, record.y, width, height)
        assert (record.x, record.y) == pytest.approx((result.x, result.y), abs=1e-3)
        assert record.score == pytest.approx(result.score, abs=1e-4)
