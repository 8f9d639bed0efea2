"""sim_camera_node over DDS: RealSense-like streams, latched extrinsics and ground truth, scene switching."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")

from geometry_msgs.msg import TransformStamped  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_helpers import Inbox, ros_fixture, wait_until  # noqa: E402, F401
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from part_point_ros.geometry.calib import load_extrinsics  # noqa: E402
from part_point_ros.ros.conversions import image_to_numpy, transform_from_msg  # noqa: E402
from part_point_ros.ros.qos import latched_qos, sensor_qos  # noqa: E402
from part_point_ros.ros.sim_camera_node import SimCameraNode  # noqa: E402
from part_point_ros.sim import render_scene  # noqa: E402

NS = "/sim_test"
SEED, W, H = 5, 96, 72
OPTICAL = "camera_color_optical_frame"
TOPICS = {
    "color_topic": f"{NS}/color/image_raw",
    "color_info_topic": f"{NS}/color/camera_info",
    "depth_topic": f"{NS}/aligned_depth_to_color/image_raw",
    "depth_info_topic": f"{NS}/aligned_depth_to_color/camera_info",
    "extrinsics_topic": f"{NS}/extrinsics",
    "ground_truth_topic": f"{NS}/ground_truth",
}


@pytest.fixture(scope="module")
def camera(ros, tmp_path_factory):
    calib = tmp_path_factory.mktemp("sim_calib") / "camera_to_base.yaml"
    params = {"seed": SEED, "width": W, "height": H, "rate_hz": 30.0, "extrinsics_out": str(calib), **TOPICS}
    node = ros.add(
        SimCameraNode(
            node_name="sim_test_camera",
            context=ros.context,
            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
        )
    )
    helper = ros.node("sim_test_helper")
    yield {"node": node, "helper": helper, "calib": calib}
    ros.remove(helper)
    ros.remove(node)


def pose_matrix(msg: TransformStamped) -> np.ndarray:
    return transform_from_msg(msg).matrix


@pytest.mark.ros
def test_colour_depth_and_camera_info_share_stamps_and_carry_the_scene(camera):
    helper = camera["helper"]
    inboxes = {
        key: Inbox(helper, msg_type, TOPICS[key], sensor_qos())
        for key, msg_type in (
            ("color_topic", Image),
            ("depth_topic", Image),
            ("color_info_topic", CameraInfo),
            ("depth_info_topic", CameraInfo),
        )
    }
    for inbox in inboxes.values():
        inbox.wait(2)

    def stamps(key):
        return {(m.header.stamp.sec, m.header.stamp.nanosec) for m in inboxes[key].messages}

    wait_until(
        lambda: stamps("color_topic") & stamps("depth_topic") & stamps("color_info_topic"),
        "a colour, depth and camera_info frame with one stamp",
    )
    scene = render_scene(SEED, width=W, height=H)
    color, depth = inboxes["color_topic"].messages[-1], inboxes["depth_topic"].messages[-1]
    assert (color.encoding, color.width, color.height, color.header.frame_id) == ("rgb8", W, H, OPTICAL)
    assert (depth.encoding, depth.width, depth.height, depth.header.frame_id) == ("16UC1", W, H, OPTICAL)
    np.testing.assert_array_equal(image_to_numpy(color), scene.rgb)
    np.testing.assert_array_equal(image_to_numpy(depth), scene.depth_mm)

    k = scene.intrinsics
    for key in ("color_info_topic", "depth_info_topic"):
        info = inboxes[key].messages[-1]
        assert (info.width, info.height, info.header.frame_id) == (W, H, OPTICAL)
        np.testing.assert_allclose(np.reshape(info.k, (3, 3)), k.matrix)
        assert info.distortion_model == "plumb_bob" and not np.any(info.d)


@pytest.mark.ros
def test_late_subscribers_get_the_latched_extrinsics_and_ground_truth(camera):
    node, helper = camera["node"], camera["helper"]
    extrinsics = Inbox(helper, TransformStamped, TOPICS["extrinsics_topic"], latched_qos())
    truth = Inbox(helper, String, TOPICS["ground_truth_topic"], latched_qos())
    transform = extrinsics.wait(1)[0]
    assert (transform.header.frame_id, transform.child_frame_id) == ("base_link", OPTICAL)

    scene = render_scene(SEED, width=W, height=H)
    np.testing.assert_allclose(pose_matrix(transform), scene.camera_pose, atol=1e-9)
    gt = json.loads(truth.wait(1)[0].data)
    assert gt["seed"] == SEED and gt["frames"] == {"camera": OPTICAL, "world": "base_link"}
    assert [q["text"] for q in gt["queries"]] == [q.text for q in scene.queries]
    by_id = {p.part_id: p for p in scene.parts}
    for q in gt["queries"]:
        expected = [by_id[i].point_3d for i in q["part_ids"] if by_id[i].point_3d is not None]
        np.testing.assert_allclose(q["points_3d"], expected)
    # the same transform is in the calib file (geometry.calib reads it back)
    written = load_extrinsics(camera["calib"])
    assert (written.parent_frame, written.child_frame) == ("base_link", OPTICAL)
    np.testing.assert_allclose(written.matrix, scene.camera_pose, atol=1e-9)
    np.testing.assert_allclose(node.camera_pose.matrix, scene.camera_pose)


@pytest.mark.ros
def test_next_scene_service_and_seed_parameter_switch_the_scene(camera):
    node, helper = camera["node"], camera["helper"]
    client = helper.create_client(Trigger, "/sim_test_camera/next_scene")
    assert client.wait_for_service(timeout_sec=15.0)
    truth = Inbox(helper, String, TOPICS["ground_truth_topic"], latched_qos())
    colour = Inbox(helper, Image, TOPICS["color_topic"], sensor_qos())
    truth.wait(1)
    future = client.call_async(Trigger.Request())
    wait_until(future.done, "the next_scene answer")
    answer = future.result()
    try:
        assert answer.success and answer.message.startswith(f"scene {SEED + 1}: ")
        assert node.get_parameter("seed").value == SEED + 1
        wait_until(lambda: json.loads(truth.messages[-1].data)["seed"] == SEED + 1, "the new ground truth")
        new = render_scene(SEED + 1, width=W, height=H)
        wait_until(
            lambda: colour.messages and np.array_equal(image_to_numpy(colour.messages[-1]), new.rgb),
            "frames of the new scene",
        )
        bad = node.set_parameters([Parameter("seed", value=-1)])[0]
        assert not bad.successful and node.get_parameter("seed").value == SEED + 1
    finally:
        assert node.set_parameters([Parameter("seed", value=SEED)])[0].successful
    wait_until(
        lambda: json.loads(truth.messages[-1].data)["seed"] == SEED, "the ground truth of the first scene"
    )
    np.testing.assert_allclose(
        load_extrinsics(camera["calib"]).matrix, render_scene(SEED, width=W, height=H).camera_pose
    )


@pytest.mark.ros
def test_depth_in_metres_when_asked(ros):
    node = ros.add(
        SimCameraNode(
            node_name="sim_test_metres",
            context=ros.context,
            parameter_overrides=[
                Parameter("seed", value=SEED),
                Parameter("width", value=W),
                Parameter("height", value=H),
                Parameter("depth_encoding", value="32FC1"),
                *[Parameter(k, value=v.replace(NS, f"{NS}/metres")) for k, v in TOPICS.items()],
            ],
        )
    )
    helper = ros.node("sim_test_metres_helper")
    try:
        depth = Inbox(helper, Image, TOPICS["depth_topic"].replace(NS, f"{NS}/metres"), sensor_qos()).wait(1)[
            0
        ]
        assert depth.encoding == "32FC1"
        np.testing.assert_array_equal(image_to_numpy(depth), render_scene(SEED, width=W, height=H).depth_m)
    finally:
        ros.remove(helper)
        ros.remove(node)
