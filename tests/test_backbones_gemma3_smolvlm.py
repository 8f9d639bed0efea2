"""Gemma 3 and SmolVLM / Idefics3 on tiny real checkpoints: the captured attention is the model's own
(sliding windows, Gemma's softmax scale, Gemma 2's soft-capping), the grids and token boxes map to the
original pixels the processor showed each token, truncated loading, prefix reuse."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from tiny_gemma3_smolvlm import build_tiny_gemma3, build_tiny_smolvlm

from part_point_ros.backbones.base import Capture
from part_point_ros.backbones.capture import capture_qkv
from part_point_ros.backbones.hf_adapter import HFAdapter
from part_point_ros.backbones.registry import load_backbone
from part_point_ros.backbones.smolvlm import SmolVLMAdapter
from part_point_ros.types import HeadRef, ImageGrid

INSTRUCTION = "point to the handle of the red mug"
QUERIES = (INSTRUCTION, "the lid", "where is the blade of the knife on the left")
# 4 query heads on 2 KV heads; tiny Gemma 3 layers: 0 sliding, 1 full, 2 sliding, 3 full
HEADS = (HeadRef(0, 0), HeadRef(0, 3), HeadRef(1, 1), HeadRef(2, 2), HeadRef(3, 3))
WINDOW = 16  # the tiny Gemma 3's sliding window: shorter than its prompts (16 image tokens + template)
PAINT = np.array([250, 20, 20], dtype=np.uint8)
BACKGROUND = np.array([40, 160, 90], dtype=np.uint8)
GRID_2X2 = ImageGrid(
    rows=2, cols=2, orig_size=(8, 8), processed_size=(8, 8), scale=(1.0, 1.0), offset=(0.0, 0.0)
)


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    return build_tiny_gemma3(tmp_path_factory.mktemp("gemma3"), seed=3, sliding_window=WINDOW)


@pytest.fixture(scope="module")
def gemma3(gemma3_dir):
    return load_backbone(str(gemma3_dir), attn_implementation="eager")


@pytest.fixture(scope="module", params=["smolvlm", "idefics3"])
def smol_dir(request, tmp_path_factory):
    return build_tiny_smolvlm(tmp_path_factory.mktemp(request.param), model_type=request.param, seed=3)


@pytest.fixture(scope="module")
def smol(smol_dir):
    return load_backbone(str(smol_dir), attn_implementation="eager")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(150, 260, 3), dtype=np.uint8)  # not square


def eager_rows(adapter, image: np.ndarray, cap: Capture) -> torch.Tensor:
    """(k, L, S) the model's own eager attention of the captured heads at the captured query rows."""
    inputs, _ = adapter.prepare(image, adapter.build_prompt(INSTRUCTION))
    with torch.inference_mode():
        out = adapter.model.model(**inputs, output_attentions=True, use_cache=False)
    return torch.stack([out.attentions[h.layer][0, h.head][cap.text_positions] for h in cap.heads]).float()


def assert_model_attention(cap: Capture, expected: torch.Tensor) -> None:
    torch.testing.assert_close(cap.model_attention(), expected, atol=1e-4, rtol=0)
    got = cap.last_token_attention()
    assert got.shape == (len(cap.heads), cap.grid.rows * cap.grid.cols)
    torch.testing.assert_close(got, expected[:, -1, cap.image_positions], atol=1e-4, rtol=0)


# ----- Gemma 3 -----------------------------------------------------------------------------------------


def test_gemma3_capture_is_the_models_attention_on_sliding_and_full_layers(gemma3, image):
    cap = gemma3.capture(image, INSTRUCTION, HEADS, truncate=False)
    sliding = [gemma3.model.config.text_config.layer_types[h.layer] == "sliding_attention" for h in HEADS]
    assert cap.windows == tuple(WINDOW if s else None for s in sliding)
    assert cap.softcaps == ()
    assert cap.scaling == pytest.approx(24**-0.5)  # query_pre_attn_scalar, not 1 / sqrt(head_dim = 16)
    expected = eager_rows(gemma3, image, cap)
    assert_model_attention(cap, expected)
    # the window really cuts the image: the last token sees some image tokens on a sliding layer, not all
    last = expected[:, -1, cap.image_positions]
    for row, is_sliding in zip(last, sliding, strict=True):
        assert (row == 0).any() == is_sliding and (row > 0).any()
    # the recomputation needs the window and the scale: without either it is not the model's
    wrong_window = dataclasses.replace(cap, windows=())
    assert (wrong_window.model_attention() - expected).abs().max() > 0.05
    wrong_scale = dataclasses.replace(cap, scaling=16**-0.5)
    assert (wrong_scale.model_attention() - expected).abs().max() > 1e-3


