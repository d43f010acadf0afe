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
