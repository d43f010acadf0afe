"""Recall@N as the deep visual geo-localization benchmark measures it, the one implementation.

A query is correct at N when any of its top-N database images lies within the threshold (25 m)
of it; the denominator is every query, including those with no database image within the
threshold. Ground truth is a k-d tree radius query in UTM metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.errors import VgsslError
from vgssl_core.evaluation.search import ExactIndex

DEFAULT_NS = (1, 5, 10, 20)


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
    """Everything a report needs: rankings, their distances, and recall at each N and threshold."""

    predictions: np.ndarray  # (Q, K) database indices, best first
    distances: np.ndarray  # (Q, K) descriptor distances, nearest first
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
    threshold_m: float = EVAL_RADIUS_M,
    extra_thresholds=(),
) -> RetrievalResult:
    """Search every query and compute Recall@N at ``threshold_m`` (and at any extra thresholds)."""
    if len(db_desc) == 0:
        raise VgsslError("the database is empty")
    index = ExactIndex(db_desc, metric)
    distances, predictions = index.search(q_desc, max(ns))
    by_threshold = {}
    for t in sorted({float(threshold_m), *map(float, extra_thresholds)}):
        by_threshold[t] = recall_at_n(predictions, ground_truth(db_utm, q_utm, t), ns)
    return RetrievalResult(predictions, distances, by_threshold[float(threshold_m)], float(threshold_m), by_threshold)
