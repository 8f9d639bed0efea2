"""depth_fusion_node over DDS: a synthetic camera streams a tilted plane, points come in, poses go out.

The camera pose comes from static extrinsics parameters, or from the latched extrinsics topic that
sim_camera_node publishes (and re-publishes on a scene switch).
"""

import itertools

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")

from builtin_interfaces.msg import Time  # noqa: E402
from geometry_helpers import plane_depth, plane_normal, ray_plane_point  # noqa: E402
from geometry_msgs.msg import PoseStamped, TransformStamped  # noqa: E402
from part_point_ros.msg import PartPoint, PartPointArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_helpers import (  # noqa: E402, F401
    BAD_CAMERA_INFO,
    Inbox,
    camera_info_msg,
    node_publisher,
    ros_fixture,
    wait_for_match,
    wait_until,
)
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from part_point_ros.geometry.camera import PinholeCamera  # noqa: E402
from part_point_ros.geometry.transforms import RigidTransform  # noqa: E402
from part_point_ros.ros.conversions import camera_info_from_camera, numpy_to_image, transform_msg  # noqa: E402
from part_point_ros.ros.depth_fusion_node import DepthFusionNode  # noqa: E402
from part_point_ros.ros.qos import latched_qos, results_qos, sensor_qos  # noqa: E402

OPTICAL = "cam_optical"
CAMERA = PinholeCamera.from_intrinsics(
    fx=200.0,
    fy=200.0,
    cx=63.5,
    cy=47.5,
    width=128,
    height=96,
    d=[-0.1, 0.02, 0.0, 0.0, 0.0],
    frame_id=OPTICAL,
)
# camera pose in base_link: 0.4 m up, looking along +x, tilted 30 degrees down (image right = -y)
_TILT = np.deg2rad(30.0)
_Z = np.array([np.cos(_TILT), 0.0, -np.sin(_TILT)])
_X = np.array([0.0, -1.0, 0.0])
T_BASE_CAM = RigidTransform.from_rotation_translation(
    np.column_stack([_X, np.cross(_Z, _X), _Z]),
    [0.1, 0.0, 0.4],
    parent_frame="base_link",
    child_frame=OPTICAL,
)
PLANE_N = plane_normal(25.0)  # optical frame, toward the camera
PLANE_P = np.array([0.0, 0.0, 0.9])
STAMP = Time(sec=100, nanosec=250_000_000)
_ids = itertools.count()


class Rig:
    """A depth_fusion_node on its own topics, a camera streaming depth + camera_info, and inboxes."""

    def __init__(
        self,
        ros,
        depth_image: Image,
        *,
        target_frame: str = "base_link",
        with_extrinsics: bool = True,
        info: CameraInfo | None = None,
    ):
        prefix = f"/t{next(_ids)}"
        params = {
            "points_topic": f"{prefix}/points",
            "extrinsics_topic": f"{prefix}/extrinsics",
            "depth_topic": f"{prefix}/depth",
            "camera_info_topic": f"{prefix}/camera_info",
            "grasp_pose_topic": f"{prefix}/grasp_pose",
            "markers_topic": f"{prefix}/markers",
            "points_3d_topic": f"{prefix}/points_3d",
            "target_frame": target_frame,
            "stamp_tolerance": 0.02,
            "depth_wait": 1.0,
        }
        if with_extrinsics:
            params.update(
                {
                    "extrinsics.parent_frame": "base_link",
                    "extrinsics.child_frame": OPTICAL,
                    "extrinsics.translation": T_BASE_CAM.translation.tolist(),
                    "extrinsics.quaternion_xyzw": T_BASE_CAM.quaternion_xyzw.tolist(),
                }
            )
        self.ros = ros
        self.topics = params
        self.fusion = ros.add(
            DepthFusionNode(
                node_name=f"fusion_test_{prefix[1:]}",
                context=ros.context,
                parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
            )
        )
        self.helper = ros.node(f"fusion_test_helper_{prefix[1:]}")
        self.depth_pub = self.helper.create_publisher(Image, params["depth_topic"], sensor_qos())
        self.info_pub = self.helper.create_publisher(CameraInfo, params["camera_info_topic"], sensor_qos())
        self.points_pub = self.helper.create_publisher(PartPointArray, params["points_topic"], results_qos())
        self.poses = Inbox(self.helper, PoseStamped, params["grasp_pose_topic"], results_qos())
        self.points_3d = Inbox(self.helper, PartPointArray, params["points_3d_topic"], results_qos())
        self.markers = Inbox(self.helper, MarkerArray, params["markers_topic"], results_qos())
        for pub in (self.depth_pub, self.info_pub, self.points_pub):
            wait_for_match(pub)
        for topic in ("grasp_pose_topic", "points_3d_topic", "markers_topic"):
            wait_for_match(node_publisher(self.fusion, params[topic]))
        # the camera streams (best effort, like a driver) until the test ends; ``info`` may be swapped
        depth_image.header.stamp, depth_image.header.frame_id = STAMP, OPTICAL
        self.info = info if info is not None else camera_info_from_camera(CAMERA)
        self.info.header = depth_image.header
        self._timer = self.helper.create_timer(
            0.02, lambda: (self.info_pub.publish(self.info), self.depth_pub.publish(depth_image))
        )

    def send(self, *points: PartPoint, stamp: Time = STAMP) -> None:
        msg = PartPointArray(points=list(points))
        msg.header.stamp, msg.header.frame_id = stamp, OPTICAL
        self.points_pub.publish(msg)

    def close(self) -> None:
        self.ros.remove(self.helper)
        self.ros.remove(self.fusion)


