"""The LLaVA family on tiny real checkpoints: the whole field of view by default, nothing loaded that is
never used, LLaVA-NeXT / OneVision anyres grids mapped token by token, refusals in one line."""

from __future__ import annotations

import logging
import math
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_backbones_grid import check_painted_cell
from test_backbones_prefix import assert_same_capture
from tiny_llava_family import build_tiny_llava_next, build_tiny_llava_onevision

from part_point_ros.backbones.llava import trim_vision_tower
from part_point_ros.backbones.llava_next import LlavaNextAdapter, LlavaOnevisionAdapter
from part_point_ros.backbones.registry import REGISTRY, load_backbone
from part_point_ros.backbones.tiny import build_tiny_llava, build_tiny_qwen2_5_vl
from part_point_ros.errors import InputError, UnknownBackboneError
from part_point_ros.types import HeadRef

CAMERA_FRAMES = [(640, 480), (1280, 720)]  # (width, height)
LEFT = np.array([250, 20, 20], dtype=np.uint8)
RIGHT = np.array([20, 20, 250], dtype=np.uint8)
PAINT = np.array([250, 20, 20], dtype=np.uint8)
BACKGROUND = np.array([40, 160, 90], dtype=np.uint8)
# 4 query heads on 2 KV heads, in three layers
HEADS = (HeadRef(0, 0), HeadRef(1, 3), HeadRef(2, 1), HeadRef(2, 2))
QUERIES = ("point to the handle of the red mug", "the lid", "where is the blade of the knife on the left")
HF_LOGGER = "part_point_ros.backbones.hf_adapter"


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    """LLaVA-1.5's processor scaled down: CLIP's shortest edge 84, centre crop 84x84."""
    return build_tiny_llava(tmp_path_factory.mktemp("llava"), image_size=84, seed=3)


@pytest.fixture(scope="module")
def llava(llava_dir):
    return load_backbone(str(llava_dir))


@pytest.fixture(scope="module")
def llava_crop(llava_dir):
    return load_backbone(str(llava_dir), crop=True)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return {
        "llava": build_tiny_llava(tmp_path_factory.mktemp("llava_family"), seed=3),
        "llava_next": build_tiny_llava_next(tmp_path_factory.mktemp("llava_next"), seed=3),
        "llava_onevision": build_tiny_llava_onevision(tmp_path_factory.mktemp("llava_onevision"), seed=3),
    }


@pytest.fixture(scope="module")
def anyres(family_dirs):
    """The anyres adapters, eager attention (the reference the captures are compared with)."""
    return {
        family: load_backbone(str(family_dirs[family]), attn_implementation="eager")
        for family in ("llava_next", "llava_onevision")
    }


