"""POP (seed 002): the dense feature extractors, the forward x backward similarity, the fusion with the
attention prior, and the pointing method over real captures.

Features come from REAL ``DINOv3ViTModel`` / LLaVA checkpoints (tiny, random or shipped) loaded with
``from_pretrained`` on real pixel content (textured images): no transformers class is mocked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pop_helpers import build_tiny_dinov3, texture

from part_point_ros.errors import InputError
from part_point_ros.grounding.features import (
    DinoV3Extractor,
    FeatureMap,
    LlavaTowerExtractor,
    load_extractor,
    multiple_of_patch_size,
)
from part_point_ros.grounding.methods.base import PeakOptions
from part_point_ros.grounding.methods.pop import (
    PopMethod,
    PopOptions,
    forward_backward,
    pop_maps,
    pop_points,
    text_on_feature_grid,
    visual_map,
    visual_similarity,
)
from part_point_ros.grounding.supports import Support, SupportStore
from part_point_ros.types import HeadRef, ImageGrid

TABLETOP = Path(__file__).resolve().parents[1] / "models" / "tiny-tabletop-llava"
ONE_PEAK = PeakOptions(subpixel=False, max_points=1)
W, H = 160, 112  # test frames: 10 x 7 cells of 16 px at long_side 160 (scale 1)


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return build_tiny_dinov3(tmp_path_factory.mktemp("m") / "tiny-dinov3", seed=0)


@pytest.fixture(scope="module")
def dino(dino_dir):
    return DinoV3Extractor.from_pretrained(str(dino_dir), long_side=W)


def with_long_side(extractor: DinoV3Extractor, long_side: int) -> DinoV3Extractor:
    return DinoV3Extractor(
        model=extractor.model,
        model_id=extractor.model_id,
        mean=extractor.mean,
        std=extractor.std,
        rescale=extractor.rescale,
        long_side=long_side,
    )


def support_of(extractor, image: np.ndarray, point: tuple[float, float]) -> Support:
    features, grid = extractor.extract(image)
    return Support(features=features, grid=grid, point=point, image_sha256="")


def uniform_text(width: int = W, height: int = H) -> tuple[np.ndarray, ImageGrid]:
    grid = ImageGrid(4, 4, (width, height), (width, height), (1.0, 1.0), (0.0, 0.0))
    return np.ones((4, 4), dtype=np.float32), grid


def pop_point(text, text_grid, supports, target: FeatureMap) -> tuple[float, float, float]:
    maps = pop_maps(text, text_grid, supports, target)
    return pop_points(maps, target.grid, ONE_PEAK, 2)[0]


# ----------------------------------------------------------------------------- extractors
def test_dinov3_drops_exactly_cls_and_registers(dino):
    image = texture(H, W, seed=3)
    features, grid = dino.extract(image)
    assert dino.num_registers == 4 and (grid.rows, grid.cols) == (7, 10)
    assert features.shape == (7, 10, 64) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-5)
    pixels, _ = dino.pixel_values(image)
    with torch.no_grad():
        hidden = dino.model(pixel_values=pixels).last_hidden_state[0].numpy()  # (1 + 4 + 70, 64)
    assert hidden.shape[0] == 1 + 4 + 70
    unit = hidden / np.linalg.norm(hidden, axis=-1, keepdims=True)
    np.testing.assert_allclose(features.reshape(70, 64), unit[5:], atol=1e-5)
    # one token off either way (CLS only, or one register too many) would not match
    assert not np.allclose(features[0, 0], unit[4], atol=1e-3)
    assert not np.allclose(features[0, 0], unit[6], atol=1e-3)


def test_dinov3_uses_the_checkpoints_own_normalisation(tmp_path):
    path = build_tiny_dinov3(tmp_path / "d", hidden=32, layers=1, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    extractor = DinoV3Extractor.from_pretrained(str(path), long_side=32)
    assert extractor.mean == (0.5, 0.25, 0.0) and extractor.std == (0.5, 0.25, 2.0)
    grey = np.full((32, 32, 3), 51, dtype=np.uint8)  # 51 / 255 = 0.2
    pixels, _ = extractor.pixel_values(grey)
    np.testing.assert_allclose(
        pixels[0, :, 5, 5].numpy(), [(0.2 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, 0.1], atol=1e-5
    )


def test_feature_grid_maps_to_original_pixels_on_a_non_square_image(dino):
    extractor = with_long_side(dino, 128)
    image = texture(100, 150, seed=4)  # W 150, H 100
    assert multiple_of_patch_size(150, 100, 128, 16) == (128, 80)
    features, grid = extractor.extract(image)
    assert (grid.rows, grid.cols) == (5, 8) and features.shape[:2] == (5, 8)
    assert grid.grid_to_pixel(0, 0) == (0.0, 0.0)
    assert grid.grid_to_pixel(8, 5) == pytest.approx((150.0, 100.0))
    assert grid.cell_center(0, 0) == pytest.approx((8 * 150 / 128, 8 * 100 / 80))
    assert FeatureMap(features, grid).valid.all()
    # repaint the original pixels of one cell: that cell's feature changes most
    for row, col in ((1, 6), (4, 0), (2, 3)):
        x0, y0, x1, y1 = grid.cell_box(row, col)
        changed = image.copy()
        changed[int(np.ceil(y0)) : int(y1), int(np.ceil(x0)) : int(x1)] = texture(100, 150, seed=9)[
            int(np.ceil(y0)) : int(y1), int(np.ceil(x0)) : int(x1)
        ]
        after, _ = extractor.extract(changed)
        change = 1.0 - (features * after).sum(-1)  # (5, 8) cosine distance per cell
        assert np.unravel_index(np.argmax(change), change.shape) == (row, col)


def test_llava_tower_on_the_shipped_tabletop_model_matches_the_mllm_token_grid():
    from part_point_ros.backbones.llava import LlavaAdapter

    extractor = load_extractor("llava-tower", str(TABLETOP))
    adapter = LlavaAdapter.from_pretrained(str(TABLETOP))
    image = texture(120, 200, seed=5)  # landscape: padded to a square, padding rows top and bottom
    features, grid = extractor.extract(image)
    _, token_grid = adapter.prepare(image, adapter.build_prompt("point to the handle"))
    assert grid == token_grid  # the tower's cells are the MLLM's image tokens
    assert features.shape == (20, 20, 128)
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-4)
    valid = FeatureMap(features, grid).valid
    assert not valid[0].any() and not valid[-1].any() and valid[10].all()
    assert extractor.key == "llava-tower:tiny-tabletop-llava"


def test_load_extractor_refuses_unknown_names_and_models(tmp_path):
    with pytest.raises(InputError) as err:
        load_extractor("sift")
    assert "dinov3, llava-tower" in str(err.value)
    from part_point_ros.errors import UnknownBackboneError

    with pytest.raises(UnknownBackboneError) as err:
        load_extractor("dinov3", str(tmp_path / "nothing-here"))
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the similarity
def test_forward_backward_is_the_papers_definition():
    rng = np.random.default_rng(0)
    zs = rng.normal(size=(3, 4, 8)).astype(np.float32)
    zt = rng.normal(size=(2, 5, 8)).astype(np.float32)
    zs /= np.linalg.norm(zs, axis=-1, keepdims=True)
    zt /= np.linalg.norm(zt, axis=-1, keepdims=True)
    valid = np.ones((3, 4), dtype=bool)
    valid[0, :2] = False
    fwd, bwd = forward_backward(zs, (1, 2), zt, valid)
    flat_s = zs.reshape(12, 8)
    for j in range(10):
        t = zt.reshape(10, 8)[j]
        assert fwd.flat[j] == pytest.approx(float(flat_s[6] @ t), abs=1e-6)  # i_s = 1 * 4 + 2
        scores = [float(flat_s[i] @ t) if valid.flat[i] else -np.inf for i in range(12)]
        m = int(np.argmax(scores))
        assert bwd.flat[j] == pytest.approx(float(flat_s[6] @ flat_s[m]), abs=1e-6)


def test_negative_cosines_are_clamped_before_the_product():
    support = np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)  # (1, 2, 2): two support cells
    target = np.array([[[-1.0, 0.0]]], dtype=np.float32)  # (1, 1, 2): opposite of the point's cell
    grid = ImageGrid(1, 2, (32, 16), (32, 16), (1.0, 1.0), (0.0, 0.0))
    s = Support(features=support, grid=grid, point=(4.0, 4.0), image_sha256="")
    fwd, bwd = forward_backward(support, s.cell, target)
    assert fwd[0, 0] == pytest.approx(-1.0) and bwd[0, 0] == pytest.approx(0.0)
    target2 = np.array([[[-0.6, -0.8]]], dtype=np.float32)
    fwd, bwd = forward_backward(np.array([[[1.0, 0.0], [-0.8, 0.6]]], dtype=np.float32), (0, 0), target2)
    assert fwd[0, 0] < 0 and bwd[0, 0] < 0  # both negative: unclamped, their product would be positive
    s2 = Support(np.array([[[1.0, 0.0], [-0.8, 0.6]]], dtype=np.float32), grid, (4.0, 4.0), "")
    assert visual_similarity(s2, target2)[0, 0] == 0.0
    assert visual_similarity(s2, target2, clamp_negative=False)[0, 0] > 0


# ----------------------------------------------------------------------------- fusion
@pytest.mark.parametrize("shift", [(32, 16), (-16, 32), (48, -32), (0, 0)])
def test_uniform_attention_finds_the_shifted_point(dino, shift):
    """Whole-cell shifts: a random ViT's patch embedding is not shift-equivariant below the patch
    size (a trained one is), so only these give the target the support's patch content."""
    dx, dy = shift
    canvas = texture(300, 400, seed=1)
    x0, y0 = 100, 80
    support_image = canvas[y0 : y0 + H, x0 : x0 + W]
    target_image = canvas[y0 + dy : y0 + dy + H, x0 + dx : x0 + dx + W]
    point = (88.0, 56.0)  # centre of support cell (3, 5)
    target = dino.extract(target_image)
    x, y, score = pop_point(*uniform_text(), [support_of(dino, support_image, point)], target)
    expected = (point[0] - dx, point[1] - dy)
    assert np.hypot(x - expected[0], y - expected[1]) <= 16.0, ((x, y), expected)
    assert 0.0 < score <= 1.0


