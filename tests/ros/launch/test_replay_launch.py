"""``ros2 launch vgssl_ros replay.launch.py`` for real, with launch_testing.

Runs wherever the ROS 2 launch stack is installed: a sourced ROS 2 workspace where vgssl_ros is
built (colcon) and vgssl_core installed, or the project's venv after ``make setup`` (which
installs it from ../shared/ros2-launch; AMENT_PREFIX_PATH must name the venv):

    AMENT_PREFIX_PATH=$PWD/.venv .venv/bin/launch_test tests/ros/launch/test_replay_launch.py

``make test`` runs it that way (tests/ros/test_launch.py), in a ROS domain of its own; pytest does
not collect this file itself (see conftest.py here).

The robot builder's workflow on the synthetic world: a mapping run and a test run of the same
route recorded as bags (``vgssl synth --bag``), a map from the mapping bag (``vgssl build-db
--bag``) and a 2-step checkpoint (or the one VGSSL_LAUNCH_TEST_CKPT names); then the launch file
replays the test bag to the localizer. Every Localization must carry the stamp of a frame of the
test bag, in recording order; the replay must say it played the whole bag, and both nodes must
exit with status 0 (the launch shuts itself down when the bag ends).
"""

from __future__ import annotations

import os
import tempfile
import time
import unittest
from pathlib import Path

import launch_testing
import launch_testing.actions
import launch_testing.asserts
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rclpy.executors import SingleThreadedExecutor

from vgssl_core.rosbag.bags import BagReader
from vgssl_core.cli import main as vgssl_cli
from vgssl_msgs.msg import Localization
from vgssl_ros.ros_env import fastdds_profile_path, localhost_env

CAMERA = "/camera/image_raw"
FRAMES = 20  # at 2 Hz, replayed at RATE: 5 s, long enough for the localizer to answer several frames
RATE = "2.0"
TIMEOUT = 120.0  # s: model load on a robot's CPU


def record_and_map(root: Path) -> tuple[Path, Path, Path]:
    """(checkpoint, database from the mapping bag, test bag) on the tiny synthetic world.

    VGSSL_LAUNCH_TEST_WORLD / VGSSL_LAUNCH_TEST_CKPT: that world and checkpoint, made already by
    the caller (make test's session fixtures), instead of new ones.
    """
    from vgssl_core.synth import generate_world

    world = Path(os.environ.get("VGSSL_LAUNCH_TEST_WORLD") or root / "world")
    if not os.environ.get("VGSSL_LAUNCH_TEST_WORLD"):
        generate_world(world, preset="tiny", seed=0, progress=False)
    mapping, test = root / "mapping_run", root / "test_run"
    for bag, condition in ((mapping, "database"), (test, "query")):
        assert vgssl_cli(["synth", "--bag", str(bag), "--world", str(world), "--condition", condition,
                          "--rate", "2", "--max-frames", str(FRAMES), "--quiet"]) == 0
    ckpt = Path(os.environ.get("VGSSL_LAUNCH_TEST_CKPT") or root / "run" / "last.ckpt")
    if not os.environ.get("VGSSL_LAUNCH_TEST_CKPT"):
        assert vgssl_cli(["train", "--data", str(world), "--out", str(ckpt.parent), "--max-steps", "2", "--quiet",
                          "data.batch_size=6", "data.workers=0", "model.image_size=[64,96]",
                          "trainer.val_split=null", "trainer.test_split=null"]) == 0
    db = root / "db"
    assert vgssl_cli(["build-db", "--bag", str(mapping), "--gnss-topic", "/gnss/fix", "--ckpt", str(ckpt),
                      "--out", str(db), "--quiet"]) == 0
    return ckpt, db, test


@pytest.mark.launch_test
def generate_test_description():
    root = Path(tempfile.mkdtemp(prefix="vgssl_replay_launch_test_"))
    # This process (the test's listener) and the launched nodes: one domain of their own,
    # discovery on this host only, logs under root, the shipped Fast DDS profile.
    given = os.environ.get("VGSSL_TEST_DOMAIN_ID")  # a domain the caller holds, as make test does
    domain = int(given) if given else 61 + (os.getpid() + 17) % 39  # 61..99: above the hand-started 40..60
    os.environ.update(localhost_env(domain, root / "ros_log", fastdds_profile=fastdds_profile_path()))
    ckpt, db, bag = record_and_map(root)
    launch_file = os.path.join(get_package_share_directory("vgssl_ros"), "launch", "replay.launch.py")
    replay = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={"bag": str(bag), "checkpoint": str(ckpt), "database": str(db), "image_topic": CAMERA,
                          "rate": RATE, "use_sim_time": "true"}.items(),
    )
    return LaunchDescription([replay, launch_testing.actions.ReadyToTest()]), {"bag": bag}


class TestReplayToTheLocalizer(unittest.TestCase):
    def test_the_localizer_answers_replayed_frames_with_their_stamps(self, proc_output, proc_info, bag):
        with BagReader(bag) as reader:
            stamps = [f.stamp_ns for f in reader.image_frames(CAMERA, decode=False)]
        context = rclpy.Context()
        rclpy.init(context=context)
        listener = rclpy.create_node("replay_launch_listener", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        try:
            locs = []
            listener.create_subscription(Localization, "localization", locs.append, 50)
            deadline = time.monotonic() + TIMEOUT
            while len(locs) < 3:
                self.assertLess(time.monotonic(), deadline, f"only {len(locs)} localizations from the replay")
                executor.spin_once(timeout_sec=0.05)
        finally:
            executor.shutdown()
            listener.destroy_node()
            rclpy.try_shutdown(context=context)
        got = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in locs]
        self.assertTrue(set(got) <= set(stamps), "a Localization with a stamp that is no frame of the bag")
        self.assertEqual(got, sorted(got), "localizations out of recording order")
        proc_output.assertWaitFor(f"replayed {FRAMES} frames", timeout=TIMEOUT)
        # The end of the bag ends bag_replay by itself (and with it the launch): wait for that, or
        # this test's end would stop it first and its exit code below would prove nothing.
        proc_info.assertWaitForShutdown("bag_replay", timeout=30)


@launch_testing.post_shutdown_test()
class TestReplayShutdown(unittest.TestCase):
    def test_exit_codes_are_zero(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
