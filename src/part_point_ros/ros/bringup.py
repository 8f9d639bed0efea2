"""``part-point-ros``: the grasp.launch.py graph in ONE process, without ``launch``.

Starts (optionally) sim_camera_node, then depth_fusion_node and part_point_node (configured and
activated here) on one MultiThreadedExecutor. Parameters come from the same YAML as the launch file
(config/part_point.yaml, each node's ``ros__parameters`` section), with the flags below on top; the
flags mirror the launch arguments (params.graph_overrides is the one table for both).

With the synthetic camera, part_point_node and depth_fusion_node both follow the camera's latched
extrinsics topic (tf2 is not on PyPI), so a scene switch moves the grasp poses of both.

    part-point-ros --sim-camera --seed 3        # the shipped synthetic-world models (models/)
    part-point-ros --head /path/to/head --sim-camera --seed 3
    part-point-ros --params-file my.yaml --camera-namespace /camera --target-frame base_link
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.parameter import Parameter

from part_point_ros.ros.params import (
    check_params_file,
    default_config_path,
    graph_overrides,
    load_node_parameters,
    sim_world_models,
)
from part_point_ros.ros.spin import USER_ERRORS, error_line, ignore_further_interrupts, ros_context


@dataclass
class BringupOptions:
    """What to start and with which overrides (the launch arguments, as Python values)."""

    params_file: Path = field(default_factory=default_config_path)
    use_sim_camera: bool = False
    rviz: bool = False
    rviz_config: Path | None = None
    threads: int = 4
    arguments: dict[str, Any] = field(default_factory=dict)  # keys of params.graph_overrides


def node_parameters(options: BringupOptions, node_name: str, extra: dict[str, Any] | None = None) -> list:
    """The node's section of the params file, then the flags' overrides, then ``extra``."""
    by_name = {p.name: p for p in load_node_parameters(check_params_file(options.params_file), node_name)}
    overrides = graph_overrides(options.arguments)[node_name]
    if node_name == "part_point_node" and options.use_sim_camera:
        overrides = {**sim_world_models(options.params_file, options.arguments), **overrides}
    for name, value in {**overrides, **(extra or {})}.items():
        by_name[name] = Parameter(name, value=value)
    return list(by_name.values())


class Bringup:
    """The graph's nodes on one executor. ``start()`` configures + activates part_point_node."""

    def __init__(self, options: BringupOptions, *, context: Context | None = None) -> None:
        from part_point_ros.ros.depth_fusion_node import DepthFusionNode
        from part_point_ros.ros.part_point_node import PartPointNode

        self.options = options
        self.nodes: list = []
        self.sim_camera = None
        try:
            if options.use_sim_camera:
                from part_point_ros.ros.sim_camera_node import SimCameraNode

                self.sim_camera = self._add(
                    SimCameraNode(
                        context=context, parameter_overrides=node_parameters(options, "sim_camera_node")
                    )
                )
            self.depth_fusion = self._add(
                DepthFusionNode(
                    context=context,
                    parameter_overrides=node_parameters(options, "depth_fusion_node"),
                )
            )
            self.part_point = self._add(
                PartPointNode(
                    context=context, parameter_overrides=node_parameters(options, "part_point_node")
                )
            )
        except BaseException:
            self.shutdown()
            raise
        self.executor = MultiThreadedExecutor(num_threads=options.threads, context=context)
        for node in self.nodes:
            self.executor.add_node(node)
        self._rviz: subprocess.Popen | None = None

    def _add(self, node):
        self.nodes.append(node)
        return node

    def start(self) -> bool:
        """Configure and activate part_point_node (loads the model); False with the reason logged."""
        ok = self.part_point.configure_and_activate()
        if ok and self.options.rviz:
            self._start_rviz()
        return ok

    def _start_rviz(self) -> None:
        rviz = shutil.which("rviz2")
        config = self.options.rviz_config or default_config_path().parents[1] / "rviz" / "part_point.rviz"
        if rviz is None:
            self.part_point.get_logger().warning(
                "rviz2 is not on PATH (it comes with a system ROS 2): not started"
            )
            return
        self._rviz = subprocess.Popen([rviz, "-d", str(config)])

    def spin(self) -> None:
        self.executor.spin()

    def shutdown(self) -> None:
        if getattr(self, "_rviz", None) is not None and self._rviz.poll() is None:
            self._rviz.terminate()
        if getattr(self, "executor", None) is not None:
            self.executor.shutdown()
            # rclpy 7.1 (Jazzy): shutdown() returns while callbacks still run in the executor's
            # thread pool (a private attribute); drain it so none touches a node destroyed below
            pool = getattr(self.executor, "_executor", None)
            if pool is not None and hasattr(pool, "shutdown"):
                pool.shutdown(wait=True)
        for node in reversed(self.nodes):
            node.destroy_node()
        self.nodes = []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="part-point-ros",
        description="Run the part pointing ROS 2 graph in one process (what grasp.launch.py starts). "
        "Anything after --ros-args goes to ROS.",
    )
    p.add_argument(
        "--params-file",
        type=Path,
        default=None,
        help="node parameters YAML (default: config/part_point.yaml)",
    )
    p.add_argument("--backbone", help="MLLM hub id or directory (default: the one named in the head)")
    p.add_argument("--head", help="trained head directory")
    p.add_argument("--method", choices=("a2p", "attention", "text", "pop"), help="pointing method")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="model dtype")
    p.add_argument(
        "--heads-file", help="attention: localization heads file (default: shipped for the backbone)"
    )
    p.add_argument("--score-threshold", type=float, help="answer threshold; -1 = the method's default")
    p.add_argument("--camera-namespace", help="camera namespace of the RealSense-style topics, e.g. /camera")
    p.add_argument("--color-topic", help="colour image topic (over the namespace)")
    p.add_argument("--camera-info-topic", help="colour camera_info topic (over the namespace)")
    p.add_argument("--depth-topic", help="aligned depth topic (over the namespace)")
    p.add_argument("--target-frame", help="frame of the grasp poses, e.g. base_link")
    p.add_argument(
        "--sim-camera",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="start the synthetic RGB-D camera (sim_camera_node)",
    )
    p.add_argument("--seed", type=int, help="scene seed of the synthetic camera")
    p.add_argument(
        "--rviz", action=argparse.BooleanOptionalAction, default=False, help="start rviz2 if installed"
    )
    p.add_argument("--rviz-config", type=Path, help="RViz config (default: rviz/part_point.rviz)")
    p.add_argument("--threads", type=int, default=4, help="executor threads")
    return p


