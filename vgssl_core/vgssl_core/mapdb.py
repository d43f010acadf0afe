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
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import faiss
import numpy as np
import torch
import utm as utm_lib
from PIL import Image
from tqdm import tqdm

from . import __version__
from .checkpoint import file_sha256
from .dataset import load_image, load_split
from .descriptors import embed_batch, extract_descriptors
from .errors import VgsslError
from .geo import utm_to_latlon
from .retrieval import METRICS, ExactIndex, prepare
from .transforms import eval_transform

FORMAT = "vgssl-mapdb"
FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "ivfpq", "hnsw")
INDEX_FILE = "index.faiss"  # approximate index types only
FILES = ("descriptors.npy", "utm.npy", "latlon.npy", "ids.json", "manifest.json")
PARTIAL = ".partial-"  # hidden sibling folders of a build in progress: .<name>.partial-<pid>-<random>
RETIRED = ".retired-"  # the previous database while the new one is renamed into place

ImageSource = Union[str, os.PathLike, np.ndarray]


# --- descriptors of an image stream --------------------------------------------------------
def rgb_to_pil(rgb: Any) -> Image.Image:
    """An H x W x 3 uint8 RGB array as the PIL image ``eval_transform`` expects.

    Files reach the model as PIL images (``load_image``); taking frames the same way makes a
    camera frame's descriptor bit-identical to that of the same pixels read from a file, and
    checks the frame first: a malformed one is a ``VgsslError`` a node can log and drop.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise VgsslError(f"expected an H x W x 3 uint8 RGB image, got {got}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise VgsslError(f"image is empty ({rgb.shape[1]} x {rgb.shape[0]} pixels)")
    return Image.fromarray(np.ascontiguousarray(rgb))  # flipped views have negative strides


def _as_pil(item: ImageSource) -> Image.Image:
    return rgb_to_pil(item) if isinstance(item, np.ndarray) else load_image(item)


def _batches(items: Iterable[ImageSource], transform, batch_size: int) -> Iterator[torch.Tensor]:
    batch: list[torch.Tensor] = []
    for item in items:
        batch.append(transform(_as_pil(item)))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def describe_images(
    model: torch.nn.Module, images: Iterable[ImageSource], image_size: Sequence[int], device: torch.device, *,
    batch_size: int = 32, workers: int = 0, progress: bool = True, total: int | None = None,
) -> np.ndarray:
    """(N, D) float32 descriptors of image files or RGB arrays, in order, consumed lazily.

    A list of paths goes through ``descriptors.extract_descriptors`` (data-loader workers, and
    bit-identical to ``vgssl eval``); any other iterable, e.g. frames decoded from a bag by a
    generator, is streamed in batches so the frames never have to sit in memory together.
    """
    if isinstance(images, (list, tuple)) and images and all(isinstance(p, (str, os.PathLike)) for p in images):
        return extract_descriptors(model, images, image_size, device, batch_size=batch_size, workers=workers,
                                   progress=progress, desc="database")
    was_training = model.training
    model.eval()
    transform = eval_transform(image_size)
    bar = tqdm(total=total, desc="database", unit="img", disable=not progress, leave=False)
    chunks = []
    for batch in _batches(images, transform, batch_size):
        chunks.append(embed_batch(model, batch, device))
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    if not chunks:
        raise VgsslError("no images to describe")
    return np.concatenate(chunks, axis=0)


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_partials(out: str | Path) -> list[Path]:
    """Leftovers of interrupted builds of ``out`` (their process is gone): safe to delete."""
    out = Path(out)
    stale = []
    for sibling in out.parent.glob(f".{out.name}{PARTIAL}*"):
        pid_text = sibling.name[len(f".{out.name}{PARTIAL}"):].split("-", 1)[0]
        if not (pid_text.isdigit() and _pid_alive(int(pid_text))):
            stale.append(sibling)
    stale.extend(out.parent.glob(f".{out.name}{RETIRED}*"))
    return sorted(stale)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _save_json(path: Path, payload: Any) -> None:
    with open(path, "w") as fh:
        fh.write(json.dumps(payload, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old database is retired first, deleted after."""
    retired = None
    if out.exists():
        retired = out.parent / f".{out.name}{RETIRED}{os.getpid()}-{time.time_ns()}"
        os.replace(out, retired)
    os.replace(tmp, out)
    _fsync_dir(out.parent)
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
    for stale in stale_partials(out):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}{os.getpid()}-", dir=out.parent))
    try:
        _save_npy(tmp / "descriptors.npy", descriptors)
        _save_npy(tmp / "utm.npy", utm)
        _save_npy(tmp / "latlon.npy", latlon)
        _save_json(tmp / "ids.json", list(ids))
        if index is not None:
            _write_faiss_index(tmp / INDEX_FILE, index)
        _save_json(tmp / "manifest.json", manifest)  # last: a folder with a manifest is complete
        _fsync_dir(tmp)
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