def test_gemma3_sdpa_capture_equals_eager_capture(gemma3_dir, gemma3, image):
    sdpa = load_backbone(str(gemma3_dir)).capture(image, INSTRUCTION, HEADS)
    eager = gemma3.capture(image, INSTRUCTION, HEADS)
    for name in ("queries", "keys", "values"):
        torch.testing.assert_close(getattr(sdpa, name), getattr(eager, name), atol=1e-5, rtol=0)
    assert sdpa.windows == eager.windows and sdpa.scaling == eager.scaling
    torch.testing.assert_close(sdpa.last_token_attention(), eager.last_token_attention(), atol=1e-5, rtol=0)


def test_gemma3_does_not_apply_its_configs_attention_softcapping(tmp_path, image):
    """Gemma3TextConfig has ``attn_logit_softcapping`` but Gemma 3's attention never applies it: the
    capture records what the layers pass, so none is applied, and the model's attention is matched."""
    adapter = load_backbone(
        str(build_tiny_gemma3(tmp_path, seed=3, attn_logit_softcapping=0.5)), attn_implementation="eager"
    )
    assert adapter.model.config.text_config.attn_logit_softcapping == 0.5
    cap = adapter.capture(image, INSTRUCTION, HEADS)
    assert cap.softcaps == ()
    expected = eager_rows(adapter, image, cap)
    assert_model_attention(cap, expected)
    capped = dataclasses.replace(cap, softcaps=(0.5,) * len(HEADS))
    assert (capped.model_attention() - expected).abs().max() > 0.05


