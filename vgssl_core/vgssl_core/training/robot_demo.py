"""``vgssl demo --robot``: train on your own drives, then replay drives in conditions never trained on.

What a robot builder would do with bags of their own, end to end on synthetic drives of one
district (``vgssl synth --bag``), in one process:

1. five drives: a mapping run by day, two training drives (dusk; day in rain), and two test
   drives in conditions no training drive has: day in fog, and night;
2. ``vgssl dataset`` of the mapping run (database) and the two training drives (queries);
3. SimCLR on GeoPairs from the ImageNet EfficientNet-Lite0 (``ROBOT_CONFIG``);
4. ``vgssl build-db --bag`` of the mapping run with the untrained and the trained model;
5. ``vgssl replay`` of each test drive against each map, fused (Bayes filter) and frame by
   frame, scored against the drive's noise-free ``/ground_truth/fix``;
6. one table per test drive: Recall@N and median error of each, the 95 % bootstrap interval of
   each R@1 over frames, and a plain verdict line; the route plots are the replays' ``route.png``.

Why two test drives: night against a daytime map is where both models come close to failing (a
night frame shows lit windows on dark facades), so it is kept as the stress test; fog by day is
an unseen condition where retrieval still works at all, so it measures what training added.
The training settings were chosen from a short learning curve (README, "Train on your own
drives"), not by trying seeds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.io import torch_save, write_json, write_text
from vgssl_core.training.demo_stats import interval, resample_indices

# (name, condition, drive seed): the mapping run and two training drives, then the test drives
DRIVES = (("map", "day,clear", 1), ("dusk", "dusk,clear", 2), ("rain", "day,rain", 3))
TEST_DRIVES = (("fog", "day,fog", 5), ("night", "night,clear", 4))
GNSS_TOPIC = "/gnss/fix"  # what a robot records (2 m noise): the dataset and the map use it
TRUTH_TOPIC = "/ground_truth/fix"  # the replay is scored against the exact positions
DRIVE = {"split": "train", "rate_hz": 1.0, "speed_mps": 8.0}  # the largest district, a frame every 8 m
DATASET = {"block_m": 100.0, "min_spacing_m": 4.0}
# SimCLR FC-1-256 on the ImageNet EfficientNet-Lite0 (conv5, GeM) at 96x64, all but its last stage frozen
# (a training step of 16 pairs costs about 2 s on a busy 2-core CPU); no database negatives, since
# every frame of the mapping run has queries from both training drives. best.ckpt: by val Recall@5.
ROBOT_CONFIG = ("demo-simclr", ["model.backbone=efficientnet_lite0", "model.weights=imagenet", "model.layer=conv5",
                                "model.image_size=[64,96]", "model.freeze_stages=4", "data.batch_size=16",
                                "data.db_negative_ratio=0", "trainer.max_epochs=3", "trainer.test_split=null"])
BOOTSTRAP = 2000


def bootstrap_interval(correct: np.ndarray, *, block: int = 1, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of a recall (percent) by resampling frames with replacement.

    ``block`` > 1 resamples runs of that many consecutive frames (a moving-block bootstrap):
    neighbouring frames of a drive see the same street, so they are not independent draws.
    """
    c = np.asarray(correct, float)
    if len(c) == 0:
        return float("nan"), float("nan")
    _, lo, hi = interval(100.0 * c, resample_indices(len(c), resamples=n, seed=seed, block=block))
    return lo, hi


def write_untrained_checkpoint(overrides: dict[str, Any], path: Path) -> Path:
    """The model before training as a checkpoint file, so build-db and the replay take it like any other."""
    from vgssl_core.models.checkpoint import FORMAT_VERSION, KEY
    from vgssl_core.models.loading import load_descriptor_model

    model, cfg, _ = load_descriptor_model(None, overrides)
    torch_save({KEY: {"format": FORMAT_VERSION, "model_config": cfg, "method": "untrained", "model_prefix": ""},
                "state_dict": model.state_dict(), "global_step": 0}, path)
    return path


def learning_curve(untrained: Path, root: Path, summary: dict[str, Any], device_name: str) -> list[dict[str, Any]]:
    """Validation Recall@N before training and after each epoch (the run's ``val_history``)."""
    from vgssl_core.data.dataset import load_split
    from vgssl_core.evaluation.descriptors import resolve_device
    from vgssl_core.evaluation.split import evaluate_split
    from vgssl_core.models.loading import load_descriptor_model

    device = resolve_device(device_name)
    model, cfg, _ = load_descriptor_model(untrained)
    report, *_ = evaluate_split(model.to(device), cfg, load_split(root, "val"), device, progress=False)
    return [{"label": "untrained", "step": 0, "recall": report["recall"]},
            *({"label": f"epoch {h['epoch'] + 1}", "step": h["step"], "recall": h["recall"]}
              for h in summary.get("val_history", []))]


