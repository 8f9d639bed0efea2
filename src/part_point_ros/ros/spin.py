"""How every node's ``main`` starts and stops rclpy, and turns user mistakes into one line.

ROS 2 Kilted's rclpy lets ``with rclpy.init(args=args):`` manage the context; Jazzy's rclpy 7.x
(the PyPI wheels) returns None from ``init``. ``ros_context`` gives the same shape on both.

User mistakes end a node with ONE line on stderr and exit status 1, never a traceback:
a PartPointError (e.g. a missing calibration file), a parameter rclpy refuses while the node
declares it (``--ros-args -p width:=4`` out of a descriptor's range, a wrong type, a read-only
parameter set later), and ``--ros-args`` that rcl cannot parse.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node

from part_point_ros.errors import InputError, PartPointError

# what a user can get wrong on the command line or in a params file (ParameterException covers
# InvalidParameterValueException, InvalidParameterTypeException, ParameterImmutableException, ...)
USER_ERRORS: tuple[type[BaseException], ...] = (PartPointError, ParameterException)


@contextmanager
def ros_context(args: list[str] | None = None) -> Iterator[None]:
    """``rclpy.init(args)`` on entry, ``rclpy.try_shutdown()`` on exit, whatever happened.

    ROS arguments that rcl cannot parse (``--ros-args -p width``) raise InputError (one line).
    """
    try:
        rclpy.init(args=args)
    except _rclpy.RCLError as err:
        raise InputError(f"bad ROS arguments: {_rcl_reason(err)}") from err
    try:
        yield
    finally:
        rclpy.try_shutdown()


def _rcl_reason(err: BaseException) -> str:
    """rcl's "failed to initialize rcl: <why>. Error: <lexer detail>, at <file>:<line>" -> <why>."""
    text = _first_line(err).removeprefix("failed to initialize rcl: ")
    why = text.split(". Error: ")[0].split(", at /")[0]
    hint = " (use -p NAME:=VALUE)" if "parameter override" in why else ""
    return why + hint


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def error_line(err: BaseException) -> str:
    """The one line printed for a user mistake: ``error: <what is wrong>``."""
    if isinstance(err, ParameterException):
        return f"error: {_first_line(err)} (check --ros-args -p NAME:=VALUE and the params file)"
    return f"error: {_first_line(err)}"


def ignore_further_interrupts() -> None:
    """After the first Ctrl-C, let the process finish its exit: ignore SIGINT from now on.

    Ctrl-C on ``ros2 launch`` reaches every node twice: from the terminal (the whole foreground
    process group) and from launch, which forwards it. A second SIGINT that lands after ``main``
    has caught the first killed the process by signal (exit code -2: launch then logs "process has
    died" as an ERROR for a node that was stopping cleanly). Main thread only (``signal`` allows no
    other)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_main(body: Callable[[], int | None]) -> int:
    """Run a node's ``main`` body; the exit status: its own, 0 on Ctrl-C or an external shutdown
    (further Ctrl-Cs are then ignored), 1 after printing ONE line for a user mistake
    (``USER_ERRORS``)."""
    try:
        return body() or 0
    except (KeyboardInterrupt, ExternalShutdownException):
        ignore_further_interrupts()
        return 0
    except USER_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return 1


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Build a node and spin it until Ctrl-C or an external shutdown; the exit status for ``main``.

    A user mistake found while building the node (a missing calibration file, a parameter out of its
    range) prints one line on stderr and returns 1, without a traceback.
    """

    def body() -> int:
        with ros_context(args):
            node = make_node()
            try:
                rclpy.spin(node)
            finally:
                node.destroy_node()
        return 0

    return run_main(body)
