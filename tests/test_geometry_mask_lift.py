"""Mask-based 3D lift (LENS masks): depth over mask ∩ window, snapping onto the mask, and the grasp's
x axis along an elongated part's principal axis.

The synthetic world's GROUND-TRUTH part masks and depth stand in for SAM's masks (a random-weight
SAM gives meaningless masks); plain arrays cover the edge cases.
"""

from __future__ import annotations

import numpy as np
import pytest
from geometry_helpers import plane_depth, plane_normal

from part_point_ros.errors import InputError
from part_point_ros.geometry.camera import PinholeCamera
from part_point_ros.geometry.depth import mask_depth, robust_depth
from part_point_ros.geometry.grasp import (
    GraspLifter,
    GraspResult,
    LiftFailure,
    grasp_rotation,
    grasp_rotation_along,
)
from part_point_ros.geometry.part_axis import mask_points, nearest_mask_pixel, principal_axis
from part_point_ros.sim.render import render_scene

W, H = 320, 240
HANDLE_TYPES = ("hammer", "spatula", "screwdriver")  # straight handles along the object's x axis


def camera(width=160, height=120):
    return PinholeCamera.from_intrinsics(
        fx=300.0, fy=300.0, cx=(width - 1) / 2, cy=(height - 1) / 2, width=width, height=height
    )


def sim_camera(scene):
    i = scene.intrinsics
    return PinholeCamera.from_intrinsics(fx=i.fx, fy=i.fy, cx=i.cx, cy=i.cy, width=i.width, height=i.height)


def angle_deg(a, b, *, signed=True):
    c = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(c if signed else abs(c), -1.0, 1.0))))


def assert_grasp_frame(rotation, normal):
    """Orthonormal, right-handed, z = approach = -normal (the convention of grasp.py)."""
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(rotation[:, 2], -normal / np.linalg.norm(normal), atol=1e-9)


@pytest.fixture(scope="module")
def scenes():
    return {seed: render_scene(seed, width=W, height=H) for seed in (0, 2, 3)}


def part_points_3d(scene, part_id, cam):
    """The TRUE 3D points (N, 3) of a part: its ground-truth mask pixels at their rendered depth."""
    rows, cols = np.nonzero(scene.part_masks[part_id])
    return cam.deproject(np.column_stack([cols, rows]).astype(np.float64), scene.depth_m[rows, cols])


def edge_pixel(scene, part_id, window=5):
    """The part's mask pixel whose window sees the most background at least 2 cm behind the part."""
    mask, depth = scene.part_masks[part_id], np.nan_to_num(scene.depth_m, nan=np.inf)
    half, best = window // 2, (-1.0, 0, 0)
    for r, c in zip(*np.nonzero(mask), strict=True):
        box = (slice(max(r - half, 0), r + half + 1), slice(max(c - half, 0), c + half + 1))
        behind = float(((~mask[box]) & (depth[box] > depth[r, c] + 0.02)).mean())
        best = max(best, (behind, int(c), int(r)))
    return best


def handle(scene, object_type):
    return next(p for p in scene.parts if p.object_type == object_type and p.part == "handle")


# --- depth over mask ∩ window ---------------------------------------------------------------------


def test_mask_depth_is_the_median_over_mask_and_window_only():
    depth = np.full((9, 9), 2.0, dtype=np.float32)  # background 2 m
    mask = np.zeros((9, 9), bool)
    depth[3:6, 4] = [0.50, 0.52, 0.54]
    mask[3:6, 4] = True  # a 1-px-wide vertical part at column 4
    depth[0, 4], mask[0, 4] = 0.3, True  # in the mask but outside the 3x3 window
    reading = mask_depth(depth, mask, 4.0, 4.0, window=3)
    assert reading.ok and reading.source == "mask" and reading.n_valid == 3
    assert reading.value == pytest.approx(0.52)
    assert robust_depth(depth, 4.0, 4.0, window=3).value == pytest.approx(2.0)  # the window alone: background


def test_mask_depth_ignores_nan_zero_and_out_of_range_depth_in_the_mask():
    depth = np.full((7, 7), 1.0, dtype=np.float32)
    depth[2:5, 2:5] = [[np.nan, 0.8, 0.0], [0.81, np.inf, 0.82], [50.0, 0.83, np.nan]]
    mask = np.zeros((7, 7), bool)
    mask[2:5, 2:5] = True
    reading = mask_depth(depth, mask, 3.0, 3.0, window=3)
    assert reading.n_valid == 4 and reading.value == pytest.approx(np.median([0.8, 0.81, 0.82, 0.83]))


