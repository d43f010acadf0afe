"""Calibrated fixes: a confidence that is a probability, a covariance an EKF can trust.

``estimate_fix`` (and the fusion filter) rank fixes well but their numbers mean nothing in
absolute terms: a confidence of 0.6 is not "right 60 % of the time", and the covariance is a
spread of matches plus a floor, not the distribution of the fix's error. A robot that fuses the
fix with odometry in an EKF (robot_localization or its own) needs both to mean what they say.
A calibration is measured on recorded drives with GNSS (``vgssl replay`` writes the evidence of
every frame into ``frames.npz``) and fitted by ``vgssl calibrate``:

* **probability** ``P(error <= threshold_m | features)`` by logistic regression on a handful of
  standardised features of the frame (:data:`FEATURES`: the uncalibrated confidence, agreement,
  ratio, best descriptor distance, gap to the second, spread of the agreeing matches). Monotone
  in every feature, a few numbers stored as plain JSON and re-evaluated with numpy here (no
  pickle, no scikit-learn at run time).
* **covariance** ``a S + b (1 - p) I``: ``S`` the uncalibrated covariance, ``p`` the calibrated
  probability. A fix is right (error of the order of ``S``) or wrong (anywhere retrieval put a
  look-alike), so the error is a mixture; ``b (1 - p)`` is the wrong part's share of the second
  moment, as an EKF needs it: a doubtful fix gets a wide covariance, a sure one a tight one.
  ``a`` and ``b`` (m^2) are chosen so that the 1-sigma and 2-sigma ellipses hold as close as
  possible to their nominal shares of the errors, ``1 - exp(-1/2)`` = 39.3 % and
  ``1 - exp(-2)`` = 86.5 % (a 2-D Gaussian's). When both cannot hold (the features tell right
  from wrong fixes only roughly) the 2-sigma share wins (:data:`WEIGHT_1SIGMA`): an ellipse too
  small for the wrong fixes makes an EKF overconfident and diverge, one too large for the right
  fixes only slows it down.

A calibration belongs to one checkpoint, one map database and one fusion mode (its file records
them; :meth:`Calibration.check` refuses another unless forced). Fit on one drive, check on
another (``vgssl replay --calibration``): its report shows the expected calibration error,
Brier score, ellipse coverage, NEES and how many fixes survive at 95 % precision, for the
uncalibrated and the calibrated outputs::

    cal = fit_calibration([load_replay("replay_a")])      # what `vgssl calibrate` does
    cal.save("calibration.json")
    session = LocalizationSession(localizer, calibration=Calibration.load("calibration.json"))
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vgssl_core import __version__
from vgssl_core.errors import VgsslError
from vgssl_core.io import file_sha256, write_json

FORMAT = "vgssl-calibration"
FORMAT_VERSION = 1
FEATURES = ("confidence", "agreement", "ratio", "best_distance", "distance_gap", "spread_m")
# nominal share of 2-D Gaussian errors inside the k-sigma ellipse (NEES <= k^2): 1 - exp(-k^2 / 2)
NOMINAL_1SIGMA = 1.0 - math.exp(-0.5)
NOMINAL_2SIGMA = 1.0 - math.exp(-2.0)
WEIGHT_1SIGMA = 0.25  # weight of the 1-sigma miss against the 2-sigma one in the covariance fit
MIN_FRAMES = 50  # fewer evaluated frames cannot pin down a probability to a few percent
MIN_CLASS = 10  # at least this many right and this many wrong fixes: else nothing separates them
MIN_GAIN = 0.02  # cross-validated log-loss must beat the base rate's by this share, else the features say nothing
BINS = 10  # reliability diagram / expected calibration error: equal-width confidence bins
PRECISION_TARGET = 0.95
REGULARIZATION_C = 1.0  # inverse L2 strength of the logistic regression (standardised features)


# --- features ------------------------------------------------------------------------------
def feature_matrix(confidence: Any, agreement: Any, ratio: Any, spread_m: Any, distances: Any) -> np.ndarray:
    """(F, len(FEATURES)) features of F frames; ``distances`` (F, K) the top-k, nearest first (NaN pad).

    The one definition, for the live session (one row) and the fit on a replay (every frame).
    """
    d = np.asarray(distances, dtype=np.float64)
    d = d.reshape(1, -1) if d.ndim == 1 else d
    best = d[:, 0]
    second = d[:, 1] if d.shape[1] > 1 else best
    gap = np.where(np.isfinite(second), second - best, 0.0)
    columns = [np.asarray(v, dtype=np.float64).reshape(-1) for v in (confidence, agreement, ratio)]
    columns += [best, gap, np.log1p(np.asarray(spread_m, dtype=np.float64).reshape(-1))]
    return np.stack(columns, axis=1)


def frame_features(frame: Any, confidence: float) -> np.ndarray:
    """The (len(FEATURES),) features of one ``LocalizationResult`` whose uncalibrated output has ``confidence``."""
    ev = frame.evidence
    if ev is None:
        raise ValueError("a calibration needs the result's evidence (LocalizationResult.evidence)")
    distances = np.array([m.distance for m in frame.matches], dtype=np.float64)
    return feature_matrix(confidence, ev.agreement, ev.ratio, ev.spread_m, distances)[0]


# --- measurements of a set of fixes --------------------------------------------------------
def nees(errors: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """Normalised estimation error squared ``e^T S^-1 e`` per fix ((F, 2) errors, (F, 2, 2) covariances)."""
    e = np.asarray(errors, dtype=np.float64).reshape(-1, 2)
    cov = np.asarray(covariances, dtype=np.float64).reshape(-1, 2, 2)
    return np.einsum("fi,fi->f", e, np.linalg.solve(cov, e[:, :, None])[:, :, 0])


def reliability_bins(probability: np.ndarray, correct: np.ndarray, bins: int = BINS) -> list[dict[str, float]]:
    """Per equal-width bin of the predicted probability: count, mean prediction, observed rate."""
    p, y = np.asarray(probability, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    return [{"lo": k / bins, "hi": (k + 1) / bins, "n": int((which == k).sum()),
             "predicted": float(p[which == k].mean()) if (which == k).any() else None,
             "observed": float(y[which == k].mean()) if (which == k).any() else None} for k in range(bins)]


def precision_recall(probability: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """Accepting the fixes with confidence >= t, for every t: precision (share right) and recall
    (share of the right fixes kept); and the most fixes kept at :data:`PRECISION_TARGET` precision."""
    p, y = np.asarray(probability, dtype=np.float64), np.asarray(correct, dtype=bool)
    order = np.argsort(-p, kind="stable")
    p_sorted, hits = p[order], np.cumsum(y[order])
    last = np.r_[np.flatnonzero(np.diff(p_sorted) != 0), len(p) - 1]  # ties accepted together
    kept = last + 1
    precision, recall = hits[last] / kept, hits[last] / max(int(y.sum()), 1)
    ok = np.flatnonzero(precision >= PRECISION_TARGET)
    best = int(ok[np.argmax(kept[ok])]) if ok.size else None
    return {
        "thresholds": [round(float(v), 6) for v in p_sorted[last]],
        "precision": [round(float(v), 6) for v in precision], "recall": [round(float(v), 6) for v in recall],
        "kept_at_95_precision": int(kept[best]) if best is not None else 0,
        "kept_share_at_95_precision": float(kept[best] / len(p)) if best is not None else 0.0,
        "threshold_at_95_precision": float(p_sorted[last[best]]) if best is not None else None,
    }


def measure(probability: Any, errors: Any, covariances: Any, threshold_m: float) -> dict[str, Any]:
    """How well confidences and covariances describe the errors of a set of fixes.

    ``probability`` (F,) the published confidence, ``errors`` (F, 2) fix - truth [m], ``covariances``
    (F, 2, 2). Keys: ``n``, ``accuracy`` (share within ``threshold_m``), ``ece`` (expected calibration
    error over :data:`BINS` bins), ``brier``, ``coverage_1sigma`` / ``coverage_2sigma`` (share of
    errors inside the ellipses; nominal 0.393 / 0.865), ``mean_nees`` (nominal 2), ``median_nees``,
    ``reliability`` (the diagram's bins), ``precision_recall`` (see :func:`precision_recall`).
    """
    p = np.clip(np.asarray(probability, dtype=np.float64).reshape(-1), 0.0, 1.0)
    e = np.asarray(errors, dtype=np.float64).reshape(-1, 2)
    correct = np.linalg.norm(e, axis=1) <= threshold_m
    n = nees(e, covariances)
    bins = reliability_bins(p, correct)
    ece = sum(b["n"] * abs(b["predicted"] - b["observed"]) for b in bins if b["n"]) / max(len(p), 1)
    return {
        "n": int(len(p)), "threshold_m": float(threshold_m), "accuracy": float(correct.mean()),
        "ece": float(ece), "brier": float(np.mean((p - correct) ** 2)),
        "coverage_1sigma": float(np.mean(n <= 1.0)), "coverage_2sigma": float(np.mean(n <= 4.0)),
        "mean_nees": float(np.mean(n)), "median_nees": float(np.median(n)),
        "reliability": bins, "precision_recall": precision_recall(p, correct),
    }


# --- the calibration -----------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: logistic coefficients on standardised :data:`FEATURES` and a covariance scale."""

    threshold_m: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    covariance_scale: float  # a
    covariance_doubt_m2: float  # b [m^2]
    checkpoint_sha256: str
    database_sha256: str  # sha256 of the map database's manifest.json
    fusion: str  # the fusion mode of the replays it was fitted on (the output it calibrates)
    top_k: int
    features: tuple[str, ...] = FEATURES
    # the range of each feature on the calibration drives: a frame outside it is clipped to it, so
    # a drive unlike the calibration one (night descriptors farther from the map) is not extrapolated
    # by the logistic into confident nonsense; empty: no clipping
    lo: tuple[float, ...] = ()
    hi: tuple[float, ...] = ()
    fitted_on: dict[str, Any] = field(default_factory=dict)  # replays, counts, in-sample measures

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(fix within ``threshold_m``) of (F, len(FEATURES)) (or one row of) features."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if self.lo:
            x = np.clip(x, np.array(self.lo), np.array(self.hi))
        x = (x - np.array(self.mean)) / np.array(self.scale)
        z = x @ np.array(self.coef) + self.intercept
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow

    def covariance(self, raw: np.ndarray, probability: Any) -> np.ndarray:
        """The calibrated (F, 2, 2) (or (2, 2)) covariance of uncalibrated ones with calibrated ``probability``."""
        return _mixture_covariance(np.asarray(raw, dtype=np.float64), np.asarray(probability, dtype=np.float64),
                                   self.covariance_scale, self.covariance_doubt_m2)

    def check(self, checkpoint_sha256: str, database_sha256: str, fusion: str, top_k: int, *,
              force: bool = False, name: str = "calibration") -> list[str]:
        """One-line ``VgsslError`` when fitted for another checkpoint, database, fusion or top_k;
        with ``force`` the same sentences come back as warnings instead."""
        problems = []
        if self.checkpoint_sha256 != checkpoint_sha256:
            problems.append(f"{name} was fitted for checkpoint sha256 {self.checkpoint_sha256[:12]}, "
                            f"this one is {checkpoint_sha256[:12]}")
        if self.database_sha256 != database_sha256:
            problems.append(f"{name} was fitted for another map database (manifest sha256 "
                            f"{self.database_sha256[:12]}, this one {database_sha256[:12]})")
        if self.fusion != fusion:
            problems.append(f"{name} was fitted on fusion '{self.fusion}' outputs, this localizer runs fusion '{fusion}'")
        if self.top_k != int(top_k):
            problems.append(f"{name} was fitted with top_k {self.top_k}, this localizer uses {top_k}")
        if problems and not force:
            raise VgsslError("; ".join(problems) + "; recalibrate on a replay of this setup (or force)")
        return problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "vgssl_version": __version__,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}}

    def save(self, path: str | Path) -> Path:
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a file written by :meth:`save`; a one-line ``VgsslError`` for anything else."""
        path = Path(path)
        if not path.is_file():
            raise VgsslError(f"{path}: no such calibration file; fit one with 'vgssl calibrate'")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VgsslError(f"{path}: not a JSON calibration file ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise VgsslError(f"{path}: not a vgssl calibration file (no format '{FORMAT}')")
        if data.get("format_version") != FORMAT_VERSION:
            raise VgsslError(f"{path}: calibration format version {data.get('format_version')} is not "
                             f"{FORMAT_VERSION}; refit it with this vgssl")
        try:
            cal = cls(threshold_m=float(data["threshold_m"]), mean=tuple(map(float, data["mean"])),
                      scale=tuple(map(float, data["scale"])), coef=tuple(map(float, data["coef"])),
                      intercept=float(data["intercept"]), covariance_scale=float(data["covariance_scale"]),
                      covariance_doubt_m2=float(data["covariance_doubt_m2"]),
                      checkpoint_sha256=str(data["checkpoint_sha256"]), database_sha256=str(data["database_sha256"]),
                      fusion=str(data["fusion"]), top_k=int(data["top_k"]), features=tuple(data["features"]),
                      lo=tuple(map(float, data.get("lo") or ())), hi=tuple(map(float, data.get("hi") or ())),
                      fitted_on=dict(data.get("fitted_on") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise VgsslError(f"{path}: calibration file is incomplete or malformed ({type(exc).__name__}: {exc})") from None
        if cal.features != FEATURES:
            raise VgsslError(f"{path}: fitted on features {list(cal.features)}, this vgssl computes "
                             f"{list(FEATURES)}; refit it")
        sizes = {len(cal.mean), len(cal.scale), len(cal.coef)}
        if cal.lo:
            sizes |= {len(cal.lo), len(cal.hi)}
        if sizes != {len(FEATURES)} or not all(map(math.isfinite, (*cal.mean, *cal.scale, *cal.coef, cal.intercept))) \
                or min(cal.scale) <= 0 or not (cal.covariance_scale > 0 and math.isfinite(cal.covariance_scale)) \
                or not (cal.covariance_doubt_m2 >= 0 and math.isfinite(cal.covariance_doubt_m2)):
            raise VgsslError(f"{path}: calibration parameters are malformed (sizes, NaN or non-positive scales)")
        return cal


def database_sha256(database_path: str | Path) -> str:
    """The identity of a map database a calibration is tied to: its manifest's sha256."""
    return file_sha256(Path(database_path) / "manifest.json")


