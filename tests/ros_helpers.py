"""Real ROS 2 nodes in tests: an isolated DDS domain, a background executor, discovery waits.

Use in a test module:

    rclpy = pytest.importorskip("rclpy", reason="...")   # the only reason to skip
    from ros_helpers import ros_fixture                   # noqa: F401  (the fixture `ros`)

The ``ros`` fixture (one per test session) picks a ROS_DOMAIN_ID of its own and limits discovery
to this machine BEFORE rclpy starts, so parallel test runs never see each other; it spins every
node added to it in a MultiThreadedExecutor on a background thread. Waiting is on conditions
(matched subscription counts, received messages), never on sleeps. ``ros.remove(node)`` takes a
node out of the executor safely before destroying it; an exception that stops the executor thread
fails the session's teardown instead of passing silently.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator

import pytest

DISCOVERY_TIMEOUT_S = 15.0
MESSAGE_TIMEOUT_S = 15.0
EXECUTOR_THREADS = 2


class RosHarness:
    """An rclpy context with a background executor; nodes made or added here are spun and destroyed."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS, context=self.context)
        self._nodes: list = []
        self.spin_error = ""  # the traceback that stopped the executor thread, if one did
        self._thread = threading.Thread(target=self._spin, name="ros-test-executor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass
        except Exception:  # noqa: BLE001 - kept for the fixture's teardown to report
            self.spin_error = traceback.format_exc()
            raise

    def add(self, node):
        """Spin ``node`` (built with ``context=harness.context``) until the end of the test session."""
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def node(self, name: str):
        """A plain helper node in this context."""
        from rclpy.node import Node

        return self.add(Node(name, context=self.context))

    def remove(self, node) -> None:
        """Stop spinning ``node``, wait until the executor is done with it, then destroy it.

        rclpy 7 (Jazzy): destroying a node while the executor thread builds its wait set with the
        node's entities (QoS event handlers first) kills that thread with InvalidHandle, and a callback
        of the node still running on a worker thread raises on its destroyed publishers. So: after
        remove_node, one executor task marks a pass that may still have seen the node; the pass that
        runs the next tasks started without it. Those are one task per worker thread meeting at a
        barrier: all workers are then free at once, so every callback handed to them before is done.
        """
        self.executor.remove_node(node)
        self._nodes.remove(node)
        self._run_on_every_worker(lambda: None)
        barrier = threading.Barrier(EXECUTOR_THREADS, timeout=MESSAGE_TIMEOUT_S)

        def meet() -> None:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass  # the wait below reports it; an exception here would stop the executor

        self._run_on_every_worker(meet, copies=EXECUTOR_THREADS)
        node.destroy_node()

    def _run_on_every_worker(self, fn: Callable[[], None], copies: int = 1) -> None:
        tasks = [self.executor.create_task(fn) for _ in range(copies)]
        wait_until(lambda: all(t.done() for t in tasks), "the executor to run a pass without the node")
        assert not self.spin_error, f"the executor thread stopped:\n{self.spin_error}"

    def shutdown(self) -> None:
        for node in list(self._nodes):
            self.remove(node)
        self.executor.shutdown()
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = MESSAGE_TIMEOUT_S) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def wait_for_match(publisher, count: int = 1, timeout: float = DISCOVERY_TIMEOUT_S) -> None:
    """Wait until ``publisher`` has matched ``count`` subscriptions (DDS discovery done)."""
    wait_until(
        lambda: publisher.get_subscription_count() >= count,
        f"{count} subscriber(s) on {publisher.topic_name}",
        timeout,
    )


def node_publisher(node, topic: str):
    """The publisher of ``node`` on ``topic`` (to wait until it has matched our subscriptions)."""
    for pub in node.publishers:
        if pub.topic_name == topic:
            return pub
    raise AssertionError(
        f"{node.get_name()} has no publisher on {topic}; it has {[p.topic_name for p in node.publishers]}"
    )


