"""Load the calibration files in calib/: camera intrinsics and camera-to-robot extrinsics.

Intrinsics use the ROS camera_info YAML format (camera_calibration_parsers): image_width,
image_height, camera_name, camera_matrix, distortion_model, distortion_coefficients, ...

Extrinsics (hand-eye) are:

    parent_frame: base_link                    # the robot frame
    child_frame: camera_color_optical_frame    # the camera's optical frame
    translation: [x, y, z]                     # metres, child origin in the parent frame
    quaternion_xyzw: [x, y, z, w]              # child orientation in the parent frame
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from part_point_ros.errors import InputError
from part_point_ros.geometry.camera import PinholeCamera
from part_point_ros.geometry.transforms import RigidTransform


def read_yaml_mapping(
    path: str | Path, what: str, *, expected: str = "hold a YAML mapping"
) -> dict[str, Any]:
    """The mapping in the YAML file ``path``; a missing file, bad YAML or another top-level value
    raises a one-line InputError naming the ``what`` file (and what it must ``expected``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{what} file {str(p)!r} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise InputError(f"{what} file {str(p)!r} must {expected}")
    return data


def _field(data: dict[str, Any], key: str, path: str | Path, size: int | None = None) -> Any:
    if key not in data:
        raise InputError(f"{str(path)!r} has no {key!r}")
    value = data[key]
    if isinstance(value, dict) and "data" in value:  # camera_info YAML matrices
        value = value["data"]
    if size is not None:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if arr.size != size:
            raise InputError(f"{key!r} in {str(path)!r} must have {size} numbers, got {arr.size}")
        return arr
    return value


def load_camera_info_yaml(path: str | Path, *, frame_id: str = "") -> PinholeCamera:
    """A camera_info YAML file (as written by camera_calibration) -> PinholeCamera."""
    data = read_yaml_mapping(path, "camera intrinsics")
    model = str(data.get("distortion_model", "plumb_bob"))
    d = np.asarray(_field(data, "distortion_coefficients", path), dtype=np.float64).reshape(-1)
    return PinholeCamera(
        k=_field(data, "camera_matrix", path, 9).reshape(3, 3),
        d=d,
        width=int(_field(data, "image_width", path)),
        height=int(_field(data, "image_height", path)),
        distortion_model=model,
        frame_id=frame_id or str(data.get("frame_id", "")),
    )


def load_extrinsics(path: str | Path) -> RigidTransform:
    """A hand-eye extrinsics YAML file -> RigidTransform (parent <- child)."""
    data = read_yaml_mapping(path, "extrinsics")
    parent = str(_field(data, "parent_frame", path))
    child = str(_field(data, "child_frame", path))
    if not parent or not child or parent == child:
        raise InputError(f"{str(path)!r} needs two different, non-empty parent_frame and child_frame")
    return RigidTransform.from_translation_quaternion(
        _field(data, "translation", path, 3),
        _field(data, "quaternion_xyzw", path, 4),
        parent_frame=parent,
        child_frame=child,
    )
