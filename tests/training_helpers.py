"""Shared pieces of the training tests: a small synthetic world, a tiny cache, a tiny-head config."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

TINY_HEADS = ["L1H0", "L2H1"]  # the tiny backbones have 4 layers x 4 heads
TINY_HEAD = {"d_fused": 32, "n_blocks": 1, "norm_groups": 8}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Two train scenes (41 samples), one train twin scene (split train_twins, as the shipped config
    reads it) and one test scene of the synthetic world."""
    from part_point_ros.sim.generate import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, [0, 1], "train")
    generate_dataset(root, [1_000_000], "train_twins")
    generate_dataset(root, [1000], "test")
    return root


def tiny_config(tmp: Path, backbone: Path, synthetic: Path, **changes):
    """A ``TrainConfig`` for the tiny LLaVA on the synthetic world, caches and run under ``tmp``."""
    from part_point_ros.training.config import TrainConfig

    values = dict(
        backbone=str(backbone),
        heads=list(TINY_HEADS),
        k=2,
        train_data={"kind": "synthetic", "args": {"root": str(synthetic), "split": "train"}},
        eval_data={"kind": "synthetic", "args": {"root": str(synthetic), "split": "test"}},
        cache_dir=str(tmp / "cache"),
        out_dir=str(tmp / "run"),
        device="cpu",
        chunk_size=16,
        lr=1e-3,
        batch_size=4,
        epochs=2,
        amp="none",
        tensorboard=False,
        progress=False,
        head=dict(TINY_HEAD),
    )
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_cache_config(tmp_path_factory, tiny_llava_dir, synthetic_root):
    """A config whose train and eval caches are already written (shared, read-only)."""
    from part_point_ros.training.caching import cache_splits

    config = tiny_config(tmp_path_factory.mktemp("tiny_cache"), tiny_llava_dir, synthetic_root)
    cache_splits(config, progress=False)
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_worker(rank: int, world: int, port: int, config_dict: dict, out: str) -> None:
    """One torchrun-like process: the env torchrun sets, then ``train``; saves its head weights."""
    import torch
    from safetensors.torch import save_file

    from part_point_ros.training.config import TrainConfig
    from part_point_ros.training.trainer import train

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    result = train(TrainConfig.from_dict(config_dict))
    state = {k: v.detach().contiguous() for k, v in result.head.state_dict().items()}
    save_file(state, str(Path(out) / f"rank{rank}.safetensors"))
