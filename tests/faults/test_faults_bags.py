"""Row 3: a bag whose storage file lost messages is never read as complete: the replay says
what was lost (``complete: false``), build-db counts it among the skipped frames."""

from __future__ import annotations

import json
import shutil

import pytest
from testkit import run_cli

from vgssl_core.rosbag.bags import BagReader

GNSS = "/gnss/fix"


@pytest.fixture(scope="module")
def damaged_bag(tiny_world, tmp_path_factory):
    """A 20-frame drive whose .mcap has 64 KB of zeros in the middle (the index at its end intact)."""
    out = tmp_path_factory.mktemp("damaged") / "drive"
    assert run_cli("synth", "--bag", out, "--world", tiny_world, "--rate", "1", "--max-frames", "20", "--quiet") == 0
    mcap = next(out.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 65536] = bytes(65536)
    mcap.write_bytes(bytes(data))
    with BagReader(out) as bag:
        image_topic = bag.pick_topic(None, ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"), "image topic")
        read = sum(1 for _ in bag.image_frames(image_topic, decode=False))
        assert 0 < read < bag.message_count(image_topic) == 20  # what the reader returns without a word
    return out, read, image_topic


def test_the_reader_says_how_many_announced_messages_it_could_not_read(damaged_bag):
    bag, read, image_topic = damaged_bag
    with BagReader(bag) as reader:
        assert reader.missing(image_topic) == 0  # nothing read yet
        assert sum(1 for _ in reader.image_frames(image_topic, decode=False)) == read
        assert reader.missing(image_topic) == 20 - read


def test_replay_of_a_damaged_bag_is_not_complete(damaged_bag, tiny_model, tmp_path):
    bag, read, _ = damaged_bag
    out = tmp_path / "replay"
    assert run_cli("replay", "--bag", bag, "--db", tiny_model().db, "--ckpt", tiny_model().ckpt, "--gnss-topic", GNSS,
                   "--out", out, "--quiet", "--fusion", "none") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False
    assert any(f"{20 - read} of 20 messages" in w for w in report["warnings"])


def test_build_db_from_a_damaged_bag_counts_the_lost_frames(damaged_bag, tiny_model, tmp_path):
    bag, read, _ = damaged_bag
    assert run_cli("build-db", "--bag", bag, "--ckpt", tiny_model().ckpt, "--gnss-topic", GNSS,
                   "--out", tmp_path / "db", "--json", tmp_path / "db.json", "--quiet") == 0
    report = json.loads((tmp_path / "db.json").read_text())
    assert report["skipped"]["unreadable_in_bag"] == 20 - read
    assert report["kept"] + sum(report["skipped"].values()) == 20  # every announced frame accounted for
