"""Record topics of a running graph into one MCAP file laid out as rosbag2's MCAP storage writes it.

rosbag2 (``ros2 bag``) is not on PyPI; the demo records with the ``mcap`` package instead, in the
same layout, so Foxglove, ``ros2 bag info`` and the mcap tools read it:

- header profile ``ros2``; one schema per message type, named ``pkg/msg/Type``, encoding
  ``ros2msg``: the type's .msg text, then every type it depends on (recursively, each once) after a
  line of 80 ``=`` and a line ``MSG: pkg/Type`` (docs/message_definition_encoding.md of rosbag2);
- one channel per topic, message encoding ``cdr``, metadata ``offered_qos_profiles`` (YAML);
- messages are the CDR bytes as they came off the wire (raw subscriptions), log time = reception
  time, publish time = the publisher's source time, both in nanoseconds.

Subscriptions are generic: a topic's type comes from the ROS graph, and the QoS follows its
publishers (reliable only if all are, transient local only if all are), as ``ros2 bag record`` does.
"""

from __future__ import annotations

import importlib
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from mcap.writer import Writer
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from part_point_ros.errors import PartPointError

DELIMITER = "=" * 80
# the type of a field at the start of a line: "geometry_msgs/Point position", "float64[9] k", "Marker[] m"
_FIELD_TYPE = re.compile(r"(?:^|\n)\s*([a-zA-Z0-9_/]+)(?:\[[^\]]*\])?\s+")
_PRIMITIVES = frozenset(
    "bool byte char float32 float64 int8 uint8 int16 uint16 int32 uint32 int64 uint64 string wstring".split()
)
RECORD_DEPTH = 100  # subscription queue: an executor busy with inference must not drop messages


class RecorderError(PartPointError):
    """A topic that cannot be recorded (no publisher, no .msg definition)."""


def _split_type(type_name: str) -> tuple[str, str, str]:
    """'pkg/msg/Type' or 'pkg/Type' -> (pkg, 'msg', Type)."""
    parts = type_name.split("/")
    if len(parts) == 2:
        return parts[0], "msg", parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise RecorderError(f"message type {type_name!r} is not of the form pkg/msg/Type")


def msg_file(type_name: str) -> Path:
    """The installed .msg file of ``type_name`` (share/<pkg>/msg/<Type>.msg in the ament index)."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    package, namespace, name = _split_type(type_name)
    try:
        share = Path(get_package_share_directory(package))
    except PackageNotFoundError:
        raise RecorderError(
            f"no .msg definition for {type_name}: package {package} is not in AMENT_PREFIX_PATH "
            "(run . scripts/env.sh)"
        ) from None
    path = share / namespace / f"{name}.msg"
    if not path.is_file():
        raise RecorderError(f"no .msg definition for {type_name}: {path} does not exist")
    return path


def field_types(text: str, package: str) -> list[str]:
    """The non-primitive field types a .msg text refers to, 'pkg/Type', sorted, each once."""
    found = set()
    for match in _FIELD_TYPE.finditer(text):
        name = match.group(1)
        if name in _PRIMITIVES:
            continue
        found.add(name if "/" in name else f"{package}/{name}")
    return sorted(found)


def message_definition(type_name: str) -> str:
    """The ``ros2msg`` schema text of ``type_name``: its .msg file, then its dependencies."""
    seen: set[str] = set()

    def expand(name: str) -> str:
        text = msg_file(name).read_text()
        out = [text]
        for dependency in field_types(text, _split_type(name)[0]):
            if dependency not in seen:
                seen.add(dependency)
                out.append(f"\n{DELIMITER}\nMSG: {dependency}\n{expand(dependency)}")
        return "".join(out)

    return expand(type_name)


def message_class(type_name: str) -> type:
    """'pkg/msg/Type' -> the generated Python class (pkg.msg.Type)."""
    package, namespace, name = _split_type(type_name)
    try:
        return getattr(importlib.import_module(f"{package}.{namespace}"), name)
    except (ImportError, AttributeError) as err:
        raise RecorderError(f"cannot import the Python class of {type_name}: {err}") from None


def _duration(value: Duration) -> dict[str, int]:
    sec, nsec = divmod(int(value.nanoseconds), 1_000_000_000)
    return {"sec": sec, "nsec": nsec}


def offered_qos_yaml(profiles: Iterable[QoSProfile]) -> str:
    """The publishers' QoS as rosbag2 stores it in the channel metadata (enum values as integers)."""
    return yaml.safe_dump(
        [
            {
                "history": int(p.history),
                "depth": int(p.depth),
                "reliability": int(p.reliability),
                "durability": int(p.durability),
                "deadline": _duration(p.deadline),
                "lifespan": _duration(p.lifespan),
                "liveliness": int(p.liveliness),
                "liveliness_lease_duration": _duration(p.liveliness_lease_duration),
                "avoid_ros_namespace_conventions": bool(p.avoid_ros_namespace_conventions),
            }
            for p in profiles
        ],
        sort_keys=False,
    )


