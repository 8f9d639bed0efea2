"""Image-prefix reuse on tiny real LLaVA / Qwen2.5-VL checkpoints: the captures equal the uncached path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from part_point_ros.backbones.prefix import expand_image_token, image_prefix_length, suffix_batch
from part_point_ros.backbones.registry import load_backbone
from part_point_ros.backbones.tiny import build_tiny_llava, build_tiny_qwen2_5_vl
from part_point_ros.errors import HeadMismatchError
from part_point_ros.types import HeadRef

BUILDERS = {"llava": build_tiny_llava, "qwen2_5_vl": build_tiny_qwen2_5_vl}
# 4 query heads on 2 KV heads, in three layers; the deepest is layer 2 of 4
HEADS = (HeadRef(0, 1), HeadRef(2, 3), HeadRef(1, 0), HeadRef(2, 0))
# different lengths, so that a batch of their suffixes is padded
QUERIES = ("point to the handle of the red mug", "the lid", "where is the blade of the knife on the left")


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def adapter(request, tmp_path_factory):
    return load_backbone(str(BUILDERS[request.param](tmp_path_factory.mktemp(request.param), seed=3)))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(150, 260, 3), dtype=np.uint8)  # not square


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
    expected = [adapter.capture(image, query, HEADS, truncate=True) for query in QUERIES]
    captures, prefix = adapter.capture_many(image, QUERIES, HEADS, batch=batch)
    assert prefix is not None
    assert prefix.length == int(expected[0].image_positions[-1]) + 1  # through the last image token
    assert prefix.depth == 3  # layers 0..2: the deepest head's
    assert len({len(c.text_positions) for c in expected}) == len(QUERIES)  # the suffixes are padded
    for got, want in zip(captures, expected, strict=True):
        assert_same_capture(got, want)
    # the same frame again: every query, the first one included, runs only its suffix
    again = adapter.capture_after_prefix(prefix, QUERIES, HEADS, batch=batch)
    for got, want in zip(again, expected, strict=True):
        assert_same_capture(got, want)


def test_a_position_off_by_one_is_caught(adapter, image, monkeypatch):
    """The exactness test has teeth: suffixes one position off (M-RoPE too) change the capture."""
    expected = adapter.capture(image, QUERIES[1], HEADS)
    _, prefix = adapter.capture_and_prefix(image, QUERIES[0], HEADS)
    original = adapter._position_ids
    monkeypatch.setattr(adapter, "_position_ids", lambda ids, inputs: original(ids, inputs) + 1)
    (shifted,) = adapter.capture_after_prefix(prefix, [QUERIES[1]], HEADS)
    n = prefix.length
    assert (shifted.queries - expected.queries).abs().max() > 1e-3
    assert (shifted.keys[:, n:] - expected.keys[:, n:]).abs().max() > 1e-3
    with pytest.raises(AssertionError):
        assert_same_capture(shifted, expected)


def test_suffix_pass_runs_only_the_heads_layers_on_the_suffix(adapter, image):
    _, prefix = adapter.capture_and_prefix(image, QUERIES[0], HEADS)
    tokens: list[int] = []
    seen = [0] * len(adapter.decoder_layers)
    handles = []
    for i, layer in enumerate(adapter.decoder_layers):

        def hook(_module, args, kwargs, i=i):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[i] += 1
            tokens.append(hidden.shape[1])

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        adapter.capture_after_prefix(prefix, QUERIES, HEADS, batch=True)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [1, 1, 1, 0]  # one batched forward; layer 3 never runs
    longest = max(len(adapter.prompt_ids(q, prefix.image_positions.numel())) for q in QUERIES)
    assert set(tokens) == {longest - prefix.length}  # the suffixes only, padded to the longest


def test_prefix_is_not_changed_by_its_use(adapter, image):
    _, prefix = adapter.capture_and_prefix(image, QUERIES[0], HEADS)
    before = [(k.clone(), v.clone()) for k, v in prefix.past]
    adapter.capture_after_prefix(prefix, QUERIES, HEADS, batch=True)
    adapter.capture_after_prefix(prefix, QUERIES[:1], HEADS, batch=False)
    for (k, v), (k0, v0) in zip(prefix.past, before, strict=True):
        assert k.shape[2] == v.shape[2] == prefix.length
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_heads_deeper_than_the_prefix_are_refused(adapter, image):
    _, prefix = adapter.capture_and_prefix(image, QUERIES[0], [HeadRef(1, 0)])
    with pytest.raises(HeadMismatchError, match="past the prefix's cache"):
        adapter.capture_after_prefix(prefix, QUERIES, [HeadRef(2, 0)])


def test_instruction_before_the_image_reuses_nothing(tmp_path, image, monkeypatch):
    """A template with the query first: no prefix holds the image, so every query runs its whole prompt."""
    adapter = load_backbone(str(build_tiny_llava(tmp_path / "llava", seed=3)))
    monkeypatch.setattr(adapter, "build_prompt", lambda text: f"USER: {text.strip()}\n<image> ASSISTANT:")
    expected = [adapter.capture(image, query, HEADS) for query in QUERIES]
    captures, prefix = adapter.capture_many(image, QUERIES, HEADS)
    assert prefix is None
    for got, want in zip(captures, expected, strict=True):
        assert_same_capture(got, want)


def test_image_prefix_length_and_placeholder_expansion():
    image = 9
    a = torch.tensor([1, 2, image, image, 3, 5, 6])
    b = torch.tensor([1, 2, image, image, 3, 7, 6])
    assert image_prefix_length(a, b, image) == 4  # through the last image token, not to the first difference
    text_first_a, text_first_b = torch.tensor([1, 5, image, 6]), torch.tensor([1, 7, image, 6])
    assert image_prefix_length(text_first_a, text_first_b, image) is None
    assert expand_image_token(torch.tensor([1, image, 2]), image, 3).tolist() == [1, image, image, image, 2]
    with pytest.raises(ValueError, match="one image placeholder"):
        expand_image_token(torch.tensor([1, image, image]), image, 3)


def test_suffix_batch_pads_right_and_masks_the_padding():
    prompts = [torch.tensor([1, 2, 3, 4, 5]), torch.tensor([1, 2, 3, 6])]
    positions = [torch.arange(5).expand(3, 1, 5) * 2, torch.arange(4).expand(3, 1, 4) * 2]  # M-RoPE-shaped
    batch = suffix_batch(prompts, positions, prefix_length=2, pad_id=0)
    assert batch.lengths == (3, 2)
    assert batch.input_ids.tolist() == [[3, 4, 5], [3, 6, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch.position_ids.shape == (3, 2, 3)
    assert batch.position_ids[0].tolist() == [[4, 6, 8], [4, 6, 0]]  # the whole prompt's, sliced
