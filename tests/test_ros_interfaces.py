import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")

from geometry_msgs.msg import Point, PoseStamped, Vector3  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_generated_messages_have_the_documented_fields():
    from part_point_ros.msg import PartPoint, PartPointArray

    p = PartPoint(query="the handle of the mug", u=1.5, v=2.5, score=0.75, found=True, has_3d=False)
    assert isinstance(p.header, Header) and isinstance(p.point, Point) and isinstance(p.normal, Vector3)
    assert isinstance(p.grasp_pose, PoseStamped) and p.message == ""
    assert (p.u, p.v, p.score) == (1.5, 2.5, 0.75)
    arr = PartPointArray(points=[p, PartPoint()])
    assert len(arr.points) == 2 and arr.points[0].query == "the handle of the mug"


def test_generated_service_has_the_documented_request_and_response():
    from part_point_ros.msg import PartPoint
    from part_point_ros.srv import PointPart

    req = PointPart.Request(query="the spout", target_frame="", method="a2p")
    assert isinstance(req.image, Image) and req.image.width == 0  # empty image = latest frame
    res = PointPart.Response()
    assert isinstance(res.point, PartPoint) and isinstance(res.grasp_pose, PoseStamped)
    assert (res.success, res.message, res.has_grasp_pose, res.latency_ms) == (False, "", False, 0.0)


def test_installed_node_wrapper_runs_and_reports_a_user_mistake_in_one_line():
    wrapper = ROOT / "ros2_ws/install/part_point_ros/lib/part_point_ros/depth_fusion_node"
    assert os.access(wrapper, os.X_OK), f"{wrapper} missing: run scripts/setup.sh"
    proc = subprocess.run(
        [str(wrapper), "--ros-args", "-p", "extrinsics_file:=/nonexistent/camera_to_base.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: extrinsics file '/nonexistent/camera_to_base.yaml' does not exist"
    )
    assert "Traceback" not in proc.stderr
