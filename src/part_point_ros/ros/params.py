"""Parameters of the nodes: declarations with descriptors, checks, and the config YAML.

The parameters of part_point_node and sim_camera_node are listed once here as ``ParamSpec`` entries
(PART_POINT_PARAMS, SIM_CAMERA_PARAMS; depth_fusion_node's DEPTH_FUSION_PARAMS live in its module);
``declare`` turns them into ``declare_parameter`` calls with
a ``ParameterDescriptor`` (description, range, read-only), and
``check_changes`` validates the ``choices`` in a set-parameters callback. ``load_node_parameters``
reads one node's ``ros__parameters`` section of a ROS parameter file (config/part_point.yaml) with
rclpy's own parser, for processes that start nodes without ``launch`` (bringup, tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_dict_from_yaml_file

from part_point_ros.errors import InputError
from part_point_ros.geometry.calib import read_yaml_mapping
from part_point_ros.grounding.inputs import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, MAX_QUERY_CHARS

PACKAGE = "part_point_ros"
CONFIG_NAME = "part_point.yaml"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default (its type is the parameter's type), description, constraints.

    ``floats`` / ``ints`` are inclusive (from, to) ranges; ``choices`` are the allowed strings;
    ``configure_time`` marks what a lifecycle node reads in on_configure (changes apply at the next
    configure and are refused while the node is configured).
    """

    name: str
    default: Any
    description: str
    floats: tuple[float, float] | None = None
    ints: tuple[int, int] | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = False
    configure_time: bool = False

    def descriptor(self) -> ParameterDescriptor:
        text = self.description
        if self.choices:
            text += f" (one of: {', '.join(self.choices)})"
        if self.configure_time:
            text += " [read on configure]"
        d = ParameterDescriptor(description=text, read_only=self.read_only)
        if self.floats is not None:
            d.floating_point_range = [
                FloatingPointRange(from_value=float(self.floats[0]), to_value=float(self.floats[1]), step=0.0)
            ]
        if self.ints is not None:
            d.integer_range = [IntegerRange(from_value=int(self.ints[0]), to_value=int(self.ints[1]), step=1)]
        return d


# ---------------------------------------------------------------------- both grasp-lifting nodes
# what ros.camera_buffer.grasp_lifter reads (part_point_node and depth_fusion_node)
GRASP_LIFTER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("depth_window", 5, "median window for depth, pixels", ints=(1, 51)),
    ParamSpec("normal_radius", 7, "half size of the normal patch, pixels", ints=(1, 50)),
    ParamSpec("min_points", 10, "fewest depth points for a normal", ints=(3, 10000)),
    ParamSpec("min_depth", 0.1, "valid depth from, metres", floats=(0.0, 100.0)),
    ParamSpec("max_depth", 10.0, "valid depth up to, metres", floats=(0.0, 100.0)),
)


