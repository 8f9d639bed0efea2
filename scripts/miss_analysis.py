#!/usr/bin/env python
"""Where a trained A2P head's misses land, from a feature cache (docs/tiny_tabletop.md, "The
ablations on the shipped backbone"): accuracy and patch accuracy with and without the sub-pixel
refinement, the misses whose point is in a token that touches the part (distance to the part in
original pixels) against those elsewhere, and accuracy by part size.

    python scripts/miss_analysis.py runs/s9/results/full/head runs/s9/cache/eval
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from part_point_ros.heads import PartPointHead
from part_point_ros.training.evaluate import predict_from_cache
from part_point_ros.training.feature_cache import FeatureCache

SIZES = ((0, 100), (100, 400), (400, 1500), (1500, None))  # part mask pixels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("head", help="head directory")
    p.add_argument("cache", help="feature cache split directory, e.g. runs/s9/cache/eval")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    head = PartPointHead.from_pretrained(args.head).float()
    cache = FeatureCache(args.cache)
    for subpixel in (True, False):
        rows = []  # (distance to the part, patch hit, hit, part pixels) per present query
        for i, r in enumerate(predict_from_cache(head, cache, subpixel=subpixel)):
            mask = cache.mask(i)
            mask = mask.any(axis=0) if mask.ndim == 3 else mask
            if not mask.any():
                continue  # an absent query: nothing to hit
            x = int(min(max(r.x, 0), mask.shape[1] - 1))
            y = int(min(max(r.y, 0), mask.shape[0] - 1))
            rows.append((distance_transform_edt(~mask)[y, x], r.patch_hit, r.hit, int(mask.sum())))
        d, patch, hit, size = (np.array(c) for c in zip(*rows, strict=True))
        near, far = ~hit & patch, ~hit & ~patch
        print(
            f"subpixel={subpixel}: n {len(d)}, accuracy {hit.mean():.3f}, patch accuracy {patch.mean():.3f}"
        )
        print(
            f"  misses in a token touching the part: {near.sum()}, median {np.median(d[near]):.1f} px off, "
            f"<= 4 px {np.mean(d[near] <= 4):.2f}, <= 8 px {np.mean(d[near] <= 8):.2f}, "
            f"on parts < 400 px {np.mean(size[near] < 400):.2f}"
        )
        print(f"  misses elsewhere: {far.sum()}, median {np.median(d[far]):.1f} px off")
        for lo, hi in SIZES:
            s = (size >= lo) & (size < (hi or np.inf))
            print(
                f"  parts of {lo}-{hi or 'more'} px: n {s.sum()}, accuracy {hit[s].mean():.3f}, "
                f"patch {patch[s].mean():.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