@pytest.fixture
def rig_factory(ros):
    rigs = []

    def make(depth_image, **kwargs):
        rigs.append(Rig(ros, depth_image, **kwargs))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def plane_image(encoding: str, hole: tuple[slice, slice] | None = None) -> Image:
    depth = plane_depth(CAMERA, PLANE_N, PLANE_P)  # (H, W) metres
    if encoding == "16UC1":
        raw = np.round(depth * 1000.0).astype(np.uint16)  # millimetres; 0 = no depth
        if hole:
            raw[hole] = 0
    else:
        raw = depth.astype(np.float32)
        if hole:
            raw[hole] = np.nan
    return numpy_to_image(raw, encoding)


def part_point(u: float, v: float, query: str = "the handle of the mug", found: bool = True) -> PartPoint:
    return PartPoint(query=query, u=u, v=v, score=0.8, found=found)


def angle_deg(a, b):
    return np.degrees(np.arccos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1.0, 1.0)))


@pytest.mark.ros
@pytest.mark.parametrize(("encoding", "atol", "max_angle"), [("32FC1", 2e-5, 0.1), ("16UC1", 1.5e-3, 1.5)])
def test_grasp_pose_is_the_deprojected_point_in_base_link_with_approach_against_the_normal(
    rig_factory, encoding, atol, max_angle
):
    rig = rig_factory(plane_image(encoding))
    u, v = 90.25, 30.5
    rig.send(part_point(u, v))
    pose = rig.poses.wait(1)[0]
    out = rig.points_3d.wait(1)[0]

    expected_cam = ray_plane_point(CAMERA, u, v, PLANE_N, PLANE_P)
    assert pose.header.frame_id == "base_link" and pose.header.stamp == STAMP
    position = np.array([pose.pose.position.x, pose.pose.position.y, pose.pose.position.z])
    np.testing.assert_allclose(position, T_BASE_CAM.apply(expected_cam), atol=atol)
    q = pose.pose.orientation
    rotation = RigidTransform.from_translation_quaternion(position, [q.x, q.y, q.z, q.w]).rotation
    assert angle_deg(rotation[:, 2], T_BASE_CAM.apply_vector(-PLANE_N)) < max_angle  # approach = -normal

    assert len(out.points) == 1
    p3 = out.points[0]
    assert p3.has_3d and p3.found and p3.message == "" and p3.header.frame_id == OPTICAL
    assert (p3.query, p3.u, p3.v) == ("the handle of the mug", u, v)
    np.testing.assert_allclose([p3.point.x, p3.point.y, p3.point.z], expected_cam, atol=atol)
    assert angle_deg([p3.normal.x, p3.normal.y, p3.normal.z], PLANE_N) < max_angle
    assert p3.grasp_pose == pose

    markers = rig.markers.wait(1)[0].markers
    assert markers[0].action == Marker.DELETEALL
    kinds = {m.type: m for m in markers[1:]}
    assert set(kinds) == {Marker.SPHERE, Marker.ARROW, Marker.TEXT_VIEW_FACING}
    assert "the handle of the mug" in kinds[Marker.TEXT_VIEW_FACING].text
    tip = kinds[Marker.ARROW].points[1]
    np.testing.assert_allclose([tip.x, tip.y, tip.z], position, atol=1e-6)