# ---------------------------------------------------------------------- part_point_node
PART_POINT_PARAMS: tuple[ParamSpec, ...] = (
    # model (read on configure)
    ParamSpec(
        "backbone", "", "MLLM hub id or directory; empty = the one named in the head", configure_time=True
    ),
    ParamSpec("head", "", "trained head directory (or hub id); needed by method a2p", configure_time=True),
    ParamSpec(
        "method", "a2p", "pointing method", choices=("a2p", "attention", "text", "pop"), configure_time=True
    ),
    ParamSpec(
        "heads_file",
        "",
        "localization heads for methods attention and pop (file or shipped name); empty = shipped for the "
        "backbone",
        configure_time=True,
    ),
    ParamSpec("device", "cpu", "torch device: cpu, cuda, cuda:1", configure_time=True),
    ParamSpec(
        "dtype", "float32", "model dtype", choices=("float32", "float16", "bfloat16"), configure_time=True
    ),
    ParamSpec(
        "quantization",
        "",
        "quantize the backbone's decoder weights as they load; empty = none (int8: torchao, cpu or cuda; "
        "int4: torchao, cuda and bfloat16; nf4, bnb-int8: bitsandbytes and accelerate)",
        choices=("", "int8", "int4", "nf4", "bnb-int8"),
        configure_time=True,
    ),
    ParamSpec(
        "max_query_chars", MAX_QUERY_CHARS, "longest query accepted", ints=(1, 100000), configure_time=True
    ),
    ParamSpec(
        "max_image_pixels",
        MAX_IMAGE_PIXELS,
        "largest image accepted, width x height pixels (default 4096x2160); larger ones are refused",
        ints=(4, 2**31 - 1),
        configure_time=True,
    ),
    ParamSpec(
        "max_aspect_ratio",
        MAX_ASPECT_RATIO,
        "largest long side / short side of an image accepted (a pad-to-square backbone such as LLaVA "
        "pays for a max(W, H)^2 canvas); others are refused",
        floats=(1.0, 10000.0),
        configure_time=True,
    ),
    ParamSpec(
        "queue_size", 2, "requests waiting for inference before 'busy'", ints=(1, 64), configure_time=True
    ),
    # topics (read on configure)
    ParamSpec("image_topic", "/camera/color/image_raw", "colour image in (rgb8, bgr8)", configure_time=True),
    ParamSpec("camera_info_topic", "/camera/color/camera_info", "colour camera_info in", configure_time=True),
    ParamSpec(
        "depth_topic",
        "/camera/aligned_depth_to_color/image_raw",
        "depth aligned to colour in (16UC1 mm, 32FC1 m)",
        configure_time=True,
    ),
    ParamSpec("command_topic", "/part_point/command", "queries in (std_msgs/String)", configure_time=True),
    ParamSpec(
        "extrinsics_topic",
        "/camera/extrinsics",
        "latched TransformStamped target <- optical in; empty = off",
        configure_time=True,
    ),
    ParamSpec("points_topic", "/part_point/points", "part points out (PartPointArray)", configure_time=True),
    ParamSpec("heatmap_topic", "/part_point/heatmap", "heatmap image out", configure_time=True),
    ParamSpec("overlay_topic", "/part_point/overlay", "overlay image out (rgb8)", configure_time=True),
    ParamSpec("service_name", "/point_part", "name of the PointPart service", configure_time=True),
    ParamSpec(
        "parts_service_name",
        "/point_parts",
        "name of the PointParts service (several queries on one frame)",
        configure_time=True,
    ),
    ParamSpec(
        "max_queries_per_request",
        16,
        "most queries one PointParts request may hold",
        ints=(1, 256),
        configure_time=True,
    ),
    # method pop: teaching by example (read on configure, except teach_name)
    ParamSpec(
        "extractor",
        "dinov3",
        "pop: dense features (llava-tower = the LLaVA backbone's own vision tower)",
        choices=("dinov3", "llava-tower"),
        configure_time=True,
    ),
    ParamSpec(
        "extractor_model", "", "pop: extractor hub id or directory; empty = its default", configure_time=True
    ),
    ParamSpec(
        "support_root",
        "",
        "pop: support-set directory; empty = $PART_POINT_SUPPORTS or ~/.local/share",
        configure_time=True,
    ),
    ParamSpec(
        "support",
        "",
        "pop: the support set for every query; empty = the set named like the query",
        configure_time=True,
    ),
    ParamSpec(
        "support_fusion",
        "product",
        "pop: how several examples' maps combine (product = the paper's; mean, geomean keep them at one "
        "example's weight beside the attention map)",
        choices=("product", "geomean", "mean"),
        configure_time=True,
    ),
    ParamSpec("teach_service_name", "/teach_part", "name of the TeachPart service", configure_time=True),
    ParamSpec(
        "clicked_point_topic",
        "/clicked_point",
        "RViz Publish Point in (PointStamped, any TF frame): taught under teach_name; empty = off",
        configure_time=True,
    ),
    ParamSpec(
        "publish_instances",
        False,
        "publish every instance of each query on points_topic (depth_fusion_node lifts each); "
        "false: the best point per query (the services always answer every instance)",
    ),
    ParamSpec("teach_name", "", "pop: name a clicked point teaches; empty = the last query asked"),
    # LENS masks
    ParamSpec(
        "masks", False, "segment each found part with SAM from its keypoints (LENS)", configure_time=True
    ),
    ParamSpec(
        "mask_model",
        "",
        "masks: SAM / SAM 2 hub id or directory; empty = facebook/sam-vit-base",
        configure_time=True,
    ),
    ParamSpec("mask_topic", "/part_point/mask", "part mask out (mono8, image size)", configure_time=True),
    ParamSpec(
        "depth_buffer_size", 10, "depth frames kept for stamp matching", ints=(1, 300), configure_time=True
    ),
    # frames (read on configure)
    ParamSpec("use_tf", True, "look up transforms in tf2 when tf2_ros is installed", configure_time=True),
    ParamSpec(
        "extrinsics_file", "", "hand-eye YAML (calib/camera_to_base.yaml); empty = none", configure_time=True
    ),
    ParamSpec("extrinsics.parent_frame", "", "static camera pose: parent frame", configure_time=True),
    ParamSpec(
        "extrinsics.child_frame", "", "static camera pose: optical frame; empty = off", configure_time=True
    ),
    ParamSpec(
        "extrinsics.translation", [0.0, 0.0, 0.0], "static camera pose: x, y, z m", configure_time=True
    ),
    ParamSpec(
        "extrinsics.quaternion_xyzw",
        [0.0, 0.0, 0.0, 1.0],
        "static camera pose: x, y, z, w",
        configure_time=True,
    ),
    # runtime
    ParamSpec(
        "score_threshold",
        -1.0,
        "found = score >= this; -1 = the method's default "
        "(a2p: the head's calibrated threshold, else 0.5; attention 0.0; text 0.5)",
        floats=(-1.0, 1.0),
    ),
    ParamSpec(
        "max_image_age_s",
        1.0,
        "refuse the latest frame when older than this (node clock), seconds; 0 = no limit",
        floats=(0.0, 3600.0),
    ),
    ParamSpec("target_frame", "base_link", "frame of grasp poses when a request names none"),
    ParamSpec("stamp_tolerance", 0.05, "largest |image stamp - depth stamp|, seconds", floats=(0.0, 10.0)),
    ParamSpec(
        "require_grasp_pose",
        True,
        "/point_part: a found part without a grasp pose (no depth, no transform) answers success false; "
        "false = success true with has_grasp_pose false (the 2D point is filled either way)",
    ),
    ParamSpec("publish_heatmap", True, "publish the heatmap image"),
    ParamSpec("publish_overlay", True, "publish the overlay image"),
    ParamSpec("heatmap_encoding", "32FC1", "heatmap image encoding", choices=("32FC1", "mono8")),
    *GRASP_LIFTER_PARAMS,
    ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics, seconds", floats=(0.05, 60.0)),
    ParamSpec("autostart", False, "configure and activate on start (standalone runs without launch)"),
)

