"""part_point_node over DDS: tiny real LLaVA + random head, fed by a real sim_camera_node.

A client calls /point_part, drives the lifecycle through the node's ChangeState service and reads
the published points, heatmap, overlay and /diagnostics. Waiting is on conditions, never on sleeps.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from part_point_ros.msg import PartPointArray  # noqa: E402
from part_point_ros.srv import PointPart, PointParts  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import (  # noqa: E402, F401
    BAD_CAMERA_INFO,
    Inbox,
    ServiceClient,
    camera_info_msg,
    node_publisher,
    ros_fixture,
    wait_for_match,
    wait_until,
)
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from part_point_ros.geometry.camera import PinholeCamera  # noqa: E402
from part_point_ros.geometry.transforms import RigidTransform  # noqa: E402
from part_point_ros.ros.conversions import numpy_to_image  # noqa: E402
from part_point_ros.ros.part_point_node import PartPointNode  # noqa: E402
from part_point_ros.ros.qos import latched_qos, results_qos, sensor_qos  # noqa: E402
from part_point_ros.ros.sim_camera_node import SimCameraNode  # noqa: E402

NS = "/pp_test"
CAMERA = f"{NS}/camera"
NODE = "pp_test_node"
SERVICE = f"{NS}/point_part"
PARTS_SERVICE = f"{NS}/point_parts"
SEED, W, H = 3, 160, 120
OPTICAL = "camera_color_optical_frame"
QUERY = "the handle of the mug"
MAX_PIXELS = 4 * W * H  # the rig's max_image_pixels: a 400x300 request image is over it
CALL_TIMEOUT_S = 30.0


def make_random_head(backbone_dir, out_dir, heads=((1, 0), (2, 3))):
    """An untrained (random) PartPointHead for the tiny backbone, saved with save_pretrained."""
    import torch

    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.heads import HeadConfig, PartPointHead

    info = load_backbone(str(backbone_dir), max_layer=0).info
    torch.manual_seed(0)
    config = HeadConfig(
        backbone=asdict(info), heads=list(heads), d_head=info.head_dim, d_fused=32, norm_groups=8
    )
    return PartPointHead(config).save_pretrained(out_dir)


def node_params(head, **extra):
    params = {
        "head": str(head),
        "score_threshold": 0.0,  # a random head: every answer counts as found
        "queue_size": 1,
        "max_image_age_s": 10.0,
        "image_topic": f"{CAMERA}/color/image_raw",
        "camera_info_topic": f"{CAMERA}/color/camera_info",
        "depth_topic": f"{CAMERA}/aligned_depth_to_color/image_raw",
        "extrinsics_topic": f"{CAMERA}/extrinsics",
        "command_topic": f"{NS}/command",
        "points_topic": f"{NS}/points",
        "heatmap_topic": f"{NS}/heatmap",
        "overlay_topic": f"{NS}/overlay",
        "service_name": SERVICE,
        "parts_service_name": PARTS_SERVICE,
        "max_queries_per_request": 6,
        "diagnostics_period_s": 0.2,
        **extra,
    }
    return [Parameter(k, value=v) for k, v in params.items()]


def synced(node) -> bool:
    """The node holds a colour frame with its depth frame (what a grasp pose needs)."""
    color = node.camera.synced_color(0.05)
    return color is not None and not isinstance(node.camera.depth_near(color.header.stamp, 0.05), str)


class Client(ServiceClient):
    """The rig's client: PointPart / PointParts calls with its defaults."""

    def __init__(self, ros, name: str) -> None:
        super().__init__(ros, name, timeout=CALL_TIMEOUT_S)

    def point(self, query: str = QUERY, service: str = SERVICE, **fields) -> PointPart.Response:
        return self.call(PointPart, service, PointPart.Request(query=query, **fields))

    def point_parts(self, queries, **fields) -> PointParts.Response:
        return self.call(PointParts, PARTS_SERVICE, PointParts.Request(queries=list(queries), **fields))


@pytest.fixture(scope="module")
def head_dir(tiny_llava_dir, tmp_path_factory):
    return make_random_head(tiny_llava_dir, tmp_path_factory.mktemp("pp_head"))


