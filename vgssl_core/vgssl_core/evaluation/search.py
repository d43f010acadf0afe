"""Nearest-neighbour search over descriptors: exact and approximate, one distance convention.

Search is exact by default (faiss flat index; GPU faiss when it is installed and a GPU is
visible). With ``metric="ip"`` descriptors are L2-normalised first, so inner-product ranking,
cosine ranking and L2 ranking on the stored descriptors all agree — the saved descriptors
reproduce the retrieval with any of them. Every index answers ``search(queries, k)`` with
``(distances, indices)``: Euclidean distances between the descriptors as searched, nearest
first, so ratios of distances mean the same whichever index produced them. Used by
``vgssl eval``, the map database (localization, replay, the node), triplet mining and Grad-CAM.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from vgssl_core.errors import VgsslError
from vgssl_core.options import fill_defaults

METRICS = ("ip", "l2")
INDEX_TYPES = ("flat", "ivfpq", "hnsw")


def prepare(desc: np.ndarray, metric: str) -> np.ndarray:
    """Descriptors as searched: float32, C-contiguous, L2-normalised for ``ip``."""
    if metric not in METRICS:
        raise VgsslError(f"unknown metric '{metric}'; valid: {', '.join(METRICS)}")
    x = np.ascontiguousarray(desc, dtype=np.float32)
    if x.ndim != 2:
        raise VgsslError(f"descriptors must be a 2-D array (N, D), got shape {x.shape}")
    if metric == "ip":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(x, dtype=np.float32)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class ExactIndex:
    """A faiss flat index over prepared descriptors, on the GPU when faiss can use one."""

    def __init__(self, db_desc: np.ndarray, metric: str = "ip", use_gpu: bool | None = None) -> None:
        self.metric = metric
        self.db = prepare(db_desc, metric)
        dim = self.db.shape[1]
        index = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        if (gpu_available() if use_gpu is None else use_gpu):
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, 0, index)
        index.add(self.db)
        self.index = index

    def __len__(self) -> int:
        return self.db.shape[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices) of the top-k, nearest first: Euclidean distances between the descriptors
        as searched (for ``ip`` on unit vectors ``sqrt(2 - 2 cos)``), whatever the index computes inside."""
        q = prepare(queries, self.metric)
        if q.shape[1] != self.db.shape[1]:
            raise VgsslError(f"query descriptors have dimension {q.shape[1]}, database has {self.db.shape[1]}")
        k = min(int(k), len(self))
        raw, idx = self.index.search(q, k)
        return to_distance(raw, self.metric, squared_l2=self.metric == "l2"), idx


def to_distance(raw: np.ndarray, metric: str, *, squared_l2: bool) -> np.ndarray:
    """faiss output -> Euclidean descriptor distances, float64: squared L2 (``squared_l2``) or, for
    a flat inner-product index over unit vectors, the similarity ``s`` as ``sqrt(2 - 2 s)``."""
    raw = np.asarray(raw, dtype=np.float64)
    squared = raw if squared_l2 else 2.0 - 2.0 * raw
    return np.sqrt(np.maximum(squared, 0.0))


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
    spec = {"type": kind, **fill_defaults(given, INDEX_PARAMS[kind], f"index '{kind}' parameter")}
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

    ``search`` returns (distances, indices) nearest first, as ``ExactIndex`` does; where the index
    finds fewer than k, indices are -1 and distances inf.
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
        distances = np.sqrt(np.maximum(squared.astype(np.float64), 0.0))
        distances[idx < 0] = np.inf
        return distances, idx

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