@pytest.mark.ros
@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_missing_depth_at_the_point_gives_has_3d_false_with_a_reason(rig_factory, encoding):
    rig = rig_factory(plane_image(encoding, hole=(slice(10, 40), slice(70, 110))))
    rig.send(part_point(90.0, 25.0, "in the hole"), part_point(30.0, 70.0, "on the plane"))
    out = rig.points_3d.wait(1)[0]
    hole, ok = out.points
    assert not hole.has_3d and hole.found and "no valid depth at (90.0, 25.0)" in hole.message
    assert ok.has_3d and ok.message == ""
    pose = rig.poses.wait(1)[0]
    np.testing.assert_allclose(
        [pose.pose.position.x, pose.pose.position.y, pose.pose.position.z],
        T_BASE_CAM.apply(ray_plane_point(CAMERA, 30.0, 70.0, PLANE_N, PLANE_P)),
        atol=1e-4,
    )


@pytest.mark.ros
def test_points_without_depth_in_the_stamp_tolerance_are_reported(rig_factory):
    rig = rig_factory(plane_image("32FC1"))
    old = Time(sec=STAMP.sec - 5, nanosec=0)  # older than every buffered depth frame: cannot match
    rig.send(part_point(50.0, 50.0), stamp=old)
    (p,) = rig.points_3d.wait(1)[0].points
    assert not p.has_3d and p.message.startswith("no depth image within 0.02 s of the points' stamp 95.000")


@pytest.mark.ros
def test_unknown_target_frame_and_not_found_points_are_reported(rig_factory):
    rig = rig_factory(plane_image("32FC1"), target_frame="world")
    rig.send(part_point(50.0, 50.0), part_point(0.0, 0.0, "the lid", found=False))
    lifted, missing = rig.points_3d.wait(1)[0].points
    assert not lifted.has_3d
    assert (
        "no transform from 'cam_optical' to 'world'" in lifted.message
        and "base_link<-cam_optical" in lifted.message
    )
    assert not missing.found and not missing.has_3d and missing.message == "part not found in the image"


@pytest.mark.ros
def test_invalid_parameter_changes_are_rejected_with_a_reason(ros):
    node = ros.add(DepthFusionNode(context=ros.context))
    try:
        result = node.set_parameters([Parameter("min_depth", value=12.0)])[0]
        assert not result.successful and "must be below max_depth" in result.reason
        assert node.get_parameter("min_depth").value == 0.1
        both = [Parameter("max_depth", value=20.0), Parameter("min_depth", value=12.0)]
        assert node.set_parameters_atomically(both).successful
        # out of the descriptor's range
        assert not node.set_parameters([Parameter("stamp_tolerance", value=-1.0)])[0].successful
    finally:
        ros.remove(node)


def base_from_camera(rig) -> np.ndarray | None:
    """The node's current base_link <- optical transform (4x4), or None while it has none."""
    t = rig.fusion.camera.transform("base_link", OPTICAL, STAMP)
    return None if isinstance(t, str) else t.matrix


@pytest.mark.ros
def test_the_latched_extrinsics_topic_places_the_poses_and_a_new_camera_pose_moves_them(rig_factory):
    rig = rig_factory(plane_image("32FC1"), with_extrinsics=False)
    assert rig.fusion.get_name().startswith("fusion_test_")  # node_name= like PartPointNode
    u, v = 40.0, 60.0
    on_plane = ray_plane_point(CAMERA, u, v, PLANE_N, PLANE_P)
    # latched: published before depth_fusion_node's subscription matched, still delivered
    extrinsics = rig.helper.create_publisher(TransformStamped, rig.topics["extrinsics_topic"], latched_qos())
    extrinsics.publish(transform_msg(T_BASE_CAM, STAMP))
    wait_until(lambda: base_from_camera(rig) is not None, "the camera pose from the extrinsics topic")
    rig.send(part_point(u, v))
    first = rig.poses.wait(1)[0].pose.position
    np.testing.assert_allclose([first.x, first.y, first.z], T_BASE_CAM.apply(on_plane), atol=1e-4)

    # a scene switch: the camera moved; the same pixel and depth land elsewhere in base_link
    moved = RigidTransform.from_rotation_translation(
        T_BASE_CAM.rotation,
        T_BASE_CAM.translation + [0.3, -0.2, 0.1],
        parent_frame="base_link",
        child_frame=OPTICAL,
    )
    extrinsics.publish(transform_msg(moved, STAMP))
    wait_until(lambda: np.allclose(base_from_camera(rig), moved.matrix), "the new camera pose")
    rig.send(part_point(u, v))
    second = rig.poses.wait(2)[1].pose.position
    np.testing.assert_allclose([second.x, second.y, second.z], moved.apply(on_plane), atol=1e-4)


