"""part-point-ros-stress (ros.stress) against a live graph: ``part-point-ros`` with the shipped
tiny-tabletop models and the synthetic camera, in a subprocess, in a DDS domain of this test run."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")

from part_point_ros.srv import PointPart  # noqa: E402
from ros_helpers import isolate_dds, restore_env  # noqa: E402

from part_point_ros.ros import stress  # noqa: E402
from part_point_ros.ros.stress_inputs import bad_answer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """The one-process graph (sim camera 160x120) in a subprocess; stopped with Ctrl-C afterwards."""
    tmp = tmp_path_factory.mktemp("stress")
    config = yaml.safe_load((ROOT / "config" / "part_point.yaml").read_text())
    # threshold 0.1: the shipped head's scores on the synthetic scenes are low, and found parts are
    # what gets lifted to grasp poses (depth_fusion_node, the pose checks)
    config["part_point_node"]["ros__parameters"].update(score_threshold=0.1, max_image_age_s=5.0)
    config["sim_camera_node"]["ros__parameters"].update(width=160, height=120)
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(config))
    old = isolate_dds()  # the subprocess inherits the domain
    log = tmp / "graph.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "part_point_ros.ros.bringup", "--params-file", str(params),
             "--head", str(MODELS / "tiny-tabletop-a2p"), "--backbone", str(MODELS / "tiny-tabletop-llava"),
             "--sim-camera", "--seed", "3"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        restore_env(old)


@pytest.mark.ros
@pytest.mark.slow
def test_stress_tool_loses_nothing_and_finds_nothing_bad_in_a_live_graph(graph):
    proc, log = graph
    status, rows = stress.run(
        ["--fuzz", "40", "--fault-s", "0.5", "--burst", "50", "--clients", "4", "--per-client", "5",
         "--soak-s", "5", "--warmup-s", "1", "--max-rss-growth", "50", "--pid", str(proc.pid),
         "--wait-s", "120"]
    )  # fmt: skip
    table = stress.table(rows)
    assert proc.poll() is None, log.read_text()[-3000:]
    checks, rss = [r for r in rows if r.rss is None], [r for r in rows if r.rss is not None]
    names = [r.check for r in checks]
    assert names[0] == "fuzz" and names[-3:] == ["burst 50", "concurrent 4x5", "soak 5 s at 30 Hz (service)"]
    assert {"fault: camera_info K[2][2]=0", "fault: NaN depth", "fault: depth 2x colour size"} <= set(names)
    assert all(r.lost == 0 and r.bad == 0 and r.crashes == 0 for r in rows), table
    assert all(r.count > 0 and r.answered == r.count for r in checks), table
    assert [r.count for r in checks[:1] + checks[-3:-1]] == [40, 50, 20]
    assert checks[-3].busy > 0, table  # queue_size 2: most of a burst is answered busy, none is lost
    assert [r.check for r in rss] == [f"RSS pid {proc.pid}"] and rss[0].rss[0] > 100.0, table
    assert status == 0, table
    assert stress.failed(rows, max_growth=50.0) is False
    # table: one header, one row per check and process
    assert len(table.splitlines()) == 2 + len(rows) and table.count("| growth % |") == 1
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_an_answer_is_bad_when_a_success_is_not_finite_off_the_image_or_an_internal_error():
    good = PointPart.Response(success=True, message="found")
    good.point.u, good.point.v, good.point.score, good.point.found = 10.0, 5.0, 0.9, True
    good.has_grasp_pose, good.grasp_pose.pose.orientation.w = True, 1.0
    assert bad_answer(good, (20, 10)) == ""
    assert "off the 8x10 image" in bad_answer(good, (8, 10))
    good.grasp_pose.pose.position.x = math.nan
    assert "non-finite pose" in bad_answer(good, (20, 10))
    good.grasp_pose.pose.position.x = 1e301
    assert "absurd pose" in bad_answer(good, (20, 10))
    good.point.u = math.inf
    assert "success with u, v, score" in bad_answer(good, None)
    refused = PointPart.Response(success=False, message="busy: 2 requests queued")
    refused.point.u = math.nan  # a refusal may carry anything
    assert bad_answer(refused, (20, 10)) == ""
    assert "internal error" in bad_answer(PointPart.Response(message="internal error: KeyError"), None)


def test_help_names_every_check_and_option():
    text = stress.build_parser().format_help()
    for word in ("fuzz", "fault: ...", "burst", "concurrent", "soak", "--fuzz N", "--burst B", "--clients C",
                 "--per-client R", "--soak-s T", "--soak-hz H", "--max-rss-growth", "--pid", "--no-faults",
                 "Exit status"):  # fmt: skip
        assert word in text, word
