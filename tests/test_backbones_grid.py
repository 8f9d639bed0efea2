"""ImageGrid vs the REAL processors: a painted cell_box lands exactly in its grid cell."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from part_point_ros.backbones.registry import load_backbone
from part_point_ros.backbones.tiny import build_tiny_llava, build_tiny_qwen2_5_vl

SIZES = [(320, 200), (200, 320), (257, 129), (96, 96)]  # (width, height)
PAINT = np.array([250, 20, 20], dtype=np.uint8)
BACKGROUND = np.array([40, 160, 90], dtype=np.uint8)


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return load_backbone(str(build_tiny_llava(tmp_path_factory.mktemp("llava"), image_size=84)))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load_backbone(str(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen"))))


def processed_image(adapter, inputs) -> np.ndarray:
    """(H, W, 3) processed image in [0, 1], normalisation undone."""
    ip = adapter.processor.image_processor
    pv = inputs["pixel_values"].float()
    if adapter.family == "qwen2_5_vl":
        _, gh, gw = (int(v) for v in inputs["image_grid_thw"][0])
        m, p, t = ip.merge_size, ip.patch_size, ip.temporal_patch_size
        # (gh*gw, 3*t*p*p) -> (gh/m, gw/m, m, m, 3, t, p, p), first temporal copy
        pv = pv.reshape(gh // m, gw // m, m, m, 3, t, p, p)[:, :, :, :, :, 0]
        # (gh/m, gw/m, m, m, 3, p, p) -> (3, gh/m, m, p, gw/m, m, p) -> (3, gh*p, gw*p)
        img = pv.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)
    else:
        img = pv[0]  # (3, H, W)
    mean = torch.tensor(ip.image_mean).view(3, 1, 1)
    std = torch.tensor(ip.image_std).view(3, 1, 1)
    return (img * std + mean).permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)


def cell_pixels(img: np.ndarray, grid, row: int, col: int, margin: int) -> np.ndarray:
    cw, ch = grid.cell_size
    y0, y1 = round(row * ch) + margin, round((row + 1) * ch) - margin
    x0, x1 = round(col * cw) + margin, round((col + 1) * cw) - margin
    return img[y0:y1, x0:x1].reshape(-1, 3)


def check_painted_cell(adapter, size: tuple[int, int]) -> None:
    w, h = size
    blank = np.zeros((h, w, 3), dtype=np.uint8)
    _, grid = adapter.prepare(blank, adapter.build_prompt("x"))
    assert grid.orig_size == size
    cells = {(grid.rows // 2, grid.cols // 2), (0, 0), (grid.rows - 1, grid.cols - 1), (0, grid.cols - 1)}
    checked = 0
    for row, col in sorted(cells):
        x0, y0, x1, y1 = grid.cell_box(row, col)
        if (x0, y0) != grid.grid_to_pixel(col, row) or (x1, y1) != grid.grid_to_pixel(col + 1, row + 1):
            continue  # the cell reaches into padding: only cells fully inside the image can be painted
        checked += 1
        image = np.broadcast_to(BACKGROUND, (h, w, 3)).copy()
        image[math.ceil(y0 - 0.5) : math.ceil(y1 - 0.5), math.ceil(x0 - 0.5) : math.ceil(x1 - 0.5)] = PAINT
        inputs, grid2 = adapter.prepare(image, adapter.build_prompt("x"))
        assert grid2 == grid
        img = processed_image(adapter, inputs)
        assert img.shape[:2] == (grid.processed_size[1], grid.processed_size[0])
        paint, back = PAINT / 255.0, BACKGROUND / 255.0
        inside = cell_pixels(img, grid, row, col, margin=2)
        assert np.abs(inside - paint).max() < 0.08, (size, row, col)
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            r, c = row + dr, col + dc
            if 0 <= r < grid.rows and 0 <= c < grid.cols and _inside(grid, r, c):
                neighbour = cell_pixels(img, grid, r, c, margin=2)
                assert np.abs(neighbour - back).max() < 0.08, (size, row, col, r, c)
    assert checked >= 1


def _inside(grid, row: int, col: int) -> bool:
    x0, y0 = grid.grid_to_pixel(col, row)
    x1, y1 = grid.grid_to_pixel(col + 1, row + 1)
    w, h = grid.orig_size
    return x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h


@pytest.mark.parametrize("size", SIZES)
def test_llava_clip_resize_and_centre_crop(llava, size):
    check_painted_cell(llava, size)


@pytest.mark.parametrize("size", SIZES)
def test_qwen_smart_resize_and_merged_grid(qwen, size):
    check_painted_cell(qwen, size)


def test_llava_pad_to_square_processor(llava, monkeypatch):
    from transformers import LlavaImageProcessorPil

    ip = llava.processor.image_processor
    padded = LlavaImageProcessorPil(size=dict(ip.size), crop_size=dict(ip.crop_size), do_pad=True)
    monkeypatch.setattr(llava.processor, "image_processor", padded)  # the real LLaVA padding processor
    for size in [(320, 200), (129, 257)]:
        _, grid = llava.prepare(np.zeros((size[1], size[0], 3), np.uint8), llava.build_prompt("x"))
        assert grid.offset != (0.0, 0.0) and grid.scale[0] == grid.scale[1]
        check_painted_cell(llava, size)


def test_grid_token_counts(llava, qwen):
    image = np.zeros((200, 320, 3), np.uint8)
    inputs, grid = llava.prepare(image, llava.build_prompt("x"))
    assert (grid.rows, grid.cols) == (6, 6)  # 84 / 14
    inputs, grid = qwen.prepare(image, qwen.build_prompt("x"))
    # smart_resize(200, 320, 28, max_pixels=48*28*28): 196 x 308 is too many pixels, so
    # beta = sqrt(200*320 / 37632) and (floor(200/beta/28), floor(320/beta/28)) = (5, 8) merged tokens
    assert (grid.rows, grid.cols, grid.processed_size) == (5, 8, (224, 140))
    assert len(qwen.image_token_positions(inputs["input_ids"][0])) == 40
