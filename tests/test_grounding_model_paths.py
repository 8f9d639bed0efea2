"""Where the shipped models are found, and devices that cannot be used: one line, nothing loaded.

A head's config.json names its backbone as it was given at training time, relative to that run's
working directory (``models/tiny-tabletop-llava``); the shipped head must load from any working
directory and from the installed layout (``share/part_point_ros/models``), as ``ros2 launch`` runs it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from part_point_ros.backbones.registry import check_device
from part_point_ros.errors import InputError
from part_point_ros.grounding.pointer import PartPointer, head_backbone

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
HEAD, BACKBONE = MODELS / "tiny-tabletop-a2p", MODELS / "tiny-tabletop-llava"


def test_the_shipped_head_names_its_backbone_relative_to_the_checkout():
    # the case this file is about; if training ever writes absolute paths, these tests change
    assert json.loads((HEAD / "config.json").read_text())["backbone"]["name"] == "models/tiny-tabletop-llava"


def test_the_shipped_head_loads_from_another_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pointer = PartPointer.from_pretrained(head=HEAD)
    assert Path(pointer.backbone.info.name).resolve() == BACKBONE.resolve()


def test_installed_layout_and_resolution_order(tmp_path, monkeypatch):
    share = tmp_path / "share" / "part_point_ros" / "models"
    share.mkdir(parents=True)
    for src in (HEAD, BACKBONE):
        shutil.copytree(src, share / src.name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    name = "models/tiny-tabletop-llava"
    assert head_backbone(name, share / HEAD.name) == str(share / BACKBONE.name)  # sibling of the head
    inside = share / HEAD.name / "models" / "tiny-tabletop-llava"
    shutil.copytree(BACKBONE, inside)
    assert head_backbone(name, share / HEAD.name) == str(share / HEAD.name / name)  # inside the head dir
    monkeypatch.chdir(ROOT)
    assert head_backbone(name, share / HEAD.name) == name  # the working directory first, as trained
    assert head_backbone("llava-hf/llava-1.5-7b-hf", share / HEAD.name) == "llava-hf/llava-1.5-7b-hf"
    assert head_backbone(str(BACKBONE), tmp_path) == str(BACKBONE)  # absolute: as given
    monkeypatch.chdir(elsewhere)
    pointer = PartPointer.from_pretrained(head=share / HEAD.name)
    assert pointer.backbone.info.name == str(share / HEAD.name / name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line_before_anything_loads(device):
    with pytest.raises(
        InputError, match=rf"^device '{device}': torch sees no CUDA GPU here .*use device cpu$"
    ):
        check_device(device)
    with pytest.raises(InputError, match="torch sees no CUDA GPU"):
        PartPointer.from_pretrained(head=HEAD, device=device)


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x"])
def test_unknown_devices_are_refused(device):
    with pytest.raises(InputError, match=rf"device '{device}'"):
        check_device(device)
    assert check_device("cpu") == torch.device("cpu")
