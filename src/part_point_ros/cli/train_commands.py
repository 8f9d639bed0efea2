"""``part-point cache / train / eval``: feature cache, head training, evaluation report.

``register(subparsers)`` adds the three verbs to the ``part-point`` parser and returns
{verb: handler}; ``part_point_ros.cli.main.main`` runs the handler with the parsed args (one line
on stderr, exit 1, no traceback for a user mistake).

All three read a training config (``config/train_*.yaml``, fields of ``training.TrainConfig``) and
accept ``KEY=VALUE`` overrides, e.g. ``epochs=2 head.sdf_lambda=0.01 eval_data.max_samples=100``.
Data-parallel training: ``torchrun --nproc_per_node=4 -m part_point_ros.cli.main train --config ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import Any


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="training config YAML (config/train_*.yaml)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. epochs=2 head.sdf_lambda=0.01",
    )


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``cache``, ``train`` and ``eval`` to ``subparsers``; return {verb: handler}."""
    cache = subparsers.add_parser("cache", help="feature cache: one frozen-backbone prefill per sample")
    _add_common(cache)
    cache.add_argument("--split", default="all", choices=("train", "eval", "all"), help="default all")
    cache.add_argument("--no-progress", action="store_true", help="no progress bar")

    train = subparsers.add_parser("train", help="train the head on the feature cache")
    _add_common(train)
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")

    evaluate = subparsers.add_parser("eval", help="accuracy / patch accuracy report")
    _add_common(evaluate)
    evaluate.add_argument("--method", help="comma-separated: a2p,attention,text (default: eval_methods)")
    evaluate.add_argument("--head", help="head directory for a2p (default: <out_dir>/head)")
    evaluate.add_argument("--from-cache", action="store_true", help="a2p from <cache_dir>/eval, no backbone")
    evaluate.add_argument("--out", help="report directory (default: <out_dir>/eval)")
    evaluate.add_argument("--max-samples", type=int, help="evaluate the first N samples only")
    evaluate.add_argument(
        "--dtype", default="float32", help="backbone dtype for live methods (default float32)"
    )
    evaluate.add_argument("--json", action="store_true", help="print the summary as JSON")
    return {"cache": cmd_cache, "train": cmd_train, "eval": cmd_eval}


def _config(args: argparse.Namespace) -> Any:
    from part_point_ros.training.config import load_config

    return load_config(args.config, args.overrides)


def cmd_cache(args: argparse.Namespace) -> int:
    from part_point_ros.training.caching import SPLITS, cache_splits

    config = _config(args)
    splits = SPLITS if args.split == "all" else (args.split,)
    written = cache_splits(
        config, splits, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr)
    )
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from part_point_ros.training.trainer import train

    result = train(_config(args), resume=args.resume)
    if result.history:
        last = result.history[-1]
        losses = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "bce", "point", "presence") if k in last)
        print(f"epoch {last['epoch']}: {losses}")
    print(f"head: {result.head_dir}")
    return 0


def _fmt(value: float) -> str:
    return f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else "-"


def cmd_eval(args: argparse.Namespace) -> int:
    from part_point_ros.training.config import METHODS
    from part_point_ros.training.errors import ConfigError
    from part_point_ros.training.evaluate import run_evaluation

    config = _config(args)
    methods = [m.strip() for m in args.method.split(",") if m.strip()] if args.method else None
    for method in methods or ():
        if method not in METHODS:
            raise ConfigError(f"--method {method!r}: use a comma-separated list of {', '.join(METHODS)}")
    if args.max_samples is not None and args.max_samples < 1:
        raise ConfigError("--max-samples must be >= 1")
    outcome = run_evaluation(
        config, methods=methods, head_dir=args.head, from_cache=args.from_cache, out_dir=args.out,
        max_samples=args.max_samples, dtype=args.dtype, log=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    if args.json:
        print(json.dumps(json.loads(outcome.files["json"].read_text())))
        return 0
    for method, result in outcome.summary.items():
        for dataset, block in result["datasets"].items():
            s = block["overall"]
            print(
                f"{method} {dataset}: n={s['n']} accuracy={_fmt(s['accuracy'])} "
                f"patch_accuracy={_fmt(s['patch_accuracy'])}"
            )
    print(f"report: {outcome.files['markdown']}")
    return 0
