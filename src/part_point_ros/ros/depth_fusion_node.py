"""depth_fusion_node: lift 2D part points to 3D grasp poses with aligned depth and camera_info.

Subscribes:  points (part_point_ros/PartPointArray), aligned depth (sensor_msgs/Image, 16UC1 mm or
             32FC1 m), camera_info (sensor_msgs/CameraInfo of the colour camera).
Publishes:   grasp_pose (geometry_msgs/PoseStamped, target frame) for every point lifted,
             markers (visualization_msgs/MarkerArray), points_3d (PartPointArray with 3D filled in,
             or has_3d = false and a one-line reason in ``message``).

Points are matched to the depth frame with the nearest stamp within ``stamp_tolerance``; a point
array waits up to ``depth_wait`` seconds for its depth frame. Frames: the camera's optical frame
to ``target_frame`` by the static extrinsics (``extrinsics_file`` or the ``extrinsics.*``
parameters) when they name those frames, else by tf2 when tf2_ros is importable.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import Point, PoseStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from part_point_ros.errors import InputError, PartPointError
from part_point_ros.geometry.calib import load_extrinsics
from part_point_ros.geometry.camera import PinholeCamera
from part_point_ros.geometry.depth import depth_to_metres
from part_point_ros.geometry.grasp import GraspLifter, GraspResult
from part_point_ros.geometry.transforms import RigidTransform
from part_point_ros.msg import PartPoint, PartPointArray
from part_point_ros.ros.conversions import (
    camera_from_camera_info,
    image_to_numpy,
    point_msg,
    pose_stamped_msg,
    stamp_to_seconds,
    transform_from_msg,
    vector_msg,
)
from part_point_ros.ros.qos import QOS_OVERRIDES, results_qos, sensor_qos
from part_point_ros.ros.spin import run_node

try:  # tf2_ros comes with a system ROS install; the PyPI wheels do not have it
    import tf2_ros
except ImportError:
    tf2_ros = None

LOG_THROTTLE_S = 2.0


@dataclass
class _DepthFrame:
    stamp: float
    frame_id: str
    depth_m: np.ndarray  # (H, W) float32 metres, NaN = invalid


def _descriptor(description: str, *, read_only: bool = False, floats=None, ints=None) -> ParameterDescriptor:
    d = ParameterDescriptor(description=description, read_only=read_only)
    if floats is not None:
        d.floating_point_range = [FloatingPointRange(from_value=floats[0], to_value=floats[1], step=0.0)]
    if ints is not None:
        d.integer_range = [IntegerRange(from_value=ints[0], to_value=ints[1], step=1)]
    return d


class DepthFusionNode(Node):
    """Lifts PartPointArray points to 3D: robust depth, deprojection, normal, grasp pose, target frame."""

    def __init__(self, **kwargs) -> None:
        super().__init__("depth_fusion_node", **kwargs)
        self._declare_parameters()
        self._lifter = self._make_lifter({})
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._depth: deque[_DepthFrame] = deque(maxlen=self._p("depth_buffer_size"))
        self._camera: PinholeCamera | None = None
        self._pending: list[tuple[float, PartPointArray]] = []  # (monotonic arrival, points)
        self._extrinsics = self._load_extrinsics()

        self._tf_buffer = None
        if self._p("use_tf") and tf2_ros is not None:
            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)

        self._pose_pub = self.create_publisher(PoseStamped, self._p("grasp_pose_topic"), results_qos())
        self._marker_pub = self.create_publisher(MarkerArray, self._p("markers_topic"), results_qos())
        self._points_pub = self.create_publisher(PartPointArray, self._p("points_3d_topic"), results_qos())
        self.create_subscription(PartPointArray, self._p("points_topic"), self._on_points, results_qos())
        self.create_subscription(
            Image, self._p("depth_topic"), self._on_depth, sensor_qos(), qos_overriding_options=QOS_OVERRIDES
        )
        self.create_subscription(
            CameraInfo,
            self._p("camera_info_topic"),
            self._on_camera_info,
            sensor_qos(),
            qos_overriding_options=QOS_OVERRIDES,
        )
        self.create_timer(0.05, self._expire_pending)
        self.get_logger().info(
            f"lifting {self._p('points_topic')} with {self._p('depth_topic')} "
            f"into {self._p('target_frame')!r} "
            f"({'static extrinsics' if self._extrinsics else 'no static extrinsics'}, "
            f"tf2 {'on' if self._tf_buffer else 'off' if tf2_ros else 'not installed'})"
        )

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        topics = {
            "points_topic": ("/part_point/points", "2D part points in (PartPointArray)"),
            "depth_topic": (
                "/camera/aligned_depth_to_color/image_raw",
                "depth aligned to colour (16UC1 mm / 32FC1 m)",
            ),
            "camera_info_topic": ("/camera/color/camera_info", "camera_info of the colour camera"),
            "grasp_pose_topic": ("/part_point/grasp_pose", "grasp poses out (PoseStamped, target frame)"),
            "markers_topic": ("/part_point/markers", "RViz markers out"),
            "points_3d_topic": ("/part_point/points_3d", "part points with 3D filled in, out"),
        }
        for name, (default, text) in topics.items():
            self.declare_parameter(name, default, _descriptor(text, read_only=True))
        self.declare_parameter("target_frame", "base_link", _descriptor("frame of the grasp poses"))
        self.declare_parameter(
            "stamp_tolerance",
            0.05,
            _descriptor("largest |points stamp - depth stamp|, seconds", floats=(0.0, 10.0)),
        )
        self.declare_parameter(
            "depth_wait",
            0.5,
            _descriptor("how long points wait for their depth frame, seconds", floats=(0.0, 10.0)),
        )
        self.declare_parameter(
            "depth_buffer_size",
            10,
            _descriptor("depth frames kept for matching", read_only=True, ints=(1, 300)),
        )
        self.declare_parameter(
            "depth_window", 5, _descriptor("median window for depth, pixels", ints=(1, 51))
        )
        self.declare_parameter(
            "normal_radius", 7, _descriptor("half size of the normal patch, pixels", ints=(1, 50))
        )
        self.declare_parameter(
            "min_points", 10, _descriptor("fewest depth points for a normal", ints=(3, 10000))
        )
        self.declare_parameter("min_depth", 0.1, _descriptor("valid depth from, metres", floats=(0.0, 100.0)))
        self.declare_parameter(
            "max_depth", 10.0, _descriptor("valid depth up to, metres", floats=(0.0, 100.0))
        )
        self.declare_parameter(
            "use_tf", True, _descriptor("look up transforms in tf2 when tf2_ros is installed", read_only=True)
        )
        self.declare_parameter(
            "extrinsics_file",
            "",
            _descriptor("hand-eye YAML (calib/camera_to_base.yaml format); empty = none", read_only=True),
        )
        static = "static camera pose instead of a file: "
        self.declare_parameter(
            "extrinsics.parent_frame", "", _descriptor(static + "parent (robot) frame", read_only=True)
        )
        self.declare_parameter(
            "extrinsics.child_frame",
            "",
            _descriptor(static + "child (optical) frame; empty = off", read_only=True),
        )
        self.declare_parameter(
            "extrinsics.translation", [0.0, 0.0, 0.0], _descriptor(static + "x, y, z metres", read_only=True)
        )
        self.declare_parameter(
            "extrinsics.quaternion_xyzw",
            [0.0, 0.0, 0.0, 1.0],
            _descriptor(static + "x, y, z, w", read_only=True),
        )
        self.declare_parameter(
            "marker_length", 0.1, _descriptor("approach arrow length, metres", floats=(0.0, 10.0))
        )

    def _p(self, name: str):
        return self.get_parameter(name).value

    def _make_lifter(self, changes: dict) -> GraspLifter:
        def val(n):
            return changes.get(n, self._p(n))

        if val("min_depth") >= val("max_depth"):
            raise InputError(f"min_depth ({val('min_depth')}) must be below max_depth ({val('max_depth')})")
        return GraspLifter(
            depth_window=val("depth_window"),
            normal_radius=val("normal_radius"),
            min_depth=val("min_depth"),
            max_depth=val("max_depth"),
            min_points=val("min_points"),
        )

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        try:
            self._lifter = self._make_lifter({p.name: p.value for p in params})
        except InputError as err:
            return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    def _load_extrinsics(self) -> list[RigidTransform]:
        found = []
        path = self._p("extrinsics_file")
        if path:
            found.append(load_extrinsics(path))
        child = self._p("extrinsics.child_frame")
        if child:
            parent = self._p("extrinsics.parent_frame") or self._p("target_frame")
            found.append(
                RigidTransform.from_translation_quaternion(
                    self._p("extrinsics.translation"),
                    self._p("extrinsics.quaternion_xyzw"),
                    parent_frame=parent,
                    child_frame=child,
                )
            )
        return found

    # ------------------------------------------------------------------ inputs
    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._camera = camera_from_camera_info(msg)
        except PartPointError as err:
            self.get_logger().warning(str(err), throttle_duration_sec=LOG_THROTTLE_S)

    def _on_depth(self, msg: Image) -> None:
        try:
            depth_m = depth_to_metres(image_to_numpy(msg), msg.encoding)
        except PartPointError as err:
            self.get_logger().warning(f"depth image dropped: {err}", throttle_duration_sec=LOG_THROTTLE_S)
            return
        self._depth.append(_DepthFrame(stamp_to_seconds(msg.header.stamp), msg.header.frame_id, depth_m))
        still_pending = []
        for arrived, points in self._pending:
            if not self._try_process(points, final=False):
                still_pending.append((arrived, points))
        self._pending = still_pending

    def _on_points(self, msg: PartPointArray) -> None:
        if not self._try_process(msg, final=False):
            self._pending.append((time.monotonic(), msg))

    def _expire_pending(self) -> None:
        now, wait = time.monotonic(), self._p("depth_wait")
        keep = []
        for arrived, points in self._pending:
            if now - arrived >= wait:
                self._try_process(points, final=True)
            else:
                keep.append((arrived, points))
        self._pending = keep

    # ------------------------------------------------------------------ lifting
    def _match_depth(self, stamp: float) -> _DepthFrame | None:
        tolerance = self._p("stamp_tolerance")
        best = min(self._depth, key=lambda f: abs(f.stamp - stamp), default=None)
        return best if best is not None and abs(best.stamp - stamp) <= tolerance else None

    def _try_process(self, msg: PartPointArray, *, final: bool) -> bool:
        """Lift and publish ``msg``; False (nothing published) if its depth frame may still come."""
        stamp = stamp_to_seconds(msg.header.stamp)
        frame = self._match_depth(stamp)
        reason = ""
        if frame is None:
            newest = max((f.stamp for f in self._depth), default=None)
            could_still_come = newest is None or newest < stamp + self._p("stamp_tolerance")
            if could_still_come and not final:
                return False
            reason = (
                f"no depth image within {self._p('stamp_tolerance')} s of the points' stamp {stamp:.3f} "
                f"on {self._p('depth_topic')}"
                + (
                    " (none received)"
                    if newest is None
                    else f" (newest {newest:.3f}, {len(self._depth)} buffered)"
                )
            )
        elif self._camera is None:
            if not final:
                return False
            reason = f"no camera_info received on {self._p('camera_info_topic')}"

        out = PartPointArray(header=msg.header)
        markers = MarkerArray(markers=[Marker(action=Marker.DELETEALL)])
        for index, point in enumerate(msg.points):
            lifted = self._lift_point(point, msg, frame, reason)
            out.points.append(lifted)
            if lifted.has_3d:
                self._pose_pub.publish(lifted.grasp_pose)
                markers.markers.extend(self._markers(index, lifted))
        self._points_pub.publish(out)
        self._marker_pub.publish(markers)
        return True

    def _lift_point(
        self, point: PartPoint, msg: PartPointArray, frame: _DepthFrame | None, reason: str
    ) -> PartPoint:
        out = PartPoint()
        for field in ("header", "query", "u", "v", "score", "found", "message"):
            setattr(out, field, getattr(point, field))
        if not out.header.frame_id:
            out.header = msg.header
        out.has_3d = False
        if not point.found:
            out.message = point.message or "part not found in the image"
            return out
        optical = out.header.frame_id
        if not reason and frame.frame_id and optical and frame.frame_id != optical:
            reason = (
                f"depth is in frame {frame.frame_id!r} but the points in {optical!r}: "
                "use depth aligned to the colour image"
            )
        if not reason:
            result = self._lifter.lift(point.u, point.v, frame.depth_m, self._camera)
            reason = "" if result.ok else result.reason
        if not reason:
            to_target = self._transform(self._p("target_frame"), optical, out.header.stamp)
            reason = to_target if isinstance(to_target, str) else ""
        if reason:
            out.message = reason
            self.get_logger().warning(f"{point.query!r}: {reason}", throttle_duration_sec=LOG_THROTTLE_S)
            return out
        assert isinstance(result, GraspResult)
        grasp = to_target @ RigidTransform(result.pose.matrix, optical, "grasp")
        out.point = point_msg(result.point)
        out.normal = vector_msg(result.normal)
        out.grasp_pose = pose_stamped_msg(grasp, out.header.stamp)
        out.has_3d = True
        out.message = ""
        return out

    def _transform(self, target: str, source: str, stamp) -> RigidTransform | str:
        """T_target_source, or a one-line reason why there is none."""
        if not source:
            return "the points have no frame_id: cannot place them in 3D"
        if target == source:
            return RigidTransform.identity(target)
        for t in self._extrinsics:
            if (t.parent_frame, t.child_frame) == (target, source):
                return t
            if (t.parent_frame, t.child_frame) == (source, target):
                return t.inverse()
        if self._tf_buffer is not None:
            for when in (Time.from_msg(stamp), Time()):  # at the stamp, else latest
                try:
                    return transform_from_msg(self._tf_buffer.lookup_transform(target, source, when))
                except (
                    tf2_ros.LookupException,
                    tf2_ros.ConnectivityException,
                    tf2_ros.ExtrapolationException,
                ):
                    continue
            return f"tf2 has no transform from {source!r} to {target!r}"
        known = ", ".join(f"{t.parent_frame}<-{t.child_frame}" for t in self._extrinsics) or "none"
        return (
            f"no transform from {source!r} to {target!r} (static extrinsics: {known}"
            f"{'' if tf2_ros else '; tf2_ros is not installed'}): set extrinsics_file or extrinsics.*"
        )

    def _markers(self, index: int, point: PartPoint) -> list[Marker]:
        header = point.grasp_pose.header
        p = np.array(
            [
                point.grasp_pose.pose.position.x,
                point.grasp_pose.pose.position.y,
                point.grasp_pose.pose.position.z,
            ]
        )
        q = point.grasp_pose.pose.orientation
        approach = RigidTransform.from_translation_quaternion(p, [q.x, q.y, q.z, q.w]).rotation[:, 2]
        length = self._p("marker_length")
        sphere = Marker(header=header, ns="part_point", id=3 * index, type=Marker.SPHERE, action=Marker.ADD)
        sphere.pose.position = point_msg(p)
        sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.02
        sphere.color = ColorRGBA(r=0.1, g=0.9, b=0.2, a=1.0)
        arrow = Marker(header=header, ns="approach", id=3 * index + 1, type=Marker.ARROW, action=Marker.ADD)
        arrow.points = [point_msg(p - length * approach), Point(x=p[0], y=p[1], z=p[2])]
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.008, 0.016, 0.02  # shaft, head diameter, head length
        arrow.color = ColorRGBA(r=0.1, g=0.4, b=1.0, a=1.0)
        text = Marker(
            header=header, ns="query", id=3 * index + 2, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD
        )
        text.pose.position = point_msg(p + np.array([0.0, 0.0, 0.04]))
        text.scale.z = 0.03
        text.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        text.text = f"{point.query} ({point.score:.2f})"
        return [sphere, arrow, text]


def main(args: list[str] | None = None) -> int:
    return run_node(DepthFusionNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