# ---------------------------------------------------------------------- sim_camera_node
SIM_CAMERA_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("seed", 0, "scene seed; set it to switch the scene", ints=(0, 2**31 - 1)),
    ParamSpec("width", 320, "image width, pixels", ints=(8, 4096), read_only=True),
    ParamSpec("height", 240, "image height, pixels", ints=(8, 4096), read_only=True),
    ParamSpec("hfov_deg", 60.0, "horizontal field of view, degrees", floats=(10.0, 150.0), read_only=True),
    ParamSpec("shadows", True, "render hard shadows", read_only=True),
    ParamSpec("rate_hz", 10.0, "frames per second", floats=(0.1, 100.0), read_only=True),
    ParamSpec(
        "depth_encoding", "16UC1", "aligned depth encoding", choices=("16UC1", "32FC1"), read_only=True
    ),
    ParamSpec("optical_frame", "camera_color_optical_frame", "the camera's optical frame", read_only=True),
    ParamSpec("base_frame", "base_link", "the robot frame the camera pose is given in", read_only=True),
    ParamSpec("color_topic", "/camera/color/image_raw", "colour image out (rgb8)", read_only=True),
    ParamSpec("color_info_topic", "/camera/color/camera_info", "colour camera_info out", read_only=True),
    ParamSpec(
        "depth_topic", "/camera/aligned_depth_to_color/image_raw", "aligned depth image out", read_only=True
    ),
    ParamSpec(
        "depth_info_topic",
        "/camera/aligned_depth_to_color/camera_info",
        "aligned depth camera_info out",
        read_only=True,
    ),
    ParamSpec(
        "extrinsics_topic",
        "/camera/extrinsics",
        "latched TransformStamped base_frame <- optical_frame (TF stand-in)",
        read_only=True,
    ),
    ParamSpec(
        "ground_truth_topic",
        "/sim_camera/ground_truth",
        "latched JSON ground truth of the scene",
        read_only=True,
    ),
    ParamSpec(
        "extrinsics_out",
        "",
        "write the camera pose as calib extrinsics YAML here on every scene change; empty = off",
        read_only=True,
    ),
    ParamSpec("publish_tf", True, "also send the camera pose to /tf_static when tf2_ros is installed"),
)


