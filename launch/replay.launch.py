"""Replay a recorded drive to the live ``localizer``: ``bag_replay`` (live mode) plus localize.launch.py.

    ros2 launch vgssl_ros replay.launch.py bag:=/data/drives/test_run \\
        checkpoint:=/data/run/last.ckpt database:=/data/maps/city rate:=2.0 use_sim_time:=true

``bag_replay`` republishes the bag's camera topic ``image_topic`` (the recorded bytes: same type,
stamps and pixels) at the recorded rate times ``rate``, and the localizer subscribes to it, so the
whole live path (DDS, decoding, the frame slot that drops stale frames, the model) is measured on
recorded data. The replay waits for the localizer to subscribe before it plays (the model takes
seconds to load), and the launch shuts down when the bag ends (never, with ``loop:=true``).
For Recall@N of every frame, run the node offline instead (``vgssl replay`` or ``bag_replay``
with ``mode:=offline``).

The localizer is started by including localize.launch.py, so it is started exactly as there.
launch fills an included file's arguments only from the include's own ``launch_arguments`` (never
from the parent's arguments, and a required one that is missing there stops the launch), so every
argument of localize.launch.py that this file offers is declared here and passed on explicitly:
``checkpoint`` and ``database`` (required), ``localizer_params_file`` (its ``params_file``, default
the installed ``config/localizer.yaml``), ``fastdds_profile`` (an include is not scoped: the
profile it sets applies to bag_replay as well), ``image_topic``, ``use_sim_time`` and ``log_level``.
Arguments of the replay: ``bag`` (required), ``image_topic`` (the bag's camera topic, replayed
under the same name; the localizer subscribes to it), ``rate``, ``loop``, ``use_sim_time`` (true:
the replay publishes ``/clock`` with the recorded time and the localizer runs on it) and
``replay_params_file`` (default: the installed ``config/bag_replay.yaml``).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("vgssl_ros")

    arguments = [
        DeclareLaunchArgument("bag", description="rosbag2 bag to replay: a folder, or a .mcap / .db3 file"),
        DeclareLaunchArgument("checkpoint", description="vgssl checkpoint (.ckpt) of the localizer's model"),
        DeclareLaunchArgument("database", description="map database folder built by 'vgssl build-db' with it"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="the bag's camera topic (Image or CompressedImage), replayed "
                                          "under the same name; the localizer subscribes to it"),
        DeclareLaunchArgument("rate", default_value="1.0",
                              description="playback speed, a factor of the recorded rate"),
        DeclareLaunchArgument("loop", default_value="false", description="replay the bag again and again"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="publish /clock from the bag and run the localizer on it"),
        DeclareLaunchArgument("replay_params_file",
                              default_value=os.path.join(share, "config", "bag_replay.yaml"),
                              description="parameter file of bag_replay (keyed 'bag_replay: ros__parameters:')"),
        DeclareLaunchArgument("localizer_params_file",
                              default_value=os.path.join(share, "config", "localizer.yaml"),
                              description="parameter file of the localizer (keyed 'localizer: ros__parameters:')"),
        DeclareLaunchArgument("fastdds_profile", default_value="",
                              description="Fast DDS XML profile for both nodes; empty: keep the environment's"),
        DeclareLaunchArgument("log_level", default_value="info", description="log level of both nodes"),
    ]
    localizer = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "localize.launch.py")),
        # (argument of localize.launch.py, value): each one explicitly, see the module docstring
        launch_arguments=[
            ("checkpoint", LaunchConfiguration("checkpoint")),
            ("database", LaunchConfiguration("database")),
            ("params_file", LaunchConfiguration("localizer_params_file")),
            ("image_topic", LaunchConfiguration("image_topic")),
            ("use_sim_time", LaunchConfiguration("use_sim_time")),
            ("fastdds_profile", LaunchConfiguration("fastdds_profile")),
            ("log_level", LaunchConfiguration("log_level")),
        ],
    )
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    replay = Node(
        package="vgssl_ros",
        executable="bag_replay",
        name="bag_replay",
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("replay_params_file"),
            {
                "mode": "live",
                # value_type=str: a path or topic is never re-read as YAML (e.g. "2024" as int)
                "bag": ParameterValue(LaunchConfiguration("bag"), value_type=str),
                "image_topic": ParameterValue(LaunchConfiguration("image_topic"), value_type=str),
                "rate": ParameterValue(LaunchConfiguration("rate"), value_type=float),
                "loop": ParameterValue(LaunchConfiguration("loop"), value_type=bool),
                "publish_clock": use_sim_time,  # the replay is the clock; it never runs on /clock itself
                "wait_for_subscribers": 1,  # the localizer: frames sent before it listens would be lost
            },
        ],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        on_exit=Shutdown(reason="bag_replay finished"),
    )
    return LaunchDescription([*arguments, localizer, replay])  # after the include: its Fast DDS profile applies
