import re

import numpy as np
import pytest

from part_point_ros.errors import InputError
from part_point_ros.geometry.camera import PinholeCamera

PLUMB_BOB = [-0.21, 0.08, 0.0012, -0.0021, -0.012]
RATIONAL = [0.31, -0.12, 0.001, -0.002, 0.02, 0.61, -0.05, 0.03]


def make_camera(d=(), model="plumb_bob"):
    return PinholeCamera.from_intrinsics(
        fx=500.0, fy=510.0, cx=320.0, cy=240.0, width=640, height=480, d=d, distortion_model=model
    )


def test_project_and_deproject_match_hand_computed_values():
    cam = make_camera()
    # u = cx + fx * x / z = 320 + 500 * 0.05; v = cy + fy * y / z = 240 - 510 * 0.1
    np.testing.assert_allclose(cam.project(np.array([[0.1, -0.2, 2.0]])), [[345.0, 189.0]], atol=1e-9)
    np.testing.assert_allclose(cam.deproject(np.array([[345.0, 189.0]]), 2.0), [[0.1, -0.2, 2.0]], atol=1e-12)


def test_plumb_bob_projection_matches_hand_computed_radial_distortion():
    cam = make_camera(d=[0.1, 0.0, 0.0, 0.0, 0.0])
    # x = 0.2, r^2 = 0.04, radial factor 1 + 0.1 * 0.04 = 1.004 -> x_d = 0.2008
    np.testing.assert_allclose(cam.project(np.array([[0.2, 0.0, 1.0]])), [[320.0 + 500.0 * 0.2008, 240.0]])


@pytest.mark.parametrize(("d", "model"), [(PLUMB_BOB, "plumb_bob"), (RATIONAL, "rational_polynomial")])
def test_project_of_deproject_is_identity_with_distortion(d, model):
    cam = make_camera(d=d, model=model)
    cols, rows = np.meshgrid(np.linspace(0, 639, 9), np.linspace(0, 479, 7))
    uv = np.column_stack([cols.ravel(), rows.ravel()])  # (63, 2)
    depth = np.linspace(0.3, 4.0, len(uv))
    pts = cam.deproject(uv, depth)
    np.testing.assert_allclose(pts[:, 2], depth)
    np.testing.assert_allclose(cam.project(pts), uv, atol=1e-6)
    # distortion really acts: the undistorted pinhole projection lands elsewhere at the corners
    assert np.abs(make_camera().project(pts) - uv).max() > 5.0


def test_points_behind_the_camera_project_to_nan():
    uv = make_camera().project(np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]))
    assert np.all(np.isnan(uv[0])) and np.allclose(uv[1], [320.0, 240.0])


def test_unsupported_distortion_model_names_the_supported_ones():
    with pytest.raises(InputError, match="equidistant.*plumb_bob.*rational_polynomial"):
        make_camera(d=[0.1, 0.0, 0.0, 0.0], model="equidistant")


def test_invalid_intrinsics_raise_input_error():
    with pytest.raises(InputError, match="fx, fy > 0"):
        PinholeCamera.from_intrinsics(fx=0.0, fy=1.0, cx=0.0, cy=0.0, width=2, height=2)
    with pytest.raises(InputError, match="5 distortion coefficients"):
        make_camera(d=[0.1] * 8, model="plumb_bob")


def _k(**entries):
    """make_camera()'s K with some entries replaced: fx, fy, cx, cy, s, or kRC for K[R][C]."""
    k = make_camera().k.copy()
    names = {"fx": (0, 0), "fy": (1, 1), "cx": (0, 2), "cy": (1, 2), "s": (0, 1)}
    for name, value in entries.items():
        k[names[name] if name in names else (int(name[1]), int(name[2]))] = value
    return k


@pytest.mark.parametrize(
    ("k", "d", "expected"),
    [
        (_k(k22=0.0), PLUMB_BOB, "K[2][2] is 0 but must be 1"),
        (_k(k22=2.0), PLUMB_BOB, "K[2][2] is 2 but must be 1"),
        (_k(cx=np.nan), PLUMB_BOB, "K has non-finite entries"),
        (_k(fx=np.inf), PLUMB_BOB, "K has non-finite entries"),
        (_k(), [np.nan, 0.0, 0.0, 0.0, 0.0], "distortion coefficients D have non-finite entries"),
        (_k(fx=1e-300), PLUMB_BOB, "fx, fy > 0 in 0.001 .. 1e+06 px, got fx=1e-300"),
        (_k(fy=1e7), PLUMB_BOB, "fx, fy > 0 in 0.001 .. 1e+06 px, got fx=500, fy=1e+07"),
        (_k(fx=-500.0), PLUMB_BOB, "fx, fy > 0"),
        (_k(k10=3.0), PLUMB_BOB, "K[1][0], K[2][0], K[2][1] must be 0, got [3.0, 0.0, 0.0]"),
        (_k(k21=0.5), PLUMB_BOB, "K[1][0], K[2][0], K[2][1] must be 0"),
        (_k(cx=1e6), PLUMB_BOB, "principal point (cx, cy) = (1e+06, 240) px is more than an image size off"),
    ],
    ids=["k22_zero", "k22_two", "nan_k", "inf_fx", "nan_d", "tiny_fx", "huge_fy", "negative_fx",
         "k10", "k21", "far_principal_point"],
)  # fmt: skip
def test_singular_non_finite_or_absurd_intrinsics_raise_input_error_naming_the_problem(k, d, expected):
    """Never a singular-matrix error or a camera that deprojects to NaN or 1e301 m (issue #11)."""
    with pytest.raises(InputError, match=re.escape(expected)):
        PinholeCamera(k=k, d=np.asarray(d), width=640, height=480)


def test_skew_and_an_off_centre_principal_point_are_accepted():
    cam = PinholeCamera(k=_k(s=0.5, cx=700.0, cy=-100.0), d=np.zeros(5), width=640, height=480)
    assert np.all(np.isfinite(cam.deproject(np.array([[10.0, 20.0]]), 1.0)))


def test_contains_uses_pixel_centres():
    cam = make_camera()
    assert cam.contains(0.0, 0.0) and cam.contains(639.4, 479.4)
    assert not cam.contains(639.6, 10.0) and not cam.contains(-0.6, 10.0)