def unnormalised(image_processor, pixel_values: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) normalised pixels -> (..., H, W, 3) in [0, 1]."""
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    return (pixel_values.float() * std + mean).movedim(-3, -1).numpy()


def has_colour(pixels: np.ndarray, colour: np.ndarray, tol: float = 0.1) -> bool:
    return bool((np.abs(pixels - colour / 255.0).max(axis=-1) < tol).any())


def edge_bands(w: int, h: int, band: int) -> np.ndarray:
    image = np.broadcast_to(BACKGROUND, (h, w, 3)).copy()
    image[:, :band], image[:, w - band :] = LEFT, RIGHT
    return image


# ----- field of view (LLaVA-1.5) ------------------------------------------------------------------


@pytest.mark.parametrize("frame", CAMERA_FRAMES, ids=lambda f: f"{f[0]}x{f[1]}")
def test_llava_sees_every_pixel_by_default(llava, frame):
    w, h = frame
    _, grid = llava.prepare(np.zeros((h, w, 3), np.uint8), llava.build_prompt("x"))
    # ImageGrid: the frame's corners land inside the processed image, so every pixel between does
    gx0, gy0 = grid.pixel_to_grid(0, 0)
    gx1, gy1 = grid.pixel_to_grid(w, h)
    assert 0 <= gx0 and 0 <= gy0 and gx1 <= grid.cols + 1e-9 and gy1 <= grid.rows + 1e-9
    assert grid.offset[1] > 0 and grid.scale[0] == grid.scale[1]  # padded top and bottom, aspect kept
    assert llava.field_of_view(frame) is None
    # the frame's left and right edge columns reach pixel_values
    band = math.ceil(3 / grid.scale[0])  # 3 processed pixels wide
    inputs, grid = llava.prepare(edge_bands(w, h, band), llava.build_prompt("x"))
    pixels = unnormalised(llava.processor.image_processor, inputs["pixel_values"][0])  # (H, W, 3)
    y = int(h / 2 * grid.scale[1] + grid.offset[1])
    for colour, x in ((LEFT, band / 2), (RIGHT, w - band / 2)):
        assert has_colour(pixels[y, int(x * grid.scale[0] + grid.offset[0])], colour), (frame, x)
    # the padding is LLaVA's: the processor's mean colour
    mean = np.array(llava.processor.image_processor.image_mean)
    assert np.abs(pixels[0, pixels.shape[1] // 2] - mean).max() < 0.01


@pytest.mark.parametrize("frame", CAMERA_FRAMES, ids=lambda f: f"{f[0]}x{f[1]}")
def test_llava_crop_cuts_the_sides_and_says_so(llava_crop, frame):
    w, h = frame
    band = math.ceil(0.1 * w)  # inside the 12.5 % (640x480) / 21.8 % (1280x720) each side the crop drops
    inputs, _ = llava_crop.prepare(edge_bands(w, h, band), llava_crop.build_prompt("x"))
    pixels = unnormalised(llava_crop.processor.image_processor, inputs["pixel_values"][0])
    assert not has_colour(pixels, LEFT) and not has_colour(pixels, RIGHT)
    message = llava_crop.field_of_view(frame)
    lost = {(640, 480): "25.0%", (1280, 720): "43.6%"}[frame]  # 1 - 480/640; 1 - 84 / (1280 * 84 // 720)
    assert message is not None and "\n" not in message and lost in message and "crop=False" in message


@pytest.mark.parametrize("frame", CAMERA_FRAMES, ids=lambda f: f"{f[0]}x{f[1]}")
@pytest.mark.parametrize("crop", [False, True], ids=["pad", "crop"])
def test_llava_grid_is_exact_on_camera_frames(llava, llava_crop, frame, crop):
    check_painted_cell(llava_crop if crop else llava, frame)


def test_field_of_view_is_logged_once_per_frame_size(llava_dir, caplog):
    adapter = load_backbone(str(llava_dir), crop=True)
    image = np.zeros((480, 640, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger=HF_LOGGER):
        adapter.prepare(image, adapter.build_prompt("x"))
        adapter.prepare(image, adapter.build_prompt("y"))
        adapter.field_of_view((640, 480))
        adapter.prepare(np.zeros((96, 96, 3), np.uint8), adapter.build_prompt("x"))  # square: nothing cut
    records = [r for r in caplog.records if r.name == HF_LOGGER]
    assert len(records) == 1 and "25.0% of a 640x480 frame" in records[0].getMessage()


# ----- nothing loaded that is never used ----------------------------------------------------------


def vision_layers(model: torch.nn.Module) -> int:
    return sum(1 for name, _ in model.named_modules() if re.fullmatch(r".*vision_tower.*\.layers\.\d+", name))


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision"])
def test_dropped_parts_change_no_capture(family_dirs, family):
    path = str(family_dirs[family])
    image = np.random.default_rng(7).integers(0, 256, size=(150, 260, 3), dtype=np.uint8)
    lean = load_backbone(path, lm_head=False, max_layer=2)
    whole_model = (
        type(lean)._model_class().from_pretrained(path).eval()
    )  # everything, as transformers loads it
    whole = type(lean)(model=whole_model, processor=lean.processor, info=lean.info)
    assert vision_layers(whole.model) == 2 and vision_layers(lean.model) == 1  # feature layer -2 of 2
    assert not [n for n, _ in lean.model.named_parameters() if "lm_head" in n]
    assert "lm_head.weight" in dict(whole.model.named_parameters()) or whole.model.config.tie_word_embeddings
    a, b = whole.capture(image, QUERIES[0], HEADS), lean.capture(image, QUERIES[0], HEADS)
    assert torch.equal(a.image_positions, b.image_positions) and torch.equal(
        a.text_positions, b.text_positions
    )
    for name in ("queries", "keys", "values"):  # the image tokens' keys carry the vision tower's output
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_without_lm_head_every_other_weight_loads(family_dirs, tmp_path, family):
    """The headless class must still get transformers' renaming of legacy checkpoint keys (Qwen2.5-VL's
    ``model.layers.*`` -> ``model.language_model.layers.*``): every kept weight equals the full load's."""
    path = family_dirs[family] if family == "llava" else build_tiny_qwen2_5_vl(tmp_path / family)
    full = dict(load_backbone(str(path)).model.named_parameters())
    lean = dict(load_backbone(str(path), lm_head=False).model.named_parameters())
    assert set(lean) == set(full) - {"lm_head.weight"} and "lm_head.weight" in full
    for name, param in lean.items():
        assert torch.equal(param, full[name]), name


