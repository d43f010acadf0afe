"""`vgssl dataset`: a training dataset from drives recorded by another tool (bags written with the
``rosbags`` API directly, not vgssl's BagWriter), its area split, and its errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from testkit import run_cli
from vgssl_core.data.dataset import load_split
from vgssl_core.data.geo import EVAL_RADIUS_M, parse_image_name, planar_distances, utm_to_latlon
from vgssl_core.errors import VgsslError
from vgssl_core.rosbag import dataset as bag_dataset
from vgssl_core.rosbag.dataset import assign_blocks, make_dataset

S = 1_000_000_000
T0 = 1_750_000_000 * S
ZONE, LETTER = 32, "T"
EAST0, NORTH0 = 396_010.0, 4_991_010.0  # the road starts here and runs east
SPEED = 6.0  # m/s
CAM_HZ = 2.0  # one frame every 3 m
GNSS_HZ = 1.0
GNSS_PHASE_S = 0.37  # the receiver's epochs are not the camera's
ROAD_M = 360.0


def road(t_s: np.ndarray, *, stop_at_s: float | None = None, stop_for_s: float = 0.0, north_m: float = 0.0):
    """(N, 2) UTM of a robot driving east at SPEED, optionally standing still for a while."""
    t = np.asarray(t_s, float)
    if stop_at_s is not None:
        t = np.where(t < stop_at_s, t, np.maximum(stop_at_s, t - stop_for_s))
    return np.column_stack([EAST0 + SPEED * t, np.full(len(t), NORTH0 + north_m)])


def picture(x_m: float, drive: int, h: int = 30, w: int = 40) -> np.ndarray:
    """A frame whose colours depend on where it was taken (and a little on the drive)."""
    cols = np.linspace(0, 255, w)[None, :, None]
    base = np.array([(x_m * 7) % 256, (x_m * 3) % 256, 40 * drive], float)
    return np.clip(base + cols * np.array([0.3, -0.2, 0.1]), 0, 255).astype(np.uint8).repeat(h, 0)


def write_foreign_bag(path: Path, *, drive: int, compressed: bool, storage: str = "mcap",
                      duration_s: float = ROAD_M / SPEED, north_m: float = 0.0, stop_at_s: float | None = None,
                      stop_for_s: float = 0.0, gnss_status: int = 0, gnss_gap_s: tuple[float, float] | None = None,
                      with_images: bool = True, with_gnss: bool = True) -> Path:
    """A drive as another recorder writes it: ``rosbags.rosbag2.Writer`` and its typestore, bgr8 raw frames or
    JPEG ``CompressedImage``, NavSatFix at 1 Hz on the receiver's own clock (epochs 0.37 s off the camera's)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]

    def header(ns: int, frame: str):
        return Header(stamp=Time(sec=ns // S, nanosec=ns % S), frame_id=frame)

    total = duration_s + stop_for_s
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        events = []
        if with_images:
            topic = "/front/image/compressed" if compressed else "/front/image"
            kind = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
            cam = writer.add_connection(topic, kind, typestore=store)
            t_cam = np.arange(0.0, total, 1.0 / CAM_HZ)
            for t, (x, _) in zip(t_cam, road(t_cam, stop_at_s=stop_at_s, stop_for_s=stop_for_s, north_m=north_m)):
                ns = T0 + int(round(t * S))
                bgr = cv2.cvtColor(picture(x - EAST0, drive), cv2.COLOR_RGB2BGR)
                if compressed:
                    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    msg = T[kind](header=header(ns, "cam"), format="jpeg", data=buf.reshape(-1))
                else:
                    msg = T[kind](header=header(ns, "cam"), height=bgr.shape[0], width=bgr.shape[1], encoding="bgr8",
                                  is_bigendian=0, step=bgr.shape[1] * 3, data=bgr.reshape(-1))
                events.append((ns + 20_000_000, cam, store.serialize_cdr(msg, kind)))
        if with_gnss:
            fix_type = "sensor_msgs/msg/NavSatFix"
            gnss = writer.add_connection("/gps/fix", fix_type, typestore=store)
            t_fix = np.arange(-1.0 + GNSS_PHASE_S, total + 1.0, 1.0 / GNSS_HZ)
            for t, (e, n) in zip(t_fix, road(t_fix, stop_at_s=stop_at_s, stop_for_s=stop_for_s, north_m=north_m)):
                if gnss_gap_s and gnss_gap_s[0] <= t <= gnss_gap_s[1]:
                    continue
                lat, lon = utm_to_latlon(e, n, ZONE, LETTER)
                ns = T0 + int(round(t * S))
                msg = T[fix_type](header=header(ns, "gps"),
                                  status=T["sensor_msgs/msg/NavSatStatus"](status=gnss_status, service=1),
                                  latitude=lat, longitude=lon, altitude=250.0,
                                  position_covariance=np.diag([4.0, 4.0, 16.0]).ravel(), position_covariance_type=2)
                events.append((ns + 90_000_000, gnss, store.serialize_cdr(msg, fix_type)))
        for ns, conn, data in sorted(events, key=lambda e: e[0]):
            writer.write(conn, ns, data)
    return path


@pytest.fixture(scope="module")
def drives(tmp_path_factory) -> dict[str, Path]:
    """A mapping drive (raw bgr8, mcap, stops 10 s on the way) and a later drive 2 m to the side
    (JPEG, sqlite3, GNSS lost for 4 s)."""
    root = tmp_path_factory.mktemp("drives")
    return {
        "map": write_foreign_bag(root / "monday", drive=0, compressed=False, stop_at_s=20.0, stop_for_s=10.0),
        "other": write_foreign_bag(root / "thursday", drive=1, compressed=True, storage="sqlite3", north_m=2.0,
                                   gnss_gap_s=(30.0, 34.5)),
    }


@pytest.fixture(scope="module")
def dataset(drives, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "robot"
    assert run_cli("dataset", "--bag", drives["map"], "--bag", drives["other"], "--out", out, "--block", "50",
                   "--size", "48x32", "--quiet") == 0
    return out


def test_every_split_loads_with_interpolated_geotags(dataset, drives):
    manifest = json.loads((dataset / "dataset.json").read_text())
    rows = list(csv.DictReader((dataset / "provenance.csv").open()))
    assert len(rows) == sum(c["database"] + c["queries"] for c in manifest["splits"].values())
    for name in ("train", "val", "test"):
        split = load_split(dataset, name)
        assert len(split.database) == manifest["splits"][name]["database"] > 0
        assert len(split.queries) == manifest["splits"][name]["queries"] > 0
        assert (split.zone, split.letter) == (ZONE, LETTER)
    assert {r["bag"] for r in rows if r["side"] == "database"} == {str(drives["map"].absolute())}
    assert {r["bag"] for r in rows if r["side"] == "query"} == {str(drives["other"].absolute())}
    for row in rows[::7]:
        tag = parse_image_name(row["file"])
        t = (int(row["stamp_ns"]) - T0) / S  # the road is straight and the speed constant: interpolation is exact
        drive = 0 if row["side"] == "database" else 1
        expected = road(np.array([t]), **({"stop_at_s": 20.0, "stop_for_s": 10.0} if drive == 0 else
                                          {"north_m": 2.0}))[0]
        assert abs(tag.east - expected[0]) < 0.01 and abs(tag.north - expected[1]) < 0.01
        lat, lon = utm_to_latlon(*expected, ZONE, LETTER)
        assert abs(tag.lat - lat) < 2e-6 and abs(tag.lon - lon) < 2e-6
        before, after = int(row["fix_before_ns"]), int(row["fix_after_ns"])
        assert before < int(row["stamp_ns"]) < after  # GNSS epochs are 0.37 s off the camera's
        assert cv2.imread(str(dataset / row["file"])).shape == (32, 48, 3)  # --size 48x32


def test_no_train_place_within_25_m_of_a_test_place(dataset):
    def places(name):
        s = load_split(dataset, name)
        return np.concatenate([s.database.utm, s.queries.utm])

    train, val, test = places("train"), places("val"), places("test")
    assert planar_distances(train, test).min() > EVAL_RADIUS_M
    assert planar_distances(train, val).min() > EVAL_RADIUS_M
    assert planar_distances(val, test).min() > EVAL_RADIUS_M
    manifest = json.loads((dataset / "dataset.json").read_text())
    assert manifest["dropped"]["train_buffer"] > 0  # the buffer did drop frames at block borders


def test_a_standing_robot_and_lost_gnss_are_skipped_and_counted(dataset):
    manifest = json.loads((dataset / "dataset.json").read_text())
    monday, thursday = manifest["drives"]
    assert monday["skipped"]["min_spacing"] >= 19  # 10 s at 2 Hz standing still: one frame of it kept
    assert thursday["skipped"].get("gnss_gap", 0) >= 8  # 4.5 s without fixes at 2 Hz
    assert monday["recorded_size"] == [40, 30]


def test_the_dataset_trains_and_evaluates_unchanged(dataset, tmp_path):
    common = ["model.image_size=[32,48]", "model.head_layers=1", "model.head_dim=32", "model.weights=random"]
    assert run_cli("eval", "--data", dataset, "--split", "test", "--json", tmp_path / "eval.json", "--quiet",
                   *common) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["recall"]
    assert run_cli("train", "--data", dataset, "--out", tmp_path / "run", "--max-steps", "2", "--quiet",
                   "method=simclr", "data.batch_size=4", "data.workers=0", "trainer.test_split=null",
                   *common) == 0
    assert (tmp_path / "run" / "last.ckpt").is_file()


def test_blocks_are_dealt_deterministically_whatever_the_frame_order():
    rng = np.random.default_rng(0)
    utm = rng.uniform(0, 1000, (400, 2)) + [396_000, 4_991_000]
    splits, blocks = assign_blocks(utm, 100.0)
    order = rng.permutation(len(utm))
    again, blocks_again = assign_blocks(utm[order], 100.0)
    assert blocks == blocks_again and list(again) == list(splits[order])
    shares = {s: sum(v == s for v in blocks.values()) / len(blocks) for s in ("train", "val", "test")}
    assert shares == pytest.approx({"train": 0.6, "val": 0.2, "test": 0.2}, abs=0.02)


# --- errors: one line, exit 2, nothing left behind ------------------------------------------
def assert_fails_cleanly(capsys, out: Path, match: str, *args) -> None:
    assert run_cli("dataset", *args, "--out", out, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def test_bag_without_images_or_gnss_is_one_line(tmp_path, drives, capsys):
    no_images = write_foreign_bag(tmp_path / "gnss_only", drive=1, compressed=False, with_images=False)
    no_gnss = write_foreign_bag(tmp_path / "camera_only", drive=1, compressed=False, with_gnss=False)
    assert_fails_cleanly(capsys, tmp_path / "a", "no image topic", "--bag", drives["map"], "--bag", no_images)
    assert_fails_cleanly(capsys, tmp_path / "b", "no GNSS topic", "--bag", drives["map"], "--bag", no_gnss)


def test_gnss_that_never_had_a_fix_is_one_line(tmp_path, drives, capsys):
    no_fix = write_foreign_bag(tmp_path / "no_fix", drive=1, compressed=True, duration_s=20.0, gnss_status=-1)
    assert_fails_cleanly(capsys, tmp_path / "c", "are NO_FIX", "--bag", drives["map"], "--bag", no_fix)


def test_drives_that_never_overlap_are_one_line(tmp_path, drives, capsys):
    elsewhere = write_foreign_bag(tmp_path / "elsewhere", drive=1, compressed=True, north_m=300.0, duration_s=30.0)
    assert_fails_cleanly(capsys, tmp_path / "d", "never overlap", "--bag", drives["map"], "--bag", elsewhere)


def test_a_drive_too_short_to_split_is_one_line(tmp_path, capsys):
    a = write_foreign_bag(tmp_path / "short_a", drive=0, compressed=False, duration_s=6.0)
    b = write_foreign_bag(tmp_path / "short_b", drive=1, compressed=True, duration_s=6.0, north_m=1.0)
    assert_fails_cleanly(capsys, tmp_path / "e", "too short to split", "--bag", a, "--bag", b, "--block", "50")


def test_ctrl_c_leaves_no_partial_dataset(tmp_path, drives, monkeypatch):
    written = []

    def encode_then_interrupt(rgb, fmt, quality):
        written.append(1)
        if len(written) == 30:
            raise KeyboardInterrupt
        return cv2.imencode(".jpg", rgb)[1].tobytes()

    monkeypatch.setattr(bag_dataset, "encode_compressed", encode_then_interrupt)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        make_dataset([drives["map"], drives["other"]], out, block_m=50.0, progress=False)
    assert len(written) == 30
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_never_written_over(tmp_path, drives):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(VgsslError, match="not an empty folder"):
        make_dataset([drives["map"], drives["other"]], tmp_path / "taken", progress=False)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
