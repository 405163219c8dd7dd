"""Launch the clino_vpr loop-closure node.

    ros2 launch clino_vpr_ros clino_vpr.launch.py camera:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info odom:=/odom namespace:=robot1 \
        prior_maps:="['/maps/session-a.npz']" session_id:=session-b

Loop closures come out on <namespace>/lio_loop/loop_closure_detection ([t_query, t_match], the
topic LIO-SAM subscribes; argument lio_sam_topic) and <namespace>/loop_closures (nav_msgs/Odometry).
Every node parameter is documented in config/clino_vpr.yaml (params_file); a non-empty argument
below overrides the file's value.
"""

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("clino_vpr_ros")
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its topics."),
        DeclareLaunchArgument("camera", default_value="/camera/image_raw",
                              description="Camera base topic: sensor_msgs/Image, or <camera>/compressed "
                                          "with image_transport:=compressed."),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="sensor_msgs/CameraInfo topic."),
        DeclareLaunchArgument("odom", default_value="/odom", description="nav_msgs/Odometry topic."),
        DeclareLaunchArgument("depth", default_value="/camera/depth/image_raw",
                              description="Depth image topic (used when use_depth is true)."),
        DeclareLaunchArgument("lio_sam_topic", default_value="lio_loop/loop_closure_detection",
                              description="Where [t_query, t_match] closures go (LIO-SAM's subscription)."),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "clino_vpr.yaml"),
                              description="Node parameters (YAML)."),
        DeclareLaunchArgument("model_path", default_value="",
                              description="ONNX encoder; empty keeps params_file's (default: the shipped model)."),
        DeclareLaunchArgument("prior_maps", default_value="[]",
                              description="Session maps of earlier runs, a YAML list of paths; [] keeps params_file's."),
        DeclareLaunchArgument("session_id", default_value="", description="Name of this session; empty keeps params_file's."),
        DeclareLaunchArgument("map_path", default_value="", description="Where this session's map is saved; empty keeps params_file's."),
        DeclareLaunchArgument("image_transport", default_value="", description="raw or compressed; empty keeps params_file's."),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])


def _node(context: LaunchContext) -> list[Node]:
    """The node, with only the non-empty launch arguments overriding params_file (the YAML stays the
    single place where defaults live)."""
    overrides = {}
    for name in ("model_path", "session_id", "map_path", "image_transport"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    prior_maps = yaml.safe_load(LaunchConfiguration("prior_maps").perform(context)) or []
    prior_maps = [prior_maps] if isinstance(prior_maps, str) else prior_maps  # one path without brackets
    if any(prior_maps):
        overrides["prior_maps"] = [str(p) for p in prior_maps if p]
    node = Node(
        package="clino_vpr_ros",
        executable="clino_vpr_node",
        name="clino_vpr",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[
            ("image", LaunchConfiguration("camera")),
            ("camera_info", LaunchConfiguration("camera_info")),
            ("odom", LaunchConfiguration("odom")),
            ("depth", LaunchConfiguration("depth")),
            ("loop_closure_detection", LaunchConfiguration("lio_sam_topic")),
        ],
    )
    return [node]
