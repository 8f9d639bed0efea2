"""Launch the part pointing graph: part_point_node (lifecycle), depth_fusion_node, and optionally
sim_camera_node and RViz.

    ros2 launch part_point_ros grasp.launch.py use_sim_camera:=true    # the shipped synthetic-world models
    ros2 launch part_point_ros grasp.launch.py head:=/path/to/head use_sim_camera:=true rviz:=true
    ros2 launch part_point_ros grasp.launch.py head:=... camera_namespace:=/camera target_frame:=base_link

Parameters come from ``params_file`` (default: the installed config/part_point.yaml); the launch
arguments below override it when not empty (the same table as `part-point-ros`:
part_point_ros.ros.params.graph_overrides). With use_sim_camera:=true and no backbone or head
anywhere, part_point_node runs the shipped synthetic-world models (share/part_point_ros/models).

Lifecycle: the launch configures part_point_node once and activates it when that first configure
succeeds; if it fails (e.g. no head), the node logs why and stays unconfigured. Afterwards the node
is yours: `ros2 lifecycle set /part_point_node deactivate | cleanup | configure | activate` each do
only what they say (a later configure is not followed by an automatic activate).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription
from part_point_ros.ros.params import check_params_file, graph_overrides, sim_world_models

PACKAGE = "part_point_ros"

# launch arguments that become parameter overrides (see params.graph_overrides)
OVERRIDE_ARGUMENTS = (
    "backbone",
    "head",
    "method",
    "device",
    "dtype",
    "heads_file",
    "score_threshold",
    "camera_namespace",
    "color_topic",
    "camera_info_topic",
    "depth_topic",
    "target_frame",
    "seed",
)


def _nodes(context, *args, **kwargs):
    """The nodes, with the launch arguments resolved into parameter overrides."""
    share = get_package_share_directory(PACKAGE)
    params_file = LaunchConfiguration("params_file").perform(context) or os.path.join(
        share, "config", "part_point.yaml"
    )
    rviz_config = LaunchConfiguration("rviz_config").perform(context) or os.path.join(
        share, "rviz", "part_point.rviz"
    )
    params_file = str(check_params_file(params_file))  # a typo fails here, not as "head is empty"
    arguments = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDE_ARGUMENTS}
    overrides = graph_overrides(arguments)
    use_sim_camera = LaunchConfiguration("use_sim_camera").perform(context) == "true"
    notes = []
    if use_sim_camera:
        shipped = sim_world_models(params_file, arguments)
        overrides["part_point_node"] = {**shipped, **overrides["part_point_node"]}
        if shipped:
            notes.append(LogInfo(msg=f"synthetic camera, no model given: the shipped models {shipped}"))

    part_point = LifecycleNode(
        package=PACKAGE,
        executable="part_point_node",
        name="part_point_node",
        namespace="",
        output="screen",
        parameters=[params_file, overrides["part_point_node"]],
    )
    depth_fusion = Node(
        package=PACKAGE,
        executable="depth_fusion_node",
        name="depth_fusion_node",
        output="screen",
        parameters=[params_file, overrides["depth_fusion_node"]],
    )
    sim_camera = Node(
        package=PACKAGE,
        executable="sim_camera_node",
        name="sim_camera_node",
        output="screen",
        parameters=[params_file, overrides["sim_camera_node"]],
        condition=IfCondition(LaunchConfiguration("use_sim_camera")),
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", rviz_config],
        output="screen",
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    if LaunchConfiguration("rviz").perform(context) == "true" and not _rviz_installed():
        rviz = LogInfo(msg="rviz:=true but rviz2 is not installed (apt install ros-jazzy-rviz2): not started")
    # configure on start; activate once that configure has loaded the model (configuring -> inactive),
    # once: a deactivate also ends in 'inactive', and a user's later configure stays theirs
    configure = EmitEvent(
        event=ChangeState(
            lifecycle_node_matcher=matches_action(part_point),
            transition_id=Transition.TRANSITION_CONFIGURE,
        )
    )
    activate_when_configured = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=part_point,
            start_state="configuring",
            goal_state="inactive",
            handle_once=True,
            entities=[
                LogInfo(msg="part_point_node is configured (model loaded): activating"),
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(part_point),
                        transition_id=Transition.TRANSITION_ACTIVATE,
                    )
                ),
            ],
        )
    )
    return [*notes, activate_when_configured, sim_camera, depth_fusion, part_point, configure, rviz]


def _rviz_installed() -> bool:
    """rviz2 is a system package (ros-jazzy-rviz2); launch_ros would abort the graph without it."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        prefix = get_package_prefix("rviz2")
    except PackageNotFoundError:
        return False
    return os.path.isfile(os.path.join(prefix, "lib", "rviz2", "rviz2"))


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value="",
                description="node parameters YAML; empty = the installed config/part_point.yaml",
            ),
            DeclareLaunchArgument(
                "backbone",
                default_value="",
                description="MLLM hub id or directory; empty = as in params_file (the head's backbone)",
            ),
            DeclareLaunchArgument(
                "head",
                default_value="",
                description="trained head directory; empty = as in params_file (with use_sim_camera and no "
                "model anywhere: the shipped synthetic-world head)",
            ),
            DeclareLaunchArgument(
                "heads_file",
                default_value="",
                description="attention: localization heads file; empty = as in params_file (shipped for "
                "known backbones)",
            ),
            DeclareLaunchArgument(
                "score_threshold",
                default_value="",
                description="answers below it are 'not found'; -1 = the method's default; empty = as in "
                "params_file",
            ),
            DeclareLaunchArgument(
                "method",
                default_value="",
                description="pointing method a2p, attention, text or pop; empty = as in params_file",
            ),
            DeclareLaunchArgument(
                "device", default_value="", description="torch device (cpu, cuda); empty = as in params_file"
            ),
            DeclareLaunchArgument(
                "dtype",
                default_value="",
                description="model dtype float32, float16 or bfloat16; empty = as in params_file",
            ),
            DeclareLaunchArgument(
                "camera_namespace",
                default_value="",
                description="camera namespace of RealSense-style topics (e.g. /camera); empty = the topics "
                "in params_file",
            ),
            DeclareLaunchArgument(
                "color_topic", default_value="", description="colour image topic; overrides camera_namespace"
            ),
            DeclareLaunchArgument(
                "camera_info_topic",
                default_value="",
                description="colour camera_info topic; overrides camera_namespace",
            ),
            DeclareLaunchArgument(
                "depth_topic",
                default_value="",
                description="depth aligned to colour (16UC1 mm or 32FC1 m); overrides camera_namespace",
            ),
            DeclareLaunchArgument(
                "target_frame",
                default_value="",
                description="frame of the grasp poses (e.g. base_link); empty = as in params_file",
            ),
            DeclareLaunchArgument(
                "use_sim_camera",
                default_value="false",
                description="start sim_camera_node, the synthetic RGB-D tabletop camera",
                choices=["true", "false"],
            ),
            DeclareLaunchArgument(
                "seed",
                default_value="",
                description="scene seed of the synthetic camera; empty = as in params_file",
            ),
            DeclareLaunchArgument(
                "rviz",
                default_value="false",
                description="start rviz2 with rviz_config (overlay, markers, grasp pose, TF in base_link)",
                choices=["true", "false"],
            ),
            DeclareLaunchArgument(
                "rviz_config",
                default_value="",
                description="RViz config; empty = the installed rviz/part_point.rviz",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