def recording_qos(profiles: list[QoSProfile]) -> QoSProfile:
    """A subscription QoS that matches every one of the publishers' profiles."""
    reliable = all(p.reliability == ReliabilityPolicy.RELIABLE for p in profiles)
    latched = all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in profiles)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=RECORD_DEPTH,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


class McapRecorder:
    """Records topics of the graph ``node`` lives in into ``path`` until ``close()``.

    ``record(topics)`` waits (up to ``timeout`` s) until each topic has a publisher, then subscribes
    to it. Callbacks may come from several executor threads; writes are serialised by a lock.
    """

    def __init__(self, *, node: Node, path: str | Path, library: str = "part_point_ros") -> None:
        from mcap import __version__ as mcap_version

        self.node = node
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._stream = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._writer = Writer(self._stream)
        self._writer.start(profile="ros2", library=f"{library} (mcap-python {mcap_version})")
        self._schemas: dict[str, int] = {}
        self._subscriptions: list[Any] = []
        self.topics: dict[str, str] = {}  # topic -> type
        self.counts: dict[str, int] = {}  # topic -> messages written
        self._closed = False

    def record(self, topics: Iterable[str], *, timeout: float = 10.0) -> None:
        """Subscribe to ``topics`` (each once); RecorderError naming a topic without a publisher."""
        for topic in topics:
            if topic in self.topics:
                continue
            type_name, publishers = self._wait_for_publishers(topic, timeout)
            profiles = [info.qos_profile for info in publishers]
            with self._lock:
                if type_name not in self._schemas:
                    self._schemas[type_name] = self._writer.register_schema(
                        name=type_name, encoding="ros2msg", data=message_definition(type_name).encode()
                    )
                channel = self._writer.register_channel(
                    topic=topic,
                    message_encoding="cdr",
                    schema_id=self._schemas[type_name],
                    metadata={"offered_qos_profiles": offered_qos_yaml(profiles)},
                )
                self.topics[topic] = type_name
                self.counts[topic] = 0
            self._subscriptions.append(
                self.node.create_subscription(
                    message_class(type_name),
                    topic,
                    self._callback(topic, channel),
                    recording_qos(profiles),
                    raw=True,
                )
            )

    def _wait_for_publishers(self, topic: str, timeout: float) -> tuple[str, list]:
        deadline = time.monotonic() + timeout
        while True:
            publishers = self.node.get_publishers_info_by_topic(topic)
            types = sorted({info.topic_type for info in publishers})
            if len(types) == 1:
                return types[0], publishers
            if len(types) > 1:
                raise RecorderError(f"cannot record {topic}: its publishers disagree on the type {types}")
            if time.monotonic() > deadline:
                raise RecorderError(f"cannot record {topic}: no publisher appeared within {timeout:g} s")
            time.sleep(0.01)

    def _callback(self, topic: str, channel: int):
        def write(data: bytes, info: dict[str, int]) -> None:
            received = int(info.get("received_timestamp") or time.time_ns())
            sent = int(info.get("source_timestamp") or received)
            with self._lock:
                if self._closed:
                    return
                self._writer.add_message(
                    channel_id=channel,
                    log_time=received,
                    publish_time=sent,
                    data=bytes(data),
                    sequence=self.counts[topic],
                )
                self.counts[topic] += 1

        return write

    def close(self) -> dict[str, int]:
        """Stop recording, write the summary and close the file; the message count per topic."""
        with self._lock:
            if self._closed:
                return dict(self.counts)
            self._closed = True  # the subscriptions go with the node, once the executor has stopped
            self._writer.finish()
            self._stream.close()
        return dict(self.counts)
