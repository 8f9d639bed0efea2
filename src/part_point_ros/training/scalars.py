"""Scalar logging: ``metrics.jsonl`` always, TensorBoard event files when enabled and installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from part_point_ros.errors import MissingDependencyError


class ScalarLogger:
    """``log(step, {"train/loss": ...})`` -> one JSON line (+ TensorBoard scalars)."""

    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise MissingDependencyError(
                    "TensorBoard logging needs the 'tensorboard' package: pip install tensorboard "
                    "(or set tensorboard=false)"
                ) from err
            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    def log(self, step: int, scalars: dict[str, float], **fields: Any) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, **fields, **scalars}, sort_keys=True) + "\n")
        if self._writer is not None:
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
