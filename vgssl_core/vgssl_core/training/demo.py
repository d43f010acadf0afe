"""``vgssl demo``: does training on GeoPairs work? The paper's comparison in miniature, with error bars.

On the built-in synthetic world (or any benchmark-format dataset, ``--data``) it scores the
starting points (the backbone with random weights and with its ImageNet weights, untrained), then
trains SSL methods on GeoPairs and the triplet baseline from the ImageNet backbone with the same
query budget, and scores them on the same test queries. Every R@1 carries a 95 % bootstrap
interval over the queries, and each claim of the paper gets a verdict line from a paired
bootstrap (``demo_stats``): "holds", "reversed" or "not shown". A claim that fails is printed
as failing. Sizes and budgets: README, "The demo".
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vgssl_core.data.dataset import GeoSplit, load_split
from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.errors import VgsslError
from vgssl_core.evaluation.descriptors import resolve_device
from vgssl_core.evaluation.recall import ground_truth
from vgssl_core.evaluation.split import evaluate_split
from vgssl_core.io import write_json
from vgssl_core.models.config import resolve_model_config
from vgssl_core.models.loading import load_descriptor_model
from vgssl_core.training.demo_stats import Verdict, interval, paired_verdict, resample_indices

# (row label, category, preset): two SSL methods on GeoPairs and the supervised baseline, all
# from the same ImageNet backbone (no projection head, so step 0 of every run is the same
# descriptor as the "ImageNet, untrained" row) and the same query budget.
DEMO_RUNS = (
    ("SimCLR + GeoPair", "contrastive SSL", "demo-lite-simclr"),
    ("MoCo v2 + GeoPair", "contrastive SSL", "demo-lite-mocov2"),
    ("Triplet, partial mining", "supervised", "demo-lite-triplet"),
)
TRIPLET_LABEL = "Triplet, partial mining"


def _hits_at_1(report_result, split: GeoSplit) -> np.ndarray:
    """Per query: 1 when its first retrieved database image lies within 25 m."""
    positives = ground_truth(split.database.utm, split.queries.utm, EVAL_RADIUS_M)
    first = report_result.predictions[:, 0]
    return np.array([float(p in pos) for p, pos in zip(first, positives)])


def _score(model, cfg: dict[str, Any], split: GeoSplit, device, *, batch_size: int, workers: int,
           progress: bool) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(eval report, per-query R@1 hits, database descriptors as searched)."""
    report, db_desc, _, result = evaluate_split(model.to(device), cfg, split, device, batch_size=batch_size,
                                                workers=workers, progress=progress)
    return report, _hits_at_1(result, split), db_desc


# What makes two untrained descriptors the same network: a trained run's starting point is the
# untrained row whose model agrees on these (the head too: it is searched when there is one).
START_KEYS = ("backbone", "layer", "aggregation", "image_size", "head_layers", "head_dim", "fc_dim",
              "search_projection", "weights")
SHORT_NAMES = {"efficientnet_lite0": "Lite0", "efficientnet_lite1": "Lite1", "efficientnet_lite2": "Lite2",
               "resnet18": "R18", "resnet50": "R50"}


def start_key(model_cfg: dict[str, Any], weights: str | None = None) -> str:
    """The starting point of a model config (``weights`` replaced when given), as a comparable string."""
    cfg = resolve_model_config({**model_cfg, **({"weights": weights} if weights else {})})
    return json.dumps({k: cfg[k] for k in START_KEYS}, sort_keys=True)


def start_label(model_cfg: dict[str, Any], weights: str) -> str:
    name = SHORT_NAMES.get(model_cfg["backbone"], model_cfg["backbone"])
    init = "ImageNet" if weights == "imagenet" else "random init"
    return f"untrained, {init} ({name}-{model_cfg['layer']}-{str(model_cfg['aggregation']).upper()})"


def _attention(model, cfg: dict[str, Any], root: Path, split: GeoSplit, db_desc: np.ndarray, n: int,
               device) -> dict[str, Any]:
    """Grad-CAM geo share per query (buildings + landmarks), on the same n test queries for every row."""
    from vgssl_core.evaluation.attention import explain_queries, measure_shares, pick_queries

    explained = explain_queries(model, cfg, split, pick_queries(len(split.queries), n), device=device,
                                db_desc=db_desc)
    per_query, summary = measure_shares(root, split.name, explained)
    return {"geo_share": summary["geo_share"], "geo_lift": summary["geo_lift"],
            "per_query_geo": [q["geo_share"] for q in per_query]}