def declare(node: Node, specs: Iterable[ParamSpec]) -> None:
    """``declare_parameter`` for every spec, with its descriptor."""
    for spec in specs:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())


def check_changes(specs: Sequence[ParamSpec], params: Sequence[Parameter]) -> str:
    """'' if every change is allowed by the specs' ``choices``, else the one-line reason."""
    by_name = {s.name: s for s in specs}
    for p in params:
        spec = by_name.get(p.name)
        if spec is not None and spec.choices and p.value not in spec.choices:
            return f"{p.name} must be one of {', '.join(spec.choices)}, got {p.value!r}"
    return ""


def load_node_parameters(path: str | Path, node_name: str) -> list[Parameter]:
    """The ``node_name`` section (merged over the ``/**`` wildcard section) of a ROS parameter file.

    Nested keys become dotted names (``extrinsics: {translation: ...}`` -> ``extrinsics.translation``).
    A file without a section named ``node_name`` (or ``/node_name``) gives no parameters.
    """
    p = Path(path)
    data = read_yaml_mapping(p, "parameter", expected="map node names to ros__parameters")
    key = next((k for k in (node_name, "/" + node_name) if k in data), None)
    if key is None:
        return []
    try:
        messages = parameter_dict_from_yaml_file(str(p), use_wildcard=True, target_nodes=[key])
    except RuntimeError as err:
        raise InputError(f"parameter file {str(p)!r}: {str(err).strip()}") from err
    return [Parameter.from_parameter_msg(m) for m in messages.values()]


def default_config_path() -> Path:
    """config/part_point.yaml: the installed package's share directory, else this source checkout's."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            installed = Path(get_package_share_directory(PACKAGE)) / "config" / CONFIG_NAME
            if installed.is_file():
                return installed
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover - ament_index_python comes with rclpy
        pass
    return Path(__file__).resolve().parents[3] / "config" / CONFIG_NAME


def camera_topics(namespace: str) -> dict[str, str]:
    """RealSense-style topic names under a camera namespace (e.g. ``/camera``)."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return {
        "color": f"{ns}/color/image_raw",
        "color_info": f"{ns}/color/camera_info",
        "depth": f"{ns}/aligned_depth_to_color/image_raw",
        "depth_info": f"{ns}/aligned_depth_to_color/camera_info",
        "extrinsics": f"{ns}/extrinsics",
    }


# launch arguments / bringup flags -> the parameters they set, per node. One table for both, so that
# `ros2 launch part_point_ros grasp.launch.py head:=DIR` and `part-point-ros --head DIR` agree.
MODEL_ARGUMENTS = ("backbone", "head", "method", "device", "dtype", "heads_file")
# the shipped synthetic-world models (models/, installed under share/part_point_ros/models)
SIM_HEAD, SIM_BACKBONE, SIM_HEADS_FILE = (
    "tiny-tabletop-a2p",
    "tiny-tabletop-llava",
    "tiny-tabletop-heads.json",
)
TOPIC_ARGUMENTS = {  # launch argument -> (camera_topics key, {node: parameter})
    "color_topic": ("color", {"part_point_node": "image_topic", "sim_camera_node": "color_topic"}),
    "camera_info_topic": (
        "color_info",
        {
            "part_point_node": "camera_info_topic",
            "depth_fusion_node": "camera_info_topic",
            "sim_camera_node": "color_info_topic",
        },
    ),
    "depth_topic": (
        "depth",
        {
            "part_point_node": "depth_topic",
            "depth_fusion_node": "depth_topic",
            "sim_camera_node": "depth_topic",
        },
    ),
    "depth_info_topic": ("depth_info", {"sim_camera_node": "depth_info_topic"}),
    "extrinsics_topic": (
        "extrinsics",
        {
            "part_point_node": "extrinsics_topic",
            "depth_fusion_node": "extrinsics_topic",
            "sim_camera_node": "extrinsics_topic",
        },
    ),
}
NODE_NAMES = ("part_point_node", "depth_fusion_node", "sim_camera_node")


