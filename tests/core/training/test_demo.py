"""``vgssl demo``: intervals and verdicts a reader can trust, and the comparison on any dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from testkit import run_cli
from vgssl_core.training.demo_stats import interval, paired_verdict, resample_indices


def test_the_interval_holds_the_mean_and_narrows_with_more_queries():
    rng = np.random.default_rng(0)
    small = (rng.random(100) < 0.3).astype(float)
    large = (rng.random(2500) < 0.3).astype(float)
    mean, low, high = interval(small, resample_indices(100))
    assert low < mean < high
    _, low_l, high_l = interval(large, resample_indices(2500))
    assert high_l - low_l < (high - low) / 3  # ~1/sqrt(25) as wide


def test_a_clear_gain_holds_a_loss_is_reported_and_a_coin_flip_is_not_shown():
    idx = resample_indices(250)
    base = np.zeros(250)
    base[:60] = 1  # R@1 24 %
    better = base.copy()
    better[60:100] = 1  # 40 %: 40 more queries right, none lost
    assert paired_verdict("gain", "b", better, "a", base, idx).outcome == "holds"
    worse = paired_verdict("loss", "b", base, "a", better, idx)
    assert worse.outcome == "reversed" and "DOES NOT HOLD" in worse.line()
    assert worse.diff == pytest.approx(-16.0)
    shuffled = base.copy()
    shuffled[:3], shuffled[60:63] = 0, 1  # as many right, on other queries
    tie = paired_verdict("tie", "b", shuffled, "a", base, idx)
    assert tie.outcome == "not shown" and tie.low < 0 < tie.high and "within the noise" in tie.line()


def test_rows_scored_on_different_queries_are_refused():
    from vgssl_core.errors import VgsslError

    with pytest.raises(VgsslError, match="different queries"):
        paired_verdict("x", "a", np.ones(10), "b", np.ones(11), resample_indices(10))


def test_demo_on_a_dataset_prints_intervals_and_verdicts_and_feeds_the_table(tiny_world, tmp_path, capsys):
    out = tmp_path / "demo"
    report = tmp_path / "demo.json"
    tiny = ["data.batch_size=4", "data.queries_per_epoch=4", "model.image_size=[48,64]", "data.workers=0",
            "mining.db_subset=20", "mining.cache_refresh_queries=20", "mining.negatives_per_query=2"]
    assert run_cli("demo", "--data", tiny_world, "--out", out, "--max-steps", "1", "--attention", "3", "--quiet",
                   "--json", report, *tiny) == 0
    text = capsys.readouterr().out
    assert "R@1 [95 % CI]" in text and "Verdicts" in text
    for claim in ("SSL + GeoPair beats its initialisation", "SSL + GeoPair vs triplet",
                  "attention share on buildings, SSL vs triplet", "ImageNet weights beat random weights"):
        assert claim in text
    demo = json.loads(report.read_text())
    methods = [r["method"] for r in demo["rows"]]
    assert methods[0].startswith("untrained, random init (Lite0-conv4") and methods[1].startswith("untrained, ImageNet")
    assert [r["kind"] for r in demo["rows"]] == ["start", "start", "trained", "trained", "trained"]
    for row in demo["rows"]:
        low, high = row["r1_ci"]
        assert low <= row["recall"]["1"] <= high
        assert len(row["hits_at_1"]) == demo["n_queries"]
        assert 100 * np.mean(row["hits_at_1"]) == pytest.approx(row["recall"]["1"])
    trained = [r for r in demo["rows"] if r["kind"] == "trained"]
    assert all(r["steps"] == 1 and r["start"] == methods[1] for r in trained)
    # a row's time holds its training once, and the rows together fit in the demo's own time
    assert all(r["seconds"] >= r["train_seconds"] for r in trained)
    assert sum(r["seconds"] for r in demo["rows"]) <= demo["seconds"]
    assert {v["outcome"] for v in demo["verdicts"]} <= {"holds", "reversed", "not shown"}
    # the demo's runs are ordinary finished runs: `vgssl table` reads them and adds their starting point
    table = tmp_path / "table"
    assert run_cli("table", "--runs", out / "runs", "--out", table, "--quiet", "--json", tmp_path / "t.json") == 0
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    start = [r for r in rows if r["category"] == "no training"]
    assert len(start) == 1 and start[0]["init"] == "imagenet" and rows[0] is not None
    assert rows[0]["category"] == "no training"  # first: what training started from
    imagenet = next(r for r in demo["rows"] if r["method"] == methods[1])
    assert start[0]["values"]["tiny R@1"]["mean"] == pytest.approx(imagenet["recall"]["1"])
    # a second demo run reuses the trained runs (same configs) instead of training again
    assert run_cli("demo", "--data", tiny_world, "--out", out, "--max-steps", "1", "--attention", "0", "--quiet",
                   *tiny) == 0
    assert capsys.readouterr().out.count("reusing") == 3


def test_demo_refuses_a_dataset_without_splits_before_any_work(tmp_path, capsys):
    assert run_cli("demo", "--data", tmp_path / "nothing", "--out", tmp_path / "o") == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_block_resampling_draws_runs_of_consecutive_frames():
    idx = resample_indices(95, resamples=50, seed=1, block=10)
    assert idx.shape == (50, 95) and idx.min() >= 0 and idx.max() < 95
    runs = idx[:, :90].reshape(50, 9, 10)
    assert (np.diff(runs, axis=2) == 1).all()  # each block is 10 neighbours in a row
    assert len({tuple(r) for r in runs[:, :, 0]}) > 1  # the blocks start at random frames
    # block 1 is the plain bootstrap the demo's verdicts use
    assert (resample_indices(95, resamples=50, seed=1) == resample_indices(95, resamples=50, seed=1, block=1)).all()