@pytest.fixture(scope="module")
def rig(ros, head_dir):
    """sim_camera_node streaming a scene + part_point_node configured and activated over DDS."""
    camera = ros.add(
        SimCameraNode(
            node_name="pp_test_camera",
            context=ros.context,
            parameter_overrides=[
                Parameter(k, value=v)
                for k, v in {
                    "seed": SEED,
                    "width": W,
                    "height": H,
                    "rate_hz": 20.0,
                    "color_topic": f"{CAMERA}/color/image_raw",
                    "color_info_topic": f"{CAMERA}/color/camera_info",
                    "depth_topic": f"{CAMERA}/aligned_depth_to_color/image_raw",
                    "depth_info_topic": f"{CAMERA}/aligned_depth_to_color/camera_info",
                    "extrinsics_topic": f"{CAMERA}/extrinsics",
                    "ground_truth_topic": f"{NS}/ground_truth",
                }.items()
            ],
        )
    )
    node = ros.add(
        PartPointNode(
            node_name=NODE,
            context=ros.context,
            parameter_overrides=node_params(head_dir, max_image_pixels=MAX_PIXELS),
        )
    )
    client = Client(ros, "pp_test_client")
    assert client.state(NODE) == "unconfigured"
    assert client.transition(NODE, Transition.TRANSITION_CONFIGURE), node.last_error
    assert client.transition(NODE, Transition.TRANSITION_ACTIVATE)
    assert client.state(NODE) == "active"
    truth = Inbox(client.node, String, f"{NS}/ground_truth", latched_qos())
    wait_until(lambda: synced(node) and node.camera.extrinsics, "the first frame and extrinsics")
    yield {"node": node, "camera": camera, "client": client, "truth": json.loads(truth.wait(1)[0].data)}
    ros.remove(client.node)
    ros.remove(node)
    ros.remove(camera)


@pytest.mark.ros
def test_grasp_pose_is_the_deprojected_pixel_at_its_depth_in_base_link(rig):
    response = rig["client"].point()
    assert response.success, response.message
    assert response.has_grasp_pose, response.message
    point = response.point
    assert point.found and point.has_3d and point.query == QUERY
    assert point.header.frame_id == OPTICAL and point.header.stamp != Time()
    assert "grasp pose in base_link" in response.message and response.latency_ms > 0

    truth = rig["truth"]
    assert truth["seed"] == SEED
    k = truth["intrinsics"]
    t_base_cam = RigidTransform(np.array(truth["camera_pose"]), "base_link", OPTICAL)
    pose = response.grasp_pose
    assert pose.header.frame_id == "base_link" and pose.header.stamp == point.header.stamp
    p_base = np.array([pose.pose.position.x, pose.pose.position.y, pose.pose.position.z])
    p_cam = t_base_cam.inverse().apply(p_base)
    # on the ray of the returned pixel ...
    u, v = point.u, point.v
    np.testing.assert_allclose(
        p_cam[:2] / p_cam[2], [(u - k["cx"]) / k["fx"], (v - k["cy"]) / k["fy"]], atol=1e-5
    )
    # ... at the scene's depth there (16UC1 millimetres, a plane fitted around the pixel)
    from part_point_ros.sim import render_scene

    depth = render_scene(SEED, width=W, height=H).depth_m
    z_true = float(depth[int(round(v)), int(round(u))])
    assert abs(p_cam[2] - z_true) < max(0.01, 0.03 * z_true), (p_cam[2], z_true)
    # the optical-frame point in the answer is the same point
    np.testing.assert_allclose([point.point.x, point.point.y, point.point.z], p_cam, atol=1e-6)
    # approach (grasp z) points into the surface: away from the camera
    q = pose.pose.orientation
    approach = RigidTransform.from_translation_quaternion(p_base, [q.x, q.y, q.z, q.w]).rotation[:, 2]
    to_point = p_base - t_base_cam.translation
    assert float(approach @ to_point) > 0


@pytest.mark.ros
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"query": ""}, "query is empty"),
        ({"query": "   "}, "query is empty"),
        ({"query": "the handle " * 200}, "characters long; the limit is 1000"),
        ({"method": "text"}, "method 'text' is not loaded: this node serves 'a2p'"),
        ({"image": numpy_to_image(np.zeros((8, 8), np.uint16), "mono16")}, "has encoding 'mono16'"),
        ({"image": numpy_to_image(np.zeros((8, 8), np.float32), "32FC1")}, "has encoding '32FC1'"),
        ({"image": "truncated"}, "image data has"),
        (
            {"query": "the <image> handle of the mug"},
            "query contains '<image>', a special token of the backbone's prompt (an image or chat marker, "
            "not text): leave it out and say the part in words",
        ),
        ({"query": "the handle</s>"}, "query contains '</s>', a special token of the backbone's prompt"),
        (
            {"image": numpy_to_image(np.zeros((2, 20000, 3), np.uint8), "rgb8")},
            "the request's image is 20000x2 px, aspect ratio 10000.0:1, over the limit of 8:1: crop it "
            "nearer to square, or raise max_aspect_ratio",
        ),
        (
            {"image": numpy_to_image(np.zeros((20000, 2, 3), np.uint8), "bgr8")},
            "the request's image is 2x20000 px, aspect ratio 10000.0:1, over the limit of 8:1",
        ),
        (
            {"image": numpy_to_image(np.zeros((300, 400, 3), np.uint8), "rgb8")},
            f"the request's image is 400x300 = 120000 px, over the limit of {MAX_PIXELS} px: downscale it, "
            "or raise max_image_pixels",
        ),
    ],
    ids=[
        "empty",
        "blank",
        "huge",
        "method",
        "mono16",
        "32FC1",
        "truncated",
        "image_token",
        "eos_token",
        "wide_image",
        "tall_image",
        "big_image",
    ],
)
def test_bad_requests_are_refused_with_a_reason_and_the_node_keeps_answering(rig, fields, expected):
    if fields.get("image") == "truncated":
        image = numpy_to_image(np.zeros((8, 8, 3), np.uint8), "rgb8")
        image.data = image.data[:50]
        fields = {"image": image}
    fields.setdefault("query", QUERY)
    bad = rig["client"].point(**fields)
    assert not bad.success and not bad.has_grasp_pose
    assert expected in bad.message
    assert "internal error" not in bad.message and "\n" not in bad.message
    good = rig["client"].point()
    assert good.success and good.has_grasp_pose, good.message


