"""Start the vgssl ``localizer`` node with its parameter file.

    ros2 launch vgssl_ros localize.launch.py checkpoint:=/data/run/last.ckpt \\
        database:=/data/maps/city image_topic:=/camera/image_raw

Arguments: ``checkpoint`` and ``database`` (required), ``image_topic``, ``params_file`` (default:
the installed ``config/localizer.yaml``; every other parameter lives there), ``use_sim_time``
(true when replaying a bag with ``--clock``), ``fastdds_profile`` and ``log_level``.

``fastdds_profile`` is empty by default: the node then uses whatever Fast DDS profile the robot's
environment sets (or none), since a robot's own DDS setup must win. Give it a file, e.g. the
shipped ``$(ros2 pkg prefix vgssl_ros)/share/vgssl_ros/config/fastdds_localhost.xml``, to have the
localizer use it: that profile keeps all traffic on this host (shared memory + loopback UDP) and
makes 640x480 frames arrive reliably between processes; the camera driver must use it too (set
FASTDDS_DEFAULT_PROFILES_FILE before launching everything instead). It only matters with
rmw_fastrtps_cpp.

Outputs (relative names, remap or namespace them as usual): ``localization``, ``fix``, ``pose``,
``/diagnostics``, service ``~/localize``. The parameter file is keyed by the node name
``localizer``; when pushing a namespace, key it ``/**/localizer`` instead.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

# Fast DDS 2 (Humble, Iron, Jazzy) reads the profile from the older variable name.
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def generate_launch_description():
    share = get_package_share_directory("vgssl_ros")
    default_params = os.path.join(share, "config", "localizer.yaml")

    arguments = [
        DeclareLaunchArgument("checkpoint", description="vgssl checkpoint (.ckpt) of the descriptor model"),
        DeclareLaunchArgument("database", description="map database folder built by 'vgssl build-db' with it"),
        DeclareLaunchArgument("image_topic", default_value="camera/image_raw",
                              description="camera topic: sensor_msgs/Image, or CompressedImage (.../compressed)"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="parameter file of the localizer (keyed 'localizer: ros__parameters:')"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay with --clock)"),
        DeclareLaunchArgument("fastdds_profile", default_value="",
                              description="Fast DDS XML profile for the node; empty: keep the environment's"),
        DeclareLaunchArgument("log_level", default_value="info", description="node log level"),
    ]

    profile = LaunchConfiguration("fastdds_profile")
    profile_given = IfCondition(PythonExpression(["'", profile, "' != ''"]))
    profile_variables = ["FASTDDS_DEFAULT_PROFILES_FILE"]
    if os.environ.get("ROS_DISTRO", "") in FAST_DDS_2_DISTROS:
        profile_variables.append("FASTRTPS_DEFAULT_PROFILES_FILE")
    environment = [SetEnvironmentVariable(name, profile, condition=profile_given) for name in profile_variables]

    localizer = Node(
        package="vgssl_ros",
        executable="localizer",
        name="localizer",
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                # value_type=str: a path or topic is never re-read as YAML (e.g. "2024" as int)
                "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
                "database": ParameterValue(LaunchConfiguration("database"), value_type=str),
                "image_topic": ParameterValue(LaunchConfiguration("image_topic"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription([*arguments, *environment, localizer])
