"""The top-k retrieved database images -> a position, a covariance and a confidence.

A pure function of the match distances and positions (no model, no database), tested without
either; the :class:`~vgssl_core.localization.localizer.Localizer` applies it to every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.errors import VgsslError

AGREE_RADIUS_M = EVAL_RADIUS_M  # the Recall@N threshold: matches this close to the best are the same place
FLOOR_M = 5.0  # positional uncertainty of a database image (GNSS tag, camera offset)
RATIO_FULL = 0.8  # Lowe's ratio: best / first disagreeing distance at or below this is a clear winner
_EPS = 1e-6  # distance below which a match counts as identical (weight 1/_EPS)


@dataclass(frozen=True)
class FixEstimate:
    """What :func:`estimate_fix` concludes from the top-k matches."""

    easting: float
    northing: float
    covariance: np.ndarray  # (2, 2) [m^2], east/north
    confidence: float  # 0 (no idea) .. 1 (certain)
    agreeing: np.ndarray  # (K,) bool: the matches that support the estimate
    agreement: float  # share of the retrieval weight on the agreeing matches
    ratio: float  # best distance / first disagreeing distance (1: no margin)
    spread_m: float  # RMS distance of the agreeing matches from the estimate (weighted) [m]


def _weighted_moment(points: np.ndarray, weights: np.ndarray, center: np.ndarray) -> np.ndarray:
    offsets = points - center
    return (weights[:, None, None] * offsets[:, :, None] * offsets[:, None, :]).sum(0) / weights.sum()


def estimate_fix(
    distances: np.ndarray | Sequence[float], utm: np.ndarray | Sequence[Sequence[float]], *,
    agree_radius_m: float = AGREE_RADIUS_M, floor_m: float = FLOOR_M, ratio_full: float = RATIO_FULL,
) -> FixEstimate:
    """A position, covariance and confidence from the top-k retrieved database images.

    ``distances`` are the K descriptor distances, nearest first (``MapDatabase.search``);
    ``utm`` the (K, 2) positions of those images. Retrieval is right or wrong as a whole, so the
    estimator trusts the best match and asks how much the rest supports it:

    * Agreeing matches are those within ``agree_radius_m`` (the 25 m of Recall@N) of the best.
      Each match weighs ``1 / distance`` (scale-free; an identical image dominates).
    * Estimate: the weighted mean of the agreeing matches — the best match's position, smoothed
      by neighbours that saw the same place, never more than ``agree_radius_m`` away from it.
    * Confidence = agreement x margin. Agreement is the share of the total weight on agreeing
      matches. Margin is Lowe's ratio test between the best and the first disagreeing match,
      ``ratio = d_best / d_disagree``, mapped linearly from 0 at ratio 1 to 1 at ``ratio_full``.
      When all K agree, the first disagreeing match lies beyond the K-th, so ``d_K`` stands in
      (a lower bound on the margin). With K = 1 there is no evidence: confidence 0.
    * Covariance = weighted spread of the agreeing matches + ``floor_m``^2 I (the database
      images' own position error), + (1 - confidence) x the weighted second moment of the
      disagreeing matches about the estimate (or ``agree_radius_m``^2 I when none disagree):
      the places retrieval did not rule out widen the fix as much as it failed to rule them out.

    Not a probability: it ranks fixes and gates their use. ``vgssl calibrate`` turns it (with
    ``agreement``, ``ratio``, ``spread_m`` and the distances) into one, measured on a recorded
    drive (:mod:`~vgssl_core.localization.calibration`).
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    xy = np.asarray(utm, dtype=np.float64).reshape(-1, 2)
    if d.size == 0 or len(xy) != d.size:
        raise VgsslError(f"estimate_fix needs K >= 1 distances and K positions, got {d.size} and {len(xy)}")
    if not (np.isfinite(d).all() and np.isfinite(xy).all()):
        raise VgsslError("estimate_fix: distances and positions must be finite")
    if not 0.0 < ratio_full < 1.0:
        raise ValueError(f"ratio_full must be in (0, 1), got {ratio_full}")
    weights = 1.0 / np.maximum(d, _EPS)
    agreeing = np.linalg.norm(xy - xy[0], axis=1) <= agree_radius_m
    center = (weights[agreeing, None] * xy[agreeing]).sum(0) / weights[agreeing].sum()
    agreement = float(weights[agreeing].sum() / weights.sum())
    ratio = _margin_ratio(d, agreeing)
    confidence = agreement * float(np.clip((1.0 - ratio) / (1.0 - ratio_full), 0.0, 1.0))
    moment = _weighted_moment(xy[agreeing], weights[agreeing], center)
    right = moment + floor_m**2 * np.eye(2)
    wrong = (_weighted_moment(xy[~agreeing], weights[~agreeing], center) if (~agreeing).any()
             else agree_radius_m**2 * np.eye(2))
    covariance = right + (1.0 - confidence) * wrong
    return FixEstimate(float(center[0]), float(center[1]), (covariance + covariance.T) / 2, confidence,
                       agreeing, agreement, ratio, float(np.sqrt(max(np.trace(moment), 0.0))))


def _margin_ratio(d: np.ndarray, agreeing: np.ndarray) -> float:
    others = np.flatnonzero(~agreeing)
    if others.size:
        rival = d[others[0]]
    elif d.size > 1:
        rival = d[-1]
    else:
        return 1.0
    if rival <= _EPS:  # the rival is as identical as the best: no margin
        return 1.0
    return float(min(d[0] / rival, 1.0))