def test_mask_depth_without_valid_mask_pixels_in_the_window_says_so():
    depth = np.full((9, 9), 1.0, dtype=np.float32)
    mask = np.zeros((9, 9), bool)
    mask[4, 3:6] = True
    depth[4, 3:6] = np.nan
    mask[0, 0] = True  # valid, but far from the window
    reading = mask_depth(depth, mask, 4.0, 4.0, window=3)
    assert reading.value is None and reading.source == "mask"
    assert "no valid depth in the part mask at (4.0, 4.0): 0 of the 3 mask pixels" in reading.reason


def test_empty_mask_falls_back_to_the_window_reading():
    depth = np.arange(81, dtype=np.float32).reshape(9, 9) / 100 + 1.0
    reading = mask_depth(depth, np.zeros((9, 9), bool), 4.0, 4.0, window=3)
    assert reading.source == "window"
    assert reading == robust_depth(depth, 4.0, 4.0, window=3)


def test_a_mask_of_another_size_is_an_input_error():
    with pytest.raises(InputError, match="part mask is 8x9 but the depth image is 9x9"):
        mask_depth(np.ones((9, 9), np.float32), np.ones((9, 8), bool), 4.0, 4.0)
    with pytest.raises(InputError, match=r"must be 2D \(H, W\), got shape \(9, 9, 3\)"):
        mask_depth(np.ones((9, 9), np.float32), np.ones((9, 9, 3), bool), 4.0, 4.0)
    result = GraspLifter().lift(80.0, 60.0, np.ones((120, 160)), camera(), mask=np.ones((60, 80), bool))
    assert (
        isinstance(result, LiftFailure)
        and "part mask is 80x60 but the depth image is 160x120" in result.reason
    )


# --- the lift on the synthetic world's ground truth -----------------------------------------------


@pytest.mark.parametrize(("seed", "object_type"), [(0, "hammer"), (2, "hammer"), (3, "screwdriver")])
def test_at_a_handle_edge_the_mask_lift_stays_on_the_part_where_the_window_lift_falls_off(
    scenes, seed, object_type
):
    scene = scenes[seed]
    cam, part = sim_camera(scene), handle(scene, object_type)
    behind, u, v = edge_pixel(scene, part.part_id)
    assert behind >= 0.5, "precondition: most of the window sees the background behind the handle"
    true_points = part_points_3d(scene, part.part_id, cam)

    def distance_to_part(result):
        assert isinstance(result, GraspResult), getattr(result, "reason", "")
        return float(np.min(np.linalg.norm(true_points - result.point, axis=1)))

    window_only = GraspLifter().lift(u, v, scene.depth_m, cam)
    with_mask = GraspLifter().lift(u, v, scene.depth_m, cam, mask=scene.part_masks[part.part_id])
    assert window_only.depth_source == "window" and with_mask.depth_source == "mask"
    assert distance_to_part(window_only) > 0.02  # on the table behind the handle
    assert distance_to_part(with_mask) < 0.005
    assert with_mask.pixel == (float(u), float(v))


def test_nan_depth_inside_the_mask_is_ignored(scenes):
    scene = scenes[0]
    cam, part = sim_camera(scene), handle(scene, "hammer")
    mask = scene.part_masks[part.part_id]
    u, v = part.point_2d
    depth = scene.depth_m.copy()
    rows, cols = np.nonzero(mask)
    holes = (np.abs(rows - v) <= 2) & (np.abs(cols - u) <= 2) & ((rows + cols) % 2 == 0)
    depth[rows[holes], cols[holes]] = np.nan  # a checkerboard of holes in the window, the centre included
    assert np.isnan(depth[v, u])
    reading = mask_depth(depth, mask, u, v)
    box = depth[v - 2 : v + 3, u - 2 : u + 3][mask[v - 2 : v + 3, u - 2 : u + 3]]
    assert reading.n_valid == int(np.isfinite(box).sum()) > 0
    assert reading.value == pytest.approx(float(np.nanmedian(box)))
    result = GraspLifter().lift(u, v, depth, cam, mask=mask)
    assert isinstance(result, GraspResult)
    assert np.min(np.linalg.norm(part_points_3d(scene, part.part_id, cam) - result.point, axis=1)) < 0.005


