"""Training datasets from a robot's own drives (``vgssl dataset --bag A --bag B ... --out ROOT``).

Self-supervised GeoPairs need no labels, only positions: a robot that drove the same streets on
different days already holds them in its bags. This module turns bags with a camera topic and a
``NavSatFix`` topic into the benchmark layout that ``vgssl train`` and ``vgssl eval`` read,
``<root>/images/{train,val,test}/{database,queries}/@east@north@zone@letter@lat@lon@...@.jpg``:

* **positions** are the GNSS interpolated at each frame's header stamp (``gnss.GnssTrack``, as
  the replay does), every drive projected into the mapping drive's UTM zone; frames without a
  usable fix are skipped and counted;
* **frames are thinned by distance travelled** (``min_spacing_m``, ``maps.select_mapping_frames``),
  so a robot standing at a light does not fill the set with one place;
* **the database is one drive** (``map_bag``) **and the queries are the others**, so every GeoPair
  joins two different days or conditions;
* **splits are by area**: the plane is cut into ``block_m`` squares on absolute UTM multiples,
  the occupied squares ordered by a hash of their indices (deterministic, no seed) and dealt out
  60 / 20 / 20 % to train / val / test (at least one square each). Then every val frame within
  25 m (``EVAL_RADIUS_M``) of a test frame and every train frame within 25 m of a val or test
  frame is dropped: no train place lies within 25 m of a test place, by construction and checked;
* queries with no database image of their split within 25 m are dropped (nothing to find);
* the dataset is built in a hidden sibling folder and renamed onto ``out`` only when complete,
  so an error or Ctrl-C leaves nothing behind. ``provenance.csv`` says where every image came
  from (bag, topic, stamp, the GNSS fixes used) and ``dataset.json`` holds the manifest.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from scipy.spatial import cKDTree
from tqdm import tqdm

from vgssl_core import __version__
from vgssl_core.data.geo import EVAL_RADIUS_M, TRAIN_RADIUS_M, format_image_name, utm_to_latlon
from vgssl_core.errors import VgsslError
from vgssl_core.io import fsync_dir, write_json, write_text
from vgssl_core.localization.image_codec import encode_compressed
from vgssl_core.rosbag.bags import IMAGE_TYPES, NAVSATFIX, BagReader, ImageFrame
from vgssl_core.rosbag.gnss import MAX_GAP_S, GnssTrack
from vgssl_core.rosbag.maps import select_mapping_frames

GENERATOR = "vgssl dataset"
FORMAT_VERSION = 1
SPLIT_SHARES = (("train", 0.6), ("val", 0.2), ("test", 0.2))
SIDES = {"database": "database", "query": "queries"}
JPEG_QUALITY = 90
DEFAULT_MIN_SPACING_M = 2.0
DEFAULT_BLOCK_M = 100.0
PROVENANCE_FIELDS = ("file", "split", "side", "drive", "bag", "image_topic", "index", "stamp_ns", "gnss_topic",
                     "fix_before_ns", "fix_after_ns", "east", "north", "lat", "lon")


@dataclass
class Drive:
    """One bag: its topics, GNSS track and, once read, its kept frames (staged JPEGs)."""

    number: int
    path: Path
    side: str  # "database" (the mapping drive) or "query"
    image_topic: str
    gnss_topic: str
    track: GnssTrack
    n_images: int
    indices: list[int] = field(default_factory=list)
    stamps_ns: list[int] = field(default_factory=list)
    fixes_ns: list[tuple[int, int]] = field(default_factory=list)  # the GNSS stamps interpolated between
    staged: list[Path] = field(default_factory=list)
    utm: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    skipped: dict[str, int] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None  # (width, height) as recorded


def _check_gnss(path: Path, topic: str, track: GnssTrack) -> None:
    """A one-line error for a GNSS stream with nothing usable (saying which way it is unusable)."""
    if len(track):
        return
    c = track.counts
    if c["received"] == 0:
        raise VgsslError(f"{path}: GNSS topic '{topic}' has no messages; record the receiver or name another "
                         "--gnss-topic")
    if c["no_fix"] == c["received"]:
        raise VgsslError(f"{path}: all {c['received']} NavSatFix messages on '{topic}' are NO_FIX (the receiver "
                         "never had a fix); these frames have no position to train on")
    raise VgsslError(f"{path}: GNSS topic '{topic}' has no usable fix ({c['no_fix']} NO_FIX, {c['invalid']} invalid, "
                     f"{c['corrupt']} unreadable of {c['received']})")


def _open_drives(bags: Sequence[Path], map_bag: Path, image_topic: str | None,
                 gnss_topic: str | None) -> list[Drive]:
    """Every drive checked (topics, GNSS) before any image is decoded; the map's zone for all."""
    ordered = [map_bag] + [b for b in bags if b != map_bag]
    drives: list[Drive] = []
    zone = letter = None
    for number, path in enumerate(ordered):
        with BagReader(path) as bag:
            image = bag.pick_topic(image_topic, IMAGE_TYPES, "image topic", "--image-topic")
            gnss = bag.pick_topic(gnss_topic, (NAVSATFIX,), "GNSS topic", "--gnss-topic")
            n_images = bag.message_count(image)
            if n_images == 0:
                raise VgsslError(f"{path}: image topic '{image}' has no messages")
            track = GnssTrack.from_fixes(bag.gnss_fixes(gnss), zone=zone, letter=letter)
            _check_gnss(path, gnss, track)
        zone, letter = track.zone, track.letter
        drives.append(Drive(number, path, "database" if number == 0 else "query", image, gnss, track, n_images))
    return drives


