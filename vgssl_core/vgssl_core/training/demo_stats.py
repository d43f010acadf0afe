"""How sure the demo is: bootstrap intervals over queries, and a plain verdict per claim.

Why a bootstrap: the demo's test split has a few hundred queries, so one query moves R@1 by
0.4 points and a gap of 2-3 points can be luck. Every row is scored on the same queries, so a
comparison resamples the queries once and takes the difference of the two rows on each resample
(a paired bootstrap): much tighter than comparing two separate intervals, and the honest test of
"A beats B on these queries". A claim holds when the whole 95 % interval of the difference lies
above zero, is reversed when it lies below, and is not shown otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vgssl_core.errors import VgsslError

N_RESAMPLES = 2000
LEVEL = 0.95


def resample_indices(n: int, *, resamples: int = N_RESAMPLES, seed: int = 0, block: int = 1) -> np.ndarray:
    """(resamples, n) indices drawn with replacement; fixed seed, so reruns print the same.

    ``block`` > 1 draws runs of that many consecutive indices (a moving-block bootstrap): the
    frames of a drive are not independent draws, as neighbours see the same street."""
    if n < 1:
        raise VgsslError("no queries to bootstrap")
    block = max(1, min(int(block), n))
    starts = np.random.default_rng(seed).integers(0, n - block + 1, size=(resamples, -(-n // block)))
    if block == 1:
        return starts
    return (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]


def interval(values: np.ndarray, idx: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high) of per-query ``values`` with the percentile bootstrap over ``idx``."""
    values = np.asarray(values, dtype=np.float64)
    means = values[idx].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(values.mean()), float(low), float(high)


@dataclass(frozen=True)
class Verdict:
    """One claim, the measured difference (``a`` minus ``b``) with its interval, and the outcome."""

    claim: str
    a: str
    b: str
    diff: float
    low: float
    high: float
    unit: str = "points"

    @property
    def outcome(self) -> str:
        if self.low > 0:
            return "holds"
        if self.high < 0:
            return "reversed"
        return "not shown"

    def line(self) -> str:
        detail = f"{self.a} - {self.b} = {self.diff:+.1f} {self.unit} (95 % CI {self.low:+.1f} .. {self.high:+.1f})"
        say = {"holds": "HOLDS", "reversed": "DOES NOT HOLD (reversed, beyond the noise)",
               "not shown": "NOT SHOWN (the difference is within the noise)"}[self.outcome]
        return f"{self.claim}: {say}: {detail}"

    def as_dict(self) -> dict:
        return {"claim": self.claim, "a": self.a, "b": self.b, "diff": round(self.diff, 3),
                "ci": [round(self.low, 3), round(self.high, 3)], "unit": self.unit, "outcome": self.outcome}


def paired_verdict(claim: str, a_name: str, a: np.ndarray, b_name: str, b: np.ndarray, idx: np.ndarray, *,
                   scale: float = 100.0, unit: str = "points") -> Verdict:
    """Does ``a`` exceed ``b`` on the same queries? Per-query values (0/1 hits, or shares) scaled
    to percent; the interval is the paired bootstrap of the mean difference."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise VgsslError(f"{a_name} and {b_name} were scored on different queries ({a.shape} vs {b.shape})")
    diff, low, high = interval(scale * (a - b), idx)
    return Verdict(claim, a_name, b_name, diff, low, high, unit)
