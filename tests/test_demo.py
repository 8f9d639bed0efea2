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
    r"^\[(?P<seed>\d+)\] (?P<kind>\w+) +(?P<query>\".*\")  px \((?P<u>[-\d.nai]+), (?P<v>[-\d.nai]+)\) "
    r"score (?P<score>[\d.]+) (?P<found>found|found: FALSE \(no 3D point\))  "
    r"grasp (?:\((?P<grasp>.*?)\) m|n/a)  surface (?:\((?P<surface>.*?)\) m|n/a)  "
    r"lift err (?:(?P<lift>[\d.]+) mm|n/a)  part (?:(?P<part>[\d.]+) mm|n/a)  (?P<hit>HIT|MISS)$"
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


def _run(demo, backbone, base: Path, *, queries: int, threshold: float):
    """One demo run on scene SEED with a tiny random backbone and head; (summary, stdout, out)."""
    import io

    head = make_random_head(backbone, base / "head")
    stdout = io.StringIO()
    options = demo.DemoOptions(
        out=base / "out",
        seeds=(SEED,),
        queries_per_scene=queries,
        backbone=str(backbone),
        head=str(head),
        timeout=30.0,
        score_threshold=threshold,  # explicit (and said in the first lines)
    )
    return demo.run_demo(options, stdout=stdout), stdout.getvalue(), base / "out"


@pytest.fixture(scope="module")
def demo_run(demo, tiny_llava_dir, tmp_path_factory):
    """2 queries at score threshold 0: every answer gets its 3D point."""
    return _run(demo, tiny_llava_dir, tmp_path_factory.mktemp("demo"), queries=2, threshold=0.0)


def _render(out: Path):
    """The scene of SEED as the demo's sim camera rendered it (its parameters in params.yaml)."""
    from part_point_ros.sim import render_scene

    sim = yaml.safe_load((out / "params.yaml").read_text())["sim_camera_node"]["ros__parameters"]
    return render_scene(
        SEED, width=sim["width"], height=sim["height"], hfov_deg=sim["hfov_deg"], shadows=sim["shadows"]
    )


def _triple(text: str | None) -> np.ndarray | None:
    return None if text is None else np.array([float(x) for x in text.split(",")])


def _surface_by_hand(scene, u: float, v: float) -> np.ndarray:
    """The true surface point at (u, v) by the nearest pixel's depth (no interpolation), base_link."""
    k, pose = scene.intrinsics, scene.camera_pose
    z = float(scene.depth_m[round(v), round(u)])
    optical = np.array([(u - k.cx) / k.fx * z, (v - k.cy) / k.fy * z, z])
    return pose[:3, :3] @ optical + pose[:3, 3]


