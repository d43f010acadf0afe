"""Temporal fusion of single-frame retrievals: a discrete Bayes filter over the database places.

One frame's retrieval is noisy (a night image matches a look-alike street), but a robot moves
continuously: the right place for this frame is near the right place of the last one. The filter
keeps a belief ``p`` over the N database places and, per frame:

1. **Predict** (motion model from elapsed time). The robot moved a 2-D Gaussian distance with
   ``sigma = sigma_min_m + max_speed_mps * dt``: each place passes its probability to the places
   within ``r = min(radius_m, 3 sigma)`` of it, weighted by that Gaussian of their UTM distance;
   the Gaussian tail beyond ``r`` (``exp(-r^2 / 2 sigma^2)``) goes to a uniform background. Then a share
   ``epsilon`` of all mass is spread uniformly: the chance that the robot is anywhere (a wrong
   start, a GNSS-free teleport, a ferry) — it is what lets the filter recover after a jump.
2. **Observe** (likelihood from descriptor distances of the top-k retrieved places). Match i with
   distance d_i multiplies its place's probability by ``exp(contrast * (d_k - d_i) / s)``, where
   d_k is the k-th (last) distance and ``s`` a running mean of ``d_k - d_1`` over recent frames.
   Places outside the top-k are at least d_k away in descriptor space: factor 1. A frame whose
   best match stands out by the usual margin thus makes it ``e^contrast`` times likelier than
   any place outside the top-k; an ambiguous frame (all k distances close) moves the belief
   little. Scale-free: no calibration per model or per database.
3. **Estimate**: of the likeliest places, the one with the most probability within
   ``agree_radius_m`` around it (the most probable 25 m neighbourhood, what Recall@1 asks for,
   rather than the single likeliest place, which a lucky look-alike can win); the
   probability-weighted mean position of that neighbourhood, and its probability mass.

A gap longer than ``reset_after_s`` (or a stamp going back in time) resets the belief to uniform.

Why this and not SeqSLAM-style sequence matching: SeqSLAM scores straight-line trajectories of a
fixed window of W frames through an N x W difference matrix under a range of assumed velocities,
which costs O(N W V) per frame, delays a confident answer by W frames and breaks with a varying
speed or frame rate. The filter uses the stamps (variable rate, dropped frames), needs no
velocity search and no window, stays causal (an estimate for every frame, as the live localizer
needs), and recovers after a jump through ``epsilon``.

Representation and cost: the belief is a uniform background level ``bg`` plus an excess on a
small support S of places (those the recent frames made likelier); places whose excess falls
below ``prune_bg`` x ``bg`` fold back into the background, and at most ``max_support`` are kept.
A frame costs O(S m + k log k), m being the places within the kernel's reach of one place —
nothing is proportional to the database size N (the neighbour lists are built once, O(N m);
the kernel weights once per sigma, which is quantised to ``sigma_step_m``). Tens to hundreds of
microseconds per frame, well under a descriptor's cost (``benchmarks/bench_replay.py``).

    fusion = PlaceFilter(db.utm)
    for frame in frames:
        result = localizer.localize(rgb, top_k=max(localizer.top_k, SEARCH_DEPTH))
        fused = fusion.update(stamp_ns, [m.index for m in result.matches], [m.distance for m in result.matches])
        fused.index, fused.easting, fused.northing, fused.probability
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.errors import VgsslError

METHODS = ("none", "bayes")
# Retrieved places per frame the filter observes (at least the caller's top_k): the deeper the
# list, the more look-alikes a frame can vote for and the steadier d_k, its reference distance.
# The replay and the live localizer both search this deep, so a replayed fusion is the live one.
SEARCH_DEPTH = 20
CANDIDATES = 16  # the estimate compares the neighbourhoods of this many likeliest places
DENSE_MAX = 65536  # up to this many places the prediction scatters into a dense array (faster than sorting)


@dataclass(frozen=True)
class FusionParams:
    """Settings of :class:`PlaceFilter`; the defaults suit a car in a city at 1-30 Hz."""

    max_speed_mps: float = 15.0  # motion kernel grows with this times the time between frames
    sigma_min_m: float = 5.0  # kernel width at dt = 0: spacing and position error of the database
    radius_m: float = 60.0  # neighbour lists reach this far; the Gaussian tail beyond leaks uniformly
    epsilon: float = 0.05  # per frame: mass spread uniformly (the robot may be anywhere)
    contrast: float = 3.0  # log-likelihood ratio of a typical frame's best match over its k-th
    smoothing: float = 0.1  # weight of the newest frame in the running mean of d_k - d_1
    reset_after_s: float = 10.0  # a longer gap between frames (or a step back in time) resets
    agree_radius_m: float = EVAL_RADIUS_M  # the estimate's neighbourhood (the Recall@N threshold)
    prune_bg: float = 0.5  # places less than this x the background above it fold back into it
    max_support: int = 2048  # at most this many places above the background (the likeliest)
    sigma_step_m: float = 0.25  # sigma quantisation for the weight cache

    def __post_init__(self) -> None:
        positive = ("max_speed_mps", "sigma_min_m", "radius_m", "contrast", "reset_after_s", "agree_radius_m",
                    "sigma_step_m")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {self.epsilon}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if not self.prune_bg >= 0.0:
            raise ValueError(f"prune_bg must be >= 0, got {self.prune_bg}")
        if self.max_support < 1:
            raise ValueError(f"max_support must be >= 1, got {self.max_support}")
        if self.radius_m < self.agree_radius_m:
            raise ValueError(f"radius_m ({self.radius_m}) must be >= agree_radius_m ({self.agree_radius_m})")


@dataclass(frozen=True)
class FusedEstimate:
    """The filter's answer for one frame."""

    index: int  # most probable database place
    easting: float  # probability-weighted mean of the places within agree_radius_m of it
    northing: float
    probability: float  # belief mass within agree_radius_m of the estimate (0..1)
    support: int  # places above the background
    reset: bool  # the belief was reset before this frame (first frame, long gap, time going back)


