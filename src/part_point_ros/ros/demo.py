"""``part-point demo``: the whole ROS 2 graph on the synthetic RGB-D world, end to end.

Starts sim_camera_node, part_point_node (lifecycle) and depth_fusion_node in this process (bringup,
real ROS 2 over DDS) on a private ROS_DOMAIN_ID with discovery limited to this machine, so it never
talks to a robot on the LAN. Then, for each scene seed: switches the sim camera to it (its
``set_parameters`` service), checks that the published colour image equals ``render_scene(seed)``
(so ground truth and camera cannot drift apart), picks queries from the latched ground truth on
/sim_camera/ground_truth, asks /point_part for each as a service client and scores the answer:
2D hit = the pixel lies in the query's part mask; 3D error = distance from the grasp point in
base_link to the nearest ground-truth instance point. Writes to ``--out``: overlay and heatmap
PNGs, summary.json / summary.md, params.yaml (the node parameters used) and session.mcap (the
session's topics, readable by Foxglove and ``ros2 bag info``).

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
from part_point_ros.ros.params import default_config_path
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
_SOURCE_ROOT = Path(__file__).resolve().parents[3]
_HOW_TO_GET = {
    DEFAULT_BACKBONE: "it ships in the repository's models/ (run from the checkout, e.g. scripts/demo.sh), "
    "or train it: python scripts/train_tiny_tabletop.py --out models/tiny-tabletop-llava; "
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
    """The node parameter file of the demo: the base file, the model, and the demo's settings."""
    base = options.params_file or default_config_path()
    config = yaml.safe_load(Path(base).read_text())
    pp = config["part_point_node"]["ros__parameters"]
    pp.update(backbone=backbone, head=head, method=options.method, heads_file=options.heads)
    # every query gets its best point (the score is reported); a busy 2-core box may lag a little
    pp.update(score_threshold=0.0, max_image_age_s=5.0)
    config["sim_camera_node"]["ros__parameters"].update(seed=options.seeds[0], rate_hz=CAMERA_RATE_HZ)
    for node, values in options.extra_parameters.items():
        config[node]["ros__parameters"].update(values)
    return config


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
        return next((d for s, d in self.frames if s == stamp_ns), None)

    def first_frame(self, digest: str) -> int | None:
        """Stamp of the first frame since the last scene switch, if it shows the image ``digest``.

        DemoError when it shows something else: the camera and render_scene() drifted apart.
        """
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


def _nearest(points: list[list[float]], target: np.ndarray | None) -> int:
    if not points or target is None:
        return 0
    return int(np.argmin([np.linalg.norm(np.asarray(p) - target) for p in points]))


def _score(s: _Scene, index: int, response: Any, fused: Any) -> dict[str, Any]:
    """One row of the summary: the answer, the ground truth it is compared to, hit and error."""
    q = s.truth["queries"][index]
    point = response.point
    u, v = float(point.u), float(point.v)
    mask = s.scene.query_mask(s.scene.queries[index])  # (H, W) bool
    height, width = mask.shape
    col, row = (round(u), round(v)) if math.isfinite(u) and math.isfinite(v) else (-1, -1)
    inside = 0 <= col < width and 0 <= row < height
    hit = bool(point.found and inside and mask[row, col])
    grasp = None
    if response.has_grasp_pose:
        p = response.grasp_pose.pose.position
        grasp = [float(p.x), float(p.y), float(p.z)]
    pixel = np.array([u, v]) if inside else None
    nearest = _nearest(q["points_3d"], np.asarray(grasp)) if grasp else _nearest(q["points_2d"], pixel)
    gt = q["points_3d"][nearest] if q["points_3d"] else None
    error = 1000.0 * float(np.linalg.norm(np.subtract(grasp, gt))) if grasp and gt else None
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
        "gt_base": gt,
        "gt_pixel": q["points_2d"][nearest] if q["points_2d"] else None,
        "gt_instances": len(q["points_3d"]),
        "error_mm": error,
        "hit": hit,
        "fusion_delta_mm": fusion_delta,
        "latency_ms": float(response.latency_ms),
        "message": response.message,
    }