def test_three_supports_multiply(dino):
    canvas = texture(300, 400, seed=2)
    part = (200, 150)  # the same canvas pixel in every image
    placements = [(88, 56), (40, 24), (136, 88)]  # where it lies in each support (cell centres)
    tx0, ty0 = 128, 110  # and in the target: (72, 40), a cell centre too
    supports = []
    for px, py in placements:
        x0, y0 = part[0] - px, part[1] - py
        supports.append(support_of(dino, canvas[y0 : y0 + H, x0 : x0 + W], (float(px), float(py))))
    target = dino.extract(canvas[ty0 : ty0 + H, tx0 : tx0 + W])
    text, text_grid = uniform_text()
    maps = pop_maps(text, text_grid, supports, target)
    singles = [visual_similarity(s, target.features) for s in supports]
    np.testing.assert_allclose(maps.visual, singles[0] * singles[1] * singles[2], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(visual_map(supports, target.features), maps.visual, rtol=1e-6)
    assert maps.factors == 7
    x, y, score = pop_points(maps, target.grid, ONE_PEAK, 2)[0]
    assert np.hypot(x - (part[0] - tx0), y - (part[1] - ty0)) <= 16.0
    assert score == pytest.approx(float(maps.upsampled.max()) ** (1 / 7), rel=1e-5)
    # the product is sharper than any one support: less of the map is above half its peak
    share = [float((m >= 0.5 * m.max()).mean()) for m in (*singles, maps.visual)]
    assert share[-1] <= min(share[:-1])


def test_support_fusion_means_keep_one_supports_weight(dino):
    """``support_fusion``: "geomean" is the K-th root of the paper's product, "mean" the average of the
    supports' maps; both score with 3 factors (text, one forward, one backward) whatever K is, and
    with one support all three are the same map. An unknown fusion is a one-line InputError."""
    canvas = texture(300, 400, seed=2)
    supports = []
    for px, py in [(88, 56), (40, 24), (136, 88)]:
        x0, y0 = 200 - px, 150 - py
        supports.append(support_of(dino, canvas[y0 : y0 + H, x0 : x0 + W], (float(px), float(py))))
    target = dino.extract(canvas[110 : 110 + H, 128 : 128 + W])
    text, text_grid = uniform_text()
    singles = [visual_similarity(s, target.features) for s in supports]
    product = singles[0] * singles[1] * singles[2]
    geo = pop_maps(text, text_grid, supports, target, PopOptions(support_fusion="geomean"))
    mean = pop_maps(text, text_grid, supports, target, PopOptions(support_fusion="mean"))
    np.testing.assert_allclose(geo.visual, np.cbrt(product), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean.visual, (singles[0] + singles[1] + singles[2]) / 3, rtol=1e-5, atol=1e-7)
    assert geo.factors == mean.factors == 3
    for maps in (geo, mean):  # the part is still where every support says
        x, y, score = pop_points(maps, target.grid, ONE_PEAK, 2)[0]
        assert np.hypot(x - 72.0, y - 40.0) <= 16.0
        assert score == pytest.approx(float(maps.upsampled.max()) ** (1 / 3), rel=1e-5)
    one = [visual_map(supports[:1], target.features, fusion=f) for f in ("product", "geomean", "mean")]
    np.testing.assert_allclose(one[1], one[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one[2], one[0], rtol=1e-6)
    with pytest.raises(InputError, match="support_fusion must be one of product, geomean, mean"):
        PopOptions(support_fusion="max")
    with pytest.raises(InputError, match="support_fusion must be one of product, geomean, mean, got 'sum'"):
        visual_map(supports, target.features, fusion="sum")


def gaussian_text(centre: tuple[float, float], sigma: float) -> tuple[np.ndarray, ImageGrid]:
    """S_Text on an 8x8 pad-to-square token grid (LLaVA-like) of the W x H frame, peaked at ``centre``."""
    grid = ImageGrid(8, 8, (W, H), (W, W), (1.0, 1.0), (0.0, (W - H) / 2))
    text = np.zeros((8, 8), dtype=np.float32)
    for r in range(8):
        for c in range(8):
            x, y = grid.cell_center(r, c)
            text[r, c] = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))
    return text, grid


