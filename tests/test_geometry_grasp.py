import numpy as np
import pytest
from geometry_helpers import cylinder_depth, plane_depth, plane_normal, ray_cylinder_depth, ray_plane_point

from part_point_ros.geometry.camera import PinholeCamera
from part_point_ros.geometry.grasp import GraspLifter, GraspResult, LiftFailure, grasp_rotation
from part_point_ros.geometry.normals import estimate_normal, local_points


def camera(d=(), model="plumb_bob", frame_id="cam_optical"):
    return PinholeCamera.from_intrinsics(
        fx=300.0,
        fy=300.0,
        cx=79.5,
        cy=59.5,
        width=160,
        height=120,
        d=d,
        distortion_model=model,
        frame_id=frame_id,
    )


def angle_deg(a, b):
    return np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


@pytest.mark.parametrize("tilt", [0.0, 30.0, -50.0])
def test_normal_of_a_tilted_plane_points_toward_the_camera(tilt):
    cam = camera()
    n_true = plane_normal(tilt)
    depth = plane_depth(cam, n_true, np.array([0.0, 0.0, 1.0]))
    pts = local_points(depth, cam, 80.0, 60.0, radius_px=6, depth_center=depth[60, 80], depth_band=0.2)
    assert pts.shape == (169, 3)
    surface = estimate_normal(pts, center=pts[84])
    assert angle_deg(surface.normal, n_true) < 0.1
    assert surface.residual < 1e-6


def test_lift_on_a_tilted_plane_gives_the_ray_plane_point_and_approach_against_the_normal():
    cam = camera()
    n_true = plane_normal(35.0, axis="y")
    anchor = np.array([0.05, -0.02, 0.8])
    depth = plane_depth(cam, n_true, anchor)
    u, v = 101.3, 40.7
    result = GraspLifter().lift(u, v, depth, cam)
    assert isinstance(result, GraspResult) and result.ok
    np.testing.assert_allclose(result.point, ray_plane_point(cam, u, v, n_true, anchor), atol=1e-6)
    np.testing.assert_allclose(cam.project(result.point[None]), [[u, v]], atol=1e-4)
    assert angle_deg(result.normal, n_true) < 0.1
    np.testing.assert_allclose(result.approach, -result.normal)
    r = result.pose.rotation
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-9)
    assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(result.pose.translation, result.point)
    assert result.pose.parent_frame == "cam_optical"


@pytest.mark.parametrize("offset", [0.0, 0.3, 0.6, 0.8])  # share of the radius off the apex, in the image
def test_lift_on_a_curved_part_lands_on_its_surface(offset):
    """A cylinder of radius 4 cm at 0.6 m (a mug's body): the point is the ray's own surface point to
    0.3 mm (the plane of a 15 x 15-pixel patch missed it by millimetres, growing toward the edge)."""
    cam = camera()
    center, radius = np.array([0.0, 0.0, 0.6]), 0.04
    depth = cylinder_depth(cam, center, radius)
    x = offset * radius / (center[2] - radius)  # normalised image x of a ray toward that side
    u, v = cam.k[0, 2] + x * cam.k[0, 0] + 0.37, 60.6  # and sub-pixel
    result = GraspLifter().lift(u, v, depth, cam)
    assert result.ok
    ray = cam.pixel_rays(np.array([[u, v]]))
    truth = ray[0] * ray_cylinder_depth(ray, center, radius)[0]
    assert np.linalg.norm(result.point - truth) < 3e-4, (offset, 1000 * np.linalg.norm(result.point - truth))


@pytest.mark.parametrize(
    ("d", "model"),
    [
        ([-0.25, 0.09, 0.001, -0.002, -0.015], "plumb_bob"),
        ([0.3, -0.1, 0.001, 0.0, 0.02, 0.6, -0.05, 0.03], "rational_polynomial"),
    ],
)
def test_lift_with_lens_distortion_lands_on_the_true_surface_point(d, model):
    cam = camera(d=d, model=model)
    n_true = plane_normal(-25.0)
    anchor = np.array([0.0, 0.0, 1.2])
    depth = plane_depth(cam, n_true, anchor)
    u, v = 20.0, 100.0  # near a corner, where distortion is strongest
    result = GraspLifter().lift(u, v, depth, cam)
    assert result.ok
    np.testing.assert_allclose(result.point, ray_plane_point(cam, u, v, n_true, anchor), atol=1e-5)
    assert angle_deg(result.normal, n_true) < 0.2


def test_thin_part_in_front_of_the_background_uses_the_part_depth_only():
    cam = camera()
    depth = np.full((120, 160), 1.5)
    depth[50:71, 70:91] = 0.6  # a 21x21 px box facing the camera 0.6 m away, background at 1.5 m
    result = GraspLifter(normal_radius=15).lift(80.0, 60.0, depth, cam)
    assert result.ok
    np.testing.assert_allclose(result.point, cam.deproject(np.array([[80.0, 60.0]]), 0.6)[0], atol=1e-9)
    assert angle_deg(result.normal, np.array([0.0, 0.0, -1.0])) < 0.5


def test_missing_depth_gives_a_failure_with_a_reason():
    cam = camera()
    depth = np.full((120, 160), 1.0)
    depth[40:80, 60:100] = np.nan
    result = GraspLifter().lift(80.0, 60.0, depth, cam)
    assert isinstance(result, LiftFailure) and not result.ok
    assert "no valid depth at (80.0, 60.0)" in result.reason


def test_other_failures_name_their_cause():
    cam = camera()
    assert "outside the 160x120 image" in GraspLifter().lift(170.0, 5.0, np.ones((120, 160)), cam).reason
    assert "aligned to the colour image" in GraspLifter().lift(5.0, 5.0, np.ones((60, 80)), cam).reason
    sparse = np.full((120, 160), np.nan)
    sparse[59:62, 79:82] = 1.0  # 9 valid pixels: a depth, but too few for a normal
    assert "too few depth points" in GraspLifter(min_points=10).lift(80.0, 60.0, sparse, cam).reason


def test_grasp_rotation_is_deterministic_and_handles_a_normal_along_the_reference():
    n = plane_normal(20.0)
    r = grasp_rotation(n)
    np.testing.assert_allclose(r[:, 2], -n)
    # x is the camera x axis projected onto the surface plane: here the plane tilts about x
    np.testing.assert_allclose(r[:, 0], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(r[:, 1], np.cross(r[:, 2], r[:, 0]))
    side = grasp_rotation(np.array([-1.0, 0.0, 0.0]))  # normal along camera x: falls back to y
    np.testing.assert_allclose(side[:, 2], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(side[:, 0], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(side.T @ side, np.eye(3), atol=1e-12)


def test_a_non_finite_lift_is_a_failure_never_a_nan_pose(monkeypatch):
    """Whatever goes wrong inside (here: a degenerate normal), the lifter answers why, in one line."""
    from part_point_ros.geometry import grasp
    from part_point_ros.geometry.normals import SurfaceNormal

    def nan_normal(points, *, center, camera_location=None):
        return SurfaceNormal(normal=np.full(3, np.nan), centroid=center, residual=0.0, n_points=len(points))

    monkeypatch.setattr(grasp, "estimate_normal", nan_normal)
    cam = camera()
    depth = plane_depth(cam, plane_normal(20.0), np.array([0.0, 0.0, 1.0]))
    result = GraspLifter().lift(80.0, 60.0, depth, cam)
    assert isinstance(result, LiftFailure)
    assert (
        result.reason
        == "the 3D point at (80.0, 60.0) is not finite: check the camera_info (K, D) and the depth image"
    )