def graph_overrides(arguments: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Parameter overrides per node from launch arguments / CLI flags; empty or None = keep the file's.

    Keys: backbone, head, method, device, dtype, heads_file, score_threshold (part_point_node);
    camera_namespace (every camera
    topic of every node, RealSense layout); color_topic, camera_info_topic, depth_topic (one topic,
    over the namespace); target_frame (part_point_node, depth_fusion_node); seed (sim_camera_node).
    """
    out: dict[str, dict[str, Any]] = {name: {} for name in NODE_NAMES}

    def given(key: str) -> Any:
        value = arguments.get(key)
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    for key in MODEL_ARGUMENTS:
        if given(key) is not None:
            out["part_point_node"][key] = str(given(key))
    if given("score_threshold") is not None:
        try:
            out["part_point_node"]["score_threshold"] = float(given("score_threshold"))
        except (TypeError, ValueError) as err:
            raise InputError(
                "score_threshold must be a number (-1 = the method's default), "
                f"got {given('score_threshold')!r}"
            ) from err
    namespace = given("camera_namespace")
    topics = camera_topics(str(namespace)) if namespace is not None else {}
    for key, (topic_key, targets) in TOPIC_ARGUMENTS.items():
        topic = given(key) or topics.get(topic_key)
        if topic is not None:
            for node, param in targets.items():
                out[node][param] = str(topic)
    if given("target_frame") is not None:
        for node in ("part_point_node", "depth_fusion_node"):
            out[node]["target_frame"] = str(given("target_frame"))
    if given("seed") is not None:
        try:
            out["sim_camera_node"]["seed"] = int(given("seed"))
        except (TypeError, ValueError) as err:
            raise InputError(f"seed must be a non-negative integer, got {given('seed')!r}") from err
    return out


def check_params_file(path: str | Path) -> Path:
    """The parameter file, or one InputError line when it is missing (ROS would only warn and run
    every node on its defaults)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(
            f"params_file {str(path)!r} does not exist: give a ROS parameter YAML, or leave it empty for "
            f"the installed {CONFIG_NAME}"
        )
    return p


def sim_world_models(params_file: str | Path, arguments: Mapping[str, Any]) -> dict[str, str]:
    """With the synthetic camera and no model named anywhere (arguments or the params file): the
    shipped synthetic-world models (``models/``, installed under ``share/part_point_ros/models``) as
    part_point_node overrides for its method; else nothing. A user's own model always wins."""

    def named(values: Mapping[str, Any], key: str) -> str | None:
        value = values.get(key)
        return value.strip() if isinstance(value, str) and value.strip() else None

    in_file = {p.name: p.value for p in load_node_parameters(params_file, "part_point_node")}
    if any(named(arguments, k) or named(in_file, k) for k in ("backbone", "head")):
        return {}
    models = default_config_path().parents[1] / "models"
    if not (models / SIM_HEAD / "config.json").is_file():
        return {}
    method = named(arguments, "method") or named(in_file, "method") or "a2p"
    if method == "a2p":
        return {"head": str(models / SIM_HEAD)}
    out = {"backbone": str(models / SIM_BACKBONE)}
    heads_named = named(arguments, "heads_file") or named(in_file, "heads_file")
    if method in ("attention", "pop") and not heads_named:
        out["heads_file"] = str(models / SIM_HEADS_FILE)
    if method == "pop" and not (named(arguments, "extractor") or named(in_file, "extractor")):
        out["extractor"] = "llava-tower"  # the sim backbone's own tower: DINOv3 cannot be downloaded here
    return out
