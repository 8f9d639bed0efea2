"""``part-point-ros-bench``: how long a LIVE part_point_node takes for one part and for several parts
of one frame, over DDS, as a robot's client sees it. One table, ratios side by side.

Run it against a graph started by ``part-point-ros --sim-camera ...`` or ``ros2 launch part_point_ros
grasp.launch.py ...`` (same ROS_DOMAIN_ID). It takes one frame from the colour topic and sends it as
the request image, with one pixel changed whenever a row needs a frame the node has not seen, so
that every row measures what it says whatever the camera does. Rows (median of --rounds after
--warmup rounds; ms = the client's round trip, node ms = the ``latency_ms`` the node answers):

  1 query, new frame              PointPart on a frame the node has not seen
  N queries, new frame, PointParts   one PointParts request with N queries (one image prefill, the
                                  queries' suffixes in one forward)
  N queries, new frame, N x PointPart   N PointPart requests one after the other on one new frame
                                  (the first prefills the frame, the others reuse its prefix)
  1 query, same frame             PointPart on the frame of the previous request (prefix reused)

ratio = ms / ms of "1 query, new frame". It also checks that the PointParts points equal those of
the N single requests on the same frame (max distance, px), and exits 1 if they differ by more than
--max-shift px or any request failed to answer. Timings are as noisy as the machine: compare the
ratios of one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image

from part_point_ros.ros.qos import sensor_qos
from part_point_ros.srv import PointPart, PointParts

QUERIES = (
    "the handle of the mug",
    "the rim of the mug",
    "the spout of the kettle",
    "the blade of the knife",
    "the lid of the pot",
)


@dataclass
class Row:
    label: str
    ms: list[float] = field(default_factory=list)  # client round trip per round
    node_ms: list[float] = field(default_factory=list)  # the node's own latency_ms, summed per round

    @property
    def median_ms(self) -> float:
        return statistics.median(self.ms) if self.ms else float("nan")

    @property
    def median_node_ms(self) -> float:
        return statistics.median(self.node_ms) if self.node_ms else float("nan")


class ServiceBench:
    """Clients of the two services on ``node``; ``node`` must be spun by someone (``spin`` here or a
    test harness)."""

    def __init__(self, node: Node, *, service: str, parts_service: str, timeout: float = 60.0) -> None:
        self.node = node
        self.part = node.create_client(PointPart, service)
        self.parts = node.create_client(PointParts, parts_service)
        self.timeout = timeout
        self._frames = 0

    def wait_for_services(self, timeout: float) -> str | None:
        """None when both services are there, else which one is missing."""
        for client in (self.part, self.parts):
            if not client.wait_for_service(timeout_sec=timeout):
                return f"service {client.srv_name} did not appear within {timeout:g} s"
        return None

    def _call(self, client: Any, request: Any) -> Any:
        future = client.call_async(request)
        deadline = time.monotonic() + self.timeout
        while not future.done():
            if time.monotonic() > deadline:
                client.remove_pending_request(future)
                raise TimeoutError(f"{client.srv_name} did not answer within {self.timeout:g} s")
            time.sleep(0.0005)
        return future.result()

    def new_frame(self, frame: Image) -> Image:
        """``frame`` with its first 3 bytes XORed with a counter: pixels the node has never seen."""
        self._frames += 1
        data = bytearray(frame.data)
        for i, byte in enumerate(self._frames.to_bytes(3, "little")):
            data[i] ^= byte
        return Image(
            header=frame.header,
            height=frame.height,
            width=frame.width,
            encoding=frame.encoding,
            is_bigendian=frame.is_bigendian,
            step=frame.step,
            data=bytes(data),
        )

    def one(self, query: str, image: Image) -> PointPart.Response:
        answer = self._call(self.part, PointPart.Request(query=query, image=image))
        _check_served(answer.point, answer.message)
        return answer

    def many(self, queries: Sequence[str], image: Image) -> PointParts.Response:
        answer = self._call(self.parts, PointParts.Request(queries=list(queries), image=image))
        if len(answer.points) != len(queries):
            raise RuntimeError(f"PointParts answered {len(answer.points)} points for {len(queries)} queries: "
                               f"{answer.message}")  # fmt: skip
        for point in answer.points:
            _check_served(point, point.message)
        return answer

    def run(
        self, frame: Image, queries: Sequence[str], *, rounds: int, warmup: int
    ) -> tuple[list[Row], float]:
        """The rows, and the largest distance (px) between a PointParts point and the single request's."""
        n = len(queries)
        rows = [
            Row("1 query, new frame"),
            Row(f"{n} queries, new frame, PointParts"),
            Row(f"{n} queries, new frame, {n} x PointPart"),
            Row("1 query, same frame"),
        ]
        shift = 0.0

        def timed(row: Row, keep: bool, fn: Callable[[], Any], node_ms: Callable[[Any], list[float]]) -> Any:
            start = time.perf_counter()
            out = fn()
            if keep:
                row.ms.append((time.perf_counter() - start) * 1000.0)
                row.node_ms.append(sum(node_ms(out)))
            return out

        def ms(answer: Any) -> list[float]:
            return [answer.latency_ms]

        for i in range(warmup + rounds):
            keep = i >= warmup
            timed(rows[0], keep, lambda: self.one(queries[0], self.new_frame(frame)), ms)
            image = self.new_frame(frame)
            many = timed(rows[1], keep, lambda: self.many(queries, image), ms)  # noqa: B023 - called at once
            self.one(queries[0], self.new_frame(frame))  # untimed: the node now holds another frame
            singles = timed(  # so ``image`` is a new frame to it again
                rows[2],
                keep,
                lambda: [self.one(q, image) for q in queries],  # noqa: B023 - called at once
                lambda answers: [a.latency_ms for a in answers],
            )
            timed(rows[3], keep, lambda: self.one(queries[1], image), ms)  # noqa: B023 - called at once
            many_points, single_points = many.points, [a.point for a in singles]
            for a, b in zip(many_points, single_points, strict=True):
                both = np.array([[a.u, a.v], [b.u, b.v]], dtype=np.float64)
                if np.isfinite(both).all():
                    shift = max(shift, float(np.hypot(*(both[0] - both[1]))))
                elif np.isfinite(both).any():
                    shift = float("inf")  # one found a point, the other none
        return rows, shift


