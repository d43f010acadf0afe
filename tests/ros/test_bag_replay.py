"""The ``bag_replay`` node as a real process, over real DDS: live playback, offline report, errors, Ctrl-C.

Every test starts ``python -m vgssl_ros.bag_replay`` with ``config/bag_replay.yaml``, as a user
or ``launch/replay.launch.py`` would, in a ROS domain of its own (see conftest.py). The bag is a
synthetic drive through the ``tiny`` world's test district (``vgssl synth --bag``: 40 camera
frames at 10 Hz, GNSS at 5 Hz); the map is that district's database images, described by an
untrained, seeded descriptor written straight into a checkpoint: these tests check that the node
replays and measures exactly what the core does, not that the model is good. Its 240x320 input
makes a CPU frame take tens of milliseconds, so an offline replay lasts long enough to interrupt.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image

from testkit import run_cli
from vgssl_core.rosbag.bags import IMAGE, BagReader
from vgssl_core.rosbag.writer import BagWriter
from vgssl_ros.messages import image_to_rgb

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "config" / "bag_replay.yaml"
NODE = "vgssl_ros.bag_replay"
IMAGES, GNSS = "/camera/image_raw", "/gnss/fix"
FRAMES, CAMERA_HZ = 40, 10.0
LONG = 300  # frames of the Ctrl-C test's drive
STARTUP_TIMEOUT = 90.0  # s: importing torch and loading the model on a busy 2-core machine
RATE_TOLERANCE = 0.15  # live mode: measured rate within +-15 % of the requested one


@pytest.fixture(scope="module")
def inputs(tiny_world, tmp_path_factory):
    """(bag, checkpoint, database) shared by the module's tests."""
    from vgssl_core.models import build_model, resolve_model_config

    root = tmp_path_factory.mktemp("bag_replay")
    bag, ckpt, db = root / "drive", root / "untrained.ckpt", root / "db"
    assert run_cli("synth", "--bag", bag, "--world", tiny_world, "--rate", CAMERA_HZ, "--max-frames", FRAMES,
                   "--quiet") == 0
    cfg = resolve_model_config({"pretrained": "none", "image_size": [240, 320]})
    torch.manual_seed(0)
    torch.save({"vgssl": {"format": 1, "model_config": cfg, "model_prefix": ""},
                "state_dict": build_model(cfg).state_dict()}, ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread each is faster than two that fight
    try:
        assert run_cli("build-db", "--data", tiny_world, "--ckpt", ckpt, "--out", db, "--quiet") == 0
    finally:
        torch.set_num_threads(threads)
    return bag, ckpt, db


def node_args(*params: str) -> list[str]:
    """``--ros-args`` of the node: the shipped parameter file, then ``-p`` overrides."""
    args = ["--params-file", str(PARAMS)]
    for param in params:
        args += ["-p", param]
    return args


def offline_args(inputs, out: Path, *extra: str) -> list[str]:
    bag, ckpt, db = inputs
    return node_args(f"bag:={bag}", f"checkpoint:={ckpt}", f"database:={db}", f"gnss_topic:={GNSS}",
                     f"out:={out}", "cpu_threads:=1", *extra)


def ns_of(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


# --- live --------------------------------------------------------------------------------------
def test_live_mode_plays_every_frame_at_the_requested_rate_with_its_stamps_and_the_clock(inputs, start_node,
                                                                                           ros_node):
    bag = inputs[0]
    with BagReader(bag) as reader:
        header_ns = [f.stamp_ns for f in reader.image_frames(IMAGES, decode=False)]
        bag_ns = [m.bag_stamp_ns for m in reader.messages([IMAGES])]
        first_rgb = next(reader.image_frames(IMAGES)).rgb
    assert len(header_ns) == FRAMES
    # Receive times as the middleware stamped them on arrival (MessageInfo), so that a pause of this
    # test process (a loaded machine, the garbage collector) neither shifts them nor, with a deep
    # queue, drops a frame: what is measured is the node's pace.
    received: list[tuple[float, Image]] = []
    camera_qos = QoSProfile(depth=FRAMES, reliability=ReliabilityPolicy.BEST_EFFORT)  # what sensor-data QoS matches
    ros_node.node.create_subscription(Image, "/replay/camera",
                                      lambda m, info: received.append((info["received_timestamp"] / 1e9, m)),
                                      camera_qos)
    clocks = ros_node.subscribe(Clock, "/clock", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    rate = 2.0
    node = start_node(NODE, *node_args("mode:=live", f"bag:={bag}", f"rate:={rate}", "publish_clock:=true",
                                       "image_topic_out:=/replay/camera", "wait_for_subscribers:=1"))

    def missing() -> list[int]:
        got = {ns_of(m.header.stamp) for _, m in received}
        return [i for i, stamp in enumerate(header_ns) if stamp not in got]

    assert node.wait(30.0) == 0, node.output()  # the end of the bag ends the node
    ros_node.spin_until(lambda: len(received) >= FRAMES, 5.0, lambda: f"all frames: {missing()} did not arrive")
    ros_node.spin_for(0.2)
    assert [ns_of(m.header.stamp) for _, m in received] == header_ns  # every frame once, in recording order
    assert np.array_equal(image_to_rgb(received[0][1]), first_rgb)  # the recorded bytes, deserialized by rclpy
    times = [t for t, _ in received]
    assert times[0] > 0 and times == sorted(times)  # the middleware stamped every arrival
    wanted_hz = CAMERA_HZ * rate
    span_s, expected_s = times[-1] - times[0], (bag_ns[-1] - bag_ns[0]) / 1e9 / rate
    median_gap = statistics.median(np.diff(times))
    print(f"live replay: {(FRAMES - 1) / span_s:.2f} Hz over the span, {1 / median_gap:.2f} Hz median "
          f"inter-arrival, requested {wanted_hz:.1f} Hz")
    assert abs(wanted_hz * median_gap - 1) <= RATE_TOLERANCE, f"median gap {median_gap:.4f} s at {wanted_hz} Hz"
    # The whole span: never faster than asked; slower only by the tolerance or one stall of a
    # loaded machine (play() keeps to the recorded schedule, so one late frame does not add up).
    slack_s = max(RATE_TOLERANCE * expected_s, 0.5)
    assert (1 - RATE_TOLERANCE) * expected_s <= span_s <= expected_s + slack_s, \
        f"{FRAMES} frames in {span_s:.3f} s, not {expected_s:.3f} s"
    assert [ns_of(c.clock) for c in clocks] == bag_ns  # /clock: each frame's recorded time, in order
    assert f"replayed {FRAMES} frames" in node.output()


# --- offline -----------------------------------------------------------------------------------
def test_offline_mode_writes_the_report_of_vgssl_replay(inputs, start_node, tmp_path):
    bag, ckpt, db = inputs
    node = start_node(NODE, *offline_args(inputs, tmp_path / "node_out"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the CLI on the same inputs, in this process, while the node loads
        assert run_cli("replay", "--bag", bag, "--db", db, "--ckpt", ckpt, "--gnss-topic", GNSS,
                       "--out", tmp_path / "cli_out", "--quiet") == 0
    finally:
        torch.set_num_threads(threads)
    assert node.wait(STARTUP_TIMEOUT) == 0
    mine, cli = (json.loads((tmp_path / side / "report.json").read_text()) for side in ("node_out", "cli_out"))
    assert mine["complete"] and mine["n_read"] == FRAMES and mine["n_frames"] == cli["n_frames"] > 0
    assert mine["recall"] == cli["recall"] and mine["recall_by_threshold"] == cli["recall_by_threshold"]
    assert mine["fusion"]["method"] == "bayes" and mine["fusion"]["recall"] == cli["fusion"]["recall"]
    assert (tmp_path / "node_out" / "route.png").stat().st_size > 10_000
    output = node.output()
    assert f"offline replay: 1/{FRAMES} frames" in output and "report.json" in output and "Traceback" not in output


def test_ctrl_c_during_an_offline_replay_writes_the_report_so_far_and_exits_0(inputs, tiny_world, start_node,
                                                                              tmp_path):
    # A drive of its own, long enough (LONG frames on the CPU: seconds) that Ctrl-C lands mid-way
    # on any machine; the test stops the node at its first progress line.
    _, ckpt, db = inputs
    long_bag = tmp_path / "long_drive"
    assert run_cli("synth", "--bag", long_bag, "--world", tiny_world, "--rate", CAMERA_HZ, "--max-frames", LONG,
                   "--quiet") == 0
    out = tmp_path / "out"
    node = start_node(NODE, *offline_args((long_bag, ckpt, db), out, "device:=cpu"))
    node.wait_for_output(f"offline replay: 1/{LONG} frames", STARTUP_TIMEOUT)
    assert node.stop() == 0
    report = json.loads((out / "report.json").read_text())
    assert not report["complete"] and report["stopped"] == "stopped by request"
    assert 1 <= report["n_read"] < LONG and report["n_frames"] <= report["n_read"]
    assert "partial" in node.output() and "Traceback" not in node.output()


# --- bad input ---------------------------------------------------------------------------------
def empty_camera_bag(path: Path) -> Path:
    """A bag whose camera topic is declared but holds no message (a recording stopped at once)."""
    with BagWriter(path) as bag:
        bag._connection(IMAGES, IMAGE)  # the topic alone: BagWriter has no public way to write nothing
    return path


def test_a_missing_topic_or_bag_is_a_one_line_error(inputs, start_node, tmp_path):
    bag = inputs[0]
    has = f"it has: {IMAGES} [sensor_msgs/msg/Image], {GNSS} [sensor_msgs/msg/NavSatFix]"
    runs = [  # (node, what its one line must say); all start at once: none gets as far as loading a model
        (start_node(NODE, *node_args("mode:=live", f"bag:={bag}", "image_topic:=/camera/missing")),
         ["no image topic '/camera/missing'", has]),
        (start_node(NODE, *offline_args(inputs, tmp_path / "out", "gnss_topic:=/gps/missing")),
         ["no GNSS topic '/gps/missing'", has]),
        (start_node(NODE, *node_args("mode:=live", f"bag:={tmp_path / 'no_bag'}")), [f"{tmp_path / 'no_bag'}: no bag"]),
        (start_node(NODE, *node_args("mode:=live", f"bag:={empty_camera_bag(tmp_path / 'empty')}", "loop:=true")),
         [f"no frames on {IMAGES}"]),  # with loop, an empty topic must not spin forever
    ]
    for node, says in runs:
        assert node.wait(30.0) == 2, node.output()
        lines = [line for line in node.output().splitlines() if line.strip()]
        assert len(lines) == 1 and "FATAL" in lines[0] and all(s in lines[0] for s in says), node.output()
    assert not (tmp_path / "out").exists()  # nothing written before the bag was checked
