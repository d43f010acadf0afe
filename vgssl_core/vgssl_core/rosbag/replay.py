"""Offline bag replay: localize every camera frame of a rosbag2 bag and measure it against its GNSS.

The one implementation behind ``vgssl replay`` and the ROS ``bag_replay`` node (and the frame
selection behind ``vgssl build-db --bag``). Per frame: decode (``bags``/``image_codec``),
localize (``localization.Localizer``: preprocess, descriptor, search, fix), optionally fuse
over time (``fusion.PlaceFilter``), and look up the ground truth: the GNSS track interpolated at
the image's header stamp (``gnss.GnssTrack``), in the database's UTM zone.

Recall@N is ``vgssl eval``'s, computed by the same functions (``retrieval.ground_truth`` and
``retrieval.recall_at_n``): a frame is correct at N when any of its top-N database matches lies
within the threshold (25 m) of its ground truth, and every frame that has a ground truth and was
localized is in the denominator. Frames without one (no GNSS fix within ``max_gap_s``,
undecodable image, corrupt message) are left out *and counted by reason* in the report.

    localizer = Localizer("run/last.ckpt", "maps/city", top_k=5)
    result = run_replay("drive_bag", localizer, image_topic="/camera/image_raw", gnss_topic="/gnss/fix")
    write_report(result, "replay_out")          # report.json, report.md, route.png, frames.npz
    result.report["recall"]["1"]

For a node that publishes as it goes: ``Replay(...).frames(stop=event)`` yields a
:class:`FrameResult` per frame; ``run_replay(..., stop=event, on_frame=callback)`` does the same
and returns the summary. Ctrl-C (KeyboardInterrupt) or ``stop`` ends the replay early: the
result then covers the frames processed so far and says so (``complete`` false).

For a node that republishes a bag to the live localizer at the recorded rate (re-exported from
``bags``), without deserializing anything::

    with BagReader("drive_bag") as bag:
        types = bag.topics()                                   # {topic: "pkg/msg/Type"}
        for topic, msgtype, bag_stamp_ns, raw in play(bag.messages(["/camera/image_raw"]), stop=event):
            publishers[topic].publish(raw)                     # serialized CDR, as rclpy accepts it
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from vgssl_core import __version__
from vgssl_core.rosbag.bags import IMAGE_TYPES, NAVSATFIX, BagMessage, BagReader, BagReadError, play
from vgssl_core.errors import VgsslError
from vgssl_core.evaluation.split import PLOT_THRESHOLDS_M
from vgssl_core.rosbag.report import pad_rows, percentiles
from vgssl_core.localization.calibration import Calibration, database_sha256, measure
from vgssl_core.localization.fusion import FusedEstimate, FusionParams, PlaceFilter
from vgssl_core.localization.session import LocalizationSession
from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.rosbag.gnss import GNSS_TOLERANCE_S, MAX_GAP_S, GnssTrack
from vgssl_core.localization.localizer import LocalizationResult, Localizer
from vgssl_core.evaluation.recall import DEFAULT_NS, ground_truth, recall_at_n

__all__ = ["BagMessage", "BagReader", "FrameResult", "Replay", "ReplayResult", "play", "run_replay"]

# why a frame is not in the recall denominator
UNDECODABLE, CORRUPT = "undecodable", "corrupt_message"

StopFlag = Callable[[], bool]


def _stop_fn(stop: Any) -> StopFlag:
    """A ``threading.Event``, a callable returning True to stop, or None."""
    if stop is None:
        return lambda: False
    if hasattr(stop, "is_set"):
        return stop.is_set
    if callable(stop):
        return stop
    raise TypeError(f"stop must be a threading.Event, a callable or None, got {type(stop).__name__}")


# --- per frame -----------------------------------------------------------------------------
@dataclass
class FrameResult:
    """One camera frame of the replay."""

    index: int  # position on the image topic, 0-based, before --every
    stamp_ns: int  # header stamp
    bag_stamp_ns: int
    gt_utm: np.ndarray | None  # (2,) ground truth in the database's zone; None without a GNSS position
    skip: str | None  # why the frame is not evaluated (None: it is in the recall denominator)
    result: LocalizationResult | None  # the frame on its own; None when the image could not be decoded
    fused: FusedEstimate | None  # None without fusion
    decode_s: float = 0.0
    fusion_s: float = 0.0
    fix_utm: np.ndarray | None = None  # (2,) the fix from the localizer's top_k (what a robot uses)
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # top-N database indices
    distances: np.ndarray = field(default_factory=lambda: np.zeros(0))  # their descriptor distances
    error: str | None = None  # the decode error, when there was one
    output: LocalizationResult | None = None  # what the live localizer publishes: result, or the fused fix
    raw_output: LocalizationResult | None = None  # ``output`` before the calibration (the same without one)

    @property
    def latency_s(self) -> float:
        """Decode + preprocess + descriptor + search + fix: one frame of the live localizer."""
        return self.decode_s + (self.result.timings.total if self.result else 0.0)


class Replay:
    """A bag, a localizer, and how to pair frames with ground truth; :meth:`frames` runs it.

    Opens the bag (one-line ``VgsslError`` when it is missing, corrupt or of unknown storage),
    checks the two topics (the error lists the bag's topics), and reads the GNSS track at once,
    projected into the database's UTM zone (the first fix's zone when the database has none).
    ``image_topic``/``gnss_topic`` None: the bag's only topic of the right type.
    """

    def __init__(self, bag: str | Path | BagReader, localizer: Localizer, *, image_topic: str | None = None,
                 gnss_topic: str | None = None, every: int = 1, max_gap_s: float = MAX_GAP_S,
                 gnss_tolerance_s: float = GNSS_TOLERANCE_S, fusion: str = "bayes",
                 fusion_params: FusionParams | None = None, ns: Sequence[int] = DEFAULT_NS,
                 threshold_m: float = EVAL_RADIUS_M, thresholds: Sequence[float] = PLOT_THRESHOLDS_M,
                 max_frames: int | None = None, calibration: Calibration | None = None,
                 force_calibration: bool = False) -> None:
        if every < 1:
            raise VgsslError(f"--every must be >= 1, got {every}")
        if not max_gap_s > 0:
            raise VgsslError(f"--max-gap must be > 0 s, got {max_gap_s}")
        if not gnss_tolerance_s >= 0:
            raise VgsslError(f"--gnss-tolerance must be >= 0 s, got {gnss_tolerance_s}")
        self.gnss_tolerance_s = float(gnss_tolerance_s)
        self.ns = tuple(sorted({int(n) for n in ns}))
        if not self.ns or self.ns[0] < 1:
            raise VgsslError("recall N values must be >= 1")
        self.localizer = localizer
        self.db = localizer.database
        self._owns_bag = not isinstance(bag, BagReader)
        self.bag = BagReader(bag) if self._owns_bag else bag
        try:  # the bag must be closed again if anything below finds it unusable
            self.image_topic = self.bag.pick_topic(image_topic, IMAGE_TYPES, "image topic", "--image-topic")
            self.gnss_topic = self.bag.pick_topic(gnss_topic, (NAVSATFIX,), "GNSS topic", "--gnss-topic")
            self.image_type = self.bag.topics()[self.image_topic]
            self.every, self.max_gap_s, self.max_frames = int(every), float(max_gap_s), max_frames
            self.threshold_m = float(threshold_m)
            self.thresholds = sorted({self.threshold_m, *map(float, thresholds)})
            self.warnings: list[str] = []
            self.track = GnssTrack.from_fixes(self.bag.gnss_fixes(self.gnss_topic), zone=self.db.zone,
                                              letter=self.db.letter)
            if self.db.zone is None:
                self.warnings.append(f"the database has no UTM zone: GNSS projected into zone {self.track.zone_label} "
                                     "(its first fix's); distances are only right if the database uses it too")
            if len(self.track) == 0:
                raise VgsslError(f"{self.bag.path}: GNSS topic '{self.gnss_topic}' has no usable fix "
                                 f"({self.track.counts}); no frame can be evaluated")
            self.fusion_name = fusion
            # the live node's step, searched deep enough for the largest N of Recall@N
            self.session = LocalizationSession(localizer, fusion=fusion, fusion_params=fusion_params,
                                               min_depth=max(self.ns), calibration=calibration,
                                               force_calibration=force_calibration)
            self.calibration = calibration
            self.warnings += self.session.calibration_warnings
            self.filter: PlaceFilter | None = self.session.filter
            self.n_images = self.bag.message_count(self.image_topic)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the bag if this replay opened it (a ``BagReader`` passed in stays open)."""
        if self._owns_bag:
            self.bag.close()

    @property
    def planned(self) -> int:
        """Frames this replay will read (after ``every`` and ``max_frames``)."""
        n = math.ceil(self.n_images / self.every)
        return min(n, self.max_frames) if self.max_frames else n

    def frames(self, stop: Any = None) -> Iterator[FrameResult]:
        """Localize the frames one by one, in recording order; ``stop`` (Event or callable) ends early.

        When it ends because of ``stop``, :attr:`stopped` says so afterwards.
        """
        is_stopped = _stop_fn(stop)
        self.stopped = None
        count = 0
        for frame in self.bag.image_frames(self.image_topic, every=self.every):
            if self.max_frames and count >= self.max_frames:
                return
            if is_stopped():
                self.stopped = "stopped by request"
                return
            count += 1
            yield self._process(frame)

    def _process(self, frame) -> FrameResult:
        gt, reason = self.track.at(frame.stamp_ns, self.max_gap_s, self.gnss_tolerance_s)
        if frame.error is not None:
            return FrameResult(frame.index, frame.stamp_ns, frame.bag_stamp_ns, gt, frame.error_kind, None, None,
                               frame.decode_s, error=frame.error)
        step = self.session.step(frame.rgb, frame.stamp_ns)
        result, n = step.frame, max(self.ns)
        fix_utm = np.array([result.estimate.easting, result.estimate.northing])
        return FrameResult(frame.index, frame.stamp_ns, frame.bag_stamp_ns, gt, reason, result, step.fused,
                           frame.decode_s, step.fusion_s, fix_utm, result.ranked_indices[:n],
                           result.ranked_distances[:n], output=step.output, raw_output=step.uncalibrated)

    # -- the report
    def summarize(self, frames: Sequence[FrameResult], *, seconds: float, interrupted: bool = False,
                  stopped: str | None = None) -> dict[str, Any]:
        """The report of ``frames``: plain JSON-able data (``report.json``).

        Keys: ``recall`` (N as a string -> percent at ``threshold_m``, the keys of ``vgssl eval``;
        None when no frame could be evaluated), ``recall_by_threshold``, ``n_frames`` (the recall
        denominator), ``n_skipped`` and ``skipped`` (reason -> count: ``gnss_gap``, ``gnss_outside``,
        ``undecodable``, ``corrupt_message``), ``errors`` (the commonest decode errors),
        ``error_m`` (median/p95/mean distance of the fix to the ground truth), ``latency_ms``
        (p50/p95/mean/max of decode + localize per frame), ``stages_ms``, ``frames_per_s``,
        ``fusion`` (method, params, fused ``recall["1"]``, ``single_frame_recall``, ``error_m``,
        ``ms`` per update, ``latency_ms`` with it, ``latency_ratio_p50``, ``resets``), ``gnss``
        (fix counts, zone), ``complete``/``interrupted``/``stopped``, ``warnings``, and where it
        all came from (bag, topics, database, checkpoint, device).
        """
        evaluated = [f for f in frames if f.skip is None and f.result is not None]
        localized = [f for f in frames if f.result is not None]
        skipped = Counter(f.skip for f in frames if f.skip is not None)
        errors = Counter(f.error for f in frames if f.error)
        report: dict[str, Any] = {
            "bag": str(self.bag.path), "storage": self.bag.storage,
            "image_topic": self.image_topic, "image_type": self.image_type, "gnss_topic": self.gnss_topic,
            "database": str(self.db.path), "n_database": len(self.db), "checkpoint": str(self.localizer.checkpoint),
            "checkpoint_sha256": self.localizer.checkpoint_sha256, "database_sha256": database_sha256(self.db.path),
            "device": str(self.localizer.device), "top_k": self.localizer.top_k,
            "complete": not interrupted and stopped is None, "interrupted": interrupted, "stopped": stopped,
            "n_images": self.n_images, "every": self.every, "n_read": len(frames),
            "n_frames": len(evaluated), "n_localized": len(localized),
            "n_skipped": int(sum(skipped.values())), "skipped": dict(sorted(skipped.items())),
            "errors": [f"{n} x {e}" for e, n in errors.most_common(5)],
            "gnss": self.track.summary(), "max_gap_s": self.max_gap_s,
            "gnss_tolerance_s": self.gnss_tolerance_s,
            "threshold_m": self.threshold_m, "recall": None, "recall_by_threshold": None,
            "error_m": None, "latency_ms": None,
            "seconds": round(seconds, 3), "frames_per_s": round(len(frames) / seconds, 2) if seconds > 0 else None,
            "warnings": list(self.warnings), "vgssl_version": __version__,
        }
        for topic in (self.image_topic, self.gnss_topic):
            lost = self.bag.missing(topic)
            if lost:  # the storage file lost messages its index announces: the report does not cover the bag
                report["complete"] = False
                report["warnings"].append(f"{lost} of {self.bag.message_count(topic)} messages of {topic} could not "
                                          f"be read (corrupt or truncated bag); the report covers the rest")
        if localized:
            lat = np.array([f.latency_s for f in localized]) * 1e3
            report["latency_ms"] = percentiles(lat)
            report["stages_ms"] = {stage: round(float(np.median([getattr(f.result.timings, stage) for f in localized]))
                                                * 1e3, 3) for stage in ("preprocess", "model", "search")}
            report["stages_ms"]["decode"] = round(float(np.median([f.decode_s for f in localized])) * 1e3, 3)
        if not evaluated:
            reasons = ", ".join(f"{n} {r}" for r, n in skipped.items()) or "no frames"
            report["warnings"].append(f"no frame could be evaluated ({reasons})")
            return report
        gt = np.stack([f.gt_utm for f in evaluated])
        pred = pad_rows([f.predictions for f in evaluated], max(self.ns))
        by_t = {t: recall_at_n(pred, ground_truth(self.db.utm, gt, t), self.ns) for t in self.thresholds}
        report["recall"] = {str(n): r for n, r in by_t[self.threshold_m].items()}
        report["recall_by_threshold"] = {f"{t:g}": {str(n): r for n, r in rec.items()} for t, rec in by_t.items()}
        report["error_m"] = percentiles(np.linalg.norm(np.stack([f.fix_utm for f in evaluated]) - gt, axis=1),
                                         ("median", "p95", "mean"))
        if self.filter is not None:
            fused_idx = np.array([[f.fused.index] for f in evaluated])
            fused_pos = np.array([[f.fused.easting, f.fused.northing] for f in evaluated])
            positives = ground_truth(self.db.utm, gt, self.threshold_m)
            fused_recall = recall_at_n(fused_idx, positives, (1,))
            single_recall = recall_at_n(pred[:, :1], positives, (1,))  # also when --recall-n lacks 1
            fusion_ms = np.array([f.fusion_s for f in localized]) * 1e3
            with_fusion = np.array([f.latency_s + f.fusion_s for f in localized]) * 1e3
            report["fusion"] = {
                "method": self.fusion_name, "params": asdict(self.filter.params),
                "recall": {"1": fused_recall[1]}, "single_frame_recall": {"1": single_recall[1]},
                "error_m": percentiles(np.linalg.norm(fused_pos - gt, axis=1), ("median", "p95", "mean")),
                "resets": self.filter.resets, "ms": percentiles(fusion_ms),
                "latency_ms": percentiles(with_fusion),
                # 1 + median fusion / median latency: robust to the wall-clock noise of a shared machine
                "latency_ratio_p50": round(1.0 + float(np.median(fusion_ms) / max(np.median(lat), 1e-9)), 4),
            }
        else:
            report["fusion"] = {"method": "none"}
        report["calibration"] = self._calibration_section(evaluated, gt)
        return report

    def _calibration_section(self, evaluated: Sequence[FrameResult], gt: np.ndarray) -> dict[str, Any]:
        """How well the published confidences and covariances describe the errors (``calibration.measure``):
        ``raw`` (uncalibrated) always, ``calibrated`` with a calibration (else None)."""
        def of(outputs: list[LocalizationResult]) -> dict[str, Any]:
            utm = np.array([[o.estimate.easting, o.estimate.northing] for o in outputs])
            m = measure([o.confidence for o in outputs], utm - gt, np.stack([o.covariance for o in outputs]),
                        self.threshold_m)
            m["precision_recall"] = {k: v for k, v in m["precision_recall"].items()
                                     if k not in ("thresholds", "precision", "recall")}  # curves: in the PNG
            return m

        cal = self.calibration
        return {"raw": of([f.raw_output for f in evaluated]),
                "calibrated": of([f.output for f in evaluated]) if cal else None}