def _check_served(point: Any, message: str) -> None:
    """A timing means something only for a request the node served (found, or "part not found: ...");
    a refused one (busy, not active, no support set taught, ...) ends the run with its reason."""
    if not (point.found or point.message.startswith("part not found")):
        raise RuntimeError(f"the node did not serve the request {point.query!r}: {message}")


def table(rows: list[Row]) -> str:
    one = rows[0].median_ms
    lines = ["| request | ms | node ms | ratio |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(
            f"| {row.label} | {row.median_ms:.1f} | {row.median_node_ms:.1f} | {row.median_ms / one:.2f}x |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="part-point-ros-bench",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after --ros-args go to ROS.",
    )
    p.add_argument("--service", default="/point_part", help="PointPart service (default: %(default)s)")
    p.add_argument(
        "--parts-service", default="/point_parts", help="PointParts service (default: %(default)s)"
    )
    p.add_argument(
        "--color-topic", default="/camera/color/image_raw", help="colour topic (default: %(default)s)"
    )
    p.add_argument("--queries", type=int, default=5, help="queries per frame, 1..5 (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: %(default)s)")
    p.add_argument("--max-shift", type=float, default=0.5, help="px (default: %(default)s)")
    p.add_argument(
        "--wait-s", type=float, default=60.0, help="seconds to wait for the graph (default: %(default)s)"
    )
    return p


def wait_for_frame(node: Node, topic: str, timeout: float) -> Image | None:
    """The first rgb8/bgr8 frame on ``topic`` (``node`` must be spun by someone)."""
    got: list[Image] = []
    sub = node.create_subscription(
        Image, topic, lambda m: got.append(m) if m.encoding in ("rgb8", "bgr8") else None, sensor_qos()
    )
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    node.destroy_subscription(sub)
    return got[0] if got else None


def run(argv: Sequence[str]) -> int:
    argv = list(argv)
    cut = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    o = build_parser().parse_args(argv[:cut])
    if not 1 <= o.queries <= len(QUERIES) or o.rounds < 1 or o.warmup < 0:
        print(f"error: --queries must be 1..{len(QUERIES)}, --rounds >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    context = Context()
    rclpy.init(args=["part-point-ros-bench", *argv[cut:]], context=context)
    node = Node("part_point_service_bench", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        bench = ServiceBench(node, service=o.service, parts_service=o.parts_service)
        missing = bench.wait_for_services(o.wait_s)
        frame = None if missing else wait_for_frame(node, o.color_topic, o.wait_s)
        if missing or frame is None:
            print(f"error: {missing or f'no rgb8/bgr8 frame on {o.color_topic} within {o.wait_s:g} s'}",
                  file=sys.stderr)  # fmt: skip
            return 2
        rows, shift = bench.run(frame, QUERIES[: o.queries], rounds=o.rounds, warmup=o.warmup)
    except (TimeoutError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        executor.shutdown()
        spinner.join(timeout=10.0)
        node.destroy_node()
        context.try_shutdown()
    print(f"frame {frame.width}x{frame.height}, {o.rounds} rounds after {o.warmup} warm-up")
    print(table(rows))
    print(f"PointParts vs {o.queries} x PointPart on one frame: largest point shift {shift:.3g} px")
    return 0 if shift <= o.max_shift else 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
