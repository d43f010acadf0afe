"""The replay report: ``report.json``, ``report.md``, ``route.png``, ``frames.npz``, and its one-line summary.

Everything here reads a finished :class:`~vgssl_core.rosbag.replay.ReplayResult` (or its plain
report dict); nothing localizes. Shared by ``vgssl replay`` and the ``bag_replay`` node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vgssl_core.io import atomic_path, save_npz, write_json, write_text

# ``result`` below is a ``rosbag.replay.ReplayResult`` (not imported: the replay imports this module).


def pad_rows(rows: Sequence[np.ndarray], width: int, fill: float = -1) -> np.ndarray:
    """Top-N lists as one (Q, width) array; ``fill`` (-1: never a database index) where the database is short."""
    out = np.full((len(rows), width), fill, dtype=np.int64 if fill == -1 else np.float64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r[:width]
    return out


def percentiles(values: np.ndarray, keys: Sequence[str] = ("p50", "p95", "mean", "max")) -> dict[str, float]:
    funcs = {"p50": lambda v: np.percentile(v, 50), "median": np.median, "p95": lambda v: np.percentile(v, 95),
             "mean": np.mean, "max": np.max}
    return {k: round(float(funcs[k](values)), 3) for k in keys}



# --- files ---------------------------------------------------------------------------------
def write_report(result: Any, out_dir: str | Path, *, save_descriptors: bool = False) -> list[Path]:
    """``report.json``, ``report.md``, ``route.png``, ``calibration.png`` and ``frames.npz`` in ``out_dir``;
    the paths written.

    ``frames.npz`` (no pickle) holds per frame: ``index``, ``stamp_ns``, ``evaluated`` (in the
    recall denominator), ``gt_utm`` (NaN when none), ``predictions`` (top-N database indices, -1
    pad) and their ``distances`` (NaN pad), ``fix_utm``, ``fused_index`` (-1 without fusion),
    ``fused_utm``, ``latency_ms``, the frame's own ``confidence`` and ``covariance`` (2 x 2, m^2), and
    ``output_utm`` / ``output_confidence`` / ``output_covariance``: what the live localizer would
    publish for the frame (the fused estimate with fusion on; calibrated with a calibration), and
    ``raw_output_utm`` / ``raw_output_confidence`` / ``raw_output_covariance`` the same before the
    calibration. The evidence a calibration is fitted on (``vgssl calibrate``): the frame's own
    ``agreement``, ``ratio``, ``spread_m`` and ``n_agreeing`` (``estimate_fix``'s), the top-k
    distances (the first ``top_k`` columns of ``distances``), and ``output_error_m`` /
    ``fix_error_m``: the distance of the published fix / the frame's own fix to the GNSS truth
    (NaN without one). With ``save_descriptors`` also ``descriptors`` (as searched), enough to
    recompute the recall.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report, frames = result.report, result.frames
    written = [out / "report.json", out / "report.md", out / "frames.npz"]
    write_json(written[0], report)
    write_text(out / "report.md", report_markdown(report))
    _save_frames(out / "frames.npz", result, save_descriptors)
    if any(f.result is not None for f in frames):
        written.append(plot_route(result, out / "route.png"))
    if (report.get("calibration") or {}).get("raw"):
        written.append(plot_calibration(result, out / "calibration.png"))
    return written


def _save_frames(path: Path, result: Any, save_descriptors: bool) -> None:
    frames, replay = result.frames, result.replay
    width = max(replay.ns)
    nan2 = np.full(2, np.nan)

    def xy(values) -> np.ndarray:
        return np.array([nan2 if v is None else v for v in values], dtype=np.float64).reshape(-1, 2)

    def covariances(results) -> np.ndarray:
        return np.array([np.full((2, 2), np.nan) if r is None else r.covariance for r in results],
                        dtype=np.float64).reshape(-1, 2, 2)

    arrays = {
        "index": np.array([f.index for f in frames], dtype=np.int64),
        "stamp_ns": np.array([f.stamp_ns for f in frames], dtype=np.int64),
        "evaluated": np.array([f.skip is None and f.result is not None for f in frames], dtype=bool),
        "gt_utm": xy(f.gt_utm for f in frames),
        "predictions": pad_rows([f.predictions for f in frames], width),
        "distances": pad_rows([f.distances for f in frames], width, np.nan),
        "fix_utm": xy(f.fix_utm for f in frames),
        "fused_index": np.array([f.fused.index if f.fused else -1 for f in frames], dtype=np.int64),
        "fused_utm": xy((f.fused.easting, f.fused.northing) if f.fused else None for f in frames),
        "latency_ms": np.array([f.latency_s * 1e3 for f in frames], dtype=np.float64),
        # the frame's own confidence and covariance, and those of what the localizer publishes
        "confidence": np.array([f.result.confidence if f.result else np.nan for f in frames], dtype=np.float64),
        "covariance": covariances(f.result for f in frames),
        "output_utm": xy((f.output.estimate.easting, f.output.estimate.northing) if f.output else None
                         for f in frames),
        "output_confidence": np.array([f.output.confidence if f.output else np.nan for f in frames],
                                      dtype=np.float64),
        "output_covariance": covariances(f.output for f in frames),
        "raw_output_utm": xy((f.raw_output.estimate.easting, f.raw_output.estimate.northing) if f.raw_output
                             else None for f in frames),
        "raw_output_confidence": np.array([f.raw_output.confidence if f.raw_output else np.nan for f in frames],
                                          dtype=np.float64),
        "raw_output_covariance": covariances(f.raw_output for f in frames),
    }
    evidence = [f.result.evidence if f.result is not None else None for f in frames]
    for name in ("agreement", "ratio", "spread_m"):
        arrays[name] = np.array([getattr(e, name) if e is not None else np.nan for e in evidence], dtype=np.float64)
    arrays["n_agreeing"] = np.array([int(e.agreeing.sum()) if e is not None else 0 for e in evidence], dtype=np.int64)
    arrays["output_error_m"] = np.linalg.norm(arrays["output_utm"] - arrays["gt_utm"], axis=1)
    arrays["fix_error_m"] = np.linalg.norm(arrays["fix_utm"] - arrays["gt_utm"], axis=1)
    if save_descriptors:
        dim = replay.db.dim
        missing = np.full(dim, np.nan, np.float32)
        arrays["descriptors"] = np.array([missing if f.result is None else f.result.descriptor for f in frames],
                                         dtype=np.float32).reshape(-1, dim)
    save_npz(path, **arrays)


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _row(label: str, r1: float | None, error: dict, latency: dict) -> str:
    return (f"| {label} | {_fmt(r1)} | {error['median']:.1f} | {error['p95']:.1f} | {latency['p50']:.1f} "
            f"| {latency['p95']:.1f} |")


def report_markdown(report: dict[str, Any]) -> str:
    """A human summary of a replay report (the ``report.md`` file)."""
    status = "complete" if report["complete"] else (
        "INTERRUPTED (Ctrl-C): partial, covers the frames processed" if report["interrupted"]
        else f"STOPPED EARLY: {report['stopped']}")
    lines = [
        f"# Replay of {Path(report['bag']).name}", "",
        f"- bag: `{report['bag']}` ({report['storage']}), images `{report['image_topic']}` ({report['image_type']}), "
        f"GNSS `{report['gnss_topic']}`",
        f"- database: `{report['database']}` ({report['n_database']} places), checkpoint `{report['checkpoint']}`, "
        f"device {report['device']}",
        f"- status: {status}",
        f"- frames: {report['n_frames']} evaluated of {report['n_read']} read ({report['n_images']} on the topic, "
        f"every {report['every']}); skipped {report['n_skipped']}"
        + (": " + ", ".join(f"{k} {v}" for k, v in report["skipped"].items()) if report["skipped"] else ""),
        f"- GNSS: {report['gnss']['used']} fixes used of {report['gnss']['received']} "
        f"(no fix {report['gnss']['no_fix']}, invalid {report['gnss']['invalid']}, "
        f"corrupt {report['gnss']['corrupt']}, duplicate {report['gnss']['duplicate']}, "
        f"reordered {report['gnss']['reordered']}), UTM zone {report['gnss']['zone']}{report['gnss']['letter'] or ''}",
        "",
    ]
    if report["recall"]:
        ns = list(report["recall"])
        lines += [f"## Recall@N (%) at {report['threshold_m']:g} m", "",
                  "| threshold (m) | " + " | ".join(f"R@{n}" for n in ns) + " |",
                  "|---:|" + "---:|" * len(ns)]
        for t, rec in report["recall_by_threshold"].items():
            lines.append(f"| {t} | " + " | ".join(f"{rec[n]:.1f}" for n in ns) + " |")
        fusion = report.get("fusion") or {}
        lines += ["", "| | Recall@1 (%) | error median (m) | error p95 (m) | latency p50 (ms) | latency p95 (ms) |",
                  "|---|---:|---:|---:|---:|---:|", _row("single frame", report["recall"].get("1"), report["error_m"],
                                                        report["latency_ms"])]
        if fusion.get("method", "none") != "none":
            lines.append(_row(f"fused ({fusion['method']})", fusion["recall"]["1"], fusion["error_m"],
                              fusion["latency_ms"]))
            lines += ["", f"Fusion adds {fusion['ms']['p50']:.3f} ms per frame at the median "
                          f"(latency x{fusion['latency_ratio_p50']:.3f}); {fusion['resets']} resets."]
    lines += calibration_markdown(report)
    lines += ["", f"{report['frames_per_s'] or 0:.1f} frames/s over {report['seconds']:.1f} s."]
    for w in report["warnings"]:
        lines.append(f"\n**Warning:** {w}")
    return "\n".join(lines) + "\n"


def calibration_markdown(report: dict[str, Any]) -> list[str]:
    """The calibration section of ``report.md``: do the published confidences and covariances hold?"""
    from vgssl_core.localization.calibration import NOMINAL_1SIGMA, NOMINAL_2SIGMA, PRECISION_TARGET

    section = report.get("calibration") or {}
    if not section.get("raw"):
        return []
    lines = ["", f"## Calibration (fix within {section['raw']['threshold_m']:g} m; `calibration.png`)", "",
             "| output | accuracy | ECE | Brier | inside 1-sigma | inside 2-sigma | mean NEES | "
             f"kept at {PRECISION_TARGET:.0%} precision |", "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| nominal | | 0 | | {NOMINAL_1SIGMA:.3f} | {NOMINAL_2SIGMA:.3f} | 2 | |"]
    for label in ("raw", "calibrated"):
        m = section.get(label)
        if m:
            pr = m["precision_recall"]
            lines.append(f"| {label} | {m['accuracy']:.3f} | {m['ece']:.3f} | {m['brier']:.3f} | "
                         f"{m['coverage_1sigma']:.3f} | {m['coverage_2sigma']:.3f} | {m['mean_nees']:.2f} | "
                         f"{pr['kept_at_95_precision']} of {m['n']} ({pr['kept_share_at_95_precision']:.1%}) |")
    if not section.get("calibrated"):
        lines += ["", "Uncalibrated: the confidence ranks fixes but is not a probability, and the covariance is "
                      "not fitted to the errors; fit a calibration with `vgssl calibrate --replay THIS_FOLDER`."]
    return lines


def plot_calibration(result: Any, path: str | Path) -> Path:
    """Reliability diagram and precision / recall of accepting fixes by confidence, raw and calibrated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vgssl_core.localization.calibration import measure

    replay = result.replay
    evaluated = [f for f in result.frames if f.skip is None and f.result is not None]
    gt = np.array([f.gt_utm for f in evaluated]).reshape(-1, 2)
    outputs = {"raw": [f.raw_output for f in evaluated]}
    if replay.calibration is not None:
        outputs["calibrated"] = [f.output for f in evaluated]
    fig, (rel, prc) = plt.subplots(1, 2, figsize=(11, 5))
    rel.plot([0, 1], [0, 1], ":", c="0.5", label="perfect")
    for (label, outs), colour in zip(outputs.items(), ("tab:orange", "tab:blue")):
        utm = np.array([[o.estimate.easting, o.estimate.northing] for o in outs])
        m = measure([o.confidence for o in outs], utm - gt, np.stack([o.covariance for o in outs]), replay.threshold_m)
        bins = [b for b in m["reliability"] if b["n"]]
        rel.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], "o-", c=colour,
                 label=f"{label}: ECE {m['ece']:.3f}, Brier {m['brier']:.3f}")
        pr = m["precision_recall"]
        prc.plot(pr["recall"], pr["precision"], "-", c=colour,
                 label=f"{label}: {pr['kept_at_95_precision']} of {m['n']} kept at 95% precision")
    rel.set(xlabel="confidence (mean of the bin)", ylabel=f"share of fixes within {replay.threshold_m:g} m",
            xlim=(0, 1), ylim=(0, 1), title="reliability")
    prc.axhline(0.95, ls=":", c="0.5")
    prc.set(xlabel="recall (share of the right fixes kept)", ylabel="precision (share of kept fixes right)",
            xlim=(0, 1), ylim=(0, 1.02), title="accepting fixes from a confidence")
    for ax in (rel, prc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_route(result: Any, path: str | Path) -> Path:
    """The ground-truth route and the estimated fixes, green when correct at Recall@1, red when not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    replay, frames, report = result.replay, result.frames, result.report
    evaluated = [f for f in frames if f.skip is None and f.result is not None]
    fused_on = replay.filter is not None and bool(evaluated)
    fig, axes = plt.subplots(1, 2 if fused_on else 1, figsize=(12 if fused_on else 7, 6), squeeze=False)
    db = replay.db.utm
    gt = np.array([f.gt_utm for f in evaluated]).reshape(-1, 2)
    panels = [("single frame", [f.fix_utm for f in evaluated],
               [np.linalg.norm(db[f.predictions[0]] - f.gt_utm) <= replay.threshold_m for f in evaluated],
               (report.get("recall") or {}).get("1"))]
    if fused_on:
        panels.append((f"fused ({replay.fusion_name})", [(f.fused.easting, f.fused.northing) for f in evaluated],
                       [np.linalg.norm(db[f.fused.index] - f.gt_utm) <= replay.threshold_m for f in evaluated],
                       report["fusion"]["recall"]["1"]))
    for ax, (title, fixes, ok, r1) in zip(axes[0], panels):
        ax.scatter(db[:, 0], db[:, 1], s=4, c="0.8", label=f"database ({len(db)})")
        ax.plot(gt[:, 0], gt[:, 1], "-", c="0.3", lw=1, label="ground truth (GNSS)")
        fixes = np.array(fixes, dtype=float).reshape(-1, 2)
        ok = np.array(ok, dtype=bool)
        for mask, colour, label in ((ok, "tab:green", "correct"), (~ok, "tab:red", "wrong")):
            if mask.any():
                ax.scatter(fixes[mask, 0], fixes[mask, 1], s=12, c=colour, label=f"{label} ({int(mask.sum())})")
                for (ex, ey), (gx, gy) in zip(fixes[mask], gt[mask]) if colour == "tab:red" else ():
                    ax.plot([gx, ex], [gy, ey], c=colour, lw=0.4, alpha=0.5)
        ax.set(xlabel="UTM easting (m)", ylabel="UTM northing (m)", aspect="equal",
               title=f"{title}: R@1 {_fmt(r1)}% at {replay.threshold_m:g} m")
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if not report["complete"]:
        why = "interrupted" if report["interrupted"] else str(report["stopped"])
        fig.suptitle(f"partial replay: {why}", color="red")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path




def summary_line(r: dict) -> str:
    """One line: frames, skips, recall, fused recall, error, latency, speed."""
    skipped = ", ".join(f"{n} {k}" for k, n in r["skipped"].items())
    line = f"{Path(r['bag']).name}: {r['n_frames']} frames"
    if skipped:
        line += f" ({r['n_skipped']} skipped: {skipped})"
    if r["recall"]:
        line += f"  {_format_recall({int(n): v for n, v in r['recall'].items()})} at {r['threshold_m']:g} m"
        fusion = r.get("fusion") or {}
        if fusion.get("method", "none") != "none":
            line += f"  fused R@1 {fusion['recall']['1']:.1f}"
        line += f"  error median {r['error_m']['median']:.1f} m"
    if r["latency_ms"]:
        line += f"  latency p50 {r['latency_ms']['p50']:.1f} ms p95 {r['latency_ms']['p95']:.1f} ms"
    if r["frames_per_s"]:
        line += f"  {r['frames_per_s']:.1f} frames/s"
    return line


def _format_recall(recall: dict) -> str:
    return "  ".join(f"R@{n} {r:5.1f}" for n, r in recall.items())
