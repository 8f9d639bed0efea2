"""Shared pieces of the backbone stages: learning-rate schedule and resumable checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class StageOptions:
    """What every training stage takes (``part-point backbone STAGE`` options of the same names)."""

    cache: Path
    run: Path
    init_from: str | None
    train: int = 6000
    val: int = 250
    steps: int = 3000
    stop_after: int | None = None
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 50
    seed: int = 0
    eval_every: int = 250
    save_every: int = 100
    device: str = "cpu"  # "cuda" on a GPU machine (scripts/gpu_backbone.sh); checkpoints are the same
    time_limit: float | None = None  # seconds: end this session's share here (checkpointed; resumes)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine down to 5 % of ``lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def save_state(run: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer, step: int) -> None:
    """Weights of ``modules`` (safetensors) and the optimizer + step; the state file is renamed into
    place last, so a run killed mid-save resumes from the previous checkpoint."""
    from safetensors.torch import save_file

    for name, module in modules.items():
        tmp = run / f"{name}.tmp.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, tmp)
        tmp.rename(run / f"{name}.safetensors")
    torch.save({"optimizer": opt.state_dict(), "step": step}, run / "state.tmp.pt")
    (run / "state.tmp.pt").rename(run / "state.pt")


def load_state(run: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer) -> int:
    """Resume from ``save_state``; returns the step (0 when the run has no checkpoint)."""
    from safetensors.torch import load_file

    if not (run / "state.pt").exists():
        return 0
    for name, module in modules.items():
        module.load_state_dict(load_file(run / f"{name}.safetensors"))
    state = torch.load(run / "state.pt", weights_only=True, map_location="cpu")  # a GPU run goes on here
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])
