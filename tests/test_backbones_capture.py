"""Q/K/V capture on tiny real LLaVA / Qwen2.5-VL checkpoints: exactness, truncation, max_layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from part_point_ros.backbones.registry import load_backbone
from part_point_ros.backbones.tiny import build_tiny_llava, build_tiny_qwen2_5_vl
from part_point_ros.errors import HeadMismatchError
from part_point_ros.types import HeadRef

BUILDERS = {"llava": build_tiny_llava, "qwen2_5_vl": build_tiny_qwen2_5_vl}
# 4 query heads on 2 KV heads: (L, 0) and (L, 1) share KV head 0, (L, 2) and (L, 3) share KV head 1
HEADS = (HeadRef(0, 0), HeadRef(0, 1), HeadRef(2, 1), HeadRef(2, 3), HeadRef(3, 2), HeadRef(3, 3))
INSTRUCTION = "point to the handle of the red mug"


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def backbone_dir(request, tmp_path_factory):
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param), seed=3)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(150, 260, 3), dtype=np.uint8)  # not square


def test_recomputed_attention_equals_models_eager_attention(backbone_dir, image):
    adapter = load_backbone(str(backbone_dir), attn_implementation="eager")
    cap = adapter.capture(image, INSTRUCTION, HEADS)
    inputs, _ = adapter.prepare(image, adapter.build_prompt(INSTRUCTION))
    with torch.inference_mode():
        out = adapter.model.model(**inputs, output_attentions=True, use_cache=False)
    ids = inputs["input_ids"][0]
    assert cap.text_positions[-1] == ids.shape[0] - 1
    assert torch.equal(cap.image_positions, adapter.image_token_positions(ids).cpu())
    expected = torch.stack([out.attentions[h.layer][0, h.head, -1, cap.image_positions] for h in HEADS])
    got = cap.last_token_attention()
    assert got.shape == (len(HEADS), cap.grid.rows * cap.grid.cols)
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=0)
    # the spatial pattern matches too where the mass on the image is small
    torch.testing.assert_close(
        got / got.sum(-1, keepdim=True), expected / expected.sum(-1, keepdim=True), rtol=1e-3, atol=1e-6
    )
    # the maps are far from uniform, so the comparison means something
    assert (expected.max(dim=-1).values / expected.min(dim=-1).values).min() > 2


def test_sdpa_capture_matches_eager_capture_and_gqa_sharing(backbone_dir, image):
    sdpa = load_backbone(str(backbone_dir)).capture(image, INSTRUCTION, HEADS)
    eager = load_backbone(str(backbone_dir), attn_implementation="eager").capture(image, INSTRUCTION, HEADS)
    torch.testing.assert_close(sdpa.queries, eager.queries)
    torch.testing.assert_close(sdpa.keys, eager.keys)
    assert torch.equal(sdpa.keys[0], sdpa.keys[1])  # L0H0 and L0H1 read KV head 0
    assert torch.equal(sdpa.values[4], sdpa.values[5])  # L3H2 and L3H3 read KV head 1
    assert not torch.equal(sdpa.keys[2], sdpa.keys[3])  # L2H1 (KV 0) and L2H3 (KV 1) do not
    assert not torch.equal(sdpa.queries[0], sdpa.queries[1])
    assert sdpa.scaling == pytest.approx(1 / np.sqrt(16))


def _count_layer_calls(adapter) -> tuple[list[int], list]:
    calls = [0] * len(adapter.decoder_layers)
    handles = []
    for i, layer in enumerate(adapter.decoder_layers):

        def hook(_module, _args, _kwargs, i=i):
            calls[i] += 1

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    return calls, handles


def test_truncated_capture_equals_full_pass_and_skips_later_layers(backbone_dir, image):
    adapter = load_backbone(str(backbone_dir))
    heads = (HeadRef(1, 2), HeadRef(0, 3), HeadRef(1, 0))
    calls, handles = _count_layer_calls(adapter)
    full = adapter.capture(image, INSTRUCTION, heads, truncate=False)
    assert calls == [1, 1, 1, 1]
    calls[:] = [0, 0, 0, 0]
    short = adapter.capture(image, INSTRUCTION, heads, truncate=True)
    assert calls == [1, 1, 0, 0]  # layers 2 and 3 never ran
    for handle in handles:
        handle.remove()
    for name in ("queries", "keys", "values", "image_positions", "text_positions"):
        assert torch.equal(getattr(full, name), getattr(short, name)), name
    assert short.heads == heads and short.queries.dtype == torch.float32


def test_max_layer_loads_fewer_layers_and_captures_the_same(backbone_dir, image):
    full = load_backbone(str(backbone_dir))
    part = load_backbone(str(backbone_dir), max_layer=1)
    assert len(part.decoder_layers) == 2 and part.info == full.info  # info keeps the full depth
    n_full = sum(p.numel() for p in full.model.parameters())
    n_part = sum(p.numel() for p in part.model.parameters())
    assert n_part < n_full
    heads = (HeadRef(0, 1), HeadRef(1, 3))
    a = full.capture(image, INSTRUCTION, heads)
    b = part.capture(image, INSTRUCTION, heads)
    for name in ("queries", "keys", "values"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=0, rtol=0)
    with pytest.raises(HeadMismatchError, match="max_layer >= 2"):
        part.capture(image, INSTRUCTION, [HeadRef(2, 0)])
    with pytest.raises(HeadMismatchError, match="does not exist"):
        full.capture(image, INSTRUCTION, [HeadRef(0, 4)])


def test_model_is_frozen_and_in_eval(backbone_dir):
    adapter = load_backbone(str(backbone_dir))
    assert not adapter.model.training
    assert not any(p.requires_grad for p in adapter.model.parameters())