def _train_cfgs(runs: Sequence[tuple[str, str, str]], seed: int, overrides: Sequence[str]) -> list[dict[str, Any]]:
    from vgssl_core.training.config import load_config

    # A fixed budget, tested at its last step: no validation (no checkpoint picked by it, and its
    # evaluations would cost a third of the budget). The demo scores the test split itself (per-query
    # hits for the intervals), so train() skips it.
    fixed = ["trainer.val_split=null", "trainer.test_split=null"]
    return [load_config(preset, [*overrides, f"trainer.seed={seed}", *fixed]) for _, _, preset in runs]


def _train(cfg: dict[str, Any], root: Path, run_dir: Path, label: str, progress: bool) -> dict[str, Any]:
    from vgssl_core.training import train
    from vgssl_core.training.run import read_summary

    summary = read_summary(run_dir)
    stored = run_dir / "config.json"
    same = stored.is_file() and json.loads(stored.read_text()) == json.loads(json.dumps(cfg))
    if summary is not None and same:
        print(f"{label}: reusing {run_dir}")
        return summary
    if run_dir.exists():
        print(f"{label}: {run_dir} is interrupted or was trained with another config; training it again")
        shutil.rmtree(run_dir)
    print(f"\n== training {label} ({cfg.get('name')}) -> {run_dir}")
    return train(cfg, root, run_dir, progress=progress)


def format_table(rows: list[dict[str, Any]], with_attention: bool) -> str:
    width = max(len(r["method"]) for r in rows)
    head = (f"| {'method':<{width}} | {'R@1 [95 % CI]':<19} |   R@5 |  R@10 | steps | time (s) |"
            + (" geo % |" if with_attention else ""))
    line = "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"
    body = []
    for r in rows:
        lo, hi = r["r1_ci"]
        cell = f"{r['recall']['1']:5.1f} [{lo:4.1f}, {hi:4.1f}]"
        steps = "-" if r["steps"] is None else str(r["steps"])
        text = (f"| {r['method']:<{width}} | {cell:<19} | {r['recall']['5']:5.1f} | {r['recall']['10']:5.1f} "
                f"| {steps:>5} | {r['seconds']:8.1f} |")
        if with_attention:
            share = r.get("attention", {}).get("geo_share")
            text += f" {100 * share:5.1f} |" if share is not None else "     - |"
        body.append(text)
    return "\n".join([head, line, *body])


def _verdicts(rows: list[dict[str, Any]], idx: np.ndarray) -> list[Verdict]:
    by_label = {r["method"]: r for r in rows}
    verdicts = []
    random_row = next((r for r in rows if r["kind"] == "start" and "random" in r["method"]), None)
    imagenet_row = next((r for r in rows if r["kind"] == "start" and "ImageNet" in r["method"]), None)
    if random_row and imagenet_row:
        verdicts.append(paired_verdict("ImageNet weights beat random weights (both untrained, R@1)",
                                       imagenet_row["method"], imagenet_row["hits"],
                                       random_row["method"], random_row["hits"], idx))
    trained = [r for r in rows if r["kind"] == "trained"]
    for r in trained:
        start = by_label[r["start"]]
        claim = ("SSL + GeoPair beats its initialisation" if r["method"] != TRIPLET_LABEL
                 else "the triplet baseline beats its initialisation") + f" ({r['method']}, R@1)"
        verdicts.append(paired_verdict(claim, r["method"], r["hits"], start["method"], start["hits"], idx))
    triplet = by_label.get(TRIPLET_LABEL)
    for r in trained:
        if triplet is not None and r is not triplet:
            verdicts.append(paired_verdict(f"SSL + GeoPair vs triplet ({r['method']}, R@1)", r["method"], r["hits"],
                                           triplet["method"], triplet["hits"], idx))
    if triplet is not None and "attention" in triplet:
        t_geo = np.array(triplet["attention"]["per_query_geo"], dtype=np.float64)
        for r in trained:
            if r is triplet or "attention" not in r:
                continue
            s_geo = np.array(r["attention"]["per_query_geo"], dtype=np.float64)
            ok = np.isfinite(s_geo) & np.isfinite(t_geo)
            if ok.sum() < 2:
                continue
            verdicts.append(paired_verdict(f"attention share on buildings, SSL vs triplet ({r['method']})",
                                           r["method"], s_geo[ok], triplet["method"], t_geo[ok],
                                           resample_indices(int(ok.sum()), seed=1), unit="points of share"))
    return verdicts


