"""load_backbone dispatch and errors, dtype parsing, generation, tiny builders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from part_point_ros.backbones.llava import LlavaAdapter
from part_point_ros.backbones.qwen2_5_vl import Qwen25VLAdapter
from part_point_ros.backbones.registry import REGISTRY, load_backbone, parse_dtype
from part_point_ros.backbones.tiny import build_tiny_llava, build_tiny_qwen2_5_vl
from part_point_ros.errors import InputError, UnknownBackboneError


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return {
        "llava": build_tiny_llava(tmp_path_factory.mktemp("llava")),
        "qwen2_5_vl": build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen")),
    }


def test_registry_dispatches_on_model_type(dirs):
    assert REGISTRY["llava"] is LlavaAdapter and REGISTRY["qwen2_5_vl"] is Qwen25VLAdapter
    assert all(model_type in adapter.model_types for model_type, adapter in REGISTRY.items())
    assert isinstance(load_backbone(str(dirs["llava"])), LlavaAdapter)
    adapter = load_backbone(str(dirs["qwen2_5_vl"]), dtype="bfloat16")
    assert isinstance(adapter, Qwen25VLAdapter)
    assert next(adapter.model.parameters()).dtype == torch.bfloat16
    assert adapter.info.family == "qwen2_5_vl" and adapter.info.num_kv_heads == 2


def test_missing_directory_is_an_unknown_backbone(tmp_path):
    with pytest.raises(UnknownBackboneError) as err:
        load_backbone(str(tmp_path / "no-such-model"))
    message = str(err.value)
    assert (
        "\n" not in message and "no-such-model" in message and "llava" in message and "qwen2_5_vl" in message
    )


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnknownBackboneError) as err:
        load_backbone(str(tmp_path))
    message = str(err.value)
    assert "'gpt2'" in message and f"supported model types: {', '.join(sorted(REGISTRY))}" in message


def test_adapter_refuses_another_family(dirs):
    with pytest.raises(UnknownBackboneError, match="'qwen2_5_vl' model"):
        LlavaAdapter.from_pretrained(str(dirs["qwen2_5_vl"]))
    with pytest.raises(ValueError, match="max_layer must be in 0..3"):
        load_backbone(str(dirs["llava"]), max_layer=4)


def test_parse_dtype():
    assert parse_dtype("float32") is torch.float32
    assert parse_dtype("BF16") is torch.bfloat16
    assert parse_dtype("torch.float16") is torch.float16
    assert parse_dtype(torch.float16) is torch.float16
    with pytest.raises(InputError, match="float32, bfloat16 or float16"):
        parse_dtype("int8")


def test_bad_image_is_an_input_error(dirs):
    adapter = load_backbone(str(dirs["llava"]))
    with pytest.raises(InputError, match="RGB uint8"):
        adapter.prepare(np.zeros((10, 10), np.float32), adapter.build_prompt("x"))


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_generate_returns_new_text_only(dirs, family):
    adapter = load_backbone(str(dirs[family]))
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    answer = adapter.generate(image, "where is the handle", max_new_tokens=4)
    assert isinstance(answer, str) and answer
    ids = adapter.processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert 1 <= len(ids) <= 4  # only the new tokens, not the prompt


@pytest.mark.parametrize("builder", [build_tiny_llava, build_tiny_qwen2_5_vl])
def test_builders_are_deterministic_in_seed(tmp_path, builder):
    a = load_file(builder(tmp_path / "a", seed=5) / "model.safetensors")
    b = load_file(builder(tmp_path / "b", seed=5) / "model.safetensors")
    c = load_file(builder(tmp_path / "c", seed=6) / "model.safetensors")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_builder_vocab_words_reach_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    path = build_tiny_llava(tmp_path, vocab_words=["teapot", "Spatula"])
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.unk_token_id not in tok("the teapot spatula")["input_ids"]
    assert tok("the zorblax")["input_ids"][-1] == tok.unk_token_id


def test_an_unsupported_family_is_named_before_any_advice_on_heads(tmp_path):
    """Issue #12: attention with no heads file on a GPT-2 says 'not supported', not 'select heads'."""
    from transformers import GPT2Config

    from part_point_ros.grounding import PartPointer

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    for method in ("attention", "pop", "text"):
        with pytest.raises(UnknownBackboneError) as err:
            PartPointer.from_pretrained(str(tmp_path), method=method)
        assert "'gpt2' model, which is not supported" in str(err.value) and "select-heads" not in str(
            err.value
        )
