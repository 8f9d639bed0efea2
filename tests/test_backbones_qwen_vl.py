"""Qwen2-VL, Qwen3-VL and Qwen3-VL-MoE adapters on tiny real checkpoints (fp32).

Each family is checked where its adapter could be wrong: the captured attention against the model's
own eager attention (Qwen3-VL: with DeepStack features added to the image tokens after the first
decoder layers), image-prefix reuse against the uncached path (the M-RoPE positions of each family's
own ``get_rope_index``), the image-token grid against the processor's actual resize on non-square
images (Qwen3-VL: 16 px patches, multiples of 32), and truncated loading.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tiny_qwen_vl import BUILDERS, processed_image

from part_point_ros.backbones.qwen2_vl import Qwen2VLAdapter
from part_point_ros.backbones.qwen3_vl import Qwen3VLAdapter
from part_point_ros.backbones.registry import load_backbone
from part_point_ros.errors import HeadMismatchError
from part_point_ros.types import HeadRef

# 4 query heads on 2 KV heads in 4 layers: (L, 0), (L, 1) read KV head 0; (L, 2), (L, 3) KV head 1
HEADS = (HeadRef(0, 0), HeadRef(0, 1), HeadRef(1, 2), HeadRef(2, 1), HeadRef(2, 3), HeadRef(3, 2))
INSTRUCTION = "point to the handle of the red mug"
# different lengths, so that a batch of their suffixes is padded
QUERIES = ("point to the handle of the red mug", "the lid", "where is the blade of the knife on the left")
ADAPTER_OF = {"qwen2_vl": Qwen2VLAdapter, "qwen3_vl": Qwen3VLAdapter, "qwen3_vl_moe": Qwen3VLAdapter}
MODEL_OF = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
}
PAINT = np.array([250, 20, 20], dtype=np.uint8)
BACKGROUND = np.array([40, 160, 90], dtype=np.uint8)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def backbone_dir(kind, tmp_path_factory):
    return BUILDERS[kind](tmp_path_factory.mktemp(kind), seed=3)


@pytest.fixture(scope="module")
def adapter(backbone_dir):
    return load_backbone(str(backbone_dir))


@pytest.fixture(scope="module")
def eager(backbone_dir):
    return load_backbone(str(backbone_dir), attn_implementation="eager")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(150, 260, 3), dtype=np.uint8)  # not square


# ---------------------------------------------------------------------------- loading
def test_registry_picks_the_family_adapter(kind, backbone_dir, adapter):
    assert type(adapter) is ADAPTER_OF[kind]
    assert type(adapter.model).__name__ == MODEL_OF[kind]
    family = "qwen2_vl" if kind == "qwen2_vl" else "qwen3_vl"
    assert adapter.info.family == adapter.pointing_format == family
    info = adapter.info
    assert (info.num_layers, info.num_heads, info.num_kv_heads, info.head_dim) == (4, 4, 2, 16)
    if kind == "qwen3_vl_moe":  # the MoE checkpoint really has sparse expert MLPs
        assert type(adapter.decoder_layers[0].mlp).__name__ == "Qwen3VLMoeTextSparseMoeBlock"
    saved = json.loads((backbone_dir / "processor_config.json").read_text())
    assert saved["processor_class"] == ("Qwen2VLProcessor" if kind == "qwen2_vl" else "Qwen3VLProcessor")
    prompt = adapter.build_prompt(" the lid ")
    assert "<|vision_start|><|image_pad|><|vision_end|>the lid<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # Qwen2-VL's template opens with a default system turn, Qwen3-VL's does not
    assert prompt.startswith("<|im_start|>system") == (kind == "qwen2_vl")


def test_max_layer_loads_fewer_layers_and_captures_the_same(adapter, backbone_dir, image):
    part = load_backbone(str(backbone_dir), max_layer=1)
    assert len(part.decoder_layers) == 2 and len(adapter.decoder_layers) == 4
    assert part.model.config.text_config.num_hidden_layers == 2
    assert part.info == adapter.info  # info keeps the full depth
    n_part, n_full = (sum(p.numel() for p in a.model.parameters()) for a in (part, adapter))
    assert n_part < n_full
    heads = (HeadRef(0, 1), HeadRef(1, 3))
    a = adapter.capture(image, INSTRUCTION, heads)
    b = part.capture(image, INSTRUCTION, heads)
    for name in ("queries", "keys", "values"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=0, rtol=0)
    with pytest.raises(HeadMismatchError, match="max_layer >= 2"):
        part.capture(image, INSTRUCTION, [HeadRef(2, 0)])


def test_generate_answers_with_the_grid_of_its_processor_call(adapter, image):
    """The text method's path: greedy generation (M-RoPE deltas kept across decoding steps) runs and
    returns the grid its answer's coordinates are mapped through; a capture after it is unchanged."""
    before = adapter.capture_many(image, QUERIES[1:], HEADS[:2])[0][1]
    answer, grid = adapter.generate_with_grid(image, INSTRUCTION, max_new_tokens=4)
    assert isinstance(answer, str)
    assert grid == adapter.prepare(image, adapter.build_prompt(INSTRUCTION))[1]
    after = adapter.capture_many(image, QUERIES[1:], HEADS[:2])[0][1]  # generate's rope deltas do not leak
    assert torch.equal(before.queries, after.queries) and torch.equal(before.keys, after.keys)