def _bracket(track: GnssTrack, stamp_ns: int) -> tuple[int, int]:
    """The stamps of the fixes a frame's position was interpolated between (equal when exact)."""
    ts = track.stamps_ns
    hi = int(np.searchsorted(ts, stamp_ns, side="left"))
    if hi < len(ts) and ts[hi] == stamp_ns:
        return int(ts[hi]), int(ts[hi])
    return int(ts[hi - 1]), int(ts[hi])


def _read_drive(drive: Drive, staging: Path, *, size: tuple[int, int] | None, min_spacing_m: float,
                max_gap_s: float, quality: int, bar: tqdm) -> None:
    """Decode the drive's kept frames once, writing each as a JPEG into ``staging``."""
    folder = staging / f"d{drive.number}"
    folder.mkdir(parents=True)

    def write(frame: ImageFrame, _utm: np.ndarray) -> None:
        rgb = frame.rgb
        drive.image_size = drive.image_size or (rgb.shape[1], rgb.shape[0])
        if size is not None and (rgb.shape[1], rgb.shape[0]) != tuple(size):
            rgb = cv2.resize(rgb, tuple(size), interpolation=cv2.INTER_AREA)
        path = folder / f"{frame.index}.jpg"
        path.write_bytes(encode_compressed(rgb, "jpeg", quality))
        drive.staged.append(path)
        drive.fixes_ns.append(_bracket(drive.track, frame.stamp_ns))
        bar.update(1)

    with BagReader(drive.path) as bag:
        sel = select_mapping_frames(bag, drive.image_topic, drive.gnss_topic, max_gap_s=max_gap_s,
                                    min_spacing_m=min_spacing_m, track=drive.track, on_frame=write)
    drive.indices, drive.stamps_ns, drive.utm, drive.skipped = sel.indices, sel.stamps_ns, sel.utm, sel.skipped
    if not sel.indices:
        reasons = ", ".join(f"{n} {r}" for r, n in sel.skipped.items())
        raise VgsslError(f"{drive.path}: no frame of {drive.image_topic} has a GNSS position ({reasons}); "
                         "check --gnss-topic or raise --max-gap")


def assign_blocks(utm: np.ndarray, block_m: float) -> tuple[np.ndarray, dict[tuple[int, int], str]]:
    """(split name per row, split of every occupied block): blocks of ``block_m`` metres on absolute
    UTM multiples, ordered by a hash of their indices and dealt out by ``SPLIT_SHARES``, test first.

    Deterministic (no seed, no dependence on the order of frames); a split gets at least one block
    when there are three or more. Fewer blocks leave later splits empty (the caller says so).
    """
    cells = np.floor(np.asarray(utm, float) / block_m).astype(np.int64)
    keys = sorted({(int(x), int(y)) for x, y in cells}, key=lambda c: (zlib.crc32(f"{c[0]},{c[1]}".encode()), c))
    n = len(keys)
    counts = {name: max(1, round(share * n)) for name, share in SPLIT_SHARES if name != "train"}
    order = ["test"] * counts["test"] + ["val"] * counts["val"]
    order += ["train"] * max(n - len(order), 0)
    split_of = {key: order[i] if i < len(order) else "train" for i, key in enumerate(keys)}
    rows = np.array([split_of[(int(x), int(y))] for x, y in cells], dtype=object)
    return rows, split_of


