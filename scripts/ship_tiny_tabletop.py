"""Ship a measured tiny-tabletop backbone and its head into models/ (what the README's demo loads).

    python scripts/ship_tiny_tabletop.py runs/backbone5/m3000 runs/synth8 --how "..."

after `bash scripts/measure_backbone.sh RUN B S` has made B (ship/, heads.json) and S (presence_e6/head):
- B/ship/*                  -> models/tiny-tabletop-llava (fp16 model directory, replaced whole)
- B/heads.json              -> models/tiny-tabletop-heads.json, its backbone named models/tiny-tabletop-llava
- S/presence_e6/head (fp16) -> models/tiny-tabletop-a2p, its backbone named the same, ``--how`` written
  into ``extra.presence.how``
then the found threshold of the shipped head on validation scenes 100000:100040 (written into its
config: docs/evaluation.md), as `python -m part_point_ros.training.calibration --method a2p --seeds
100000:100040 --twin-seeds none --write-threshold` does. Ship only when the validation seeds say so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from part_point_ros.heads import PartPointHead

ROOT = Path(__file__).resolve().parent.parent
MODEL = "models/tiny-tabletop-llava"
HEADS = "models/tiny-tabletop-heads.json"
HEAD = "models/tiny-tabletop-a2p"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measured", type=Path, help="the backbone's measure directory (ship/, heads.json)")
    parser.add_argument("runs", type=Path, help="the caches-and-heads directory (presence_e6/head)")
    parser.add_argument("--how", required=True, help="how the head was trained, for its config")
    parser.add_argument("--no-threshold", action="store_true", help="skip the validation threshold")
    args = parser.parse_args(argv)
    ship, heads = args.measured / "ship", args.measured / "heads.json"
    head_dir = args.runs / "presence_e6/head"
    for path in (ship / "config.json", heads, head_dir / "config.json"):
        if not path.is_file():
            parser.error(f"{path} is missing: run scripts/measure_backbone.sh first")

    model = ROOT / MODEL
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(ship, model)
    selected = json.loads(heads.read_text())
    selected["backbone"]["name"] = MODEL
    (ROOT / HEADS).write_text(json.dumps(selected, indent=2) + "\n")

    head = PartPointHead.from_pretrained(head_dir).half()
    head.config.backbone["name"] = MODEL
    head.config.extra.pop("calibration", None)  # chosen again below, on the fp16 head that ships
    head.config.extra["presence"] = {"how": args.how}
    shutil.rmtree(ROOT / HEAD, ignore_errors=True)
    head.save_pretrained(ROOT / HEAD)
    print(f"shipped {ship} -> {MODEL}, {heads} -> {HEADS}, {head_dir} (fp16) -> {HEAD}")
    if args.no_threshold:
        return 0
    from part_point_ros.training import calibration  # its defaults: the models/ just written

    os.chdir(ROOT)
    args = ["--method", "a2p", "--seeds", "100000:100040", "--twin-seeds", "none", "--write-threshold"]
    return calibration.main(args)


if __name__ == "__main__":
    raise SystemExit(main())
