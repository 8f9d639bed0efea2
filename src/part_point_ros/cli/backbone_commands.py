"""``part-point backbone STAGE``: train the tiny-tabletop backbone (``part_point_ros.tabletop``).

Every stage is seeded and resumable (rerun the same command with the same ``--run``); the whole chain
of the shipped model, with wall times on 2 CPU cores, is in docs/tiny_tabletop.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_CACHE = "runs/backbone/scenes"


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``backbone`` with its stages to ``subparsers``; return {verb: handler}."""
    parser = subparsers.add_parser("backbone", help="train the tiny-tabletop backbone (synthetic world)")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE")
    stages.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cache", type=Path, default=Path(DEFAULT_CACHE), help=f"scene shards ({DEFAULT_CACHE})"
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")

    scenes = stages.add_parser("scenes", help="render the train / val / test scenes into shards")
    common(scenes)
    scenes.add_argument("--train", type=int, default=6000, help="train scenes, seeds 0.. (default 6000)")
    scenes.add_argument("--val", type=int, default=250, help="val scenes, seeds 100000.. (default 250)")
    scenes.add_argument("--test", type=int, default=250, help="test scenes, seeds 200000.. (default 250)")
    scenes.add_argument("--jobs", type=int, default=2, help="render processes (default 2)")

    def stage(name: str, text: str, steps: int, lr: float, batch: int) -> argparse.ArgumentParser:
        p = stages.add_parser(name, help=text)
        common(p)
        p.add_argument("--run", type=Path, required=True, help="checkpoints and history (resumes)")
        p.add_argument("--init-from", help="go on from this model directory (the vocabulary may grow)")
        p.add_argument("--train", type=int, default=6000, help="train scenes used (default 6000)")
        p.add_argument("--val", type=int, default=250, help="val scenes used (default 250)")
        p.add_argument("--steps", type=int, default=steps, help=f"length of the schedule (default {steps})")
        p.add_argument("--stop-after", type=int, help="stop at this step of the schedule (resume later)")
        p.add_argument("--batch", type=int, default=batch, help=f"images per step (default {batch})")
        p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
        p.add_argument("--warmup", type=int, default=50, help="warm-up steps (default 50)")
        p.add_argument("--eval-every", type=int, default=250)
        p.add_argument("--save-every", type=int, default=100)
        p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
        p.add_argument("--time-limit", type=float, help="stop after this many seconds (checkpointed)")
        return p

    vision = stage("vision", "vision tower: what is under each image token", 3000, 1e-3, 32)
    vision.add_argument("--no-balance", action="store_true", help="no class balance in the object:part loss")
    vision.add_argument("--flip", action="store_true", help="mirror half of each batch left-right")
    language = stage(
        "language", "language model: part questions + object pointing, tower frozen", 1500, 5e-4, 8
    )
    language.add_argument("--others", type=int, default=5, help="non-colour questions per image and step")
    language.add_argument(
        "--tower-from",
        help="take the vision tower from this model directory (e.g. a newer vision stage's <run>/vision), "
        "everything else from --init-from",
    )

    ship = stages.add_parser("ship", help="save a run's model in fp16 (from_pretrained directory)")
    ship.add_argument("--run", type=Path, required=True, help="a language-stage run")
    ship.add_argument("--out", type=Path, default=Path("models/tiny-tabletop-llava"))

    evaluate = stages.add_parser("evaluate", help="model-card numbers: answers, attention, token probe")
    common(evaluate)
    evaluate.add_argument("--model", type=Path, default=Path("models/tiny-tabletop-llava"))
    evaluate.add_argument("--heads", type=Path, help="heads file whose layers the token probe reads")
    evaluate.add_argument("--train", type=int, default=300, help="train scenes of the token probe")
    evaluate.add_argument("--test", type=int, default=250, help="test scenes (seeds 200000..)")
    evaluate.add_argument("--attn-questions", type=int, default=400)
    evaluate.add_argument("--report", type=Path, required=True, help="JSON report")
    return {"backbone": cmd_backbone}


def cmd_backbone(args: argparse.Namespace) -> int:
    import torch

    from part_point_ros.sim.vqa import vocabulary
    from part_point_ros.tabletop import scenes

    torch.set_num_threads(getattr(args, "threads", 2))
    torch.manual_seed(getattr(args, "seed", 0))
    device = getattr(args, "device", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from part_point_ros.errors import PartPointError

        raise PartPointError(f"--device {device}: this machine has no CUDA device; use --device cpu")
    if args.stage == "scenes":
        for split in ("val", "test", "train"):
            scenes.build(args.cache, split, getattr(args, split), jobs=args.jobs)
    elif args.stage == "vision":
        from part_point_ros.tabletop.vision import VisionOptions, train_vision

        train_vision(
            VisionOptions(**_stage_options(args), balance=not args.no_balance, flip=args.flip), vocabulary()
        )
    elif args.stage == "language":
        from part_point_ros.tabletop.language import LanguageOptions, train_language

        options = LanguageOptions(**_stage_options(args), others=args.others, tower_from=args.tower_from)
        train_language(options, vocabulary())
    elif args.stage == "ship":
        from part_point_ros.tabletop.language import ship_run

        ship_run(args.run, args.out)
    elif args.stage == "evaluate":
        from part_point_ros.tabletop.report import evaluate

        evaluate(args)
    return 0


def _stage_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``StageOptions`` fields from the parsed options of the same names."""
    from dataclasses import fields

    from part_point_ros.tabletop.schedule import StageOptions

    return {f.name: getattr(args, f.name) for f in fields(StageOptions)}
