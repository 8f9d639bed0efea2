"""How every node's ``main`` starts and stops rclpy.

ROS 2 Kilted's rclpy lets ``with rclpy.init(args=args):`` manage the context; Jazzy's rclpy 7.x
(the PyPI wheels) returns None from ``init``. ``ros_context`` gives the same shape on both.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from part_point_ros.errors import PartPointError


@contextmanager
def ros_context(args: list[str] | None = None) -> Iterator[None]:
    """``rclpy.init(args)`` on entry, ``rclpy.try_shutdown()`` on exit, whatever happened."""
    rclpy.init(args=args)
    try:
        yield
    finally:
        rclpy.try_shutdown()


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Build a node and spin it until Ctrl-C or an external shutdown; the exit status for ``main``.

    A user mistake found while building the node (a PartPointError, e.g. a missing calibration
    file) prints one line on stderr and returns 1, without a traceback.
    """
    try:
        with ros_context(args):
            node = make_node()
            try:
                rclpy.spin(node)
            finally:
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except PartPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