@pytest.mark.ros
def test_stale_frames_are_refused_naming_their_age(rig):
    node, client = rig["node"], rig["client"]
    assert node.set_parameters([Parameter("max_image_age_s", value=1e-6)])[0].successful
    try:
        stale = client.point()
    finally:
        node.set_parameters([Parameter("max_image_age_s", value=10.0)])
    assert not stale.success
    assert f"latest image on {CAMERA}/color/image_raw is" in stale.message
    assert "s old (max_image_age_s 1e-06)" in stale.message
    assert client.point().success


@pytest.mark.ros
def test_request_image_without_matching_depth_answers_the_point_without_grasp(rig):
    from part_point_ros.sim import render_scene

    image = numpy_to_image(render_scene(SEED, width=W, height=H).rgb, "rgb8")
    image.header.stamp, image.header.frame_id = Time(sec=5), OPTICAL  # long before every depth frame
    response = rig["client"].point(image=image)
    assert not response.success and response.point.found  # require_grasp_pose (default): no pose, no success
    assert not response.has_grasp_pose and not response.point.has_3d
    assert f"no depth image within 0.05 s of the image stamp 5.000 on {CAMERA}" in response.message
    assert response.point.message.startswith("no grasp pose: no depth image within")
    assert response.point.header.stamp == Time(sec=5)


PARTS = [
    "the handle of the mug",
    "the rim of the mug",
    "the lid of the pot",
    "the blade of the knife",
    "the spout",
]


def still_image(stamp_s: int = 5) -> Image:
    """The scene's frame as a request image (one fixed frame for every request)."""
    from part_point_ros.sim import render_scene

    image = numpy_to_image(render_scene(SEED, width=W, height=H).rgb, "rgb8")
    image.header.stamp, image.header.frame_id = Time(sec=stamp_s), OPTICAL
    return image


@pytest.mark.ros
def test_point_parts_answers_each_query_as_a_single_request_does(rig):
    """Issue #13: /point_parts answers 5 queries on one frame, one PartPoint per query in order, with
    the points that 5 /point_part requests on that frame give (prefix reuse + batched suffixes)."""
    client, image = rig["client"], still_image()
    many = client.point_parts(PARTS, image=image)
    assert len(many.points) == len(PARTS), many.message
    singles = [client.point(query, image=image) for query in PARTS]
    for point, single in zip(many.points, singles, strict=True):
        assert point.query == single.point.query and point.found == single.point.found
        assert (point.u, point.v) == pytest.approx((single.point.u, single.point.v), abs=1e-3)
        assert point.score == pytest.approx(single.point.score, abs=1e-4)
        assert point.header.stamp == Time(sec=5) and point.header.frame_id == OPTICAL
        # the single answer lists every instance, the best one first
        assert single.points and (single.points[0].u, single.points[0].v) == (single.point.u, single.point.v)
        assert all(p.found and p.score >= 0.0 for p in single.points)
    # a request image with no depth near its stamp: found, no grasp pose, so success is false
    assert not many.success and many.message.startswith(f"{len(PARTS)} of {len(PARTS)} parts found")
    assert many.latency_ms > 0


@pytest.mark.ros
def test_service_bench_measures_every_row_and_finds_the_same_points(rig):
    """part-point-ros-bench's measurement (ros.service_bench) on the live node: every row timed, the
    PointParts points equal the single requests' (the timing itself is a benchmark, never asserted)."""
    from part_point_ros.ros.service_bench import QUERIES, ServiceBench, table

    bench = ServiceBench(rig["client"].node, service=SERVICE, parts_service=PARTS_SERVICE)
    assert bench.wait_for_services(10.0) is None
    frame = still_image()
    first, second = bench.new_frame(frame), bench.new_frame(frame)
    assert first.data != frame.data and second.data not in (frame.data, first.data)
    rows, shift = bench.run(frame, QUERIES[:3], rounds=2, warmup=1)
    assert [r.label for r in rows] == [
        "1 query, new frame",
        "3 queries, new frame, PointParts",
        "3 queries, new frame, 3 x PointPart",
        "1 query, same frame",
    ]
    assert all(len(r.ms) == 2 and min(r.ms) > 0 and len(r.node_ms) == 2 for r in rows)
    assert shift <= 1e-3
    with pytest.raises(RuntimeError, match="the node did not serve the request '<image>'"):
        bench.one("<image>", frame)  # refused (a special token): never timed as if it were served
    text = table(rows)
    assert text.count("\n") == 5 and "| 1 query, new frame |" in text and "1.00x" in text


