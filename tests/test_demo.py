"""part-point demo: the whole graph over DDS on one held-out scene, its outputs, and its one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from part_point_ros.cli.main import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
SEED = 200000
# what the demo must record (rosbag2 layout): camera streams and every output of the graph
EXPECTED_TOPICS = {
    "/camera/color/image_raw",
    "/camera/color/camera_info",
    "/camera/aligned_depth_to_color/image_raw",
    "/camera/extrinsics",
    "/sim_camera/ground_truth",
    "/part_point/points",
    "/part_point/points_3d",
    "/part_point/heatmap",
    "/part_point/overlay",
    "/part_point/grasp_pose",
    "/part_point/markers",
}
LINE = re.compile(
    r"^\[(?P<seed>\d+)\] (?P<kind>\w+) +(?P<query>\".*\")  px \((?P<u>[-\d.]+), (?P<v>[-\d.]+)\) "
    r"score (?P<score>[\d.]+)  grasp (?P<grasp>\(.*?\)|n/a) m  gt (?P<gt>\(.*?\)|n/a) m  "
    r"err (?P<err>[\d.]+|n/a)(?: mm)?  (?P<hit>HIT|MISS)$"
)


def make_random_head(backbone_dir: Path, out_dir: Path) -> Path:
    """An untrained PartPointHead for the tiny backbone, saved with save_pretrained."""
    import torch

    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.heads import HeadConfig, PartPointHead

    info = load_backbone(str(backbone_dir), max_layer=0).info
    torch.manual_seed(0)
    config = HeadConfig(
        backbone=asdict(info), heads=[(1, 1), (2, 0)], d_head=info.head_dim, d_fused=32, norm_groups=8
    )
    return PartPointHead(config).save_pretrained(out_dir)


@pytest.fixture(scope="module")
def demo():
    pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")
    from part_point_ros.ros import demo

    return demo


@pytest.fixture(scope="module")
def demo_run(demo, tiny_llava_dir, tmp_path_factory):
    """One demo run: scene SEED, 2 queries, a tiny random backbone and head; (summary, stdout, out)."""
    import io

    base = tmp_path_factory.mktemp("demo")
    head = make_random_head(tiny_llava_dir, base / "head")
    stdout = io.StringIO()
    options = demo.DemoOptions(
        out=base / "out",
        seeds=(SEED,),
        queries_per_scene=2,
        backbone=str(tiny_llava_dir),
        head=str(head),
        timeout=30.0,
    )
    summary = demo.run_demo(options, stdout=stdout)
    return summary, stdout.getvalue(), base / "out"


def _render(out: Path):
    """The scene of SEED as the demo's sim camera rendered it (its parameters in params.yaml)."""
    from part_point_ros.sim import render_scene

    sim = yaml.safe_load((out / "params.yaml").read_text())["sim_camera_node"]["ros__parameters"]
    return render_scene(
        SEED, width=sim["width"], height=sim["height"], hfov_deg=sim["hfov_deg"], shadows=sim["shadows"]
    )


def _triple(text: str) -> np.ndarray | None:
    return None if text == "n/a" else np.array([float(x) for x in text.strip("()").split(",")])


