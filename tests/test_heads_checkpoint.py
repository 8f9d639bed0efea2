"""HeadConfig validation and strict safetensors checkpoints of PartPointHead (no pickle anywhere)."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from heads_helpers import tiny_backbone, tiny_head_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from part_point_ros.errors import CheckpointError
from part_point_ros.heads import HeadConfig, PartPointHead
from part_point_ros.types import HeadRef

D = 8


def config(**kw) -> HeadConfig:
    return tiny_head_config(D, **({"d_fused": 16, "n_blocks": 1, "norm_groups": 4} | kw))


def inputs(grid=(2, 3)):
    gen = torch.Generator().manual_seed(3)
    p = grid[0] * grid[1]
    q = torch.randn(1, 2, 4, D, generator=gen)
    m = torch.tensor([[True, True, True, False]])
    return q, m, torch.randn(1, 2, p, D, generator=gen), torch.randn(1, 2, p, D, generator=gen), grid


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    head = PartPointHead(config()).eval()
    return head, head.save_pretrained(tmp_path / "head")


# ---------------------------------------------------------------- config


def test_config_round_trips_through_json():
    cfg = config(query_pooling="max", supervision="gaussian", heads=[HeadRef(3, 1), (0, 2)])
    assert cfg.heads == [(3, 1), (0, 2)] and cfg.k == 2 and cfg.upscale == 4
    assert cfg.head_refs == (HeadRef(3, 1), HeadRef(0, 2))
    back = HeadConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"heads": []}, "HeadConfig.heads must list at least one"),
        ({"heads": [[9, 0]]}, r"layer 9 is outside 0\.\.3"),
        ({"heads": [[1, 7]]}, r"head 7 is outside 0\.\.3"),
        ({"heads": [[1, 0], [1, 0]]}, "lists a head twice"),
        ({"heads": [[1, "0"]]}, "not a \\[layer, head\\] pair"),
        ({"d_head": 16}, "d_head=16 but backbone head_dim=8"),
        ({"query_pooling": "attn"}, "query_pooling='attn' is not one of qsynth, eos, mean, max"),
        ({"supervision": "bce"}, "HeadConfig.supervision"),
        ({"sdf_units": "mm"}, "HeadConfig.sdf_units"),
        ({"n_latents": 0}, "HeadConfig.n_latents must be an int >= 1"),
        ({"qsynth_attn_heads": 3}, "qsynth_attn_heads=3 must divide d_head=8"),
        ({"d_fused": 18}, "d_fused=18 must be divisible by 2\\*\\*n_upsample=4"),
        ({"sdf_tau": 0.0}, "HeadConfig.sdf_tau must be > 0"),
        ({"use_values": "yes"}, "HeadConfig.use_values must be true or false"),
        ({"version": 2}, "HeadConfig.version is 2"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_config_backbone_dict_is_checked():
    with pytest.raises(ValueError, match=r"missing keys \['head_dim'\], unknown keys \['heads'\]"):
        bad = {k: v for k, v in tiny_backbone(D).items() if k != "head_dim"} | {"heads": 1}
        HeadConfig(backbone=bad, heads=[[0, 0]], d_head=D)


def test_from_dict_rejects_unknown_keys_and_versions():
    data = config().to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['dropout', 'lr'\]"):
        HeadConfig.from_dict(data | {"lr": 1e-4, "dropout": 0.1})
    with pytest.raises(ValueError, match="version is 7 but this code reads version 1"):
        HeadConfig.from_dict(data | {"version": 7})
    with pytest.raises(ValueError, match=r"missing the required keys \['heads'\]"):
        HeadConfig.from_dict({k: v for k, v in data.items() if k != "heads"})


# ---------------------------------------------------------------- save / load


def test_round_trip_gives_identical_outputs(saved, monkeypatch):
    head, directory = saved
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(head.state_dict())
        assert f.metadata() == {"format": "pt", "version": "1"}

    def no_pickle(*_args, **_kwargs):
        raise AssertionError("a checkpoint must never be unpickled")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = PartPointHead.from_pretrained(directory).eval()
    assert loaded.config == head.config
    a, b = head(*inputs()), loaded(*inputs())
    assert torch.equal(a.heatmap, b.heatmap) and torch.equal(a.attn_logits, b.attn_logits)
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def rewrite_weights(directory, change) -> None:
    tensors = load_file(str(directory / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"))


def one_line_error(directory, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        PartPointHead.from_pretrained(directory)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_directory_and_files(tmp_path, saved):
    _, directory = saved
    one_line_error(tmp_path / "nope", "nope: no such head directory")
    (directory / "model.safetensors").unlink()
    one_line_error(directory, "model.safetensors: missing")
    (directory / "config.json").unlink()
    one_line_error(directory, "config.json: missing")


def test_corrupt_config(saved):
    _, directory = saved
    path = directory / "config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | {"surprise": 1}))
    one_line_error(directory, r"config.json: head config has unknown keys \['surprise'\]")
    path.write_text(json.dumps(data | {"version": 9}))
    one_line_error(directory, "config.json: head config version is 9")
    path.write_text(json.dumps(data | {"n_rounds": -1}))
    one_line_error(directory, "config.json: HeadConfig.n_rounds must be an int >= 1")
    path.write_text('{"backbone": ')
    one_line_error(directory, "config.json: not valid JSON")


def test_corrupt_safetensors(saved):
    _, directory = saved
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    one_line_error(directory, "model.safetensors: not a readable safetensors file")
    path.write_bytes(pickle.dumps({"a": 1}))
    one_line_error(directory, "model.safetensors: not a readable safetensors file")


def test_missing_unexpected_and_misshapen_tensors_are_all_named(saved):
    _, directory = saved

    def change(tensors):
        del tensors["qsynth.1.latents"]
        tensors["a2p.foo"] = torch.zeros(2)
        tensors["a2p.fuse.weight"] = torch.zeros(3, 3, 1, 1)

    rewrite_weights(directory, change)
    message = one_line_error(directory, "model.safetensors: missing qsynth.1.latents")
    assert "unexpected a2p.foo" in message
    assert "a2p.fuse.weight (3, 3, 1, 1) != (16, 16, 1, 1)" in message
    assert "another version" in message


def test_weights_of_another_config_do_not_load(saved):
    _, directory = saved
    other = PartPointHead(config(query_pooling="mean"))  # no Q-Synth: every qsynth.* is unexpected
    save_file(other.state_dict(), str(directory / "model.safetensors"))
    one_line_error(directory, "model.safetensors: missing qsynth.0.latents")


def test_fp16_checkpoint_loads_as_float32(tmp_path, saved):
    """Shipped heads are stored in fp16 (models/); they load into float32 parameters, values rounded."""
    head, _ = saved
    copy.deepcopy(head).half().save_pretrained(tmp_path / "fp16")
    with safe_open(str(tmp_path / "fp16" / "model.safetensors"), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    loaded = PartPointHead.from_pretrained(tmp_path / "fp16")
    for name, value in loaded.state_dict().items():
        reference = head.state_dict()[name]
        if reference.is_floating_point():
            assert value.dtype == torch.float32
            assert torch.equal(value, reference.half().float()), name
