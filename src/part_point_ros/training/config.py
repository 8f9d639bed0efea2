"""``TrainConfig``: the ONE place where the defaults of caching, training and evaluation live.

The YAML files in ``config/train_*.yaml`` mirror these fields (same names, same defaults for the
paper's hyper-parameters). The head's own hyper-parameters (Q-Synth, A2P, loss weights λ, τ, γ)
keep their defaults in ``heads.HeadConfig``; ``TrainConfig.head`` only lists overrides of them.

Overrides from the command line are ``key=value`` strings (``epochs=2``, ``head.sdf_lambda=0.01``,
``train_data.args.root=/data/x``); values are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from part_point_ros.training.errors import ConfigError
from part_point_ros.types import HeadRef

LR_SCHEDULES = ("constant", "cosine")
AMP_MODES = ("bf16", "fp16", "none")
CACHE_DTYPES = ("float16", "bfloat16", "float32")
METHODS = ("a2p", "attention", "text")


@dataclass
class DataSpec:
    """A dataset as ``data.load_dataset(kind, **args)`` loads it; ``max_samples`` keeps the first N."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    max_samples: int | None = None

    @classmethod
    def parse(cls, value: Any, where: str) -> DataSpec | None:
        if value is None or isinstance(value, DataSpec):
            return value
        if not isinstance(value, dict) or "kind" not in value:
            raise ConfigError(f"{where} must be a mapping with 'kind' (and 'args'), e.g. {{kind: synthetic}}")
        unknown = sorted(set(value) - {"kind", "args", "max_samples"})
        if unknown:
            raise ConfigError(f"{where} has unknown keys {unknown}; allowed: kind, args, max_samples")
        args = value.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where}.args must be a mapping of loader arguments")
        max_samples = value.get("max_samples")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ConfigError(f"{where}.max_samples must be an int >= 1 or null, got {max_samples!r}")
        return cls(kind=str(value["kind"]), args=dict(args), max_samples=max_samples)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "args": {k: str(v) for k, v in sorted(self.args.items())}}


