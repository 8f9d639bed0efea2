"""Shared fixtures: offline HF, deterministic torch, tiny real checkpoints built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# one thread: tiny models run faster single-threaded, and parallel test workers do not fight
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny random LlavaForConditionalGeneration + processor saved with save_pretrained."""
    from part_point_ros.backbones.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    """A tiny random Qwen2_5_VLForConditionalGeneration + processor saved with save_pretrained."""
    from part_point_ros.backbones.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen"), seed=0)