@pytest.mark.ros
@pytest.mark.parametrize(
    ("queries", "expected"),
    [
        ([], "0 queries: a PointParts request takes 1 to 6 (parameter max_queries_per_request)"),
        (["the handle"] * 7, "7 queries: a PointParts request takes 1 to 6"),
        (["the handle", "  ", "the rim"], "query 2 of 3: "),
        (["the handle", "<image>"], "query 2 of 2: "),
    ],
)
def test_point_parts_refuses_bad_query_lists_in_one_line(rig, queries, expected):
    response = rig["client"].point_parts(queries)
    assert not response.success and response.message.startswith(expected), response.message
    assert "\n" not in response.message
    assert rig["client"].point_parts(["the handle of the mug"]).points  # and it keeps answering


@pytest.mark.ros
def test_full_queue_answers_busy_and_the_queued_requests_are_served(rig):
    node, client = rig["node"], rig["client"]
    cli = client.client(PointPart, SERVICE)
    node.model_lock.acquire()  # the worker takes the first request and waits for the model
    try:
        first = cli.call_async(PointPart.Request(query=QUERY))
        wait_until(lambda: node.in_flight == 1 and node.queue_length == 0, "the worker to hold a request")
        second = cli.call_async(PointPart.Request(query=QUERY))
        wait_until(lambda: node.queue_length == 1, "the second request to be queued")
        busy = client.point()
        assert not busy.success and busy.message.startswith("busy: 1 requests queued (queue_size 1)")
        assert not first.done() and not second.done()
    finally:
        node.model_lock.release()
    wait_until(lambda: first.done() and second.done(), "the queued answers", CALL_TIMEOUT_S)
    assert first.result().success and second.result().success
    assert node.stats.busy >= 1


@pytest.mark.ros
def test_a_burst_of_requests_is_answered_every_one(rig):
    """Issue #11: beyond ~10 requests at once, some were dropped by DDS (default service QoS, 10 deep)
    and never answered. Now every one is answered: served, or "busy" when the queue is full."""
    node, client_node = rig["node"], rig["client"].node
    burst = 60
    deep = QoSProfile(depth=2 * burst, reliability=ReliabilityPolicy.RELIABLE)  # the client keeps them all
    client = client_node.create_client(PointPart, SERVICE, qos_profile=deep)
    try:
        assert client.wait_for_service(timeout_sec=CALL_TIMEOUT_S)
        node.model_lock.acquire()  # the worker holds the first request: of the burst, one is queued
        try:
            first = client.call_async(PointPart.Request(query=QUERY))
            wait_until(lambda: node.in_flight == 1 and node.queue_length == 0, "the worker to hold a request")
            futures = [client.call_async(PointPart.Request(query=QUERY)) for _ in range(burst)]
            wait_until(lambda: sum(f.done() for f in futures) >= burst - 1, "the busy answers at once")
        finally:
            node.model_lock.release()
        wait_until(lambda: first.done() and all(f.done() for f in futures), "every answer", CALL_TIMEOUT_S)
    finally:
        client_node.destroy_client(client)
    answers = [f.result() for f in futures]
    busy = [a for a in answers if a.message.startswith("busy")]
    # queue_size 1: one of the burst waits its turn and is served with the first (on a loaded machine
    # the held frame may have gone stale by then: answered with that reason, which is not a loss)
    served = [a for a in [first.result(), *answers] if not a.message.startswith("busy")]
    assert len(served) == 2 and len(busy) == burst - 1, [a.message for a in served]
    assert all(a.has_grasp_pose for a in served if a.success)
    assert all(a.message == "busy: 1 requests queued (queue_size 1); try again" for a in busy)


@pytest.mark.ros
def test_a_burst_deeper_than_the_old_service_history_is_answered_every_one(rig):
    """part-point-ros-stress: of a burst of 200 requests, 32 were never answered. The service kept the
    last queue_size + 100 requests and replies; DDS replaced the older ones before the executor took
    them (one per pass of its wait set) or the client acknowledged them. The service keeps all now."""
    burst = 400
    deep = QoSProfile(depth=2 * burst, reliability=ReliabilityPolicy.RELIABLE)  # the client keeps them all
    client = rig["client"].node.create_client(PointPart, SERVICE, qos_profile=deep)
    try:
        assert client.wait_for_service(timeout_sec=CALL_TIMEOUT_S)
        futures = [client.call_async(PointPart.Request(query=QUERY)) for _ in range(burst)]
        wait_until(lambda: all(f.done() for f in futures), "every answer", 2 * CALL_TIMEOUT_S)
    finally:
        rig["client"].node.destroy_client(client)
    answers = [f.result() for f in futures]
    assert sum(a.message.startswith("busy") for a in answers) >= burst - 100  # queue_size 1
    assert all(a.has_grasp_pose for a in answers if a.success)