# --- fitting -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayEvidence:
    """What a replay folder holds for calibration: per evaluated frame, features, error, covariance."""

    path: Path
    features: np.ndarray  # (F, len(FEATURES))
    errors: np.ndarray  # (F, 2) published (uncalibrated) fix - GNSS truth [m]
    covariances: np.ndarray  # (F, 2, 2) uncalibrated covariance
    confidence: np.ndarray  # (F,) uncalibrated confidence
    checkpoint_sha256: str
    database_sha256: str
    fusion: str
    top_k: int
    threshold_m: float


REQUIRED_ARRAYS = ("evaluated", "gt_utm", "distances", "agreement", "ratio", "spread_m",
                   "raw_output_utm", "raw_output_confidence", "raw_output_covariance")


def load_replay(folder: str | Path) -> ReplayEvidence:
    """The evidence in a ``vgssl replay`` output folder (``report.json`` + ``frames.npz``)."""
    folder = Path(folder)
    report_path, frames_path = folder / "report.json", folder / "frames.npz"
    if not report_path.is_file() or not frames_path.is_file():
        raise VgsslError(f"{folder}: not a replay output (needs report.json and frames.npz from 'vgssl replay')")
    try:
        report = json.loads(report_path.read_text())
        with np.load(frames_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise VgsslError(f"{folder}: unreadable replay output ({exc})") from None
    missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
    keys = ("checkpoint_sha256", "database_sha256", "top_k", "threshold_m")
    if missing or any(report.get(k) is None for k in keys):
        raise VgsslError(f"{folder}: replay written by an older vgssl (no {', '.join(missing) or 'checkpoint sha256'}); "
                         "rerun 'vgssl replay' on the bag")
    top_k = int(report["top_k"])
    ok = arrays["evaluated"].astype(bool)
    features = feature_matrix(arrays["raw_output_confidence"][ok], arrays["agreement"][ok], arrays["ratio"][ok],
                              arrays["spread_m"][ok], arrays["distances"][ok, :top_k])
    return ReplayEvidence(folder, features, arrays["raw_output_utm"][ok] - arrays["gt_utm"][ok],
                          arrays["raw_output_covariance"][ok], arrays["raw_output_confidence"][ok],
                          str(report["checkpoint_sha256"]), str(report["database_sha256"]),
                          str((report.get("fusion") or {}).get("method", "none")), top_k,
                          float(report["threshold_m"]))


def _mixture_covariance(raw: np.ndarray, probability: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * raw + (b * (1.0 - probability))[..., None, None] * np.eye(2)


def _coverage_miss(raw: np.ndarray, doubt: np.ndarray, errors: np.ndarray, a: float, b: float) -> float:
    """Weighted squared misses of the 1- and 2-sigma coverages of ``a raw + b doubt I`` (closed form for 2 x 2)."""
    sxx, sxy, syy = a * raw[:, 0, 0] + b * doubt, a * raw[:, 0, 1], a * raw[:, 1, 1] + b * doubt
    det = sxx * syy - sxy**2
    ex, ey = errors[:, 0], errors[:, 1]
    n = (syy * ex**2 - 2 * sxy * ex * ey + sxx * ey**2) / det
    return float(WEIGHT_1SIGMA * (np.mean(n <= 1.0) - NOMINAL_1SIGMA) ** 2 + (np.mean(n <= 4.0) - NOMINAL_2SIGMA) ** 2)


def _fit_covariance(raw: np.ndarray, probability: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of ``a S + b (1 - p) I`` with the 1- and 2-sigma coverages nearest nominal: a grid,
    then a finer one around its best (coverage is a step function: no gradient to follow)."""
    doubt = 1.0 - probability

    def best(scales: np.ndarray, doubts: np.ndarray) -> tuple[float, float]:
        # ties: the smallest doubt term, then the scale nearest 1 (the least change to the estimator's shape)
        return min(((float(a), float(b)) for a in scales for b in doubts),
                   key=lambda ab: (round(_coverage_miss(raw, doubt, errors, *ab), 9), ab[1], abs(math.log(ab[0]))))

    a, b = best(np.geomspace(1e-2, 1e2, 41), np.r_[0.0, np.geomspace(1.0, 1e6, 31)])
    step_a, step_b = 10 ** (4 / 40), 10 ** (6 / 30)
    fine_b = np.r_[0.0, np.geomspace(max(b / step_b, 1.0), b * step_b, 9)] if b > 0 else np.r_[0.0, 1.0]
    return best(a * np.geomspace(1 / step_a, step_a, 9), fine_b)


def fit_calibration(replays: Sequence[ReplayEvidence], *, threshold_m: float | None = None,
                    min_frames: int = MIN_FRAMES) -> tuple[Calibration, list[str]]:
    """Fit a :class:`Calibration` on the frames of ``replays``; returns it and its warnings.

    One-line ``VgsslError`` when the replays disagree on checkpoint, database, fusion or top_k,
    hold fewer than ``min_frames`` evaluated frames, or fewer than :data:`MIN_CLASS` right or
    wrong fixes (an all-correct or all-wrong drive says nothing about telling them apart).
    A warning when the features do not predict right from wrong out of sample (5-fold
    cross-validated log-loss not :data:`MIN_GAIN` below the base rate's): the calibrated
    confidence is then little more than the share of right fixes on this drive.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    if not replays:
        raise VgsslError("calibrate needs at least one replay folder (--replay)")
    first = replays[0]
    for r in replays[1:]:
        for key, what in (("checkpoint_sha256", "checkpoint"), ("database_sha256", "map database"),
                          ("fusion", "fusion mode"), ("top_k", "top_k")):
            if getattr(r, key) != getattr(first, key):
                raise VgsslError(f"{r.path} was replayed with another {what} than {first.path} "
                                 f"({getattr(r, key)} vs {getattr(first, key)}); calibrate one setup at a time")
    threshold = float(first.threshold_m if threshold_m is None else threshold_m)
    if not threshold > 0:
        raise VgsslError(f"--threshold must be > 0 m, got {threshold}")
    x = np.concatenate([r.features for r in replays])
    errors = np.concatenate([r.errors for r in replays])
    raw_cov = np.concatenate([r.covariances for r in replays])
    raw_conf = np.concatenate([r.confidence for r in replays])
    names = ", ".join(str(r.path) for r in replays)
    if len(x) < min_frames:
        raise VgsslError(f"{names}: {len(x)} evaluated frames, a calibration needs at least {min_frames}; "
                         "replay a longer drive or add --replay folders")
    correct = np.linalg.norm(errors, axis=1) <= threshold
    n_right = int(correct.sum())
    if min(n_right, len(x) - n_right) < MIN_CLASS:
        which = "correct" if n_right > len(x) / 2 else "wrong"
        raise VgsslError(f"{names}: {n_right} of {len(x)} fixes are within {threshold:g} m (nearly all {which}); "
                         f"a calibration needs at least {MIN_CLASS} right and {MIN_CLASS} wrong fixes to tell them apart")
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature (K = 1: no gap) carries no weight
    model = LogisticRegression(C=REGULARIZATION_C, max_iter=1000)
    held_out = cross_val_predict(model, (x - mean) / scale, correct, cv=5, method="predict_proba")[:, 1]
    model.fit((x - mean) / scale, correct)
    cal = Calibration(threshold, tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, model.coef_[0])),
                      float(model.intercept_[0]), 1.0, 0.0, first.checkpoint_sha256, first.database_sha256,
                      first.fusion, first.top_k, lo=tuple(map(float, x.min(0))), hi=tuple(map(float, x.max(0))))
    p = cal.probability(x)
    a, b = _fit_covariance(raw_cov, p, errors)
    cal = dataclasses.replace(cal, covariance_scale=a, covariance_doubt_m2=b)
    fitted = {"replays": [str(r.path) for r in replays], "n_frames": int(len(x)), "n_correct": n_right,
              "raw": _summary(measure(raw_conf, errors, raw_cov, threshold)),
              "calibrated": _summary(measure(p, errors, cal.covariance(raw_cov, p), threshold))}
    rate = correct.mean()
    base_loss = -float(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    held_loss = _log_loss(held_out, correct)
    fitted["log_loss"] = {"base_rate": base_loss, "cross_validated": held_loss}
    warnings = []
    if held_loss > (1.0 - MIN_GAIN) * base_loss:
        warnings.append(f"the features barely separate right from wrong fixes on {names} (cross-validated "
                        f"log-loss {held_loss:.3f} vs {base_loss:.3f} for the base rate): the calibrated confidence "
                        f"is about the share of right fixes here ({rate:.2f}), a probability that ranks fixes poorly")
    fitted["warnings"] = warnings
    return dataclasses.replace(cal, fitted_on=fitted), warnings


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return -float(np.mean(np.where(y, np.log(p), np.log(1 - p))))


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    """The scalar measures of :func:`measure` (no curves), for files and one-line prints."""
    pr = m["precision_recall"]
    return {**{k: v for k, v in m.items() if k not in ("reliability", "precision_recall")},
            "kept_at_95_precision": pr["kept_at_95_precision"],
            "kept_share_at_95_precision": pr["kept_share_at_95_precision"]}


def summary_line(label: str, m: dict[str, Any]) -> str:
    """One line of the measures that matter to a robot."""
    pr = m.get("precision_recall") or m
    return (f"{label}: ECE {m['ece']:.3f}  Brier {m['brier']:.3f}  1-sigma {m['coverage_1sigma']:.2f} "
            f"(nominal {NOMINAL_1SIGMA:.2f})  2-sigma {m['coverage_2sigma']:.2f} (nominal {NOMINAL_2SIGMA:.2f})  "
            f"mean NEES {m['mean_nees']:.2f} (nominal 2)  kept at 95% precision {pr['kept_at_95_precision']}"
            f"/{m['n']}")
