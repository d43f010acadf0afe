"""Nearest-neighbour search over descriptors and Recall@N, the one implementation of each.

Search is exact by default (faiss flat index; GPU faiss when it is installed and a GPU is
visible). With ``metric="ip"`` descriptors are L2-normalised first, so inner-product ranking,
cosine ranking and L2 ranking on the stored descriptors all agree — the saved descriptors
reproduce the retrieval with any of them.

Recall@N follows the deep visual geo-localization benchmark: a query is correct at N when
any of its top-N database images lies within the threshold (25 m) of it; the denominator is
every query, including those with no database image within the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from scipy.spatial import cKDTree

from .errors import VgsslError

METRICS = ("ip", "l2")
DEFAULT_NS = (1, 5, 10, 20)


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
        """(scores, indices) of the top-k, best first; scores are similarities for ip, squared L2 for l2."""
        q = prepare(queries, self.metric)
        if q.shape[1] != self.db.shape[1]:
            raise VgsslError(f"query descriptors have dimension {q.shape[1]}, database has {self.db.shape[1]}")
        k = min(int(k), len(self))
        scores, idx = self.index.search(q, k)
        return scores, idx


def ground_truth(db_utm: np.ndarray, q_utm: np.ndarray, threshold_m: float) -> list[np.ndarray]:
    """Database indices within ``threshold_m`` of each query."""
    hits = cKDTree(np.asarray(db_utm, float)).query_ball_point(np.asarray(q_utm, float), r=threshold_m)
    return [np.array(h, dtype=np.int64) for h in hits]


def recall_at_n(predictions: np.ndarray, positives: list[np.ndarray], ns=DEFAULT_NS) -> dict[int, float]:
    """Percent of all queries with a true positive among their first N predictions."""
    n_queries = len(positives)
    if n_queries == 0:
        raise VgsslError("no queries to evaluate")
    predictions = np.asarray(predictions).reshape(n_queries, -1)
    first_hit = np.full(n_queries, np.iinfo(np.int64).max, dtype=np.int64)
    for i, (pred, pos) in enumerate(zip(predictions, positives)):
        hit = np.flatnonzero(np.isin(pred, pos))
        if hit.size:
            first_hit[i] = hit[0]
    return {int(n): float(100.0 * np.mean(first_hit < n)) for n in ns}


@dataclass
class RetrievalResult:
    """Everything a report needs: rankings, their scores, and recall at each N and threshold."""

    predictions: np.ndarray  # (Q, K) database indices, best first
    scores: np.ndarray  # (Q, K)
    recall: dict[int, float]  # N -> percent at threshold_m
    threshold_m: float
    recall_by_threshold: dict[float, dict[int, float]]


def evaluate_retrieval(
    db_desc: np.ndarray,
    q_desc: np.ndarray,
    db_utm: np.ndarray,
    q_utm: np.ndarray,
    *,
    metric: str = "ip",
    ns=DEFAULT_NS,
    threshold_m: float = 25.0,
    extra_thresholds=(),
) -> RetrievalResult:
    """Search every query and compute Recall@N at ``threshold_m`` (and at any extra thresholds)."""
    if len(db_desc) == 0:
        raise VgsslError("the database is empty")
    index = ExactIndex(db_desc, metric)
    scores, predictions = index.search(q_desc, max(ns))
    by_threshold = {}
    for t in sorted({float(threshold_m), *map(float, extra_thresholds)}):
        by_threshold[t] = recall_at_n(predictions, ground_truth(db_utm, q_utm, t), ns)
    return RetrievalResult(predictions, scores, by_threshold[float(threshold_m)], float(threshold_m), by_threshold)