def test_the_attention_prior_selects_the_copy_and_the_features_pinpoint_it(dino):
    """The paper's two-sweaters case: the part appears twice in the target; the visual branch alone
    lights up both copies, the coarse text map's peak is near one copy but off the part: the fused
    point is the part of the copy the text favours, not the text peak."""
    support_image = texture(H, W, seed=1)
    point = (88.0, 56.0)  # centre of support cell (3, 5); its 3x3-cell block is the "part"
    block = support_image[32:80, 64:112]
    target_image = texture(H, W, seed=7).copy()
    target_image[32:80, 0:48] = block  # left copy: the part at (24, 56)
    target_image[32:80, 96:144] = block  # right copy: the part at (120, 56)
    target = dino.extract(target_image)
    support = support_of(dino, support_image, point)
    visual = visual_map([support], target.features)
    left, right = visual[3, 1], visual[3, 7]
    assert min(left, right) > 0.9 * visual.max()  # both copies light up: ambiguous on its own
    for text_peak, part in (((142.0, 84.0), (120.0, 56.0)), ((10.0, 84.0), (24.0, 56.0))):
        text, text_grid = gaussian_text(text_peak, sigma=30.0)
        tx, ty = text_grid.cell_center(*np.unravel_index(np.argmax(text), text.shape))
        assert np.hypot(tx - part[0], ty - part[1]) > 24.0  # the text map alone misses the part
        x, y, _ = pop_point(text, text_grid, [support], target)
        assert np.hypot(x - part[0], y - part[1]) <= 16.0, ((x, y), part)