@dataclass
class TrainConfig:
    """Everything ``part-point cache / train / eval`` need. Defaults are the paper's (method.md §4)."""

    # --- what: backbone, localization heads, data, where things go
    backbone: str = ""  # hub id or local directory of the frozen MLLM
    heads: str | list[Any] = ""  # heads JSON file, shipped name ("qwen2.5-vl-7b") or ["L14H24", ...]
    k: int = 5  # localization heads used (the first k of the heads file)
    train_data: DataSpec | None = None
    eval_data: DataSpec | None = None
    cache_dir: str = "runs/cache"  # feature caches: <cache_dir>/train and <cache_dir>/eval
    out_dir: str = "runs/train"  # checkpoints, final head (<out_dir>/head), logs, eval report
    # --- feature cache (one frozen-backbone prefill per sample)
    device: str = "auto"  # "auto" = cuda if available, else cpu
    backbone_dtype: str = "bfloat16"  # dtype the backbone runs in while caching (cpu: float32 is used)
    cache_dtype: str = "float16"  # dtype of the cached Q/K/V
    chunk_size: int = 256  # samples per cache chunk file
    # --- optimisation (method.md §4: AdamW lr 1e-4, wd 0.01, batch 4, 30 epochs)
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 4  # per process; DDP's global batch is batch_size x world size
    epochs: int = 30
    lr_schedule: str = "constant"  # unverified (not stated by the paper): "constant" or "cosine"
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0 = off (the paper states none)
    seed: int = 0
    amp: str = "bf16"  # autocast on GPU only: "bf16", "fp16" (with GradScaler) or "none"
    num_workers: int = 0  # DataLoader workers
    log_every: int = 10  # steps between scalar logs
    tensorboard: bool = True  # TensorBoard scalars in <out_dir>/tensorboard (metrics.jsonl always)
    progress: bool = True  # tqdm progress bar
    head: dict[str, Any] = field(default_factory=dict)  # HeadConfig overrides (defaults live there)
    # start from a trained head's weights (its directory; modules it lacks, e.g. a presence output,
    # start fresh) and train only the parameters whose names start with one of ``train_only``
    # (e.g. [presence]: add "not here" to a head without changing where it points); [] = all
    init_head: str = ""
    train_only: list[str] = field(default_factory=list)
    # --- evaluation
    eval_methods: list[str] = field(default_factory=lambda: ["a2p"])
    eval_max_samples: int | None = None

    def __post_init__(self) -> None:
        self.train_data = DataSpec.parse(self.train_data, "train_data")
        self.eval_data = DataSpec.parse(self.eval_data, "eval_data")
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        for name in ("k", "batch_size", "epochs", "chunk_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("warmup_steps", "num_workers", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("amp", self.amp, AMP_MODES)
        _choice("cache_dtype", self.cache_dtype, CACHE_DTYPES)
        if not isinstance(self.eval_methods, list) or not self.eval_methods:
            raise ConfigError(f"eval_methods must be a non-empty list of {', '.join(METHODS)}")
        for method in self.eval_methods:
            _choice("eval_methods", method, METHODS)
        if not isinstance(self.head, dict):
            raise ConfigError("head must be a mapping of HeadConfig fields, e.g. {sdf_lambda: 0.001}")
        reserved = sorted({"backbone", "heads", "d_head"} & set(self.head))
        if reserved:
            raise ConfigError(f"head.{reserved[0]} is set from the cache's manifest; remove it from 'head'")
        if not isinstance(self.init_head, str):
            raise ConfigError(f"init_head must be a head directory or empty, got {self.init_head!r}")
        if not isinstance(self.train_only, list) or not all(
            isinstance(x, str) and x for x in self.train_only
        ):
            raise ConfigError(
                f"train_only must be a list of parameter-name prefixes, got {self.train_only!r}"
            )
        for name in ("tensorboard", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    # ------------------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of TrainConfig fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; see config/train_synthetic_tiny.yaml")
        try:
            return cls(**data)
        except TypeError as err:
            raise ConfigError(f"{where}: {err}") from err

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    # ------------------------------------------------------------------------------ derived
    def cache_path(self, split: str) -> Path:
        """Where the feature cache of ``split`` ("train" or "eval") lives."""
        return Path(self.cache_dir) / split

    def head_refs(self) -> list[HeadRef]:
        """The first ``k`` localization heads of ``heads`` (file, shipped name or explicit list)."""
        return resolve_heads(self.heads, self.k)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")


def resolve_heads(heads: str | Sequence[Any], k: int) -> list[HeadRef]:
    """Heads file path / shipped name / list of "L14H24" / [layer, head] -> the first ``k`` HeadRefs."""
    if isinstance(heads, str):
        if not heads.strip():
            raise ConfigError("heads is empty: give a heads file (part-point select-heads) or a list")
        from part_point_ros.grounding.localization_heads import load_heads

        refs = load_heads(heads).top()
    else:
        refs = []
        for item in heads:
            try:
                if isinstance(item, HeadRef):
                    refs.append(item)
                elif isinstance(item, str):
                    refs.append(HeadRef.parse(item))
                else:
                    layer, head = item
                    refs.append(HeadRef(int(layer), int(head)))
            except (TypeError, ValueError) as err:
                raise ConfigError(
                    f"heads: cannot read {item!r} as a head (write L14H24 or [14, 24])"
                ) from err
    if len(refs) < k:
        raise ConfigError(
            f"heads lists {len(refs)} heads but k={k}: set k <= {len(refs)} or compute more heads "
            "with `part-point select-heads --k K`"
        )
    return refs[:k]


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` / ``a.b.c=value`` overrides (values parsed as YAML) to a config dict."""
    out = json.loads(json.dumps(data, default=str))  # deep copy of plain data
    for item in overrides:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(
                f"override {item!r}: write it as KEY=VALUE, e.g. epochs=2 or head.sdf_lambda=0.01"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({err})") from err
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {item!r}: {part} is not a mapping")
            node = node[part]
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None), apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file (see config/train_*.yaml)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            first = " ".join(str(err).split())[:200]
            raise ConfigError(f"{path}: not valid YAML ({first})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of TrainConfig fields")
    data = apply_overrides(data, overrides)
    return TrainConfig.from_dict(data, where=str(path) if path else "config")


def replace(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``config`` with ``changes`` applied (validated again)."""
    return dataclasses.replace(config, **changes)
