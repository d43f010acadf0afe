"""``vgssl eval``: a descriptor model on a split, as the VG benchmark measures it.

Loads the model from a checkpoint alone (its config travels inside) or builds the untrained
default descriptor, extracts database and query descriptors, searches exactly and reports
Recall@N at 25 m with every query in the denominator. The JSON and the descriptor archive are
the contract other tools check against (the npz holds descriptors exactly as searched).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vgssl_core import __version__
from vgssl_core.data.dataset import GeoSplit
from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.evaluation.descriptors import extract_descriptors
from vgssl_core.io import save_npz
from vgssl_core.evaluation.search import prepare
from vgssl_core.evaluation.recall import DEFAULT_NS, RetrievalResult, evaluate_retrieval

PLOT_THRESHOLDS_M = (5.0, 10.0, 15.0, 25.0, 50.0, 100.0)


def describe_split(
    model: torch.nn.Module, cfg: dict[str, Any], split: GeoSplit, device: torch.device,
    *, batch_size: int = 32, workers: int = 0, progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    size = cfg["image_size"]
    db = extract_descriptors(model, split.database.paths, size, device, batch_size=batch_size,
                             workers=workers, progress=progress, desc=f"{split.name} database")
    q = extract_descriptors(model, split.queries.paths, size, device, batch_size=batch_size,
                            workers=workers, progress=progress, desc=f"{split.name} queries")
    return db, q


def evaluate_split(
    model: torch.nn.Module, cfg: dict[str, Any], split: GeoSplit, device: torch.device, *,
    ns=DEFAULT_NS, threshold_m: float = EVAL_RADIUS_M, batch_size: int = 32, workers: int = 0,
    progress: bool = True,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, RetrievalResult]:
    """(report dict, database descriptors as searched, query descriptors as searched, result)."""
    start = time.perf_counter()
    db_raw, q_raw = describe_split(model, cfg, split, device, batch_size=batch_size, workers=workers, progress=progress)
    metric = cfg["metric"]
    db_desc, q_desc = prepare(db_raw, metric), prepare(q_raw, metric)
    result = evaluate_retrieval(db_desc, q_desc, split.database.utm, split.queries.utm, metric=metric, ns=ns,
                                threshold_m=threshold_m, extra_thresholds=PLOT_THRESHOLDS_M)
    report = {
        "recall": {str(n): r for n, r in result.recall.items()},
        "recall_by_threshold": {f"{t:g}": {str(n): r for n, r in rec.items()}
                                for t, rec in result.recall_by_threshold.items()},
        "n_queries": len(split.queries),
        "n_database": len(split.database),
        "threshold_m": float(threshold_m),
        "split": split.name,
        "data": str(split.root),
        "metric": metric,
        "descriptor_dim": int(db_desc.shape[1]),
        "seconds": round(time.perf_counter() - start, 3),
        "vgssl_version": __version__,
    }
    return report, db_desc, q_desc, result


def save_descriptors(path: str | Path, split: GeoSplit, db_desc: np.ndarray, q_desc: np.ndarray) -> None:
    save_npz(path, db_desc=db_desc, q_desc=q_desc, db_utm=split.database.utm, q_utm=split.queries.utm)