def per_frame(result) -> dict[str, np.ndarray]:
    """Per evaluated frame of a replay: ground truth, single-frame and fused correctness and errors."""
    db = result.replay.db.utm
    frames = [f for f in result.frames if f.skip is None and f.result is not None]
    gt = np.stack([f.gt_utm for f in frames])
    top = np.array([db[f.predictions[:10]] for f in frames])  # (K, 10, 2)
    near = np.linalg.norm(top - gt[:, None, :], axis=2) <= EVAL_RADIUS_M
    fused = np.array([[f.fused.easting, f.fused.northing] for f in frames])
    fused_db = np.array([db[f.fused.index] for f in frames])
    return {"gt": gt, "single": near[:, 0], "single_r5": near[:, :5].any(1), "single_r10": near.any(1),
            "fused": np.linalg.norm(fused_db - gt, axis=1) <= EVAL_RADIUS_M,
            "single_error": np.linalg.norm(np.stack([f.fix_utm for f in frames]) - gt, axis=1),
            "fused_error": np.linalg.norm(fused - gt, axis=1)}


def in_blocks(utm: np.ndarray, blocks: list[dict], block_m: float, split: str) -> np.ndarray:
    """Rows of ``utm`` inside the dataset's blocks of ``split``."""
    cells = {(round(b["east"] / block_m), round(b["north"] / block_m)) for b in blocks if b["split"] == split}
    keys = np.floor(utm / block_m).astype(np.int64)
    return np.array([(int(x), int(y)) in cells for x, y in keys], bool)


def _drives(out: Path, preset: str, seed: int, progress: bool) -> dict[str, Path]:
    from vgssl_core.synth.drive import record_drive

    paths = {}
    for name, condition, drive_seed in (*DRIVES, *TEST_DRIVES):
        path = out / "drives" / name
        if not (path / "metadata.yaml").is_file():
            record_drive(path, preset=preset, seed=seed, condition=condition, drive_seed=drive_seed,
                         progress=progress, **DRIVE)
        paths[name] = path
    return paths


def _replays(ckpt: Path, map_bag: Path, test_bags: dict[str, Path], folder: Path, device: str,
             progress: bool) -> dict[str, dict[str, np.ndarray]]:
    """build-db --bag of the mapping run once, then the replay of each test drive (fused and single-frame)."""
    from vgssl_core.localization.localizer import Localizer
    from vgssl_core.models.loading import load_descriptor_model
    from vgssl_core.rosbag.maps import build_database_from_bag
    from vgssl_core.rosbag.replay import run_replay
    from vgssl_core.rosbag.report import write_report

    model, cfg, _ = load_descriptor_model(ckpt)
    build_database_from_bag(model, cfg, ckpt, map_bag, folder / "db", gnss_topic=GNSS_TOPIC, progress=progress)
    localizer = Localizer(ckpt, folder / "db", device=device)
    out = {}
    for name, bag in test_bags.items():
        result = run_replay(bag, localizer, gnss_topic=TRUTH_TOPIC, fusion="bayes", progress=progress)
        write_report(result, folder / f"replay-{name}")
        out[name] = per_frame(result)
    return out


def drive_rows(results: dict[str, dict[str, np.ndarray]], held_out: np.ndarray) -> list[dict[str, Any]]:
    """Table rows of one test drive: each model frame by frame and fused, R@1 with its intervals."""
    rows = []
    for label, r in results.items():
        for mode in ("single", "fused"):
            c = r[mode]
            rows.append({
                "model": label, "mode": "frame by frame" if mode == "single" else "fused (Bayes)",
                "r1": 100 * c.mean(), "ci": bootstrap_interval(c), "ci_block10": bootstrap_interval(c, block=10),
                "r5": 100 * r["single_r5"].mean() if mode == "single" else None,
                "r10": 100 * r["single_r10"].mean() if mode == "single" else None,
                "r1_held_out": 100 * c[held_out].mean() if held_out.any() else None,
                "median_error_m": float(np.median(r[f"{mode}_error"]))})
    return rows


def drive_verdict(drive: str, condition: str, rows: list[dict[str, Any]]) -> tuple[bool, str]:
    """(trained beats untrained frame by frame beyond the untrained 95 % interval, the verdict line)."""
    by = {(r["model"], r["mode"]): r for r in rows}
    parts = []
    for mode in ("frame by frame", "fused (Bayes)"):
        u, tr = by["untrained", mode], by["trained", mode]
        parts.append(f"{mode}: trained R@1 {tr['r1']:.1f} {'is above' if tr['r1'] > u['ci'][1] else 'is NOT above'} "
                     f"the untrained model's 95 % interval [{u['ci'][0]:.1f}, {u['ci'][1]:.1f}] "
                     f"(10-frame blocks [{u['ci_block10'][0]:.1f}, {u['ci_block10'][1]:.1f}]: "
                     f"{'above' if tr['r1'] > u['ci_block10'][1] else 'NOT above'})")
    holds = bool(by["trained", "frame by frame"]["r1"] > by["untrained", "frame by frame"]["ci"][1])
    head = (f"VERDICT {drive} ({condition}): training on the drives "
            + ("helps" if holds else "does NOT beat the untrained model beyond its 95 % interval"))
    return holds, head + ": " + "; ".join(parts)