@pytest.mark.ros
def test_command_topic_publishes_points_heatmap_and_overlay_of_the_frame(rig):
    client_node = rig["client"].node
    points = Inbox(client_node, PartPointArray, f"{NS}/points", results_qos())
    heatmap = Inbox(client_node, Image, f"{NS}/heatmap", latched_qos())
    overlay = Inbox(client_node, Image, f"{NS}/overlay", latched_qos())
    for topic in ("points", "heatmap", "overlay"):
        wait_for_match(node_publisher(rig["node"], f"{NS}/{topic}"))
    command = client_node.create_publisher(String, f"{NS}/command", results_qos())
    wait_for_match(command)
    command.publish(String(data="the blade of the knife"))

    (array,) = points.wait(1)
    (p,) = array.points  # publish_instances false (default): the best point of the query
    assert p.query == "the blade of the knife" and p.found
    assert array.header.frame_id == OPTICAL and array.header.stamp != Time()
    assert 0 <= p.u < W and 0 <= p.v < H
    # the images of the same answer (the latched ones may first deliver an earlier answer's)
    # (published after the points: they may not be here yet)
    wait_until(lambda: heatmap.messages and heatmap.messages[-1].header == array.header, "its heatmap")
    wait_until(lambda: overlay.messages and overlay.messages[-1].header == array.header, "its overlay")
    heat, over = heatmap.messages[-1], overlay.messages[-1]
    assert (heat.encoding, heat.width, heat.height) == ("32FC1", W, H)
    values = np.frombuffer(bytes(heat.data), dtype=np.float32)
    assert values.max() > 0 and np.all(values >= 0)
    assert (over.encoding, over.width, over.height) == ("rgb8", W, H)


@pytest.mark.ros
def test_publish_instances_puts_every_instance_of_a_query_on_the_points_topic(rig):
    node, client_node = rig["node"], rig["client"].node
    points = Inbox(client_node, PartPointArray, f"{NS}/points", results_qos())
    wait_for_match(node_publisher(node, f"{NS}/points"))
    assert node.set_parameters([Parameter("publish_instances", value=True)])[0].successful
    try:
        answer = rig["client"].point("the rim of the mug")
        wait_until(
            lambda: any(m.header == answer.point.header for m in points.messages), "the answer's points"
        )
    finally:
        node.set_parameters([Parameter("publish_instances", value=False)])
    array = next(m for m in points.messages if m.header == answer.point.header)
    # threshold 0 here: each NMS peak of the heatmap counts; the topic holds what the answer lists
    assert [(p.u, p.v) for p in array.points] == [(p.u, p.v) for p in answer.points]
    assert len(array.points) >= 1 and (array.points[0].u, array.points[0].v) == (
        answer.point.u,
        answer.point.v,
    )


@pytest.mark.ros
def test_diagnostics_report_model_queue_and_latency(rig):
    rig["client"].point()
    inbox = Inbox(rig["client"].node, DiagnosticArray, "/diagnostics", results_qos())

    def ours():
        return [s for a in inbox.messages for s in a.status if s.name.startswith(NODE)]

    wait_until(lambda: ours(), "a /diagnostics status of the node")
    values = {kv.key: kv.value for kv in ours()[-1].values}
    assert values["model_loaded"] == "true" and values["method"] == "a2p"
    assert values["queue_size"] == "1" and values["queue_length"] == "0"
    assert float(values["last_latency_ms"]) > 0
    assert int(values["served"]) >= 1


@pytest.mark.ros
def test_inactive_node_refuses_requests_and_cleanup_then_configure_reloads(rig):
    client, node = rig["client"], rig["node"]
    assert client.transition(NODE, Transition.TRANSITION_DEACTIVATE)
    try:
        refused = client.point()
        assert not refused.success and "is not active (inactive)" in refused.message
        assert client.transition(NODE, Transition.TRANSITION_CLEANUP)
        assert client.state(NODE) == "unconfigured" and node._pointer is None and node._worker is None
        # now the read-on-configure parameters may change
        assert node.set_parameters([Parameter("queue_size", value=2)])[0].successful
        assert client.transition(NODE, Transition.TRANSITION_CONFIGURE), node.last_error
    finally:
        node.set_parameters([Parameter("queue_size", value=1)])  # refused while configured: kept at 2
        if client.state(NODE) == "inactive":
            assert client.transition(NODE, Transition.TRANSITION_ACTIVATE)
    assert node._jobs.maxsize == 2
    wait_until(lambda: synced(node) and node.camera.extrinsics, "a frame after re-activation")
    answer = client.point()
    assert answer.success and answer.has_grasp_pose, answer.message