def _part_points_by_hand(scene, part_ids) -> np.ndarray:
    """Every visible pixel of the parts lifted with its true depth along sim.camera's pixel rays."""
    mask = np.isin(scene.part_ids, list(part_ids)) & np.isfinite(scene.depth_m)
    optical = scene.intrinsics.pixel_rays()[mask] * scene.depth_m[mask][:, None]
    return optical @ scene.camera_pose[:3, :3].T + scene.camera_pose[:3, 3]


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
        # 2D hit: the pixel under (u, v) lies in the query's mask of the same seed's render, found or not
        mask = scene.query_mask(query)
        u, v = round(row["u"]), round(row["v"])
        inside = 0 <= u < mask.shape[1] and 0 <= v < mask.shape[0]
        assert row["hit"] == bool(inside and mask[v, u])
        assert row["found"]  # --score-threshold 0: every answer is found and lifted
        assert row["gt_instances"] == sum(scene.part(pid).point_3d is not None for pid in query.part_ids)
        # lift error: the grasp point vs the render's surface at the returned pixel (sub-pixel: within
        # a few mm of the nearest pixel's, which a hand lift gives)
        assert row["grasp_base"] is not None and row["surface_base"] is not None
        grasp, surface = np.asarray(row["grasp_base"]), np.asarray(row["surface_base"])
        assert np.linalg.norm(surface - _surface_by_hand(scene, row["u"], row["v"])) < 0.005
        assert row["lift_error_mm"] == pytest.approx(1000.0 * np.linalg.norm(grasp - surface), abs=1e-6)
        # the 3D lift from the camera's uint16 depth is close to the truth: within 10 mm, or within the
        # depth spread of the 5x5 window it takes the median of (a steep surface or an object's edge)
        r, c = round(row["v"]), round(row["u"])
        window = scene.depth_m[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3]
        spread_mm = 1000.0 * float(np.nanmax(window) - np.nanmin(window))
        assert row["lift_error_mm"] < max(10.0, spread_mm + 2.0), (row["lift_error_mm"], spread_mm)
        assert row["fusion_delta_mm"] is not None and row["fusion_delta_mm"] < 1.0  # depth_fusion agrees
        # distance to the part: hits only, the nearest lifted pixel of the part's mask (or closer)
        if row["hit"]:
            nearest = np.linalg.norm(_part_points_by_hand(scene, query.part_ids) - grasp, axis=1).min()
            assert 0.0 <= row["part_surface_mm"] <= 1000.0 * nearest + 1e-6
        else:
            assert row["part_surface_mm"] is None

    # the threshold is said once, before the rows, with where it comes from
    said = [line for line in stdout.splitlines() if line.startswith("SCORE THRESHOLD")]
    assert said == [stdout.splitlines()[1]] and "0.00 (--score-threshold 0)" in said[0]
    assert summary["score_threshold"] == {"parameter": 0.0, "effective": 0.0, "source": "--score-threshold 0"}
    assert (
        yaml.safe_load((out / "params.yaml").read_text())["part_point_node"]["ros__parameters"][
            "score_threshold"
        ]
        == 0.0
    )

    # one printed line per query with the same numbers; lift err = distance of the printed points
    lines = [m for m in map(LINE.match, stdout.splitlines()) if m]
    assert len(lines) == len(rows), stdout
    for m, row in zip(lines, rows, strict=True):
        assert json.loads(m["query"]) == row["query"] and int(m["seed"]) == SEED
        assert (float(m["u"]), float(m["v"])) == pytest.approx((row["u"], row["v"]), abs=0.051)
        assert (m["hit"] == "HIT") == row["hit"] and (m["found"] == "found") == row["found"]
        grasp, surface = _triple(m["grasp"]), _triple(m["surface"])
        assert float(m["lift"]) == pytest.approx(1000.0 * np.linalg.norm(grasp - surface), abs=0.25)
        assert float(m["lift"]) == pytest.approx(row["lift_error_mm"], abs=0.051)
        assert (m["part"] is None) == (row["part_surface_mm"] is None)
        if m["part"] is not None:
            assert float(m["part"]) == pytest.approx(row["part_surface_mm"], abs=0.051)

    # the summary is recomputed from the rows
    hits = [r for r in rows if r["hit"]]
    assert summary["queries"] == 2 and summary["hits"] == len(hits) and summary["found"] == 2
    assert summary["accuracy"] == pytest.approx(len(hits) / 2)
    lifts = [r["lift_error_mm"] for r in rows]
    assert summary["lift_errors"] == 2
    assert summary["median_lift_error_mm"] == pytest.approx(float(np.median(lifts)))
    assert summary["lift_error_quartiles_mm"] == pytest.approx(list(np.percentile(lifts, [25, 75])))
    parts = [r["part_surface_mm"] for r in hits]
    assert summary["hits_with_3d"] == len(parts)
    if parts:
        assert summary["median_part_surface_mm_hits"] == pytest.approx(float(np.median(parts)))
        within = sum(d <= 5.0 for d in parts) / len(parts)
        assert summary["hits_within_5mm_of_part"] == pytest.approx(within)
    else:
        assert summary["median_part_surface_mm_hits"] is None and summary["hits_within_5mm_of_part"] is None
    for gone in ("error_mm", "median_error_mm_hits", "gt_base"):
        assert gone not in summary and all(gone not in r for r in rows)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rows)) and on_disk["accuracy"] == summary["accuracy"]
    assert on_disk["median_lift_error_mm"] == pytest.approx(summary["median_lift_error_mm"])
    markdown = (out / "summary.md").read_text()
    assert f"{summary['hits']}/2" in markdown and "score threshold 0.00" in markdown
    assert f"median {summary['median_lift_error_mm']:.1f} mm" in markdown
    assert f"| {rows[0]['lift_error_mm']:.1f} |" in markdown
    assert (
        "lift error" in stdout.splitlines()[-1]
        and f"{summary['median_lift_error_mm']:.1f} mm" in (stdout.splitlines()[-1])
    )
    assert summary["ros"]["discovery"] == "localhost" and 101 <= summary["ros"]["domain_id"] <= 200