# ---------------------------------------------------------------------------- exact capture
def test_captured_attention_equals_the_models_eager_attention(eager, image):
    cap = eager.capture(image, INSTRUCTION, HEADS)
    inputs, _ = eager.prepare(image, eager.build_prompt(INSTRUCTION))
    with torch.inference_mode():
        out = eager.model.model(**inputs, output_attentions=True, use_cache=False)
    ids = inputs["input_ids"][0]
    assert cap.text_positions[-1] == ids.shape[0] - 1
    assert torch.equal(cap.image_positions, eager.image_token_positions(ids).cpu())
    assert cap.image_positions.numel() == cap.grid.rows * cap.grid.cols
    model_rows = torch.stack([out.attentions[h.layer][0, h.head] for h in HEADS]).float()  # (k, S, S)

    expected = model_rows[:, -1, cap.image_positions]  # (k, P)
    got = cap.last_token_attention()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (expected.max(dim=-1).values / expected.min(dim=-1).values).min() > 2  # far from uniform

    # every captured query row, recomputed over every key with the causal mask, is the model's row
    logits = torch.einsum("kld,ksd->kls", cap.queries, cap.keys) * cap.scaling  # (k, L, S)
    future = torch.arange(ids.shape[0])[None, :] > cap.text_positions[:, None]  # (L, S): keys after the row
    recomputed = logits.masked_fill(future, float("-inf")).softmax(dim=-1)
    torch.testing.assert_close(recomputed, model_rows[:, cap.text_positions], atol=1e-4, rtol=0)


def test_deepstack_features_are_in_what_is_compared(kind, backbone_dir, eager, image):
    """Qwen3-VL adds DeepStack features to the image tokens after decoder layers 0 and 1 (Qwen2-VL has
    none, checked): zeroing them
    leaves layer 0's capture as it was and changes the deeper ones, so the exactness test above
    compares captures that include them."""
    visual = eager.model.model.visual
    if kind == "qwen2_vl":  # no DeepStack: nothing is added to the image tokens after the first layers
        assert not hasattr(visual, "deepstack_merger_list")
        return
    assert list(visual.deepstack_visual_indexes) == [0, 1] and len(visual.deepstack_merger_list) == 2
    plain = load_backbone(str(backbone_dir), attn_implementation="eager")
    with torch.no_grad():
        for merger in plain.model.model.visual.deepstack_merger_list:
            merger.linear_fc2.weight.zero_()  # the merger's output projection: its features become 0
            merger.linear_fc2.bias.zero_()
    with_ds = eager.capture(image, INSTRUCTION, HEADS)
    without = plain.capture(image, INSTRUCTION, HEADS)
    layer0 = [i for i, h in enumerate(HEADS) if h.layer == 0]
    deeper = [i for i, h in enumerate(HEADS) if h.layer > 0]
    assert torch.equal(with_ds.keys[layer0], without.keys[layer0])
    assert (with_ds.keys[deeper] - without.keys[deeper]).abs().amax(dim=(1, 2)).min() > 1e-3


# ---------------------------------------------------------------------------- image-prefix reuse
def assert_same_capture(got, expected) -> None:
    """The reused path's capture equals the uncached one: positions exactly, Q/K/V to 1e-5 (fp32)."""
    assert got.heads == expected.heads and got.grid == expected.grid
    assert torch.equal(got.image_positions, expected.image_positions)
    assert torch.equal(got.text_positions, expected.text_positions)
    for name in ("queries", "keys", "values"):
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype == torch.float32, name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one_by_one"])
def test_reused_prefix_captures_equal_the_uncached_path(adapter, image, batch):
    expected = [adapter.capture(image, query, HEADS) for query in QUERIES]
    captures, prefix = adapter.capture_many(image, QUERIES, HEADS, batch=batch)
    assert prefix is not None
    assert prefix.length == int(expected[0].image_positions[-1]) + 1  # through the last image token
    assert prefix.depth == 4  # layers 0..3: the deepest head's
    assert len({len(c.text_positions) for c in expected}) == len(QUERIES)  # the suffixes are padded
    for got, want in zip(captures, expected, strict=True):
        assert_same_capture(got, want)
    again = adapter.capture_after_prefix(prefix, QUERIES, HEADS, batch=batch)  # the first one too
    for got, want in zip(again, expected, strict=True):
        assert_same_capture(got, want)


