"""Bag replay end to end: synthetic drives as bags, `vgssl replay`, `build-db --bag`, and bad bags.

The model is an untrained descriptor written straight into a checkpoint (no training: these
tests check that the replay measures exactly what `vgssl eval` would, not that the model is good).
"""

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from testkit import run_cli
from vgssl_core.rosbag.bags import BagReader
from vgssl_core.rosbag.writer import BagWriter
from vgssl_core.data.geo import format_image_name, utm_to_latlon
from vgssl_core.localization.localizer import Localizer
from vgssl_core.rosbag.replay import run_replay
from vgssl_core.rosbag.report import write_report

IMAGES, GNSS, TRUTH = "/camera/image_raw", "/gnss/fix", "/ground_truth/fix"
S = 1_000_000_000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from vgssl_core.models import build_model, resolve_model_config

    cfg = resolve_model_config({"pretrained": "none", "image_size": [64, 96], "head_layers": 1, "head_dim": 64})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("replay_ckpt") / "untrained.ckpt"
    torch.save({"vgssl": {"format": 1, "model_config": cfg, "model_prefix": ""},
                "state_dict": build_model(cfg).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def db(tiny_world, ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay_db") / "city"
    assert run_cli("build-db", "--data", tiny_world, "--ckpt", ckpt, "--out", out, "--quiet") == 0
    return out


@pytest.fixture(scope="module")
def drive(tiny_world, tmp_path_factory):
    """A test run through the test district: 30 frames at 1 Hz, noisy GNSS at 5 Hz with dropouts."""
    out = tmp_path_factory.mktemp("replay_drive") / "drive"
    assert run_cli("synth", "--bag", out, "--world", tiny_world, "--condition", "query", "--drive-seed", "3",
                   "--rate", "1", "--max-frames", "30", "--gnss-dropout", "0.15", "--quiet") == 0
    return out


def replay(tmp_path, drive, db, ckpt, *extra):
    out = tmp_path / "replay"
    code = run_cli("replay", "--bag", drive, "--db", db, "--ckpt", ckpt, "--gnss-topic", GNSS, "--out", out,
                   "--quiet", *extra)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return code, out, report


@pytest.fixture(scope="module")
def plain(drive, db, ckpt, tmp_path_factory):
    """(report, frames.npz) of a single-frame replay (--fusion none) of the drive, descriptors saved."""
    code, out, report = replay(tmp_path_factory.mktemp("plain"), drive, db, ckpt, "--fusion", "none",
                               "--save-descriptors")
    assert code == 0
    return report, dict(np.load(out / "frames.npz", allow_pickle=False)), out


def test_replay_recall_equals_a_brute_force_computation_on_its_descriptors(plain, db):
    report, frames, out = plain
    assert report["complete"]
    ev = frames["evaluated"]
    assert report["n_frames"] == ev.sum() >= 25 and report["n_read"] == len(ev) == 30
    assert report["n_skipped"] == len(ev) - ev.sum() == sum(report["skipped"].values())
    q, gt = frames["descriptors"][ev].astype(np.float64), frames["gt_utm"][ev]
    db_desc = np.load(db / "descriptors.npy").astype(np.float64)
    db_utm = np.load(db / "utm.npy")
    ranking = np.argsort(-(q @ db_desc.T), axis=1, kind="stable")[:, :20]
    assert np.array_equal(ranking, frames["predictions"][ev])
    metres = np.linalg.norm(gt[:, None, :] - db_utm[None, :, :], axis=2)
    for t in (5, 10, 15, 25, 50, 100):
        hit = np.take_along_axis(metres <= t, ranking, axis=1)
        for n in (1, 5, 10, 20):
            assert report["recall_by_threshold"][f"{t:g}"][str(n)] == pytest.approx(100.0 * hit[:, :n].any(1).mean())
    assert report["recall"] == report["recall_by_threshold"]["25"] and list(report["recall"]) == ["1", "5", "10", "20"]
    assert report["latency_ms"]["p50"] > 0 and report["latency_ms"]["p95"] >= report["latency_ms"]["p50"]
    assert report["error_m"]["median"] >= 0 and report["fusion"] == {"method": "none"}
    assert (out / "route.png").stat().st_size > 10_000 and "Recall@N" in (out / "report.md").read_text()


def test_ground_truth_is_the_gnss_interpolated_at_each_image_header_stamp(plain, drive):
    import utm

    _, frames, _ = plain
    with BagReader(drive) as bag:
        stamps = [f.stamp_ns for f in bag.image_frames(IMAGES, decode=False)]
        fixes = [f for f in bag.gnss_fixes(GNSS) if f.status >= 0]
        truth = [f for f in bag.gnss_fixes(TRUTH)]
    assert np.array_equal(frames["stamp_ns"], stamps)  # header stamps, not the bag's receive stamps
    t = np.array([f.stamp_ns for f in fixes], dtype=np.float64)
    e, n, _, _ = utm.from_latlon(np.array([f.latitude for f in fixes]), np.array([f.longitude for f in fixes]))
    ev = frames["evaluated"]
    expected = np.column_stack([np.interp(frames["stamp_ns"][ev], t, e), np.interp(frames["stamp_ns"][ev], t, n)])
    assert np.allclose(frames["gt_utm"][ev], expected, atol=1e-3)
    te, tn, _, _ = utm.from_latlon(np.array([f.latitude for f in truth]), np.array([f.longitude for f in truth]))
    exact = np.column_stack([np.interp(frames["stamp_ns"][ev], [f.stamp_ns for f in truth], te),
                             np.interp(frames["stamp_ns"][ev], [f.stamp_ns for f in truth], tn)])
    assert np.median(np.linalg.norm(frames["gt_utm"][ev] - exact, axis=1)) < 4.0  # GNSS noise sigma is 2 m


def test_fusion_none_replay_equals_vgssl_eval_on_the_same_images(plain, drive, ckpt, tiny_world, tmp_path):
    report, frames, _ = plain
    gt = {int(i): g for i, g, ev in zip(frames["index"], frames["gt_utm"], frames["evaluated"]) if ev}
    data = tmp_path / "as_dataset"
    shutil.copytree(tiny_world / "images" / "test" / "database", data / "images" / "test" / "database")
    queries = data / "images" / "test" / "queries"
    queries.mkdir(parents=True)
    with BagReader(drive) as bag:
        for frame in bag.image_frames(IMAGES):
            if frame.index in gt:  # the frames the replay evaluated, lossless, named with their ground truth
                e, n = gt[frame.index]
                name = format_image_name(e, n, 32, "T", *utm_to_latlon(e, n, 32, "T"), note=f"f{frame.index}",
                                         suffix=".png")
                Image.fromarray(frame.rgb).save(queries / name)
    assert run_cli("eval", "--data", data, "--ckpt", ckpt, "--json", tmp_path / "eval.json", "--quiet") == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["n_queries"] == report["n_frames"]
    assert evaluation["recall"] == report["recall"]


def test_a_mapping_bag_builds_a_database_that_localizes_a_test_bag(tiny_world, ckpt, drive, tmp_path):
    mapping = tmp_path / "mapping"
    assert run_cli("synth", "--bag", mapping, "--world", tiny_world, "--condition", "database", "--drive-seed", "1",
                   "--max-frames", "50", "--storage", "sqlite3", "--compressed", "--gnss-dropout", "0.1",
                   "--gnss-noise-m", "1", "--quiet") == 0
    with BagReader(mapping) as bag:
        assert bag.storage == "sqlite3" and bag.topics()["/camera/image_raw/compressed"].endswith("CompressedImage")
    out = tmp_path / "map_db"
    assert run_cli("build-db", "--bag", mapping, "--gnss-topic", GNSS, "--ckpt", ckpt, "--out", out,
                   "--min-spacing", "6", "--json", tmp_path / "b.json", "--quiet") == 0
    built = json.loads((tmp_path / "b.json").read_text())
    manifest = built["manifest"]
    assert manifest["source"]["kind"] == "bag" and manifest["source"]["image_topic"] == "/camera/image_raw/compressed"
    assert (manifest["utm_zone"], manifest["utm_letter"], manifest["count"]) == (32, "T", built["kept"])
    assert built["kept"] + sum(built["skipped"].values()) == built["n_images"] == 50
    assert built["skipped"]["min_spacing"] > 0
    utm = np.load(out / "utm.npy")
    assert (np.linalg.norm(np.diff(utm, axis=0), axis=1) >= 6.0 - 1e-9).all()
    assert json.loads((out / "ids.json").read_text())[0].startswith("/camera/image_raw/compressed@")
    code, _, report = replay(tmp_path, drive, out, ckpt)  # default: with fusion
    assert code == 0 and report["recall"] is not None
    fusion = report["fusion"]
    assert fusion["method"] == "bayes" and 0 <= fusion["recall"]["1"] <= 100
    assert fusion["single_frame_recall"]["1"] == report["recall"]["1"]
    assert fusion["latency_ms"]["p50"] >= report["latency_ms"]["p50"] and fusion["ms"]["p50"] < 5.0


def test_ctrl_c_writes_the_report_of_what_was_processed(drive, db, ckpt, tmp_path, monkeypatch, capsys):
    real = Localizer.localize
    calls = []

    def interrupted_on_the_sixth(self, rgb, top_k=None, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(self, rgb, top_k, **kwargs)

    monkeypatch.setattr(Localizer, "localize", interrupted_on_the_sixth)
    code, out, report = replay(tmp_path, drive, db, ckpt)
    assert code == 130
    assert report["interrupted"] and not report["complete"] and report["n_read"] == 5
    assert report["recall"] is not None and report["n_frames"] <= 5
    assert "interrupted after 5 frames" in capsys.readouterr().err
    assert "INTERRUPTED" in (out / "report.md").read_text() and (out / "route.png").exists()


def test_the_node_api_streams_frames_and_stops_on_request(drive, db, ckpt, tmp_path):
    localizer = Localizer(ckpt, db, device="cpu")
    stop, seen = threading.Event(), []

    def on_frame(frame):
        seen.append(frame)
        if len(seen) == 4:
            stop.set()

    result = run_replay(drive, localizer, image_topic=IMAGES, gnss_topic=GNSS, every=2, stop=stop,
                        on_frame=on_frame, progress=False)
    assert len(seen) == len(result.frames) == 4 and result.report["stopped"] == "stopped by request"
    assert not result.complete and [f.index for f in seen] == [0, 2, 4, 6] and result.report["every"] == 2
    assert all(f.fused is not None and f.latency_s > 0 for f in seen)
    written = write_report(result, tmp_path / "api")
    assert sorted(p.name for p in written) == ["calibration.png", "frames.npz", "report.json", "report.md", "route.png"]


def test_bad_frames_gnss_holes_and_shuffled_fixes_are_counted_not_fatal(drive, db, ckpt, tmp_path):
    """Twelve frames of the drive, one with a bad encoding, one corrupt, a 3 s GNSS hole, fixes out of order."""
    bad = tmp_path / "bad"
    with BagReader(drive) as src, BagWriter(bad) as dst:
        frames = [f for f in src.image_frames(IMAGES) if f.index < 12]
        fixes = [f for f in src.gnss_fixes(GNSS) if f.stamp_ns - frames[0].stamp_ns < 12.5 * S]
        t0 = frames[0].stamp_ns
        for f in frames:
            dst.write_image(IMAGES, f.rgb, f.stamp_ns, bag_stamp_ns=f.bag_stamp_ns)
        dst.write_image_fields(IMAGES, t0 + int(3.1 * S), encoding="yuv422", height=120, width=160, step=320,
                               data=bytes(120 * 320))
        dst.write_raw(IMAGES, "sensor_msgs/msg/Image", t0 + int(5.1 * S), b"\x00\x01\x00\x00 not CDR")
        kept = [f for f in fixes if not 6.5 * S < f.stamp_ns - t0 < 9.5 * S]
        for a, b in zip(kept[0::2], kept[1::2]):  # header stamps out of order: each pair recorded swapped
            dst.write_navsat(GNSS, b.stamp_ns, b.latitude, b.longitude, b.altitude, status=b.status,
                             bag_stamp_ns=a.bag_stamp_ns)
            dst.write_navsat(GNSS, a.stamp_ns, a.latitude, a.longitude, a.altitude, status=a.status,
                             bag_stamp_ns=b.bag_stamp_ns)
    code, out, report = replay(tmp_path, bad, db, ckpt)
    assert code == 0, report
    assert report["skipped"] == {"corrupt_message": 1, "gnss_gap": 3, "undecodable": 1}
    assert report["n_read"] == 14 and report["n_frames"] == 9 and report["recall"] is not None
    assert report["gnss"]["reordered"] > 0 and report["gnss"]["duplicate"] == 0
    assert any("yuv422" in e for e in report["errors"])


def test_gnss_fixes_just_before_each_image_give_every_frame_a_ground_truth(drive, db, ckpt, tmp_path):
    """A recorder whose fix comes 10 ms before each image: the last image is 10 ms past the last fix.

    Within --gnss-tolerance (default 0.2 s) it takes that fix, so every frame counts, as in `vgssl
    eval` on the same images; with --gnss-tolerance 0 it is skipped as before.
    """
    bag = tmp_path / "fix_first"
    with BagReader(drive) as src, BagWriter(bag) as dst:
        frames = [f for f in src.image_frames(IMAGES) if f.index < 8]
        truth = list(src.gnss_fixes(TRUTH))
        for f in frames:
            near = min(truth, key=lambda g: abs(g.stamp_ns - f.stamp_ns))
            dst.write_navsat(GNSS, f.stamp_ns - 10_000_000, near.latitude, near.longitude, near.altitude,
                             bag_stamp_ns=f.bag_stamp_ns - 10_000_000)
            dst.write_image(IMAGES, f.rgb, f.stamp_ns, bag_stamp_ns=f.bag_stamp_ns)
    code, _, report = replay(tmp_path, bag, db, ckpt, "--fusion", "none")
    assert code == 0, report
    assert report["n_read"] == report["n_frames"] == 8 and report["skipped"] == {}
    assert report["gnss_tolerance_s"] == 0.2
    code, _, strict = replay(tmp_path, bag, db, ckpt, "--fusion", "none", "--gnss-tolerance", "0")
    assert code == 0 and strict["skipped"] == {"gnss_outside": 1} and strict["n_frames"] == 7


def test_bag_mistakes_are_one_line_errors(drive, db, ckpt, tmp_path, capsys):
    def fails(bag, *extra, message):
        out = tmp_path / "out"
        assert run_cli("replay", "--bag", bag, "--db", db, "--ckpt", ckpt, "--out", out, "--quiet", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err

    fails(drive, "--image-topic", "/nope", "--gnss-topic", GNSS,
          message="no image topic '/nope' in this bag (it has: ")
    fails(drive, message="several GNSS topics")
    fails(drive, "--gnss-topic", GNSS, "--gnss-tolerance", "-0.1", message="--gnss-tolerance must be a finite number >= 0")
    fails(tmp_path / "missing", message="no bag here")
    truncated = shutil.copytree(drive, tmp_path / "truncated")
    (data,) = truncated.glob("*.mcap")
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size // 3)
    fails(truncated, message="truncated or corrupt bag")
    other = shutil.copytree(drive, tmp_path / "other")
    meta = other / "metadata.yaml"
    meta.write_text(meta.read_text().replace("storage_identifier: mcap", "storage_identifier: rosbag_v2"))
    fails(other, message="unknown storage format")
    no_fix = tmp_path / "no_fix"
    with BagReader(drive) as src, BagWriter(no_fix) as dst:
        first = next(src.image_frames(IMAGES))
        dst.write_image(IMAGES, first.rgb, first.stamp_ns)
        dst.write_navsat(GNSS, first.stamp_ns, float("nan"), float("nan"), status=-1)
    fails(no_fix, message="GNSS topic '/gnss/fix' has no usable fix")


def test_synth_bag_options_are_checked(tmp_path, capsys):
    for args, message in [
        (["--out", tmp_path / "w", "--rate", "3"], "--rate is an option of a drive"),
        (["--bag", tmp_path / "b", "--rate", "0"], "--rate must be in (0, 100]"),
        (["--bag", tmp_path / "b", "--condition", "noon"], "unknown time of day 'noon'"),
        (["--bag", tmp_path / "b", "--gnss-dropout", "1"], "--gnss-dropout must be in [0, 1)"),
    ]:
        assert run_cli("synth", *args, "--quiet") == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "x").write_text("mine")
    assert run_cli("synth", "--bag", tmp_path / "precious", "--quiet") == 2
    assert "not a bag written by 'vgssl synth'" in capsys.readouterr().err
