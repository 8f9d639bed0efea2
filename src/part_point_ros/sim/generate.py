"""Write a split of the synthetic world to disk.

python -m part_point_ros.sim.generate --out data/synthetic --seeds 0:100 --split train

Seeds in the twin range (``sim.layout.TWIN_SEEDS``, 1,000,000-1,999,999) are written as twin scenes
(``render_twin_scene``: two or three instances of one type, with the ambiguous and "plural" queries
that mean every instance), e.g. the train twins a head learns "every instance" from:
python -m part_point_ros.sim.generate --out data/synthetic --seeds 1000000:1000200 --split train_twins
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from part_point_ros.errors import InputError, PartPointError
from part_point_ros.sim.disk import write_scene
from part_point_ros.sim.layout import is_twin_seed
from part_point_ros.sim.render import DEFAULT_HEIGHT, DEFAULT_WIDTH, render_scene, render_twin_scene

_SPLIT = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_seeds(text: str) -> list[int]:
    """'0:100' (start:stop, stop excluded), '7', or '1,5,9' (items may be ranges) -> seeds."""
    seeds: list[int] = []
    for item in text.split(","):
        item = item.strip()
        try:
            if ":" in item:
                start, stop = (int(x) for x in item.split(":"))
                seeds.extend(range(start, stop))
            else:
                seeds.append(int(item))
        except ValueError:
            raise InputError(f"bad seed spec {text!r}: use START:STOP, N or N,M,... (e.g. 0:100)") from None
    if not seeds or min(seeds) < 0:
        raise InputError(f"seed spec {text!r} gives no seeds or a negative one; e.g. --seeds 0:100")
    return seeds


def generate_dataset(
    root: str | Path,
    seeds: Iterable[int],
    split: str,
    *,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
) -> list[Path]:
    """Render every seed and write it under ``<root>/<split>/scene_<seed>/``; returns the scene dirs.

    Keep seed ranges of different splits disjoint: the scene depends on the seed only. Twin seeds
    (``sim.layout.is_twin_seed``) give twin scenes (module doc).
    """
    if not _SPLIT.match(split):
        raise InputError(f"split name {split!r} must be letters, digits, '_', '-' or '.', e.g. 'train'")

    def render(seed: int):
        draw = render_twin_scene if is_twin_seed(seed) else render_scene
        return draw(seed, width=width, height=height)

    return [write_scene(render(seed), root, split=split) for seed in seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m part_point_ros.sim.generate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="dataset root directory")
    parser.add_argument("--seeds", required=True, help="START:STOP (stop excluded), N, or a comma list")
    parser.add_argument("--split", default="train", help="split name (sub-directory), default: train")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    args = parser.parse_args(argv)
    try:
        dirs = generate_dataset(
            args.out, parse_seeds(args.seeds), args.split, width=args.width, height=args.height
        )
    except PartPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(dirs)} scenes to {Path(args.out) / args.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
