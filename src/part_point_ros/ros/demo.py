"""``part-point demo``: the whole ROS 2 graph on the synthetic RGB-D world, end to end.

Starts sim_camera_node, part_point_node (lifecycle) and depth_fusion_node in this process (bringup,
real ROS 2 over DDS) on a private ROS_DOMAIN_ID with discovery limited to this machine, so it never
talks to a robot on the LAN. Then, for each scene seed: switches the sim camera to it (its
``set_parameters`` service), checks that the published colour image equals ``render_scene(seed)``
(so ground truth and camera cannot drift apart), picks queries from the latched ground truth on
/sim_camera/ground_truth, asks /point_part for each as a service client and scores the answer
against the render:

- 2D hit: the returned pixel lies in the query's part mask. It counts whether or not the node said
  ``found`` (the score threshold decides ``found``, not the hit), so accuracy does not depend on it.
- ``lift_error_mm`` (every answer with a 3D point): distance from the grasp point in base_link to
  the renderer's true surface point at the returned pixel (its exact depth lifted with the camera's
  intrinsics and pose). It measures the 3D lift alone (depth reading, plane fit, transform), not
  the 2D choice.
- ``part_surface_mm`` (hits with a 3D point): distance from the grasp point to the target part's
  visible surface (its mask pixels lifted with their true depth); the summary gives the median and
  the fraction within 5 mm.

The node's score threshold is its own default (config/part_point.yaml) unless ``--score-threshold``
says otherwise; the demo says which one it uses in one line at the start. An answer under it comes
back ``found: false`` with its 2D point and score but no 3D point (part_point_node withholds it).
Writes to ``--out``: overlay and heatmap PNGs, summary.json / summary.md, params.yaml (the node
parameters used) and session.mcap (the session's topics, readable by Foxglove and ``ros2 bag info``).

    part-point demo --seeds 200000,200001 --queries-per-scene 3
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
import rclpy
import yaml
from lifecycle_msgs.msg import State
from lifecycle_msgs.srv import GetState
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException
from rclpy.logging import LoggingSeverity
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from std_msgs.msg import String

from part_point_ros.errors import CheckpointError, InputError, PartPointError
from part_point_ros.msg import PartPointArray
from part_point_ros.ros.bringup import Bringup, BringupOptions
from part_point_ros.ros.conversions import image_to_numpy
from part_point_ros.ros.params import PART_POINT_PARAMS, default_config_path
from part_point_ros.ros.qos import latched_qos, results_qos, sensor_qos
from part_point_ros.ros.recorder import McapRecorder
from part_point_ros.srv import PointPart

DEFAULT_BACKBONE = "models/tiny-tabletop-llava"
DEFAULT_HEAD = "models/tiny-tabletop-a2p"
DEFAULT_HEADS = "models/tiny-tabletop-heads.json"  # attention: the default backbone's localization heads
DEFAULT_SEEDS = (200000, 200001)  # held-out test seeds (docs/synthetic_world.md)
CAMERA_RATE_HZ = 5.0  # enough for the demo, and it keeps the recording small
PRIVATE_DOMAINS = (101, 100)  # ROS_DOMAIN_ID 101..200 (the tests use 1..100)
STALE_RETRIES = 4  # answers on a frame of the previous scene are asked again
OUTPUT_WAIT_S = 5.0  # a published heatmap / fused point arrives within this after the answer
PART_SURFACE_TOL_MM = 5.0  # a hit's grasp point this close to the part's surface counts as on it
_SOURCE_ROOT = Path(__file__).resolve().parents[3]
_HOW_TO_GET = {
    DEFAULT_BACKBONE: "it ships in the repository's models/ (run from the checkout, e.g. scripts/demo.sh), "
    "or train it: part-point backbone ... (docs/tiny_tabletop.md); "
    "or pass --backbone DIR",
    DEFAULT_HEAD: "it ships in the repository's models/ (run from the checkout, e.g. scripts/demo.sh), "
    "or train a head (part-point train, docs/training.md) and pass --head DIR",
}


UNTRAINED_BANNER = (
    "UNTRAINED models (--untrained): a tiny LLaVA and an A2P head with random weights, built now. The "
    "points are NOT meaningful; this run exercises the ROS graph, the 3D lifting and the ground-truth "
    "measurements. The trained synthetic-world models are not shipped yet (README, status)."
)


def build_untrained_models(root: Path) -> tuple[str, str]:
    """A tiny random LLaVA (real transformers classes) and a random A2P head for it, under ``root``."""
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.backbones.tiny import build_tiny_llava
    from part_point_ros.heads import HeadConfig, PartPointHead

    backbone = build_tiny_llava(root / "backbone", seed=0)
    info = load_backbone(str(backbone)).info
    config = HeadConfig(
        backbone=dict(vars(info)),
        heads=[[info.num_layers - 1, h] for h in range(info.num_heads)],
        d_head=info.head_dim,
        d_fused=32,
        n_blocks=1,
        norm_groups=8,
    )
    import torch

    torch.manual_seed(0)
    PartPointHead(config).save_pretrained(root / "head")
    return str(backbone), str(root / "head")


class DemoError(PartPointError):
    """The demo could not run (setup failure, a node that does not answer, camera/GT drift)."""


@dataclass
class DemoOptions:
    """What the demo runs; the CLI flags of ``part-point demo``."""

    out: Path = Path("runs/demo")
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    queries_per_scene: int = 3
    backbone: str = DEFAULT_BACKBONE
    head: str = DEFAULT_HEAD  # a2p only
    method: str = "a2p"
    heads: str = ""  # attention: localization heads file ("" = shipped for a known backbone)
    timeout: float = 60.0  # longest wait for one step (startup, a frame, an answer), seconds
    domain_id: int | None = None  # None = a private one from the process id
    params_file: Path | None = None  # node parameters to start from (default config/part_point.yaml)
    verbose: bool = False
    untrained: bool = False  # a tiny UNTRAINED backbone + head built on the fly: plumbing, not accuracy
    score_threshold: float | None = None  # part_point_node's score_threshold; None = the params file's
    extra_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> name -> value

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds or min(self.seeds) < 0:
            raise InputError(f"seeds must be non-negative integers, got {list(self.seeds)}")
        if self.queries_per_scene < 1:
            raise InputError(f"queries_per_scene must be >= 1, got {self.queries_per_scene}")
        if self.method not in ("a2p", "attention"):
            raise InputError(f"method must be a2p or attention, got {self.method!r}")
        if not self.timeout > 0:
            raise InputError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.domain_id is not None and not 0 <= self.domain_id <= 232:
            raise InputError(f"domain_id must lie in 0..232, got {self.domain_id}")
        if self.score_threshold is not None and not -1.0 <= self.score_threshold <= 1.0:
            raise InputError(
                f"score_threshold must lie in -1..1 (-1 = the method's default), got {self.score_threshold}"
            )


# ---------------------------------------------------------------------- setup
def resolve_model(path: str, *, flag: str) -> str:
    """A model directory: the path as given, else (for the defaults) in the checkout / installed share."""
    given = Path(path).expanduser()
    candidates = [given]
    if path in _HOW_TO_GET:
        candidates.append(_SOURCE_ROOT / path)
        try:
            from ament_index_python.packages import get_package_share_directory

            candidates.append(Path(get_package_share_directory("part_point_ros")) / path)
        except (ImportError, LookupError):
            pass
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate.resolve())
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if looks_like_hub_id and path not in _HOW_TO_GET and flag == "--backbone":
        return path  # a hub id: part_point_node loads it (or says why not) on configure
    how = _HOW_TO_GET.get(path, f"{flag} must be a model directory (config.json + model.safetensors)")
    raise CheckpointError(f"{path} not found: {how}")


def private_domain_id() -> int:
    first, count = PRIVATE_DOMAINS
    return first + os.getpid() % count


@contextmanager
def localhost_discovery() -> Iterator[None]:
    """ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST while the graph runs (read when rclpy initialises)."""
    keys = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS")
    old = {k: os.environ.get(k) for k in keys}
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated in Jazzy; conflicts with the range
    os.environ.pop("ROS_STATIC_PEERS", None)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def demo_parameters(options: DemoOptions, *, backbone: str, head: str) -> dict[str, Any]:
    """The node parameter file of the demo: the base file, the model, and the demo's settings.

    score_threshold stays the base file's unless ``options.score_threshold`` is given (see
    threshold_line, which the demo prints).
    """
    base = options.params_file or default_config_path()
    config = yaml.safe_load(Path(base).read_text())
    pp = config["part_point_node"]["ros__parameters"]
    pp.update(backbone=backbone, head=head, method=options.method, heads_file=options.heads)
    pp.update(max_image_age_s=5.0)  # a busy 2-core box may lag a little behind the camera
    if options.score_threshold is not None:
        pp.update(score_threshold=float(options.score_threshold))
    config["sim_camera_node"]["ros__parameters"].update(seed=options.seeds[0], rate_hz=CAMERA_RATE_HZ)
    for node, values in options.extra_parameters.items():
        config[node]["ros__parameters"].update(values)
    return config


def score_threshold(options: DemoOptions, config: dict[str, Any]) -> dict[str, Any]:
    """part_point_node's score threshold in ``config``: the parameter (-1 = the method's default), the
    threshold it means, and where it comes from (in words)."""
    from part_point_ros.grounding.pointer import DEFAULT_THRESHOLDS, default_threshold  # (imports torch)

    pp = config["part_point_node"]["ros__parameters"]
    default = next(spec.default for spec in PART_POINT_PARAMS if spec.name == "score_threshold")
    value = float(pp.get("score_threshold", default))
    method = pp.get("method", "a2p")
    if options.score_threshold is not None:
        source = f"--score-threshold {options.score_threshold:g}"
    elif "score_threshold" in options.extra_parameters.get("part_point_node", {}):
        source = f"score_threshold {value:g} in the demo's extra parameters"
    else:
        base = options.params_file or default_config_path()
        source = f"part_point_node's default: score_threshold {value:g} in {base}"
    effective = value
    if value < 0:
        effective = default_threshold(method, pp.get("head") or None)
        source += f" = the {method} default"
        if effective != DEFAULT_THRESHOLDS[method]:
            source += " (the head's calibrated one, config.json extra.calibration)"
    return {"parameter": value, "effective": effective, "source": source}


def threshold_line(threshold: dict[str, Any]) -> str:
    """The one line the demo prints at the start: the score threshold it runs with, and why."""
    return (
        f"SCORE THRESHOLD {threshold['effective']:.2f} ({threshold['source']}): an answer scoring below it "
        "comes back found: false with its 2D point and score but NO 3D point; it is still scored "
        "HIT/MISS on its 2D point. --score-threshold T changes it."
    )


def recorded_topics(config: dict[str, Any]) -> list[str]:
    """Camera streams, ground truth and every output of the graph."""
    sim = config["sim_camera_node"]["ros__parameters"]
    pp = config["part_point_node"]["ros__parameters"]
    fusion = config["depth_fusion_node"]["ros__parameters"]
    names = [sim[k] for k in ("color_topic", "color_info_topic", "depth_topic", "depth_info_topic")]
    names += [sim["extrinsics_topic"], sim["ground_truth_topic"]]
    names += [pp[k] for k in ("points_topic", "heatmap_topic", "overlay_topic")]
    names += [fusion[k] for k in ("points_3d_topic", "grasp_pose_topic", "markers_topic")]
    return list(dict.fromkeys(names))


def pick_queries(truth: dict[str, Any], n: int) -> list[int]:
    """Indices of ``n`` queries of the scene: direct and reasoning in turn, distinct parts first.

    Deterministic in the scene seed (a seeded permutation of each kind).
    """
    queries = truth["queries"]
    order = np.random.default_rng(int(truth["seed"])).permutation(len(queries))
    pools = {kind: [int(i) for i in order if queries[i]["kind"] == kind] for kind in ("direct", "reasoning")}
    picked: list[int] = []
    used: set[tuple[str, str]] = set()
    while len(picked) < n and any(pools.values()):
        for kind in ("direct", "reasoning"):
            pool = pools[kind]
            if not pool or len(picked) == n:
                continue
            fresh = [i for i in pool if (queries[i]["object"], queries[i]["part"]) not in used]
            index = (fresh or pool)[0]
            pool.remove(index)
            picked.append(index)
            used.add((queries[index]["object"], queries[index]["part"]))
    return picked


# ---------------------------------------------------------------------- the demo's client node
def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _digest(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


class _Client:
    """The demo's own node: the service clients, and what it sees on the camera and output topics."""

    def __init__(self, *, context: Context, config: dict[str, Any], timeout: float) -> None:
        sim = config["sim_camera_node"]["ros__parameters"]
        pp = config["part_point_node"]["ros__parameters"]
        fusion = config["depth_fusion_node"]["ros__parameters"]
        self.timeout = timeout
        self.node = Node("part_point_demo", context=context)
        self._cv = threading.Condition()
        self.frames: deque[tuple[int, str]] = deque(maxlen=200)  # (stamp ns, digest of the RGB)
        self.truth: dict[int, dict[str, Any]] = {}  # seed -> ground truth JSON
        self.heatmaps: list[Image] = []
        self.fused: list[PartPointArray] = []
        node = self.node
        node.create_subscription(Image, sim["color_topic"], self._on_colour, sensor_qos())
        node.create_subscription(String, sim["ground_truth_topic"], self._on_truth, latched_qos())
        node.create_subscription(Image, pp["heatmap_topic"], self._keep(self.heatmaps), results_qos())
        node.create_subscription(
            PartPointArray, fusion["points_3d_topic"], self._keep(self.fused), results_qos()
        )
        self.point_part = node.create_client(PointPart, pp["service_name"])
        self.set_camera = node.create_client(SetParameters, "/sim_camera_node/set_parameters")
        self.lifecycle = node.create_client(GetState, "/part_point_node/get_state")
        self.camera_seed = int(sim["seed"])  # the scene the sim camera shows
        self.switched_ns = 0  # when it last switched (ns, the camera's clock): later frames show camera_seed

    # -------------------------------------------------------------- subscriptions
    def _notify(self, *_: Any) -> None:
        with self._cv:
            self._cv.notify_all()

    def _on_colour(self, msg: Image) -> None:
        rgb = image_to_numpy(msg)
        if msg.encoding == "bgr8":
            rgb = rgb[..., ::-1]
        with self._cv:
            self.frames.append((_stamp_ns(msg.header.stamp), _digest(rgb)))
            self._cv.notify_all()

    def _on_truth(self, msg: String) -> None:
        truth = json.loads(msg.data)
        with self._cv:
            self.truth[int(truth["seed"])] = truth
            self._cv.notify_all()

    def _keep(self, inbox: list) -> Callable[[Any], None]:
        def keep(msg: Any) -> None:
            with self._cv:
                inbox.append(msg)
                self._cv.notify_all()

        return keep

    # -------------------------------------------------------------- waiting
    def wait(self, condition: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        """The first truthy value of ``condition`` (re-checked on every message), else DemoError."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cv:
            while True:
                value = condition()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoError(f"timed out after {limit:g} s waiting for {what}")
                self._cv.wait(min(left, 0.05))  # graph changes (services) notify nobody: re-check

    def call(self, client: Any, request: Any, what: str) -> Any:
        self.wait(client.service_is_ready, f"the service {client.srv_name}")
        future = client.call_async(request)
        future.add_done_callback(self._notify)
        self.wait(future.done, what)
        if future.exception() is not None:
            raise DemoError(f"{what} failed: {future.exception()}")
        return future.result()

    def digest_at(self, stamp_ns: int) -> str | None:
        with self._cv:  # the executor thread appends frames (a deque mutated while read raises)
            return next((d for s, d in self.frames if s == stamp_ns), None)

    def first_frame(self, digest: str) -> int | None:
        """Stamp of the first frame since the last scene switch, if it shows the image ``digest``.

        DemoError when it shows something else: the camera and render_scene() drifted apart.
        """
        with self._cv:  # re-entrant: also called from wait(), which holds it
            later = [(s, d) for s, d in self.frames if s > self.switched_ns]
        if not later:
            return None
        if later[0][1] != digest:
            raise DemoError(
                f"the camera's colour image of scene {self.camera_seed} differs from "
                f"render_scene({self.camera_seed}): ground truth and camera drifted apart "
                "(same width, height, hfov_deg and shadows?)"
            )
        return later[0][0]

    def published_after(self, inbox: list, start: int, match: Callable[[Any], bool]) -> Any:
        return next((m for m in inbox[start:] if match(m)), None)


# ---------------------------------------------------------------------- one scene
@dataclass
class _Scene:
    seed: int
    truth: dict[str, Any]
    scene: Any  # sim.Scene rendered here
    digest: str
    first_stamp: int  # first published frame of this scene seen by the demo


def _check_truth(truth: dict[str, Any], scene: Any) -> None:
    """The published ground truth is the one of the rendered scene (queries, parts, points)."""
    texts = [q["text"] for q in truth["queries"]]
    if texts != [q.text for q in scene.queries] or [q["part_ids"] for q in truth["queries"]] != [
        list(q.part_ids) for q in scene.queries
    ]:
        raise DemoError(
            f"/sim_camera/ground_truth of seed {scene.seed} does not match render_scene({scene.seed})"
        )
    for part in truth["parts"]:
        mine = scene.part(part["id"]).point_3d
        if (mine is None) != (part["point_3d"] is None) or (
            mine is not None and not np.allclose(mine, part["point_3d"], atol=1e-6)
        ):
            raise DemoError(
                f"ground-truth point of part {part['id']} of seed {scene.seed} differs from the render"
            )


def _switch_scene(client: _Client, seed: int, sim: dict[str, Any]) -> _Scene:
    """Point the sim camera at ``seed`` (if it is elsewhere); its ground truth, render and first frame."""
    from part_point_ros.sim import render_scene

    if client.camera_seed != seed:
        answer = client.call(
            client.set_camera,
            SetParameters.Request(parameters=[Parameter("seed", value=seed).to_parameter_msg()]),
            f"the sim camera to switch to scene {seed}",
        )
        if not answer.results[0].successful:
            raise DemoError(f"the sim camera refused scene {seed}: {answer.results[0].reason}")
        # the switch is complete when set_parameters answers: every later frame shows the new scene
        client.camera_seed, client.switched_ns = seed, time.time_ns()
    truth = client.wait(lambda: client.truth.get(seed), f"the ground truth of scene {seed}")
    scene = render_scene(
        seed, width=sim["width"], height=sim["height"], hfov_deg=sim["hfov_deg"], shadows=sim["shadows"]
    )
    _check_truth(truth, scene)
    digest = _digest(scene.rgb)
    first = client.wait(lambda: client.first_frame(digest), f"a colour frame of scene {seed}")
    return _Scene(seed=seed, truth=truth, scene=scene, digest=digest, first_stamp=first)


def _ask(client: _Client, s: _Scene, text: str) -> tuple[Any, int]:
    """Ask /point_part until it answers on a frame of this scene; (response, image stamp ns)."""
    for _ in range(STALE_RETRIES):
        response = client.call(client.point_part, PointPart.Request(query=text), f"the answer to {text!r}")
        stamp = _stamp_ns(response.point.header.stamp)
        used = client.digest_at(stamp)
        if used == s.digest or (used is None and stamp >= s.first_stamp):
            return response, stamp
        # a frame of the previous scene, or no frame yet ("no image received", "busy"): ask on a newer one
        newest = max((t for t, _ in client.frames), default=0)
        client.wait(lambda n=newest: any(t > n for t, _ in client.frames), "the next colour frame")
    raise DemoError(f"/point_part did not answer {text!r} on a frame of scene {s.seed}: {response.message}")


# ---------------------------------------------------------------------- 3D ground truth of the render
def _to_base(scene: Any, optical: np.ndarray) -> np.ndarray:
    """Optical-frame points (..., 3) -> base_link with the scene's camera pose."""
    pose = np.asarray(scene.camera_pose, dtype=np.float64)
    return np.asarray(optical, dtype=np.float64) @ pose[:3, :3].T + pose[:3, 3]


def true_surface_point(scene: Any, u: float, v: float) -> np.ndarray | None:
    """The renderer's true surface point seen at pixel (u, v), in base_link; None where there is none.

    Pixel centres sit at integer (u, v) (sim.camera). The true z-depth at a sub-pixel (u, v) is
    BILINEAR when all 4 pixels around it are valid, else the NEAREST pixel's: valid = a finite
    ``scene.depth_m`` on the same part (``scene.part_ids``) as the nearest pixel and within
    max(1 cm, 5 %) of its depth, so a silhouette or part edge between them falls back to the nearest
    pixel. The interpolation is over inverse depth, which is linear in (u, v) on a plane: exact on
    flat surfaces. The depth is then lifted along the ray of (u, v) itself with the scene's
    intrinsics and camera_pose (optical frame -> base_link). None when (u, v) is not finite, its
    nearest pixel is off the image, or that pixel sees nothing (NaN depth).
    """
    if not (math.isfinite(u) and math.isfinite(v)):
        return None
    depth = scene.depth_m
    height, width = depth.shape
    col, row = int(round(u)), int(round(v))
    if not (0 <= col < width and 0 <= row < height) or not math.isfinite(float(depth[row, col])):
        return None
    z = float(depth[row, col])
    c0, r0 = math.floor(u), math.floor(v)
    if 0 <= c0 and c0 + 1 < width and 0 <= r0 and r0 + 1 < height:
        quad = depth[r0 : r0 + 2, c0 : c0 + 2].astype(np.float64)
        same_part = scene.part_ids[r0 : r0 + 2, c0 : c0 + 2] == scene.part_ids[row, col]
        if np.isfinite(quad).all() and same_part.all() and np.ptp(quad) <= max(0.01, 0.05 * z):
            du, dv = u - c0, v - r0
            weights = np.array([[(1 - du) * (1 - dv), du * (1 - dv)], [(1 - du) * dv, du * dv]])
            z = 1.0 / float((weights / quad).sum())
    return _to_base(scene, scene.intrinsics.deproject(u, v, z))


def lift_error_mm(scene: Any, u: float, v: float, grasp_base: Any) -> float | None:
    """Distance (mm) from a lifted point in base_link to the true surface point at pixel (u, v)."""
    truth = true_surface_point(scene, u, v)
    if grasp_base is None or truth is None:
        return None
    return 1000.0 * float(np.linalg.norm(np.asarray(grasp_base, dtype=np.float64) - truth))


def part_surface_points(scene: Any, part_ids: Any) -> np.ndarray:
    """(N, 3) base_link points of the visible pixels of the parts ``part_ids`` (their union).

    Each pixel centre lifted with its true depth; pixels without depth are left out.
    """
    mask = np.isin(scene.part_ids, np.asarray(list(part_ids), dtype=scene.part_ids.dtype))
    rows, cols = np.nonzero(mask & np.isfinite(scene.depth_m))
    z = scene.depth_m[rows, cols].astype(np.float64)
    k = scene.intrinsics
    optical = np.stack([(cols - k.cx) / k.fx * z, (rows - k.cy) / k.fy * z, z], axis=-1)
    return _to_base(scene, optical)


def part_surface_mm(scene: Any, part_ids: Any, grasp_base: Any) -> float | None:
    """Distance (mm) from a point in base_link to the visible surface of the parts ``part_ids``.

    The minimum over the part's pixel-centre surface points (part_surface_points) and, when the point
    projects onto the part, the true surface point at its own projection (true_surface_point), so a
    point on the surface between pixel centres reads ~0 rather than up to half a pixel's footprint.
    None when the point is None or the part has no visible pixel.
    """
    if grasp_base is None:
        return None
    points = part_surface_points(scene, part_ids)
    if not len(points):
        return None
    grasp = np.asarray(grasp_base, dtype=np.float64)
    pose = np.asarray(scene.camera_pose, dtype=np.float64)
    optical = pose[:3, :3].T @ (grasp - pose[:3, 3])
    if optical[2] > 0:
        (u, v), height, width = scene.intrinsics.project(optical)[0], *scene.part_ids.shape
        col, row = int(round(u)), int(round(v))
        if 0 <= col < width and 0 <= row < height and int(scene.part_ids[row, col]) in set(part_ids):
            own = true_surface_point(scene, float(u), float(v))
            if own is not None:
                points = np.vstack([points, own])
    return 1000.0 * float(np.min(np.linalg.norm(points - grasp, axis=1)))


def _nearest_pixel(points: list[list[float]], u: float, v: float) -> int:
    if not points or not (math.isfinite(u) and math.isfinite(v)):
        return 0
    return int(np.argmin([math.hypot(p[0] - u, p[1] - v) for p in points]))


def _score(s: _Scene, index: int, response: Any, fused: Any) -> dict[str, Any]:
    """One row of the summary: the answer, 2D hit, and the 3D numbers against the render.

    hit: the returned pixel lies in the query's mask, whether or not the node said ``found``.
    lift_error_mm: the service's grasp point vs the true surface point at the returned pixel.
    part_surface_mm (hits only): the grasp point's distance to the target part's visible surface.
    """
    q = s.truth["queries"][index]
    query = s.scene.queries[index]
    point = response.point
    u, v = float(point.u), float(point.v)
    mask = s.scene.query_mask(query)  # (H, W) bool
    height, width = mask.shape
    col, row = (round(u), round(v)) if math.isfinite(u) and math.isfinite(v) else (-1, -1)
    inside = 0 <= col < width and 0 <= row < height
    hit = bool(inside and mask[row, col])  # on the 2D point: found or not
    grasp = None
    if response.has_grasp_pose:
        p = response.grasp_pose.pose.position
        grasp = [float(p.x), float(p.y), float(p.z)]
    surface = true_surface_point(s.scene, u, v)
    fusion_delta = None
    if fused is not None and fused.has_3d and grasp:
        f = fused.grasp_pose.pose.position
        fusion_delta = 1000.0 * float(np.linalg.norm(np.subtract([f.x, f.y, f.z], grasp)))
    return {
        "seed": s.seed,
        "query_index": index,
        "query": q["text"],
        "kind": q["kind"],
        "ambiguous": bool(q["ambiguous"]),
        "u": u,
        "v": v,
        "score": float(point.score),
        "found": bool(point.found),
        "grasp_base": grasp,
        "surface_base": surface.tolist() if surface is not None else None,
        "lift_error_mm": lift_error_mm(s.scene, u, v, grasp),
        "part_surface_mm": part_surface_mm(s.scene, query.part_ids, grasp) if hit else None,
        "gt_pixel": q["points_2d"][_nearest_pixel(q["points_2d"], u, v)] if q["points_2d"] else None,
        "gt_instances": len(q["points_3d"]),
        "hit": hit,
        "fusion_delta_mm": fusion_delta,
        "latency_ms": float(response.latency_ms),
        "message": response.message,
    }


def _xyz(values: list[float] | None, unit: str = " m") -> str:
    return "(" + ", ".join(f"{x:.4f}" for x in values) + ")" + unit if values else "n/a"


def _mm(value: float | None) -> str:
    return f"{value:.1f} mm" if value is not None else "n/a"


def format_row(row: dict[str, Any]) -> str:
    """The printed line of one query: lift = grasp vs the true surface at the pixel, part = to the part."""
    found = "found" if row["found"] else "found: FALSE (no 3D point)"
    return (
        f"[{row['seed']}] {row['kind']:<9} {json.dumps(row['query'])}  px ({row['u']:.1f}, {row['v']:.1f}) "
        f"score {row['score']:.2f} {found}  grasp {_xyz(row['grasp_base'])}  "
        f"surface {_xyz(row['surface_base'])}  lift err {_mm(row['lift_error_mm'])}  "
        f"part {_mm(row['part_surface_mm'])}  {'HIT' if row['hit'] else 'MISS'}"
    )


# ---------------------------------------------------------------------- images
def _heat_colour(heat: np.ndarray) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 RGB, JET over the map's own range."""
    span = float(heat.max() - heat.min())
    norm = (heat - heat.min()) / span * 255.0 if span > 0 else np.zeros_like(heat)
    return cv2.applyColorMap(norm.astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB


def draw_demo_overlay(
    rgb: np.ndarray, heat: np.ndarray | None, mask: np.ndarray, row: dict[str, Any], gt_pixels: list
) -> np.ndarray:
    """Image + heatmap + the query's mask outline + GT points (nearest larger) + the answer's marker."""
    out = np.ascontiguousarray(rgb.copy())
    if heat is not None:
        out = cv2.addWeighted(out, 0.55, np.ascontiguousarray(_heat_colour(heat)), 0.45, 0.0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    for gu, gv in gt_pixels:
        nearest = row["gt_pixel"] is not None and [gu, gv] == list(row["gt_pixel"])
        cv2.circle(out, (int(gu), int(gv)), 5 if nearest else 3, (255, 255, 0), 2 if nearest else 1)
    if math.isfinite(row["u"]) and math.isfinite(row["v"]):
        centre = (int(round(row["u"])), int(round(row["v"])))
        size = max(8, int(0.05 * max(out.shape[:2])))
        cv2.drawMarker(out, centre, (255, 255, 255), cv2.MARKER_CROSS, size + 4, 4)
        cv2.drawMarker(out, centre, (0, 255, 0) if row["hit"] else (255, 0, 0), cv2.MARKER_CROSS, size, 2)
    return out


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):  # RGB -> BGR for OpenCV
        raise DemoError(f"cannot write {path}")


def _save_images(out: Path, s: _Scene, row: dict[str, Any], heat_msg: Image | None) -> None:
    stem = f"seed{s.seed}_q{row['query_index']:02d}"
    heat = image_to_numpy(heat_msg).astype(np.float32) if heat_msg is not None else None
    if heat is not None and heat_msg.encoding == "32FC1":
        _write_png(out / f"{stem}_heatmap.png", _heat_colour(heat))
        row["heatmap_png"] = f"{stem}_heatmap.png"
    q = s.truth["queries"][row["query_index"]]
    overlay = draw_demo_overlay(
        s.scene.rgb, heat, s.scene.query_mask(s.scene.queries[row["query_index"]]), row, q["points_2d"]
    )
    _write_png(out / f"{stem}_overlay.png", overlay)
    row["overlay_png"] = f"{stem}_overlay.png"


# ---------------------------------------------------------------------- summary
def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of the rows, over all queries and per query kind.

    accuracy: 2D hits / queries (found or not). median_lift_error_mm and lift_error_quartiles_mm
    ([25th, 75th] percentile): over every query with a lift error (a 3D point on a pixel that sees
    a surface), counted in lift_errors. median_part_surface_mm_hits and hits_within_5mm_of_part (the
    fraction with part_surface_mm <= PART_SURFACE_TOL_MM): over the hits with a 3D point, counted in
    hits_with_3d. None where there is nothing to take them over.
    """

    def stats(subset: list[dict[str, Any]]) -> dict[str, Any]:
        hits = [r for r in subset if r["hit"]]
        lifts = [r["lift_error_mm"] for r in subset if r["lift_error_mm"] is not None]
        parts = [r["part_surface_mm"] for r in hits if r["part_surface_mm"] is not None]
        return {
            "queries": len(subset),
            "hits": len(hits),
            "accuracy": len(hits) / len(subset) if subset else None,
            "found": sum(bool(r["found"]) for r in subset),
            "lift_errors": len(lifts),
            "median_lift_error_mm": float(np.median(lifts)) if lifts else None,
            "lift_error_quartiles_mm": [float(x) for x in np.percentile(lifts, [25, 75])] if lifts else None,
            "hits_with_3d": len(parts),
            "median_part_surface_mm_hits": float(np.median(parts)) if parts else None,
            "hits_within_5mm_of_part": (
                sum(d <= PART_SURFACE_TOL_MM for d in parts) / len(parts) if parts else None
            ),
        }

    kinds = sorted({r["kind"] for r in rows})
    return {**stats(rows), "by_kind": {k: stats([r for r in rows if r["kind"] == k]) for k in kinds}}


def summary_sentence(summary: dict[str, Any]) -> str:
    """Accuracy and the two 3D numbers in words (summary.md and the demo's last line)."""
    acc = summary["accuracy"]
    accuracy = "n/a" if acc is None else f"{100.0 * acc:.1f} %"
    text = (
        f"accuracy {summary['hits']}/{summary['queries']} = {accuracy} "
        f"(2D, found or not; {summary['found']} found); "
    )
    if summary["median_lift_error_mm"] is None:
        text += "lift error n/a (no 3D point); "
    else:
        q1, q3 = summary["lift_error_quartiles_mm"]
        text += (
            f"lift error (grasp point vs the true surface at its pixel) median "
            f"{summary['median_lift_error_mm']:.1f} mm, quartiles {q1:.1f} / {q3:.1f} mm over "
            f"{summary['lift_errors']} points; "
        )
    within = summary["hits_within_5mm_of_part"]
    if within is None:
        text += "distance to the part n/a (no hit with a 3D point)"
    else:
        text += (
            f"hits within {PART_SURFACE_TOL_MM:g} mm of the part's surface "
            f"{round(within * summary['hits_with_3d'])}/{summary['hits_with_3d']} = {100.0 * within:.1f} %, "
            f"median {summary['median_part_surface_mm_hits']:.1f} mm"
        )
    return text


def _markdown(summary: dict[str, Any]) -> str:
    def num(x: Any, fmt: str) -> str:
        return format(x, fmt) if x is not None else "n/a"

    threshold = summary["score_threshold"]
    lines = [
        "# part-point demo",
        "",
        f"{summary['method']} on `{summary['backbone']}`"
        + (f", head `{summary['head']}`" if summary["head"] else ""),
        f"seeds {', '.join(map(str, summary['seeds']))}; wall time {summary['wall_time_s']:.1f} s "
        f"(startup {summary['startup_s']:.1f} s)",
        f"score threshold {threshold['effective']:.2f} (parameter {threshold['parameter']:g}, "
        f"{threshold['source']}): answers under it are found: false and have no 3D point",
        "",
        f"**{summary_sentence(summary)}**",
        "",
        "lift error: grasp point (base_link) vs the renderer's true surface point at the returned pixel; "
        "to part: grasp point vs the nearest point of the target part's visible surface (hits only).",
        "",
        "| seed | kind | query | pixel (u, v) | score | found | grasp point, base_link (m) "
        "| true surface at the pixel (m) | lift error (mm) | to part (mm) | hit |",
        "| ---: | --- | --- | --- | ---: | --- | --- | --- | ---: | ---: | --- |",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['seed']} | {r['kind']} | {r['query']} | ({r['u']:.1f}, {r['v']:.1f}) | {r['score']:.2f} | "
            f"{'yes' if r['found'] else '**no**'} | {_xyz(r['grasp_base'], '')} | "
            f"{_xyz(r['surface_base'], '')} | "
            f"{num(r['lift_error_mm'], '.1f')} | {num(r['part_surface_mm'], '.1f')} | "
            f"{'hit' if r['hit'] else 'miss'} |"
        )
    lines += [
        "",
        f"Recording: `{summary['recording']['path']}` ({summary['recording']['messages']} messages)",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- the run
def _query(client: _Client, s: _Scene, index: int, out: Path) -> dict[str, Any]:
    """Ask one query of the scene; its scored row, with its overlay and heatmap written."""
    text = s.truth["queries"][index]["text"]
    n_heat, n_fused = len(client.heatmaps), len(client.fused)
    response, stamp = _ask(client, s, text)
    fused = None

    def same_frame(m: Any) -> bool:
        return _stamp_ns(m.header.stamp) == stamp

    # the node publishes the heatmap found or not; depth_fusion_node answers every point (has_3d or why not)
    heat = _wait_output(client, client.heatmaps, n_heat, same_frame)
    fused_array = _wait_output(
        client, client.fused, n_fused, lambda m: same_frame(m) and any(p.query == text for p in m.points)
    )
    if fused_array is not None:
        fused = next(p for p in fused_array.points if p.query == text)
    row = _score(s, index, response, fused)
    _save_images(out, s, row, heat)
    return row


@contextmanager
def _running_graph(options: DemoOptions, config: dict[str, Any], out: Path, domain: int) -> Iterator[Any]:
    """The graph + the demo's client + the recorder, spinning; everything stopped on exit."""
    ros_args = [] if options.verbose else ["--ros-args", "--log-level", "warn"]
    with localhost_discovery():
        context = Context()
        rclpy.init(
            args=["part-point-demo", *ros_args],
            context=context,
            domain_id=domain,
            signal_handler_options=SignalHandlerOptions.NO,
        )
        graph = client = recorder = recorder_node = spinner = None
        try:
            graph = Bringup(
                BringupOptions(params_file=out / "params.yaml", use_sim_camera=True, threads=4),
                context=context,
            )
            logger = graph.part_point.get_logger()
            if not options.verbose:  # a configure failure is said once, in the error line below
                logger.set_level(LoggingSeverity.FATAL)
            if not graph.start():
                raise DemoError(f"part_point_node did not start: {graph.part_point.last_error}")
            if not options.verbose:
                logger.set_level(LoggingSeverity.WARN)
            client = _Client(context=context, config=config, timeout=options.timeout)
            recorder_node = Node("part_point_demo_recorder", context=context)
            for node in (client.node, recorder_node):
                graph.executor.add_node(node)
            spinner = threading.Thread(target=_spin, args=(graph,), name="demo_executor", daemon=True)
            spinner.start()
            recorder = McapRecorder(node=recorder_node, path=out / "session.mcap", library="part-point demo")
            recorder.record(recorded_topics(config), timeout=options.timeout)
            yield client, recorder
        finally:
            if recorder is not None:
                recorder.close()
            if graph is not None:
                _stop_executor(graph.executor, spinner)
                graph.shutdown()  # destroys the graph's nodes
            for node in (client.node if client else None, recorder_node):
                if node is not None:
                    node.destroy_node()
            context.try_shutdown()


def run_demo(options: DemoOptions, *, stdout: TextIO | None = None) -> dict[str, Any]:
    """Run the demo; its summary (also written to ``options.out``). PartPointError on setup failures."""
    stdout = stdout or sys.stdout
    start = time.perf_counter()

    def say(line: str) -> None:
        print(line, file=stdout, flush=True)

    out = options.out
    if options.untrained:
        say(UNTRAINED_BANNER)
        backbone, head = build_untrained_models(out / "untrained")
    else:  # say what is missing before anything is written
        head = resolve_model(options.head, flag="--head") if options.method == "a2p" else ""
        backbone = resolve_model(options.backbone, flag="--backbone")
        if options.method == "attention" and not options.heads and options.backbone == DEFAULT_BACKBONE:
            options = replace(options, heads=str(Path(backbone).parent / Path(DEFAULT_HEADS).name))
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("seed*_q*_overlay.png"), *out.glob("seed*_q*_heatmap.png")]:
        old.unlink()  # outputs of an earlier run
    config = demo_parameters(options, backbone=backbone, head=head)
    (out / "params.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    threshold = score_threshold(options, config)
    domain = options.domain_id if options.domain_id is not None else private_domain_id()
    if not options.verbose:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars of part_point_node
    say(
        f"part-point demo: ROS_DOMAIN_ID {domain}, discovery limited to this machine (localhost); "
        f"{options.method} on {backbone}" + (f" + {head}" if head else "")
    )
    say(threshold_line(threshold))
    rows: list[dict[str, Any]] = []
    with _running_graph(options, config, out, domain) as (client, recorder):
        state = client.call(client.lifecycle, GetState.Request(), "the lifecycle state of part_point_node")
        if state.current_state.id != State.PRIMARY_STATE_ACTIVE:
            raise DemoError(f"part_point_node is {state.current_state.label}, not active")
        startup_s = time.perf_counter() - start
        say(f"graph ready in {startup_s:.1f} s: part_point_node active, camera streaming")
        for seed in options.seeds:
            s = _switch_scene(client, seed, config["sim_camera_node"]["ros__parameters"])
            for index in pick_queries(s.truth, options.queries_per_scene):
                rows.append(_query(client, s, index, out))
                say(format_row(rows[-1]))
        counts = recorder.close()
    summary = {
        "seeds": list(options.seeds),
        "method": options.method,
        "untrained": options.untrained,
        "backbone": backbone,
        "head": head,
        "ros": {"domain_id": domain, "discovery": "localhost"},
        "score_threshold": threshold,
        **summarize(rows),
        "wall_time_s": time.perf_counter() - start,
        "startup_s": startup_s,
        "recording": {"path": "session.mcap", "messages": sum(counts.values()), "per_topic": counts},
        "rows": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary))
    deltas = [r["fusion_delta_mm"] for r in rows if r["fusion_delta_mm"] is not None]
    if deltas and max(deltas) > 1.0:
        say(
            f"warning: depth_fusion_node's grasp poses differ from /point_part's by up to "
            f"{max(deltas):.1f} mm (camera pose or depth frame not the same)"
        )
    say(
        f"{summary_sentence(summary)}; wall time {summary['wall_time_s']:.1f} s; "
        f"wrote {out}/summary.md, summary.json, session.mcap, {2 * len(rows)} PNGs"
    )
    return summary


def _wait_output(client: _Client, inbox: list, start: int, match: Callable[[Any], bool]) -> Any:
    """The message published for this answer, or None if none came within OUTPUT_WAIT_S."""
    try:
        return client.wait(
            lambda: client.published_after(inbox, start, match),
            "an output",
            min(OUTPUT_WAIT_S, client.timeout),
        )
    except DemoError:
        return None


def _stop_executor(executor: Any, spinner: threading.Thread | None) -> None:
    """Stop spinning and wait for the spin thread; Bringup.shutdown() then drains the callbacks in flight."""
    executor.shutdown()
    if spinner is not None:
        spinner.join(timeout=10.0)


def _spin(graph: Bringup) -> None:
    try:
        graph.spin()
    except ExternalShutdownException:
        pass


def options_from_args(args: Any) -> DemoOptions:
    """argparse namespace of ``part-point demo`` -> DemoOptions (flags not given keep the defaults)."""
    from part_point_ros.sim.generate import parse_seeds

    given: dict[str, Any] = {}
    names = (
        "out",
        "queries_per_scene",
        "backbone",
        "head",
        "method",
        "heads",
        "timeout",
        "domain_id",
        "untrained",
        "score_threshold",
    )
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            given[name] = value
    if getattr(args, "seeds", None):
        given["seeds"] = tuple(parse_seeds(args.seeds))
    return DemoOptions(**given, verbose=bool(getattr(args, "verbose", False)))


def main(args: Any) -> int:
    """``part-point demo`` (the CLI's handler): 0 when the run completes."""
    run_demo(options_from_args(args))
    return 0
