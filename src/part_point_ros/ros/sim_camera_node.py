"""sim_camera_node: the synthetic tabletop world (part_point_ros.sim) published as a RealSense would.

Publishes, all with the same stamp per frame, at ``rate_hz``:
  color_topic       /camera/color/image_raw                     sensor_msgs/Image rgb8
  color_info_topic  /camera/color/camera_info                   sensor_msgs/CameraInfo
  depth_topic       /camera/aligned_depth_to_color/image_raw    sensor_msgs/Image 16UC1 mm (or 32FC1 m)
  depth_info_topic  /camera/aligned_depth_to_color/camera_info  sensor_msgs/CameraInfo (= colour's)
Latched (transient local, depth 1), re-sent on every scene change:
  extrinsics_topic    /camera/extrinsics          geometry_msgs/TransformStamped base_frame <- optical frame
  ground_truth_topic  /sim_camera/ground_truth    std_msgs/String, JSON: seed, intrinsics, camera_pose,
                                                  parts and queries with their ground-truth points
TF: tf2_msgs is not on PyPI, so /tf_static cannot be published from the wheels; when tf2_ros IS
importable (a system ROS install) the same transform also goes to /tf_static. ``extrinsics_out``
writes it as a calib/ extrinsics YAML (geometry.calib.load_extrinsics reads it back).

Switch the scene with the ``seed`` parameter (``ros2 param set /sim_camera_node seed 7``) or the
``~/next_scene`` service (std_srvs/Trigger, seed + 1).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from geometry_msgs.msg import TransformStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from part_point_ros.errors import PartPointError
from part_point_ros.geometry.camera import PinholeCamera
from part_point_ros.geometry.transforms import RigidTransform
from part_point_ros.ros.conversions import camera_info_from_camera, numpy_to_image, transform_msg
from part_point_ros.ros.params import SIM_CAMERA_PARAMS, check_changes, declare
from part_point_ros.ros.qos import latched_qos, sensor_qos
from part_point_ros.ros.spin import run_node
from part_point_ros.sim.records import floats, object_records, part_records, query_records, select

try:  # tf2_ros comes with a system ROS install; the PyPI wheels do not have it
    import tf2_ros
except ImportError:
    tf2_ros = None

NODE_NAME = "sim_camera_node"


GROUND_TRUTH_FIELDS = {
    "objects": ("id", "type", "colour", "part_ids"),
    "parts": ("id", "object_id", "object", "part", "pixels", "point_2d", "point_3d"),
    "queries": ("text", "kind", "object", "part", "part_ids", "ambiguous"),
}


def scene_ground_truth(scene: Any, *, optical_frame: str, base_frame: str) -> dict[str, Any]:
    """JSON-ready ground truth of a rendered ``sim.Scene``: what the demo and the tests compare to."""
    parts = {p["id"]: p for p in part_records(scene)}

    def points(part_ids: list[int], key: str) -> list[list[float]]:
        return [[float(x) for x in parts[i][key]] for i in part_ids if parts[i][key] is not None]

    return {
        "seed": int(scene.seed),
        "frames": {"camera": optical_frame, "world": base_frame},
        "intrinsics": scene.intrinsics.to_dict(),
        "camera_pose": floats(scene.camera_pose),  # optical -> base, 4x4
        "objects": select(object_records(scene), GROUND_TRUTH_FIELDS["objects"]),
        "parts": select(parts.values(), GROUND_TRUTH_FIELDS["parts"]),
        "queries": [
            {
                **q,
                "points_2d": points(q["part_ids"], "point_2d"),
                "points_3d": points(q["part_ids"], "point_3d"),
            }
            for q in select(query_records(scene), GROUND_TRUTH_FIELDS["queries"])
        ],
    }


def write_extrinsics_yaml(path: str | Path, pose: RigidTransform) -> None:
    """Write ``pose`` (parent <- child) in the calib/ extrinsics format, atomically."""
    data = {
        "parent_frame": pose.parent_frame,
        "child_frame": pose.child_frame,
        "translation": [float(x) for x in pose.translation],
        "quaternion_xyzw": [float(x) for x in pose.quaternion_xyzw],
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as f:
        f.write("# written by sim_camera_node: the synthetic scene's camera pose (optical frame in base)\n")
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, target)


class _Frame:
    """The messages of one scene, built once; only the stamps change per published frame."""

    def __init__(self, scene: Any, *, optical: str, base: str, depth_encoding: str) -> None:
        self.scene = scene
        header = Header(frame_id=optical)
        self.color = numpy_to_image(scene.rgb, "rgb8", header=header)
        depth = scene.depth_mm if depth_encoding == "16UC1" else scene.depth_m.astype(np.float32)
        self.depth = numpy_to_image(depth, depth_encoding, header=Header(frame_id=optical))
        camera = PinholeCamera.from_intrinsics(**scene.intrinsics.to_dict(), d=[0.0] * 5, frame_id=optical)
        self.color_info = camera_info_from_camera(camera, header=Header(frame_id=optical))
        self.depth_info = camera_info_from_camera(camera, header=Header(frame_id=optical))
        self.pose = RigidTransform(np.asarray(scene.camera_pose, dtype=np.float64), base, optical)
        self.ground_truth = json.dumps(scene_ground_truth(scene, optical_frame=optical, base_frame=base))


class SimCameraNode(Node):
    """Renders a scene of the synthetic world and streams it as colour + aligned depth + camera_info."""

    def __init__(self, *, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        declare(self, SIM_CAMERA_PARAMS)
        self._frame = self._build(self._p("seed"))  # a bad seed/size raises here: one line from main
        self._pending: _Frame | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        qos = sensor_qos()
        self._color_pub = self.create_publisher(Image, self._p("color_topic"), qos)
        self._color_info_pub = self.create_publisher(CameraInfo, self._p("color_info_topic"), qos)
        self._depth_pub = self.create_publisher(Image, self._p("depth_topic"), qos)
        self._depth_info_pub = self.create_publisher(CameraInfo, self._p("depth_info_topic"), qos)
        self._extrinsics_pub = self.create_publisher(
            TransformStamped, self._p("extrinsics_topic"), latched_qos()
        )
        self._truth_pub = self.create_publisher(String, self._p("ground_truth_topic"), latched_qos())
        self._tf = tf2_ros.StaticTransformBroadcaster(self) if tf2_ros is not None else None
        self.create_service(Trigger, "~/next_scene", self._on_next_scene)
        self._announce()
        self.create_timer(1.0 / self._p("rate_hz"), self._publish_frame)
        self.get_logger().info(
            f"streaming scene {self._p('seed')} ({self._p('width')}x{self._p('height')}) at "
            f"{self._p('rate_hz')} Hz on {self._p('color_topic')}"
        )

    def _p(self, name: str) -> Any:
        return self.get_parameter(name).value

    @property
    def scene(self) -> Any:
        """The scene being streamed (sim.Scene)."""
        return self._frame.scene

    @property
    def camera_pose(self) -> RigidTransform:
        """base_frame <- optical frame of the current scene."""
        return self._frame.pose

    def _build(self, seed: int) -> _Frame:
        from part_point_ros.sim import render_scene

        scene = render_scene(
            int(seed),
            width=self._p("width"),
            height=self._p("height"),
            hfov_deg=self._p("hfov_deg"),
            shadows=self._p("shadows"),
        )
        return _Frame(
            scene,
            optical=self._p("optical_frame"),
            base=self._p("base_frame"),
            depth_encoding=self._p("depth_encoding"),
        )

    # ------------------------------------------------------------------ scene switching
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        reason = check_changes(SIM_CAMERA_PARAMS, params)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        for p in params:
            if p.name == "seed":
                try:  # render now, so that a failure refuses the change
                    self._pending = self._build(p.value)
                except PartPointError as err:
                    return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: list[Parameter]) -> None:
        if self._pending is not None and any(p.name == "seed" for p in params):
            self._frame, self._pending = self._pending, None
            self._announce()
            self.get_logger().info(f"switched to scene {self.scene.seed}")

    def _on_next_scene(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        result = self.set_parameters([Parameter("seed", value=int(self.scene.seed) + 1)])[0]
        response.success = result.successful
        s = self.scene
        response.message = (
            f"scene {s.seed}: {len(s.objects)} objects, {len(s.queries)} queries"
            if result.successful
            else result.reason
        )
        return response

    # ------------------------------------------------------------------ publishing
    def _announce(self) -> None:
        """Latched outputs of the current scene: extrinsics, /tf_static, ground truth, calib YAML."""
        frame = self._frame
        transform = transform_msg(frame.pose, self.get_clock().now().to_msg())
        self._extrinsics_pub.publish(transform)
        if self._tf is not None and self._p("publish_tf"):
            self._tf.sendTransform(transform)
        self._truth_pub.publish(String(data=frame.ground_truth))
        if self._p("extrinsics_out"):
            write_extrinsics_yaml(self._p("extrinsics_out"), frame.pose)

    def _publish_frame(self) -> None:
        frame = self._frame
        stamp = self.get_clock().now().to_msg()
        for msg in (frame.color, frame.color_info, frame.depth, frame.depth_info):
            msg.header.stamp = stamp
        self._color_info_pub.publish(frame.color_info)
        self._depth_info_pub.publish(frame.depth_info)
        self._depth_pub.publish(frame.depth)
        self._color_pub.publish(frame.color)  # colour last: its depth is already out when it arrives


def main(args: list[str] | None = None) -> int:
    return run_node(SimCameraNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