@pytest.mark.parametrize(
    ("seed", "object_type"), [(0, "hammer"), (0, "spatula"), (2, "hammer"), (3, "screwdriver")]
)
def test_a_handles_principal_axis_is_its_true_3d_direction(scenes, seed, object_type):
    scene = scenes[seed]
    cam, part = sim_camera(scene), handle(scene, object_type)
    pose = next(o.pose for o in scene.objects if o.object_id == part.object_id)
    # the handle runs along the object's x axis (sim/meshes.py); base_link -> optical frame
    true_dir = scene.camera_pose[:3, :3].T @ (pose[:3, :3] @ np.array([1.0, 0.0, 0.0]))
    mask = scene.part_masks[part.part_id]
    axis = principal_axis(mask_points(scene.depth_m, cam, mask))
    assert axis.elongated() and axis.elongation > 3.0
    assert angle_deg(axis.direction, true_dir, signed=False) < 3.0

    result = GraspLifter().lift(*part.point_2d, scene.depth_m, cam, mask=mask)
    assert isinstance(result, GraspResult) and result.axis_source == "mask"
    assert result.elongation == pytest.approx(axis.elongation)
    rotation = result.pose.rotation
    assert_grasp_frame(rotation, result.normal)
    assert angle_deg(rotation[:, 0], true_dir, signed=False) < 3.0
    assert rotation[0, 0] >= 0.0  # x points toward image right
    camera_x = grasp_rotation(result.normal)[:, 0]
    if angle_deg(camera_x, true_dir, signed=False) > 10.0:  # else the test could not tell them apart
        assert angle_deg(rotation[:, 0], camera_x, signed=False) > 10.0


def test_mask_pixels_on_the_far_background_do_not_tilt_the_axis(scenes):
    """A mask that leaks onto the floor far behind the handle (20 % of its pixels): the depth outliers
    are dropped, so the axis is still the handle's (without the filter it is ~40 degrees off)."""
    scene = scenes[0]
    cam, part = sim_camera(scene), handle(scene, "hammer")
    pose = next(o.pose for o in scene.objects if o.object_id == part.object_id)
    true_dir = scene.camera_pose[:3, :3].T @ (pose[:3, :3] @ np.array([1.0, 0.0, 0.0]))
    mask = scene.part_masks[part.part_id]
    far_rows, far_cols = np.nonzero(np.nan_to_num(scene.depth_m, nan=0.0) > 1.0)  # the floor, > 1 m
    leaky = mask.copy()
    leaky[far_rows[:150], far_cols[:150]] = True
    assert leaky.sum() == mask.sum() + 150
    points = mask_points(scene.depth_m, cam, leaky)
    np.testing.assert_allclose(points, mask_points(scene.depth_m, cam, mask))
    assert angle_deg(principal_axis(points).direction, true_dir, signed=False) < 3.0
    unfiltered = mask_points(scene.depth_m, cam, leaky, outlier_mads=np.inf)
    assert angle_deg(principal_axis(unfiltered).direction, true_dir, signed=False) > 20.0


def test_grasp_rotation_along_keeps_x_toward_image_right_and_refuses_an_axis_along_the_approach():
    normal = np.array([-0.8, 0.0, -0.6])  # z = approach = (0.8, 0, 0.6)
    receding = np.array([0.05, 0.0, 1.0])  # toward image right, but its projection points left
    rotation = grasp_rotation_along(normal, receding)
    assert_grasp_frame(rotation, normal)
    assert rotation[0, 0] > 0.5
    in_plane = receding - (receding @ rotation[:, 2]) * rotation[:, 2]
    assert angle_deg(rotation[:, 0], -in_plane) < 1e-6  # along the axis, the sign turned
    np.testing.assert_allclose(grasp_rotation_along(normal, -receding), rotation, atol=1e-12)
    vertical = grasp_rotation_along(np.array([0.0, 0.0, -1.0]), np.array([0.0, -1.0, 0.0]))
    np.testing.assert_allclose(vertical[:, 0], [0.0, 1.0, 0.0], atol=1e-12)  # x . camera x = 0: down
    assert grasp_rotation_along(normal, np.array([0.8, 0.0, 0.6])) is None  # along the approach


