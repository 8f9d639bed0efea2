"""launch/grasp.launch.py and rviz/part_point.rviz, checked statically.

``launch`` and ``launch_ros`` are not on PyPI, so the launch file cannot run here: it is parsed
(ast) and its calls are checked against the Jazzy launch / launch_ros constructor keywords, the
console scripts, config/part_point.yaml and params.graph_overrides.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "grasp.launch.py"
CONFIG = ROOT / "config" / "part_point.yaml"
RVIZ = ROOT / "rviz" / "part_point.rviz"

# keyword arguments of the Jazzy constructors (launch 3.4 / launch_ros 0.26 sources)
KEYWORDS = {
    "DeclareLaunchArgument": {"default_value", "description", "choices"},
    "Node": {
        "executable",
        "package",
        "name",
        "namespace",
        "exec_name",
        "parameters",
        "remappings",
        "ros_arguments",
        "arguments",
        "output",
        "condition",
        "emulate_tty",
        "respawn",
        "respawn_delay",
    },  # fmt: skip
    "ChangeState": {"lifecycle_node_matcher", "transition_id"},
    "OnStateTransition": {
        "entities",
        "target_lifecycle_node",
        "transition",
        "start_state",
        "goal_state",
        "matcher",
        "handle_once",  # EventHandler's, through **kwargs
    },
    "EmitEvent": {"event"},
    "LogInfo": {"msg"},
    "OpaqueFunction": {"function", "args", "kwargs"},
}
KEYWORDS["LifecycleNode"] = KEYWORDS["Node"] | {"autostart"}
ALLOWED_IMPORTS = {
    "os",
    "launch",
    "launch.actions",
    "launch.conditions",
    "launch.events",
    "launch.substitutions",
}
ALLOWED_IMPORTS |= {"launch_ros.actions", "launch_ros.event_handlers", "launch_ros.events.lifecycle"}
ALLOWED_IMPORTS |= {"lifecycle_msgs.msg", "ament_index_python.packages", "part_point_ros.ros.params"}


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)
    ]


def keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def constant(node) -> object:
    """The literal value of ``node``; None for a missing keyword or a non-literal expression."""
    try:
        return ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None


def module_tuple(tree: ast.Module, name: str) -> tuple:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{LAUNCH.name} has no module-level {name}")


def declared(tree) -> dict[str, ast.Call]:
    return {constant(c.args[0]): c for c in calls(tree, "DeclareLaunchArgument")}


def test_the_launch_file_defines_generate_launch_description_and_imports_only_launch_apis(tree):
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS
    from part_point_ros.ros import params

    assert callable(params.graph_overrides)


def test_every_call_uses_the_constructor_keywords_of_launch_and_launch_ros(tree):
    for name, allowed in KEYWORDS.items():
        for call in calls(tree, name):
            used = {kw.arg for kw in call.keywords}
            assert used <= allowed, f"line {call.lineno}: {name}() has no keyword(s) {used - allowed}"
    for call in calls(tree, "LifecycleNode"):  # launch_ros >= 0.26 requires name AND namespace
        assert keyword(call, "name") is not None and keyword(call, "namespace") is not None


def test_every_launch_argument_is_declared_with_a_description_and_used(tree):
    args = declared(tree)
    assert {
        "backbone",
        "head",
        "method",
        "camera_namespace",
        "target_frame",
        "use_sim_camera",
        "rviz",
    } <= set(args)
    for name, call in args.items():
        description = constant(keyword(call, "description"))
        assert isinstance(description, str) and len(description) > 15, f"{name} has no real description"
        assert keyword(call, "default_value") is not None, f"{name} has no default"
        choices = constant(keyword(call, "choices"))
        if choices is not None:
            assert constant(keyword(call, "default_value")) in choices
    used = {
        constant(c.args[0]) for c in calls(tree, "LaunchConfiguration") if isinstance(c.args[0], ast.Constant)
    }
    overrides = set(module_tuple(tree, "OVERRIDE_ARGUMENTS"))
    assert used | overrides <= set(args), f"used but not declared: {(used | overrides) - set(args)}"
    assert set(args) <= used | overrides, f"declared but never used: {set(args) - used - overrides}"


def test_override_arguments_are_the_keys_graph_overrides_knows(tree):
    from part_point_ros.ros.params import MODEL_ARGUMENTS, TOPIC_ARGUMENTS, graph_overrides

    known = set(MODEL_ARGUMENTS) | set(TOPIC_ARGUMENTS) | {"camera_namespace", "target_frame", "seed"}
    known |= {"score_threshold"}
    names = module_tuple(tree, "OVERRIDE_ARGUMENTS")
    assert set(names) <= known, set(names) - known
    # every override argument changes some parameter of some node
    config = yaml.safe_load(CONFIG.read_text())
    for name in names:
        value = "7" if name == "seed" else "/x" if "topic" in name or "namespace" in name else "a2p"
        value = "0.3" if name == "score_threshold" else value
        changed = {node: p for node, p in graph_overrides({name: value}).items() if p}
        assert changed, f"launch argument {name} sets nothing"
        for node, params in changed.items():
            unknown = set(params) - set(config[node]["ros__parameters"])
            assert not unknown, f"{name} sets {unknown} of {node}, which config/part_point.yaml does not list"


def test_nodes_name_console_scripts_and_sections_of_the_config(tree):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    cmake = (ROOT / "CMakeLists.txt").read_text()
    config = yaml.safe_load(CONFIG.read_text())
    ours = [
        c
        for c in calls(tree, "Node") + calls(tree, "LifecycleNode")
        if constant(keyword(c, "package")) != "rviz2"
    ]
    executables = set()
    for call in ours:
        package = keyword(call, "package")
        assert getattr(package, "id", None) == "PACKAGE" or constant(package) == "part_point_ros"
        executable, name = constant(keyword(call, "executable")), constant(keyword(call, "name"))
        executables.add(executable)
        assert executable in scripts, f"{executable} is not a console script in pyproject.toml"
        assert re.search(rf'"{executable}=part_point_ros\.ros\.', cmake), (
            f"CMakeLists.txt does not install {executable}"
        )
        assert name in config and "ros__parameters" in config[name], f"config has no section {name}"
        assert keyword(call, "parameters") is not None
    assert executables == {"part_point_node", "depth_fusion_node", "sim_camera_node"}
    assert module_tuple(tree, "PACKAGE") == "part_point_ros"
    lifecycle = calls(tree, "LifecycleNode")
    assert [constant(keyword(c, "executable")) for c in lifecycle] == ["part_point_node"]
    conditional = {constant(keyword(c, "executable")) for c in calls(tree, "Node") if keyword(c, "condition")}
    assert conditional == {"sim_camera_node", "rviz2"}
    assert re.search(r"foreach\(share_dir launch config calib rviz", cmake), (
        "launch/config/rviz are not installed"
    )


def test_part_point_node_is_configured_then_activated_by_lifecycle_events(tree):
    transitions = [
        ast.unparse(keyword(c, "transition_id"))
        for c in calls(tree, "ChangeState")
        if keyword(c, "transition_id")
    ]
    assert transitions.count("Transition.TRANSITION_CONFIGURE") == 1
    assert transitions.count("Transition.TRANSITION_ACTIVATE") == 1
    (handler,) = calls(tree, "OnStateTransition")
    assert constant(keyword(handler, "goal_state")) == "inactive"
    # only the launch's own configure: a deactivate also ends in 'inactive' (it re-activated the node
    # at once), and a user's later configure must not be followed by an activate
    assert constant(keyword(handler, "start_state")) == "configuring"
    assert constant(keyword(handler, "handle_once")) is True
    assert ast.unparse(keyword(handler, "target_lifecycle_node")) == "part_point"
    inside = [
        ast.unparse(keyword(c, "transition_id")) for c in calls(keyword(handler, "entities"), "ChangeState")
    ]
    assert inside == ["Transition.TRANSITION_ACTIVATE"]
    assert len(calls(tree, "RegisterEventHandler")) == 1
    for call in calls(tree, "ChangeState"):
        assert ast.unparse(keyword(call, "lifecycle_node_matcher")) == "matches_action(part_point)"


def test_shipped_files_the_launch_file_names_exist(tree):
    text = LAUNCH.read_text()
    assert '"config", "part_point.yaml"' in text and CONFIG.is_file()
    assert '"rviz", "part_point.rviz"' in text and RVIZ.is_file()


def test_rviz_config_shows_overlay_markers_grasp_pose_and_tf_in_base_link():
    rviz = yaml.safe_load(RVIZ.read_text())
    manager = rviz["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "base_link"
    displays = {d["Name"]: d for d in manager["Displays"]}
    classes = {d["Class"] for d in displays.values()}
    assert {"rviz_default_plugins/TF", "rviz_default_plugins/Image"} <= classes
    others = [d for d in displays.values() if d["Class"] != "rviz_default_plugins/Image" and "Topic" in d]
    topics = {d["Class"]: d["Topic"]["Value"] for d in others}
    config = yaml.safe_load(CONFIG.read_text())
    pp, fusion = config["part_point_node"]["ros__parameters"], config["depth_fusion_node"]["ros__parameters"]
    assert topics["rviz_default_plugins/MarkerArray"] == fusion["markers_topic"]
    assert topics["rviz_default_plugins/Pose"] == fusion["grasp_pose_topic"]
    images = {d["Topic"]["Value"] for d in displays.values() if d["Class"] == "rviz_default_plugins/Image"}
    assert {pp["overlay_topic"], pp["heatmap_topic"]} <= images
    overlay = next(d for d in displays.values() if d.get("Topic", {}).get("Value") == pp["overlay_topic"])
    assert (
        overlay["Enabled"] and overlay["Topic"]["Durability Policy"] == "Transient Local"
    )  # latched publisher
