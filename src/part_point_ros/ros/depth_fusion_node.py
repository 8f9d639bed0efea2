"""depth_fusion_node: lift 2D part points to 3D grasp poses with aligned depth and camera_info.

Subscribes:  points (part_point_ros/PartPointArray), aligned depth (sensor_msgs/Image, 16UC1 mm or
             32FC1 m), camera_info (sensor_msgs/CameraInfo of the colour camera), extrinsics
             (latched geometry_msgs/TransformStamped, e.g. from sim_camera_node; empty = off).
Publishes:   grasp_pose (geometry_msgs/PoseStamped, target frame) for every point lifted,
             markers (visualization_msgs/MarkerArray), points_3d (PartPointArray with 3D filled in,
             or has_3d = false and a one-line reason in ``message``).

Points are matched to the depth frame with the nearest stamp within ``stamp_tolerance``; a point
array waits up to ``depth_wait`` seconds for its depth frame. Buffering, lifting and the frame
lookup are part_point_node's (ros.camera_buffer): the optical frame goes to ``target_frame`` by the
static extrinsics (``extrinsics_file`` or ``extrinsics.*``), else the latest transform on the
extrinsics topic (so a scene switch of the synthetic camera moves the poses with it), else tf2 when
tf2_ros is importable. camera_info is validated on receipt: an invalid one (singular or non-finite
K, ...) is rejected with one throttled warning, the last valid one stays in use, and no pose is ever
NaN or infinite. Every entity is made in the constructor and lives as long as the node.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, PoseStamped, TransformStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from part_point_ros.errors import InputError
from part_point_ros.geometry.transforms import RigidTransform
from part_point_ros.msg import PartPoint, PartPointArray
from part_point_ros.ros.camera_buffer import (
    CameraBuffer,
    DepthFrame,
    grasp_lifter,
    static_extrinsics,
    tf_listener,
    warn_on_drop,
)
from part_point_ros.ros.conversions import point_msg, stamp_to_seconds, vector_msg
from part_point_ros.ros.params import GRASP_LIFTER_PARAMS, ParamSpec, declare
from part_point_ros.ros.qos import QOS_OVERRIDES, latched_qos, results_qos, sensor_qos
from part_point_ros.ros.spin import run_node

NODE_NAME = "depth_fusion_node"
LOG_THROTTLE_S = 2.0
_STATIC = "static camera pose instead of a file: "

DEPTH_FUSION_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("points_topic", "/part_point/points", "2D part points in (PartPointArray)", read_only=True),
    ParamSpec(
        "depth_topic",
        "/camera/aligned_depth_to_color/image_raw",
        "depth aligned to colour in (16UC1 mm, 32FC1 m)",
        read_only=True,
    ),
    ParamSpec(
        "camera_info_topic", "/camera/color/camera_info", "camera_info of the colour camera", read_only=True
    ),
    ParamSpec(
        "extrinsics_topic",
        "/camera/extrinsics",
        "latched TransformStamped target <- optical in; empty = off",
        read_only=True,
    ),
    ParamSpec(
        "grasp_pose_topic",
        "/part_point/grasp_pose",
        "grasp poses out (PoseStamped, target frame)",
        read_only=True,
    ),
    ParamSpec("markers_topic", "/part_point/markers", "RViz markers out", read_only=True),
    ParamSpec(
        "points_3d_topic", "/part_point/points_3d", "part points with 3D filled in, out", read_only=True
    ),
    ParamSpec("target_frame", "base_link", "frame of the grasp poses"),
    ParamSpec("stamp_tolerance", 0.05, "largest |points stamp - depth stamp|, seconds", floats=(0.0, 10.0)),
    ParamSpec("depth_wait", 0.5, "how long points wait for their depth frame, seconds", floats=(0.0, 10.0)),
    ParamSpec("depth_buffer_size", 10, "depth frames kept for matching", ints=(1, 300), read_only=True),
    *GRASP_LIFTER_PARAMS,
    ParamSpec("use_tf", True, "look up transforms in tf2 when tf2_ros is installed", read_only=True),
    ParamSpec(
        "extrinsics_file",
        "",
        "hand-eye YAML (calib/camera_to_base.yaml format); empty = none",
        read_only=True,
    ),
    ParamSpec("extrinsics.parent_frame", "", _STATIC + "parent (robot) frame", read_only=True),
    ParamSpec("extrinsics.child_frame", "", _STATIC + "child (optical) frame; empty = off", read_only=True),
    ParamSpec("extrinsics.translation", [0.0, 0.0, 0.0], _STATIC + "x, y, z metres", read_only=True),
    ParamSpec("extrinsics.quaternion_xyzw", [0.0, 0.0, 0.0, 1.0], _STATIC + "x, y, z, w", read_only=True),
    ParamSpec("marker_length", 0.1, "approach arrow length, metres", floats=(0.0, 10.0)),
)


class DepthFusionNode(Node):
    """Lifts PartPointArray points to 3D: robust depth, deprojection, normal, grasp pose, target frame."""

    def __init__(self, *, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        declare(self, DEPTH_FUSION_PARAMS)
        self._lifter = grasp_lifter(self._p)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        tf_buffer, self._tf_listener = tf_listener(self, self._p("use_tf"))
        self.camera = CameraBuffer(
            depth_size=self._p("depth_buffer_size"),
            static=static_extrinsics(self._p),  # a bad file raises here: one line from main
            tf_buffer=tf_buffer,
            depth_topic=self._p("depth_topic"),
            camera_info_topic=self._p("camera_info_topic"),
        )
        self._pending: list[tuple[float, PartPointArray]] = []  # (monotonic arrival, points)

        self._pose_pub = self.create_publisher(PoseStamped, self._p("grasp_pose_topic"), results_qos())
        self._marker_pub = self.create_publisher(MarkerArray, self._p("markers_topic"), results_qos())
        self._points_pub = self.create_publisher(PartPointArray, self._p("points_3d_topic"), results_qos())
        self.create_subscription(PartPointArray, self._p("points_topic"), self._on_points, results_qos())
        for msg_type, topic, callback in (
            (Image, "depth_topic", self._on_depth),
            (CameraInfo, "camera_info_topic", warn_on_drop(self.camera.add_camera_info, self.get_logger())),
        ):
            self.create_subscription(
                msg_type, self._p(topic), callback, sensor_qos(), qos_overriding_options=QOS_OVERRIDES
            )
        if self._p("extrinsics_topic"):
            self.create_subscription(
                TransformStamped,
                self._p("extrinsics_topic"),
                warn_on_drop(self.camera.add_extrinsics, self.get_logger()),
                latched_qos(),
            )
        self.create_timer(0.05, self._expire_pending)
        static = "static extrinsics" if self.camera.extrinsics else "no static extrinsics"
        topic = self._p("extrinsics_topic") or "no extrinsics topic"
        tf = "on" if tf_buffer is not None else "off"
        self.get_logger().info(
            f"lifting {self._p('points_topic')} with {self._p('depth_topic')} into "
            f"{self._p('target_frame')!r} ({static}, {topic}, tf2 {tf})"
        )

    # ------------------------------------------------------------------ parameters
    def _p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        new = {p.name: p.value for p in params}
        try:
            grasp_lifter(lambda name: new.get(name, self._p(name)))  # validate only: nothing is set yet
        except InputError as err:
            return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: list[Parameter]) -> None:
        self._lifter = grasp_lifter(self._p)

    # ------------------------------------------------------------------ inputs
    def _on_depth(self, msg: Image) -> None:
        self.camera.add_depth(msg)
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
    def _depth_for(self, header: Header, *, final: bool) -> DepthFrame | str | None:
        """The depth frame of the points' stamp, the reason there is none, or None to wait for it."""
        tolerance = self._p("stamp_tolerance")
        depth = self.camera.depth_near(header.stamp, tolerance, what="points'")
        if isinstance(depth, str):
            newest = self.camera.newest_depth_stamp
            may_still_come = newest is None or newest < stamp_to_seconds(header.stamp) + tolerance
            return None if may_still_come and not final else depth
        if self.camera.camera is None and not final:
            return None
        return self.camera.metric_depth(depth)

    def _try_process(self, msg: PartPointArray, *, final: bool) -> bool:
        """Lift and publish ``msg``; False (nothing published) if its depth frame may still come."""
        frame = self._depth_for(msg.header, final=final)
        if frame is None:
            return False
        out = PartPointArray(header=msg.header)
        markers = MarkerArray(markers=[Marker(action=Marker.DELETEALL)])
        for index, point in enumerate(msg.points):
            lifted = self._lift_point(point, msg.header, frame)
            out.points.append(lifted)
            if lifted.has_3d:
                self._pose_pub.publish(lifted.grasp_pose)
                markers.markers.extend(self._markers(index, lifted))
        self._points_pub.publish(out)
        self._marker_pub.publish(markers)
        return True

    def _lift_point(self, point: PartPoint, header: Header, frame: DepthFrame | str) -> PartPoint:
        out = PartPoint()
        for field in ("header", "query", "u", "v", "score", "found", "message"):
            setattr(out, field, getattr(point, field))
        if not out.header.frame_id:
            out.header = header
        out.has_3d = False
        if not point.found:
            out.message = point.message or "part not found in the image"
            return out
        lifted = frame
        if isinstance(frame, DepthFrame):
            lifted = self.camera.lift_in(
                frame, out.header, point.u, point.v, self._p("target_frame"), lifter=self._lifter
            )
        if isinstance(lifted, str):
            out.message = lifted
            self.get_logger().warning(f"{point.query!r}: {lifted}", throttle_duration_sec=LOG_THROTTLE_S)
            return out
        optical_point, normal, grasp = lifted
        out.point, out.normal, out.grasp_pose = point_msg(optical_point), vector_msg(normal), grasp
        out.has_3d = True
        out.message = ""
        return out

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
