"""Temporal fusion (`fusion.PlaceFilter`): a discrete Bayes filter over database places, no model needed."""

import time

import numpy as np
import pytest

from vgssl_core.errors import VgsslError
from vgssl_core.localization.fusion import FusionParams, PlaceFilter, make_filter

SPACING_M = 3.0
RATE_HZ = 2.0
SPEED_MPS = 6.0


def street(n=400):
    """A database along an L-shaped street: n places every 3 m (east, then north)."""
    s = np.arange(n) * SPACING_M
    half = n // 2 * SPACING_M
    return np.column_stack([np.minimum(s, half), np.maximum(s - half, 0.0)]) + [396000.0, 4991000.0]


def noisy_retrieval(rng, true_index, n, p_wrong, k=20):
    """Top-k (indices, distances) of one frame: with probability p_wrong the best match is a look-alike far away."""
    d = np.sort(rng.uniform(0.60, 0.80, k))
    wrong = rng.choice(n, size=k, replace=False)
    if rng.random() < p_wrong:
        idx = wrong.copy()
        if rng.random() < 0.5:  # the true place is still among the top-k, lower down
            idx[rng.integers(3, k)] = true_index
    else:
        idx = wrong.copy()
        idx[0] = np.clip(true_index + rng.integers(-1, 2), 0, n - 1)
        d[0] = d[0] - 0.08
    return idx, d


def drive(utm, path, rng, p_wrong, filt=None):
    """Single-frame and fused top-1 correctness (25 m) along ``path`` (database indices)."""
    filt = filt or PlaceFilter(utm)
    single, fused = [], []
    for step, true_index in enumerate(path):
        idx, d = noisy_retrieval(rng, true_index, len(utm), p_wrong)
        est = filt.update(int(step * 1e9 / RATE_HZ), idx, d)
        single.append(np.linalg.norm(utm[idx[0]] - utm[true_index]) <= 25.0)
        fused.append(np.linalg.norm(utm[est.index] - utm[true_index]) <= 25.0)
    return np.array(single), np.array(fused), filt


def test_a_consistent_sequence_beats_single_frames_under_noisy_observations():
    utm = street()
    path = np.arange(0, 380, SPEED_MPS / RATE_HZ / SPACING_M).astype(int)  # 1 place per frame
    single, fused, _ = drive(utm, path, np.random.default_rng(0), p_wrong=0.4)
    assert 0.5 < single.mean() < 0.7  # the observations alone are often wrong
    assert fused.mean() > 0.9 and fused.mean() > single.mean() + 0.25


def test_the_first_frame_is_the_retrieval_itself():
    utm = street(50)
    filt = PlaceFilter(utm)
    est = filt.update(0, [7, 30, 2], [0.5, 0.6, 0.7])
    assert est.index == 7 and est.reset
    assert 0 < est.probability <= 1 and np.hypot(est.easting - utm[7, 0], est.northing - utm[7, 1]) < 25


def test_it_recovers_after_a_jump():
    utm = street()
    rng = np.random.default_rng(1)
    before = np.arange(0, 60)  # drive the first 180 m
    after = np.arange(300, 360)  # then, 0.5 s later, 900 m away (a kidnapped robot)
    _, fused_before, filt = drive(utm, before, rng, p_wrong=0.3)
    assert fused_before[5:].all()
    single, fused_after, _ = drive(utm, after, rng, p_wrong=0.3, filt=_continue(filt, len(before)))
    assert not fused_after[0]  # one frame does not overturn a settled belief ...
    recovered = int(np.argmax(fused_after))
    assert recovered <= 10 and fused_after[recovered:].mean() > 0.95  # ... a few consistent ones do
    assert fused_after[recovered:].mean() > single[recovered:].mean() + 0.2


def _continue(filt, frames):
    """The same filter, its clock continuing after ``frames`` frames (stamps restart in `drive`)."""
    filt.last_stamp_ns -= int(frames * 1e9 / RATE_HZ)
    return filt


def test_a_long_gap_or_time_going_back_resets_the_belief():
    utm = street(100)
    filt = PlaceFilter(utm, reset_after_s=5.0)
    assert filt.update(0, [10, 50], [0.5, 0.7]).reset
    assert not filt.update(500_000_000, [11, 60], [0.5, 0.7]).reset
    est = filt.update(10_000_000_000, [90, 20], [0.5, 0.7])  # 9.5 s later
    assert est.reset and est.index == 90
    assert filt.update(9_000_000_000, [40, 20], [0.5, 0.7]).reset  # back in time
    assert filt.resets == 2


def test_an_ambiguous_frame_moves_the_belief_little():
    utm = street(200)
    filt = PlaceFilter(utm)
    for step in range(6):  # settle at place 20
        filt.update(step * 500_000_000, [20 + step, 150, 170], [0.50, 0.70, 0.72])
    est = filt.update(3_000_000_000, [180, 26, 120], [0.600, 0.601, 0.602])  # all alike
    assert abs(est.index - 26) <= 2


def test_belief_stays_a_distribution_and_the_support_small():
    utm = street(400)
    filt = PlaceFilter(utm)
    rng = np.random.default_rng(2)
    for step in range(50):
        idx, d = noisy_retrieval(rng, step, len(utm), 0.5)
        est = filt.update(step * 500_000_000, idx, d)
        p = filt.probabilities()
        assert p.sum() == pytest.approx(1.0, abs=1e-9) and (p > 0).all()
        assert est.support <= 200 and 0 < est.probability <= 1 + 1e-9  # a few top-k's worth, not the map


def test_bad_indices_and_distances_are_ignored_and_mismatches_refused():
    filt = PlaceFilter(street(20))
    est = filt.update(0, [-1, 3, 99], [0.1, 0.5, 0.2])  # faiss pads with -1; 99 is not a place
    assert est.index == 3
    with pytest.raises(VgsslError):
        filt.update(1, [1, 2], [0.5])


def test_settings_are_checked_up_front():
    with pytest.raises(ValueError, match="epsilon must be in"):
        FusionParams(epsilon=1.5)
    with pytest.raises(ValueError, match="radius_m .* must be >= agree_radius_m"):
        FusionParams(radius_m=10.0)
    with pytest.raises(VgsslError, match="unknown fusion 'kalman'"):
        make_filter("kalman", street(5))
    assert make_filter("none", street(5)) is None
    with pytest.raises(VgsslError):
        PlaceFilter(np.zeros((0, 2)))


def test_an_update_costs_well_under_a_millisecond_on_a_district():
    """The per-frame budget: fusion must not add more than 10 % to a localization (tens of ms on a CPU).

    CPU time of this process, median over frames: other processes on a shared machine do not count.
    """
    utm = street(4000)
    filt = PlaceFilter(utm)
    rng = np.random.default_rng(3)
    frames = [noisy_retrieval(rng, 10 + i, len(utm), 0.4) for i in range(200)]
    filt.update(0, *frames[0])
    filt.update(500_000_000, *frames[1])  # the weight cache for this dt
    costs = []
    for i, (idx, d) in enumerate(frames[2:], start=2):
        start = time.process_time()
        filt.update(i * 500_000_000, idx, d)
        costs.append(time.process_time() - start)
    assert np.median(costs) * 1e3 < 1.0, np.median(costs) * 1e3