# --- approximate search index (huge maps) ---------------------------------------------------
# Exact search costs O(N x D) per query; past a few hundred thousand images an approximate
# faiss index answers in a fraction of that. Both kinds search L2 on the descriptors as stored
# (for ``ip`` these are unit vectors, so the ranking is the inner-product ranking), are trained
# on the database descriptors themselves, and are saved in faiss's own format (no pickle).
INDEX_PARAMS: dict[str, dict[str, Any]] = {
    "flat": {},
    # IVF-PQ (Jegou et al., TPAMI 2011): nlist coarse cells, m sub-quantizers of nbits each; a
    # query scans nprobe cells and the best `rerank` candidates are re-scored exactly against
    # descriptors.npy (memory-mapped: only those rows are read). None: chosen from N and D.
    "ivfpq": {"nlist": None, "m": None, "nbits": 8, "nprobe": 32, "rerank": 64, "train_size": 65536},
    # HNSW (Malkov & Yashunin, TPAMI 2020): M links per node; ef_search candidates per query.
    # A map is tight clusters (consecutive frames of a street look alike) that a sparse graph
    # cannot cross: at 1M x 1024, M=32 / ef_search=128 found the exact top-1 for only 56% of
    # queries (benchmarks/bench_ann.py), hence the dense graph and wide beam.
    "hnsw": {"M": 64, "ef_construction": 128, "ef_search": 512},
}
_ADD_CHUNK = 65536  # rows handed to faiss at a time: the build never copies the whole matrix


