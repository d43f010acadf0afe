"""The localizer node with a calibration publishes the core's calibrated confidence and covariance.

A calibration file is written for the tiny model and its database (hand-set coefficients: this
test is about the node applying the file exactly as the core does, the fit is tested in
``tests/core/test_calibration.py``). A synthetic drive is replayed offline with that file
(``vgssl replay --calibration``: ``frames.npz`` holds what the node would publish), then the
recorded image messages go to a real ``localizer`` node started with ``calibration:=FILE`` over DDS:
every ``Localization``, ``NavSatFix`` and ``PoseWithCovarianceStamped`` must carry the replay's
calibrated confidence, covariance and fix status for its frame. A calibration of another
checkpoint stops the node at start with one FATAL line.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, NavSatFix, NavSatStatus

from testkit import run_cli
from vgssl_core.io import file_sha256
from vgssl_core.localization.calibration import FEATURES, Calibration, database_sha256
from vgssl_core.rosbag.bags import BagReader
from vgssl_msgs.msg import Localization

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "config" / "localizer.yaml"
IMAGES = "/camera/image_raw"
FRAMES = 10
MIN_CONFIDENCE = 0.4
STARTUP_TIMEOUT = 90.0
ANSWER_TIMEOUT = 30.0


def calibration_for(ckpt: Path, db: Path, fusion: str) -> Calibration:
    """A calibration of this checkpoint and database with coefficients that make every feature count."""
    n = len(FEATURES)
    return Calibration(threshold_m=25.0, mean=(0.3, 0.6, 0.8, 0.5, 0.05, 1.5), scale=(0.2,) * n,
                       coef=(1.5, 0.8, -0.7, -0.4, 0.6, -0.3), intercept=-0.2, covariance_scale=1.7,
                       covariance_doubt_m2=400.0, checkpoint_sha256=file_sha256(ckpt),
                       database_sha256=database_sha256(db), fusion=fusion, top_k=5)


@pytest.fixture(scope="module")
def drive(tiny_world, tiny_model, tmp_path_factory):
    """(bag, checkpoint, database, calibration file, frames.npz of the calibrated offline replay)."""
    model = tiny_model(64, 96)
    root = tmp_path_factory.mktemp("calibrated_node")
    bag, out, cal = root / "drive", root / "replay", root / "calibration.json"
    calibration_for(model.ckpt, model.db, "bayes").save(cal)
    assert run_cli("synth", "--bag", bag, "--world", tiny_world, "--rate", 2.0, "--max-frames", FRAMES,
                   "--condition", "dusk,fog", "--drive-seed", 3, "--quiet") == 0
    assert run_cli("replay", "--bag", bag, "--db", model.db, "--ckpt", model.ckpt, "--out", out,
                   "--gnss-topic", "/gnss/fix", "--fusion", "bayes", "--device", "cpu", "--quiet",
                   "--calibration", cal) == 0
    with np.load(out / "frames.npz", allow_pickle=False) as frames:
        return bag, model.ckpt, model.db, cal, dict(frames)


def test_the_node_publishes_the_calibrated_confidence_and_covariance(drive, start_node, ros_node):
    bag, ckpt, db, cal, replayed = drive
    node = start_node("vgssl_ros.localizer", "--params-file", str(PARAMS), "-p", f"checkpoint:={ckpt}",
                      "-p", f"database:={db}", "-p", f"image_topic:={IMAGES}", "-p", "image_transport:=raw",
                      "-p", "fusion:=bayes", "-p", "cpu_threads:=1", "-p", f"calibration:={cal}",
                      "-p", f"min_confidence:={MIN_CONFIDENCE}")
    locs = ros_node.subscribe(Localization, "localization")
    fixes = ros_node.subscribe(NavSatFix, "fix")
    poses = ros_node.subscribe(PoseWithCovarianceStamped, "pose")
    camera = ros_node.node.create_publisher(Image, IMAGES, qos_profile_sensor_data)
    ros_node.wait_for_subscribers(camera, timeout=STARTUP_TIMEOUT)
    ros_node.wait_for_publishers("localization")
    node.wait_for_output("is a probability")  # the start line says it is calibrated, and what that means
    with BagReader(bag) as reader:
        recorded = list(zip(reader.messages([IMAGES]), reader.image_frames(IMAGES, decode=False)))
    assert len(recorded) == FRAMES == len(replayed["stamp_ns"])

    def stamped(inbox: list, stamp_ns: int) -> list:
        return [m for m in inbox if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == stamp_ns]

    for i, (message, frame) in enumerate(recorded):  # one at a time: the filter sees the replay's sequence
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while not (stamped(locs, frame.stamp_ns) and stamped(fixes, frame.stamp_ns)):
            camera.publish(message.rawdata)
            ros_node.spin_until(lambda: bool(stamped(locs, frame.stamp_ns) and stamped(fixes, frame.stamp_ns))
                                or time.monotonic() > deadline, ANSWER_TIMEOUT + 1, f"the fix of frame {i}")
            assert stamped(locs, frame.stamp_ns), f"no fix for frame {i} within {ANSWER_TIMEOUT} s"
        loc, fix = stamped(locs, frame.stamp_ns)[0], stamped(fixes, frame.stamp_ns)[0]
        confidence, covariance = replayed["output_confidence"][i], replayed["output_covariance"][i]
        # the calibrated values, not the raw ones the replay also recorded
        assert not np.isclose(confidence, replayed["raw_output_confidence"][i])
        # equal up to float rounding (torch thread counts differ) and float32 on the wire
        assert loc.confidence == pytest.approx(confidence, abs=1e-4)
        assert np.allclose(np.reshape(loc.position_covariance, (2, 2)), covariance, rtol=1e-4, atol=1e-6)
        assert np.allclose(np.reshape(fix.position_covariance, (3, 3))[:2, :2], covariance, rtol=1e-4, atol=1e-6)
        want = NavSatStatus.STATUS_FIX if confidence >= MIN_CONFIDENCE else NavSatStatus.STATUS_NO_FIX
        assert fix.status.status == want
        pose = stamped(poses, frame.stamp_ns)
        if confidence >= MIN_CONFIDENCE:
            ros_node.spin_until(lambda: bool(stamped(poses, frame.stamp_ns)), 5.0, f"the pose of frame {i}")
            pose = stamped(poses, frame.stamp_ns)
            assert np.allclose(np.reshape(pose[0].pose.covariance, (6, 6))[:2, :2], covariance, rtol=1e-4)
        else:
            assert pose == []
    # the calibrated covariance is the file's model of the raw one
    file = Calibration.load(cal)
    assert np.allclose(replayed["output_covariance"],
                       file.covariance(replayed["raw_output_covariance"], replayed["output_confidence"]))


def test_a_calibration_of_another_checkpoint_stops_the_node_in_one_line(drive, ros_env, tmp_path):
    _, ckpt, db, _, _ = drive
    other = calibration_for(ckpt, db, "none")
    other = Calibration(**{**other.__dict__, "checkpoint_sha256": "0" * 64})
    path = other.save(tmp_path / "other.json")
    argv = [sys.executable, "-m", "vgssl_ros.localizer", "--ros-args", "--params-file", str(PARAMS),
            "-p", f"checkpoint:={ckpt}", "-p", f"database:={db}", "-p", f"calibration:={path}"]
    result = subprocess.run(argv, cwd=REPO, env=ros_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=STARTUP_TIMEOUT)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stdout
    assert "FATAL" in lines[0] and "fitted for checkpoint sha256 000000000000" in lines[0], lines[0]
