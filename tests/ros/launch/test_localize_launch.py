"""``ros2 launch vgssl_ros localize.launch.py`` for real, with launch_testing.

Runs wherever the ROS 2 launch stack is installed: a sourced ROS 2 workspace where vgssl_ros is
built (colcon) and vgssl_core installed, or the project's venv after ``make setup`` (which
installs it from ../shared/ros2-launch; AMENT_PREFIX_PATH must name the venv):

    AMENT_PREFIX_PATH=$PWD/.venv .venv/bin/launch_test tests/ros/launch/test_localize_launch.py

``make test`` runs it that way (tests/ros/test_launch.py), in a ROS domain of its own; pytest does
not collect this file itself (see conftest.py here).

It builds a tiny map (synthetic world, 2-step checkpoint, database; or takes the ones named by
VGSSL_LAUNCH_TEST_WORLD / _CKPT / _DB), launches the installed launch file with it, publishes
database images as the camera and expects NavSatFix and Localization messages with the image's
stamp near the image's position, then checks that the node exited cleanly (status 0) when the
launch shut down.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import unittest
from pathlib import Path

import launch_testing
import launch_testing.actions
import launch_testing.asserts
import numpy as np
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, NavSatFix

from vgssl_core.cli import main as vgssl_cli
from vgssl_core.data.dataset import load_image, load_split
from vgssl_core.localization.image_codec import encode_raw
from vgssl_msgs.msg import Localization
from vgssl_ros.ros_env import fastdds_profile_path, localhost_env

TOPIC = "camera/image_raw"
TIMEOUT = 120.0  # s: model load on a robot's CPU
RADIUS_M = 25.0


def launch_test_domain() -> int:
    """VGSSL_TEST_DOMAIN_ID (a domain the caller holds, as ``make test`` does), else one from the pid."""
    given = os.environ.get("VGSSL_TEST_DOMAIN_ID")
    return int(given) if given else 61 + os.getpid() % 39  # 61..99: above the hand-started 40..60


def build_map(root: Path) -> tuple[Path, Path, Path]:
    """(checkpoint, database, world) of the tiny synthetic world, trained for 2 steps."""
    from vgssl_core.synth import generate_world

    given = [os.environ.get(f"VGSSL_LAUNCH_TEST_{name}") for name in ("CKPT", "DB", "WORLD")]
    if all(given):  # made already by the caller (make test's session fixtures)
        return tuple(Path(g) for g in given)

    world = root / "world"
    generate_world(world, preset="tiny", seed=0, progress=False)
    run = root / "run"
    assert vgssl_cli(["train", "--data", str(world), "--out", str(run), "--max-steps", "2", "--quiet",
                      "data.batch_size=6", "data.workers=0", "model.image_size=[64,96]",
                      "trainer.val_split=null", "trainer.test_split=null"]) == 0
    db = root / "db"
    assert vgssl_cli(["build-db", "--data", str(world), "--ckpt", str(run / "last.ckpt"), "--out", str(db),
                      "--quiet"]) == 0
    return run / "last.ckpt", db, world


@pytest.mark.launch_test
def generate_test_description():
    root = Path(tempfile.mkdtemp(prefix="vgssl_launch_test_"))
    # This process (the test's camera node) and the launched node: one domain of their own,
    # discovery on this host only, logs under root, the shipped Fast DDS profile.
    os.environ.update(localhost_env(launch_test_domain(), root / "ros_log", fastdds_profile=fastdds_profile_path()))
    ckpt, db, world = build_map(root)
    launch_file = os.path.join(get_package_share_directory("vgssl_ros"), "launch", "localize.launch.py")
    localize = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={"checkpoint": str(ckpt), "database": str(db), "image_topic": TOPIC}.items(),
    )
    return LaunchDescription([localize, launch_testing.actions.ReadyToTest()]), {"world": world}


class TestLocalizerFromLaunch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.context = rclpy.Context()
        rclpy.init(context=cls.context)
        cls.node = rclpy.create_node("launch_test_camera", context=cls.context)
        cls.executor = SingleThreadedExecutor(context=cls.context)
        cls.executor.add_node(cls.node)

    @classmethod
    def tearDownClass(cls):
        cls.executor.shutdown()
        cls.node.destroy_node()
        rclpy.try_shutdown(context=cls.context)

    def spin_until(self, condition, timeout, what):
        deadline = time.monotonic() + timeout
        while not condition():
            self.assertLess(time.monotonic(), deadline, f"timed out waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def test_database_images_become_fixes_with_their_stamps(self, proc_output, world):
        fixes, locs = [], []
        self.node.create_subscription(NavSatFix, "fix", fixes.append, 10)
        self.node.create_subscription(Localization, "localization", locs.append, 10)
        camera = self.node.create_publisher(Image, TOPIC, qos_profile_sensor_data)
        self.spin_until(lambda: camera.get_subscription_count() > 0, TIMEOUT, "the localizer to subscribe")
        proc_output.assertWaitFor("localizer ready", timeout=TIMEOUT)

        split = load_split(world, "test").database
        errors = []
        for i in (0, 20, 40):
            rgb = np.asarray(load_image(split.paths[i]))
            step, data = encode_raw(rgb, "rgb8")
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=step, data=data)
            msg.header.stamp.sec, msg.header.frame_id = 2000 + i, "camera"

            def answered():
                return [m for m in locs if m.header.stamp == msg.header.stamp]

            deadline = time.monotonic() + 30.0
            while not answered():  # best effort: publish again until it got through
                self.assertLess(time.monotonic(), deadline, f"no fix for frame {i}")
                camera.publish(msg)
                end = time.monotonic() + 2.0
                while not answered() and time.monotonic() < end:
                    self.executor.spin_once(timeout_sec=0.05)
            loc = answered()[0]
            self.spin_until(lambda: any(f.header.stamp == msg.header.stamp for f in fixes), 5.0, "the NavSatFix")
            errors.append(math.hypot(loc.easting - split.utm[i, 0], loc.northing - split.utm[i, 1]))
        self.assertGreaterEqual(sum(e <= RADIUS_M for e in errors), 2, f"errors [m]: {errors}")


@launch_testing.post_shutdown_test()
class TestLocalizerShutdown(unittest.TestCase):
    def test_exit_code_is_zero(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