def test_tied_embeddings_load_with_and_without_the_head(family_dirs):
    path = family_dirs["llava_onevision"]  # Qwen2 text model with tied embeddings, as OneVision-0.5B
    saved = load_file(path / "model.safetensors")
    assert not any("lm_head" in k for k in saved)  # tied: the checkpoint holds the embedding only
    (embedding,) = [v for k, v in saved.items() if k.endswith("embed_tokens.weight")]
    tied = load_backbone(str(path)).model
    assert tied.lm_head.weight.data_ptr() == tied.get_input_embeddings().weight.data_ptr()
    assert torch.equal(tied.get_input_embeddings().weight, embedding)
    headless = load_backbone(str(path), lm_head=False).model
    assert torch.equal(headless.get_input_embeddings().weight, embedding)
    assert not [n for n, _ in headless.named_parameters() if "lm_head" in n]


def test_generation_without_lm_head_is_one_error_line(family_dirs):
    adapter = load_backbone(str(family_dirs["llava"]), lm_head=False)
    image = np.zeros((60, 80, 3), np.uint8)
    with pytest.raises(InputError, match=r"lm_head=False.*load it with lm_head=True") as err:
        adapter.generate(image, "where is the handle")
    assert "\n" not in str(err.value)
    inputs, _ = adapter.prepare(image, adapter.build_prompt("x"))
    with pytest.raises(InputError, match="lm_head=True"):
        adapter.model(**inputs)  # the model's own forward reaches the missing head


def test_loading_reports_only_weights_it_did_not_drop(family_dirs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        for path in family_dirs.values():  # drops decoder layers, a vision layer, the head
            load_backbone(str(path), max_layer=1, lm_head=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    odd = tmp_path / "odd"
    shutil.copytree(family_dirs["llava"], odd)
    weights = load_file(odd / "model.safetensors")
    weights["model.extra.weight"] = torch.zeros(3)
    save_file(weights, odd / "model.safetensors", metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=HF_LOGGER):
        load_backbone(str(odd), max_layer=1, lm_head=False)
    messages = [r.getMessage() for r in caplog.records if r.name == HF_LOGGER]
    assert len(messages) == 1 and "1 checkpoint weight(s) unused (model.extra.weight)" in messages[0]


def test_vision_tower_is_cut_at_the_feature_layer_it_reads():
    from transformers import CLIPVisionConfig, LlavaConfig

    def cut(layer):
        config = LlavaConfig(vision_config=CLIPVisionConfig(num_hidden_layers=24), vision_feature_layer=layer)
        trim_vision_tower(config)
        return config.vision_config.num_hidden_layers, config.vision_feature_layer

    assert cut(-2) == (23, 23)  # LLaVA-1.5: the last CLIP layer is never read
    assert cut(-1) == (24, 24)
    assert cut([-2, -5, 3]) == (23, [23, 20, 3])
    with pytest.raises(UnknownBackboneError, match="outside the 24-layer vision tower"):
        cut(-26)


def test_pixtral_llava_is_refused_before_anything_is_read(tmp_path):
    from transformers import LlavaConfig, MistralConfig, PixtralVisionConfig

    vision = PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    text = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    LlavaConfig(vision_config=vision, text_config=text).save_pretrained(tmp_path)  # config only, no weights
    # a max_layer past the model and the missing weights would each be refused later: this comes first
    with pytest.raises(UnknownBackboneError) as err:
        load_backbone(str(tmp_path), max_layer=99)
    message = str(err.value)
    assert "\n" not in message and "'pixtral' vision tower" in message
    assert "clip_vision_model" in message and "llava_next" in message and "llava_onevision" in message


def test_registry_knows_the_llava_family():
    assert REGISTRY["llava_next"] is LlavaNextAdapter and REGISTRY["llava_onevision"] is LlavaOnevisionAdapter


# ----- LLaVA-NeXT / OneVision: anyres ------------------------------------------------------------


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_captured_attention_equals_models_eager_attention(anyres, family):
    adapter = anyres[family]
    image = np.random.default_rng(7).integers(0, 256, size=(150, 260, 3), dtype=np.uint8)
    cap = adapter.capture(image, QUERIES[0], HEADS)
    inputs, grid = adapter.prepare(image, adapter.build_prompt(QUERIES[0]))
    with torch.inference_mode():
        out = adapter.model.model(**inputs, output_attentions=True, use_cache=False)
    ids = inputs["input_ids"][0]
    every = torch.nonzero(ids == adapter.image_token_id).flatten()
    g = grid.rows
    assert len(every) == len(grid.token_boxes) > g * g  # base and tiles in the prompt
    assert torch.equal(cap.image_positions, every[: g * g])  # the methods read the base, row-major
    assert cap.text_positions[0] == every[-1] + 1 and cap.text_positions[-1] == ids.shape[0] - 1
    expected = torch.stack([out.attentions[h.layer][0, h.head, -1, cap.image_positions] for h in HEADS])
    got = cap.last_token_attention()
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=0)
    assert (expected.max(dim=-1).values / expected.min(dim=-1).values).min() > 2  # far from uniform


def patch_of_each_token(adapter, inputs) -> list[tuple[int, int] | None]:
    """For every image token of the prompt, (image patch, token within it) whose projected vision
    feature the model put there (None: an image_newline), found by matching the model's own packed
    features against each patch's: the order comes from the model, not from our layout code."""
    model = adapter.model.model
    with torch.inference_mode():
        packed = model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
        ).pooler_output[0]  # (N, D), prompt order
        patches = inputs["pixel_values"][0]  # (n_patches, 3, S, S)
        hidden = model.vision_tower(patches, output_hidden_states=True).hidden_states
        selected = hidden[model.config.vision_feature_layer]
        if model.config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]  # CLS dropped
        per_patch = model.multi_modal_projector(selected)  # (n_patches, g*g, D)
    flat = per_patch.reshape(-1, per_patch.shape[-1])  # (n_patches*g*g, D)
    where: list[tuple[int, int] | None] = []
    for feature in packed:
        if torch.equal(feature, model.image_newline.to(feature.dtype)):
            where.append(None)
            continue
        match = torch.nonzero((flat - feature).abs().amax(dim=-1) < 1e-6).flatten()
        assert len(match) == 1, len(match)
        where.append(divmod(int(match[0]), per_patch.shape[1]))
    return where


