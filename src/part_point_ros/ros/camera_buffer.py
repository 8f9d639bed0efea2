"""What part_point_node and depth_fusion_node keep of the camera, and the lift of a pixel to a grasp pose.

``CameraBuffer`` holds the last colour frames, the camera model from camera_info, the last aligned
depth frames (matched by stamp), and the camera's extrinsics (static ones, the latched extrinsics
topic, or tf2 when it is installed). It is written by subscription callbacks and read by the
inference worker, so every access takes its lock. Every failure is a one-line reason, never an
exception. Both nodes build it, their static extrinsics, their tf2 listener, their GraspLifter and
their camera_info / extrinsics callbacks with the helpers at the end of this module, from parameters
of the same names.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from part_point_ros.errors import InputError, PartPointError
from part_point_ros.geometry.calib import load_extrinsics
from part_point_ros.geometry.camera import PinholeCamera
from part_point_ros.geometry.depth import depth_to_metres
from part_point_ros.geometry.grasp import GraspLifter
from part_point_ros.geometry.transforms import RigidTransform
from part_point_ros.ros.conversions import (
    camera_from_camera_info,
    image_to_numpy,
    pose_stamped_msg,
    stamp_to_seconds,
    transform_from_msg,
)

try:  # tf2_ros comes with a system ROS install; the PyPI wheels do not have it
    import tf2_ros
except ImportError:
    tf2_ros = None

Lifted = tuple[np.ndarray, np.ndarray, PoseStamped]  # point, normal (optical frame), grasp pose (target)


@dataclass(frozen=True)
class DepthFrame:
    """One aligned depth frame, in metres, with the camera model it is lifted with."""

    header: Header  # stamp + optical frame of the depth image
    depth_m: np.ndarray  # (H, W) float32 metres, NaN = invalid
    camera: PinholeCamera


class CameraBuffer:
    """Latest colour frame, camera model, aligned depth frames by stamp, and camera extrinsics.

    Args:
        depth_size: colour and depth frames kept for stamp matching.
        static: fixed transforms (hand-eye calibration), parent <- child.
        tf_buffer: a ``tf2_ros.Buffer`` to ask when no static or topic transform fits, or None.
        depth_topic, camera_info_topic: named in the reasons.
    """

    def __init__(
        self,
        *,
        depth_size: int,
        static: list[RigidTransform] | None = None,
        tf_buffer: Any = None,
        depth_topic: str = "depth",
        camera_info_topic: str = "camera_info",
    ) -> None:
        self._lock = threading.Lock()
        self._colors: deque[Image] = deque(maxlen=depth_size)
        self._camera: PinholeCamera | None = None
        self._camera_info_error = ""  # why the last rejected camera_info was rejected
        self.camera_info_rejections = 0  # camera_info messages rejected so far
        self._depth: deque[Image] = deque(maxlen=depth_size)
        self._static = list(static or [])
        self._from_topic: dict[tuple[str, str], RigidTransform] = {}
        self._tf_buffer = tf_buffer
        self._depth_topic = depth_topic
        self._camera_info_topic = camera_info_topic

    # ------------------------------------------------------------------ writers (subscriptions)
    def add_color(self, msg: Image) -> None:
        with self._lock:
            self._colors.append(msg)

    def add_camera_info(self, msg: CameraInfo) -> str:
        """'' when taken, else one line saying why the camera_info was rejected and how to fix it.

        A rejected camera_info (singular or non-finite K, non-finite D, implausible focal length,
        zero size, ...) leaves the last valid one in use, or none: then lifting says why.
        """
        try:
            camera = camera_from_camera_info(msg)
        except Exception as err:  # noqa: BLE001 - no camera_info may stop the node
            reason = one_line(err)
            with self._lock:
                self._camera_info_error = reason
                self.camera_info_rejections += 1
                kept = self._camera is not None
            keeping = "keeping the last valid one" if kept else "none valid yet, so no grasp poses"
            return (
                f"camera_info on {self._camera_info_topic} (frame {msg.header.frame_id!r}) rejected: "
                f"{reason}; {keeping}; fix the camera's calibration (or its driver)"
            )
        with self._lock:
            self._camera = camera
        return ""

    def add_depth(self, msg: Image) -> None:
        with self._lock:
            self._depth.append(msg)

    def add_extrinsics(self, msg: TransformStamped) -> str:
        """'' when taken (the latest per frame pair wins), else why it was dropped."""
        try:
            t = transform_from_msg(msg)
        except PartPointError as err:
            return f"extrinsics dropped: {err}"
        with self._lock:
            self._from_topic[(t.parent_frame, t.child_frame)] = t
        return ""

    # ------------------------------------------------------------------ readers
    @property
    def color(self) -> Image | None:
        """The latest colour frame (a message), or None before the first."""
        with self._lock:
            return self._colors[-1] if self._colors else None

    def synced_color(self, tolerance: float) -> Image | None:
        """The newest colour frame that has a depth frame within ``tolerance`` s, else the newest one.

        Camera streams are best effort: the depth frame of the very latest colour frame may be lost
        or still on its way, and the frame before it can still be lifted to 3D.
        """
        with self._lock:
            colors, depth = list(self._colors), [stamp_to_seconds(m.header.stamp) for m in self._depth]
        for msg in reversed(colors):
            t = stamp_to_seconds(msg.header.stamp)
            if any(abs(d - t) <= tolerance for d in depth):
                return msg
        return colors[-1] if colors else None

    @property
    def camera(self) -> PinholeCamera | None:
        with self._lock:
            return self._camera

    @property
    def camera_info_error(self) -> str:
        """Why the last rejected camera_info was rejected ('' when none was)."""
        with self._lock:
            return self._camera_info_error

    @property
    def extrinsics(self) -> list[RigidTransform]:
        """Known transforms: static ones first, then those from the extrinsics topic."""
        with self._lock:
            return [*self._static, *self._from_topic.values()]

    @property
    def newest_depth_stamp(self) -> float | None:
        """Stamp (seconds) of the newest buffered depth frame, or None before the first."""
        with self._lock:
            return max((stamp_to_seconds(m.header.stamp) for m in self._depth), default=None)

    def depth_near(self, stamp: TimeMsg, tolerance: float, *, what: str = "image") -> Image | str:
        """The depth frame nearest to ``stamp`` within ``tolerance`` seconds, or why there is none.

        ``what`` names the stamp's owner in the reason ("the image stamp", "the points' stamp").
        """
        with self._lock:
            frames = list(self._depth)
        if not frames:
            return f"no depth image received on {self._depth_topic}"
        t = stamp_to_seconds(stamp)
        best = min(frames, key=lambda m: abs(stamp_to_seconds(m.header.stamp) - t))
        if abs(stamp_to_seconds(best.header.stamp) - t) > tolerance:
            newest = max(stamp_to_seconds(m.header.stamp) for m in frames)
            return (
                f"no depth image within {tolerance:g} s of the {what} stamp {t:.3f} on {self._depth_topic} "
                f"(newest {newest:.3f}, {len(frames)} buffered)"
            )
        return best

    def metric_depth(self, depth: Image) -> DepthFrame | str:
        """A buffered depth message -> DepthFrame (metres + the camera model), or why it is unusable."""
        with self._lock:
            camera, rejected = self._camera, self._camera_info_error
        if camera is None:
            if rejected:
                topic = self._camera_info_topic
                return f"no valid camera_info on {topic}: the last one was rejected ({rejected})"
            return f"no camera_info received on {self._camera_info_topic}"
        try:
            depth_m = depth_to_metres(image_to_numpy(depth), depth.encoding)
        except PartPointError as err:
            return f"depth image unusable: {err}"
        return DepthFrame(header=depth.header, depth_m=depth_m, camera=camera)

    def transform(self, target: str, source: str, stamp: TimeMsg) -> RigidTransform | str:
        """T_target_source from the known extrinsics or tf2, or why there is none."""
        if target == source:
            return RigidTransform.identity(target)
        known = self.extrinsics
        for t in known:
            if (t.parent_frame, t.child_frame) == (target, source):
                return t
            if (t.parent_frame, t.child_frame) == (source, target):
                return t.inverse()
        if self._tf_buffer is not None:
            errors = (tf2_ros.LookupException, tf2_ros.ConnectivityException, tf2_ros.ExtrapolationException)
            for when in (Time.from_msg(stamp), Time()):  # at the stamp, else the latest
                try:
                    return transform_from_msg(self._tf_buffer.lookup_transform(target, source, when))
                except errors:
                    continue
                except PartPointError as err:  # e.g. NaN in the transform
                    return f"the tf2 transform from {source!r} to {target!r} is unusable: {err}"
        names = ", ".join(f"{t.parent_frame}<-{t.child_frame}" for t in known) or "none"
        tf = "has none" if self._tf_buffer is not None else "not in use" if tf2_ros else "not installed"
        return (
            f"no transform from {source!r} to {target!r} (known: {names}; tf2 {tf}): "
            "set extrinsics_file or extrinsics.*, or publish the camera pose on the extrinsics topic"
        )

    # ------------------------------------------------------------------ lifting
    def lift(
        self,
        header: Header,
        u: float,
        v: float,
        target_frame: str,
        *,
        lifter: GraspLifter,
        tolerance: float,
        image_size: tuple[int, int] | None = None,
        mask: np.ndarray | None = None,
    ) -> Lifted | str:
        """Pixel (u, v) of the colour image with ``header`` -> (point, normal) in its optical frame
        and the grasp pose in ``target_frame``, with the depth frame nearest its stamp; or why not.

        ``image_size`` (width, height) of the colour image, when known, must be camera_info's.
        ``mask``: the part's mask (H, W) on the colour image, for the mask-based lift (GraspLifter)."""
        if not header.frame_id:
            return NO_FRAME_ID
        depth = self.depth_near(header.stamp, tolerance)
        if isinstance(depth, str):
            return depth
        frame = self.metric_depth(depth)
        if isinstance(frame, str):
            return frame
        return self.lift_in(
            frame, header, u, v, target_frame, lifter=lifter, image_size=image_size, mask=mask
        )

    def lift_in(
        self,
        frame: DepthFrame,
        header: Header,
        u: float,
        v: float,
        target_frame: str,
        *,
        lifter: GraspLifter,
        image_size: tuple[int, int] | None = None,
        mask: np.ndarray | None = None,
    ) -> Lifted | str:
        """Pixel (u, v) of the image with ``header`` lifted with the depth ``frame`` (matched to it).

        Colour, camera_info and depth must have one size: aligned depth shares the colour image's
        pixel grid, and intrinsics of another resolution would put the point elsewhere (no scaling
        is done). The depth size is checked by the lifter, the colour size here (``image_size``).
        The result is finite or a reason, never a NaN or infinite pose."""
        optical = header.frame_id
        if not optical:
            return NO_FRAME_ID
        camera = frame.camera
        if image_size is not None and tuple(image_size) != (camera.width, camera.height):
            return (
                f"the image is {image_size[0]}x{image_size[1]} but camera_info on {self._camera_info_topic} "
                f"says {camera.width}x{camera.height}: use the colour camera's camera_info (and depth "
                "aligned to the colour image, same size)"
            )
        if frame.header.frame_id and frame.header.frame_id != optical:
            return (
                f"depth is in frame {frame.header.frame_id!r} but the image in {optical!r}: "
                "use depth aligned to the colour image"
            )
        result = lifter.lift(u, v, frame.depth_m, frame.camera, mask=mask)
        if not result.ok:
            return result.reason
        to_target = self.transform(target_frame, optical, header.stamp)
        if isinstance(to_target, str):
            return to_target
        try:  # both are finite (the lifter and RigidTransform check): so is the product
            grasp = to_target @ RigidTransform(result.pose.matrix, optical, "grasp")
        except PartPointError as err:
            return f"grasp pose unusable: {err}"
        return result.point, result.normal, pose_stamped_msg(grasp, header.stamp)