@pytest.mark.ros
def test_demo_rows_agree_with_the_render_the_printed_lines_and_the_summary(demo, demo_run):
    from part_point_ros.ros.sim_camera_node import scene_ground_truth

    summary, stdout, out = demo_run
    scene = _render(out)
    rows = summary["rows"]
    assert len(rows) == 2 and {r["seed"] for r in rows} == {SEED}

    # the queries are the deterministic pick from the scene's ground truth, direct and reasoning mixed
    truth = scene_ground_truth(scene, optical_frame="camera_color_optical_frame", base_frame="base_link")
    assert [r["query_index"] for r in rows] == demo.pick_queries(truth, 2)
    kinds = {q.kind for q in scene.queries}
    assert {r["kind"] for r in rows} == ({"direct", "reasoning"} if len(kinds) == 2 else kinds)

    for row in rows:
        query = scene.queries[row["query_index"]]
        assert row["query"] == query.text
        # 2D hit: the pixel under (u, v) lies in the query's mask of the same seed's render
        mask = scene.query_mask(query)
        u, v = round(row["u"]), round(row["v"])
        inside = 0 <= u < mask.shape[1] and 0 <= v < mask.shape[0]
        assert row["hit"] == bool(row["found"] and inside and mask[v, u])
        # 3D: the nearest ground-truth instance point, and the error is the distance to it
        candidates = [
            scene.part(pid).point_3d for pid in query.part_ids if scene.part(pid).point_3d is not None
        ]
        assert row["gt_instances"] == len(candidates)
        if row["grasp_base"] is not None:
            grasp = np.asarray(row["grasp_base"])
            nearest = min(candidates, key=lambda p: np.linalg.norm(p - grasp))
            np.testing.assert_allclose(row["gt_base"], nearest, atol=1e-9)
            assert row["error_mm"] == pytest.approx(1000.0 * np.linalg.norm(grasp - nearest), abs=1e-6)
            assert row["fusion_delta_mm"] is not None and row["fusion_delta_mm"] < 1.0  # depth_fusion agrees

    # one printed line per query with the same numbers; err = distance of the printed points
    lines = [m for m in map(LINE.match, stdout.splitlines()) if m]
    assert len(lines) == len(rows), stdout
    for m, row in zip(lines, rows, strict=True):
        assert json.loads(m["query"]) == row["query"] and int(m["seed"]) == SEED
        assert (float(m["u"]), float(m["v"])) == pytest.approx((row["u"], row["v"]), abs=0.051)
        assert (m["hit"] == "HIT") == row["hit"]
        grasp, gt = _triple(m["grasp"]), _triple(m["gt"])
        if grasp is None:
            assert m["err"] == "n/a" and row["error_mm"] is None
        else:
            assert float(m["err"]) == pytest.approx(1000.0 * np.linalg.norm(grasp - gt), abs=0.25)
            assert float(m["err"]) == pytest.approx(row["error_mm"], abs=0.051)

    # the summary is recomputed from the rows
    hits = [r for r in rows if r["hit"]]
    assert summary["queries"] == 2 and summary["hits"] == len(hits)
    assert summary["accuracy"] == pytest.approx(len(hits) / 2)
    errors = [r["error_mm"] for r in hits if r["error_mm"] is not None]
    assert summary["median_error_mm_hits"] == (pytest.approx(float(np.median(errors))) if errors else None)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rows)) and on_disk["accuracy"] == summary["accuracy"]
    assert f"{summary['hits']}/2" in (out / "summary.md").read_text()
    assert summary["ros"]["discovery"] == "localhost" and 101 <= summary["ros"]["domain_id"] <= 200


@pytest.mark.ros
def test_demo_writes_overlays_and_heatmaps_of_the_camera_image(demo_run):
    summary, _, out = demo_run
    for row in summary["rows"]:
        for key in ("overlay_png", "heatmap_png"):
            image = cv2.imread(str(out / row[key]))
            assert image is not None and image.shape == (240, 320, 3), row[key]
        # the answer's marker is drawn: the overlay differs from the heatmap blend around (u, v)
        overlay = cv2.imread(str(out / row["overlay_png"]))[..., ::-1]
        u, v = round(row["u"]), round(row["v"])
        colour = (0, 255, 0) if row["hit"] else (255, 0, 0)
        patch = overlay[max(v - 3, 0) : v + 4, max(u - 3, 0) : u + 4].reshape(-1, 3)
        assert (np.abs(patch.astype(int) - colour).sum(axis=1) < 60).any()


@pytest.mark.ros
def test_demo_recording_is_a_ros2_mcap_whose_messages_deserialize(demo_run):
    from mcap.reader import make_reader
    from rclpy.serialization import deserialize_message

    from part_point_ros.ros.recorder import message_class, msg_file

    summary, _, out = demo_run
    rgb = _render(out).rgb
    with open(out / "session.mcap", "rb") as f:
        reader = make_reader(f)
        assert reader.get_header().profile == "ros2"
        channels = reader.get_summary().channels.values()
        assert EXPECTED_TOPICS <= {c.topic for c in channels}
        by_topic: dict[str, list] = {}
        for schema, channel, message in reader.iter_messages():
            assert channel.message_encoding == "cdr" and schema.encoding == "ros2msg"
            text = schema.data.decode()
            assert text.startswith(msg_file(schema.name).read_text())  # the type's own .msg comes first
            msg = deserialize_message(message.data, message_class(schema.name))
            by_topic.setdefault(channel.topic, []).append(msg)
    assert EXPECTED_TOPICS <= set(by_topic)
    image_schema = next(c for c in channels if c.topic == "/camera/color/image_raw")
    assert "offered_qos_profiles" in image_schema.metadata
    # the recorded camera image is the scene, the recorded points are the two answers
    from part_point_ros.ros.conversions import image_to_numpy

    assert any(np.array_equal(image_to_numpy(m), rgb) for m in by_topic["/camera/color/image_raw"])
    recorded = [p.query for m in by_topic["/part_point/points"] for p in m.points]
    assert recorded == [r["query"] for r in summary["rows"]]
    with_grasp = [r for r in summary["rows"] if r["grasp_base"] is not None]
    poses = by_topic.get("/part_point/grasp_pose", [])
    assert len(poses) == len(with_grasp)
    assert summary["recording"]["per_topic"]["/part_point/points"] == 2


