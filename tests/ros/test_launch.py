"""The real ROS 2 launch system on the project's launch files: what a robot user types.

- the venv install as the ROS tools see it (``ros2 pkg prefix``, ``ros2 pkg executables``,
  ``ros2 run``, ``ros2 launch --show-args``), with AMENT_PREFIX_PATH naming the venv;
- both launch_testing tests of tests/ros/launch/, run by ``launch_test`` against the venv install;
- a colcon workspace of vgssl_msgs + vgssl_ros built into a temporary folder and sourced, then
  ``ros2 launch vgssl_ros localize.launch.py`` answering a published image with a fix, and
  ``ros2 launch vgssl_ros replay.launch.py`` playing a short drive into the localizer until the
  bag ends.

Every command runs in a ROS domain this test holds (conftest.py), with localhost discovery, the
shipped Fast DDS profile and a ROS_LOG_DIR under the test's tmp_path. The launch stack is not on
PyPI: ``make setup`` installs it from ``../shared/ros2-launch`` (VGSSL_SHARED, or the checkout's
sibling ``shared/``). Where it is not installed this module is skipped with one line saying so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
BIN = Path(sys.executable).parent
CAMERA = "/camera/image_raw"
STARTUP_TIMEOUT = 120.0  # s: torch import and model load on a busy 2-core machine


def _launch_stack_missing() -> str | None:
    """Why the launch stack cannot be used here, or None."""
    shared = Path(os.environ.get("VGSSL_SHARED") or REPO.parent / "shared")
    where = f"{shared}/ros2-launch" + ("" if (shared / "ros2-launch").is_dir() else ", which is not here")
    try:
        import launch_ros  # noqa: F401
        import launch_testing  # noqa: F401
        import ros2cli  # noqa: F401
    except ImportError as err:
        return f"the ROS 2 launch stack is not installed ({err}); make setup installs it from {where}"
    if not (BIN / "ros2").is_file() or not (BIN / "launch_test").is_file():
        return f"no ros2 / launch_test command in {BIN}; make setup installs them from {where}"
    return None


MISSING = _launch_stack_missing()
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

from sensor_msgs.msg import Image, NavSatFix  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402

from testkit import run_cli  # noqa: E402
from vgssl_core.rosbag.bags import BagReader  # noqa: E402


def venv_env(ros_env: dict[str, str]) -> dict[str, str]:
    """ros_env with the venv as the ament prefix (where the ROS tools find vgssl_ros) and on PATH."""
    return {**ros_env, "AMENT_PREFIX_PATH": str(VENV), "PATH": f"{BIN}{os.pathsep}{ros_env.get('PATH', '')}"}


def run(argv: list[str], env: dict[str, str], timeout: float = 60.0, cwd: Path | None = None):
    return subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def ns_of(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


# --- the venv install ------------------------------------------------------------------------------
def test_the_ros2_tools_find_the_venv_install(ros_env, tmp_path):
    env = venv_env(ros_env)
    prefix = run([BIN / "ros2", "pkg", "prefix", "vgssl_ros"], env)
    assert prefix.returncode == 0 and Path(prefix.stdout.strip()) == VENV, prefix
    executables = run([BIN / "ros2", "pkg", "executables", "vgssl_ros"], env)
    assert set(executables.stdout.split()) == {"vgssl_ros", "localizer", "bag_replay"}, executables
    shown = run([BIN / "ros2", "launch", "vgssl_ros", "replay.launch.py", "--show-args"], env)
    assert shown.returncode == 0 and all(f"'{a}'" in shown.stdout for a in ("bag", "checkpoint", "database")), shown
    # `ros2 run` starts the installed node: a bag that does not exist is its one-line error, exit 2
    missing = tmp_path / "no_such_bag"
    replay = run([BIN / "ros2", "run", "vgssl_ros", "bag_replay", "--ros-args", "-p", "mode:=live",
                  "-p", f"bag:={missing}"], env)
    assert replay.returncode == 2 and str(missing) in replay.stdout + replay.stderr, replay
    ckpt = tmp_path / "no_such.ckpt"
    localizer = run([BIN / "ros2", "run", "vgssl_ros", "localizer", "--ros-args", "--params-file",
                     REPO / "config" / "localizer.yaml", "-p", f"checkpoint:={ckpt}", "-p", f"database:={tmp_path}"],
                    env, timeout=STARTUP_TIMEOUT)
    assert localizer.returncode == 2 and f"{ckpt}: checkpoint not found" in localizer.stderr, localizer


# --- launch_testing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["test_localize_launch.py", "test_replay_launch.py"])
def test_launch_testing_test_passes(name, tiny_world, tiny_model, ros_domain, ros_env, start_process, tmp_path):
    model = tiny_model()
    env = {**venv_env(ros_env), "VGSSL_TEST_DOMAIN_ID": str(ros_domain), "TMPDIR": str(tmp_path),
           "VGSSL_LAUNCH_TEST_WORLD": str(tiny_world), "VGSSL_LAUNCH_TEST_CKPT": str(model.ckpt),
           "VGSSL_LAUNCH_TEST_DB": str(model.db)}
    test = start_process([BIN / "launch_test", REPO / "tests" / "ros" / "launch" / name], name, env=env, cwd=REPO)
    code = test.wait(2 * STARTUP_TIMEOUT)
    out = test.output()
    assert code == 0, out[-4000:]
    # both phases ran their tests: the one while the nodes run, and the exit codes after shutdown
    assert out.count("\nOK") >= 2 and "Ran 0 tests" not in out, out[-4000:]


# --- a colcon workspace ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A colcon workspace with vgssl_msgs and vgssl_ros built (--symlink-install); its root."""
    root = tmp_path_factory.mktemp("colcon_ws")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLCON", "AMENT_", "CMAKE_PREFIX"))}
    env.update(AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV), PATH=f"{BIN}{os.pathsep}{env['PATH']}")
    built = run([BIN / "colcon", "build", "--symlink-install", "--base-paths", REPO / "vgssl_msgs", REPO / "vgssl_ros",
                 "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
                env, timeout=600, cwd=root)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert (root / "install" / "setup.bash").is_file()
    return root


def sourced(ws: Path, command: str) -> list[str]:
    """bash running ``command`` in the workspace's sourced environment, as a user's terminal does."""
    return ["bash", "-c", f'source "{ws}/install/setup.bash" && {command}']


def test_ros2_launch_localize_in_a_sourced_colcon_workspace(workspace, tiny_world, tiny_model, ros_env, ros_node,
                                                             start_process):
    from vgssl_core.data.dataset import load_image, load_split
    from vgssl_core.localization.image_codec import encode_raw

    env = {k: v for k, v in ros_env.items() if not k.startswith("AMENT_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    prefix = run(sourced(workspace, "ros2 pkg prefix vgssl_ros"), env)
    assert Path(prefix.stdout.strip()) == workspace / "install" / "vgssl_ros", prefix  # the workspace's, not the venv's
    model = tiny_model()
    launch = start_process(sourced(workspace, f"exec ros2 launch vgssl_ros localize.launch.py checkpoint:={model.ckpt} "
                                              f"database:={model.db} image_topic:={CAMERA}"), "localize_launch", env=env)
    fixes = ros_node.subscribe(NavSatFix, "fix")
    camera = ros_node.node.create_publisher(Image, CAMERA, qos_profile_sensor_data)
    ros_node.wait_for_subscribers(camera, timeout=STARTUP_TIMEOUT)
    launch.wait_for_output("localizer ready", STARTUP_TIMEOUT)
    split = load_split(tiny_world, "test").database
    rgb = np.asarray(load_image(split.paths[0]))
    step, data = encode_raw(rgb, "rgb8")
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=step, data=data)
    msg.header.stamp.sec, msg.header.frame_id = 1234, "camera"

    def answered() -> list:
        return [f for f in fixes if f.header.stamp == msg.header.stamp]

    for _ in range(15):  # best-effort QoS: publish again until one got through
        camera.publish(msg)
        try:
            ros_node.spin_until(lambda: bool(answered()), 2.0, "a fix")
            break
        except AssertionError:
            continue
    assert answered(), f"no fix for the published image:\n{launch.tail()}"
    assert answered()[0].header.frame_id == "camera"
    # Ctrl-C for ros2 launch alone: without a terminal it is non-interactive and passes SIGINT on
    # to its nodes itself (signalling the whole group would give each node a second one).
    os.kill(launch.pid, signal.SIGINT)
    assert launch.wait(30.0) == 0 and "process has died" not in launch.output(), launch.tail()
    assert "process has finished cleanly" in launch.output()


def test_ros2_launch_replay_plays_a_drive_into_the_localizer(workspace, tiny_world, tiny_model, ros_env, ros_node,
                                                             start_process, tmp_path):
    frames = 12
    bag = tmp_path / "drive"
    assert run_cli("synth", "--bag", bag, "--world", tiny_world, "--condition", "query", "--rate", "2",
                   "--max-frames", frames, "--quiet") == 0
    with BagReader(bag) as reader:
        stamps = [f.stamp_ns for f in reader.image_frames(CAMERA, decode=False)]
    env = {k: v for k, v in ros_env.items() if not k.startswith("AMENT_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    model = tiny_model()
    fixes = ros_node.subscribe(NavSatFix, "fix", 50)
    launch = start_process(sourced(workspace, f"exec ros2 launch vgssl_ros replay.launch.py bag:={bag} "
                                              f"checkpoint:={model.ckpt} database:={model.db} "
                                              f"image_topic:={CAMERA} rate:=2.0"), "replay_launch", env=env)
    ros_node.spin_until(lambda: launch.returncode is not None, STARTUP_TIMEOUT + 30.0, "the end of the bag")
    out = launch.output()
    assert launch.returncode == 0 and f"replayed {frames} frames" in out and "process has died" not in out, out[-3000:]
    ros_node.spin_for(0.2)
    got = [ns_of(f.header.stamp) for f in fixes]
    assert len(got) >= 3 and set(got) <= set(stamps) and got == sorted(got), (got, out[-3000:])
