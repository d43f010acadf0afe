"""One camera image -> a geo-localization fix: the single implementation behind ``vgssl localize``,
the ROS ``localizer`` node and the bag replay.

Callers decode their own bytes (``image_codec`` for ROS messages, ``dataset.load_image`` for
files) and hand an H x W x 3 uint8 RGB array to :class:`Localizer`; preprocessing, descriptor,
search and fix estimation happen here, so every caller gets the same fix for the same pixels::

    localizer = Localizer("run/last.ckpt", "maps/city", device="auto", top_k=5)
    result = localizer.localize(rgb)
    result.estimate.latitude, result.estimate.longitude, result.confidence, result.covariance

How the matches become a fix is :func:`~vgssl_core.localization.fix.estimate_fix`, a pure function
of the match distances and positions, tested without a model. A sequence of frames (a camera, a
bag) goes through :class:`~vgssl_core.localization.session.LocalizationSession`, which adds the
temporal fusion.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vgssl_core.io import file_sha256
from vgssl_core.evaluation.descriptors import embed_batch, resolve_device
from vgssl_core.errors import VgsslError
from vgssl_core.localization.fix import AGREE_RADIUS_M, FLOOR_M, FixEstimate, estimate_fix
from vgssl_core.models.loading import load_descriptor_model
from vgssl_core.models.export import is_exported, load_exported
from vgssl_core.localization.database import MapDatabase
from vgssl_core.evaluation.descriptors import rgb_to_pil
from vgssl_core.evaluation.search import prepare
from vgssl_core.data.transforms import eval_transform

# --- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    """One retrieved database image (``vgssl_msgs/PlaceMatch``)."""

    index: int  # row in the database
    id: str
    distance: float  # Euclidean descriptor distance, smaller is more similar
    easting: float
    northing: float
    latitude: float
    longitude: float
    agrees: bool  # within the agreement radius of the best match: supports the estimate


@dataclass(frozen=True)
class Fix:
    """The estimated camera position, in the database's UTM zone and in WGS84."""

    easting: float
    northing: float
    zone: int | None
    letter: str | None
    latitude: float  # NaN when the database has no UTM zone
    longitude: float


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent per stage; in ``localize_batch`` the batch's time divided by its size."""

    preprocess: float
    model: float
    search: float  # search and fix estimation

    @property
    def total(self) -> float:
        return self.preprocess + self.model + self.search


