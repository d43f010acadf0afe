"""The live ``localizer`` node and the offline replay run one localization step: same frames, same fixes.

A synthetic drive is replayed offline (``vgssl replay --fusion bayes``, which writes what the
live localizer would publish for every frame into ``frames.npz``), then the same recorded image
messages are published, byte for byte, to a real ``localizer`` node with ``fusion:=bayes`` over
DDS. Every published ``Localization`` must carry the replay's estimate, covariance and
confidence for its frame: the two paths share ``LocalizationSession.step``, so any drift
between them (search depth, fix, fusion, fused covariance) fails here.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from testkit import run_cli
from vgssl_core.rosbag.bags import BagReader
from vgssl_msgs.msg import Localization

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "config" / "localizer.yaml"
IMAGES = "/camera/image_raw"
FRAMES = 12
STARTUP_TIMEOUT = 90.0  # s: importing torch and loading the model on a busy 2-core machine
ANSWER_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def drive(tiny_world, tiny_model, tmp_path_factory):
    """(bag, checkpoint, database, frames.npz of the offline replay with fusion)."""
    model = tiny_model(64, 96)
    root = tmp_path_factory.mktemp("parity")
    bag, out = root / "drive", root / "replay"
    assert run_cli("synth", "--bag", bag, "--world", tiny_world, "--rate", 2.0, "--max-frames", FRAMES,
                   "--quiet") == 0
    assert run_cli("replay", "--bag", bag, "--db", model.db, "--ckpt", model.ckpt, "--out", out,
                   "--gnss-topic", "/gnss/fix", "--fusion", "bayes", "--device", "cpu", "--quiet") == 0
    with np.load(out / "frames.npz", allow_pickle=False) as frames:
        return bag, model.ckpt, model.db, dict(frames)


def test_the_live_node_publishes_exactly_what_the_replay_measured(drive, start_node, ros_node):
    bag, ckpt, db, replayed = drive
    start_node("vgssl_ros.localizer", "--params-file", str(PARAMS), "-p", f"checkpoint:={ckpt}",
               "-p", f"database:={db}", "-p", f"image_topic:={IMAGES}", "-p", "image_transport:=raw",
               "-p", "fusion:=bayes", "-p", "cpu_threads:=1")
    inbox = ros_node.subscribe(Localization, "localization")
    camera = ros_node.node.create_publisher(Image, IMAGES, qos_profile_sensor_data)
    ros_node.wait_for_subscribers(camera, timeout=STARTUP_TIMEOUT)
    ros_node.wait_for_publishers("localization")
    with BagReader(bag) as reader:
        recorded = list(zip(reader.messages([IMAGES]), reader.image_frames(IMAGES, decode=False)))
    assert len(recorded) == FRAMES == len(replayed["stamp_ns"])
    for i, (message, frame) in enumerate(recorded):
        assert frame.stamp_ns == replayed["stamp_ns"][i]
        # one frame at a time, each answered before the next: the node drops none, and the
        # filter sees the same sequence as the replay's (a lost image is sent again: it never
        # reached the node, so the belief did not move)
        deadline = time.monotonic() + ANSWER_TIMEOUT
        answered = lambda: [m for m in inbox if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == frame.stamp_ns]
        while not answered():
            camera.publish(message.rawdata)  # the recorded bytes, as the bag_replay node republishes them
            ros_node.spin_until(lambda: answered() or time.monotonic() > deadline, ANSWER_TIMEOUT + 1,
                                f"the fix of frame {i}")
            assert answered(), f"no fix for frame {i} within {ANSWER_TIMEOUT} s"
        loc = answered()[0]
        # equal up to float rounding: the node runs torch on 1 thread, the replay on the default
        # count, and a convolution summed in another order differs in the last bits
        assert (loc.easting, loc.northing) == pytest.approx(tuple(replayed["output_utm"][i]), abs=1e-3)
        assert np.allclose(np.reshape(loc.position_covariance, (2, 2)), replayed["output_covariance"][i],
                           rtol=1e-5, atol=1e-6)
        assert loc.confidence == pytest.approx(replayed["output_confidence"][i], abs=1e-5)  # float32 on the wire
    # fusion was on in both: the outputs are the fused estimates, not the frames' own fixes
    assert np.allclose(replayed["output_utm"], replayed["fused_utm"])
    assert len(inbox) == FRAMES
