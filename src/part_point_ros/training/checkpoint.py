"""Training checkpoints without pickle: the head via ``save_pretrained``, the rest in safetensors + JSON.

``<out_dir>/checkpoints/epoch_0003/``::

    head/                  config.json + model.safetensors (a usable head)
    optimizer.safetensors  AdamW moments and step counts ("state.<param>.<name>"), torch RNG state
    state.json             epoch, global step, param groups, LR scheduler and grad scaler state

A checkpoint directory is written under a temporary name and renamed when complete, so a run
killed while saving leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from part_point_ros.training.errors import ResumeError

CHECKPOINTS = "checkpoints"
STATE_NAME = "state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


def checkpoint_dir(out_dir: str | Path, epoch: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"epoch_{epoch:04d}"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The complete checkpoint of the highest epoch under ``out_dir``, or None."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [p for p in root.glob("epoch_[0-9][0-9][0-9][0-9]") if (p / STATE_NAME).is_file()]
    return max(done, key=lambda p: p.name) if done else None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def save_checkpoint(
    out_dir: str | Path,
    *,
    epoch: int,
    step: int,
    head: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write the checkpoint of ``epoch`` (1-based, completed epochs) and return its directory."""
    final = checkpoint_dir(out_dir, epoch)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    head.save_pretrained(tmp / "head")
    tensors, opt_json = _optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / OPTIMIZER_NAME), metadata={"format": "pt"})
    state = {
        "epoch": epoch,
        "step": step,
        "optimizer": opt_json,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "metrics": metrics or {},
    }
    (tmp / STATE_NAME).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    head: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any = None,
) -> dict[str, Any]:
    """Restore head weights, optimizer, scheduler (and scaler) in place; return state.json."""
    from part_point_ros.heads import PartPointHead

    path = Path(path)
    try:
        state = json.loads((path / STATE_NAME).read_text())
        tensors = load_file(str(path / OPTIMIZER_NAME))
    except (OSError, ValueError) as err:
        raise ResumeError(
            f"{path}: unreadable checkpoint ({err}); delete it to resume from the one before"
        ) from err
    saved = PartPointHead.from_pretrained(path / "head")
    if saved.config.to_dict() != head.config.to_dict():
        raise ResumeError(
            f"{path}: the checkpoint's head config differs from this run's; start a new out_dir"
        )
    head.load_state_dict(saved.state_dict(), strict=True)
    opt = state["optimizer"]
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            per_param.setdefault(int(pid), {})[name] = value
    for pid, entries in opt["plain_state"].items():
        per_param.setdefault(int(pid), {}).update(entries)
    optimizer.load_state_dict({"state": per_param, "param_groups": opt["param_groups"]})
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    return state