def reconfigure(client, node, **params) -> None:
    """Deactivate, clean up, set read-on-configure ``params``, configure and activate the rig's node."""
    if client.state(NODE) == "active":
        assert client.transition(NODE, Transition.TRANSITION_DEACTIVATE)
    if client.state(NODE) == "inactive":
        assert client.transition(NODE, Transition.TRANSITION_CLEANUP)
    results = node.set_parameters([Parameter(k, value=v) for k, v in params.items()])
    assert all(r.successful for r in results), [r.reason for r in results]
    assert client.transition(NODE, Transition.TRANSITION_CONFIGURE), node.last_error
    assert client.transition(NODE, Transition.TRANSITION_ACTIVATE)
    wait_until(lambda: synced(node) and node.camera.extrinsics, "a frame after re-activation")


@pytest.mark.ros
def test_cleanup_under_load_answers_every_request_and_the_node_comes_back(ros, rig):
    """Issue #11: ``ros2 lifecycle set ... cleanup`` with requests in flight crashed the node (the
    answers of queued requests went out on the service cleanup had just destroyed: InvalidHandle in
    the executor) and lost the requests DDS still held. Now deactivate and cleanup answer every queued
    and running request (success false, why, one line); the service outlives cleanup, so requests that
    arrive meanwhile are refused, not lost; the node configures, activates and answers again."""
    node, client = rig["node"], rig["client"]
    burst = 30
    reconfigure(client, node, queue_size=burst)  # the whole burst waits in the node's queue
    deep = QoSProfile(depth=4 * burst, reliability=ReliabilityPolicy.RELIABLE)  # the client keeps them all
    requests = client.node.create_client(PointPart, SERVICE, qos_profile=deep)
    lifecycle = client.client(ChangeState, f"/{NODE}/change_state")
    try:
        assert requests.wait_for_service(timeout_sec=CALL_TIMEOUT_S)

        def fire(n: int) -> list:
            return [requests.call_async(PointPart.Request(query=QUERY)) for _ in range(n)]

        node.model_lock.acquire()  # the worker holds the first request, the burst waits behind it
        try:
            futures = fire(1)
            wait_until(lambda: node.in_flight == 1, "the worker to hold a request")
            futures += fire(burst)
            wait_until(lambda: node.queue_length == burst, "the burst to be queued")
            transitions = [
                lifecycle.call_async(ChangeState.Request(transition=Transition(id=t)))
                for t in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP)
            ]
            futures += fire(burst)  # while the node goes down
            wait_until(lambda: node._jobs is None, "cleanup to close the queue")
            futures += fire(burst)
        finally:
            node.model_lock.release()  # cleanup waits for the worker to finish its request
        wait_until(lambda: all(f.done() for f in futures + transitions), "every answer", CALL_TIMEOUT_S)
        assert [t.result().success for t in transitions] == [True, True]
        late = fire(burst)  # unconfigured: refused at once
        wait_until(lambda: all(f.done() for f in late), "the answers while unconfigured", CALL_TIMEOUT_S)
    finally:
        client.node.destroy_client(requests)
    assert not ros.spin_error, ros.spin_error
    answers = [f.result() for f in futures + late]
    assert not any(a.success for a in answers), [a.message for a in answers if a.success]
    assert all(a.message and "\n" not in a.message and "internal error" not in a.message for a in answers)
    messages = {a.message for a in answers}
    assert "part_point_node is deactivating: try again when it is active" in messages, messages
    assert all(m.startswith("part_point_node is ") for m in messages), messages
    assert client.state(NODE) == "unconfigured" and node._worker is None and node._pointer is None
    moved = node.set_parameters([Parameter("service_name", value="/elsewhere")])[0]  # the service stays
    assert not moved.successful and f"service_name cannot change once {SERVICE} exists" in moved.reason

    reconfigure(client, node, queue_size=1)
    answer = client.point()
    assert answer.success and answer.has_grasp_pose, answer.message


@pytest.mark.ros
def test_heatmap_can_be_mono8(rig):
    node, client_node = rig["node"], rig["client"].node
    heatmap = Inbox(client_node, Image, f"{NS}/heatmap", latched_qos())
    assert node.set_parameters([Parameter("heatmap_encoding", value="mono8")])[0].successful
    try:
        answer = rig["client"].point()
        wait_until(
            lambda: heatmap.messages and heatmap.messages[-1].header == answer.point.header,
            "the heatmap of this answer",
        )
    finally:
        node.set_parameters([Parameter("heatmap_encoding", value="32FC1")])
    heat = heatmap.messages[-1]
    assert (heat.encoding, heat.width, heat.height) == ("mono8", W, H)
    assert max(bytes(heat.data)) == 255
    bad = node.set_parameters([Parameter("heatmap_encoding", value="16UC1")])[0]
    assert not bad.successful and "heatmap_encoding must be one of 32FC1, mono8" in bad.reason