# --- the lift on plain arrays: elongation threshold, snapping, fallbacks ---------------------------


def tilted_plane(cam):
    n = plane_normal(30.0, axis="y")
    return n, plane_depth(cam, n, np.array([0.0, 0.0, 0.8]))


def test_an_elongated_bar_sets_x_along_it_and_a_round_blob_keeps_the_camera_convention():
    cam = camera()
    n, depth = tilted_plane(cam)
    rows, cols = np.mgrid[0:120, 0:160]
    bar = (np.abs((rows - 60) - 0.5 * (cols - 80)) < 3) & (np.abs(cols - 80) < 40)  # a diagonal bar
    disc = (rows - 60) ** 2 + (cols - 80) ** 2 < 15**2
    on_bar = GraspLifter().lift(80.0, 60.0, depth, cam, mask=bar)
    on_disc = GraspLifter().lift(80.0, 60.0, depth, cam, mask=disc)
    plain = GraspLifter().lift(80.0, 60.0, depth, cam)
    assert on_bar.axis_source == "mask" and on_bar.elongation > 5.0
    assert on_disc.axis_source == "camera" and on_disc.elongation < GraspLifter().min_elongation
    np.testing.assert_allclose(on_disc.pose.rotation, plain.pose.rotation, atol=1e-9)
    np.testing.assert_allclose(on_disc.point, plain.point, atol=1e-9)
    # the bar's true 3D direction: its two ends on the plane
    ends = cam.deproject(np.array([[60.0, 50.0], [100.0, 70.0]]), depth[[50, 70], [60, 100]])
    bar_dir = ends[1] - ends[0]
    assert_grasp_frame(on_bar.pose.rotation, on_bar.normal)
    assert angle_deg(on_bar.pose.rotation[:, 0], bar_dir) < 1.0  # same sign: x toward image right
    off = GraspLifter(axis_from_mask=False).lift(80.0, 60.0, depth, cam, mask=bar)
    assert off.axis_source == "camera"
    np.testing.assert_allclose(off.pose.rotation, plain.pose.rotation, atol=1e-9)


def test_a_point_just_off_the_mask_moves_onto_it_and_a_far_mask_is_ignored():
    cam = camera()
    depth = np.full((120, 160), 1.5)
    depth[50:71, 70:91] = 0.6  # a box 0.6 m away in front of a 1.5 m background
    box = depth < 1.0
    near = GraspLifter().lift(94.0, 60.0, depth, cam, mask=box)  # 4 px right of the box
    assert near.depth_source == "mask" and near.pixel == (90.0, 60.0)
    assert near.point[2] == pytest.approx(0.6)
    far = GraspLifter(mask_snap_px=10.0).lift(120.0, 60.0, depth, cam, mask=box)  # 30 px away
    assert far.depth_source == "window" and far.pixel == (120.0, 60.0)
    assert far.point[2] == pytest.approx(1.5)
    empty = GraspLifter().lift(80.0, 60.0, depth, cam, mask=np.zeros_like(box))
    assert empty.depth_source == "window" and empty.axis_source == "camera" and empty.elongation is None
    assert empty.point[2] == pytest.approx(0.6)


def test_nearest_mask_pixel_and_principal_axis_edge_cases():
    mask = np.zeros((5, 6), bool)
    assert nearest_mask_pixel(mask, 2.0, 2.0) is None
    mask[1, 4] = mask[3, 1] = True
    assert nearest_mask_pixel(mask, 4.2, 0.9) == pytest.approx((4, 1, np.hypot(0.2, 0.1)))
    assert nearest_mask_pixel(mask, 0.0, 4.0) == pytest.approx((1, 3, np.sqrt(2.0)))
    line = np.column_stack([np.linspace(-1, 1, 5), np.zeros(5), np.ones(5)])
    axis = principal_axis(-line[::-1])  # reversed and negated: the sign must come out the same
    np.testing.assert_allclose(axis.direction, [1.0, 0.0, 0.0], atol=1e-12)
    assert axis.elongation == np.inf
    with pytest.raises(ValueError, match="at least 3 finite points, got 2"):
        principal_axis(np.array([[0, 0, 1.0], [1, 0, 1.0], [np.nan, 0, 1.0]]))
