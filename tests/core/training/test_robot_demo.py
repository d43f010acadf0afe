"""The statistics of `vgssl demo --robot` (the demo itself is too slow for the suite)."""

import numpy as np

from vgssl_core.training.robot_demo import bootstrap_interval, in_blocks


def test_bootstrap_interval_brackets_the_recall_and_narrows_with_more_frames():
    rng = np.random.default_rng(1)
    few, many = rng.random(50) < 0.4, rng.random(5000) < 0.4
    lo, hi = bootstrap_interval(few)
    assert lo < 100 * few.mean() < hi
    lo_many, hi_many = bootstrap_interval(many)
    assert lo_many < 100 * many.mean() < hi_many
    assert hi_many - lo_many < (hi - lo) / 5
    assert bootstrap_interval(np.ones(30, bool)) == (100.0, 100.0)


def test_block_bootstrap_is_wider_for_runs_of_equal_frames():
    runs = np.repeat(np.random.default_rng(2).random(40) < 0.5, 10)  # a drive: ten frames of each street
    lo, hi = bootstrap_interval(runs)
    lo_b, hi_b = bootstrap_interval(runs, block=10)
    assert hi_b - lo_b > 1.5 * (hi - lo)


def test_frames_are_placed_in_the_blocks_of_their_split():
    blocks = [{"east": 100.0, "north": 200.0, "split": "test"}, {"east": 200.0, "north": 200.0, "split": "train"}]
    utm = np.array([[150.0, 250.0], [250.0, 250.0], [99.0, 250.0]])
    assert in_blocks(utm, blocks, 100.0, "test").tolist() == [True, False, False]


def _frames(rng, rate: float, n: int = 400) -> dict[str, np.ndarray]:
    single = rng.random(n) < rate
    return {"single": single, "fused": single.copy(), "single_r5": single | (rng.random(n) < 0.3),
            "single_r10": np.ones(n, bool), "single_error": rng.random(n) * 50, "fused_error": rng.random(n) * 40}


def test_a_drive_verdict_holds_only_beyond_the_untrained_interval():
    from vgssl_core.training.robot_demo import drive_rows, drive_verdict

    rng = np.random.default_rng(3)
    held_out = np.zeros(400, bool)
    held_out[:100] = True
    better = drive_rows({"untrained": _frames(rng, 0.2), "trained": _frames(rng, 0.5)}, held_out)
    holds, line = drive_verdict("fog", "day,fog", better)
    assert holds is True and line.startswith("VERDICT fog (day,fog): training on the drives helps")  # JSON-able
    assert [(r["model"], r["mode"]) for r in better][:2] == [("untrained", "frame by frame"), ("untrained", "fused (Bayes)")]
    assert all(r["r1_held_out"] is not None for r in better)
    same = drive_rows({"untrained": _frames(rng, 0.3), "trained": _frames(rng, 0.3)}, held_out)
    holds, line = drive_verdict("night", "night,clear", same)
    assert not holds and "does NOT beat" in line