@pytest.mark.ros
def test_parameter_changes_are_validated(rig):
    node = rig["node"]
    method = node.set_parameters([Parameter("method", value="sam")])[0]
    assert not method.successful and "method must be one of a2p, attention, text" in method.reason
    head = node.set_parameters([Parameter("head", value="/elsewhere")])[0]
    assert not head.successful and "read on configure" in head.reason
    depth = node.set_parameters([Parameter("min_depth", value=20.0)])[0]
    assert not depth.successful and "must be below max_depth" in depth.reason
    assert not node.set_parameters([Parameter("queue_size", value=0)])[0].successful  # descriptor range
    assert node.get_parameter("head").value != "/elsewhere"


@pytest.mark.ros
def test_node_without_frames_or_depth_says_so(ros, head_dir, rig):
    from part_point_ros.sim import render_scene

    quiet = "/pp_quiet"
    params = node_params(
        head_dir,
        image_topic=f"{quiet}/image",
        camera_info_topic=f"{quiet}/camera_info",
        depth_topic=f"{quiet}/depth",
        extrinsics_topic="",
        command_topic=f"{quiet}/command",
        points_topic=f"{quiet}/points",
        heatmap_topic=f"{quiet}/heatmap",
        overlay_topic=f"{quiet}/overlay",
        service_name=f"{quiet}/point_part",
    )
    node = ros.add(PartPointNode(node_name="pp_quiet_node", context=ros.context, parameter_overrides=params))
    try:
        assert node.configure_and_activate(), node.last_error
        client = rig["client"]
        no_frame = client.point(service=f"{quiet}/point_part")
        assert not no_frame.success and no_frame.message == f"no image received on {quiet}/image yet"
        image = numpy_to_image(render_scene(SEED, width=W, height=H).rgb[..., ::-1].copy(), "bgr8")
        image.header.frame_id = OPTICAL
        no_depth = client.point(service=f"{quiet}/point_part", image=image)
        assert not no_depth.success and not no_depth.has_grasp_pose and no_depth.point.found
        assert f"no depth image received on {quiet}/depth" in no_depth.message
        node.set_parameters([Parameter("require_grasp_pose", value=False)])  # 2D answers are enough
        only_2d = client.point(service=f"{quiet}/point_part", image=image)
        assert only_2d.success and not only_2d.has_grasp_pose and only_2d.point.found
    finally:
        ros.remove(node)


@pytest.mark.ros
def test_configure_fails_with_the_reason_when_the_head_cannot_be_loaded(ros, tmp_path, rig):
    missing = tmp_path / "no_such_head"
    node = ros.add(
        PartPointNode(
            node_name="pp_bad_head_node",
            context=ros.context,
            parameter_overrides=[
                Parameter("head", value=str(missing)),
                Parameter("service_name", value="/pp_bad"),
            ],
        )
    )
    try:
        client = rig["client"]
        assert not client.transition("pp_bad_head_node", Transition.TRANSITION_CONFIGURE)
        assert client.state("pp_bad_head_node") == "unconfigured"
        assert node.last_error.startswith("configure failed: ") and str(missing) in node.last_error
        assert "\n" not in node.last_error
    finally:
        ros.remove(node)


@pytest.mark.ros
def test_changed_lifting_parameters_apply_to_the_next_request(rig):
    """The grasp lifter is rebuilt when its parameters change (not per request, and never stale)."""
    node, client = rig["node"], rig["client"]
    assert node.set_parameters([Parameter("max_depth", value=0.2)])[0].successful  # the table is farther
    try:
        too_far = client.point()
        assert not too_far.has_grasp_pose and "no grasp pose" in too_far.point.message
    finally:
        assert node.set_parameters([Parameter("max_depth", value=10.0)])[0].successful
    assert client.point().has_grasp_pose