def test_text_map_is_resampled_through_original_pixels():
    feature_grid = ImageGrid(7, 10, (W, H), (W, H), (1.0, 1.0), (0.0, 0.0))
    # LLaVA-like pad to square: 160 x 160 canvas, the image at y 24..136, 8 x 8 tokens of 20 px
    text_grid = ImageGrid(8, 8, (W, H), (W, W), (1.0, 1.0), (0.0, 24.0))
    ramp = np.zeros((8, 8), dtype=np.float32)
    for r in range(8):
        for c in range(8):
            x, y = text_grid.cell_center(r, c)
            ramp[r, c] = x + 1000 * y  # linear in original pixels: bilinear sampling is exact
    sampled = text_on_feature_grid(ramp, text_grid, feature_grid)
    for r in range(7):
        for c in range(10):
            x, y = feature_grid.cell_center(r, c)
            if 10 <= x <= 150:  # between the outer token centres (edge values are held beyond)
                assert sampled[r, c] == pytest.approx(x + 1000 * y, abs=0.05)
    # a centre crop that cuts the frame: feature cells the MLLM never saw get no text evidence
    crop = ImageGrid(4, 4, (W, H), (80, 80), (1.0, 1.0), (-40.0, -16.0))
    sampled = text_on_feature_grid(np.ones((4, 4), dtype=np.float32), crop, feature_grid)
    assert sampled[:, :2].max() == 0 and sampled[:, -2:].max() == 0 and sampled[3, 5] == 1.0


