"""The map database a robot localizes against: descriptors of geo-tagged images, and where each was taken.

A database is a folder of plain files, so it can be inspected with numpy and a text editor and
never runs code when loaded (no pickle)::

    descriptors.npy   (N, D) float32, exactly as searched (``retrieval.prepare`` for the metric)
    utm.npy           (N, 2) float64 easting, northing [m] in the zone of the manifest
    latlon.npy        (N, 2) float64 latitude, longitude [deg] (NaN where unknown)
    ids.json          N image ids (file names, bag stamps, ...)
    manifest.json     what built it: checkpoint sha256, model config, metric, UTM zone, source
    index.faiss       approximate indexes only (``index_type`` ivfpq | hnsw): faiss's own format

The descriptors only mean something to the model that computed them, so the manifest names the
checkpoint by its sha256 and :meth:`MapDatabase.load` refuses another checkpoint unless forced.
A build writes into a hidden sibling folder and renames it into place when complete: a crash
leaves at worst a ``.<name>.partial-*`` folder, never a half-written database under the name.

    db = build_database_from_split(model, cfg, "run/last.ckpt", "data/city", "test", "maps/city")
    db = MapDatabase.load("maps/city", expected_ckpt_sha256=file_sha256("run/last.ckpt"))
    distances, indices = db.search(query_descriptors, k=5)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import faiss
import numpy as np
import torch
import utm as utm_lib

from vgssl_core import __version__
from vgssl_core.io import file_sha256, fsync_dir, fsync_file, pid_alive, save_npy, write_json
from vgssl_core.data.dataset import load_split
from vgssl_core.evaluation.descriptors import ImageSource, describe_images
from vgssl_core.errors import VgsslError
from vgssl_core.data.geo import utm_to_latlon
from vgssl_core.evaluation.search import INDEX_TYPES, METRICS, ApproximateIndex, ExactIndex, build_ann_index, prepare, resolve_index_spec

log = logging.getLogger("vgssl")
FORMAT = "vgssl-mapdb"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"  # approximate index types only
FILES = ("descriptors.npy", "utm.npy", "latlon.npy", "ids.json", "manifest.json")
PARTIAL = ".partial-"  # hidden sibling folders of a build in progress: .<name>.partial-<pid>-<random>
RETIRED = ".retired-"  # the previous database while the new one is renamed into place


# --- writing -------------------------------------------------------------------------------
def _is_database(folder: Path) -> bool:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(out: Path) -> None:
    """Replacing a database is a rebuild; anything else in the way is the user's data."""
    if out.is_file():
        raise VgsslError(f"{out}: is a file, not a database folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not _is_database(out):
        raise VgsslError(f"{out}: folder exists and is not a vgssl database; refusing to overwrite it, "
                         "choose another --out or empty it")


def stale_partials(out: str | Path) -> list[Path]:
    """Leftovers of interrupted builds of ``out`` (their process is gone): safe to delete."""
    out = Path(out)
    stale = []
    for sibling in out.parent.glob(f".{out.name}{PARTIAL}*"):
        pid_text = sibling.name[len(f".{out.name}{PARTIAL}"):].split("-", 1)[0]
        if not (pid_text.isdigit() and pid_alive(int(pid_text))):
            stale.append(sibling)
    if out.exists():  # a retired copy is stale only once a database stands under the name again
        stale.extend(out.parent.glob(f".{out.name}{RETIRED}*"))
    return sorted(stale)


def restore_retired(out: str | Path) -> Path | None:
    """Put back the newest complete retired copy of ``out`` when nothing stands under its name.

    A crash between the two renames of :func:`_move_into_place` leaves the previous database
    only as ``.NAME.retired-PID-NS``; this undoes the first rename (None when there is nothing
    to restore, or its writer still runs).
    """
    out = Path(out)
    if out.exists() or not out.parent.is_dir():
        return None
    copies = []
    for sibling in out.parent.glob(f".{out.name}{RETIRED}*"):
        pid_text, _, ns_text = sibling.name[len(f".{out.name}{RETIRED}"):].partition("-")
        if pid_text.isdigit() and pid_alive(int(pid_text)) or not (sibling / "manifest.json").is_file():
            continue
        copies.append((int(ns_text) if ns_text.isdigit() else 0, sibling))
    if not copies:
        return None
    os.replace(max(copies)[1], out)
    fsync_dir(out.parent)
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old database is retired first, deleted after."""
    retired = None
    if out.exists():
        retired = out.parent / f".{out.name}{RETIRED}{os.getpid()}-{time.time_ns()}"
        os.replace(out, retired)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def write_database(
    out: str | Path, descriptors: np.ndarray, utm: np.ndarray, latlon: np.ndarray, ids: Sequence[str],
    manifest: dict[str, Any], index: faiss.Index | None = None,
) -> Path:
    """Write the files into a hidden sibling folder and rename it to ``out`` only when complete."""
    out = Path(out).absolute()
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    restore_retired(out)  # a failed rebuild then still leaves the earlier database
    for stale in stale_partials(out):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}{os.getpid()}-", dir=out.parent))
    try:
        save_npy(tmp / "descriptors.npy", descriptors)
        save_npy(tmp / "utm.npy", utm)
        save_npy(tmp / "latlon.npy", latlon)
        write_json(tmp / "ids.json", list(ids))
        if index is not None:
            _write_faiss_index(tmp / INDEX_FILE, index)
        write_json(tmp / "manifest.json", manifest)  # last: a folder with a manifest is complete
        fsync_dir(tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _coordinates(utm: Any, latlon: Any, n: int, zone: int | None, letter: str | None) -> tuple[np.ndarray, np.ndarray]:
    utm = np.asarray(utm, dtype=np.float64).reshape(-1, 2) if np.size(utm) else np.zeros((0, 2))
    if len(utm) != n:
        raise VgsslError(f"got {n} images but {len(utm)} UTM positions; give one (easting, northing) per image")
    if not np.isfinite(utm).all():
        raise VgsslError("UTM positions must be finite numbers")
    if latlon is None:
        latlon = _latlon_of(utm, zone, letter)
    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    if len(latlon) != n:
        raise VgsslError(f"got {n} images but {len(latlon)} lat/lon positions")
    return np.ascontiguousarray(utm), np.ascontiguousarray(latlon)


def _latlon_of(utm: np.ndarray, zone: int | None, letter: str | None) -> np.ndarray:
    if zone is None or not letter:
        return np.full_like(utm, np.nan)
    try:
        lat, lon = utm_lib.to_latlon(utm[:, 0], utm[:, 1], zone, letter)
    except utm_lib.error.OutOfRangeError:
        return np.full_like(utm, np.nan)
    return np.stack([np.asarray(lat, float), np.asarray(lon, float)], axis=1).reshape(-1, 2)


def build_database(
    model: torch.nn.Module,
    cfg: dict[str, Any],
    ckpt_path: str | Path,
    images: Iterable[ImageSource],
    utm: np.ndarray | Sequence[Sequence[float]],
    latlon: np.ndarray | Sequence[Sequence[float]] | None,
    ids: Sequence[str],
    zone: int | None,
    letter: str | None,
    out: str | Path,
    *,
    device: torch.device | None = None,
    source: dict[str, Any] | None = None,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
    index: dict[str, Any] | None = None,
) -> MapDatabase:
    """Describe ``images`` with ``model`` and write the database folder ``out`` (atomically).

    ``images`` is an iterable of image paths or H x W x 3 uint8 RGB arrays (a generator of
    frames decoded from a bag works, and is consumed once). ``utm`` is (N, 2) easting/northing
    in UTM zone ``zone``/``letter``; ``latlon`` (N, 2) may be None to derive it from UTM.
    ``ckpt_path`` is the checkpoint ``model`` was loaded from: its sha256 ties the database to
    it. ``source`` says where the images came from (it goes into the manifest as is).
    ``index`` picks the search index: None or ``{"type": "flat"}`` (exact), or
    ``{"type": "ivfpq" | "hnsw", **params}`` (see ``INDEX_PARAMS``), trained on these descriptors.
    """
    out = Path(out)
    _check_target(out.absolute())  # fail before the expensive part
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise VgsslError("image ids must be unique")
    metric = cfg.get("metric", "ip")
    if metric not in METRICS:
        raise VgsslError(f"model config metric '{metric}' is not one of {', '.join(METRICS)}")
    device = device or next(model.parameters()).device
    start = time.perf_counter()
    desc = prepare(describe_images(model, images, cfg["image_size"], device, batch_size=batch_size,
                                   workers=workers, progress=progress, total=len(ids)), metric)
    if len(desc) != len(ids):
        raise VgsslError(f"got {len(desc)} images but {len(ids)} ids; give one id per image")
    utm_arr, latlon_arr = _coordinates(utm, latlon, len(desc), zone, letter)
    spec = resolve_index_spec((index or {}).get("type", "flat"), {k: v for k, v in (index or {}).items() if k != "type"},
                              n=len(desc), dim=desc.shape[1])
    ann = None
    if spec["type"] != "flat":
        index_start = time.perf_counter()
        ann = build_ann_index(desc, spec)
        spec["build_seconds"] = round(time.perf_counter() - index_start, 3)
        spec["file"] = INDEX_FILE
    ckpt_path = Path(ckpt_path)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vgssl_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"file": ckpt_path.name, "sha256": file_sha256(ckpt_path)},
        "model_config": dict(cfg),
        "descriptor_dim": int(desc.shape[1]),
        "metric": metric,
        "utm_zone": None if zone is None else int(zone),
        "utm_letter": letter or None,
        "count": int(len(desc)),
        "source": dict(source or {}),
        "index_type": spec["type"],
        **({"index": spec} if ann is not None else {}),
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    return MapDatabase.load(write_database(out, desc, utm_arr, latlon_arr, ids, manifest, ann))


def build_database_from_split(
    model: torch.nn.Module, cfg: dict[str, Any], ckpt_path: str | Path, data_root: str | Path, split: str,
    out: str | Path, *, device: torch.device | None = None, batch_size: int = 32, workers: int = 0,
    progress: bool = True, index: dict[str, Any] | None = None,
) -> MapDatabase:
    """The database side of a dataset split as a map (ids are the image file names)."""
    geo = load_split(data_root, split)
    db = geo.database
    source = {"kind": "dataset", "root": str(Path(data_root).absolute()), "split": split}
    return build_database(model, cfg, ckpt_path, db.paths, db.utm, db.latlon(), db.ids, geo.zone, geo.letter, out,
                          device=device, source=source, batch_size=batch_size, workers=workers, progress=progress,
                          index=index)


def _write_faiss_index(path: Path, index: faiss.Index) -> None:
    # serialised by faiss in memory, written by Python: a full disk is an OSError naming the file
    data = faiss.serialize_index(index)
    try:
        with open(path, "wb") as fh:
            fh.write(data.tobytes())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    fsync_file(path)


def _read_faiss_index(folder: Path, n: int, dim: int) -> faiss.Index:
    path = folder / INDEX_FILE
    if not path.is_file():
        raise VgsslError(f"{folder}: database file '{INDEX_FILE}' is missing; rebuild it with 'vgssl build-db'")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise VgsslError(f"{path}: unreadable faiss index ({str(exc).strip().splitlines()[-1][:160]}); rebuild it") from None
    if index.ntotal != n or index.d != dim:
        raise VgsslError(f"{path}: index holds {index.ntotal} x {index.d} descriptors, the manifest says {n} x {dim}; "
                         "rebuild the database")
    return index


# --- reading -------------------------------------------------------------------------------
def _load_npy(folder: Path, name: str, dtype: type, shape: tuple[int | None, ...], mmap: bool = False) -> np.ndarray:
    path = folder / name
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise VgsslError(f"{folder}: database file '{name}' is missing; rebuild it with 'vgssl build-db'") from None
    except (OSError, ValueError, EOFError) as exc:
        raise VgsslError(f"{path}: unreadable database file ({str(exc).splitlines()[0][:160]}); rebuild it") from None
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape)
    ):
        want = "x".join("?" if s is None else str(s) for s in shape)
        raise VgsslError(f"{path}: expected a {want} {np.dtype(dtype).name} array, got "
                         f"{getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}; rebuild it")
    return array


def _all_finite(array: np.ndarray, rows: int = 65536) -> bool:
    """In blocks of rows: a memory-mapped map is checked without loading it whole."""
    return all(np.isfinite(array[i:i + rows]).all() for i in range(0, len(array), rows))


def _load_json(folder: Path, name: str) -> Any:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VgsslError(f"{folder}: database file '{name}' is missing; rebuild it with 'vgssl build-db'") from None
    except (OSError, ValueError) as exc:
        raise VgsslError(f"{path}: unreadable JSON ({exc}); rebuild the database") from None


def _missing_database(path: Path) -> VgsslError:
    leftovers = stale_partials(path) if path.parent.is_dir() else []
    hint = (f" (an interrupted build left {leftovers[0].name}; run 'vgssl build-db' again)" if leftovers
            else "; build one with 'vgssl build-db --data ROOT --ckpt CKPT --out DB'")
    return VgsslError(f"{path}: no database here{hint}")


def _check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise VgsslError(f"{path}: manifest.json is not a vgssl database manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise VgsslError(f"{path}: database format {version} is newer than this vgssl supports ({FORMAT_VERSION})")
    for key in ("descriptor_dim", "metric", "count", "checkpoint"):
        if key not in manifest:
            raise VgsslError(f"{path}: manifest.json has no '{key}'; rebuild the database")
    if manifest["metric"] not in METRICS:
        raise VgsslError(f"{path}: manifest metric '{manifest['metric']}' is not one of {', '.join(METRICS)}")
    if manifest.get("index_type", "flat") not in INDEX_TYPES:
        raise VgsslError(f"{path}: index type '{manifest['index_type']}' is not supported by this vgssl")
    if manifest.get("index_type", "flat") != "flat":
        spec = manifest.get("index")
        if not isinstance(spec, dict) or spec.get("type") != manifest["index_type"]:
            raise VgsslError(f"{path}: manifest.json has no parameters for its '{manifest['index_type']}' index; rebuild it")
    return manifest


@dataclass
class MapDatabase:
    """A loaded database: row i of every array is database image i."""

    path: Path
    manifest: dict[str, Any]
    descriptors: np.ndarray  # (N, D) float32, as searched
    utm: np.ndarray  # (N, 2) float64
    latlon: np.ndarray  # (N, 2) float64
    ids: list[str]
    _index: ExactIndex | ApproximateIndex | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path, expected_ckpt_sha256: str | None = None, force: bool = False, *,
             ckpt_label: str | None = None) -> MapDatabase:
        """Read and validate a database; refuse one built with another checkpoint unless ``force``.

        ``expected_ckpt_sha256`` is ``checkpoint.file_sha256`` of the checkpoint that will
        describe the queries (None: do not check); ``ckpt_label`` names it in the error.
        """
        path = Path(path)
        if not path.exists() and restore_retired(path) is not None:
            log.warning(f"note: {path} was restored from the copy an interrupted 'vgssl build-db' retired")
        if not (path / "manifest.json").is_file():
            if path.is_dir() and any(path.iterdir()) or path.is_file():
                raise VgsslError(f"{path}: not a vgssl database (no manifest.json); build one with 'vgssl build-db'")
            raise _missing_database(path)
        manifest = _check_manifest(path, _load_json(path, "manifest.json"))
        n, dim = int(manifest["count"]), int(manifest["descriptor_dim"])
        approximate = manifest.get("index_type", "flat") != "flat"
        # a huge map searched approximately is memory-mapped: re-ranking reads only candidate rows
        desc = _load_npy(path, "descriptors.npy", np.float32, (n, dim), mmap=approximate)
        utm = _load_npy(path, "utm.npy", np.float64, (n, 2))
        latlon = _load_npy(path, "latlon.npy", np.float64, (n, 2))
        for name, values in (("descriptors.npy", desc), ("utm.npy", utm)):
            if not _all_finite(values):
                raise VgsslError(f"{path / name}: holds NaN or infinite values; rebuild the database")
        ids = _load_json(path, "ids.json")
        if not isinstance(ids, list) or len(ids) != n or not all(isinstance(i, str) for i in ids):
            raise VgsslError(f"{path / 'ids.json'}: expected a list of {n} strings; rebuild the database")
        db = cls(path, manifest, desc, utm, latlon, ids)
        if approximate:  # read now, so a missing or broken index file fails at load, not at the first query
            spec = {k: v for k, v in manifest["index"].items() if k not in ("build_seconds", "file")}
            db._index = ApproximateIndex(_read_faiss_index(path, n, dim), desc, manifest["metric"], spec)
        if expected_ckpt_sha256 is not None and not force:
            db.check_checkpoint(expected_ckpt_sha256, ckpt_label)
        return db

    def check_checkpoint(self, sha256: str, label: str | None = None) -> None:
        """A descriptor from another model is meaningless against these: say so, and how to fix it."""
        built = self.manifest["checkpoint"]
        if built.get("sha256") != sha256:
            raise VgsslError(
                f"{self.path}: database was built with checkpoint {built.get('file')} "
                f"(sha256 {str(built.get('sha256'))[:12]}), not {label or 'this one'} (sha256 {sha256[:12]}); "
                "rebuild it with 'vgssl build-db' or pass --force"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def metric(self) -> str:
        return self.manifest["metric"]

    @property
    def dim(self) -> int:
        return int(self.descriptors.shape[1])

    @property
    def zone(self) -> int | None:
        return self.manifest.get("utm_zone")

    @property
    def letter(self) -> str | None:
        return self.manifest.get("utm_letter")

    @property
    def index(self) -> ExactIndex | ApproximateIndex:
        """The search index: the saved approximate one, or an exact one built on first use (GPU faiss
        when available)."""
        if self._index is None:
            self._index = ExactIndex(self.descriptors, self.metric)
        return self._index

    def search(self, desc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), each (Q, min(k, N)), nearest first.

        Distances are Euclidean between the descriptors as searched, for either metric (for
        ``ip`` on unit vectors ``sqrt(2 - 2 cos)``): smaller is more similar, the ranking is
        the index's, and ratios of distances compare across databases of the same model.
        """
        return self.index.search(np.atleast_2d(desc), max(1, int(k)))

    def latlon_of(self, easting: float, northing: float) -> tuple[float, float]:
        """WGS84 of a UTM point in this database's zone (NaN when the zone is unknown)."""
        if self.zone is None or not self.letter:
            return float("nan"), float("nan")
        try:
            return utm_to_latlon(easting, northing, self.zone, self.letter)
        except utm_lib.error.OutOfRangeError:
            return float("nan"), float("nan")