# --- the whole run -------------------------------------------------------------------------
@dataclass
class ReplayResult:
    """What :func:`run_replay` returns: the report (plain data) and the per-frame results."""

    report: dict[str, Any]
    frames: list[FrameResult]
    replay: Replay

    @property
    def complete(self) -> bool:
        return bool(self.report["complete"])


def run_replay(bag: str | Path | BagReader, localizer: Localizer, *, image_topic: str | None = None,
               gnss_topic: str | None = None, every: int = 1, max_gap_s: float = MAX_GAP_S,
               gnss_tolerance_s: float = GNSS_TOLERANCE_S, fusion: str = "bayes",
               fusion_params: FusionParams | None = None, ns: Sequence[int] = DEFAULT_NS,
               threshold_m: float = EVAL_RADIUS_M, thresholds: Sequence[float] = PLOT_THRESHOLDS_M,
               max_frames: int | None = None, calibration: Calibration | None = None, force_calibration: bool = False,
               stop: Any = None,
               on_frame: Callable[[FrameResult], None] | None = None, progress: bool = True) -> ReplayResult:
    """Replay a bag against a localizer and summarize it.

    ``stop``: a ``threading.Event`` or a callable returning True to end early (a node's shutdown);
    ``on_frame``: called with every :class:`FrameResult` as soon as it exists (publish it).
    Ctrl-C ends the replay early as well; a bag that turns unreadable part way ends it with
    ``report["stopped"]`` saying why. Either way the report covers the frames processed and
    ``report["complete"]`` is false. Raises ``VgsslError`` for unusable input before the first frame.
    """
    replay = Replay(bag, localizer, image_topic=image_topic, gnss_topic=gnss_topic, every=every, max_gap_s=max_gap_s,
                    gnss_tolerance_s=gnss_tolerance_s, fusion=fusion, fusion_params=fusion_params, ns=ns,
                    threshold_m=threshold_m, thresholds=thresholds, max_frames=max_frames, calibration=calibration,
                    force_calibration=force_calibration)
    frames: list[FrameResult] = []
    interrupted, stopped = False, None
    correct = evaluated = 0
    start = time.perf_counter()
    bar = tqdm(total=replay.planned, desc="replay", unit="frame", disable=not progress, leave=False)
    try:
        for frame in replay.frames(stop=stop):
            frames.append(frame)
            if on_frame is not None:
                on_frame(frame)
            bar.update(1)
            if frame.skip is None and frame.result is not None and len(frame.predictions):
                evaluated += 1
                correct += bool(np.linalg.norm(localizer.database.utm[frame.predictions[0]] - frame.gt_utm)
                                <= threshold_m)
                bar.set_postfix_str(f"R@1 {100.0 * correct / evaluated:.1f}%", refresh=False)
        stopped = replay.stopped
    except KeyboardInterrupt:
        interrupted = True
    except BagReadError as exc:
        stopped = str(exc)
    finally:
        bar.close()
        replay.close()
    report = replay.summarize(frames, seconds=time.perf_counter() - start, interrupted=interrupted, stopped=stopped)
    return ReplayResult(report, frames, replay)
