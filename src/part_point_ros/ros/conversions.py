"""sensor_msgs / geometry_msgs <-> numpy and geometry types.

Images: rgb8, bgr8, mono8, mono16, 16UC1, 32FC1, with row padding (``step`` > width * bytes per
pixel) and either byte order (``is_bigendian``). cv_bridge decodes when it is importable (system
ROS installs); otherwise the numpy path below does, with the same checks and errors.
"""

from __future__ import annotations

import sys

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion, TransformStamped, Vector3
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from part_point_ros.errors import InputError
from part_point_ros.geometry.camera import PinholeCamera
from part_point_ros.geometry.transforms import RigidTransform

# encoding -> (numpy dtype without byte order, channels)
IMAGE_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "mono8": ("u1", 1),
    "mono16": ("u2", 1),
    "16UC1": ("u2", 1),
    "32FC1": ("f4", 1),
}

try:  # pragma: no cover - only on machines with a system ROS install
    from cv_bridge import CvBridge

    _BRIDGE: CvBridge | None = CvBridge()
except ImportError:
    _BRIDGE = None


def _layout(encoding: str) -> tuple[str, int]:
    if encoding not in IMAGE_ENCODINGS:
        raise InputError(
            f"image encoding {encoding!r} is not supported: use one of {', '.join(IMAGE_ENCODINGS)}"
        )
    return IMAGE_ENCODINGS[encoding]


def image_to_numpy(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> array (H, W) or (H, W, 3) in native byte order, a copy of the data.

    Colour stays in the message's channel order (rgb8 -> RGB, bgr8 -> BGR).
    """
    kind, channels = _layout(msg.encoding)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(kind).itemsize
    row_bytes = w * channels * itemsize
    if h == 0 or w == 0:
        raise InputError(f"image is empty ({w}x{h})")
    if step < row_bytes:
        raise InputError(
            f"image step {step} is smaller than width {w} x {channels * itemsize} bytes per pixel"
        )
    if len(msg.data) < h * step:
        raise InputError(f"image data has {len(msg.data)} bytes, {h} rows of step {step} need {h * step}")
    if _BRIDGE is not None:  # pragma: no cover
        return np.array(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="passthrough"), copy=True)
    buf = np.frombuffer(memoryview(msg.data), dtype=np.uint8, count=h * step)
    rows = buf.reshape(h, step)[:, :row_bytes]  # (H*step,) -> (H, step) -> drop the row padding
    order = ">" if msg.is_bigendian else "<"
    pixels = np.ascontiguousarray(rows).view(np.dtype(order + kind))  # (H, W*C) in the message's byte order
    pixels = pixels.astype(np.dtype(kind), copy=True)  # native byte order
    return pixels.reshape(h, w, channels) if channels > 1 else pixels.reshape(h, w)  # (H, W*C) -> (H, W, C)


def numpy_to_image(array: np.ndarray, encoding: str, *, header: Header | None = None) -> Image:
    """Array (H, W) or (H, W, 3) -> sensor_msgs/Image with the given encoding, unpadded rows."""
    kind, channels = _layout(encoding)
    arr = np.asarray(array)
    expected_shape = 2 if channels == 1 else 3
    if arr.ndim != expected_shape or (channels > 1 and arr.shape[2] != channels):
        shape = "(H, W)" if channels == 1 else "(H, W, 3)"
        raise InputError(f"{encoding} needs an array of shape {shape}, got {arr.shape}")
    if arr.dtype != np.dtype(kind):
        raise InputError(f"{encoding} needs dtype {np.dtype(kind).name}, got {arr.dtype}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = msg.width * channels * arr.dtype.itemsize
    msg.data = np.ascontiguousarray(arr).tobytes()
    return msg


def camera_from_camera_info(msg: CameraInfo) -> PinholeCamera:
    """sensor_msgs/CameraInfo -> PinholeCamera (intrinsics k, distortion d, size, optical frame)."""
    if msg.width == 0 or msg.height == 0 or msg.k[0] == 0:
        raise InputError(f"camera_info on frame {msg.header.frame_id!r} is not calibrated (zero size or K)")
    return PinholeCamera(
        k=np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
        d=np.asarray(msg.d, dtype=np.float64),
        width=int(msg.width),
        height=int(msg.height),
        distortion_model=msg.distortion_model,
        frame_id=msg.header.frame_id,
    )


def camera_info_from_camera(camera: PinholeCamera, *, header: Header | None = None) -> CameraInfo:
    """PinholeCamera -> sensor_msgs/CameraInfo (unrectified: R = I, P = [K | 0])."""
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = camera.width, camera.height
    msg.distortion_model = camera.distortion_model or "plumb_bob"
    msg.d = [float(x) for x in camera.d]
    msg.k = [float(x) for x in camera.k.ravel()]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [float(x) for x in np.column_stack([camera.k, np.zeros(3)]).ravel()]
    return msg


def stamp_to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def point_msg(xyz: np.ndarray) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def vector_msg(xyz: np.ndarray) -> Vector3:
    return Vector3(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def pose_msg(transform: RigidTransform) -> Pose:
    """RigidTransform (parent <- child) -> the child's Pose in the parent frame."""
    q = transform.quaternion_xyzw
    return Pose(
        position=point_msg(transform.translation),
        orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def pose_stamped_msg(transform: RigidTransform, stamp: Time) -> PoseStamped:
    msg = PoseStamped(pose=pose_msg(transform))
    msg.header.stamp = stamp
    msg.header.frame_id = transform.parent_frame
    return msg


def transform_from_msg(msg: TransformStamped) -> RigidTransform:
    """geometry_msgs/TransformStamped (e.g. from tf2) -> RigidTransform (header frame <- child frame)."""
    t, q = msg.transform.translation, msg.transform.rotation
    return RigidTransform.from_translation_quaternion(
        [t.x, t.y, t.z],
        [q.x, q.y, q.z, q.w],
        parent_frame=msg.header.frame_id,
        child_frame=msg.child_frame_id,
    )


def transform_msg(transform: RigidTransform, stamp: Time) -> TransformStamped:
    """RigidTransform -> geometry_msgs/TransformStamped (for a TF broadcaster)."""
    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = transform.parent_frame
    msg.child_frame_id = transform.child_frame
    t, q = transform.translation, transform.quaternion_xyzw
    msg.transform.translation = vector_msg(t)
    msg.transform.rotation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    return msg
