"""Recall plots of a ``vgssl eval`` report (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