def _near(points: np.ndarray, others: np.ndarray, radius_m: float) -> np.ndarray:
    """Rows of ``points`` within ``radius_m`` of any row of ``others``."""
    if len(points) == 0 or len(others) == 0:
        return np.zeros(len(points), bool)
    dist, _ = cKDTree(others).query(points, k=1, distance_upper_bound=radius_m + 1e-9)
    return np.isfinite(dist)


def buffer_zones(utm: np.ndarray, splits: np.ndarray, radius_m: float = EVAL_RADIUS_M) -> np.ndarray:
    """Rows to drop so that no train frame lies within ``radius_m`` of a val or test frame and no
    val frame within ``radius_m`` of a test frame (test keeps every frame)."""
    drop = np.zeros(len(utm), bool)
    test = splits == "test"
    val = (splits == "val") & ~_near(utm, utm[test], radius_m)
    drop |= (splits == "val") & ~val
    train = splits == "train"
    drop |= train & _near(utm, utm[test | val], radius_m)
    return drop


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VgsslError(f"{out}: exists and is not an empty folder; choose a new --out (nothing is overwritten)")


def make_dataset(bags: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 map_bag: str | os.PathLike | None = None, image_topic: str | None = None,
                 gnss_topic: str | None = None, min_spacing_m: float = DEFAULT_MIN_SPACING_M,
                 block_m: float = DEFAULT_BLOCK_M, size: tuple[int, int] | None = None,
                 max_gap_s: float = MAX_GAP_S, quality: int = JPEG_QUALITY, progress: bool = True) -> dict[str, Any]:
    """Write a benchmark-format dataset from drives; returns the manifest (also ``dataset.json``).

    ``map_bag`` (default: the first of ``bags``; added to them when not among them) gives the
    database, every other bag the queries. ``size`` (width, height) resizes the JPEGs (default:
    as recorded). Raises a one-line ``VgsslError`` before writing anything for a bag without images
    or GNSS, a GNSS stream of NO_FIX only, or bad options; after reading, for drives that never come
    within 10 m of the map or too short to split (and then nothing is left behind).
    """
    start = time.perf_counter()
    paths = [Path(b) for b in bags]
    map_path = Path(map_bag) if map_bag is not None else (paths[0] if paths else None)
    if map_path is not None and all(p.resolve() != map_path.resolve() for p in paths):
        paths.insert(0, map_path)
    if len({p.resolve() for p in paths}) != len(paths):
        raise VgsslError("the same bag is given twice; each --bag must be a different drive")
    if len(paths) < 2:
        raise VgsslError("need at least two drives: one for the database (--map) and one or more for the queries")
    if not min_spacing_m >= 0:
        raise VgsslError(f"--min-spacing must be >= 0 m, got {min_spacing_m}")
    if not (block_m > 0 and np.isfinite(block_m)):
        raise VgsslError(f"--block must be > 0 m, got {block_m}")
    if not 1 <= int(quality) <= 100:
        raise VgsslError(f"JPEG quality must be in 1..100, got {quality}")
    if size is not None and not (8 <= size[0] <= 8192 and 8 <= size[1] <= 8192):
        raise VgsslError(f"--size {size[0]}x{size[1]} out of range; use 8..8192 pixels a side, e.g. 160x120")
    out = Path(out)
    _check_out(out)
    drives = _open_drives(paths, next(p for p in paths if p.resolve() == map_path.resolve()), image_topic, gnss_topic)
    zone, letter = drives[0].track.zone, drives[0].track.letter

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    try:
        manifest = _build(drives, tmp, zone=zone, letter=letter, size=size, min_spacing_m=min_spacing_m,
                          block_m=block_m, max_gap_s=max_gap_s, quality=int(quality), progress=progress)
        manifest["seconds"] = round(time.perf_counter() - start, 3)
        write_json(tmp / "dataset.json", manifest)
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"root": str(out), **manifest}