# ----------------------------------------------------------------------------- the method
@pytest.fixture(scope="module")
def tiny_adapter(tiny_llava_dir):
    from part_point_ros.backbones.llava import LlavaAdapter

    return LlavaAdapter.from_pretrained(str(tiny_llava_dir))


def test_pop_method_over_real_captures(tmp_path, dino, tiny_adapter):
    store = SupportStore(tmp_path)
    store.teach("handle", texture(H, W, seed=1), (88, 56), dino)
    store.teach("handle", texture(96, 128, seed=2), (40, 40), dino)
    handle = store.load("handle", dino)
    heads = [HeadRef(1, 0), HeadRef(2, 1), HeadRef(3, 2), HeadRef(3, 3)]
    method = PopMethod(heads, PeakOptions(subpixel=False), dino, {"the handle": handle})
    assert method.heads == tuple(heads[:3]) and method.max_layer == 3
    image = texture(H, W, seed=8)
    calls = []

    def captures(queries):
        calls.append(list(queries))
        return [tiny_adapter.capture(image, q, method.heads) for q in queries]

    (result,) = method.point_many(image, ["The handle "], captures)
    assert calls == [["The handle "]]
    assert result.method == "pop" and result.upscale == 2
    assert result.heatmap.shape == (14, 20) and result.grid == dino.extract(image).grid
    assert 0 <= result.x <= W - 1 and 0 <= result.y <= H - 1
    assert 0.0 <= result.score <= 1.0 and result.points[0] == (result.x, result.y, result.score)
    assert result.heatmap_on_image().shape == (H, W)
    assert method.describe()["supports"] == {"handle": 2}
    with pytest.raises(InputError) as err:
        method.point_many(image, ["the lid"], captures)
    assert "the handle" in str(err.value)
    assert len(calls) == 1  # the unknown query failed before any forward


def test_pop_method_refuses_supports_of_another_extractor(dino, tmp_path):
    other = DinoV3Extractor.from_pretrained(
        str(build_tiny_dinov3(tmp_path / "other", seed=3, hidden=32, layers=1)), long_side=64
    )
    store = SupportStore(tmp_path / "s")
    handle = store.teach("handle", texture(H, W), (5, 5), other)
    with pytest.raises(InputError) as err:
        PopMethod([HeadRef(1, 0)], ONE_PEAK, dino, handle)
    assert "other" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError):
        PopMethod([], ONE_PEAK, other, handle)
    with pytest.raises(InputError):
        PopOptions(upsample=0)


def test_pop_on_the_synthetic_world_backbone():
    """The shipped tiny-tabletop LLaVA as both the MLLM (attention) and the dense encoder (tower)."""
    from part_point_ros.backbones.llava import LlavaAdapter

    adapter = LlavaAdapter.from_pretrained(str(TABLETOP))
    extractor = LlavaTowerExtractor.from_model(
        adapter.model, adapter.processor.image_processor, str(TABLETOP)
    )
    assert extractor.tower is adapter.model.model.vision_tower  # shared, not loaded twice
    support_image, target_image = texture(120, 160, seed=1), texture(120, 160, seed=2)
    features, grid = extractor.extract(support_image)
    support = Support(features=features, grid=grid, point=(80.0, 60.0), image_sha256="")
    from part_point_ros.grounding.supports import SupportSet

    support_set = SupportSet(name="s", extractor=extractor.describe(), supports=[support])
    method = PopMethod([HeadRef(2, 0), HeadRef(3, 1), HeadRef(3, 2)], ONE_PEAK, extractor, support_set)
    (result,) = method.point_many(
        target_image, ["the handle"], lambda qs: [adapter.capture(target_image, q, method.heads) for q in qs]
    )
    assert result.heatmap.shape == (40, 40) and result.grid.rows == 20
    # the point is on the image, never in the pad-to-square padding
    assert 0 <= result.x <= 159 and 0 <= result.y <= 119
    valid = result.grid.resample_mask(np.ones((120, 160), dtype=bool), 2) > 0
    assert result.heatmap[~valid].max(initial=0.0) == 0.0
