"""InternVL3 and Molmo2 adapters on tiny real checkpoints: exact attention capture, the multi-view token
layout (every image token's original-pixel box, checked in the processor's pixels and through the
model), truncated loading, image-prefix reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_internvl_molmo2 import build_tiny_internvl, build_tiny_molmo2

from part_point_ros.backbones.registry import load_backbone
from part_point_ros.errors import HeadMismatchError
from part_point_ros.types import HeadRef

BUILDERS = {"internvl": build_tiny_internvl, "molmo2": build_tiny_molmo2}
# 4 query heads on 2 KV heads, in three of the four layers
HEADS = (HeadRef(0, 0), HeadRef(0, 1), HeadRef(2, 1), HeadRef(2, 3), HeadRef(3, 2), HeadRef(3, 3))
INSTRUCTION = "point to the handle of the red mug"
QUERIES = ("point to the handle of the red mug", "the lid", "where is the blade of the knife on the left")
SIZES = [(320, 200), (200, 320), (96, 96)]  # (width, height): wide, tall, and one tile for InternVL
MARKER = 4  # half size: the marker is a 9x9 block


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def backbone_dir(request, tmp_path_factory):
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param), seed=3)


@pytest.fixture(scope="module")
def adapter(backbone_dir):
    return load_backbone(str(backbone_dir))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(200, 320, 3), dtype=np.uint8)  # not square


# ----------------------------------------------------------------------------- capture


def test_captured_attention_equals_models_eager_attention(backbone_dir, image):
    eager = load_backbone(str(backbone_dir), attn_implementation="eager")
    cap = eager.capture(image, INSTRUCTION, HEADS)
    inputs, grid = eager.prepare(image, eager.build_prompt(INSTRUCTION))
    with torch.inference_mode():
        out = eager.model.model(**inputs, output_attentions=True, use_cache=False)
    ids = inputs["input_ids"][0]
    tokens = eager.processor.tokenizer.convert_ids_to_tokens(ids.tolist())
    # the grid is the last view; the query rows start after the whole image block
    assert cap.image_positions.numel() == grid.rows * grid.cols
    every = torch.nonzero(ids == eager.image_token_id).flatten().cpu()
    assert torch.equal(cap.image_positions, every[-grid.rows * grid.cols :])
    assert cap.text_positions[-1] == ids.shape[0] - 1
    first = int(cap.text_positions[0])
    # InternVL: right after the last image token (as HFAdapter does); Molmo2: after the block's <im_end>
    before, at = {"internvl": ("<IMG_CONTEXT>", "</img>"), "molmo2": ("<im_end>", "point")}[eager.family]
    assert (tokens[first - 1], tokens[first]) == (before, at)

    rows = [out.attentions[h.layer][0, h.head][cap.text_positions] for h in HEADS]
    expected = torch.stack(rows)  # k x (L, S) -> (k, L, S)
    torch.testing.assert_close(cap.model_attention(), expected.float(), atol=1e-4, rtol=0)
    last = expected[:, -1, cap.image_positions]  # (k, P)
    got = cap.last_token_attention()
    torch.testing.assert_close(got, last, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        got / got.sum(-1, keepdim=True), last / last.sum(-1, keepdim=True), atol=1e-6, rtol=1e-3
    )
    # far from uniform: the comparison means something
    assert (last.max(dim=-1).values / last.min(dim=-1).values).min() > 2
    if eager.family == "molmo2":  # why the rows start after <im_end>: the image block attends both ways
        im_end = first - 1
        assert (out.attentions[0][0, :, im_end - 1, im_end] > 0).all()  # <im_col> sees the later <im_end>


def test_sdpa_capture_matches_eager_and_gqa_sharing(backbone_dir, adapter, image):
    sdpa = adapter.capture(image, INSTRUCTION, HEADS)
    eager = load_backbone(str(backbone_dir), attn_implementation="eager").capture(image, INSTRUCTION, HEADS)
    torch.testing.assert_close(sdpa.queries, eager.queries, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa.keys, eager.keys, atol=1e-5, rtol=1e-5)
    assert torch.equal(sdpa.keys[0], sdpa.keys[1])  # L0H0 and L0H1 read KV head 0
    assert not torch.equal(sdpa.keys[2], sdpa.keys[3])  # L2H1 (KV 0) and L2H3 (KV 1) do not
    assert sdpa.scaling == pytest.approx(1 / np.sqrt(16))


def test_max_layer_loads_fewer_layers_and_captures_the_same(backbone_dir, adapter, image):
    part = load_backbone(str(backbone_dir), max_layer=1)
    assert len(part.decoder_layers) == 2 and part.info == adapter.info  # info keeps the full depth
    assert sum(p.numel() for p in part.model.parameters()) < sum(
        p.numel() for p in adapter.model.parameters()
    )
    heads = (HeadRef(0, 1), HeadRef(1, 3))
    a = adapter.capture(image, INSTRUCTION, heads, truncate=False)
    b = part.capture(image, INSTRUCTION, heads)
    for name in ("queries", "keys", "values", "image_positions", "text_positions"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    with pytest.raises(HeadMismatchError, match="max_layer >= 2"):
        part.capture(image, INSTRUCTION, [HeadRef(2, 0)])


# ----------------------------------------------------------------------------- token layout


def unnormalised(adapter, inputs) -> list[np.ndarray]:
    """The processor's views, (H, W, 3) in [0, 1] each: InternVL's tiles then thumbnail; Molmo2's crops
    (the low-resolution one first) rebuilt from their 14-px patches."""
    ip = adapter.processor.image_processor
    mean, std = np.asarray(ip.image_mean), np.asarray(ip.image_std)
    pv = inputs["pixel_values"].float().cpu().numpy()
    if adapter.family == "internvl":
        views = pv.transpose(0, 2, 3, 1)  # (V, 3, T, T) -> (V, T, T, 3)
    else:
        p = ip.patch_size
        side = round(pv.shape[1] ** 0.5)
        # (crops, side*side, p*p*3) -> (crops, side, side, p, p, 3) -> (crops, side, p, side, p, 3) -> images
        views = (
            pv.reshape(-1, side, side, p, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, side * p, side * p, 3)
        )
    return list(views * std + mean)


def tokens_with_marker(adapter, inputs, inputs_marked, threshold: float = 0.02) -> set[int]:
    """Prompt image tokens (in prompt order) whose pixels in the processor's views changed with the marker."""
    changed = [
        np.abs(a - b).max(axis=-1) > threshold
        for a, b in zip(unnormalised(adapter, inputs), unnormalised(adapter, inputs_marked), strict=True)
    ]
    found: set[int] = set()
    if adapter.family == "internvl":
        side = round(adapter.processor.image_seq_length**0.5)
        for v, mask in enumerate(changed):
            cell = mask.shape[0] // side
            for y, x in zip(*np.nonzero(mask), strict=True):  # views in order, tokens row-major in a view
                found.add(v * side * side + (y // cell) * side + x // cell)
    else:
        p = adapter.processor.image_processor.patch_size
        per_side = changed[0].shape[0] // p
        for i, row in enumerate(inputs["image_token_pooling"].cpu().numpy()):  # the processor's own pooling
            for index in row[row >= 0]:
                crop, patch = divmod(int(index), per_side * per_side)
                r, c = divmod(patch, per_side)
                if changed[crop][r * p : (r + 1) * p, c * p : (c + 1) * p].any():
                    found.add(i)
    return found


def view_layout(adapter, inputs) -> tuple[int, int]:
    """(views that see each pixel, side in px of the smallest view): InternVL's tile and thumbnail (one
    view when the frame fits one tile); Molmo2's two views, the low-resolution square the smaller."""
    if adapter.family == "internvl":
        views, side = inputs["pixel_values"].shape[0], inputs["pixel_values"].shape[-1]
        return (2 if views > 1 else 1), side
    return 2, adapter.processor.image_processor.size["height"]


def marker_points(grid, n_views: int, view_side: int, count: int = 3) -> list[tuple[int, int]]:
    """Pixels whose 9x9 marker, with the resizes' spread, stays inside one token of ``n_views`` views."""
    w, h = grid.orig_size
    spread = MARKER + 2 * max(w, h) / view_side + 2  # the marker, resize kernels of 2 source px per target px
    points = []
    for y in range(MARKER, h - MARKER, 3):
        for x in range(MARKER, w - MARKER, 3):
            seeing = grid.tokens_seeing(x + 0.5, y + 0.5)
            boxes = grid.token_boxes[seeing]
            room = np.minimum.reduce([x - boxes[:, 0], boxes[:, 2] - x, y - boxes[:, 1], boxes[:, 3] - y])
            if len(seeing) == n_views and room.min() >= spread:
                points.append((x, y))
    assert len(points) >= count, f"no marker fits the {w}x{h} frame's tokens"
    return [points[i] for i in np.linspace(0, len(points) - 1, count).astype(int)]


def with_marker(image: np.ndarray, x: int, y: int) -> np.ndarray:
    marked = image.copy()
    marked[y - MARKER : y + MARKER + 1, x - MARKER : x + MARKER + 1] = 0  # black on a mid-grey background
    return marked


@pytest.mark.parametrize("size", SIZES)
def test_marker_pixel_maps_to_the_tokens_that_see_it(adapter, size):
    w, h = size
    background = np.random.default_rng(1).integers(100, 160, size=(h, w, 3), dtype=np.uint8)
    prompt = adapter.build_prompt("x")
    inputs, grid = adapter.prepare(background, prompt)
    n_views, view_side = view_layout(adapter, inputs)
    assert len(grid.token_boxes) == int((inputs["input_ids"][0] == adapter.image_token_id).sum())
    assert adapter.field_of_view(size) is None  # every pixel reaches the model: no crop, no pad
    # the grid the methods read is the last view, and its cells are those tokens' boxes
    last = grid.token_boxes[-grid.rows * grid.cols :]
    cells = np.array([grid.cell_box(r, c) for r in range(grid.rows) for c in range(grid.cols)])
    np.testing.assert_allclose(np.minimum(last, [[w, h, w, h]]), cells, atol=1e-9)
    for x, y in marker_points(grid, n_views, view_side):
        inputs_marked, _ = adapter.prepare(with_marker(background, x, y), prompt)
        seeing = set(grid.tokens_seeing(x + 0.5, y + 0.5).tolist())
        assert len(seeing) == n_views  # one token in each view
        assert tokens_with_marker(adapter, inputs, inputs_marked) == seeing, (size, x, y)


def local_image_features(adapter, inputs, monkeypatch) -> torch.Tensor:
    """(N, hidden) every image token's input features, in prompt order, from the vision tower's patch
    embeddings (no ViT layer mixes patches): a token then depends on its own pixels only."""
    model = adapter.model.model
    with torch.inference_mode():
        if adapter.family == "internvl":
            out = model.get_image_features(  # layer 0 (falsy) would not switch hidden states on by itself
                inputs["pixel_values"], vision_feature_layer=0, output_hidden_states=True
            )
            return out.pooler_output.flatten(0, 1)  # (views, tokens, hidden) -> (N, hidden)
        embeddings = -(len(model.vision_tower.layers) + 1)  # hidden_states[0]: before any layer
        monkeypatch.setattr(model.config.adapter_config, "vision_feature_layer", [embeddings, embeddings])
        out = model.get_image_features(
            inputs["pixel_values"], inputs["image_token_pooling"], inputs["image_grids"]
        )
        return torch.cat(out.pooler_output)


def test_the_model_places_each_view_token_where_its_box_says(adapter, monkeypatch):
    """Through the model's own pixel shuffle (InternVL) / pooling (Molmo2): a marker changes exactly the
    image tokens that ``tokens_seeing`` names, in prompt order."""
    w, h = 320, 200
    background = np.random.default_rng(2).integers(100, 160, size=(h, w, 3), dtype=np.uint8)
    prompt = adapter.build_prompt("x")
    inputs, grid = adapter.prepare(background, prompt)
    base = local_image_features(adapter, inputs, monkeypatch)
    assert base.shape[0] == len(grid.token_boxes)
    n_views, view_side = view_layout(adapter, inputs)
    for x, y in marker_points(grid, n_views, view_side, count=8):
        marked, _ = adapter.prepare(with_marker(background, x, y), prompt)
        changed = (local_image_features(adapter, marked, monkeypatch) - base).abs().amax(dim=-1) > 1e-6
        assert set(torch.nonzero(changed).flatten().tolist()) == set(
            grid.tokens_seeing(x + 0.5, y + 0.5).tolist()
        )


# ----------------------------------------------------------------------------- image-prefix reuse


def assert_same_capture(got, expected) -> None:
    assert got.heads == expected.heads and got.grid == expected.grid
    assert torch.equal(got.image_positions, expected.image_positions)
    assert torch.equal(got.text_positions, expected.text_positions)
    for name in ("queries", "keys", "values"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=1e-5, rtol=0)


def test_reused_prefix_captures_equal_the_uncached_path(adapter, image):
    expected = [adapter.capture(image, query, HEADS) for query in QUERIES]
    captures, prefix = adapter.capture_many(image, QUERIES, HEADS, batch=True)
    assert prefix is not None
    assert prefix.length == int(expected[0].text_positions[0])  # the prefix holds the whole image block
    assert prefix.depth == 4
    for got, want in zip(captures, expected, strict=True):
        assert_same_capture(got, want)
    again = adapter.capture_after_prefix(prefix, QUERIES, HEADS, batch=False)
    for got, want in zip(again, expected, strict=True):
        assert_same_capture(got, want)


def test_molmo2_prompt_ids_need_the_crop_layout(tmp_path):
    adapter = load_backbone(str(build_tiny_molmo2(tmp_path / "m", seed=1)))
    picture = np.zeros((120, 90, 3), dtype=np.uint8)
    inputs, _ = adapter.prepare(picture, adapter.build_prompt(INSTRUCTION))
    ids = inputs["input_ids"][0]
    assert torch.equal(adapter.prompt_ids_for_grids(INSTRUCTION, inputs["image_grids"]), ids)
    with pytest.raises(ValueError, match="crop layout"):
        adapter.prompt_ids(INSTRUCTION, int((ids == adapter.image_token_id).sum()))


def test_molmo2_torch_image_processor_equals_torchvisions(tmp_path):
    """Where torchvision is installed: the stock processor and the torch-only one give the same tensors."""
    pytest.importorskip(
        "torchvision", reason="the stock Molmo2 image processor this compares against needs torchvision"
    )
    from PIL import Image
    from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor

    from part_point_ros.backbones.molmo2 import molmo2_image_processor_class

    settings = {"size": {"height": 70, "width": 70}, "max_crops": 6, "overlap_margins": [1, 1]}
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 256, (200, 320, 3), dtype=np.uint8))
    ours = molmo2_image_processor_class()(**settings)(images=[picture], return_tensors="pt")
    stock = Molmo2ImageProcessor(**settings)(images=[picture], return_tensors="pt")
    for key in stock:
        torch.testing.assert_close(ours[key], stock[key], atol=1e-6, rtol=0)