class PlaceFilter:
    """Discrete Bayes filter over database places (see the module docstring for the model).

    ``db_utm`` is the (N, 2) UTM easting/northing of the database, in metres. Settings come as
    ``params`` or as keyword overrides of :class:`FusionParams`.
    """

    def __init__(self, db_utm: np.ndarray, params: FusionParams | None = None, **overrides) -> None:
        self.params = params or FusionParams()
        if overrides:
            self.params = FusionParams(**{**asdict(self.params), **overrides})
        xy = np.asarray(db_utm, dtype=np.float64).reshape(-1, 2)
        if len(xy) == 0 or not np.isfinite(xy).all():
            raise VgsslError("temporal fusion needs a database with at least one place and finite positions")
        self.n = len(xy)
        self.utm = xy
        self._indptr, self._indices, self._dist = _neighbours(xy, self.params.radius_m)
        self._weights: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
        self.spread_ema: float | None = None
        self.resets = 0
        self.reset()

    def reset(self) -> None:
        """Forget everything: uniform belief; the next frame starts afresh."""
        self.bg = 1.0 / self.n  # probability of a place outside the support
        self.support = np.zeros(0, dtype=np.int64)  # sorted place indices above the background
        self.excess = np.zeros(0)  # their probability minus bg
        self.last_stamp_ns: int | None = None

    def probabilities(self) -> np.ndarray:
        """The belief over all N places as a dense vector (O(N): for inspection, not per frame)."""
        p = np.full(self.n, self.bg)
        p[self.support] += self.excess
        return p

    def probability_of(self, places: np.ndarray) -> np.ndarray:
        """The belief of some places (sorted or not), O(len(places) log S)."""
        places = np.asarray(places, dtype=np.int64)
        out = np.full(places.shape, self.bg)
        if self.support.size:
            pos = np.minimum(np.searchsorted(self.support, places), self.support.size - 1)
            hit = self.support[pos] == places
            out[hit] += self.excess[pos[hit]]
        return out

    # -- one frame
    def update(self, stamp_ns: int, indices: Sequence[int], distances: Sequence[float]) -> FusedEstimate:
        """Fuse one frame: its stamp and its retrieved places (nearest first) with their distances."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        d = np.asarray(distances, dtype=np.float64).reshape(-1)
        if idx.shape != d.shape:
            raise VgsslError(f"fusion needs one distance per index, got {idx.size} and {d.size}")
        keep = (idx >= 0) & (idx < self.n) & np.isfinite(d)
        idx, d = idx[keep], d[keep]
        if len(set(idx.tolist())) < idx.size:  # a place listed twice counts once, at its nearest
            order = np.argsort(idx, kind="stable")
            first = np.sort(order[_first_of_runs(idx[order])])
            idx, d = idx[first], d[first]
        reset = self._advance(int(stamp_ns))
        if idx.size:
            self._observe(idx, d)
        self._prune()
        return self._estimate(idx, reset)

    def _advance(self, stamp_ns: int) -> bool:
        last = self.last_stamp_ns
        dt = None if last is None else (stamp_ns - last) / 1e9
        if dt is None or dt < 0 or dt > self.params.reset_after_s:
            if last is not None:
                self.resets += 1
            self.reset()
            self.last_stamp_ns = stamp_ns
            return True
        self.last_stamp_ns = stamp_ns
        self._predict(dt)
        return False

    def _kernel(self, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The motion kernel at this sigma as CSR (indptr, indices, weights) and the leaked share.

        Each place passes its mass to the places within min(radius_m, 3 sigma) of it, in
        proportion to the Gaussian of their distance; the share a 2-D Gaussian puts beyond that
        reach, ``exp(-reach^2 / 2 sigma^2)``, leaks to the uniform background. Cached per sigma.
        """
        step = self.params.sigma_step_m
        key = round(max(sigma, step) / step) * step
        cached = self._weights.get(key)
        if cached is None:
            reach = min(self.params.radius_m, 3.0 * key)
            inside = self._dist <= reach  # every row keeps its own place: never empty
            g = np.exp(-0.5 * (self._dist[inside] / key) ** 2)
            indptr = np.zeros(self.n + 1, dtype=np.int64)
            np.cumsum(np.add.reduceat(inside.astype(np.int64), self._indptr[:-1]), out=indptr[1:])
            leak = float(np.exp(-0.5 * (reach / key) ** 2))
            row_sum = np.add.reduceat(g, indptr[:-1])
            cached = (indptr, self._indices[inside], g / np.repeat(row_sum, np.diff(indptr)) * (1.0 - leak), leak)
            if len(self._weights) >= 16:
                self._weights.pop(next(iter(self._weights)))
            self._weights[key] = cached
        return cached

    def _predict(self, dt: float) -> None:
        prm = self.params
        if self.support.size:
            indptr, indices, w, leak = self._kernel(prm.sigma_min_m + prm.max_speed_mps * dt)
            offsets, lengths = _rows(indptr, self.support)
            targets = indices[offsets]
            mass = w[offsets] * np.repeat(self.excess, lengths)
            self.bg += leak * float(self.excess.sum()) / self.n
            if self.n <= DENSE_MAX or self.n <= 8 * targets.size:  # a dense scatter beats sorting
                acc = np.bincount(targets, weights=mass, minlength=self.n)
                self.support = np.flatnonzero(acc)
                self.excess = acc[self.support]
            else:  # huge map, small support: sort the targets instead of touching all N places
                order = np.argsort(targets)
                targets = targets[order]
                starts = np.flatnonzero(_first_of_runs(targets))
                self.support = targets[starts]
                self.excess = np.add.reduceat(mass[order], starts)
        if prm.epsilon:
            self.excess *= 1.0 - prm.epsilon
            self.bg = self.bg * (1.0 - prm.epsilon) + prm.epsilon / self.n

    def _observe(self, idx: np.ndarray, d: np.ndarray) -> None:
        prm = self.params
        spread = float(d.max() - d.min())
        if self.spread_ema is None:
            self.spread_ema = spread
        else:
            self.spread_ema += prm.smoothing * (spread - self.spread_ema)
        scale = max(self.spread_ema, 1e-9)
        gain = np.exp(np.minimum(prm.contrast * (d.max() - d) / scale, 50.0))  # >= 1; 1 for the k-th
        lift = gain > 1.0
        idx, gain = idx[lift], gain[lift]
        if idx.size == 0:
            return
        order = np.argsort(idx)
        idx, gain = idx[order], gain[order]
        pos = np.searchsorted(self.support, idx)
        known = pos < self.support.size
        known[known] = self.support[pos[known]] == idx[known]
        before = np.full(idx.size, self.bg)
        before[known] += self.excess[pos[known]]
        z = 1.0 + float((before * (gain - 1.0)).sum())
        excess = before * gain - self.bg  # the observed places' new excess
        self.excess[pos[known]] = excess[known]
        if not known.all():
            self.support = np.insert(self.support, pos[~known], idx[~known])
            self.excess = np.insert(self.excess, pos[~known], excess[~known])
        self.excess /= z
        self.bg /= z

    def _prune(self) -> None:
        if self.support.size == 0:
            return
        prm = self.params
        keep = self.excess > prm.prune_bg * self.bg
        if keep.sum() > prm.max_support:
            cut = np.partition(self.excess, -prm.max_support)[-prm.max_support]
            keep &= self.excess >= cut
        if keep.all():
            return
        folded = float(self.excess[~keep].sum())
        self.support, self.excess = self.support[keep], self.excess[keep]
        self.bg += folded / self.n

    def _estimate(self, observed: np.ndarray, reset: bool) -> FusedEstimate:
        candidates = self.support
        if candidates.size > CANDIDATES:
            candidates = candidates[np.argpartition(self.excess, -CANDIDATES)[-CANDIDATES:]]
        if candidates.size == 0:  # no preference at all: the retrieval's own answer
            candidates = observed[:1] if observed.size else np.zeros(1, dtype=np.int64)
        # the likeliest 25 m neighbourhood, not the likeliest single place (a look-alike can win that)
        offsets, lengths = _rows(self._indptr, candidates)
        near = self._indices[offsets]
        w = self.probability_of(near) * (self._dist[offsets] <= self.params.agree_radius_m)
        starts = np.cumsum(lengths) - lengths
        masses = np.add.reduceat(w, starts)
        k = int(np.argmax(masses))
        sl = slice(starts[k], starts[k] + lengths[k])
        mass = float(masses[k])
        east, north = (w[sl, None] * self.utm[near[sl]]).sum(0) / mass
        return FusedEstimate(int(candidates[k]), float(east), float(north), mass, int(self.support.size), reset)


