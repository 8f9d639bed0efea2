"""part-point-ros (bringup): the config YAML, the flags, and the whole graph in one process over DDS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")

from builtin_interfaces.msg import Time  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from part_point_ros.srv import PointPart  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_helpers import Inbox, ros_fixture, wait_until  # noqa: E402, F401

from part_point_ros.ros.bringup import Bringup, node_parameters, parse_options  # noqa: E402
from part_point_ros.ros.depth_fusion_node import DepthFusionNode  # noqa: E402
from part_point_ros.ros.params import default_config_path, graph_overrides, load_node_parameters  # noqa: E402
from part_point_ros.ros.part_point_node import PartPointNode  # noqa: E402
from part_point_ros.ros.qos import results_qos  # noqa: E402
from part_point_ros.ros.sim_camera_node import SimCameraNode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "part_point.yaml"
NODES = {
    "part_point_node": PartPointNode,
    "depth_fusion_node": DepthFusionNode,
    "sim_camera_node": SimCameraNode,
}


def camera_pose_in(node) -> np.ndarray | None:
    """base_link <- camera optical frame as ``node`` knows it now (4x4), or None."""
    t = node.camera.transform("base_link", "camera_color_optical_frame", Time())
    return None if isinstance(t, str) else t.matrix


def make_random_head(backbone_dir, out_dir):
    """An untrained (random) PartPointHead for the tiny backbone, saved with save_pretrained."""
    import torch

    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.heads import HeadConfig, PartPointHead

    info = load_backbone(str(backbone_dir), max_layer=0).info
    torch.manual_seed(0)
    config = HeadConfig(
        backbone=asdict(info), heads=[(1, 1), (2, 0)], d_head=info.head_dim, d_fused=32, norm_groups=8
    )
    return PartPointHead(config).save_pretrained(out_dir)


@pytest.mark.ros
@pytest.mark.parametrize("name", sorted(NODES))
def test_config_yaml_sets_only_declared_parameters_with_their_types(ros, name):
    params = load_node_parameters(CONFIG, name)
    assert len(params) >= 15
    # a wrong type (5 for 5.0) or a value out of a descriptor's range raises while declaring
    node = ros.add(NODES[name](context=ros.context, parameter_overrides=params))
    try:
        undeclared = [p.name for p in params if not node.has_parameter(p.name)]
        assert undeclared == [], f"config/part_point.yaml sets undeclared parameters of {name}: {undeclared}"
        for p in params:
            assert node.get_parameter(p.name).value == p.value, p.name
    finally:
        ros.remove(node)


def test_flags_mirror_the_launch_arguments_on_every_node(tmp_path):
    options = parse_options(
        [
            "--params-file", str(CONFIG), "--head", "/heads/h1", "--method", "attention",
            "--camera-namespace", "/cam2", "--depth-topic", "/depth/raw", "--target-frame", "world",
            "--seed", "4", "--sim-camera",
        ]
    )  # fmt: skip
    assert options.use_sim_camera and options.params_file == CONFIG

    def values(node):
        return {p.name: p.value for p in node_parameters(options, node)}

    pp, fusion, sim = values("part_point_node"), values("depth_fusion_node"), values("sim_camera_node")
    assert (pp["head"], pp["method"], pp["target_frame"]) == ("/heads/h1", "attention", "world")
    assert pp["backbone"] == "" and pp["device"] == "cpu"  # not given: the file's values
    assert pp["image_topic"] == sim["color_topic"] == "/cam2/color/image_raw"
    assert (
        pp["camera_info_topic"]
        == fusion["camera_info_topic"]
        == sim["color_info_topic"]
        == "/cam2/color/camera_info"
    )
    assert pp["depth_topic"] == fusion["depth_topic"] == sim["depth_topic"] == "/depth/raw"
    assert pp["extrinsics_topic"] == sim["extrinsics_topic"] == "/cam2/extrinsics"
    assert sim["depth_info_topic"] == "/cam2/aligned_depth_to_color/camera_info"
    assert fusion["target_frame"] == "world" and sim["seed"] == 4
    # empty launch arguments keep the file's values
    assert graph_overrides({"head": "", "seed": "", "camera_namespace": ""}) == {
        "part_point_node": {},
        "depth_fusion_node": {},
        "sim_camera_node": {},
    }


@pytest.mark.ros
def test_one_process_graph_answers_with_a_grasp_pose_that_depth_fusion_agrees_with(
    ros, tiny_llava_dir, tmp_path
):
    from rclpy.context import Context

    head = make_random_head(tiny_llava_dir, tmp_path / "head")
    config = yaml.safe_load(CONFIG.read_text())
    config["part_point_node"]["ros__parameters"].update(score_threshold=0.0, max_image_age_s=10.0)
    config["sim_camera_node"]["ros__parameters"].update(width=160, height=120, rate_hz=10.0)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(config))
    options = parse_options(
        ["--params-file", str(params_file), "--head", str(head), "--camera-namespace", "/bringup_test/camera",
         "--sim-camera", "--seed", "2", "--threads", "3"]
    )  # fmt: skip

    context = Context()
    import rclpy

    rclpy.init(context=context)
    graph = Bringup(options, context=context)
    spinner = threading.Thread(target=graph.spin, daemon=True)
    try:
        assert graph.start(), graph.part_point.last_error
        spinner.start()
        client_node = ros.node("bringup_test_client")
        poses = Inbox(client_node, PoseStamped, "/part_point/grasp_pose", results_qos())
        client = client_node.create_client(PointPart, "/point_part")
        assert client.wait_for_service(timeout_sec=15.0)
        camera = graph.part_point.camera
        wait_until(
            lambda: camera.synced_color(0.05) is not None and camera.extrinsics,
            "camera frames and extrinsics",
        )
        future = client.call_async(PointPart.Request(query="the handle of the mug"))
        wait_until(future.done, "the /point_part answer", 30.0)
        answer = future.result()
        assert answer.success and answer.has_grasp_pose, answer.message
        assert answer.point.header.frame_id == "camera_color_optical_frame"
        # depth_fusion_node lifted the published point with the same depth frame and camera pose
        fused = poses.wait(1)[0]
        assert fused.header == answer.grasp_pose.header
        p, q = fused.pose.position, answer.grasp_pose.pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], [q.x, q.y, q.z], atol=1e-6)

        # a scene switch moves the camera: both nodes follow the re-published extrinsics topic
        old_pose = graph.sim_camera.camera_pose
        assert graph.sim_camera.set_parameters([Parameter("seed", value=7)])[0].successful
        new_pose = graph.sim_camera.camera_pose
        assert not np.allclose(new_pose.matrix, old_pose.matrix)
        for node in (graph.part_point, graph.depth_fusion):
            wait_until(
                lambda node=node: np.allclose(camera_pose_in(node), new_pose.matrix),
                f"{node.get_name()} to take the new camera pose",
            )
        future = client.call_async(PointPart.Request(query="the handle of the mug"))
        wait_until(future.done, "the /point_part answer after the switch", 30.0)
        answer = future.result()
        assert answer.success and answer.has_grasp_pose, answer.message
        wait_until(lambda: poses.messages[-1].header == answer.grasp_pose.header, "the fused pose of it")
        p, q = poses.messages[-1].pose.position, answer.grasp_pose.pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], [q.x, q.y, q.z], atol=1e-6)
        optical = answer.point.point
        np.testing.assert_allclose(
            [p.x, p.y, p.z], new_pose.apply([optical.x, optical.y, optical.z]), atol=1e-6
        )
        ros.remove(client_node)
    finally:
        graph.shutdown()
        spinner.join(timeout=10.0)
        context.try_shutdown()


@pytest.mark.slow
def test_main_exits_non_zero_with_one_line_when_the_head_is_missing(tmp_path):
    env = isolated_env()
    missing = tmp_path / "no_head_here"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "part_point_ros.ros.bringup",
            "--params-file",
            str(CONFIG),
            "--head",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert (
        len(errors) == 1 and str(missing) in errors[0] and errors[0].startswith("error: configure failed: ")
    )
    assert "Traceback" not in proc.stderr


WRAPPERS = ROOT / "ros2_ws" / "install" / "part_point_ros" / "lib" / "part_point_ros"


def isolated_env() -> dict[str, str]:
    env = {
        **os.environ,
        "ROS_DOMAIN_ID": str(1 + (os.getpid() + 50) % 100),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    }
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize(
    ("node", "ros_args", "expected"),
    [
        ("sim_camera_node", ["-p", "width:=4"], "Parameter width out of range. Min: 8, Max: 4096, value: 4"),
        (
            "sim_camera_node",
            ["-p", "width:=wide"],
            "Trying to set parameter 'width' to 'wide' of type 'STRING'",
        ),
        ("depth_fusion_node", ["-p", "stamp_tolerance:=-1.0"], "Parameter stamp_tolerance out of range"),
        ("part_point_node", ["-p", "queue_size:=0"], "Parameter queue_size out of range"),
    ],
    ids=["range", "type", "fusion-range", "part-point-range"],
)
def test_installed_node_with_a_bad_parameter_prints_one_line_and_exits_1(node, ros_args, expected):
    proc = run_wrapper(node, ros_args)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "(check --ros-args -p NAME:=VALUE and the params file)" in lines[0]


@pytest.mark.slow
def test_unparsable_ros_arguments_give_one_error_line_without_a_traceback():
    proc = run_wrapper("depth_fusion_node", ["-p", "stamp_tolerance"])
    assert proc.returncode == 1, proc.stderr
    # rcl logs "[ERROR] ... Failed to parse global arguments" itself; ours is the one error: line
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: bad ROS arguments: Couldn't parse parameter override rule: '-p stamp_tolerance' "
        "(use -p NAME:=VALUE)"
    ], proc.stderr
    assert "Traceback" not in proc.stderr


def run_wrapper(node: str, ros_args: list[str]) -> subprocess.CompletedProcess:
    """Run the colcon-installed console script of ``node`` with ``--ros-args ros_args``."""
    wrapper = WRAPPERS / node
    assert wrapper.is_file(), f"{wrapper} is missing: build the workspace (scripts/setup.sh)"
    return subprocess.run(
        [str(wrapper), "--ros-args", *ros_args],
        capture_output=True,
        text=True,
        timeout=120,
        env=isolated_env(),
    )


def parameter_rows(specs) -> list[str]:
    """docs/ros.md's table rows for a node's ParamSpecs: name, ROS type, default, allowed, meaning."""
    types = {str: "string", bool: "bool", int: "integer", float: "double", list: "double[]"}
    rows = []
    for spec in specs:
        default = (
            json.dumps(spec.default) if isinstance(spec.default, str | list) else str(spec.default).lower()
        )
        limits = spec.floats or spec.ints
        allowed = f"{limits[0]} .. {limits[1]}" if limits else ", ".join(spec.choices or ())
        flags = ["read-only"] * spec.read_only + ["read on configure"] * spec.configure_time
        meaning = (spec.description + (f" ({', '.join(flags)})" if flags else "")).replace("|", "\\|")
        rows.append(f"| `{spec.name}` | {types[type(spec.default)]} | `{default}` | {allowed} | {meaning} |")
    return rows


def test_docs_parameter_tables_match_the_declared_parameters():
    from part_point_ros.ros.depth_fusion_node import DEPTH_FUSION_PARAMS
    from part_point_ros.ros.params import PART_POINT_PARAMS, SIM_CAMERA_PARAMS

    docs = (ROOT / "docs" / "ros.md").read_text()
    for specs in (PART_POINT_PARAMS, DEPTH_FUSION_PARAMS, SIM_CAMERA_PARAMS):
        missing = [row for row in parameter_rows(specs) if row not in docs]
        assert missing == [], (
            "docs/ros.md is out of date; regenerate the rows with parameter_rows():\n" + "\n".join(missing)
        )


def test_sim_camera_without_a_model_runs_the_shipped_synthetic_world_models(tmp_path, monkeypatch):
    """From any working directory: the shipped models are found next to the params file's share
    (here the checkout's models/), for each method; a model given anywhere always wins."""
    monkeypatch.chdir(tmp_path)  # no models/ here
    models = default_config_path().parents[1] / "models"  # the installed share/, else the checkout's
    assert (models / "tiny-tabletop-a2p" / "config.json").is_file()

    def pp(*flags: str) -> dict:
        return {p.name: p.value for p in node_parameters(parse_options(list(flags)), "part_point_node")}

    assert pp("--sim-camera")["head"] == str(models / "tiny-tabletop-a2p")
    text = pp("--sim-camera", "--method", "text")
    assert (text["backbone"], text["head"]) == (str(models / "tiny-tabletop-llava"), "")
    attention = pp("--sim-camera", "--method", "attention")
    assert attention["heads_file"] == str(models / "tiny-tabletop-heads.json")
    assert pp("--sim-camera", "--method", "attention", "--heads-file", "/h.json")["heads_file"] == "/h.json"
    assert pp("--sim-camera", "--head", "/mine")["head"] == "/mine"
    assert pp("--sim-camera", "--backbone", "org/model")["head"] == ""  # a backbone named: no shipped head
    assert pp()["head"] == ""  # a real camera: nothing is chosen for the user
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"part_point_node": {"ros__parameters": {"head": "/from/file"}}}))
    assert pp("--sim-camera", "--params-file", str(own))["head"] == "/from/file"


def test_new_flags_and_a_missing_params_file_give_one_line(tmp_path):
    values = {
        p.name: p.value
        for p in node_parameters(
            parse_options(["--heads-file", "/h.json", "--score-threshold", "0.3"]), "part_point_node"
        )
    }
    assert (values["heads_file"], values["score_threshold"]) == ("/h.json", 0.3)
    with pytest.raises(Exception, match="score_threshold must be a number"):
        graph_overrides({"score_threshold": "high"})
    missing = tmp_path / "typo.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "part_point_ros.ros.bringup", "--params-file", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
        env=isolated_env(),
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: params_file {str(missing)!r} does not exist: give a ROS parameter YAML, or leave it empty "
        "for the installed part_point.yaml"
    ], proc.stderr