NO_FRAME_ID = "the image has no frame_id: cannot place the point in 3D"


def one_line(err: BaseException) -> str:
    """The first line of an error (with its type unless it is one of ours)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, PartPointError):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


DROP_LOG_THROTTLE_S = 2.0  # at most one warning per 2 s for a stream of dropped messages


# ---------------------------------------------------------------------- shared by both nodes' setup
def static_extrinsics(param: Callable[[str], Any]) -> list[RigidTransform]:
    """The fixed camera pose(s) from the parameters ``extrinsics_file`` and ``extrinsics.*``.

    ``param(name)`` returns a parameter's value; ``extrinsics.parent_frame`` defaults to
    ``target_frame``. Raises InputError (one line) for an unreadable file.
    """
    found = []
    if param("extrinsics_file"):
        found.append(load_extrinsics(param("extrinsics_file")))
    child = param("extrinsics.child_frame")
    if child:
        found.append(
            RigidTransform.from_translation_quaternion(
                param("extrinsics.translation"),
                param("extrinsics.quaternion_xyzw"),
                parent_frame=param("extrinsics.parent_frame") or param("target_frame"),
                child_frame=child,
            )
        )
    return found


def grasp_lifter(param: Callable[[str], Any]) -> GraspLifter:
    """A GraspLifter from the parameters depth_window, normal_radius, min_points, min/max_depth.

    Raises InputError when min_depth is not below max_depth (a set-parameters callback refuses
    the change with its message).
    """
    lo, hi = param("min_depth"), param("max_depth")
    if lo >= hi:
        raise InputError(f"min_depth ({lo}) must be below max_depth ({hi})")
    return GraspLifter(
        depth_window=param("depth_window"),
        normal_radius=param("normal_radius"),
        min_depth=lo,
        max_depth=hi,
        min_points=param("min_points"),
    )


def tf_listener(node: Any, use_tf: bool) -> tuple[Any, Any]:
    """(tf2_ros.Buffer, TransformListener) following /tf and /tf_static for ``node``, or (None, None)
    when ``use_tf`` is off or tf2_ros is not installed (the PyPI wheels). Keep the listener alive."""
    if not use_tf or tf2_ros is None:
        return None, None
    buffer = tf2_ros.Buffer()
    return buffer, tf2_ros.TransformListener(buffer, node)


def warn_on_drop(add: Callable[[Any], str], logger: Any) -> Callable[[Any], None]:
    """A subscription callback: ``add(msg)`` (e.g. ``CameraBuffer.add_camera_info``), and a warning
    on ``logger`` with the reason when it drops the message, at most one per DROP_LOG_THROTTLE_S.

    The throttle is this callback's own (rclpy's ``throttle_duration_sec`` is per call site, which
    every callback made here would share)."""
    last_warning = -math.inf

    def callback(msg: Any) -> None:
        nonlocal last_warning
        dropped = add(msg)
        now = time.monotonic()
        if dropped and now - last_warning >= DROP_LOG_THROTTLE_S:
            last_warning = now
            logger.warning(dropped)

    return callback
