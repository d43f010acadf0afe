"""rosbag2 bags through `vgssl_core.rosbag.bags`: round trips in mcap and sqlite3, raw messages, bad bags."""

import os

import numpy as np
import pytest

from vgssl_core.rosbag.bags import (COMPRESSED_IMAGE, IMAGE, NAVSATFIX, STATUS_FIX, STATUS_NO_FIX, BagMessage,
                                    BagReader, play, typestore)
from vgssl_core.rosbag.writer import BagWriter
from vgssl_core.errors import VgsslError

S = 1_000_000_000
T0 = 1_700_000_000 * S


def rgb(seed, h=24, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_sample(path, storage):
    """Three raw frames, two PNG frames, three fixes (one NO_FIX); bag stamps a few ms after the headers."""
    with BagWriter(path, storage) as bag:
        for i in range(3):
            bag.write_image("/cam/raw", rgb(i), T0 + i * S // 10, bag_stamp_ns=T0 + i * S // 10 + 7_000_000)
            bag.write_compressed("/cam/compressed", rgb(10 + i), T0 + i * S // 10, format="png")
        bag.write_image("/cam/bgr", rgb(5), T0, encoding="bgr8")
        bag.write_navsat("/gnss/fix", T0, 45.0651234567, 7.7161234567, 241.5, sigma_m=2.0)
        bag.write_navsat("/gnss/fix", T0 + S // 5, 45.0652, 7.7162, 241.0, status=STATUS_NO_FIX)
        bag.write_navsat("/gnss/fix", T0 + 2 * S // 5, 45.0653, 7.7163, 240.5,
                         covariance=np.arange(9, dtype=float), bag_stamp_ns=T0 + 2 * S // 5 + 1)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_images_and_fixes_round_trip_exactly(tmp_path, storage):
    path = write_sample(tmp_path / "bag", storage)
    assert sorted(os.listdir(path)) == sorted(["metadata.yaml", "bag" + (".mcap" if storage == "mcap" else ".db3")])
    with BagReader(path) as bag:
        assert bag.storage == storage
        assert bag.topics() == {"/cam/raw": IMAGE, "/cam/compressed": COMPRESSED_IMAGE, "/cam/bgr": IMAGE,
                                "/gnss/fix": NAVSATFIX}
        assert bag.message_count("/cam/raw") == 3 and bag.message_count() == 10
        raw = list(bag.image_frames("/cam/raw"))
        assert [f.index for f in raw] == [0, 1, 2]
        assert [f.stamp_ns for f in raw] == [T0 + i * S // 10 for i in range(3)]
        assert [f.bag_stamp_ns - f.stamp_ns for f in raw] == [7_000_000] * 3
        for i, f in enumerate(raw):
            assert f.error is None and np.array_equal(f.rgb, rgb(i))
        for i, f in enumerate(bag.image_frames("/cam/compressed")):
            assert np.array_equal(f.rgb, rgb(10 + i))  # PNG is lossless
            assert f.stamp_ns == f.bag_stamp_ns == T0 + i * S // 10
        (bgr,) = bag.image_frames("/cam/bgr")
        assert np.array_equal(bgr.rgb, rgb(5))
        fixes = list(bag.gnss_fixes("/gnss/fix"))
    assert [f.status for f in fixes] == [STATUS_FIX, STATUS_NO_FIX, STATUS_FIX]
    assert (fixes[0].latitude, fixes[0].longitude, fixes[0].altitude) == (45.0651234567, 7.7161234567, 241.5)
    assert fixes[0].covariance == (4.0, 0, 0, 0, 4.0, 0, 0, 0, 16.0) and fixes[0].covariance_type == 2
    assert fixes[2].covariance == tuple(float(v) for v in range(9)) and fixes[2].covariance_type == 3
    assert fixes[2].bag_stamp_ns == fixes[2].stamp_ns + 1
    assert fixes[0].valid and not fixes[1].valid


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_raw_messages_come_back_byte_for_byte_in_bag_stamp_order(tmp_path, storage):
    store = typestore()
    msg = store.types[NAVSATFIX](
        header=store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2),
                                                  frame_id="gps"),
        status=store.types["sensor_msgs/msg/NavSatStatus"](status=0, service=1), latitude=1.0, longitude=2.0,
        altitude=3.0, position_covariance=np.zeros(9), position_covariance_type=0)
    data = store.serialize_cdr(msg, NAVSATFIX)
    with BagWriter(tmp_path / "b", storage) as bag:
        bag.write_raw("/b", NAVSATFIX, 20, data)
        bag.write_raw("/a", NAVSATFIX, 10, data)
        bag.write_image("/img", rgb(0), 15)
    with BagReader(tmp_path / "b") as bag:
        got = list(bag.messages(["/a", "/b"]))
        assert got == [BagMessage("/a", NAVSATFIX, 10, data), BagMessage("/b", NAVSATFIX, 20, data)]
        assert isinstance(got[0].rawdata, bytes)
        assert [m.topic for m in bag.messages()] == ["/a", "/img", "/b"]
        assert bag.deserialize(got[0]).latitude == 1.0
        assert (bag.start_ns, bag.duration_s) == (10, pytest.approx(11e-9))


def test_a_bare_storage_file_reads_like_its_folder(tmp_path):
    path = write_sample(tmp_path / "bag", "mcap")
    (path / "metadata.yaml").unlink()  # a folder that lost its metadata: the single .mcap is used
    with BagReader(path) as bag:
        assert len(list(bag.image_frames("/cam/raw"))) == 3
    with BagReader(path / "bag.mcap") as bag:
        assert bag.storage == "mcap" and bag.message_count("/gnss/fix") == 3


def test_a_missing_topic_lists_the_topics_the_bag_has(tmp_path):
    with BagReader(write_sample(tmp_path / "bag", "mcap")) as bag:
        with pytest.raises(VgsslError) as err:
            list(bag.image_frames("/camera/image_raw"))
        message = str(err.value)
        assert "no image topic '/camera/image_raw'" in message and "/gnss/fix [sensor_msgs/msg/NavSatFix]" in message
        candidates = message.split("image topic candidates: ")[1]
        assert sorted(candidates.split(", ")) == ["/cam/bgr", "/cam/compressed", "/cam/raw"]
        with pytest.raises(VgsslError, match="GNSS topic '/cam/raw' is sensor_msgs/msg/Image, expected .*NavSatFix"):
            list(bag.gnss_fixes("/cam/raw"))
        with pytest.raises(VgsslError, match="several image topics .* name one with --image-topic"):
            bag.pick_topic(None, (IMAGE, COMPRESSED_IMAGE), "image topic", "--image-topic")
        assert bag.pick_topic(None, (NAVSATFIX,), "GNSS topic") == "/gnss/fix"
        with pytest.raises(VgsslError, match="no topic '/nope'"):
            list(bag.messages(["/nope"]))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_truncated_bag_is_one_line(tmp_path, storage):
    path = write_sample(tmp_path / "bag", storage)
    (data,) = [p for p in path.iterdir() if p.name != "metadata.yaml"]
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size // 2)
    with pytest.raises(VgsslError, match="truncated or corrupt bag") as err:
        BagReader(path)
    assert "\n" not in str(err.value)


def test_unknown_storage_formats_are_named(tmp_path):
    path = write_sample(tmp_path / "bag", "mcap")
    meta = path / "metadata.yaml"
    meta.write_text(meta.read_text().replace("storage_identifier: mcap", "storage_identifier: rocksdb"))
    with pytest.raises(VgsslError, match=r"unknown storage format .*rocksdb.*mcap or sqlite3"):
        BagReader(path)
    other = tmp_path / "drive.bin"
    other.write_bytes(b"\0" * 100)
    with pytest.raises(VgsslError, match="unknown storage format '.bin'"):
        BagReader(other)
    ros1 = tmp_path / "old.bag"
    ros1.write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(VgsslError, match="a ROS 1 bag; convert it .*rosbags-convert"):
        BagReader(ros1)
    with pytest.raises(VgsslError, match="no bag here"):
        BagReader(tmp_path / "nowhere")
    with pytest.raises(VgsslError, match="unknown storage format 'rocksdb'; use one of mcap, sqlite3"):
        BagWriter(tmp_path / "new", "rocksdb")


def test_bad_encodings_and_corrupt_messages_are_reported_per_frame(tmp_path):
    with BagWriter(tmp_path / "b") as bag:
        bag.write_image("/cam", rgb(0), 1)
        bag.write_image_fields("/cam", 2, encoding="yuv422", height=24, width=32, step=64, data=bytes(24 * 64))
        bag.write_image_fields("/cam", 3, encoding="rgb8", height=24, width=32, step=96, data=bytes(10))
        bag.write_raw("/cam", IMAGE, 4, b"\x00\x01\x00\x00garbage")
        bag.write_compressed("/cam2", None, 5, data=b"not a jpeg")
        bag.write_image("/cam", rgb(1), 6)
    with BagReader(tmp_path / "b") as bag:
        frames = list(bag.image_frames("/cam"))
        (bad_jpeg,) = bag.image_frames("/cam2")
    assert [f.error_kind for f in frames] == [None, "undecodable", "undecodable", "corrupt_message", None]
    assert "unsupported image encoding 'yuv422'" in frames[1].error
    assert "holds 10 bytes" in frames[2].error
    assert frames[3].error.startswith("corrupt Image message")
    assert np.array_equal(frames[4].rgb, rgb(1))
    assert bad_jpeg.error_kind == "undecodable" and "cannot decode compressed image" in bad_jpeg.error


def test_select_and_every_skip_frames_without_decoding_them(tmp_path):
    with BagWriter(tmp_path / "b") as bag:
        for i in range(6):
            bag.write_image("/cam", rgb(i), (i + 1) * S)
    seen = []
    with BagReader(tmp_path / "b") as bag:
        kept = list(bag.image_frames("/cam", every=2, select=lambda i, t: seen.append((i, t)) or i != 2))
        stamps_only = list(bag.image_frames("/cam", decode=False))
    assert seen == [(0, S), (2, 3 * S), (4, 5 * S)] and [f.index for f in kept] == [0, 4]
    assert all(f.rgb is None and f.error is None for f in stamps_only) and len(stamps_only) == 6


def test_a_failed_write_leaves_nothing_and_other_folders_are_never_overwritten(tmp_path):
    with pytest.raises(RuntimeError):
        with BagWriter(tmp_path / "b") as bag:
            bag.write_image("/cam", rgb(0), 1)
            raise RuntimeError("camera unplugged")
    assert list(tmp_path.iterdir()) == []
    precious = tmp_path / "photos"
    precious.mkdir()
    with pytest.raises(VgsslError, match="exists .not a bag.; refusing to overwrite"):
        BagWriter(precious)
    old = write_sample(tmp_path / "old", "sqlite3")
    with pytest.raises(VgsslError, match="exists .a bag."):
        BagWriter(old)
    with BagWriter(old, "mcap", replace=True) as bag:
        bag.write_image("/cam", rgb(0), 1)
    with BagReader(old) as bag:
        assert bag.storage == "mcap" and bag.topics() == {"/cam": IMAGE}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "photos"]


def test_play_keeps_the_recorded_pace_and_stops_on_request():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731

    def sleep(s):
        now[0] += s

    messages = [BagMessage("/a", IMAGE, T0 + int(t * S), b"") for t in (0.0, 0.5, 0.6, 2.0)]
    times = [now[0] for _ in play(messages, clock=clock, sleep=sleep)]
    assert times == pytest.approx([0.0, 0.5, 0.6, 2.0])
    now[0] = 0.0
    times = [now[0] for _ in play(messages, rate=2.0, clock=clock, sleep=sleep)]
    assert times == pytest.approx([0.0, 0.25, 0.3, 1.0])
    now[0] = 0.0
    got = list(play(messages, clock=clock, sleep=sleep, stop=lambda: now[0] >= 1.0))  # waiting for the 4th
    assert got == messages[:3] and now[0] < 1.1