def run_demo(out: Path, *, data: str | Path | None = None, preset: str = "demo", seed: int = 0,
             device_name: str = "auto", batch_size: int = 32, workers: int = 0, progress: bool = True,
             attention_n: int = 16, overrides: Sequence[str] = (),
             runs: Sequence[tuple[str, str, str]] = DEMO_RUNS) -> dict[str, Any]:
    """Score the starting points, train every run of ``runs``, print the table and the verdicts."""
    from vgssl_core.evaluation.attention import has_masks
    from vgssl_core.training.results import run_checkpoint, synthetic_world

    if attention_n < 0:
        raise VgsslError(f"--attention must be >= 0, got {attention_n}")
    cfgs = _train_cfgs(runs, seed, overrides)  # bad presets / overrides fail before any work
    if data is not None:
        root = Path(data)
        for name in ("train", "val", "test"):
            load_split(root, name)  # a dataset without the three splits fails here
    device = resolve_device(device_name)
    total = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        start = time.perf_counter()
        root = synthetic_world(out, preset, seed, progress)
        print(f"world: {root} ({time.perf_counter() - start:.1f} s)")
    test = load_split(root, "test")
    print(f"test split: {test.summary()}")
    attention = attention_n > 0 and has_masks(root, "test")
    if attention_n > 0 and not attention:
        print(f"{root}: no class masks for the test split; attention shares not measured")
    score = dict(device=device, batch_size=batch_size, workers=workers, progress=progress)

    rows: list[dict[str, Any]] = []
    starts: dict[str, str] = {}  # json of the starting model config -> its row label
    for weights in ("random", "imagenet"):
        model_over = {**resolve_model_config(cfgs[0]["model"]), "weights": weights}
        label = start_label(model_over, weights)
        begin = time.perf_counter()
        model, model_cfg, note = load_descriptor_model(None, model_over)
        report, hits, db_desc = _score(model, model_cfg, test, **score)
        row = {"method": label, "kind": "start", "category": "no training", "recall": report["recall"],
               "hits": hits, "steps": None, "init": weights, "note": note}
        if attention and weights == "imagenet":
            row["attention"] = _attention(model, model_cfg, root, test, db_desc, attention_n, device)
        row["seconds"] = time.perf_counter() - begin
        rows.append(row)
        starts[start_key(model_over)] = label
        print(f"{label}: R@1 {report['recall']['1']:.1f}  ({note})")

    for (label, category, preset_name), cfg in zip(runs, cfgs):
        run_dir = out / "runs" / root.name / f"{preset_name}-seed{seed}"
        summary = _train(cfg, root, run_dir, label, progress)
        begin = time.perf_counter()  # a reused run's training time is its summary's, so count scoring from here
        ckpt = run_checkpoint(run_dir)
        model, model_cfg, _ = load_descriptor_model(ckpt)
        report, hits, db_desc = _score(model, model_cfg, test, **score)
        report.update({"checkpoint": str(ckpt), "init": summary.get("init")})
        write_json(run_dir / "test.json", report)  # the `vgssl eval` format: `vgssl table --runs` reads it
        key = start_key(cfg["model"])
        if key not in starts:
            raise VgsslError(f"{preset_name}: its model differs from the starting points' model "
                             f"({cfgs[0].get('name')}); every demo run must start from the same backbone")
        row = {"method": label, "kind": "trained", "category": category, "preset": preset_name,
               "recall": report["recall"], "hits": hits, "steps": summary["steps"], "start": starts[key],
               "run_dir": str(run_dir), "train_seconds": summary["train_seconds"],
               "val_history": summary.get("val_history")}
        if attention:
            row["attention"] = _attention(model, model_cfg, root, test, db_desc, attention_n, device)
        row["seconds"] = summary["train_seconds"] + (time.perf_counter() - begin)
        rows.append(row)

    idx = resample_indices(len(test.queries), seed=seed)
    for r in rows:
        _, lo, hi = interval(100.0 * r["hits"], idx)
        r["r1_ci"] = (lo, hi)
    verdicts = _verdicts(rows, idx)
    table = format_table(rows, attention)
    seconds = time.perf_counter() - total
    print(f"\n{root.name}, test split: {len(test.queries)} queries, {len(test.database)} database images; "
          f"R@1 with its 95 % bootstrap interval over the queries")
    print(table)
    print("\nVerdicts (paired bootstrap over the same test queries, 95 %):")
    for v in verdicts:
        print(f"- {v.line()}")
    failed = [v for v in verdicts if v.outcome != "holds"]
    print(f"\n{len(verdicts) - len(failed)} of {len(verdicts)} claims hold on this run; total {seconds:.0f} s")
    summary = {"data": str(root), "device": str(device), "seconds": round(seconds, 1),
               "n_queries": len(test.queries), "table_markdown": table,
               "verdicts": [v.as_dict() for v in verdicts],
               "rows": [{**{k: v for k, v in r.items() if k != "hits"}, "hits_at_1": r["hits"].astype(int).tolist(),
                         "r1_ci": [round(x, 2) for x in r["r1_ci"]]} for r in rows]}
    write_json(out / "demo.json", summary)
    return summary