def _build(drives: list[Drive], tmp: Path, *, zone: int, letter: str, size, min_spacing_m: float, block_m: float,
           max_gap_s: float, quality: int, progress: bool) -> dict[str, Any]:
    staging = tmp / ".staging"
    total = sum(d.n_images for d in drives)
    with tqdm(total=total, desc="dataset", unit="frame", disable=not progress, leave=False) as bar:
        for drive in drives:
            _read_drive(drive, staging, size=size, min_spacing_m=min_spacing_m, max_gap_s=max_gap_s,
                        quality=quality, bar=bar)

    db = drives[0].utm
    queries = np.concatenate([d.utm for d in drives[1:]])
    nearest, _ = cKDTree(db).query(queries, k=1)
    if not (nearest <= TRAIN_RADIUS_M).any():
        names = ", ".join(str(d.path) for d in drives[1:])
        raise VgsslError(f"the drives never overlap: no frame of {names} lies within {TRAIN_RADIUS_M:g} m of a frame "
                         f"of the map drive {drives[0].path} (closest {nearest.min():.0f} m); record drives along "
                         "the same streets")

    # one row per kept frame of every drive
    drive_of = np.concatenate([np.full(len(d.indices), d.number) for d in drives])
    row_in_drive = np.concatenate([np.arange(len(d.indices)) for d in drives])
    utm = np.concatenate([d.utm for d in drives])
    is_db = drive_of == 0
    splits, blocks = assign_blocks(utm, block_m)
    dropped: Counter = Counter()
    keep = ~buffer_zones(utm, splits)
    for s in np.unique(splits[~keep]):
        dropped[f"{s}_buffer"] = int(((splits == s) & ~keep).sum())
    for name, _ in SPLIT_SHARES:  # queries with nothing of the map to find within 25 m
        in_split = keep & (splits == name)
        lonely = in_split & ~is_db & ~_near(utm, utm[in_split & is_db], EVAL_RADIUS_M)
        if lonely.any():
            dropped[f"{name}_query_without_map"] = int(lonely.sum())
        keep &= ~lonely
    counts = {name: {"database": int((keep & is_db & (splits == name)).sum()),
                     "queries": int((keep & ~is_db & (splits == name)).sum())} for name, _ in SPLIT_SHARES}
    empty = [f"{n} {side}" for n, c in counts.items() for side, k in c.items() if k == 0]
    if empty:
        raise VgsslError(f"the drives are too short to split into train/val/test by {block_m:g} m blocks "
                         f"({len(blocks)} block(s) visited; empty: {', '.join(empty)}); record longer drives or "
                         "lower --block")
    _check_separation(utm[keep], splits[keep])

    rows = []
    for r in np.flatnonzero(keep):
        drive = drives[drive_of[r]]
        i = row_in_drive[r]
        side = "database" if is_db[r] else "query"
        east, north = (float(v) for v in utm[r])
        lat, lon = utm_to_latlon(east, north, zone, letter)
        name = format_image_name(east, north, zone, letter, lat, lon, note=f"d{drive.number}f{drive.indices[i]}")
        rel = Path("images") / splits[r] / SIDES[side] / name
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(drive.staged[i], tmp / rel)
        before, after = drive.fixes_ns[i]
        rows.append({"file": rel.as_posix(), "split": splits[r], "side": side, "drive": drive.number,
                     "bag": str(drive.path.absolute()), "image_topic": drive.image_topic,
                     "index": drive.indices[i], "stamp_ns": drive.stamps_ns[i], "gnss_topic": drive.gnss_topic,
                     "fix_before_ns": before, "fix_after_ns": after, "east": f"{east:.3f}", "north": f"{north:.3f}",
                     "lat": f"{lat:.8f}", "lon": f"{lon:.8f}"})
    shutil.rmtree(staging)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=PROVENANCE_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(tmp / "provenance.csv", text.getvalue())
    return {
        "generator": GENERATOR, "format_version": FORMAT_VERSION, "vgssl_version": __version__,
        "zone": zone, "letter": letter, "splits": counts, "dropped": dict(sorted(dropped.items())),
        "block_m": block_m, "buffer_m": EVAL_RADIUS_M, "min_spacing_m": min_spacing_m, "max_gap_s": max_gap_s,
        "image_size": list(size) if size else None, "jpeg_quality": quality,
        "blocks": [{"east": k[0] * block_m, "north": k[1] * block_m, "split": s} for k, s in sorted(blocks.items())],
        "drives": [{"bag": str(d.path.absolute()), "side": d.side, "image_topic": d.image_topic,
                    "gnss_topic": d.gnss_topic, "n_images": d.n_images, "kept": len(d.indices),
                    "skipped": d.skipped, "recorded_size": list(d.image_size) if d.image_size else None,
                    "gnss": d.track.summary()} for d in drives],
    }


def _check_separation(utm: np.ndarray, splits: np.ndarray) -> None:
    """The promise of the split, checked on what is written: no train frame within 25 m of a test frame."""
    train, test = utm[splits == "train"], utm[splits == "test"]
    if _near(train, test, EVAL_RADIUS_M).any():
        raise AssertionError("a train frame lies within 25 m of a test frame after the buffer; this is a bug")