@dataclass
class LocalizationResult:
    """A fix for one image: the ``vgssl_msgs/Localization`` content, without ROS."""

    estimate: Fix
    confidence: float
    covariance: np.ndarray  # (2, 2) [m^2], east/north
    matches: list[Match]  # best first
    timings: StageTimes
    descriptor: np.ndarray = field(repr=False)  # (D,) float32 as searched
    # the search the matches came from, nearest first: ``depth`` deep (>= len(matches)); the
    # replay's Recall@N and the temporal fusion read it, the fix uses only ``matches``
    ranked_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    ranked_distances: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    # what ``estimate_fix`` concluded from ``matches`` (agreement, ratio, spread, uncalibrated
    # confidence): the features a calibration reads; None for results made by hand
    evidence: FixEstimate | None = field(default=None, repr=False)

    @property
    def best(self) -> Match:
        return self.matches[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (NaN becomes None)."""
        return {
            "estimate": {k: _plain(v) for k, v in vars(self.estimate).items()},
            "confidence": self.confidence,
            "covariance": [[float(v) for v in row] for row in self.covariance],
            "matches": [{k: _plain(v) for k, v in vars(m).items()} for m in self.matches],
            "timings": {"preprocess": self.timings.preprocess, "model": self.timings.model,
                        "search": self.timings.search, "total": self.timings.total},
        }


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# --- the localizer -------------------------------------------------------------------------
class Localizer:
    """Model + database, loaded once; RGB arrays in, fixes out.

    The model is moved to ``device`` ("auto": CUDA when torch sees one) and run once on a dummy
    image at start, so the first real frame is not slowed by lazy initialisation. The database
    must have been built with this checkpoint (sha256 in its manifest) unless ``force``.
    Calls are serialised by a lock, so a node may call from several executor threads.

    ``ckpt`` may also be a model exported by ``vgssl export`` (TorchScript or ONNX, with its
    sidecar ``<file>.json``): the sidecar's preprocessing is used and the database check uses
    the sha256 of the checkpoint it was exported from. A TorchScript file runs code when loaded:
    use only your own exports (see ``export``'s trust model); checkpoints never run code.
    """

    def __init__(self, ckpt: str | Path, db: str | Path, *, device: str = "auto", top_k: int = 5,
                 force: bool = False, agree_radius_m: float = AGREE_RADIUS_M, floor_m: float = FLOOR_M) -> None:
        if int(top_k) < 1:
            raise VgsslError(f"top_k must be >= 1, got {top_k}")
        self.top_k = int(top_k)
        self.agree_radius_m, self.floor_m = float(agree_radius_m), float(floor_m)
        self.device = resolve_device(device)
        self.checkpoint = Path(ckpt)
        exported = load_exported(ckpt, self.device) if is_exported(ckpt) else None
        if exported is not None:
            self.model, self.config, self.model_note = exported, exported.config, exported.note
            self.checkpoint_sha256 = exported.checkpoint_sha256
        else:
            self.model, self.config, self.model_note = load_descriptor_model(ckpt)
            self.checkpoint_sha256 = file_sha256(ckpt)
        self.database = MapDatabase.load(db, self.checkpoint_sha256, force, ckpt_label=self.checkpoint.name)
        if exported is not None:
            exported.check_database(self.database.manifest, force)
        self.model.to(self.device)
        self.transform = eval_transform(self.config["image_size"])
        self._lock = threading.Lock()
        self._warm_up()

    def _warm_up(self) -> None:
        """One forward and one search now: CUDA/cuDNN/faiss initialise here, not on the first frame."""
        h, w = self.config["image_size"]
        desc = embed_batch(self.model, torch.zeros(1, 3, h, w), self.device)
        if desc.shape[1] != self.database.dim:
            raise VgsslError(
                f"{self.checkpoint.name} makes {desc.shape[1]}-dimensional descriptors but the database "
                f"{self.database.path} holds {self.database.dim}-dimensional ones; rebuild it with this checkpoint"
            )
        self.database.search(desc, 1)

    @property
    def checkpoint_matches_database(self) -> bool:
        """False when the database was loaded with ``force`` for another checkpoint."""
        return self.database.manifest["checkpoint"].get("sha256") == self.checkpoint_sha256

    def localize(self, rgb: np.ndarray, top_k: int | None = None, *, depth: int = 0) -> LocalizationResult:
        """The fix for one H x W x 3 uint8 RGB image; ``top_k`` overrides the default for this call."""
        return self.localize_batch([rgb], top_k, depth=depth)[0]

    def localize_batch(self, images: Sequence[np.ndarray], top_k: int | None = None, *,
                       depth: int = 0) -> list[LocalizationResult]:
        """Fixes for several images in one forward pass (offline replay); timings are per image.

        The fix and the matches come from the first ``top_k``; the search goes ``max(top_k, depth)``
        deep and the whole ranking is kept in ``ranked_indices`` / ``ranked_distances``.
        """
        if len(images) == 0:
            return []
        k = self.top_k if not top_k else int(top_k)
        with self._lock:
            t0 = time.perf_counter()
            batch = torch.stack([self.transform(rgb_to_pil(rgb)) for rgb in images])
            t1 = time.perf_counter()
            desc = embed_batch(self.model, batch, self.device)  # returns on the CPU: includes the GPU sync
            t2 = time.perf_counter()
            distances, indices = self.database.search(desc, max(k, int(depth)))
            fixes = [self._fix(d[:k], i[:k]) for d, i in zip(distances, indices)]
            t3 = time.perf_counter()
        n = len(images)
        times = StageTimes((t1 - t0) / n, (t2 - t1) / n, (t3 - t2) / n)
        queries = prepare(desc, self.database.metric)
        return [LocalizationResult(fix, est.confidence, est.covariance, matches, times, q, i, d, est)
                for (fix, est, matches), q, i, d in zip(fixes, queries, indices, distances)]

    def _fix(self, distances: np.ndarray, indices: np.ndarray) -> tuple[Fix, FixEstimate, list[Match]]:
        db = self.database
        keep = indices >= 0
        distances, indices = distances[keep], indices[keep]
        est = estimate_fix(distances, db.utm[indices], agree_radius_m=self.agree_radius_m, floor_m=self.floor_m)
        matches = [
            Match(int(i), db.ids[i], float(d), float(db.utm[i, 0]), float(db.utm[i, 1]),
                  float(db.latlon[i, 0]), float(db.latlon[i, 1]), bool(a))
            for i, d, a in zip(indices, distances, est.agreeing)
        ]
        lat, lon = db.latlon_of(est.easting, est.northing)
        fix = Fix(est.easting, est.northing, db.zone, db.letter, lat, lon)
        return fix, est, matches