def _xyz(values: list[float] | None) -> str:
    return "(" + ", ".join(f"{x:.4f}" for x in values) + ")" if values else "n/a"


def format_row(row: dict[str, Any]) -> str:
    """The printed line of one query."""
    err = f"{row['error_mm']:.1f} mm" if row["error_mm"] is not None else "n/a"
    return (
        f"[{row['seed']}] {row['kind']:<9} {json.dumps(row['query'])}  px ({row['u']:.1f}, {row['v']:.1f}) "
        f"score {row['score']:.2f}  grasp {_xyz(row['grasp_base'])} m  gt {_xyz(row['gt_base'])} m  "
        f"err {err}  {'HIT' if row['hit'] else 'MISS'}"
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
    """Accuracy (2D hits / queries), median 3D error over the 2D hits, the same per query kind."""

    def stats(subset: list[dict[str, Any]]) -> dict[str, Any]:
        hits = sum(r["hit"] for r in subset)
        errors = [r["error_mm"] for r in subset if r["hit"] and r["error_mm"] is not None]
        return {
            "queries": len(subset),
            "hits": hits,
            "accuracy": hits / len(subset) if subset else None,
            "median_error_mm_hits": float(np.median(errors)) if errors else None,
        }

    kinds = sorted({r["kind"] for r in rows})
    return {**stats(rows), "by_kind": {k: stats([r for r in rows if r["kind"] == k]) for k in kinds}}


def _markdown(summary: dict[str, Any]) -> str:
    def num(x: Any, fmt: str) -> str:
        return format(x, fmt) if x is not None else "n/a"

    lines = [
        "# part-point demo",
        "",
        f"{summary['method']} on `{summary['backbone']}`"
        + (f", head `{summary['head']}`" if summary["head"] else ""),
        f"seeds {', '.join(map(str, summary['seeds']))}; wall time {summary['wall_time_s']:.1f} s "
        f"(startup {summary['startup_s']:.1f} s)",
        "",
        f"**accuracy {summary['hits']}/{summary['queries']} = {num(summary['accuracy'], '.1%')}**, "
        f"median 3D error over the 2D hits {num(summary['median_error_mm_hits'], '.1f')}"
        + (" mm" if summary["median_error_mm_hits"] is not None else ""),
        "",
        "| seed | kind | query | pixel (u, v) | score | grasp point, base_link (m) | ground truth (m) "
        "| error (mm) | hit |",
        "| ---: | --- | --- | --- | ---: | --- | --- | ---: | --- |",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['seed']} | {r['kind']} | {r['query']} | ({r['u']:.1f}, {r['v']:.1f}) | {r['score']:.2f} | "
            f"{_xyz(r['grasp_base'])} | {_xyz(r['gt_base'])} | {num(r['error_mm'], '.1f')} | "
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
    heat = fused = None
    if response.point.found:  # the node published a heatmap, depth_fusion_node lifts the point

        def same_frame(m: Any) -> bool:
            return _stamp_ns(m.header.stamp) == stamp

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
    domain = options.domain_id if options.domain_id is not None else private_domain_id()
    if not options.verbose:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars of part_point_node
    say(
        f"part-point demo: ROS_DOMAIN_ID {domain}, discovery limited to this machine (localhost); "
        f"{options.method} on {backbone}" + (f" + {head}" if head else "")
    )
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
    acc, med = summary["accuracy"], summary["median_error_mm_hits"]
    accuracy = "n/a" if acc is None else f"{100.0 * acc:.1f} %"
    say(
        f"accuracy {summary['hits']}/{summary['queries']} = {accuracy}, "
        f"median 3D error over the 2D hits {'n/a' if med is None else f'{med:.1f} mm'}; "
        f"wall time {summary['wall_time_s']:.1f} s; wrote {out}/summary.md, summary.json, session.mcap, "
        f"{2 * len(rows)} PNGs"
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