def resolve_index_spec(kind: str = "flat", params: dict[str, Any] | None = None, *, n: int | None = None,
                       dim: int | None = None) -> dict[str, Any]:
    """``{"type": kind, **params}`` with defaults filled in and checked; ``n``/``dim`` settle the
    automatic IVF-PQ sizes (nlist about sqrt(N), m = D/16 sub-quantizers, fewer bits on tiny maps)."""
    if kind not in INDEX_TYPES:
        raise VgsslError(f"unknown index type '{kind}'; valid: {', '.join(INDEX_TYPES)}")
    given = {k: v for k, v in (params or {}).items() if v is not None}
    unknown = sorted(set(given) - set(INDEX_PARAMS[kind]))
    if unknown:
        raise VgsslError(f"index '{kind}' has no parameter '{unknown[0]}'; valid: {', '.join(INDEX_PARAMS[kind]) or 'none'}")
    spec = {"type": kind, **INDEX_PARAMS[kind], **given}
    for key, value in spec.items():
        if key != "type" and value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            if not (key == "rerank" and value == 0):
                raise VgsslError(f"index parameter '{key}' must be a positive integer, got {value!r}")
    if kind == "ivfpq" and n is not None and dim is not None:
        n_train = min(n, spec["train_size"])
        if spec["nlist"] is None:
            spec["nlist"] = int(max(1, min(round(np.sqrt(n)), n_train // 39 or 1)))
        if spec["m"] is None:
            spec["m"] = max(d for d in range(1, max(dim // 16, 1) + 1) if dim % d == 0)
        if "nbits" not in given:  # k-means needs at least 2**nbits training points
            spec["nbits"] = int(min(8, max(1, int(np.log2(max(n_train, 2))))))
        if dim % spec["m"]:
            raise VgsslError(f"ivfpq m={spec['m']} must divide the descriptor dimension {dim}; e.g. m={dim // 16 or 1}")
        if spec["nlist"] > n_train:
            raise VgsslError(f"ivfpq nlist={spec['nlist']} needs at least as many training descriptors, "
                             f"the map has {n_train}; lower --nlist")
        if 2 ** spec["nbits"] > n_train:
            raise VgsslError(f"ivfpq nbits={spec['nbits']} needs {2 ** spec['nbits']} training descriptors, "
                             f"the map has {n_train}; lower --pq-nbits")
        spec["nprobe"] = min(spec["nprobe"], spec["nlist"])
    return spec


def build_ann_index(desc: np.ndarray, spec: dict[str, Any], *, seed: int = 0) -> faiss.Index:
    """Train (IVF-PQ) and fill an approximate faiss index over prepared descriptors (N, D)."""
    n, dim = desc.shape
    if spec["type"] == "ivfpq":
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, spec["nlist"], spec["m"], spec["nbits"])
        rows = np.random.default_rng(seed).choice(n, size=min(n, spec["train_size"]), replace=False)
        index.train(np.ascontiguousarray(desc[np.sort(rows)], dtype=np.float32))
    elif spec["type"] == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec["M"])
        index.hnsw.efConstruction = spec["ef_construction"]
    else:
        raise VgsslError(f"index type '{spec['type']}' is exact: use ExactIndex")
    for start in range(0, n, _ADD_CHUNK):
        index.add(np.ascontiguousarray(desc[start:start + _ADD_CHUNK], dtype=np.float32))
    return index


class ApproximateIndex:
    """An IVF-PQ or HNSW faiss index over a map's descriptors; searches like ``ExactIndex``.

    ``search`` returns (scores, indices) best first in ``ExactIndex``'s convention (similarity
    for ``ip``, squared L2 for ``l2``); where the index finds fewer than k, indices are -1.
    IVF-PQ candidates are re-ranked exactly with the stored descriptors.
    """

    def __init__(self, index: faiss.Index, descriptors: np.ndarray, metric: str, spec: dict[str, Any]) -> None:
        self.index, self.descriptors, self.metric, self.spec = index, descriptors, metric, spec
        if spec["type"] == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = int(spec["nprobe"])
        elif spec["type"] == "hnsw":
            index.hnsw.efSearch = int(spec["ef_search"])

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = prepare(queries, self.metric)
        if q.shape[1] != self.index.d:
            raise VgsslError(f"query descriptors have dimension {q.shape[1]}, database has {self.index.d}")
        k = min(int(k), len(self))
        wanted = max(k, int(self.spec.get("rerank", 0)))
        if self.spec["type"] == "hnsw":
            self.index.hnsw.efSearch = max(int(self.spec["ef_search"]), wanted)
        squared, idx = self.index.search(q, wanted)
        if self.spec.get("rerank"):
            squared = self._exact_squared(q, idx)
            order = np.argsort(squared, axis=1, kind="stable")
            squared, idx = np.take_along_axis(squared, order, 1), np.take_along_axis(idx, order, 1)
        squared, idx = squared[:, :k], idx[:, :k]
        missing = idx < 0
        scores = 1.0 - squared / 2.0 if self.metric == "ip" else squared
        scores[missing] = -np.inf if self.metric == "ip" else np.inf
        return scores.astype(np.float32), idx

    def _exact_squared(self, q: np.ndarray, idx: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Exact squared L2 between each query and its candidates (reads only those rows)."""
        squared = np.empty(idx.shape, dtype=np.float32)
        for s in range(0, len(q), chunk):
            part = np.where(idx[s:s + chunk] < 0, 0, idx[s:s + chunk])
            rows, inverse = np.unique(part, return_inverse=True)
            cand = np.asarray(self.descriptors[rows], dtype=np.float32)[inverse.reshape(part.shape)]  # (q, C, D)
            squared[s:s + chunk] = ((cand - q[s:s + chunk, None, :]) ** 2).sum(-1)
        squared[idx < 0] = np.inf
        return squared


def _write_faiss_index(path: Path, index: faiss.Index) -> None:
    faiss.write_index(index, str(path))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


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
        scores, idx = self.index.search(np.atleast_2d(desc), max(1, int(k)))
        return score_to_distance(scores, self.metric), idx

    def latlon_of(self, easting: float, northing: float) -> tuple[float, float]:
        """WGS84 of a UTM point in this database's zone (NaN when the zone is unknown)."""
        if self.zone is None or not self.letter:
            return float("nan"), float("nan")
        try:
            return utm_to_latlon(easting, northing, self.zone, self.letter)
        except utm_lib.error.OutOfRangeError:
            return float("nan"), float("nan")


def score_to_distance(scores: np.ndarray, metric: str) -> np.ndarray:
    """faiss scores -> Euclidean descriptor distances (ip: similarity of unit vectors; l2: squared)."""
    scores = np.asarray(scores, dtype=np.float64)
    squared = 2.0 - 2.0 * scores if metric == "ip" else scores
    return np.sqrt(np.maximum(squared, 0.0))
