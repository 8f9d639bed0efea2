"""The 3D lift alone, on the synthetic world: GraspLifter on the 16-bit millimetre depth a camera
publishes, against the renderer's true surface point at the same pixel (docs/ros.md, "The 3D lift").

For every query of the scenes, two pixels on its part: the innermost one (the centre of the largest
inscribed disc) and a random sub-pixel point on the part; both lifted with the default GraspLifter
(no mask) and with a mask of the part, errors in millimetres.

    python scripts/lift_error.py --seeds 200000:200020        # ~20 s
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from part_point_ros.geometry.camera import PinholeCamera
from part_point_ros.geometry.grasp import GraspLifter
from part_point_ros.ros.demo import lift_error_mm
from part_point_ros.sim.generate import parse_seeds
from part_point_ros.sim.render import render_scene


def scene_errors(seed: int, lifter: GraspLifter, rng: np.random.Generator) -> dict[str, list[float]]:
    """Lift errors (mm) of one scene: {"inner", "random", "inner, mask", "random, mask"}: lists."""
    scene = render_scene(seed)
    k = scene.intrinsics
    height, width = scene.depth_mm.shape
    camera = PinholeCamera.from_intrinsics(fx=k.fx, fy=k.fy, cx=k.cx, cy=k.cy, width=width, height=height)
    depth = np.where(scene.depth_mm > 0, scene.depth_mm / 1000.0, np.nan)  # as depth_fusion_node reads 16UC1
    out: dict[str, list[float]] = {"inner": [], "random": [], "inner, mask": [], "random, mask": []}
    for query in scene.queries:
        mask = np.isin(scene.part_ids, list(query.part_ids))
        if not mask.any():
            continue
        row, col = np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)
        rows, cols = np.nonzero(mask)
        pick = rng.integers(len(rows))
        pixels = {"inner": (float(col), float(row))}
        pixels["random"] = (cols[pick] + rng.uniform(-0.5, 0.5), rows[pick] + rng.uniform(-0.5, 0.5))
        for name, (u, v) in pixels.items():
            for suffix, part in (("", None), (", mask", mask)):
                result = lifter.lift(u, v, depth, camera, mask=part)
                if not result.ok:
                    continue
                grasp = (
                    np.asarray(scene.camera_pose)[:3, :3] @ result.point
                    + np.asarray(scene.camera_pose)[:3, 3]
                )
                error = lift_error_mm(scene, u, v, grasp)
                if error is not None:
                    out[name + suffix].append(error)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="200000:200020", help="scene seeds (default: test 200000:200020)")
    args = parser.parse_args(argv)
    rng, lifter = np.random.default_rng(0), GraspLifter()
    errors: dict[str, list[float]] = {}
    for seed in parse_seeds(args.seeds):
        for name, values in scene_errors(seed, lifter, rng).items():
            errors.setdefault(name, []).extend(values)
    print("| pixel | n | median mm | 75th | 90th | <= 2 mm |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, values in errors.items():
        e = np.asarray(values)
        q50, q75, q90 = np.percentile(e, [50, 75, 90])
        print(f"| {name} | {e.size} | {q50:.2f} | {q75:.2f} | {q90:.2f} | {np.mean(e <= 2.0):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