def parse_options(argv: Sequence[str]) -> BringupOptions:
    """CLI flags -> BringupOptions (argparse exits with a usage line on a bad flag)."""
    ns = build_parser().parse_args(list(argv))
    keys = ("backbone", "head", "method", "device", "dtype", "heads_file", "score_threshold")
    keys += ("camera_namespace", "color_topic")
    keys += ("camera_info_topic", "depth_topic", "target_frame", "seed")
    return BringupOptions(
        params_file=ns.params_file or default_config_path(),
        use_sim_camera=ns.sim_camera,
        rviz=ns.rviz,
        rviz_config=ns.rviz_config,
        threads=max(2, ns.threads),
        arguments={k: getattr(ns, k) for k in keys if getattr(ns, k) is not None},
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    options = parse_options(argv[:cut])
    try:
        with ros_context(["part-point-ros", *argv[cut:]]):
            graph = Bringup(options)
            try:
                if not graph.start():
                    print(f"error: {graph.part_point.last_error}", file=sys.stderr)
                    return 1
                graph.spin()
            finally:
                graph.shutdown()
    except (KeyboardInterrupt, ExternalShutdownException):
        ignore_further_interrupts()
    except USER_ERRORS as err:  # a bad flag value, params file or parameter: one line
        print(error_line(err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
