"""Every supported family x every method, end to end through ``PartPointer`` (the README's family table).

Tiny random checkpoints of the real transformers classes (tests/tiny_*.py, backbones/tiny.py), saved
and loaded through ``from_pretrained``. a2p runs an untrained head (random weights: the point is
meaningless, the plumbing is not); attention reads two heads of layer 1; text generates a few
tokens (random weights write no parsable point: found false). Per method: the decoder layers loaded
(a2p / attention: up to the deepest head; text: all) and whether the language-model head was loaded.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from tiny_gemma3_smolvlm import build_tiny_gemma3, build_tiny_smolvlm
from tiny_internvl_molmo2 import build_tiny_internvl, build_tiny_molmo2
from tiny_llava_family import build_tiny_llava_next, build_tiny_llava_onevision
from tiny_qwen_vl import build_tiny_qwen2_vl, build_tiny_qwen3_vl, build_tiny_qwen3_vl_moe

from part_point_ros.backbones.hf_adapter import NoLMHead
from part_point_ros.backbones.registry import REGISTRY, load_backbone
from part_point_ros.backbones.tiny import build_tiny_llava, build_tiny_qwen2_5_vl
from part_point_ros.grounding import PartPointer
from part_point_ros.types import HeadRef

BUILDERS = {
    "llava": build_tiny_llava,
    "llava_next": build_tiny_llava_next,
    "llava_onevision": build_tiny_llava_onevision,
    "qwen2_vl": build_tiny_qwen2_vl,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "qwen3_vl": build_tiny_qwen3_vl,
    "qwen3_vl_moe": build_tiny_qwen3_vl_moe,
    "internvl": build_tiny_internvl,
    "molmo2": build_tiny_molmo2,
    "gemma3": build_tiny_gemma3,
    "smolvlm": build_tiny_smolvlm,
    "idefics3": lambda out: build_tiny_smolvlm(out, model_type="idefics3"),
}
HEADS = [HeadRef(1, 0), HeadRef(1, 1)]
QUERY = "the handle of the mug"


def test_every_registered_model_type_is_covered_here():
    assert set(BUILDERS) == set(REGISTRY)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family_dir(request, tmp_path_factory):
    return request.param, BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)  # non-square, like a camera frame


def random_head(backbone_dir, out_dir):
    from part_point_ros.heads import HeadConfig, PartPointHead

    info = load_backbone(str(backbone_dir), max_layer=1, lm_head=False).info
    torch.manual_seed(0)
    config = HeadConfig(
        backbone=asdict(info), heads=[[h.layer, h.head] for h in HEADS], d_head=info.head_dim, d_fused=32,
        norm_groups=8,
    )  # fmt: skip
    return PartPointHead(config).save_pretrained(out_dir)


def loaded(pointer) -> tuple[int, bool]:
    """(decoder layers loaded, whether a real lm_head was loaded)."""
    model = pointer.backbone.model
    return len(pointer.backbone.decoder_layers), not isinstance(getattr(model, "lm_head", None), NoLMHead)


def test_attention_and_a2p_load_only_what_they_read_and_point_on_the_image(family_dir, image, tmp_path):
    name, path = family_dir
    attention = PartPointer.from_pretrained(str(path), method="attention", heads=HEADS)
    assert loaded(attention) == (2, False), name
    result = attention.point(image, QUERY)
    assert result.found and 0 <= result.x <= 149 and 0 <= result.y <= 89, (name, result.x, result.y)
    assert result.heatmap.shape == (result.grid.rows, result.grid.cols)

    head = random_head(path, tmp_path / "head")
    a2p = PartPointer.from_pretrained(str(path), head=str(head), method="a2p")
    assert loaded(a2p) == (2, False), name
    many = a2p.point_many(image, [QUERY, "the rim of the mug"])
    assert all(0 <= r.x <= 149 and 0 <= r.y <= 89 and math.isfinite(r.score) for r in many), name
    unseen = attention.describe()["field_of_view_640x480"]
    if name == "llava_onevision":  # SigLIP-384's 27 x 14 px patches leave a strip of each tile unseen
        assert "never reaches the model" in unseen and "no load option changes that" in unseen
    else:
        assert unseen is None, (name, unseen)  # the whole frame is seen


def test_text_loads_the_whole_model_and_answers_without_inventing_a_point(family_dir, image):
    name, path = family_dir
    pointer = PartPointer.from_pretrained(str(path), method="text", max_new_tokens=4)
    total = load_backbone(str(path), lm_head=False).info.num_layers
    assert loaded(pointer) == (total, True), name
    result = pointer.point(image, QUERY)
    assert isinstance(result.text, str) and result.method == "text"
    assert not result.found or (0 <= result.x <= 150 and 0 <= result.y <= 90), name
