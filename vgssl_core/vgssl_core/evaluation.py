"""``vgssl eval``: a descriptor model on a split, as the VG benchmark measures it.

Loads the model from a checkpoint alone (its config travels inside) or builds the untrained
default descriptor, extracts database and query descriptors, searches exactly and reports
Recall@N at 25 m with every query in the denominator. The JSON and the descriptor archive are
the contract other tools check against (the npz holds descriptors exactly as searched).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checkpoint import descriptor_weights, read_checkpoint
from .dataset import EVAL_RADIUS_M, GeoSplit
from .descriptors import extract_descriptors
from .errors import VgsslError
from .models import build_model, resolve_model_config
from .models.weights import sha256_file
from .retrieval import DEFAULT_NS, RetrievalResult, evaluate_retrieval, prepare

PLOT_THRESHOLDS_M = (5.0, 10.0, 15.0, 25.0, 50.0, 100.0)


def load_descriptor_model(
    ckpt: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """(model in eval mode, its config, a one-line note on where the weights came from)."""
    if ckpt is None:
        cfg = resolve_model_config(overrides)
        # Without ImageNet weights the untrained descriptor is a random network: seed it, so the
        # baseline every table compares against is the same network in every run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(cfg)
        return model.eval(), cfg, getattr(model, "init_note", "untrained descriptor")
    raw = read_checkpoint(ckpt)
    cfg, state = descriptor_weights(raw)
    trained_from = resolve_model_config(cfg)["weights"]
    # Weights come from the checkpoint: never fetch or look for ImageNet weights again.
    cfg = resolve_model_config({**cfg, "weights": "random"})
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VgsslError(
            f"{ckpt}: weights do not match the model config stored in it "
            f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
        )
    model.init_info = {"init": "checkpoint", "file": str(ckpt), "sha256": sha256_file(ckpt),
                       "step": raw.get("global_step"), "trained_from": trained_from}
    return model.eval(), cfg, f"checkpoint {Path(ckpt).name} (step {raw.get('global_step', '?')})"


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
    np.savez(path, db_desc=db_desc, q_desc=q_desc, db_utm=split.database.utm, q_utm=split.queries.utm)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    if path.is_dir():
        raise VgsslError(f"{path}: is a folder; give a file path for the JSON")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def plot_recalls(report: dict[str, Any], out_prefix: str | Path) -> list[Path]:
    """Recall-vs-N and recall-vs-threshold PNGs; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    ns = [int(n) for n in report["recall"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ns, [report["recall"][str(n)] for n in ns], marker="o")
    ax.set(xlabel="N", ylabel=f"Recall@N (%) at {report['threshold_m']:g} m", ylim=(0, 100), xscale="log",
           title=f"{report['split']}: {report['n_queries']} queries")
    ax.grid(alpha=0.3)
    written.append(out_prefix.with_name(out_prefix.name + "recall_vs_n.png"))
    fig.tight_layout()
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    thresholds = sorted(report["recall_by_threshold"], key=float)
    for n in ns:
        ax.plot([float(t) for t in thresholds], [report["recall_by_threshold"][t][str(n)] for t in thresholds],
                marker="o", label=f"R@{n}")
    ax.set(xlabel="threshold (m)", ylabel="recall (%)", ylim=(0, 100), title="recall vs distance threshold")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(out_prefix.with_name(out_prefix.name + "recall_vs_threshold.png"))
    fig.tight_layout()
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written