@pytest.fixture(scope="module")
def demo_run_not_found(demo, tiny_llava_dir, tmp_path_factory):
    """The demo at score threshold 1.0: every answer comes back found: false."""
    return _run(demo, tiny_llava_dir, tmp_path_factory.mktemp("demo_not_found"), queries=1, threshold=1.0)


@pytest.mark.ros
def test_demo_scores_a_not_found_answer_on_its_2d_point_and_says_found_false(demo_run_not_found):
    summary, stdout, out = demo_run_not_found
    scene = _render(out)
    (row,) = summary["rows"]
    assert not row["found"] and row["score"] < 1.0 and "below the threshold 1.000" in row["message"]
    assert row["grasp_base"] is None and row["lift_error_mm"] is None and row["part_surface_mm"] is None
    mask = scene.query_mask(scene.queries[row["query_index"]])
    u, v = round(row["u"]), round(row["v"])
    assert row["hit"] == bool(0 <= u < mask.shape[1] and 0 <= v < mask.shape[0] and mask[v, u])
    assert summary["found"] == 0 and summary["accuracy"] == (1.0 if row["hit"] else 0.0)
    assert summary["lift_errors"] == 0 and summary["median_lift_error_mm"] is None
    (line,) = [m for m in map(LINE.match, stdout.splitlines()) if m]
    assert line["found"] == "found: FALSE (no 3D point)" and line["grasp"] is None and line["lift"] is None
    assert "SCORE THRESHOLD 1.00 (--score-threshold 1)" in stdout and "lift error n/a" in stdout
    assert (out / row["heatmap_png"]).exists() and (out / row["overlay_png"]).exists()
    assert "| **no** |" in (out / "summary.md").read_text()


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


# ---------------------------------------------------------------------- the 3D numbers, without ROS
@pytest.fixture(scope="module")
def scene():
    """Scene SEED as the demo's sim camera renders it (config/part_point.yaml: 320x240, 60 deg)."""
    from part_point_ros.sim import render_scene

    return render_scene(SEED, width=320, height=240, hfov_deg=60.0, shadows=True)


def _ray(scene, point: np.ndarray) -> np.ndarray:
    """Unit vector from the camera centre through ``point`` (base_link)."""
    d = point - scene.camera_pose[:3, 3]
    return d / np.linalg.norm(d)


def _on_part(scene, part_ids, step: int = 7) -> list[tuple[int, int]]:
    """(u, v) of some pixels of the parts whose 3x3 neighbourhood is the same part (away from edges)."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(np.isin(scene.part_ids, list(part_ids)), np.ones((3, 3)))
    rows, cols = np.nonzero(inner & np.isfinite(scene.depth_m))
    return [(int(c), int(r)) for r, c in zip(rows[::step], cols[::step], strict=True)]


def test_true_surface_point_is_the_pixel_lifted_with_its_true_depth(demo, scene):
    query = scene.queries[0]
    pixels = _on_part(scene, query.part_ids)
    assert len(pixels) > 20
    for u, v in pixels[:50]:
        truth = demo.true_surface_point(scene, u, v)
        np.testing.assert_allclose(truth, _surface_by_hand(scene, u, v), atol=1e-9)
        # a point lifted with the true depth: 0 mm; 10 mm along the ray or across it: 10 mm
        assert demo.lift_error_mm(scene, u, v, truth) == pytest.approx(0.0, abs=1e-9)
        along = truth + 0.010 * _ray(scene, truth)
        assert demo.lift_error_mm(scene, u, v, along) == pytest.approx(10.0, abs=1e-6)
        across = truth + 0.010 * np.cross(_ray(scene, truth), [0.0, 0.0, 1.0]) / np.linalg.norm(
            np.cross(_ray(scene, truth), [0.0, 0.0, 1.0])
        )
        assert demo.lift_error_mm(scene, u, v, across) == pytest.approx(10.0, abs=1e-6)
        assert demo.lift_error_mm(scene, u, v, None) is None
    # nothing there: off the image, not finite
    for u, v in [(-1.0, 5.0), (5.0, 240.0), (320.0, 5.0), (float("nan"), 3.0)]:
        assert demo.true_surface_point(scene, u, v) is None
        assert demo.lift_error_mm(scene, u, v, [0.0, 0.0, 0.0]) is None


def test_true_surface_point_is_exact_between_pixel_centres_on_a_plane(demo, scene):
    """Bilinear in inverse depth: a sub-pixel on the table top (base_link z = 0) lands on it; the
    nearest pixel's depth along the same ray does not."""
    lifted = _part_points_by_hand(scene, [0]).reshape(-1, 3)  # part id 0: table, floor
    table = np.zeros(scene.part_ids.shape, bool)
    table[(scene.part_ids == 0) & np.isfinite(scene.depth_m)] = np.abs(lifted[:, 2]) < 1e-4
    flat = table[:-1, :-1] & table[1:, :-1] & table[:-1, 1:] & table[1:, 1:]  # all 4 corners on the top
    rows, cols = np.nonzero(flat)
    assert len(rows) > 100
    nearest_off = []
    for r, c in zip(rows[::53], cols[::53], strict=True):
        u, v = c + 0.37, r + 0.61
        point = demo.true_surface_point(scene, u, v)
        assert abs(point[2]) < 2e-7  # on the plane, to float32 depth (linear in depth: ~5e-7)
        np.testing.assert_allclose(
            scene.intrinsics.project((point - scene.camera_pose[:3, 3]) @ scene.camera_pose[:3, :3])[0],
            (u, v),
            atol=1e-6,
        )  # and on the ray of (u, v)
        nearest_off.append(abs(_surface_by_hand(scene, u, v)[2]))
    assert max(nearest_off) > 1e-4  # the nearest-pixel depth would be off the plane: the test can tell