def test_mrope_positions_matter_for_reuse(adapter, image, monkeypatch):
    """The reuse test has teeth: the text after the image does not sit at 1D positions (M-RoPE), and
    suffixes one position off change the capture."""
    ids = adapter.prompt_ids(QUERIES[1], 40)
    inputs, _ = adapter.prepare(image, adapter.build_prompt(QUERIES[1]))
    positions = adapter._position_ids(inputs["input_ids"][0], inputs)
    assert positions.shape == (3, 1, inputs["input_ids"].shape[1])
    assert int(positions[0, 0, -1]) < ids.shape[0] - 1  # the image takes fewer positions than tokens
    expected = adapter.capture(image, QUERIES[1], HEADS)
    _, prefix = adapter.capture_and_prefix(image, QUERIES[0], HEADS)
    original = adapter._position_ids
    monkeypatch.setattr(adapter, "_position_ids", lambda ids, inputs: original(ids, inputs) + 1)
    (shifted,) = adapter.capture_after_prefix(prefix, [QUERIES[1]], HEADS)
    assert (shifted.queries - expected.queries).abs().max() > 1e-3
    with pytest.raises(AssertionError):
        assert_same_capture(shifted, expected)


# ---------------------------------------------------------------------------- grid vs processor
# (257, 129): each side is rounded on its own, so the aspect ratio changes (scale x != scale y)
@pytest.mark.parametrize("size", [(320, 200), (200, 320), (257, 129)], ids=["wide", "tall", "odd"])
def test_marker_lands_in_the_grid_cell_that_sees_it(kind, adapter, size):
    w, h = size
    _, grid = adapter.prepare(np.zeros((h, w, 3), np.uint8), adapter.build_prompt("x"))
    factor = adapter.processor.image_processor.patch_size * 2
    assert factor == (28 if kind == "qwen2_vl" else 32)
    pw, ph = grid.processed_size
    assert pw % factor == 0 and ph % factor == 0 and (pw, ph) != (w, h)
    assert (grid.cols, grid.rows) == (pw // factor, ph // factor)
    cw, ch = grid.cell_size
    rng = np.random.default_rng(5)
    for _ in range(6):
        col, row = int(rng.integers(grid.cols)), int(rng.integers(grid.rows))
        gx, gy = col + rng.uniform(0.3, 0.7), row + rng.uniform(0.3, 0.7)  # well inside the cell
        x, y = grid.grid_to_pixel(gx, gy)  # the original pixel the grid says this cell sees
        assert grid.tokens_seeing(x, y).tolist() == [row * grid.cols + col]
        image = np.broadcast_to(BACKGROUND, (h, w, 3)).copy()
        xi, yi = int(x), int(y)
        image[yi - 1 : yi + 2, xi - 1 : xi + 2] = PAINT  # a 3x3 px marker around (x, y)
        inputs, grid2 = adapter.prepare(image, adapter.build_prompt("x"))
        assert grid2 == grid
        img = processed_image(adapter, inputs)
        assert img.shape[:2] == (ph, pw)
        off = np.abs(img - BACKGROUND / 255.0).sum(axis=-1)  # (ph, pw) how far from the background
        py, px = np.unravel_index(np.argmax(off), off.shape)
        assert off[py, px] > 0.5, (size, row, col)
        assert (int(py // ch), int(px // cw)) == (row, col), (size, (x, y), (px, py))
        # and in original pixels, the marker's processed position maps back next to where it was painted
        bx, by = grid.grid_to_pixel((px + 0.5) / cw, (py + 0.5) / ch)
        assert math.hypot(bx - x, by - y) < 3.0


def test_grid_token_counts(kind, adapter):
    inputs, grid = adapter.prepare(np.zeros((200, 320, 3), np.uint8), adapter.build_prompt("x"))
    if kind == "qwen2_vl":
        # smart_resize(200, 320, 28, max_pixels=48*28*28): (floor(200/beta/28), floor(320/beta/28)) = (5, 8)
        assert (grid.rows, grid.cols, grid.processed_size) == (5, 8, (224, 140))
    else:
        # smart_resize(200, 320, 32, max_pixels=48*32*32): 192 x 320 is too many pixels, so
        # beta = sqrt(200*320 / 49152) and (floor(200/beta/32), floor(320/beta/32)) = (5, 8)
        assert (grid.rows, grid.cols, grid.processed_size) == (5, 8, (256, 160))
    assert len(adapter.image_token_positions(inputs["input_ids"][0])) == 40
