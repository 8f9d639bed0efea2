"""``part-point-ros-stress``: fuzz, fault and soak a LIVE part pointing graph; one table, an exit status.

Run it against a graph started by ``part-point-ros --sim-camera ...`` or ``ros2 launch part_point_ros
grasp.launch.py ...`` (same ROS_DOMAIN_ID). Each check is a row of the table (a count of 0 skips it):

  fuzz         N requests to the PointPart service with random fields: empty, blank, huge, unicode,
               control-character and special-token (<image>, </s>) queries; no image (the latest
               frame) or random images of random sizes (0 .. 1920 px, and 10^4..10^5 px without data),
               encodings (valid, unsupported, empty), steps, data lengths, byte orders and stamps;
               random target frames and methods
  fault: ...   camera data the graph must reject, published on its camera topics for --fault-s s while
               requests and commands run: camera_info with K[2][2]=0, NaN in K or D, fx=inf,
               fx=1e-300, zero size; colour of another size than camera_info, depth of another size
               than colour, NaN / negative / infinite / zero depth, wrong encodings, truncated data.
               After each check every node must still answer (get_parameters, and the service)
  burst        B requests at once
  concurrent   C clients x R requests, each client waiting for its answer before its next request
  soak         T seconds at H Hz of requests (or command-topic messages: --soak-mode command) while
               the RSS of the graph's processes is sampled each second from /proc (found by command
               line, in this ROS_DOMAIN_ID: part_point_node, depth_fusion_node, sim_camera_node,
               part-point-ros; or --pid)

Columns: answered; busy (answered "busy: ...", allowed); lost (no answer within --timeout s, also
the one request sent after each check); bad (a success with a non-finite or off-image point or a
non-finite or > 1 km pose, an answer saying "internal error" or of several lines, or such a pose on
the grasp pose topic); crashes (a node that stopped answering get_parameters, a process gone).
RSS: median of the first 10 s after the warm-up, median of the last 10 s, growth in %. The valid
queries are the sim camera's (its ground truth topic), else a fixed few. Exit status: 0 when nothing
was lost, bad or crashed and no RSS grew more than --max-rss-growth %; 1 otherwise; 2 when the
service never appeared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.srv import GetParameters
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from part_point_ros.msg import PartPointArray
from part_point_ros.ros.conversions import image_to_numpy
from part_point_ros.ros.qos import latched_qos, results_qos, sensor_qos
from part_point_ros.ros.stress_inputs import (
    FRAMES,
    METHODS,
    QUERIES,
    bad_answer,
    bad_pose,
    faults,
    fuzz_image,
    fuzz_query,
)
from part_point_ros.srv import PointPart

NODE_NAMES = ("part_point_node", "depth_fusion_node", "sim_camera_node")
PROCESS_NAMES = {n: n for n in NODE_NAMES} | {f"part_point_ros.ros.{n}": n for n in NODE_NAMES}
PROCESS_NAMES |= {"part-point-ros": "part-point-ros", "part_point_ros.ros.bringup": "part-point-ros"}


@dataclass
class Row:
    check: str
    count: int = 0
    answered: int = 0
    busy: int = 0
    lost: int = 0
    bad: int = 0
    crashes: int = 0
    rss: tuple[float, float] | None = None  # MB after the warm-up, at the end (RSS rows only)

    @property
    def growth(self) -> float:
        return 100.0 * (self.rss[1] - self.rss[0]) / self.rss[0] if self.rss and self.rss[0] else math.inf


# ---------------------------------------------------------------------- processes
def find_processes(names: dict[str, str] = PROCESS_NAMES) -> dict[int, str]:
    """pid -> label of each process of this ROS_DOMAIN_ID whose program, script or -m module is named."""
    found, domain = {}, os.environ.get("ROS_DOMAIN_ID", "0").encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            env = dict(v.partition(b"=")[::2] for v in (entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        labels = [names.get(os.path.basename(a.decode(errors="replace"))) for a in argv[:3]]
        if any(labels) and env.get(b"ROS_DOMAIN_ID", b"0") == domain:
            found[int(entry.name)] = f"{next(filter(None, labels))} (pid {entry.name})"
    return found


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB; None when it is gone (or a zombie)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(x.split()[1]) / 1024.0 for x in lines if x.startswith("VmRSS:")), None)


def wait_all(futures: Sequence, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(f.done() for f in futures):
        time.sleep(0.01)


def log(text: str) -> None:
    print(f"[stress] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- the checks
class Stress:
    """The tool's own node, spinning on a background executor, and the checks that use it."""

    def __init__(self, o: argparse.Namespace, context: Context) -> None:
        self.o, self.rng = o, np.random.default_rng(o.seed)
        self.node = node = Node("part_point_stress", context=context)
        self.deep = QoSProfile(depth=max(100, 2 * o.burst), reliability=ReliabilityPolicy.RELIABLE)
        self.client = node.create_client(PointPart, o.service, qos_profile=self.deep)
        ns = o.camera_namespace.rstrip("/")
        topics = {"color": o.color_topic, "info": o.camera_info_topic, "depth": o.depth_topic}
        topics = {k: t if t.startswith("/") else f"{ns}/{t}" for k, t in topics.items()}
        types = {"color": Image, "info": CameraInfo, "depth": Image}
        self.pubs = {k: node.create_publisher(types[k], t, sensor_qos()) for k, t in topics.items()}
        self.pubs["points"] = node.create_publisher(PartPointArray, o.points_topic, results_qos())
        self.command = node.create_publisher(String, o.command_topic, results_qos())
        self.sizes: set[tuple[int, int]] = set()  # colour image sizes heard on the camera topic
        self.info: CameraInfo | None = None  # the first valid camera_info heard
        self.rgb: np.ndarray | None = None  # the first colour frame of its size
        self.row: Row | None = None  # the check running now: grasp poses count against it
        self.queries, self.points_heard, self.dead = QUERIES, 0, set()
        self.param_clients, self.processes = {}, {}
        node.create_subscription(Image, topics["color"], self._on_color, sensor_qos())
        node.create_subscription(CameraInfo, topics["info"], self._on_info, sensor_qos())
        node.create_subscription(PoseStamped, o.grasp_pose_topic, self._on_pose, results_qos())
        node.create_subscription(PartPointArray, o.points_topic, self._on_points, results_qos())
        if o.ground_truth_topic:
            node.create_subscription(String, o.ground_truth_topic, self._on_truth, latched_qos())
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self.executor.add_node(node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _on_color(self, msg: Image) -> None:
        self.sizes.add((msg.width, msg.height))
        if self.rgb is None and self.info and (msg.width, msg.height, msg.encoding) == (*self.size, "rgb8"):
            self.rgb = image_to_numpy(msg)

    def _on_info(self, msg: CameraInfo) -> None:
        if self.info is None and msg.width and msg.height and all(map(math.isfinite, msg.k)) and msg.k[0] > 1:
            self.info = msg

    def _on_truth(self, msg: String) -> None:
        try:
            self.queries = tuple(q["text"] for q in json.loads(msg.data)["queries"]) or QUERIES
        except (ValueError, KeyError, TypeError):
            pass

    def _on_points(self, msg: PartPointArray) -> None:
        self.points_heard += 1

    def _on_pose(self, msg: PoseStamped) -> None:
        why = bad_pose(msg)
        if why and self.row is not None:
            self.bad(self.row, f"on {self.o.grasp_pose_topic}: {why}")

    @property
    def size(self) -> tuple[int, int]:
        return (self.info.width, self.info.height) if self.info else (320, 240)

    def bad(self, row: Row, why: str) -> None:
        row.bad += 1
        if row.bad <= 5:
            log(f"{row.check}: BAD {why}")

    # ------------------------------------------------------------------ setup and liveness
    def connect(self) -> bool:
        if not self.client.wait_for_service(timeout_sec=self.o.wait_s):
            log(f"error: service {self.o.service} did not appear within {self.o.wait_s:g} s")
            return False
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and (self.rgb is None or not self._graph_nodes()):
            time.sleep(0.1)
        for name in self._graph_nodes():
            self.param_clients[name] = self.node.create_client(GetParameters, f"{name}/get_parameters")
        self.processes = {p: f"pid {p}" for p in self.o.pid} if self.o.pid else find_processes()
        for pub in self.pubs.values():
            while time.monotonic() < deadline and not pub.get_subscription_count():
                time.sleep(0.1)
        processes = ", ".join(self.processes.values()) or "none"
        log(f"nodes: {', '.join(self.param_clients) or 'none'}; processes: {processes}")
        return True

    def _graph_nodes(self) -> list[str]:
        found = self.node.get_node_names_and_namespaces()
        return sorted(f"{ns.rstrip('/')}/{name}" for name, ns in found if name in NODE_NAMES)

    def check_alive(self, row: Row) -> None:
        """Every node answers get_parameters and every process is there (else a crash); the service
        answers one more request (else it counts lost: an overloaded service is late, not dead)."""
        request = GetParameters.Request(names=["use_sim_time"])
        calls = {n: c.call_async(request) for n, c in self.param_clients.items()}
        client, probe, _ = self.latest(0)
        wait_all([*calls.values(), probe], self.o.timeout)
        if not probe.done():
            row.lost += 1
            client.remove_pending_request(probe)
            log(f"{row.check}: LOST {self.o.service} did not answer within {self.o.timeout:g} s")
        dead = {n for n, f in calls.items() if not f.done()}
        dead |= {label for pid, label in self.processes.items() if rss_mb(pid) is None}
        for name in sorted(dead - self.dead):
            log(f"{row.check}: CRASH {name} does not answer or is gone")
        row.crashes += len(dead - self.dead)
        self.dead |= dead

    # ------------------------------------------------------------------ requests
    def latest(self, i: int, client=None) -> tuple:
        """A request on the latest frame: (client, future, image size None)."""
        client = client or self.client
        return client, client.call_async(PointPart.Request(query=self.queries[i % len(self.queries)])), None

    def tally(self, row: Row, calls: list, timeout: float) -> None:
        """Wait up to ``timeout`` s for the (client, future, image size) ``calls``; count them in ``row``."""
        wait_all([f for _, f, _ in calls], timeout)
        sizes = list(self.sizes) or [self.size]
        frame = (max(w for w, _ in sizes), max(h for _, h in sizes))
        for client, future, size in calls:
            if not future.done():
                row.lost += 1
                client.remove_pending_request(future)
                continue
            answer = future.result()
            row.answered += 1
            row.busy += answer.message.startswith("busy")
            if why := bad_answer(answer, size or frame):
                self.bad(row, why)

    def fuzz(self) -> list[Row]:
        row, calls = Row("fuzz", count=self.o.fuzz), []
        for _ in range(self.o.fuzz):
            request = PointPart.Request(query=fuzz_query(self.rng, self.queries))
            if self.rng.random() < 0.3:
                request.target_frame = str(self.rng.choice(FRAMES))
            if self.rng.random() < 0.2:
                request.method = str(self.rng.choice(METHODS))
            request.image, size = fuzz_image(self.rng, self.node.get_clock().now().to_msg())
            calls.append((self.client, self.client.call_async(request), size))
            while sum(not f.done() for _, f, _ in calls[-50:]) >= self.o.parallel:
                time.sleep(0.002)
        self.tally(row, calls, self.o.timeout)
        return [row]

    def faults(self) -> list[Row]:
        rows, rgb = [], self.rgb if self.rgb is not None else np.zeros((*self.size[::-1], 3), np.uint8)
        info = self.info or CameraInfo(
            width=320, height=240, k=[277.0, 0.0, 159.5, 0.0, 277.0, 119.5, 0.0, 0.0, 1.0]
        )
        for name, make in faults(info, rgb).items():
            self.row = row = Row(f"fault: {name}")
            calls, tick, end = [], 0, time.monotonic() + self.o.fault_s
            while time.monotonic() < end:
                for key, msg in make(self.node.get_clock().now().to_msg()):
                    self.pubs[key].publish(msg)
                if tick % 2 == 0:
                    calls.append(self.latest(tick // 2))
                if tick % 4 == 0:
                    self.command.publish(String(data=self.queries[tick % len(self.queries)]))
                tick += 1
                time.sleep(0.05)
            row.count = len(calls)
            self.tally(row, calls, self.o.timeout)
            time.sleep(min(0.5, self.o.fault_s))  # the camera's valid data again; late poses count here
            rows.append(row)
        return rows

    def burst(self) -> list[Row]:
        row = Row(f"burst {self.o.burst}", count=self.o.burst)
        self.tally(row, [self.latest(i) for i in range(self.o.burst)], self.o.timeout)
        return [row]

    def concurrent(self) -> list[Row]:
        c, r = self.o.clients, self.o.per_client
        row, calls = Row(f"concurrent {c}x{r}", count=c * r), []
        clients = [
            self.node.create_client(PointPart, self.o.service, qos_profile=self.deep) for _ in range(c)
        ]

        def one_client(client) -> None:
            for i in range(r):
                call = self.latest(i, client)
                calls.append(call)
                wait_all([call[1]], self.o.timeout)

        threads = [threading.Thread(target=one_client, args=(client,)) for client in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.tally(row, calls, 0.0)
        return [row]

    def soak(self) -> list[Row]:
        o, samples, heard = self.o, {pid: [] for pid in self.processes}, self.points_heard
        row, calls = Row(f"soak {o.soak_s:g} s at {o.soak_hz:g} Hz ({o.soak_mode})"), []
        start, next_sample = time.monotonic(), 0.0
        while (now := time.monotonic() - start) < o.soak_s:
            if o.soak_mode == "service":
                calls.append(self.latest(row.count))
            else:
                self.command.publish(String(data=self.queries[row.count % len(self.queries)]))
            row.count += 1
            if now >= next_sample:
                next_sample += 1.0
                for pid, got in samples.items():
                    got.append((now, rss_mb(pid)))
                done = [c for c in calls if c[1].done()]  # count the answered ones as they come
                calls = [c for c in calls if not c[1].done()]
                self.tally(row, done, 0.0)
            time.sleep(max(0.0, start + row.count / o.soak_hz - time.monotonic()))
        self.tally(row, calls, o.timeout)
        if o.soak_mode == "command":
            row.answered = self.points_heard - heard
            row.busy = max(0, row.count - row.answered)
        warmup = o.warmup_s if o.warmup_s is not None else min(60.0, 0.1 * o.soak_s)
        window = min(10.0, max(1.0, 0.1 * o.soak_s))
        rows = [row]
        for pid, got in samples.items():
            first = [m for t, m in got if warmup <= t < warmup + window and m]
            last = [m for t, m in got if t >= o.soak_s - window and m]
            rss = (statistics.median(first), statistics.median(last)) if first and last else (0.0, 0.0)
            rows.append(Row(f"RSS {self.processes[pid]}", rss=rss))
        return rows

    def run(self) -> list[Row]:
        o, rows = self.o, []
        checks = [(o.fuzz, self.fuzz), (o.faults, self.faults), (o.burst, self.burst)]
        checks += [(o.clients * o.per_client, self.concurrent), (o.soak_s > 0, self.soak)]
        for wanted, check in checks:
            if not wanted:
                continue
            started = time.monotonic()
            for row in check():
                if row.rss is None:
                    self.row = row
                    self.check_alive(row)
                rows.append(row)
            log(f"{check.__name__}: done in {time.monotonic() - started:.0f} s")
        return rows

    def close(self) -> None:
        self.executor.shutdown()
        self.spinner.join(timeout=10.0)  # destroying entities while it builds a wait set kills it
        self.node.destroy_node()


# ---------------------------------------------------------------------- report and main
COLUMNS = ("check", "count", "answered", "busy", "lost", "bad", "crashes", "RSS start MB", "RSS end MB")


def table(rows: list[Row]) -> str:
    """One markdown table: the checks' counts, then the processes' RSS."""
    lines = ["| " + " | ".join((*COLUMNS, "growth %")) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for r in rows:
        if r.rss is None:
            cells = [r.check, *map(str, (r.count, r.answered, r.busy, r.lost, r.bad, r.crashes)), "", "", ""]
        else:
            cells = [r.check, *[""] * 6, f"{r.rss[0]:.1f}", f"{r.rss[1]:.1f}", f"{r.growth:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failed(rows: list[Row], max_growth: float) -> bool:
    return any(r.lost or r.bad or r.crashes or (r.rss is not None and r.growth > max_growth) for r in rows)


OPTIONS = (  # flag, type, default, help ("" topics are over --camera-namespace unless absolute)
    ("--service", str, "/point_part", "PointPart service"),
    ("--camera-namespace", str, "/camera", "namespace of the camera topics"),
    ("--color-topic", str, "color/image_raw", "colour topic"),
    ("--camera-info-topic", str, "color/camera_info", "colour camera_info topic"),
    ("--depth-topic", str, "aligned_depth_to_color/image_raw", "aligned depth topic"),
    ("--command-topic", str, "/part_point/command", "part_point_node's command topic"),
    ("--points-topic", str, "/part_point/points", "part_point_node's points topic"),
    ("--grasp-pose-topic", str, "/part_point/grasp_pose", "depth_fusion_node's grasp poses"),
    ("--ground-truth-topic", str, "/sim_camera/ground_truth", "sim_camera_node's ground truth ('' = off)"),
    ("--fuzz", int, 1000, "fuzzed requests N"),
    ("--parallel", int, 2, "fuzzed requests in flight at once"),
    ("--fault-s", float, 2.0, "seconds each camera fault is published"),
    ("--burst", int, 200, "requests B sent at once"),
    ("--clients", int, 8, "concurrent clients C"),
    ("--per-client", int, 25, "requests R per client"),
    ("--soak-s", float, 600.0, "soak seconds T (0 = none)"),
    ("--soak-hz", float, 30.0, "soak rate H"),
    (
        "--warmup-s",
        float,
        None,
        "soak seconds before the first RSS sample (None: 10%% of the soak, at most 60)",
    ),
    ("--max-rss-growth", float, 2.0, "largest RSS growth, %%"),
    ("--timeout", float, 30.0, "seconds before a request counts lost"),
    ("--wait-s", float, 60.0, "seconds to wait for the service"),
    ("--seed", int, 0, "seed of the fuzzed requests"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="part-point-ros-stress",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after --ros-args go to ROS.",
    )
    for flag, kind, default, text in OPTIONS:
        letter = re.search(r"\b[A-Z]\b", text)  # "fuzzed requests N": metavar N
        text += " (default: %(default)s)"
        p.add_argument(flag, type=kind, default=default, metavar=letter and letter[0], help=text)
    p.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True, help="camera faults")
    p.add_argument(
        "--soak-mode",
        choices=("service", "command"),
        default="service",
        help="soak with requests, or with command-topic messages (answered = point arrays heard on "
        "--points-topic; busy = the commands the node dropped)",
    )
    p.add_argument("--pid", type=int, action="append", default=[], help="process to sample (repeat)")
    return p


def run(argv: Sequence[str]) -> tuple[int, list[Row]]:
    """Parse ``argv`` (ROS arguments after ``--ros-args``) and run the checks: (exit status, rows)."""
    argv = list(argv)
    cut = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    o = build_parser().parse_args(argv[:cut])
    context = Context()
    rclpy.init(args=["part-point-ros-stress", *argv[cut:]], context=context)
    stress = Stress(o, context)
    try:
        if not stress.connect():
            return 2, []
        rows = stress.run()
    finally:
        stress.close()
        context.try_shutdown()
    return int(failed(rows, o.max_rss_growth)), rows


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status, rows = run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        return 130
    if rows:
        print(table(rows), flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
