from pathlib import Path

import numpy as np
import pytest

from part_point_ros.errors import InputError
from part_point_ros.geometry.calib import load_camera_info_yaml, load_extrinsics

CALIB = Path(__file__).resolve().parents[1] / "calib"


def test_shipped_extrinsics_put_the_optical_axis_45_degrees_down_along_base_x():
    t = load_extrinsics(CALIB / "camera_to_base.yaml")
    assert (t.parent_frame, t.child_frame) == ("base_link", "camera_color_optical_frame")
    np.testing.assert_allclose(t.translation, [-0.5, 0.0, 0.6])
    np.testing.assert_allclose(t.apply_vector([0.0, 0.0, 1.0]), [np.sqrt(0.5), 0.0, -np.sqrt(0.5)], atol=1e-9)
    np.testing.assert_allclose(t.apply_vector([1.0, 0.0, 0.0]), [0.0, -1.0, 0.0], atol=1e-9)


def test_shipped_intrinsics_load_as_a_camera():
    cam = load_camera_info_yaml(CALIB / "sim_camera_intrinsics.yaml")
    assert (cam.width, cam.height, cam.frame_id) == (640, 480, "camera_color_optical_frame")
    np.testing.assert_allclose(cam.project(np.array([[0.0, 0.0, 1.0]])), [[319.5, 239.5]])


def test_camera_info_yaml_with_rational_polynomial(tmp_path):
    path = tmp_path / "intrinsics.yaml"
    path.write_text(
        "image_width: 100\nimage_height: 80\ncamera_name: c\n"
        "camera_matrix: {rows: 3, cols: 3, data: [90, 0, 49.5, 0, 91, 39.5, 0, 0, 1]}\n"
        "distortion_model: rational_polynomial\n"
        "distortion_coefficients: {rows: 1, cols: 8, data: [0.1, 0.01, 0, 0, 0, 0.2, 0, 0]}\n"
    )
    cam = load_camera_info_yaml(path, frame_id="opt")
    assert cam.distortion_model == "rational_polynomial" and cam.frame_id == "opt"
    np.testing.assert_allclose(cam.k[1], [0, 91, 39.5])
    np.testing.assert_allclose(cam.d, [0.1, 0.01, 0, 0, 0, 0.2, 0, 0])


def test_bad_calibration_files_give_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_extrinsics(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "parent_frame: base_link\nchild_frame: cam\ntranslation: [0, 0]\nquaternion_xyzw: [0, 0, 0, 1]\n"
    )
    with pytest.raises(InputError, match="'translation' .* must have 3 numbers, got 2"):
        load_extrinsics(bad)
    bad.write_text("parent_frame: base_link\ntranslation: [0, 0, 0]\nquaternion_xyzw: [0, 0, 0, 1]\n")
    with pytest.raises(InputError, match="has no 'child_frame'"):
        load_extrinsics(bad)
