"""``part-point``: the command-line entry point (point, select-heads, bench; more verbs to come).

A user mistake (bad path, undecodable image, empty query, unknown backbone, head for another
backbone) prints ONE line ``part-point: error: ...`` on stderr and exits 1; no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from part_point_ros.cli import backbone_commands, train_commands
from part_point_ros.grounding.inputs import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS

PROG = "part-point"
# the names ``load_backbone(quantization=...)`` takes (backbones/quantization.py, not imported here: torch)
QUANTIZATIONS = ("int8", "int4", "nf4", "bnb-int8")
# Verbs other parts of the project will fill in; until then they say so and exit 2.
PLACEHOLDER_ISSUES: dict[str, str] = {}


class UserError(Exception):
    """A CLI-level user mistake (bad option value) reported like a PartPointError."""


def _add_backbone_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument(
        "--dtype", default="float32", help="backbone dtype: float32, bfloat16 or float16 (default float32)"
    )
    parser.add_argument(
        "--crop",
        action="store_true",
        help="let the processor crop the frame as the checkpoint ships it (LLaVA-1.5: centre crop); "
        "default: pad to a square so the whole frame is seen",
    )
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        help="quantize the backbone's decoder weights as they load: int8 (torchao; cpu or cuda), int4 "
        "(torchao; cuda, bfloat16), nf4 or bnb-int8 (bitsandbytes + accelerate); default: none",
    )
    parser.add_argument(
        "--allow-pickle-weights",
        action="store_true",
        help="UNSAFE: also load pickled backbone weights (pytorch_model.bin); unpickling can run code "
        "from the file, so use it only for files you trust (default: safetensors only)",
    )


def _add_pop_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--extractor",
        default="dinov3",
        choices=("dinov3", "llava-tower"),
        help="pop: dense features; llava-tower = the LLaVA backbone's own vision tower (default dinov3)",
    )
    parser.add_argument("--extractor-model", help="pop: hub id or directory of the extractor's model")
    parser.add_argument(
        "--support-root", help="pop: support-set directory (default $PART_POINT_SUPPORTS or ~/.local/share)"
    )
    parser.add_argument(
        "--support-fusion",
        default="product",
        metavar="{product,geomean,mean}",  # checked by PopOptions (no torch import at CLI start)
        help="pop: how several examples' maps combine (default product, the paper's; mean keeps them "
        "at one example's weight beside the attention map: README, 'Teaching by example')",
    )


def build_parser() -> argparse.ArgumentParser:
    from part_point_ros import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="Point at object parts from language.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--verbose", action="store_true", help="show transformers' loading reports and progress bars"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    point = sub.add_parser("point", help="one image, one query -> point, score, found")
    point.add_argument("image", help="path to an 8-bit RGB image (PNG, JPEG, ...)")
    point.add_argument("query", help='what to point at, e.g. "the handle of the mug"')
    point.add_argument("--backbone", help="hub id or directory of the MLLM (a2p: default from the head)")
    point.add_argument("--head", help="trained head directory (config.json + model.safetensors), for a2p")
    point.add_argument(
        "--method", default="a2p", choices=("a2p", "attention", "text", "pop"), help="default a2p"
    )
    point.add_argument(
        "--heads", help="attention, pop: heads JSON file or shipped name (default: known heads)"
    )
    _add_pop_options(point)
    point.add_argument(
        "--support", help="pop: the support set for the query (default: the set named like the query)"
    )
    point.add_argument("--k", type=int, default=5, help="attention: number of localization heads (default 5)")
    point.add_argument("--threshold", type=float, help="score needed for found=true (method default)")
    point.add_argument("--no-subpixel", action="store_true", help="skip the sub-pixel peak refinement")
    point.add_argument("--max-new-tokens", type=int, default=64, help="text: generation budget (default 64)")
    point.add_argument("--allow-grey", action="store_true", help="accept greyscale images (used as RGB)")
    point.add_argument(
        "--max-image-pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        metavar="N",
        help=f"refuse images with more pixels (W x H) than this (default {MAX_IMAGE_PIXELS} = 4096x2160)",
    )
    point.add_argument(
        "--max-aspect-ratio",
        type=float,
        default=MAX_ASPECT_RATIO,
        metavar="R",
        help=f"refuse images whose long side is over R x the short side (default {MAX_ASPECT_RATIO:g})",
    )
    point.add_argument(
        "--compile", action="store_true", help="torch.compile the vision tower (the first frame compiles it)"
    )
    point.add_argument("--json", action="store_true", help="print one JSON object")
    point.add_argument("--overlay", metavar="OUT.png", help="write the image with heatmap and point")
    _add_backbone_options(point)

    select = sub.add_parser("select-heads", help="localization-head selection (Kang et al.)")
    select.add_argument("--backbone", required=True, help="hub id or directory of the MLLM")
    select.add_argument(
        "--data", required=True, metavar="KIND:PATH", help="calibration set, e.g. pointbench:DIR"
    )
    select.add_argument(
        "--data-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra loader argument (repeatable)",
    )
    select.add_argument("--k", type=int, default=5, help="heads to keep (default 5)")
    select.add_argument(
        "--per-sample", type=int, default=10, help="lowest-entropy heads per sample (default 10)"
    )
    select.add_argument(
        "--max-samples", type=int, default=1000, help="calibration samples used (default 1000)"
    )
    select.add_argument("--exclude-layers", type=int, default=2, help="first layers excluded (default 2)")
    select.add_argument("--out", required=True, help="heads JSON file to write")
    _add_backbone_options(select)

    teach = sub.add_parser("teach", help="pop: teach a part by example (an image and one pixel)")
    teach.add_argument("name", nargs="?", help='support-set name = the query that uses it, e.g. "drill grip"')
    teach.add_argument("image", nargs="?", help="path to an 8-bit RGB image showing the part")
    teach.add_argument("--point", metavar="U,V", help="the part's pixel in the image (u right, v down)")
    teach.add_argument("--list", action="store_true", help="list the support sets and exit")
    teach.add_argument("--delete", action="store_true", help="delete the support set NAME")
    teach.add_argument(
        "--backbone", default=None, help="llava-tower: the LLaVA whose tower gives the features"
    )
    _add_pop_options(teach)
    teach.add_argument("--device", default="cpu", help="torch device (default cpu)")

    bench = sub.add_parser("bench", help="latency of each method and stage")
    bench.add_argument(
        "--backbone", help="hub id or directory (default: a tiny random LLaVA built on the fly)"
    )
    bench.add_argument("--heads", help="heads file or shipped name for a real backbone")
    bench.add_argument("--reps", type=int, default=10, help="timed repetitions (median reported)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs")
    bench.add_argument("--max-new-tokens", type=int, default=32, help="text: tokens generated (forced)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the peak memory of the whole model vs what a2p loads (default on; ~20 s)",
    )
    _add_backbone_options(bench)

    published = sub.add_parser(
        "bench-published",
        help="a2p / attention / text on 7B-shaped RANDOM-weight backbones (published configs): ms, GB",
    )
    published.add_argument(
        "--config", action="append", choices=["llava-1.5-7b", "qwen2.5-vl-7b"],
        help="published config (repeat; default both)",
    )  # fmt: skip
    published.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    published.add_argument("--dtype", default="bfloat16", help="bfloat16 (default), float16 or float32")
    published.add_argument(
        "--scale", choices=["published", "tiny"], default="published",
        help="published: the real shapes (a GPU); tiny: the same code on tiny shapes (a CPU check)",
    )  # fmt: skip
    published.add_argument("--reps", type=int, default=10, help="timed repetitions (median reported)")
    published.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs")
    published.add_argument("--max-new-tokens", type=int, default=16, help="text: tokens generated (forced)")
    published.add_argument("--compile", action="store_true", help="torch.compile the vision tower")
    published.add_argument(
        "--methods", default="a2p,attention,text", help="subset to run, a2p first (default: all three)"
    )
    published.add_argument("--json", type=Path, help="also write the reports to this JSON file")

    demo = sub.add_parser("demo", help="the ROS 2 graph on the synthetic RGB-D world, end to end")
    demo.add_argument("--out", type=Path, help="output directory (default runs/demo)")
    demo.add_argument(
        "--seeds",
        help="scene seeds, e.g. 200000,200001 or 200000:200005 (default 200000,200001: held-out test)",
    )
    demo.add_argument("--queries-per-scene", type=int, help="queries asked per scene (default 3)")
    demo.add_argument("--backbone", help="MLLM directory or hub id (default models/tiny-tabletop-llava)")
    demo.add_argument("--head", help="a2p: trained head directory (default models/tiny-tabletop-a2p)")
    demo.add_argument("--method", choices=("a2p", "attention"), help="pointing method (default a2p)")
    demo.add_argument(
        "--heads", help="attention: localization heads file (default: shipped for the backbone)"
    )
    demo.add_argument(
        "--untrained",
        action="store_true",
        default=None,
        help="run with a tiny UNTRAINED backbone and head built on the fly (checks the plumbing only)",
    )
    demo.add_argument(
        "--score-threshold",
        type=float,
        help="part_point_node's score_threshold (default: config/part_point.yaml's; -1: the method's)",
    )
    demo.add_argument("--timeout", type=float, help="longest wait for one step, seconds (default 60)")
    demo.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID (default: a private one, 101..200)")

    COMMANDS.update(train_commands.register(sub))
    COMMANDS.update(backbone_commands.register(sub))
    for verb, issue in PLACEHOLDER_ISSUES.items():
        holder = sub.add_parser(verb, help=f"not implemented yet (issue {issue})")
        holder.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def cmd_point(args: argparse.Namespace) -> int:
    from part_point_ros.grounding.inputs import check_limits, check_query, read_image

    query = check_query(args.query)  # fail fast, before loading any model
    max_pixels, max_ratio = check_limits(args.max_image_pixels, args.max_aspect_ratio)
    image = read_image(
        args.image, allow_grey=args.allow_grey, max_image_pixels=max_pixels, max_aspect_ratio=max_ratio
    )
    head = args.head
    if head and (
        Path(head).expanduser().is_dir() or head.startswith((".", "/", "~")) or head.count("/") != 1
    ):
        head = str(Path(head).expanduser())  # a local path, not a hub id: check it before loading models
        if not Path(head).is_dir():
            raise UserError(f"{args.head}: no such head directory (expected config.json + model.safetensors)")
    from part_point_ros.grounding.pointer import PartPointer

    pointer = PartPointer.from_pretrained(
        backbone=args.backbone,
        head=head,
        method=args.method,
        device=args.device,
        dtype=args.dtype,
        heads=args.heads,
        k=args.k,
        threshold=args.threshold,
        subpixel=False if args.no_subpixel else None,
        max_new_tokens=args.max_new_tokens,
        allow_grey=args.allow_grey,
        max_image_pixels=max_pixels,
        max_aspect_ratio=max_ratio,
        allow_pickle=args.allow_pickle_weights,
        crop=args.crop,
        quantization=args.quantization,
        compile_vision=args.compile,
        **_pop_kwargs(args),
    )
    result = pointer.point(image, query)
    if args.overlay:
        _write_overlay(args.overlay, image, result)
    if args.json:
        print(json.dumps(_json_safe(result.to_dict())))
    else:
        print(
            f"x={result.x:.1f} y={result.y:.1f} score={result.score:.3f} found={str(result.found).lower()} "
            f"method={result.method} latency_ms={result.latency_ms:.1f}"
        )
        if result.text is not None:
            print(f"answer: {result.text!r}")
    return 0


def _pop_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.method != "pop":
        return {}
    return {
        "extractor": args.extractor,
        "extractor_model": args.extractor_model,
        "support": args.support,
        "support_root": args.support_root,
        "support_fusion": args.support_fusion,
    }


def _parse_point(text: str | None) -> tuple[float, float]:
    try:
        u, v = (float(part) for part in (text or "").split(","))
    except ValueError:
        raise UserError(f"--point {text!r}: write the pixel as U,V, e.g. --point 212,131") from None
    return u, v


def cmd_teach(args: argparse.Namespace) -> int:
    from part_point_ros.grounding.supports import SupportStore

    store = SupportStore(args.support_root)
    if args.list:
        for name in store.list():
            support_set = store.load(name)
            print(f"{name}: {len(support_set)} example(s), {support_set.key}")
        return 0
    if not args.name:
        raise UserError("teach needs a NAME (and an IMAGE with --point U,V), or --list")
    if args.delete:
        store.delete(args.name)
        print(f"deleted {args.name!r} from {store.root}")
        return 0
    if not args.image or args.point is None:
        raise UserError("teach needs NAME IMAGE --point U,V (the part's pixel in the image)")
    from part_point_ros.grounding.features import LlavaTowerExtractor, load_extractor
    from part_point_ros.grounding.inputs import read_image

    point = _parse_point(args.point)
    image = read_image(args.image)
    model = args.extractor_model or (args.backbone if args.extractor == LlavaTowerExtractor.name else None)
    extractor = load_extractor(args.extractor, model, device=args.device)
    support_set = store.teach(args.name, image, point, extractor, image_path=str(Path(args.image).resolve()))
    print(f"taught {args.name!r}: {len(support_set)} example(s) in {store.root} ({support_set.key})")
    return 0


def _write_overlay(path: str, image: Any, result: Any) -> None:
    import cv2

    from part_point_ros.grounding.result import draw_overlay

    overlay = draw_overlay(image, result)
    try:
        ok = cv2.imwrite(path, overlay[..., ::-1])  # RGB -> BGR for OpenCV
    except cv2.error as err:
        raise UserError(f"cannot write overlay {path}: {err.msg if hasattr(err, 'msg') else err}") from err
    if not ok:
        raise UserError(f"cannot write overlay {path}: check the directory exists and the name ends in .png")


def _parse_data(spec: str, extra: Sequence[str]) -> tuple[str, dict[str, str]]:
    kind, sep, path = spec.partition(":")
    if not kind:
        raise UserError(f"--data {spec!r}: write it as KIND:PATH, e.g. pointbench:/data/pointbench")
    kwargs = {"root": path} if sep and path else {}
    for item in extra:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--data-arg {item!r}: write it as KEY=VALUE")
        kwargs[key.strip()] = value
    return kind, kwargs


def cmd_select_heads(args: argparse.Namespace) -> int:
    kind, kwargs = _parse_data(args.data, args.data_arg)
    if args.k < 1 or args.per_sample < 1 or args.max_samples < 1:
        raise UserError("--k, --per-sample and --max-samples must be >= 1")
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.data.registry import load_dataset
    from part_point_ros.grounding.localization_heads import calibrate

    dataset = load_dataset(kind, **kwargs)
    print(dataset.report(), file=sys.stderr)
    if len(dataset) == 0:
        raise UserError(f"--data {args.data}: the dataset has no samples")
    backbone = load_backbone(  # the whole model: every layer is scored (no lm_head: never generates)
        args.backbone,
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle_weights,
        crop=args.crop,
        quantization=args.quantization,
        lm_head=False,
    )
    n = min(len(dataset), args.max_samples)

    def progress(done: int) -> None:
        if done == n or done % 50 == 0:
            print(f"calibrated {done}/{n} samples", file=sys.stderr)

    heads_file = calibrate(
        backbone,
        dataset,
        k=args.k,
        per_sample=args.per_sample,
        exclude_layers=args.exclude_layers,
        max_samples=args.max_samples,
        source=f"{kind}:{kwargs.get('root', '')}",
        progress=progress,
    )
    heads_file.save(args.out)
    listed = ", ".join(f"{h} ({f:.3f})" for h, f in heads_file.heads)
    print(f"wrote {args.out}: {listed}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from part_point_ros.cli.bench import format_report, run_bench

    if args.reps < 1 or args.warmup < 0 or args.max_new_tokens < 1:
        raise UserError("--reps and --max-new-tokens must be >= 1, --warmup >= 0")
    report = run_bench(
        backbone=args.backbone,
        heads=args.heads,
        device=args.device,
        dtype=args.dtype,
        reps=args.reps,
        warmup=args.warmup,
        max_new_tokens=args.max_new_tokens,
        allow_pickle=args.allow_pickle_weights,
        memory=args.memory,
        crop=args.crop,
        quantization=args.quantization,
    )
    print(json.dumps(_json_safe(report), indent=2) if args.json else format_report(report))
    return 0


def cmd_bench_published(args: argparse.Namespace) -> int:
    from part_point_ros.cli.bench_published import format_published, run_published_bench

    if args.reps < 1 or args.warmup < 0 or args.max_new_tokens < 1:
        raise UserError("--reps and --max-new-tokens must be >= 1, --warmup >= 0")
    reports = []
    for name in args.config or ["llava-1.5-7b", "qwen2.5-vl-7b"]:
        report = run_published_bench(
            name,
            device=args.device,
            dtype=args.dtype,
            scale=args.scale,
            reps=args.reps,
            warmup=args.warmup,
            max_new_tokens=args.max_new_tokens,
            compile_vision=args.compile,
            methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        )
        reports.append(report)
        print(format_published(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(_json_safe(reports), indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:  # the ROS-free CLI works without rclpy; only this verb needs it
        from part_point_ros.ros import demo
    except ImportError as err:
        raise UserError(
            f"the demo needs ROS 2 (rclpy) and the colcon build ({err}): "
            "run scripts/demo.sh or . scripts/env.sh first"
        ) from None
    return demo.main(args)


COMMANDS = {
    "point": cmd_point,
    "select-heads": cmd_select_heads,
    "teach": cmd_teach,
    "bench": cmd_bench,
    "bench-published": cmd_bench_published,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in PLACEHOLDER_ISSUES:
        issue = PLACEHOLDER_ISSUES[args.command]
        print(f"{PROG}: error: {args.command} is not implemented yet: see issue {issue}", file=sys.stderr)
        return 2
    if not args.verbose:  # before transformers is imported: it reads these once
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from part_point_ros.errors import PartPointError

    try:
        return COMMANDS[args.command](args)
    except (PartPointError, UserError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