ANYRES_FRAMES = {"llava_next": [(120, 90), (90, 150)], "llava_onevision": [(120, 90), (70, 130)]}


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_token_boxes_follow_the_models_token_order_and_see_a_marker(anyres, family):
    adapter = anyres[family]
    ip = adapter.processor.image_processor
    vision = adapter.model.config.vision_config
    g, patch = vision.image_size // vision.patch_size, vision.patch_size
    for w, h in ANYRES_FRAMES[family]:
        layout = adapter.layout((w, h))
        kept = (layout.kept_rows[1] - layout.kept_rows[0], layout.kept_cols[1] - layout.kept_cols[0])
        assert layout.out == kept  # not shrunk: every tile token is one patch's feature
        side = 24
        for cx, cy in ((w / 2, h / 2), (side / 2 + 1, side / 2 + 1), (w - side / 2 - 1, h - side / 2 - 1)):
            # textured, so that no two patches (and their features) are the same
            noise = np.random.default_rng(1).integers(-20, 21, size=(h, w, 3))
            image = (BACKGROUND + noise).astype(np.uint8)
            x0, y0 = round(cx - side / 2), round(cy - side / 2)
            image[y0 : y0 + side, x0 : x0 + side] = PAINT
            inputs, grid = adapter.prepare(image, adapter.build_prompt("x"))
            where = patch_of_each_token(adapter, inputs)
            boxes = grid.token_boxes
            assert len(where) == len(boxes)
            assert [k for k, p in enumerate(where) if p is None] == [
                k for k in range(len(boxes)) if np.isnan(boxes[k]).all()
            ]  # newlines where the boxes say
            assert where[: g * g] == [(0, k) for k in range(g * g)]  # the base first, row-major
            pixels = unnormalised(ip, inputs["pixel_values"][0])  # (n_patches, S, S, 3)

            def patch_pixels(k: int, where=where, pixels=pixels) -> np.ndarray:
                p, q = where[k]
                r, c = divmod(q, g)
                return pixels[p, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]  # (P, P, 3)

            seeing = grid.tokens_seeing(cx, cy)
            assert (seeing < g * g).sum() == 1, (w, h, cx, cy)  # one base token
            if layout.tile == g * patch:  # and a tile's, where patches fill the tiles (no seams between them)
                assert (seeing >= g * g).sum() >= 1, (w, h, cx, cy)
            for k in seeing:  # every token whose box holds the marker's centre shows the marker
                assert has_colour(patch_pixels(int(k)), PAINT), (w, h, cx, cy, k)
            # each token's patch is painted where its box overlaps the marker: the fraction of its pixels
            # that are paint matches the fraction of its (unclipped) box the marker covers
            base_cell = (patch * w / layout.tile) * (patch * h / layout.tile)  # original px^2 of one patch
            tile_cell = (patch * w / layout.resized[1]) * (patch * h / layout.resized[0])
            for k, (bx0, by0, bx1, by1) in enumerate(boxes):
                if where[k] is None:
                    continue
                overlap = max(0.0, min(bx1, x0 + side) - max(bx0, x0)) * max(
                    0.0, min(by1, y0 + side) - max(by0, y0)
                )
                expected = overlap / (base_cell if k < g * g else tile_cell)
                painted = (np.abs(patch_pixels(k) - PAINT / 255.0).max(axis=-1) < 0.15).mean()
                assert abs(painted - expected) < 0.2, (w, h, cx, cy, k, painted, expected)


