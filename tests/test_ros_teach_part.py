"""Teaching a part by example over DDS (issue #14): /teach_part, RViz's /clicked_point, method pop,
and LENS masks on /part_point/mask.

part_point_node runs method pop on the shipped tiny-tabletop LLaVA (its own vision tower gives the
dense features here; DINOv3 is the real-use extractor) with a tiny random SAM for ``masks``, fed by a
real sim_camera_node. Random SAM weights give meaningless masks: the tests check the plumbing (size,
encoding, stamps), and the mask-based lift is tested on ground-truth masks in test_geometry_mask_lift.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")

from builtin_interfaces.msg import Time  # noqa: E402
from geometry_msgs.msg import PointStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from part_point_ros.srv import PointPart, TeachPart  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_helpers import Inbox, ServiceClient, ros_fixture, wait_for_match, wait_until  # noqa: E402, F401
from sam_helpers import build_tiny_sam  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from part_point_ros.geometry.camera import PinholeCamera  # noqa: E402
from part_point_ros.geometry.transforms import RigidTransform  # noqa: E402
from part_point_ros.grounding.supports import SupportStore  # noqa: E402
from part_point_ros.ros.part_point_node import PartPointNode  # noqa: E402
from part_point_ros.ros.qos import latched_qos, results_qos  # noqa: E402
from part_point_ros.ros.sim_camera_node import SimCameraNode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NS = "/teach_test"
CAMERA = f"{NS}/camera"
NODE = "teach_test_node"
SEED, W, H = 3, 160, 120
OPTICAL = "camera_color_optical_frame"


@pytest.fixture(scope="module")
def rig(ros, tmp_path_factory):
    camera = ros.add(
        SimCameraNode(
            node_name="teach_test_camera",
            context=ros.context,
            parameter_overrides=[
                Parameter(k, value=v)
                for k, v in {
                    "seed": SEED, "width": W, "height": H, "rate_hz": 20.0,
                    "color_topic": f"{CAMERA}/color/image_raw",
                    "color_info_topic": f"{CAMERA}/color/camera_info",
                    "depth_topic": f"{CAMERA}/aligned_depth_to_color/image_raw",
                    "depth_info_topic": f"{CAMERA}/aligned_depth_to_color/camera_info",
                    "extrinsics_topic": f"{CAMERA}/extrinsics",
                    "ground_truth_topic": f"{NS}/ground_truth",
                }.items()
            ],
        )
    )  # fmt: skip
    supports = tmp_path_factory.mktemp("supports")
    params = {
        "method": "pop",
        "backbone": str(ROOT / "models" / "tiny-tabletop-llava"),
        "heads_file": str(ROOT / "models" / "tiny-tabletop-heads.json"),
        "extractor": "llava-tower",
        "support_root": str(supports),
        "support_fusion": "mean",  # not the default: the parameter must reach the method
        "masks": True,
        "mask_model": str(build_tiny_sam(tmp_path_factory.mktemp("sam"))),
        "max_image_age_s": 10.0,
        "image_topic": f"{CAMERA}/color/image_raw",
        "camera_info_topic": f"{CAMERA}/color/camera_info",
        "depth_topic": f"{CAMERA}/aligned_depth_to_color/image_raw",
        "extrinsics_topic": f"{CAMERA}/extrinsics",
        "command_topic": f"{NS}/command",
        "points_topic": f"{NS}/points",
        "heatmap_topic": f"{NS}/heatmap",
        "overlay_topic": f"{NS}/overlay",
        "mask_topic": f"{NS}/mask",
        "service_name": f"{NS}/point_part",
        "parts_service_name": f"{NS}/point_parts",
        "teach_service_name": f"{NS}/teach_part",
        "clicked_point_topic": f"{NS}/clicked_point",
        "require_grasp_pose": False,
    }
    node = ros.add(
        PartPointNode(
            node_name=NODE,
            context=ros.context,
            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
        )
    )
    client = ServiceClient(ros, "teach_test_client", timeout=60.0)
    assert client.transition(NODE, Transition.TRANSITION_CONFIGURE), node.last_error
    assert client.transition(NODE, Transition.TRANSITION_ACTIVATE)
    truth = Inbox(client.node, String, f"{NS}/ground_truth", latched_qos())
    wait_until(lambda: node.camera.synced_color(0.05) is not None and node.camera.extrinsics, "frames")
    yield {
        "node": node,
        "client": client,
        "store": SupportStore(supports),
        "truth": json.loads(truth.wait(1)[0].data),
    }
    ros.remove(client.node)
    ros.remove(node)
    ros.remove(camera)


def teach(rig, name: str, u: float, v: float, **fields) -> TeachPart.Response:
    request = TeachPart.Request(name=name, u=u, v=v, **fields)
    return rig["client"].call(TeachPart, f"{NS}/teach_part", request)


def point(rig, query: str) -> PointPart.Response:
    return rig["client"].call(PointPart, f"{NS}/point_part", PointPart.Request(query=query))


@pytest.mark.ros
def test_teach_part_then_point_part_uses_the_taught_set_and_publishes_its_mask(rig):
    untaught = point(rig, "drill grip")
    assert not untaught.success and "no support set for query 'drill grip' (taught: none yet)" in (
        untaught.message
    )
    taught = teach(rig, "drill grip", 80.0, 60.0)
    assert taught.success and taught.examples == 1, taught.message
    assert taught.message == "taught 'drill grip' at (80.0, 60.0): 1 example(s)"
    assert rig["store"].load("drill grip").supports[0].point == pytest.approx((80.0, 60.0))
    masks = Inbox(rig["client"].node, Image, f"{NS}/mask", latched_qos())
    answer = point(rig, "drill grip")
    assert answer.success and answer.point.found and answer.point.query == "drill grip", answer.message
    wait_until(lambda: any(m.header == answer.point.header for m in masks.messages), "the answer's mask")
    mask = next(m for m in masks.messages if m.header == answer.point.header)
    assert (mask.encoding, mask.width, mask.height) == ("mono8", W, H)
    assert set(np.unique(np.frombuffer(bytes(mask.data), np.uint8))) <= {0, 255}
    again = teach(rig, "drill grip", 20.0, 100.0)
    assert again.success and again.examples == 2
    assert rig["node"]._pointer.describe()["support_fusion"] == "mean"  # the node parameter's
    two = point(rig, "drill grip")  # two examples, their maps averaged
    assert two.success and two.point.found, two.message


@pytest.mark.ros
@pytest.mark.parametrize(
    ("name", "u", "v", "expected"),
    [
        ("", 10.0, 10.0, "bad support-set name ''"),
        ("a/b", 10.0, 10.0, "bad support-set name 'a/b'"),
        ("grip", 500.0, 10.0, "outside the 160x120 image"),
        ("grip", float("nan"), 10.0, "outside the 160x120 image"),
    ],
)
def test_bad_teach_requests_are_refused_in_one_line(rig, name, u, v, expected):
    response = teach(rig, name, u, v)
    assert not response.success and expected in response.message and "\n" not in response.message
    assert teach(rig, "still works", 10.0, 10.0).success


@pytest.mark.ros
def test_teach_with_a_request_image_of_a_wrong_encoding_is_refused(rig):
    image = Image(width=4, height=4, encoding="mono8", step=4, data=bytes(16))
    response = teach(rig, "grip", 1.0, 1.0, image=image)
    assert not response.success and "encoding 'mono8'" in response.message


@pytest.mark.ros
def test_a_point_clicked_in_rviz_is_projected_into_the_frame_and_taught(rig):
    """RViz's Publish Point sends a 3D point in the fixed frame (base_link): the node projects it into
    the latest colour frame and teaches it under teach_name."""
    truth, node = rig["truth"], rig["node"]
    k = truth["intrinsics"]
    camera = PinholeCamera.from_intrinsics(**k, d=[0.0] * 5, frame_id=OPTICAL)
    t_base_cam = RigidTransform(np.array(truth["camera_pose"]), "base_link", OPTICAL)
    u, v, depth = 100.0, 70.0, 0.6
    p_base = t_base_cam.apply(camera.deproject(np.array([[u, v]]), depth)[0])
    node.set_parameters([Parameter("teach_name", value="clicked grip")])
    clicks = rig["client"].node.create_publisher(PointStamped, f"{NS}/clicked_point", results_qos())
    wait_for_match(clicks)
    click = PointStamped()
    click.header.frame_id, click.header.stamp = "base_link", Time()
    click.point.x, click.point.y, click.point.z = (float(c) for c in p_base)
    clicks.publish(click)
    store = rig["store"]
    wait_until(lambda: store.exists("clicked grip"), "the clicked point's support set", 30.0)
    (support,) = store.load("clicked grip").supports
    assert support.point == pytest.approx((u, v), abs=1e-3)
    assert point(rig, "clicked grip").point.found
    # behind the camera: refused with a warning, nothing taught; a valid click after it is taught, so
    # once that one's set exists the refused one has been handled (whichever name it read)
    behind = PointStamped()
    behind.header.frame_id = OPTICAL
    behind.point.z = -1.0
    node.set_parameters([Parameter("teach_name", value="never")])
    clicks.publish(behind)
    node.set_parameters([Parameter("teach_name", value="after")])
    clicks.publish(click)
    wait_until(lambda: store.exists("after"), "the valid click after the refused one", 30.0)
    assert not store.exists("never") and len(store.load("after").supports) == 1


def test_the_support_fusion_parameter_offers_exactly_the_methods_fusions():
    """params.py lists the choices itself (it does not import the pop module, which imports torch)."""
    from part_point_ros.grounding.methods.pop import SUPPORT_FUSIONS
    from part_point_ros.ros.params import PART_POINT_PARAMS

    assert next(p for p in PART_POINT_PARAMS if p.name == "support_fusion").choices == SUPPORT_FUSIONS
