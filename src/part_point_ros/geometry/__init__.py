"""Camera geometry for grasping: camera model, depth, normals, grasp poses, frames, calibration.

numpy / OpenCV / open3d / transforms3d only; no rclpy and nothing about models. The grasp names
load lazily, so that code that only needs the camera model does not import open3d.
"""

from typing import Any

from part_point_ros.geometry.camera import PinholeCamera
from part_point_ros.geometry.depth import DepthReading, depth_to_metres, mask_depth, robust_depth
from part_point_ros.geometry.transforms import RigidTransform

_GRASP_NAMES = ("GraspLifter", "GraspResult", "LiftFailure", "grasp_rotation", "grasp_rotation_along")

__all__ = [
    "DepthReading",
    "PinholeCamera",
    "RigidTransform",
    "depth_to_metres",
    "mask_depth",
    "robust_depth",
    *_GRASP_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _GRASP_NAMES:
        from part_point_ros.geometry import grasp

        return getattr(grasp, name)
    raise AttributeError(f"module 'part_point_ros.geometry' has no attribute {name!r}")