def _rows(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the CSR entries of ``rows``, concatenated in that order, and each row's length."""
    lengths = indptr[rows + 1] - indptr[rows]
    return np.repeat(indptr[rows] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum()), lengths


def _first_of_runs(sorted_values: np.ndarray) -> np.ndarray:
    """Mask of the first element of each run of equal values (unique without numpy's hashing)."""
    mask = np.ones(sorted_values.size, dtype=bool)
    mask[1:] = sorted_values[1:] != sorted_values[:-1]
    return mask


def _neighbours(xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR neighbour lists (indptr, indices, distances) of every place within ``radius``, itself included."""
    tree = cKDTree(xy)
    pairs = tree.query_pairs(radius, output_type="ndarray")
    n = len(xy)
    src = np.concatenate([np.arange(n), pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([np.arange(n), pairs[:, 1], pairs[:, 0]])
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    dist = np.linalg.norm(xy[src] - xy[dst], axis=1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return indptr, dst.astype(np.int64), dist


def check_method(method: str) -> str:
    """``method`` if it names a fusion, else a one-line ``VgsslError`` (callers check before slow work)."""
    if method not in METHODS:
        raise VgsslError(f"unknown fusion '{method}'; use one of {', '.join(METHODS)}")
    return method


def make_filter(method: str, db_utm: np.ndarray, params: FusionParams | None = None) -> PlaceFilter | None:
    """The fusion named ``method`` (``"none"``: None, single-frame localization) over a database."""
    return None if check_method(method) == "none" else PlaceFilter(db_utm, params)