class Streamer:
    """A camera of the test's own: colour, aligned depth and camera_info, stamped now, at 20 Hz on
    ``prefix``/...; ``info`` (and the images) may be swapped while it streams."""

    def __init__(self, ros, prefix: str, rgb: np.ndarray, depth_m: np.ndarray, info: CameraInfo) -> None:
        self.node = ros.node(f"{prefix[1:]}_camera")
        self.color = numpy_to_image(rgb, "rgb8")
        self.depth = numpy_to_image(depth_m.astype(np.float32), "32FC1")
        self.info = info
        self.pubs = [
            self.node.create_publisher(msg_type, f"{prefix}/{topic}", sensor_qos())
            for msg_type, topic in ((Image, "image"), (Image, "depth"), (CameraInfo, "camera_info"))
        ]
        self.node.create_timer(0.05, self._publish)

    def _publish(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        for pub, msg in zip(self.pubs, (self.color, self.depth, self.info), strict=True):
            msg.header.stamp, msg.header.frame_id = stamp, OPTICAL
            pub.publish(msg)


@pytest.fixture
def manual(ros, head_dir, rig):
    """make(rgb, depth_m, info) -> (a fresh part_point_node, its Streamer); both removed afterwards."""
    made = []

    def make(rgb, depth_m, info, prefix="/pp_manual"):
        topics = {
            "image_topic": f"{prefix}/image",
            "depth_topic": f"{prefix}/depth",
            "camera_info_topic": f"{prefix}/camera_info",
            "extrinsics_topic": "",
            "command_topic": f"{prefix}/command",
            "points_topic": f"{prefix}/points",
            "heatmap_topic": f"{prefix}/heatmap",
            "overlay_topic": f"{prefix}/overlay",
            "service_name": f"{prefix}/point_part",
        }
        node = ros.add(
            PartPointNode(
                node_name=f"{prefix[1:]}_node",
                context=ros.context,
                parameter_overrides=node_params(head_dir, **topics),
            )
        )
        made.append(node)
        assert node.configure_and_activate(), node.last_error
        streamer = Streamer(ros, prefix, rgb, depth_m, info)
        made.append(streamer.node)
        wait_until(lambda: synced(node), "the streamed frames")
        return node, streamer

    yield make
    for node in reversed(made):
        ros.remove(node)


def scene_camera(scene) -> PinholeCamera:
    return PinholeCamera.from_intrinsics(**scene.intrinsics.to_dict(), d=[0.0] * 5, frame_id=OPTICAL)


def position(pose) -> np.ndarray:
    p = pose.pose.position
    return np.array([p.x, p.y, p.z])


@pytest.mark.ros
@pytest.mark.parametrize("kind", list(BAD_CAMERA_INFO))
def test_invalid_camera_info_is_refused_and_never_gives_a_non_finite_pose(manual, rig, kind):
    """Issue #11: K[2][2] = 0 crashed the node (singular matrix; requests never answered); NaN / inf /
    1e-300 in K or D answered success with a NaN or 1e301 m pose. Now the camera_info is rejected
    on receipt; a request without a valid one is refused with the reason; a valid one is used, and
    kept when an invalid one follows."""
    from part_point_ros.sim import render_scene

    scene = render_scene(SEED, width=W, height=H)
    camera = scene_camera(scene)
    node, streamer = manual(scene.rgb, scene.depth_m, camera_info_msg(camera, kind))
    service, reason = "/pp_manual/point_part", BAD_CAMERA_INFO[kind][3]
    heard = lambda: node.camera.camera is not None or node.camera.camera_info_rejections > 0  # noqa: E731
    wait_until(heard, "a camera_info, taken or rejected")
    refused = rig["client"].point(service=service, target_frame=OPTICAL)
    assert not refused.success and not refused.has_grasp_pose and not refused.point.has_3d
    assert refused.point.found  # the 2D answer is still there
    assert (
        "; no grasp pose: no valid camera_info on /pp_manual/camera_info: the last one was rejected "
        f"({reason}"
    ) in refused.message

    streamer.info = camera_info_msg(camera)
    wait_until(lambda: node.camera.camera is not None, "the valid camera_info")
    good = rig["client"].point(service=service, target_frame=OPTICAL)
    assert good.success and good.has_grasp_pose, good.message
    assert np.all(np.isfinite(position(good.grasp_pose))) and 0.1 < good.point.point.z < 10.0

    rejected = node.camera.camera_info_rejections
    streamer.info = camera_info_msg(camera, kind)
    wait_until(lambda: node.camera.camera_info_rejections > rejected, "the next invalid camera_info")
    again = rig["client"].point(service=service, target_frame=OPTICAL)
    assert again.success and again.has_grasp_pose, again.message  # with the last valid camera_info
    np.testing.assert_allclose(position(again.grasp_pose), position(good.grasp_pose), atol=1e-6)


@pytest.mark.ros
def test_colour_image_of_another_size_than_camera_info_and_depth_is_refused(manual, rig):
    """Issue #11: a 160x120 colour frame with 320x240 depth + camera_info answered success with a
    pose lifted at the wrong pixel (the colour pixel read as a depth pixel). Sizes must agree."""
    from part_point_ros.sim import render_scene

    small, big = render_scene(SEED, width=W, height=H), render_scene(SEED, width=2 * W, height=2 * H)
    node, _ = manual(small.rgb, big.depth_m, camera_info_msg(scene_camera(big)), prefix="/pp_sizes")
    wait_until(lambda: node.camera.camera is not None, "the camera_info")
    answer = rig["client"].point(service="/pp_sizes/point_part", target_frame=OPTICAL)
    assert not answer.success and not answer.has_grasp_pose and answer.point.found
    assert answer.message.endswith(
        f"; no grasp pose: the image is {W}x{H} but camera_info on /pp_sizes/camera_info says "
        f"{2 * W}x{2 * H}: use the colour camera's camera_info (and depth aligned to the colour image, "
        "same size)"
    )
