"""A camera's frames, one after another -> the fix a robot acts on: the one localization step.

The live ``localizer`` node and the offline replay (``vgssl replay``, the ``bag_replay`` node)
both call :meth:`LocalizationSession.step` for every frame, so a replayed drive measures exactly
what the robot would have published: the same search depth, the same single-frame fix, the same
temporal fusion and the same fused covariance::

    session = LocalizationSession(Localizer("run/last.ckpt", "maps/city"), fusion="bayes")
    for rgb, stamp_ns in frames:
        step = session.step(rgb, stamp_ns)
        step.output.estimate, step.output.confidence, step.output.covariance   # what gets published
        step.frame                                                          # the frame on its own

Per frame: one search ``depth`` deep (at least ``top_k``; the fusion's ``SEARCH_DEPTH`` with
fusion on; whatever a replay's Recall@N needs), the frame's own fix from its first ``top_k``
matches (``estimate_fix``), and with fusion the filter updated with the first ``fusion_depth``
places of that search. The output is the frame's fix, or with fusion the fused estimate in its
place: confidence = the belief's mass within 25 m of it, covariance
``floor^2 + (1 - confidence) x agree_radius^2`` on the east/north diagonal (the database's own
position error, widened by the belief the filter could not rule out, as ``estimate_fix`` widens
a single fix); its matches stay the frame's own top-k.

With a ``calibration`` (``vgssl calibrate``; :mod:`~vgssl_core.localization.calibration`) the
output's confidence becomes the fitted probability that the fix lies within the threshold of the
truth and its covariance the calibrated one; ``Step.uncalibrated`` keeps what it would have been
without. Without one the output is uncalibrated: a confidence that ranks fixes, not a probability.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from vgssl_core.localization.calibration import Calibration, database_sha256, frame_features
from vgssl_core.localization.fusion import SEARCH_DEPTH, FusedEstimate, FusionParams, PlaceFilter, make_filter
from vgssl_core.localization.localizer import Fix, LocalizationResult, Localizer


@dataclass(frozen=True)
class Step:
    """One frame through the session."""

    frame: LocalizationResult  # the frame on its own: fix from its top_k matches, ranked search kept
    fused: FusedEstimate | None  # the filter's answer (None without fusion)
    output: LocalizationResult  # what a robot receives: ``frame``, or the fused estimate in its place
    fusion_s: float  # seconds spent in the filter (update + output)
    uncalibrated: LocalizationResult  # ``output`` before the calibration (``output`` itself without one)


class LocalizationSession:
    """A localizer plus the state one camera's frame sequence carries (the fusion belief).

    ``fusion``: ``"none"`` (every frame on its own) or ``"bayes"``; ``min_depth``: search at
    least this deep (a replay asks for its largest Recall@N); ``calibration``: applied to every
    output, checked first against the localizer's checkpoint, database, fusion and top_k (a
    one-line ``VgsslError`` on a mismatch; with ``force_calibration`` the mismatches are kept in
    :attr:`calibration_warnings` instead, for the caller to log). Not thread-safe: one camera,
    one session, one caller at a time (the node's worker thread; the replay loop).
    """

    def __init__(self, localizer: Localizer, *, fusion: str = "none", fusion_params: FusionParams | None = None,
                 min_depth: int = 0, calibration: Calibration | None = None, force_calibration: bool = False) -> None:
        self.calibration = calibration
        self.calibration_warnings: list[str] = []
        if calibration is not None:
            self.calibration_warnings = calibration.check(
                localizer.checkpoint_sha256, database_sha256(localizer.database.path), fusion, localizer.top_k,
                force=force_calibration)
        self.localizer = localizer
        self.fusion_name = fusion
        self.filter: PlaceFilter | None = make_filter(fusion, localizer.database.utm, fusion_params)
        self.fusion_depth = max(localizer.top_k, SEARCH_DEPTH) if self.filter is not None else 0
        self.depth = max(localizer.top_k, self.fusion_depth, int(min_depth))

    def step(self, rgb: np.ndarray, stamp_ns: int) -> Step:
        """Localize one H x W x 3 uint8 RGB frame stamped ``stamp_ns`` (its header stamp, in ns).

        A malformed frame raises ``VgsslError`` before anything changes (the belief included).
        """
        frame = self.localizer.localize(rgb, depth=self.depth)
        if self.filter is None:
            return Step(frame, None, self.calibrated(frame, frame), 0.0, frame)
        start = time.perf_counter()
        k = self.fusion_depth
        fused = self.filter.update(stamp_ns, frame.ranked_indices[:k], frame.ranked_distances[:k])
        output = self.fused_output(frame, fused)
        return Step(frame, fused, self.calibrated(frame, output), time.perf_counter() - start, output)

    def calibrated(self, frame: LocalizationResult, output: LocalizationResult) -> LocalizationResult:
        """``output`` (the uncalibrated answer for ``frame``) with the calibrated confidence and
        covariance; ``output`` itself without a calibration."""
        if self.calibration is None:
            return output
        cal = self.calibration
        probability = float(cal.probability(frame_features(frame, output.confidence))[0])
        return dataclasses.replace(output, confidence=probability,
                                   covariance=cal.covariance(output.covariance, probability))

    def fused_output(self, frame: LocalizationResult, fused: FusedEstimate) -> LocalizationResult:
        """``frame`` with the fused estimate as its fix (see the module docstring for the covariance)."""
        loc, db = self.localizer, self.localizer.database
        lat, lon = db.latlon_of(fused.easting, fused.northing)
        estimate = Fix(fused.easting, fused.northing, db.zone, db.letter, lat, lon)
        variance = loc.floor_m**2 + (1.0 - fused.probability) * loc.agree_radius_m**2
        return dataclasses.replace(frame, estimate=estimate, confidence=float(fused.probability),
                                   covariance=variance * np.eye(2))

    def reset(self) -> None:
        """Forget the belief (a new drive); no-op without fusion."""
        if self.filter is not None:
            self.filter.reset()
