"""POP few-shot pointing measured on the synthetic world: 1-shot and k-shot beside attention pointing.

For every direct single-instance query of the held-out test scenes (seeds 200000..) the part is
taught with examples from TRAIN scenes (seeds 0.., never test): each example is a train scene that
has the same object type and part, with the point at the part mask's innermost pixel (what a user
would click). The support set is named by the query text, so the MLLM sees the query exactly as a
user asks it. Every method runs through ``PartPointer`` with its defaults (POP: the top-3
localization heads, the dense extractor given; attention: the same top-3 heads, and the shipped k).
A hit: the point lies in the query's part mask.

    python -m part_point_ros.training.few_shot --scenes 40 --shots 1,3
    python -m part_point_ros.training.few_shot --scenes 40 --shots 1,3 --support-fusion mean

(defaults: the shipped tiny-tabletop backbone and heads; ``extractor llava-tower``, the backbone's
own vision tower, since DINOv3 cannot be downloaded here).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from part_point_ros.grounding.methods.pop import SUPPORT_FUSIONS
from part_point_ros.sim.ground_truth import innermost_pixel
from part_point_ros.training.metrics import point_hit

TEST_SEED0, TRAIN_SEED0 = 200000, 0


def _direct_queries(scene: Any) -> list[Any]:
    return [q for q in scene.queries if q.kind == "direct" and not q.ambiguous and len(q.part_ids) == 1]


def support_examples(
    keys: set[tuple[str, str]], shots: int, *, seed0: int = TRAIN_SEED0, max_scenes: int = 400
):
    """(object type, part) -> up to ``shots`` (image, (u, v)) from train scenes ``seed0``.."""
    from part_point_ros.sim import render_scene

    examples: dict[tuple[str, str], list[tuple[np.ndarray, tuple[float, float]]]] = {k: [] for k in keys}
    for seed in range(seed0, seed0 + max_scenes):
        if all(len(v) >= shots for v in examples.values()):
            break
        scene = render_scene(seed)
        for q in _direct_queries(scene):
            key = (q.object_type, q.part)
            if key in examples and len(examples[key]) < shots:
                u, v = innermost_pixel(scene.part_masks[q.part_ids[0]])  # a visible part: never None
                examples[key].append((scene.rgb, (float(u), float(v))))
    return examples


def run_few_shot(
    backbone: str,
    heads: str,
    *,
    scenes: int = 40,
    shots: Sequence[int] = (1, 3),
    extractor: str = "llava-tower",
    extractor_model: str | None = None,
    support_fusion: str = "product",
    log: Any = None,
) -> dict[str, Any]:
    """Hit rates of attention (top-3 and shipped-k heads) and POP at each of ``shots``, its supports'
    maps combined by ``support_fusion`` (``PopOptions``: the paper's product by default)."""
    from part_point_ros.grounding.pointer import PartPointer
    from part_point_ros.sim import render_scene

    start = time.perf_counter()
    test = [render_scene(TEST_SEED0 + i) for i in range(scenes)]
    keys = {(q.object_type, q.part) for s in test for q in _direct_queries(s)}
    examples = support_examples(keys, max(shots))
    hits: dict[str, list[bool]] = {}
    with tempfile.TemporaryDirectory() as root:
        attention = {"method": "attention", "heads": heads}
        pointers: dict[str, Any] = {
            "attention (top-3 heads, as POP)": PartPointer.from_pretrained(backbone, **attention, k=3),
            "attention (shipped k)": PartPointer.from_pretrained(backbone, **attention),
        }
        for k in shots:
            pointers[f"pop {k}-shot"] = PartPointer.from_pretrained(
                backbone, method="pop", heads=heads, extractor=extractor, extractor_model=extractor_model,
                support_root=Path(root) / f"{k}-shot", support_fusion=support_fusion,
            )  # fmt: skip
        skipped = 0
        for scene in test:
            for q in _direct_queries(scene):
                key = (q.object_type, q.part)
                if len(examples[key]) < max(shots):
                    skipped += 1  # too few train examples of this part: not scored by any method
                    continue
                mask = scene.part_masks[q.part_ids[0]]
                for name, pointer in pointers.items():
                    if name.startswith("pop") and not pointer.support_store.exists(q.text):
                        for image, point in examples[key][: int(name.split()[1].split("-")[0])]:
                            pointer.teach(q.text, image, point)
                    result = pointer.point(scene.rgb, q.text)
                    hits.setdefault(name, []).append(point_hit(mask, result.x, result.y))
        if log:
            log(f"{len(next(iter(hits.values()), []))} queries scored, {skipped} skipped")
    return {
        "test_seeds": f"{TEST_SEED0}:{TEST_SEED0 + scenes}",
        "support_seeds": f"train scenes from {TRAIN_SEED0}",
        "queries": len(next(iter(hits.values()), [])),
        "skipped_queries": skipped,
        "accuracy": {name: float(np.mean(v)) for name, v in hits.items()},
        "hits": {name: int(np.sum(v)) for name, v in hits.items()},
        "extractor": extractor,
        "support_fusion": support_fusion,
        "seconds": time.perf_counter() - start,
    }


def format_few_shot(report: dict[str, Any]) -> str:
    n = report["queries"]
    lines = [f"| method (held-out seeds {report['test_seeds']}, {n} queries) | accuracy |", "| --- | ---: |"]
    for name, value in report["accuracy"].items():
        lines.append(f"| {name} | {value:.3f} ({report['hits'][name]}/{n}) |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[3]
    p = argparse.ArgumentParser(prog="python -m part_point_ros.training.few_shot", description=__doc__)
    p.add_argument("--backbone", default=str(root / "models" / "tiny-tabletop-llava"))
    p.add_argument("--heads", default=str(root / "models" / "tiny-tabletop-heads.json"))
    p.add_argument("--scenes", type=int, default=40, help="held-out test scenes from seed 200000")
    p.add_argument("--shots", default="1,3", help="comma-separated shot counts")
    p.add_argument("--extractor", default="llava-tower", choices=("llava-tower", "dinov3"))
    p.add_argument("--extractor-model", help="hub id or directory of the extractor's model")
    p.add_argument(
        "--support-fusion",
        default="product",
        choices=SUPPORT_FUSIONS,
        help="how K supports' maps combine (default: product, the paper's)",
    )
    p.add_argument("--json", type=Path, help="also write the report here")
    o = p.parse_args(argv)
    shots = tuple(int(s) for s in o.shots.split(","))
    report = run_few_shot(
        o.backbone, o.heads, scenes=o.scenes, shots=shots, extractor=o.extractor,
        extractor_model=o.extractor_model, support_fusion=o.support_fusion,
        log=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    print(format_few_shot(report))
    if o.json:
        o.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
