"""Mask helpers: threshold rules on real PNG files, union, area, resizing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from part_point_ros.data import DataError
from part_point_ros.data.masks import (
    area_fraction,
    fit_max_side,
    image_size,
    read_mask,
    read_rgb,
    resize_image,
    resize_mask,
    union,
)


def test_zero_one_png_needs_threshold_zero(tmp_path):
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 2:5] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png", threshold=0), mask.astype(bool))
    assert not read_mask(tmp_path / "m.png", threshold=127).any()  # the classic InstructPart trap


def test_rgb_mask_any_channel_above_threshold(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (0, 0, 128)
    rgb[1, 1] = (127, 127, 127)
    rgb[2, 2] = (200, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    expected = np.zeros((4, 4), bool)
    expected[0, 0] = expected[2, 2] = True
    assert np.array_equal(read_mask(tmp_path / "m.png", threshold=127), expected)


def test_rgba_alpha_is_ignored_and_palette_uses_colours(tmp_path):
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere
    rgba[1, 1, :3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert read_mask(tmp_path / "a.png", threshold=127).sum() == 1
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(read_mask(tmp_path / "p.png", threshold=127), np.array([[0, 1], [1, 0]], bool))


def test_unreadable_files_name_the_path(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        read_mask(bad, threshold=0)
    with pytest.raises(DataError, match="missing.jpg"):
        read_rgb(tmp_path / "missing.jpg")


def test_read_rgb_and_header_size(tmp_path):
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(tmp_path / "g.png")
    img = read_rgb(tmp_path / "g.png")
    assert img.shape == (5, 7, 3) and img.dtype == np.uint8 and (img == 9).all()
    assert image_size(tmp_path / "g.png") == (5, 7)


def test_union_and_area_fraction():
    a = np.zeros((4, 5), bool)
    b = np.zeros((4, 5), bool)
    a[0, :2] = True
    b[0, 1:3] = True
    u = union([a, b])
    assert u[0, :3].all() and u.sum() == 3
    assert area_fraction(u) == pytest.approx(3 / 20)
    with pytest.raises(ValueError, match="different shapes"):
        union([a, np.zeros((2, 2), bool)])
    with pytest.raises(ValueError):
        union([])


@pytest.mark.parametrize(
    ("h", "w", "max_side", "expected"),
    [
        (1000, 2000, 1500, (750, 1500, 0.75)),
        (3000, 1000, 1500, (1500, 500, 0.5)),
        (1500, 1200, 1500, (1500, 1200, 1.0)),
        (10, 20, None, (10, 20, 1.0)),
    ],
)
def test_fit_max_side(h, w, max_side, expected):
    new_h, new_w, scale = fit_max_side(h, w, max_side)
    assert (new_h, new_w) == expected[:2] and scale == pytest.approx(expected[2])


def test_resize_mask_nearest_and_image_area():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 4:8] = True
    small = resize_mask(mask, (4, 4))
    assert small.dtype == bool and np.array_equal(small, mask[::2, ::2])
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = 200
    out = resize_image(image, (4, 4))
    assert out.shape == (4, 4, 3) and (out[:, :2] == 200).all() and (out[:, 2:] == 0).all()
