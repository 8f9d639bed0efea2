"""QoS profiles chosen on purpose, one place for all nodes.

- camera streams (colour, depth, camera_info): sensor data (best effort, keep last 5). A best-effort
  subscriber also receives from reliable publishers, so this fits every camera driver.
- results (points, poses, markers): reliable, keep last 10.
- latched outputs (e.g. the last heatmap for a late RViz): transient local, depth 1.
- services: reliable, deep enough for a burst of requests (``service_qos``).
All are overridable per topic through parameters (``qos_overrides./topic.subscription.*``) when
created with ``QOS_OVERRIDES``.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import QoSOverridingOptions

QOS_OVERRIDES = QoSOverridingOptions.with_default_policies()


def sensor_qos(depth: int = 5) -> QoSProfile:
    """Best effort, volatile, keep last ``depth``: camera images and camera_info."""
    return QoSProfile(
        depth=depth,
        history=HistoryPolicy.KEEP_LAST,
        reliability=qos_profile_sensor_data.reliability,
        durability=qos_profile_sensor_data.durability,
    )


def results_qos(depth: int = 10) -> QoSProfile:
    """Reliable, volatile, keep last ``depth``: part points, grasp poses, markers."""
    return QoSProfile(
        depth=depth,
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


# Requests a service keeps beyond the worker queue: rclpy's default service QoS keeps 10, and
# DDS drops (unanswered) whatever arrives beyond that before the node has taken it.
SERVICE_BURST = 100


def service_qos(queue_size: int) -> QoSProfile:
    """Reliable, volatile, keep last ``queue_size + SERVICE_BURST``: a service's requests and replies.

    Every request that reaches the callback is answered (queued, or "busy" at once when the worker
    queue is full); this depth lets a burst of up to SERVICE_BURST requests reach it.
    """
    return QoSProfile(
        depth=queue_size + SERVICE_BURST,
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def latched_qos() -> QoSProfile:
    """Reliable, transient local, depth 1: the last message reaches late subscribers."""
    return QoSProfile(
        depth=1,
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