def test_onevision_shrinks_big_frames_and_still_maps_every_token(anyres):
    adapter = anyres["llava_onevision"]
    inputs, grid = adapter.prepare(np.zeros((480, 640, 3), np.uint8), adapter.build_prompt("x"))
    layout = adapter.layout((640, 480))
    assert layout.out[0] < layout.kept_rows[1] - layout.kept_rows[0]  # anyres_max_4: interpolated
    n = int((inputs["input_ids"][0] == adapter.image_token_id).sum())
    assert n == len(grid.token_boxes) == layout.n_tokens
    tiles = grid.token_boxes[grid.rows * grid.cols :].reshape(layout.out[0], layout.out[1] + 1, 4)
    assert np.isnan(tiles[:, -1]).all() and np.isfinite(tiles[:, :-1]).all()
    assert (
        (tiles[:, :-1, 0] >= 0).all() and (tiles[:, :-1, 2] <= 640).all() and (tiles[:, :-1, 3] <= 480).all()
    )
    assert (np.diff(tiles[:, :-1, 0], axis=1) > 0).all() and (np.diff(tiles[:, :-1, 1], axis=0) > 0).all()


def test_onevision_reports_pixels_its_patches_never_see(anyres):
    """SigLIP's 14 px patches cover 56 of the tiny tower's 60 px (27 x 14 = 378 of 384 on the real one):
    the frame's right and bottom strips are seen by no token; paint there reaches no token's patch."""
    adapter = anyres["llava_onevision"]
    w, h = 120, 90
    message = adapter.field_of_view((w, h))
    assert (
        message is not None and "x 0..116, y 0..87" in message
    )  # hand-checked: base 112x84, tiles to 116x87
    image = np.broadcast_to(BACKGROUND, (h, w, 3)).copy()
    image[88:, 117:] = PAINT  # the unseen corner, 1 px inside its edges
    inputs, grid = adapter.prepare(image, adapter.build_prompt("x"))
    assert len(grid.tokens_seeing(118.5, 88.5)) == 0
    vision = adapter.model.config.vision_config
    seen = (vision.image_size // vision.patch_size) * vision.patch_size  # pixels of each image the tokens see
    pixels = unnormalised(adapter.processor.image_processor, inputs["pixel_values"][0])[:, :seen, :seen]
    assert not has_colour(pixels, PAINT, tol=0.05)
    image[40:50, 40:50] = PAINT  # the check can fail: a seen spot is found
    inputs, _ = adapter.prepare(image, adapter.build_prompt("x"))
    pixels = unnormalised(adapter.processor.image_processor, inputs["pixel_values"][0])[:, :seen, :seen]
    assert has_colour(pixels, PAINT, tol=0.05)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_anyres_prefix_reuse_is_exact(anyres, family):
    adapter = anyres[family]
    image = np.random.default_rng(7).integers(0, 256, size=(150, 260, 3), dtype=np.uint8)
    expected = [adapter.capture(image, query, HEADS) for query in QUERIES]
    captures, prefix = adapter.capture_many(image, QUERIES, HEADS)
    assert prefix is not None
    inputs, _ = adapter.prepare(image, adapter.build_prompt(QUERIES[0]))
    every = torch.nonzero(inputs["input_ids"][0] == adapter.image_token_id).flatten()
    assert prefix.length == int(every[-1]) + 1  # every tile's token is in the prefix, not only the base's
    for got, want in zip(captures, expected, strict=True):
        assert_same_capture(got, want)


@pytest.mark.parametrize("frame", CAMERA_FRAMES, ids=lambda f: f"{f[0]}x{f[1]}")
def test_llava_next_base_grid_sees_the_whole_frame(anyres, frame):
    adapter = anyres["llava_next"]
    w, h = frame
    _, grid = adapter.prepare(np.zeros((h, w, 3), np.uint8), adapter.build_prompt("x"))
    assert grid.source.startswith("base image, 4x4 of")
    assert grid.pixel_to_grid(w, h) == pytest.approx((grid.cols, grid.rows))  # squashed: corner to corner
    assert adapter.field_of_view(frame) is None
