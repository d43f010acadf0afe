"""Calibrated fixes: fitting a probability and a covariance scale, checking them, refusing bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vgssl_core.errors import VgsslError
from vgssl_core.localization.calibration import (
    FEATURES, MIN_CLASS, NOMINAL_1SIGMA, NOMINAL_2SIGMA, Calibration, ReplayEvidence, feature_matrix,
    fit_calibration, measure, nees, precision_recall,
)

THRESHOLD = 25.0


def drive(n: int, seed: int, *, sigma_factor: float = 2.5, checkpoint: str = "a" * 64, path: str = "drive",
          base: float = 0.0) -> ReplayEvidence:
    """A synthetic replay whose features tell how wrong a fix tends to be.

    Each frame has a raw confidence c; its fix error is a 2-D Gaussian of standard deviation
    ``sigma = 4 + 60 (1 - c)^2`` m per axis, while the raw covariance claims ``(sigma / sigma_factor)^2``:
    confident frames are usually within 25 m, doubtful ones usually not, and the raw covariance is
    ``sigma_factor`` too narrow. The other features are noisy functions of c, as in real drives.
    """
    rng = np.random.default_rng(seed)
    c = np.clip(rng.beta(1.2, 1.2, n) + base, 0, 1)
    sigma = 4.0 + 60.0 * (1.0 - c) ** 2
    errors = rng.normal(size=(n, 2)) * sigma[:, None]
    cov = (sigma / sigma_factor)[:, None, None] ** 2 * np.eye(2)
    agreement = np.clip(c + rng.normal(0, 0.1, n), 0, 1)
    ratio = np.clip(1.0 - 0.3 * c + rng.normal(0, 0.05, n), 0, 1)
    d = np.sort(rng.uniform(0.5, 1.2, (n, 5)), axis=1)
    features = feature_matrix(c, agreement, ratio, 30.0 * rng.random(n), d)
    return ReplayEvidence(Path(path), features, errors, cov, c, checkpoint, "b" * 64, "none", 5, THRESHOLD)


def test_a_calibration_fitted_on_one_drive_holds_on_another():
    cal, warnings = fit_calibration([drive(600, seed=1)])
    assert warnings == []
    other = drive(2000, seed=2)
    p = cal.probability(other.features)
    before = measure(other.confidence, other.errors, other.covariances, THRESHOLD)
    after = measure(p, other.errors, cal.covariance(other.covariances, p), THRESHOLD)
    assert after["ece"] <= 0.05 < before["ece"]
    assert after["brier"] < before["brier"]
    # the raw covariance is 2.5 x too narrow: its ellipses hold far too few errors; the fitted scale fixes that
    assert before["coverage_2sigma"] < 0.5 and before["mean_nees"] > 4
    assert cal.covariance_scale == pytest.approx(2.5**2, rel=0.2) and cal.covariance_doubt_m2 < 50.0  # ~ no doubt term: the errors are Gaussian
    assert 0.80 <= after["coverage_2sigma"] <= 0.92
    assert abs(after["coverage_1sigma"] - NOMINAL_1SIGMA) < 0.05
    assert after["mean_nees"] == pytest.approx(2.0, rel=0.2)


def test_the_calibrated_probability_is_monotone_in_the_raw_confidence():
    cal, _ = fit_calibration([drive(600, seed=3)])
    c = np.linspace(0, 1, 11)
    x = feature_matrix(c, c, 1.0 - 0.3 * c, np.full(11, 10.0), np.tile([0.6, 0.7, 0.8, 0.9, 1.0], (11, 1)))
    assert np.all(np.diff(cal.probability(x)) > 0)


def test_the_file_is_plain_json_and_reloads_to_the_same_model(tmp_path):
    cal, _ = fit_calibration([drive(300, seed=4)])
    path = cal.save(tmp_path / "calibration.json")
    data = json.loads(path.read_text())  # plain JSON: parameters, no pickle
    assert data["format"] == "vgssl-calibration" and data["features"] == list(FEATURES)
    assert data["checkpoint_sha256"] == "a" * 64 and data["database_sha256"] == "b" * 64
    assert len(data["coef"]) == len(FEATURES) and data["fitted_on"]["n_frames"] == 300
    loaded = Calibration.load(path)
    x = drive(50, seed=5).features
    assert np.allclose(loaded.probability(x), cal.probability(x))
    assert (loaded.covariance_scale, loaded.covariance_doubt_m2) == (cal.covariance_scale, cal.covariance_doubt_m2)


@pytest.mark.parametrize("content, message", [
    ("not json", "not a JSON calibration file"),
    ('{"format": "something else"}', "not a vgssl calibration file"),
    ('{"format": "vgssl-calibration", "format_version": 1, "threshold_m": 25}', "incomplete or malformed"),
])
def test_a_file_that_is_not_a_calibration_is_one_line(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(VgsslError, match=message) as err:
        Calibration.load(path)
    assert "\n" not in str(err.value)
    with pytest.raises(VgsslError, match="no such calibration file"):
        Calibration.load(tmp_path / "missing.json")


def test_a_calibration_for_another_checkpoint_is_refused_unless_forced():
    cal, _ = fit_calibration([drive(300, seed=6)])
    cal.check("a" * 64, "b" * 64, "none", 5)  # its own setup: fine
    with pytest.raises(VgsslError, match="fitted for checkpoint sha256 aaaaaaaaaaaa, this one is cccccccccccc"):
        cal.check("c" * 64, "b" * 64, "none", 5)
    with pytest.raises(VgsslError, match="fusion 'none' outputs, this localizer runs fusion 'bayes'"):
        cal.check("a" * 64, "b" * 64, "bayes", 5)
    warnings = cal.check("c" * 64, "d" * 64, "none", 5, force=True)
    assert len(warnings) == 2 and "another map database" in warnings[1]


def test_replays_of_different_checkpoints_are_not_pooled():
    with pytest.raises(VgsslError, match="replayed with another checkpoint"):
        fit_calibration([drive(300, seed=7), drive(300, seed=8, checkpoint="c" * 64, path="other")])


def test_too_few_frames_is_an_error():
    with pytest.raises(VgsslError, match="40 evaluated frames, a calibration needs at least 50"):
        fit_calibration([drive(40, seed=9)])


@pytest.mark.parametrize("base, which", [(5.0, "correct"), (-5.0, "wrong")])
def test_an_all_correct_or_all_wrong_drive_is_an_error(base, which):
    # base +5: every confidence 1, errors ~4 m (all right); -5: confidence 0, errors ~64 m per axis
    # (7 % within 25 m: about 6 of 80)
    with pytest.raises(VgsslError, match=f"nearly all {which}.*at least {MIN_CLASS} right and {MIN_CLASS} wrong"):
        fit_calibration([drive(80, seed=10, base=base)])


def test_features_that_say_nothing_give_a_warning_not_a_silent_constant():
    ev = drive(400, seed=11)
    rng = np.random.default_rng(0)
    noise = ReplayEvidence(ev.path, rng.normal(size=ev.features.shape), ev.errors, ev.covariances, ev.confidence,
                           ev.checkpoint_sha256, ev.database_sha256, "none", 5, THRESHOLD)
    _, warnings = fit_calibration([noise])
    assert len(warnings) == 1 and "barely separate right from wrong" in warnings[0]


def test_gaussian_errors_with_their_true_covariance_hold_the_nominal_shares():
    rng = np.random.default_rng(12)
    cov = np.array([[9.0, 4.0], [4.0, 16.0]])
    errors = rng.multivariate_normal([0, 0], cov, size=20000)
    n = nees(errors, np.broadcast_to(cov, (20000, 2, 2)))
    assert np.mean(n) == pytest.approx(2.0, rel=0.03)
    m = measure(np.full(20000, 0.5), errors, np.broadcast_to(cov, (20000, 2, 2)), THRESHOLD)
    assert m["coverage_1sigma"] == pytest.approx(NOMINAL_1SIGMA, abs=0.01)
    assert m["coverage_2sigma"] == pytest.approx(NOMINAL_2SIGMA, abs=0.01)


def test_fixes_kept_at_95_percent_precision():
    # 19 right fixes above 0.9, then a wrong one, then 10 right, then 10 wrong
    p = np.r_[np.linspace(0.99, 0.91, 19), 0.9, np.linspace(0.8, 0.7, 10), np.linspace(0.5, 0.1, 10)]
    right = np.r_[np.ones(19, bool), False, np.ones(10, bool), np.zeros(10, bool)]
    pr = precision_recall(p, right)
    # the most fixes at >= 95 %: down to 0.7, 29 right of 30 (96.7 %); one wrong fix more drops it to 93.5 %
    assert pr["kept_at_95_precision"] == 30 and pr["threshold_at_95_precision"] == pytest.approx(0.7)
    assert pr["precision"][19] == pytest.approx(0.95) and pr["recall"][-1] == 1.0


# --- end to end: replay, calibrate, replay another drive with it ----------------------------
DRIVE_FRAMES = 150


@pytest.fixture(scope="module")
def calibrated(tiny_world, tiny_model, tmp_path_factory):
    """Two drives of the tiny world's test district (day / dusk-fog), the first replayed and calibrated."""
    from testkit import run_cli

    model = tiny_model(64, 96)
    root = tmp_path_factory.mktemp("calibration")
    for name, condition, seed in (("day", "day,clear", 1), ("dusk", "dusk,fog", 2)):
        assert run_cli("synth", "--bag", root / name, "--world", tiny_world, "--condition", condition,
                       "--drive-seed", seed, "--rate", 4, "--max-frames", DRIVE_FRAMES, "--quiet") == 0
    assert run_cli("replay", "--bag", root / "day", "--db", model.db, "--ckpt", model.ckpt, "--out", root / "r_day",
                   "--fusion", "none", "--device", "cpu", "--gnss-topic", "/gnss/fix", "--quiet") == 0
    assert run_cli("calibrate", "--replay", root / "r_day", "--out", root / "calibration.json") == 0
    return model, root