def test_gemma2_softcapping_and_window_recomputation_is_exact():
    """Gemma 2's attention soft-caps its logits (and slides on alternate layers): the captured rows of
    every position, recomputed, equal its eager attention; without the cap or the window they do not."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=5,
        attn_logit_softcapping=2.0, layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Gemma2Model(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 1:
                param.normal_(std=0.3)  # logits well past the cap of 2
    ids = torch.randint(0, 64, (1, 14), generator=torch.Generator().manual_seed(1))
    heads = (HeadRef(0, 1), HeadRef(1, 2), HeadRef(1, 3))
    rows = torch.arange(14)
    qkv = capture_qkv(lambda: model(input_ids=ids), [layer.self_attn for layer in model.layers], heads, rows,
                      truncate=False)  # fmt: skip
    assert qkv.windows == (5, None, None) and qkv.softcaps == (2.0, 2.0, 2.0)
    cap = Capture(
        heads=heads, queries=qkv.queries, keys=qkv.keys, values=qkv.values, image_positions=torch.arange(4),
        text_positions=rows, scaling=qkv.scaling, grid=GRID_2X2, windows=qkv.windows, softcaps=qkv.softcaps,
    )  # fmt: skip
    with torch.inference_mode():
        out = model(input_ids=ids, output_attentions=True)
    expected = torch.stack([out.attentions[h.layer][0, h.head] for h in heads])  # (k, 14, 14)
    torch.testing.assert_close(cap.model_attention(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(cap.last_token_attention(), expected[:, -1, :4], atol=1e-5, rtol=0)
    assert (dataclasses.replace(cap, softcaps=()).model_attention() - expected).abs().max() > 0.05
    assert (dataclasses.replace(cap, windows=()).model_attention() - expected).abs().max() > 0.05


def test_gemma3_prompt_is_the_chat_templates_with_one_bos(gemma3, image):
    from PIL import Image

    inputs, grid = gemma3.prepare(image, gemma3.build_prompt(INSTRUCTION))
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(image)},
                                             {"type": "text", "text": INSTRUCTION}]}]  # fmt: skip
    official = gemma3.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ids = inputs["input_ids"][0]
    assert torch.equal(ids, official["input_ids"][0].to(ids.device))
    bos = gemma3.processor.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1] != bos
    assert len(gemma3.image_token_positions(ids)) == grid.rows * grid.cols == 16


@pytest.mark.parametrize("size", [(260, 150), (90, 200)])
def test_gemma3_marker_lands_in_the_token_that_sees_it(gemma3, size):
    """The processor squeezes the whole frame to a square (aspect ratio not kept): a marker in the
    middle of a token's box is brightest in that token's cell of the processed image."""
    w, h = size
    _, grid = gemma3.prepare(np.zeros((h, w, 3), np.uint8), gemma3.build_prompt("x"))
    assert grid.scale == pytest.approx((64 / w, 64 / h)) and grid.offset == (0.0, 0.0)
    for row, col in [(0, 0), (1, 2), (3, 3)]:
        x0, y0, x1, y1 = grid.cell_box(row, col)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        inputs, _ = gemma3.prepare(painted(size, cx, cy), gemma3.build_prompt("x"))
        frames = unnormalised(gemma3, inputs["pixel_values"])  # (1, 3, 64, 64) -> (1, 64, 64, 3)
        hottest = int(np.argmax(token_contrast(frames, 4)))
        assert grid.tokens_seeing(cx, cy).tolist() == [hottest] == [row * 4 + col]


def test_gemma3_max_layer_truncates_layer_types_and_captures_the_same(gemma3_dir, gemma3, image):
    part = load_backbone(str(gemma3_dir), max_layer=2, attn_implementation="eager")
    assert len(part.decoder_layers) == 3
    types = gemma3.model.config.text_config.layer_types
    assert part.model.config.text_config.layer_types == types[:3]
    heads = (HeadRef(0, 1), HeadRef(1, 3), HeadRef(2, 0))
    a, b = gemma3.capture(image, INSTRUCTION, heads), part.capture(image, INSTRUCTION, heads)
    for name in ("queries", "keys", "values"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=0, rtol=0)
    assert a.windows == b.windows == (WINDOW, None, WINDOW)


def test_gemma3_prefix_is_cleanly_not_reused(gemma3, image):
    ids = gemma3.prepare(image, gemma3.build_prompt(INSTRUCTION))[0]["input_ids"][0]
    assert HFAdapter._reusable_prefix_length(gemma3, INSTRUCTION, ids) is None  # sliding layers: refused
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        captures, prefix = gemma3.capture_many(image, QUERIES, HEADS)
    assert prefix is None
    for got, query in zip(captures, QUERIES, strict=True):
        want = gemma3.capture(image, query, HEADS)
        assert torch.equal(got.keys, want.keys) and torch.equal(got.queries, want.queries)
        assert got.windows == want.windows


# ----- SmolVLM / Idefics3 ------------------------------------------------------------------------------


def test_smolvlm_capture_is_the_models_attention(smol, image):
    assert isinstance(smol, SmolVLMAdapter)
    assert smol.decoder_layers is smol.model.model.text_model.layers
    cap = smol.capture(image, INSTRUCTION, HEADS, truncate=False)
    assert cap.windows == () and cap.softcaps == () and cap.scaling == pytest.approx(16**-0.5)
    ids = smol.prepare(image, smol.build_prompt(INSTRUCTION))[0]["input_ids"][0]
    every = torch.nonzero(ids == smol.image_token_id).flatten().cpu()
    assert every.numel() > 16 and torch.equal(cap.image_positions, every[-16:])  # the global image, last
    assert_model_attention(cap, eager_rows(smol, image, cap))


@pytest.mark.parametrize("size", [(300, 100), (100, 260), (170, 170)])
def test_smolvlm_every_image_token_box_is_what_the_token_sees(smol, size):
    """Markers in the middle of chosen tokens' boxes: among the crops' tokens and among the global image's,
    the one whose processed cell (un-normalised ``pixel_values``) shows the marker most is the one
    ``tokens_seeing`` names: exactly one crop token and one global token."""
    w, h = size
    _, grid = smol.prepare(np.zeros((h, w, 3), np.uint8), smol.build_prompt("x"))
    boxes = grid.token_boxes
    n_crops = boxes.shape[0] // 16 - 1
    assert n_crops > 1 and boxes.shape == ((n_crops + 1) * 16, 4)
    assert np.allclose(boxes[-16:], [grid.cell_box(r, c) for r in range(4) for c in range(4)])
    for token in (0, 5, n_crops * 16 - 1):  # crop tokens: first crop's corner, inside, last crop's corner
        x0, y0, x1, y1 = boxes[token]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        inputs, _ = smol.prepare(painted(size, cx, cy), smol.build_prompt("x"))
        frames = unnormalised(smol, inputs["pixel_values"][0])  # (crops + 1, M, M, 3)
        contrast = token_contrast(frames, 4)  # (tokens,) in prompt order
        seeing = grid.tokens_seeing(cx, cy)
        crops_hot, global_hot = int(np.argmax(contrast[:-16])), n_crops * 16 + int(np.argmax(contrast[-16:]))
        assert seeing.tolist() == [token, global_hot] == [crops_hot, global_hot]


def test_smolvlm_without_splitting_the_global_image_is_every_token(smol, monkeypatch):
    monkeypatch.setattr(smol.processor.image_processor, "do_image_splitting", False)
    inputs, grid = smol.prepare(np.zeros((100, 300, 3), np.uint8), smol.build_prompt("x"))
    assert inputs["pixel_values"].shape[1] == 1 and grid.token_boxes.shape == (16, 4)
    assert "no crops" in grid.source


def test_smolvlm_max_layer_captures_the_same(smol_dir, smol, image):
    part = load_backbone(str(smol_dir), max_layer=1, attn_implementation="eager")
    assert len(part.decoder_layers) == 2
    heads = (HeadRef(0, 1), HeadRef(1, 3))
    a, b = smol.capture(image, INSTRUCTION, heads), part.capture(image, INSTRUCTION, heads)
    for name in ("queries", "keys", "values"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=0, rtol=0)


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one_by_one"])
def test_smolvlm_reused_prefix_captures_equal_the_uncached_path(smol, image, batch):
    expected = [smol.capture(image, query, HEADS) for query in QUERIES]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the prefix is reused, not refused with a warning
        captures, prefix = smol.capture_many(image, QUERIES, HEADS, batch=batch)
    assert prefix is not None and prefix.length == int(expected[0].image_positions[-1]) + 1
    assert "pixel_attention_mask" not in prefix.image_inputs
    for got, want in zip(captures, expected, strict=True):
        assert torch.equal(got.text_positions, want.text_positions)
        assert torch.equal(got.image_positions, want.image_positions)
        for name in ("queries", "keys", "values"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-5, rtol=0)
    # the suffixes really ran alone: one position off changes them
    original = smol._position_ids
    shifted_positions = lambda ids, inputs: original(ids, inputs) + 1  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(smol, "_position_ids", shifted_positions)
        (shifted,) = smol.capture_after_prefix(prefix, [QUERIES[1]], HEADS)
    assert (shifted.queries - expected[1].queries).abs().max() > 1e-3


def test_smolvlm_instruction_before_the_image_reuses_nothing(smol_dir, image, monkeypatch):
    adapter = load_backbone(str(smol_dir))
    monkeypatch.setattr(
        adapter, "build_prompt", lambda text: f"<|im_start|>User: {text} <image><end_of_utterance>"
    )
    expected = [adapter.capture(image, query, HEADS) for query in QUERIES]
    captures, prefix = adapter.capture_many(image, QUERIES, HEADS)
    assert prefix is None
    for got, want in zip(captures, expected, strict=True):
        assert torch.equal(got.keys, want.keys) and torch.equal(got.text_positions, want.text_positions)


# ----- helpers ---------------------------------------------------------------------------------------------


def painted(size: tuple[int, int], cx: float, cy: float, half: int = 4) -> np.ndarray:
    """(h, w, 3) uint8 background with a (2·half)² marker centred on original pixel (cx, cy)."""
    w, h = size
    image = np.broadcast_to(BACKGROUND, (h, w, 3)).copy()
    x, y = int(round(cx)), int(round(cy))
    image[max(y - half, 0) : y + half, max(x - half, 0) : x + half] = PAINT
    return image


def unnormalised(adapter, frames: torch.Tensor) -> np.ndarray:
    """(F, 3, M, M) processor frames -> (F, M, M, 3) in [0, 1]."""
    ip = adapter.processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return (frames.float().cpu() * std + mean).permute(0, 2, 3, 1).numpy()  # (F, 3, M, M) -> (F, M, M, 3)


def token_contrast(frames: np.ndarray, per_side: int) -> np.ndarray:
    """(F·per_side²,) per image token (frame by frame, row-major): how much of the marker's colour its
    cell of the processed frame shows (mean over the cell of the distance from the background)."""
    f, m = frames.shape[:2]
    cell = m // per_side
    dist = np.abs(frames - BACKGROUND / 255.0).sum(-1)  # (F, M, M)
    # (F, M, M) -> (F, n, cell, n, cell) -> mean over each cell -> (F·n²,)
    return dist.reshape(f, per_side, cell, per_side, cell).mean(axis=(2, 4)).reshape(-1)
