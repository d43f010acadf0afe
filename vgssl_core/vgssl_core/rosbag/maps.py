"""Maps from bags (``vgssl build-db --bag``): which frames of a mapping drive make its database."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vgssl_core.errors import VgsslError
from vgssl_core.rosbag.bags import IMAGE_TYPES, NAVSATFIX, BagReader, ImageFrame
from vgssl_core.rosbag.gnss import MAX_GAP_S, GnssTrack


# --- maps from bags (vgssl build-db --bag) -------------------------------------------------
@dataclass
class BagSelection:
    """The frames of a mapping bag that go into a database, and why the others do not."""

    indices: list[int]  # positions on the image topic
    stamps_ns: list[int]
    utm: np.ndarray  # (K, 2) in the track's zone
    zone: int | None
    letter: str | None
    skipped: dict[str, int]
    n_images: int
    gnss: dict[str, Any]


def select_mapping_frames(bag: BagReader, image_topic: str, gnss_topic: str, *, max_gap_s: float = MAX_GAP_S,
                          min_spacing_m: float = 0.0, track: GnssTrack | None = None,
                          on_frame: Callable[[ImageFrame, np.ndarray], None] | None = None) -> BagSelection:
    """The frames of a mapping bag that make its database: those with a GNSS position (interpolated
    within ``max_gap_s``), that decode, and that lie at least ``min_spacing_m`` from the previously
    kept frame. Candidates are decoded once here to check them; the rest are never decoded.

    ``track``: the GNSS track to use (e.g. projected into another drive's zone; default: read from
    ``gnss_topic``). ``on_frame(frame, utm)`` sees every kept frame while it is decoded (write it)."""
    if min_spacing_m < 0:
        raise VgsslError(f"--min-spacing must be >= 0 m, got {min_spacing_m}")
    if not max_gap_s > 0:
        raise VgsslError(f"--max-gap must be > 0 s, got {max_gap_s}")
    if track is None:
        track = GnssTrack.from_fixes(bag.gnss_fixes(gnss_topic))
    if len(track) == 0:
        raise VgsslError(f"{bag.path}: GNSS topic '{gnss_topic}' has no usable fix ({track.counts})")
    skipped: Counter = Counter()
    indices, stamps, positions = [], [], []
    pending: dict[int, np.ndarray] = {}

    def candidate(index: int, stamp_ns: int) -> bool:
        pos, reason = track.at(stamp_ns, max_gap_s)
        if reason:
            skipped[reason] += 1
            return False
        if positions and min_spacing_m > 0 and np.linalg.norm(pos - positions[-1]) < min_spacing_m:
            skipped["min_spacing"] += 1
            return False
        pending[index] = pos
        return True

    n_images = bag.message_count(image_topic)
    for frame in bag.image_frames(image_topic, select=candidate):
        if frame.error is not None:
            skipped[frame.error_kind] += 1
            continue
        indices.append(frame.index)
        stamps.append(frame.stamp_ns)
        positions.append(pending.pop(frame.index))
        if on_frame is not None:
            on_frame(frame, positions[-1])
    if bag.missing(image_topic):  # announced by the bag's index, never read: say so, never a silent map
        skipped["unreadable_in_bag"] = bag.missing(image_topic)
    utm = np.array(positions, dtype=np.float64).reshape(-1, 2)
    return BagSelection(indices, stamps, utm, track.zone, track.letter, dict(sorted(skipped.items())), n_images,
                        track.summary())


def mapping_frames(bag: BagReader, image_topic: str, indices: Sequence[int]) -> Iterator[np.ndarray]:
    """RGB frames at ``indices`` of the image topic, decoded one at a time (a generator)."""
    wanted = set(indices)
    for frame in bag.image_frames(image_topic, select=lambda index, _stamp: index in wanted):
        if frame.index not in wanted:  # a corrupt message comes through unselected
            continue
        if frame.rgb is None:
            raise VgsslError(f"{bag.path}: frame {frame.index} of {image_topic} no longer decodes ({frame.error})")
        yield frame.rgb


def build_database_from_bag(model, cfg: dict[str, Any], ckpt_path: str | Path, bag_path: str | Path, out: str | Path, *,
                            image_topic: str | None = None, gnss_topic: str | None = None,
                            max_gap_s: float = MAX_GAP_S, min_spacing_m: float = 0.0, device=None,
                            batch_size: int = 32, workers: int = 0, progress: bool = True,
                            index: dict[str, Any] | None = None):
    """A map database from a mapping bag: ``(MapDatabase, BagSelection)``.

    Frames are paired with the GNSS interpolated at their header stamps, filtered by
    :func:`select_mapping_frames`, and streamed (decoded one batch at a time, never all in
    memory) through ``mapdb.build_database`` (``index``: its search index spec). Ids are
    ``<topic>@<header stamp ns>``.
    """
    from vgssl_core.localization.database import build_database

    with BagReader(bag_path) as bag:
        image_topic = bag.pick_topic(image_topic, IMAGE_TYPES, "image topic", "--image-topic")
        gnss_topic = bag.pick_topic(gnss_topic, (NAVSATFIX,), "GNSS topic", "--gnss-topic")
        sel = select_mapping_frames(bag, image_topic, gnss_topic, max_gap_s=max_gap_s, min_spacing_m=min_spacing_m)
        if not sel.indices:
            reasons = ", ".join(f"{n} {r}" for r, n in sel.skipped.items()) or "the image topic is empty"
            raise VgsslError(f"{bag.path}: no frame of {image_topic} has a GNSS position ({reasons}); "
                             "check --gnss-topic or raise --max-gap")
        ids = [f"{image_topic}@{s}" for s in sel.stamps_ns]
        seen: Counter = Counter()
        for i, name in enumerate(ids):  # equal header stamps: keep ids unique
            seen[name] += 1
            if seen[name] > 1:
                ids[i] = f"{name}#{sel.indices[i]}"
        source = {"kind": "bag", "path": str(Path(bag_path).absolute()), "storage": bag.storage,
                  "image_topic": image_topic, "gnss_topic": gnss_topic, "max_gap_s": max_gap_s,
                  "min_spacing_m": min_spacing_m, "n_images": sel.n_images, "skipped": sel.skipped}
        db = build_database(model, cfg, ckpt_path, mapping_frames(bag, image_topic, sel.indices), sel.utm, None, ids,
                            sel.zone, sel.letter, out, device=device, source=source, batch_size=batch_size,
                            workers=workers, progress=progress, **({"index": index} if index else {}))
    return db, sel