def test_a_replay_with_a_calibration_publishes_and_reports_the_calibrated_outputs(calibrated):
    from testkit import run_cli
    from vgssl_core.io import file_sha256

    model, root = calibrated
    cal = Calibration.load(root / "calibration.json")
    assert cal.checkpoint_sha256 == file_sha256(model.ckpt) and cal.fusion == "none" and cal.top_k == 5
    out = root / "r_dusk"
    assert run_cli("replay", "--bag", root / "dusk", "--db", model.db, "--ckpt", model.ckpt, "--out", out,
                   "--fusion", "none", "--device", "cpu", "--gnss-topic", "/gnss/fix", "--quiet",
                   "--calibration", root / "calibration.json") == 0
    report = json.loads((out / "report.json").read_text())
    section = report["calibration"]
    assert section["file"] == str(root / "calibration.json")
    for label in ("raw", "calibrated"):
        m = section[label]
        assert m["n"] == report["n_frames"] == DRIVE_FRAMES
        assert 0 <= m["ece"] <= 1 and 0 <= m["coverage_1sigma"] <= m["coverage_2sigma"] <= 1 and m["mean_nees"] > 0
    assert "## Calibration" in (out / "report.md").read_text() and (out / "calibration.png").stat().st_size > 0
    with np.load(out / "frames.npz") as f:
        ok, k = f["evaluated"], cal.top_k
        # what the robot receives is the calibration applied to the frame's own evidence
        x = feature_matrix(f["raw_output_confidence"][ok], f["agreement"][ok], f["ratio"][ok], f["spread_m"][ok],
                           f["distances"][ok, :k])
        assert np.allclose(f["output_confidence"][ok], cal.probability(x))
        assert np.allclose(f["output_covariance"][ok], cal.covariance(f["raw_output_covariance"][ok], cal.probability(x)))
        assert np.allclose(f["output_error_m"][ok], np.linalg.norm(f["output_utm"][ok] - f["gt_utm"][ok], axis=1))
        # and the report's raw numbers are those of the uncalibrated outputs
        raw = measure(f["raw_output_confidence"][ok], f["raw_output_utm"][ok] - f["gt_utm"][ok],
                      f["raw_output_covariance"][ok], THRESHOLD)
        assert raw["ece"] == pytest.approx(section["raw"]["ece"])