@pytest.mark.ros
def test_static_extrinsics_come_before_the_extrinsics_topic(rig_factory):
    rig = rig_factory(plane_image("32FC1"))  # static extrinsics T_BASE_CAM
    elsewhere = RigidTransform.from_translation_quaternion(
        [5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 1.0], parent_frame="base_link", child_frame=OPTICAL
    )
    extrinsics = rig.helper.create_publisher(TransformStamped, rig.topics["extrinsics_topic"], latched_qos())
    extrinsics.publish(transform_msg(elsewhere, STAMP))
    wait_until(
        lambda: len(rig.fusion.camera.extrinsics) == 2, "the topic's camera pose next to the static one"
    )
    rig.send(part_point(40.0, 60.0))
    p = rig.poses.wait(1)[0].pose.position
    expected = T_BASE_CAM.apply(ray_plane_point(CAMERA, 40.0, 60.0, PLANE_N, PLANE_P))
    np.testing.assert_allclose([p.x, p.y, p.z], expected, atol=1e-4)


@pytest.mark.ros
@pytest.mark.parametrize("kind", list(BAD_CAMERA_INFO))
def test_invalid_camera_info_is_rejected_no_pose_is_published_and_the_node_lives_on(rig_factory, kind):
    """Issue #11: K[2][2] = 0 crashed the node (singular matrix); NaN / inf / 1e-300 in K or D gave
    NaN or 1e301 m poses on grasp_pose. Now: rejected on receipt, the points say why, the node goes on
    with the next valid camera_info and then keeps it when an invalid one follows."""
    rig = rig_factory(plane_image("32FC1"), info=camera_info_msg(CAMERA, kind))
    u, v = 40.0, 60.0
    rig.send(part_point(u, v))
    (p,) = rig.points_3d.wait(1)[0].points
    reason = BAD_CAMERA_INFO[kind][3]
    assert not p.has_3d and p.found
    assert p.message.startswith(
        f"no valid camera_info on {rig.topics['camera_info_topic']}: the last one was rejected ({reason}"
    )
    assert not rig.poses.messages

    rig.info = camera_info_msg(CAMERA, header=rig.info.header)  # the driver publishes a valid one
    wait_until(lambda: rig.fusion.camera.camera is not None, "the valid camera_info")
    expected = T_BASE_CAM.apply(ray_plane_point(CAMERA, u, v, PLANE_N, PLANE_P))
    rig.send(part_point(u, v))
    first = rig.poses.wait(1)[0].pose.position
    np.testing.assert_allclose([first.x, first.y, first.z], expected, atol=1e-4)

    rejected = rig.fusion.camera.camera_info_rejections
    rig.info = camera_info_msg(CAMERA, kind, header=rig.info.header)  # and a broken one again
    wait_until(lambda: rig.fusion.camera.camera_info_rejections > rejected, "the next invalid camera_info")
    rig.send(part_point(u, v))
    second = rig.poses.wait(2)[1].pose.position  # still lifted, with the last valid camera_info
    np.testing.assert_allclose([second.x, second.y, second.z], expected, atol=1e-4)


@pytest.mark.ros
def test_depth_of_another_size_than_camera_info_is_refused(rig_factory):
    """A 128x96 camera_info with 256x192 depth: refused with the sizes, not lifted at the wrong place."""
    big = PinholeCamera.from_intrinsics(fx=400.0, fy=400.0, cx=127.5, cy=95.5, width=256, height=192)
    rig = rig_factory(numpy_to_image(plane_depth(big, PLANE_N, PLANE_P).astype(np.float32), "32FC1"))
    rig.send(part_point(40.0, 60.0))
    (p,) = rig.points_3d.wait(1)[0].points
    assert not p.has_3d
    assert p.message == (
        "depth image is 256x192 but camera_info says 128x96: use depth aligned to the colour image"
    )
    assert not rig.poses.messages