class Inbox:
    """Collects the messages of one subscription; thread-safe; ``wait(n)`` returns the first n."""

    def __init__(self, node, msg_type, topic: str, qos) -> None:
        self._lock = threading.Lock()
        self.messages: list = []
        self.subscription = node.create_subscription(msg_type, topic, self._on_msg, qos)

    def _on_msg(self, msg) -> None:
        with self._lock:
            self.messages.append(msg)

    def wait(self, n: int = 1, timeout: float = MESSAGE_TIMEOUT_S) -> list:
        wait_until(
            lambda: len(self.messages) >= n, f"{n} message(s) on {self.subscription.topic_name}", timeout
        )
        with self._lock:
            return list(self.messages[:n])


def isolate_dds() -> dict[str, str | None]:
    """Own ROS_DOMAIN_ID (from the process id) and localhost-only discovery; returns the old values."""
    old = {
        k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY")
    }
    os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)  # 1..100: valid for Fast DDS ports
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated in Jazzy; conflicts with the range
    return old


def restore_env(old: dict[str, str | None]) -> None:
    """Put back the variables ``isolate_dds`` returned (None: was unset)."""
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session", name="ros")
def ros_fixture() -> Iterator[RosHarness]:
    """One isolated rclpy context per test session, spinning in a background thread."""
    old = isolate_dds()
    harness = RosHarness()
    try:
        yield harness
    finally:
        harness.shutdown()
        restore_env(old)
    assert not harness.spin_error, f"the test executor thread stopped:\n{harness.spin_error}"


# camera_info as issue #11 sent it, and the start of the reason it is rejected with:
# kind -> (field, index in it, value, reason)
BAD_CAMERA_INFO = {
    "k22_zero": ("k", 8, 0.0, "camera matrix K[2][2] is 0 but must be 1"),
    "nan_k": ("k", 2, math.nan, "camera matrix K has non-finite entries"),
    "nan_d": ("d", 0, math.nan, "distortion coefficients D have non-finite entries"),
    "inf_fx": ("k", 0, math.inf, "camera matrix K has non-finite entries"),
    "tiny_fx": ("k", 0, 1e-300, "camera matrix needs fx, fy > 0 in 0.001 .. 1e+06 px, got fx=1e-300"),
}


def camera_info_msg(camera, kind: str | None = None, header=None):
    """sensor_msgs/CameraInfo of the PinholeCamera ``camera`` (frame_id its frame, or ``header``),
    broken as BAD_CAMERA_INFO[kind] says when ``kind`` is given."""
    from part_point_ros.ros.conversions import camera_info_from_camera

    info = camera_info_from_camera(camera, header=header)
    if header is None:
        info.header.frame_id = camera.frame_id
    if kind is not None:
        field, index, value, _ = BAD_CAMERA_INFO[kind]
        values = list(getattr(info, field))
        values[index] = value
        setattr(info, field, values)
    return info


class ServiceClient:
    """Service clients of a helper node; every call waits for its answer (``timeout`` s), and the
    lifecycle calls of a node by name."""

    def __init__(self, ros, name: str, timeout: float = 30.0) -> None:
        self.node = ros.node(name)
        self.timeout = timeout
        self._clients = {}

    def client(self, srv_type, name: str):
        if name not in self._clients:
            client = self.node.create_client(srv_type, name)
            assert client.wait_for_service(timeout_sec=self.timeout), f"service {name} did not appear"
            self._clients[name] = client
        return self._clients[name]

    def call(self, srv_type, name: str, request):
        future = self.client(srv_type, name).call_async(request)
        wait_until(future.done, f"the answer of {name}", self.timeout)
        return future.result()

    def transition(self, node: str, transition_id: int) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(ChangeState, f"/{node}/change_state", request).success

    def state(self, node: str) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"/{node}/get_state", GetState.Request()).current_state.label