def test_true_surface_point_uses_the_nearest_pixel_across_an_edge(demo, scene):
    """Where the 4 pixels around (u, v) span a silhouette (depth jump), the nearest pixel's depth."""
    depth = scene.depth_m
    jump = np.abs(depth[:, 1:] - depth[:, :-1]) > 0.05  # horizontal neighbours far apart
    rows, cols = np.nonzero(jump & np.isfinite(depth[:, 1:]) & np.isfinite(depth[:, :-1]))
    assert len(rows) > 10
    for r, c in zip(rows[:: max(1, len(rows) // 20)], cols[:: max(1, len(rows) // 20)], strict=True):
        if r + 1 >= depth.shape[0]:
            continue
        for u in (c + 0.3, c + 0.7):  # left of the middle: pixel c; right: pixel c + 1
            np.testing.assert_allclose(
                demo.true_surface_point(scene, u, r + 0.2), _surface_by_hand(scene, u, r + 0.2), atol=1e-9
            )


def test_part_surface_is_the_distance_to_the_parts_visible_surface(demo, scene):
    query = scene.queries[0]
    others = [p.part_id for p in scene.parts if p.part_id not in query.part_ids and p.pixel_count > 0]
    pixels = _on_part(scene, query.part_ids)
    by_hand = _part_points_by_hand(scene, query.part_ids)
    for u, v in pixels[:20]:
        on = demo.true_surface_point(scene, u, v)
        assert demo.part_surface_mm(scene, query.part_ids, on) == pytest.approx(0.0, abs=1e-9)
        # between pixel centres on the part: still ~0 (its own projection's true surface counts)
        between = demo.true_surface_point(scene, u + 0.4, v - 0.3)
        assert demo.part_surface_mm(scene, query.part_ids, between) == pytest.approx(0.0, abs=1e-6)
        # 10 mm off the surface towards the camera: at most 10 mm, and what the lifted pixels say
        off = on - 0.010 * _ray(scene, on)
        d = demo.part_surface_mm(scene, query.part_ids, off)
        assert 0.5 < d <= 10.0 + 1e-6
        assert d == pytest.approx(1000.0 * np.linalg.norm(by_hand - off, axis=1).min(), abs=1e-6)
        # another part's ids: that part's distance, not this one's
        if others:
            far = demo.part_surface_mm(scene, others[:1], on)
            assert far == pytest.approx(
                1000.0 * np.linalg.norm(_part_points_by_hand(scene, others[:1]) - on, axis=1).min(), abs=1e-6
            )
            assert far > 0.0
    assert demo.part_surface_mm(scene, query.part_ids, None) is None
    assert demo.part_surface_mm(scene, [60000], [0.5, 0.0, 0.1]) is None  # no such part: no pixels


def _answer(u: float, v: float, *, found: bool, score: float, grasp=None):
    """A /point_part response as _score reads it."""
    from types import SimpleNamespace as NS

    point = NS(u=u, v=v, score=score, found=found)
    pose = NS(pose=NS(position=NS(x=grasp[0], y=grasp[1], z=grasp[2]))) if grasp is not None else None
    message = "found" if found else f"part not found: score {score:.3f} is below the threshold 0.500"
    return NS(point=point, has_grasp_pose=grasp is not None, grasp_pose=pose, latency_ms=1.0, message=message)


def _scene_of(demo, scene):
    from part_point_ros.ros.sim_camera_node import scene_ground_truth

    truth = scene_ground_truth(scene, optical_frame="camera_color_optical_frame", base_frame="base_link")
    return demo._Scene(seed=SEED, truth=truth, scene=scene, digest="", first_stamp=0)


def test_score_counts_a_not_found_answer_on_its_2d_point_and_says_so(demo, scene):
    s = _scene_of(demo, scene)
    query = scene.queries[0]
    u, v = _on_part(scene, query.part_ids)[0]
    row = demo._score(s, 0, _answer(u + 0.2, v - 0.1, found=False, score=0.31), None)
    assert row["hit"] and not row["found"] and row["score"] == pytest.approx(0.31)
    assert row["grasp_base"] is None and row["lift_error_mm"] is None and row["part_surface_mm"] is None
    np.testing.assert_allclose(row["surface_base"], demo.true_surface_point(scene, u + 0.2, v - 0.1))
    line = demo.format_row(row)
    assert "score 0.31 found: FALSE (no 3D point)" in line and line.endswith("HIT")
    m = LINE.match(line)
    assert m and m["grasp"] is None and m["lift"] is None and m["found"] != "found"
    # outside the mask: a miss, found or not
    outside = np.argwhere(~scene.query_mask(query))[0]
    miss = demo._score(s, 0, _answer(float(outside[1]), float(outside[0]), found=True, score=0.9), None)
    assert not miss["hit"] and miss["found"] and miss["part_surface_mm"] is None
    nan = demo._score(s, 0, _answer(float("nan"), float("nan"), found=False, score=0.0), None)
    assert not nan["hit"] and nan["surface_base"] is None


def test_score_of_a_found_answer_measures_the_lift_and_the_part(demo, scene):
    s = _scene_of(demo, scene)
    query = scene.queries[0]
    u, v = _on_part(scene, query.part_ids)[3]
    truth = demo.true_surface_point(scene, u, v)
    behind = truth + 0.010 * _ray(scene, truth)  # the lift put it 10 mm too deep
    row = demo._score(s, 0, _answer(u, v, found=True, score=0.8, grasp=behind.tolist()), None)
    assert row["hit"] and row["found"]
    assert row["lift_error_mm"] == pytest.approx(10.0, abs=1e-6)
    assert 0.0 < row["part_surface_mm"] <= 10.0 + 1e-6
    exact = demo._score(s, 0, _answer(u, v, found=True, score=0.8, grasp=truth.tolist()), None)
    assert exact["lift_error_mm"] == pytest.approx(0.0, abs=1e-9)
    assert exact["part_surface_mm"] == pytest.approx(0.0, abs=1e-9)
    m = LINE.match(demo.format_row(row))
    assert m and m["found"] == "found" and float(m["lift"]) == pytest.approx(10.0, abs=0.051)
    assert float(m["part"]) == pytest.approx(row["part_surface_mm"], abs=0.051)
    for gone in ("error_mm", "gt_base"):
        assert gone not in row


def test_summarize_lift_errors_over_every_3d_point_and_the_part_over_the_hits(demo):
    def row(kind, hit, lift, part, found=True):
        return {"kind": kind, "hit": hit, "found": found, "lift_error_mm": lift, "part_surface_mm": part}

    rows = [
        row("direct", True, 1.0, 0.0),
        row("direct", True, 3.0, 6.0),
        row("direct", False, 9.0, None),  # a miss: its lift error counts, it has no part distance
        row("reasoning", True, 5.0, 4.0),
        row("reasoning", True, None, None, found=False),  # a hit without a 3D point: accuracy only
        row("reasoning", False, None, None, found=False),
    ]
    summary = demo.summarize(rows)
    assert summary["queries"] == 6 and summary["hits"] == 4 and summary["accuracy"] == pytest.approx(4 / 6)
    assert summary["found"] == 4 and summary["lift_errors"] == 4
    assert summary["median_lift_error_mm"] == pytest.approx(4.0)  # median of 1, 3, 5, 9
    assert summary["lift_error_quartiles_mm"] == pytest.approx([2.5, 6.0])
    assert summary["hits_with_3d"] == 3
    assert summary["median_part_surface_mm_hits"] == pytest.approx(4.0)  # 0, 4, 6
    assert summary["hits_within_5mm_of_part"] == pytest.approx(2 / 3)
    direct = summary["by_kind"]["direct"]
    assert direct["accuracy"] == pytest.approx(2 / 3) and direct["median_lift_error_mm"] == pytest.approx(3.0)
    assert direct["hits_within_5mm_of_part"] == pytest.approx(0.5)
    reasoning = summary["by_kind"]["reasoning"]
    assert reasoning["lift_errors"] == 1 and reasoning["hits_within_5mm_of_part"] == pytest.approx(1.0)
    empty = demo.summarize([row("direct", False, None, None, found=False)])
    assert empty["accuracy"] == 0.0 and empty["median_lift_error_mm"] is None
    assert empty["lift_error_quartiles_mm"] is None and empty["hits_within_5mm_of_part"] is None
    assert "error_mm" not in summary and "median_error_mm_hits" not in summary
    text = demo.summary_sentence(summary)
    assert "4/6" in text and "median 4.0 mm, quartiles 2.5 / 6.0 mm over 4 points" in text
    assert "within 5 mm of the part's surface 2/3 = 66.7 %, median 4.0 mm" in text


def test_demo_uses_the_nodes_score_threshold_unless_told_and_says_which(demo, tmp_path):
    from part_point_ros.ros.params import default_config_path

    base = yaml.safe_load(default_config_path().read_text())["part_point_node"]["ros__parameters"]
    config = demo.demo_parameters(demo.DemoOptions(), backbone="b", head="h")
    pp = config["part_point_node"]["ros__parameters"]
    assert pp["score_threshold"] == base["score_threshold"] == -1.0  # no hidden override
    threshold = demo.score_threshold(demo.DemoOptions(), config)
    assert threshold["parameter"] == -1.0 and threshold["effective"] == 0.5  # the a2p default
    line = demo.threshold_line(threshold)
    assert line.startswith("SCORE THRESHOLD 0.50 (part_point_node's default: score_threshold -1 in ")
    assert "= the a2p default" in line and "found: false" in line and "--score-threshold" in line
    assert "\n" not in line
    calibrated = tmp_path / "head"  # a head whose config carries a calibrated threshold: that is the default
    calibrated.mkdir()
    (calibrated / "config.json").write_text(
        json.dumps({"extra": {"calibration": {"found_threshold": 0.125}}})
    )
    config = demo.demo_parameters(demo.DemoOptions(), backbone="b", head=str(calibrated))
    threshold = demo.score_threshold(demo.DemoOptions(), config)
    assert threshold["parameter"] == -1.0 and threshold["effective"] == 0.125
    assert threshold["source"].endswith(
        "= the a2p default (the head's calibrated one, config.json extra.calibration)"
    )

    told = demo.DemoOptions(score_threshold=0.25)
    config = demo.demo_parameters(told, backbone="b", head="h")
    assert config["part_point_node"]["ros__parameters"]["score_threshold"] == 0.25
    assert demo.score_threshold(told, config) == {
        "parameter": 0.25,
        "effective": 0.25,
        "source": "--score-threshold 0.25",
    }
    attention = demo.DemoOptions(method="attention")
    config = demo.demo_parameters(attention, backbone="b", head="")
    assert demo.score_threshold(attention, config)["effective"] == 0.0  # attention's default
    with pytest.raises(demo.InputError, match="score_threshold"):
        demo.DemoOptions(score_threshold=1.5)
    options = demo.options_from_args(Namespace(seeds=None, out=None, score_threshold=0.3))
    assert options.score_threshold == 0.3
    assert demo.options_from_args(Namespace(seeds=None, out=None)).score_threshold is None
