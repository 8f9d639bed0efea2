"""Rigid transforms (4x4 homogeneous matrices) between named frames, quaternions in ROS order.

ROS messages order quaternions (x, y, z, w); transforms3d orders them (w, x, y, z). Every function
here takes and returns ROS order, so the conversion happens in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import transforms3d.quaternions as tq

from part_point_ros.errors import InputError


def quaternion_xyzw_to_matrix(q_xyzw: Sequence[float]) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> rotation matrix (3, 3). Normalises; rejects a zero quaternion."""
    q = np.asarray(q_xyzw, dtype=np.float64).reshape(4)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm < 1e-9:
        raise InputError(f"quaternion {q.tolist()} has no rotation (norm {norm:g}); write it as x, y, z, w")
    x, y, z, w = q / norm
    return tq.quat2mat([w, x, y, z])


def matrix_to_quaternion_xyzw(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> unit quaternion (x, y, z, w) with w >= 0."""
    w, x, y, z = tq.mat2quat(np.asarray(rotation, dtype=np.float64))
    q = np.array([x, y, z, w])
    return -q if w < 0 else q


@dataclass(frozen=True)
class RigidTransform:
    """Pose of ``child_frame`` in ``parent_frame``: maps child coordinates to parent coordinates.

    ``matrix`` is 4x4 homogeneous; ``T_parent_child @ p_child = p_parent`` (same as a
    geometry_msgs/TransformStamped with header.frame_id = parent, child_frame_id = child).
    """

    matrix: np.ndarray
    parent_frame: str = ""
    child_frame: str = ""

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (4, 4):
            raise InputError(f"a rigid transform is a 4x4 matrix, got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise InputError(f"the transform {self.parent_frame}<-{self.child_frame} has non-finite entries")
        r = m[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise InputError("the rotation part of the transform is not a proper rotation matrix")
        object.__setattr__(self, "matrix", m)

    @classmethod
    def identity(cls, frame: str = "") -> RigidTransform:
        return cls(np.eye(4), frame, frame)

    @classmethod
    def from_translation_quaternion(
        cls,
        translation: Sequence[float],
        quaternion_xyzw: Sequence[float],
        *,
        parent_frame: str = "",
        child_frame: str = "",
    ) -> RigidTransform:
        """From a translation (x, y, z) in metres and a quaternion (x, y, z, w)."""
        m = np.eye(4)
        m[:3, :3] = quaternion_xyzw_to_matrix(quaternion_xyzw)
        m[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
        return cls(m, parent_frame, child_frame)

    @classmethod
    def from_rotation_translation(
        cls,
        rotation: np.ndarray,
        translation: Sequence[float],
        *,
        parent_frame: str = "",
        child_frame: str = "",
    ) -> RigidTransform:
        m = np.eye(4)
        m[:3, :3] = rotation
        m[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
        return cls(m, parent_frame, child_frame)

    @property
    def rotation(self) -> np.ndarray:
        return self.matrix[:3, :3]

    @property
    def translation(self) -> np.ndarray:
        return self.matrix[:3, 3]

    @property
    def quaternion_xyzw(self) -> np.ndarray:
        return matrix_to_quaternion_xyzw(self.rotation)

    def inverse(self) -> RigidTransform:
        m = np.eye(4)
        m[:3, :3] = self.rotation.T
        m[:3, 3] = -self.rotation.T @ self.translation
        return RigidTransform(m, self.child_frame, self.parent_frame)

    def __matmul__(self, other: RigidTransform) -> RigidTransform:
        """``T_a_b @ T_b_c = T_a_c``; frames must chain when both are named."""
        if self.child_frame and other.parent_frame and self.child_frame != other.parent_frame:
            raise InputError(
                f"cannot chain transforms: {self.parent_frame}<-{self.child_frame} then "
                f"{other.parent_frame}<-{other.child_frame}"
            )
        return RigidTransform(self.matrix @ other.matrix, self.parent_frame, other.child_frame)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Points (N, 3) or (3,) in the child frame -> the parent frame."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.rotation.T + self.translation

    def apply_vector(self, vectors: np.ndarray) -> np.ndarray:
        """Directions (N, 3) or (3,) in the child frame -> the parent frame (rotation only)."""
        return np.asarray(vectors, dtype=np.float64) @ self.rotation.T
