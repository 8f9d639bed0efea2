"""Ctrl-C on `ros2 launch` ends every node with exit status 0, even when SIGINT comes twice.

In a terminal, Ctrl-C reaches each node twice: from the terminal (the foreground process group) and
from launch, which forwards it. A node that died of the second one (exit -2) made launch log
"process has died" as an ERROR on every Ctrl-C. Each node runs here as its own process, as launch
starts it, and gets the two signals 20 ms apart.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")

from ros_helpers import isolate_dds, restore_env  # noqa: E402

pytestmark = [pytest.mark.ros]

STARTUP_TIMEOUT_S = 60.0


@pytest.mark.parametrize(
    "module, started",
    [
        ("sim_camera_node", "streaming scene"),
        ("depth_fusion_node", "lifting /part_point/points"),
        ("part_point_node", "unconfigured"),
    ],
)
def test_a_node_exits_0_when_ctrl_c_reaches_it_twice(module: str, started: str, tmp_path: Path) -> None:
    old = isolate_dds()
    log = tmp_path / f"{module}.log"
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"part_point_ros.ros.{module}"],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            )  # fmt: skip
    finally:
        restore_env(old)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while started not in log.read_text():
            assert proc.poll() is None, f"{module} ended at startup:\n{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{module} did not start:\n{log.read_text()[-2000:]}"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # launch's
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)  # the terminal's
        assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]
        assert "Traceback" not in log.read_text(), log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