def run_robot_demo(out: Path, *, preset: str = "demo", seed: int = 0, device_name: str = "cpu",
                   progress: bool = True) -> dict[str, Any]:
    """The whole robot pipeline under ``out``; prints the table and the verdict, returns them."""
    from vgssl_core.rosbag.dataset import make_dataset
    from vgssl_core.training import train
    from vgssl_core.training.config import load_config
    from vgssl_core.training.run import read_summary

    total = time.perf_counter()
    times: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    bags = _drives(out, preset, seed, progress)
    times["drives"] = time.perf_counter() - t

    t = time.perf_counter()
    root = out / "dataset"
    if not (root / "dataset.json").is_file():
        make_dataset([bags["map"], bags["dusk"], bags["rain"]], root, gnss_topic=GNSS_TOPIC, progress=progress,
                     **DATASET)
    manifest = json.loads((root / "dataset.json").read_text())
    times["dataset"] = time.perf_counter() - t
    print("dataset: " + ", ".join(f"{s} {c['database']} db / {c['queries']} q" for s, c in manifest["splits"].items()))

    preset_name, overrides = ROBOT_CONFIG
    cfg = load_config(preset_name, [*overrides, f"trainer.seed={seed}"])
    run_dir = out / "run"
    t = time.perf_counter()
    summary = read_summary(run_dir)
    if summary is None:
        print(f"\n== training SimCLR on GeoPairs of the drives -> {run_dir}")
        summary = train(cfg, root, run_dir, progress=progress)
    times["train"] = time.perf_counter() - t
    trained = run_dir / "best.ckpt" if (run_dir / "best.ckpt").is_file() else run_dir / "last.ckpt"
    untrained = write_untrained_checkpoint(cfg["model"], out / "untrained.ckpt")
    curve = learning_curve(untrained, root, summary, device_name)
    print("learning curve (val split of the dataset, R@1 / R@5): "
          + ", ".join(f"{p['label']} {p['recall']['1']:.1f} / {p['recall']['5']:.1f}" for p in curve))

    tests = {name: bags[name] for name, _, _ in TEST_DRIVES}
    results: dict[str, dict[str, dict[str, np.ndarray]]] = {name: {} for name in tests}
    for label, ckpt in (("untrained", untrained), ("trained", trained)):
        t = time.perf_counter()
        for name, per_drive in _replays(ckpt, bags["map"], tests, out / label, device_name, progress).items():
            results[name][label] = per_drive
        times[f"map + replays ({label})"] = time.perf_counter() - t

    drives, tables, verdicts = [], [], []
    for name, condition, _ in TEST_DRIVES:
        held_out = in_blocks(results[name]["untrained"]["gt"], manifest["blocks"], manifest["block_m"], "test")
        rows = drive_rows(results[name], held_out)
        holds, verdict = drive_verdict(name, condition, rows)
        table = _table(rows, f"Test drive '{name}' ({condition}), {len(held_out)} frames, against the daytime map",
                       int(held_out.sum()))
        print("\n" + table + "\n" + verdict)
        drives.append({"drive": name, "condition": condition, "frames": len(held_out),
                       "held_out_frames": int(held_out.sum()), "rows": rows, "helps": holds, "verdict": verdict})
        tables.append(table)
        verdicts.append(verdict)
    times["total"] = time.perf_counter() - total
    print("route plots: " + ", ".join(str(out / label / f"replay-{name}" / "route.png")
                                      for name in tests for label in ("untrained", "trained")))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    payload = {"drives": drives, "verdicts": verdicts, "seconds": times, "train_steps": summary.get("steps"),
               "learning_curve": curve, "config": cfg, "dataset": manifest["splits"],
               "checkpoints": {"untrained": str(untrained), "trained": str(trained)}}
    write_json(out / "robot_demo.json", payload)
    write_text(out / "robot_demo.md", "\n\n".join(f"{t}\n\n{v}" for t, v in zip(tables, verdicts)) + "\n")
    return payload


def _table(rows: list[dict], title: str, n_held_out: int) -> str:
    def f(v):
        return "-" if v is None else f"{v:.1f}"

    head = ("| model | replay | R@1 | 95 % interval (frames) | 95 % (10-frame blocks) | R@5 | R@10 | "
            f"R@1 held-out area ({n_held_out} fr.) | median error (m) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {f(r['r1'])} | [{f(r['ci'][0])}, {f(r['ci'][1])}] | "
                     f"[{f(r['ci_block10'][0])}, {f(r['ci_block10'][1])}] | {f(r['r5'])} | {f(r['r10'])} | "
                     f"{f(r['r1_held_out'])} | {f(r['median_error_m'])} |")
    return f"{title}:\n\n" + "\n".join(lines)