@pytest.mark.ros
def test_message_definition_concatenates_each_dependency_once(demo):
    from part_point_ros.ros.recorder import DELIMITER, message_definition, msg_file

    text = message_definition("part_point_ros/msg/PartPointArray")
    sections = text.split(f"\n{DELIMITER}\nMSG: ")
    assert sections[0] == msg_file("part_point_ros/msg/PartPointArray").read_text()
    names = [s.split("\n", 1)[0] for s in sections[1:]]
    assert len(names) == len(set(names))
    assert {"part_point_ros/PartPoint", "std_msgs/Header", "builtin_interfaces/Time"} <= set(names)
    assert {"geometry_msgs/PoseStamped", "geometry_msgs/Point", "geometry_msgs/Vector3"} <= set(names)
    for section in sections[1:]:
        name, body = section.split("\n", 1)
        assert body == msg_file(name).read_text()


def test_pick_queries_alternates_kinds_and_prefers_new_parts():
    pytest.importorskip("rclpy", reason="part_point_ros.ros needs rclpy")
    from part_point_ros.ros.demo import pick_queries

    def q(kind, obj, part):
        return {"kind": kind, "object": obj, "part": part}

    truth = {
        "seed": 3,
        "queries": [q("direct", "mug", "handle"), q("direct", "mug", "body"), q("reasoning", "mug", "handle")]
        + [q("reasoning", "knife", "blade"), q("direct", "knife", "blade")],
    }
    picked = pick_queries(truth, 4)
    assert picked == pick_queries(truth, 4) and len(set(picked)) == 4
    kinds = [truth["queries"][i]["kind"] for i in picked]
    assert kinds == ["direct", "reasoning", "direct", "reasoning"]
    parts = [(truth["queries"][i]["object"], truth["queries"][i]["part"]) for i in picked[:3]]
    assert len(set(parts)) == 3  # three distinct parts exist among the first picks
    assert sorted(pick_queries(truth, 10)) == [0, 1, 2, 3, 4]


def test_missing_default_head_is_one_line(tmp_path, monkeypatch, capsys):
    demo = pytest.importorskip("part_point_ros.ros.demo", reason="part_point_ros.ros needs rclpy")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "_SOURCE_ROOT", tmp_path)  # not the checkout, which may ship the model
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))  # nor an installed share/part_point_ros
    assert cli_main(["demo", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("part-point: error: models/tiny-tabletop-a2p not found: ")
    assert "--head" in err[0] and not (tmp_path / "out").exists()


def test_missing_head_directory_is_one_line(tmp_path, capsys):
    pytest.importorskip("rclpy", reason="part_point_ros.ros needs rclpy")
    missing = tmp_path / "no_head"
    assert cli_main(["demo", "--head", str(missing), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"part-point: error: {missing} not found: --head must be a model directory "
                   "(config.json + model.safetensors)"]  # fmt: skip


def test_demo_options_from_flags():
    demo = pytest.importorskip("part_point_ros.ros.demo", reason="part_point_ros.ros needs rclpy")
    options = demo.options_from_args(Namespace(seeds="200000:200003,7", out=None, queries_per_scene=None))
    assert options.seeds == (200000, 200001, 200002, 7) and options.queries_per_scene == 3
    assert options.out == Path("runs/demo") and options.head == demo.DEFAULT_HEAD
    with pytest.raises(demo.InputError, match="queries_per_scene"):
        demo.DemoOptions(queries_per_scene=0)


def test_demo_without_rclpy_says_how_to_set_up_in_one_line():
    code = (
        "import sys; sys.modules['rclpy'] = None\n"
        "from part_point_ros.cli.main import main\n"
        "sys.exit(main(['demo']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        cwd=ROOT,
    )
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("part-point: error: the demo needs ROS 2")
    assert err[0].endswith("run scripts/demo.sh or . scripts/env.sh first") and "Traceback" not in proc.stderr


def test_untrained_models_load_together_and_say_so(tmp_path):
    """--untrained builds a real tiny backbone and a head made for it (PartPointer accepts the pair)."""
    import numpy as np

    from part_point_ros.grounding import PartPointer
    from part_point_ros.ros.demo import UNTRAINED_BANNER, build_untrained_models

    backbone, head = build_untrained_models(tmp_path)
    pointer = PartPointer.from_pretrained(backbone=backbone, head=head, method="a2p")
    result = pointer.point(np.full((60, 80, 3), 128, np.uint8), "the handle of the mug")
    assert 0 <= result.x <= 80 and 0 <= result.y <= 60
    assert "NOT meaningful" in UNTRAINED_BANNER