def test_a_calibration_made_for_another_checkpoint_stops_the_replay_in_one_line(calibrated, capsys):
    from testkit import run_cli

    model, root = calibrated
    data = json.loads((root / "calibration.json").read_text())
    data["checkpoint_sha256"] = "0" * 64
    (root / "other.json").write_text(json.dumps(data))
    args = ("replay", "--bag", root / "dusk", "--db", model.db, "--ckpt", model.ckpt, "--fusion", "none",
            "--device", "cpu", "--gnss-topic", "/gnss/fix", "--quiet", "--calibration", root / "other.json")
    capsys.readouterr()
    assert run_cli(*args, "--out", root / "r_other") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "fitted for checkpoint sha256 000000000000" in err
    assert not (root / "r_other").exists()
    assert run_cli(*args, "--out", root / "r_forced", "--force", "--max-frames", 5) == 0  # forced: a warning
    report = json.loads((root / "r_forced" / "report.json").read_text())
    assert any("fitted for checkpoint sha256 000000000000" in w for w in report["warnings"])


def test_calibrating_a_replay_with_too_few_frames_is_one_line(calibrated, capsys):
    from testkit import run_cli

    _, root = calibrated
    capsys.readouterr()
    assert run_cli("calibrate", "--replay", root / "r_day", "--out", root / "c.json",
                   "--min-frames", DRIVE_FRAMES + 1) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{DRIVE_FRAMES} evaluated frames, a calibration needs at least" in err
    assert not (root / "c.json").exists()


def test_a_frame_unlike_the_calibration_drive_is_not_extrapolated():
    cal, _ = fit_calibration([drive(300, seed=13)])
    x = drive(1, seed=14).features
    far = x.copy()
    far[0, FEATURES.index("best_distance")] = 50.0  # descriptors far from anything on the calibration drive
    edge = x.copy()
    edge[0, FEATURES.index("best_distance")] = cal.hi[FEATURES.index("best_distance")]
    assert cal.probability(far) == pytest.approx(cal.probability(edge))
