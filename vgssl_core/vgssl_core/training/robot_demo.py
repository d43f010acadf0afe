"""``vgssl demo --robot``: train on your own drives, then replay a drive in a condition never trained on.

What a robot builder would do with bags of their own, end to end on synthetic drives of one
district (``vgssl synth --bag``), in one process:

1. four drives: a mapping run by day, two training drives (dusk; day in rain), and a test drive
   at night — a condition no training drive has;
2. ``vgssl dataset`` of the mapping run (database) and the two training drives (queries);
3. SimCLR on GeoPairs from the ImageNet EfficientNet-Lite0 (``ROBOT_CONFIG``);
4. ``vgssl build-db --bag`` of the mapping run with the untrained and the trained model;
5. ``vgssl replay`` of the test drive against each map, fused (Bayes filter) and frame by frame,
   scored against the drive's noise-free ``/ground_truth/fix``;
6. one table: Recall@N and median error of each, the 95 % bootstrap interval of each R@1 over
   frames, and a plain verdict line; the route plots are the replays' ``route.png``.

The settings were chosen from a short learning curve (README, "Train on your own drives"),
not by trying seeds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.io import torch_save, write_json, write_text

# (name, condition, drive seed): the mapping run, two training drives, the test drive
DRIVES = (("map", "day,clear", 1), ("dusk", "dusk,clear", 2), ("rain", "day,rain", 3), ("test", "night,clear", 4))
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
    rng = np.random.default_rng(seed)
    if len(c) == 0:
        return float("nan"), float("nan")
    block = max(1, min(block, len(c)))
    starts = rng.integers(0, len(c) - block + 1, size=(n, int(np.ceil(len(c) / block))))
    idx = (starts[:, :, None] + np.arange(block)).reshape(n, -1)[:, :len(c)]
    means = c[idx].mean(axis=1) * 100.0
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


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
    for name, condition, drive_seed in DRIVES:
        path = out / "drives" / name
        if not (path / "metadata.yaml").is_file():
            record_drive(path, preset=preset, seed=seed, condition=condition, drive_seed=drive_seed,
                         progress=progress, **DRIVE)
        paths[name] = path
    return paths


def _replay(ckpt: Path, map_bag: Path, test_bag: Path, folder: Path, device: str, progress: bool) -> dict:
    """build-db --bag of the mapping run, then the replay of the test drive (fused and single-frame)."""
    from vgssl_core.localization.localizer import Localizer
    from vgssl_core.models.loading import load_descriptor_model
    from vgssl_core.rosbag.maps import build_database_from_bag
    from vgssl_core.rosbag.replay import run_replay
    from vgssl_core.rosbag.report import write_report

    model, cfg, _ = load_descriptor_model(ckpt)
    build_database_from_bag(model, cfg, ckpt, map_bag, folder / "db", gnss_topic=GNSS_TOPIC, progress=progress)
    localizer = Localizer(ckpt, folder / "db", device=device)
    result = run_replay(test_bag, localizer, gnss_topic=TRUTH_TOPIC, fusion="bayes", progress=progress)
    write_report(result, folder / "replay")
    return per_frame(result)


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

    results = {}
    for label, ckpt in (("untrained", untrained), ("trained", trained)):
        t = time.perf_counter()
        results[label] = _replay(ckpt, bags["map"], bags["test"], out / label, device_name, progress)
        times[f"map + replay ({label})"] = time.perf_counter() - t

    held_out = in_blocks(results["untrained"]["gt"], manifest["blocks"], manifest["block_m"], "test")
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
    table = _table(rows, len(results["untrained"]["gt"]), int(held_out.sum()))
    print("\n" + table)
    verdicts = []
    for mode, (u, tr) in {"frame by frame": (rows[0], rows[2]), "fused": (rows[1], rows[3])}.items():
        beats = tr["r1"] > u["ci"][1]
        verdicts.append(f"{mode}: trained R@1 {tr['r1']:.1f} {'is above' if beats else 'is NOT above'} the untrained "
                        f"model's 95 % interval [{u['ci'][0]:.1f}, {u['ci'][1]:.1f}]"
                        f" (block bootstrap [{u['ci_block10'][0]:.1f}, {u['ci_block10'][1]:.1f}]: "
                        f"{'above' if tr['r1'] > u['ci_block10'][1] else 'NOT above'})")
    verdict = ("VERDICT: training on the drives helps at night: " if rows[2]["r1"] > rows[0]["ci"][1] else
               "VERDICT: training on the drives does NOT beat the untrained model beyond its 95 % interval: ")
    verdict += "; ".join(verdicts)
    times["total"] = time.perf_counter() - total
    print(verdict)
    print("route plots: " + ", ".join(str(out / label / "replay" / "route.png") for label in results))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    payload = {"rows": rows, "verdict": verdict, "table_markdown": table, "seconds": times,
               "frames": len(results["untrained"]["gt"]), "held_out_frames": int(held_out.sum()),
               "train_steps": summary.get("steps"), "learning_curve": curve, "config": cfg, "dataset": manifest["splits"],
               "checkpoints": {"untrained": str(untrained), "trained": str(trained)}}
    write_json(out / "robot_demo.json", payload)
    write_text(out / "robot_demo.md", table + "\n\n" + verdict + "\n")
    return payload


def _table(rows: list[dict], n_frames: int, n_held_out: int) -> str:
    def f(v):
        return "-" if v is None else f"{v:.1f}"

    head = ("| model | replay | R@1 | 95 % interval (frames) | 95 % (10-frame blocks) | R@5 | R@10 | "
            f"R@1 held-out area ({n_held_out} fr.) | median error (m) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {f(r['r1'])} | [{f(r['ci'][0])}, {f(r['ci'][1])}] | "
                     f"[{f(r['ci_block10'][0])}, {f(r['ci_block10'][1])}] | {f(r['r5'])} | {f(r['r10'])} | "
                     f"{f(r['r1_held_out'])} | {f(r['median_error_m'])} |")
    return f"Test drive at night, {n_frames} frames, against the daytime map:\n\n" + "\n".join(lines)
