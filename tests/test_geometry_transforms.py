import numpy as np
import pytest

from part_point_ros.errors import InputError
from part_point_ros.geometry.transforms import (
    RigidTransform,
    matrix_to_quaternion_xyzw,
    quaternion_xyzw_to_matrix,
)

S = np.sqrt(0.5)


def test_quaternion_xyzw_of_a_quarter_turn_about_z():
    np.testing.assert_allclose(
        quaternion_xyzw_to_matrix([0.0, 0.0, S, S]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12
    )
    np.testing.assert_allclose(matrix_to_quaternion_xyzw([[0, -1, 0], [1, 0, 0], [0, 0, 1]]), [0, 0, S, S])


def test_quaternion_round_trip_and_normalisation():
    q = np.array([0.1, -0.7, 0.3, 0.64])
    q_unit = q / np.linalg.norm(q)
    np.testing.assert_allclose(matrix_to_quaternion_xyzw(quaternion_xyzw_to_matrix(q)), q_unit, atol=1e-12)
    # -q is the same rotation; the canonical form has w >= 0
    np.testing.assert_allclose(matrix_to_quaternion_xyzw(quaternion_xyzw_to_matrix(-q)), q_unit, atol=1e-12)
    with pytest.raises(InputError, match="x, y, z, w"):
        quaternion_xyzw_to_matrix([0, 0, 0, 0])


def test_apply_compose_and_inverse():
    t_base_cam = RigidTransform.from_translation_quaternion(
        [1.0, 2.0, 3.0], [0.0, 0.0, S, S], parent_frame="base", child_frame="cam"
    )
    # quarter turn about z then translate: (1, 0, 0) -> (0, 1, 0) + (1, 2, 3)
    np.testing.assert_allclose(t_base_cam.apply(np.array([1.0, 0.0, 0.0])), [1.0, 3.0, 3.0])
    np.testing.assert_allclose(
        t_base_cam.apply_vector(np.array([1.0, 0.0, 0.0])), [0.0, 1.0, 0.0], atol=1e-12
    )
    ident = t_base_cam @ t_base_cam.inverse()
    np.testing.assert_allclose(ident.matrix, np.eye(4), atol=1e-12)
    assert (ident.parent_frame, ident.child_frame) == ("base", "base")
    t_cam_tool = RigidTransform.from_translation_quaternion(
        [0, 0, 0.5], [0, 0, 0, 1], parent_frame="cam", child_frame="tool"
    )
    chained = t_base_cam @ t_cam_tool
    assert (chained.parent_frame, chained.child_frame) == ("base", "tool")
    np.testing.assert_allclose(chained.translation, [1.0, 2.0, 3.5])
    with pytest.raises(InputError, match="cannot chain"):
        t_cam_tool @ t_base_cam


def test_non_rotation_matrix_is_rejected():
    m = np.eye(4)
    m[0, 0] = -1.0  # a reflection
    with pytest.raises(InputError, match="proper rotation"):
        RigidTransform(m)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_transform_is_rejected(bad):
    m = np.eye(4)
    m[1, 3] = bad  # a translation: the rotation check alone would not see it
    with pytest.raises(InputError, match="base<-cam has non-finite entries"):
        RigidTransform(m, "base", "cam")
