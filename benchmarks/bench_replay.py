"""Bag replay: frames/s, per-frame latency with and without temporal fusion, Recall@1 with and without.

The robot's own pipeline, end to end on the synthetic world: a mapping drive (``vgssl synth
--bag``, daytime "database" look) becomes the map (``replay.build_database_from_bag``), a second
drive along the same route in another look (default ``query``: dusk/night, rain, winter, ...)
is replayed against it (``replay.run_replay``, the code of ``vgssl replay`` and the ROS
``bag_replay`` node). Latency is per frame as the live localizer sees it (decode, preprocess,
descriptor, search, fix); the fusion update is timed again on the replay's own frames in CPU time
(so other processes on a shared machine do not count), and must not add more than 10 %
(``ratio`` = (latency + fusion) / latency <= 1.10, at the median and at the 95th percentile).
Two looks by default: ``database`` (a second daytime drive: other weather, traffic, camera
jitter) and ``query`` (dusk/night, fog/rain, autumn/winter mixes).

    python benchmarks/bench_replay.py [--preset demo] [--ckpt run/last.ckpt] [--condition night,rain ...]

Without ``--ckpt`` an untrained descriptor is used (a checkpoint written on the fly): the timing
is representative, the recall is not. Bags and the map are cached under ``--work``, next to each
replay's report folder (``report.md``, ``route.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from benchkit import machine  # benchmarks/benchkit.py, next to this script
import torch

from vgssl_core.rosbag.bags import BagReader
from vgssl_core.evaluation.descriptors import resolve_device
from vgssl_core.synth.drive import GNSS_TOPIC, IMAGE_TOPIC, record_drive
from vgssl_core.models.loading import load_descriptor_model
from vgssl_core.localization.fusion import PlaceFilter
from vgssl_core.localization.localizer import Localizer
from vgssl_core.rosbag.maps import build_database_from_bag
from vgssl_core.rosbag.replay import run_replay
from vgssl_core.rosbag.report import write_report

UNTRAINED = {"pretrained": "none", "image_size": [120, 160], "head_layers": 0}


def untrained_checkpoint(path: Path) -> Path:
    """A checkpoint of the untrained default descriptor (ResNet-18 conv4 + GeM), in vgssl's format."""
    from vgssl_core.models import build_model, resolve_model_config

    if not path.exists():
        cfg = resolve_model_config(UNTRAINED)
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"vgssl": {"format": 1, "model_config": cfg, "model_prefix": ""},
                    "state_dict": build_model(cfg).state_dict()}, path)
    return path


def drive(path: Path, fresh: bool, **kwargs) -> dict:
    if path.exists() and not fresh:
        with BagReader(path) as bag:
            return {"bag": str(path), "frames": bag.message_count(IMAGE_TOPIC), "cached": True}
    start = time.perf_counter()
    summary = record_drive(path, progress=False, **kwargs)
    return {**summary, "cached": False, "seconds": round(time.perf_counter() - start, 2)}


def retime_fusion(result, repeats: int = 5) -> dict[str, float]:
    """Per-update CPU time of the fusion, re-run on the replay's own frames (load on the machine aside)."""
    frames = [f for f in result.frames if f.result is not None]
    costs = []
    for _ in range(repeats):
        filt = PlaceFilter(result.replay.db.utm, result.replay.filter.params)
        for f in frames:
            start = time.process_time()
            filt.update(f.stamp_ns, f.predictions, f.distances)
            costs.append(time.process_time() - start)
    costs_ms = np.array(costs) * 1e3
    return {"p50": round(float(np.percentile(costs_ms, 50)), 4), "p95": round(float(np.percentile(costs_ms, 95)), 4)}


def replay_row(test: dict, condition: str, localizer: Localizer, ckpt: Path, preset: str, report_dir: Path) -> dict:
    result = run_replay(test["bag"], localizer, image_topic=IMAGE_TOPIC, gnss_topic=GNSS_TOPIC, fusion="bayes",
                        progress=True)
    write_report(result, report_dir)  # report.md, route.png: look at what the numbers come from
    r = result.report
    frames = [f for f in result.frames if f.result is not None]
    latency = np.array([f.latency_s for f in frames]) * 1e3  # decode + preprocess + descriptor + search + fix
    in_run = np.array([f.latency_s + f.fusion_s for f in frames]) * 1e3
    fusion = retime_fusion(result)
    lat = {"p50": round(float(np.percentile(latency, 50)), 3), "p95": round(float(np.percentile(latency, 95)), 3)}
    row = {
        "preset": preset, "condition": condition, "checkpoint": str(ckpt), "device": str(localizer.device),
        "n_database": len(localizer.database), "n_frames": r["n_frames"], "n_skipped": r["n_skipped"],
        "frames_per_s": r["frames_per_s"], "latency_ms": lat, "fusion_ms": fusion,
        "latency_fused_ms": {k: round(lat[k] + fusion[k], 3) for k in lat},
        "in_run_latency_fused_ms": {"p50": round(float(np.percentile(in_run, 50)), 3),
                                    "p95": round(float(np.percentile(in_run, 95)), 3)},
        "recall": r["recall"], "recall_at_1": r["recall"]["1"], "fused_recall_at_1": r["fusion"]["recall"]["1"],
        "error_m": r["error_m"], "fused_error_m": r["fusion"]["error_m"], "stages_ms": r["stages_ms"],
    }
    row["ratio_p50"] = round(row["latency_fused_ms"]["p50"] / lat["p50"], 4)
    row["ratio_p95"] = round(row["latency_fused_ms"]["p95"] / lat["p95"], 4)
    row["ratio_ok"] = row["ratio_p50"] <= 1.10 and row["ratio_p95"] <= 1.10
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="synthetic world preset whose test district is driven")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ckpt", help="descriptor checkpoint (default: untrained descriptor)")
    parser.add_argument("--condition", action="append",
                        help="look of a replayed drive, repeatable (default: database and query, see vgssl synth)")
    parser.add_argument("--rate", type=float, default=2.0, help="camera rate of the drives (Hz)")
    parser.add_argument("--speed", type=float, default=8.0, help="m/s")
    parser.add_argument("--max-frames", type=int, help="cut the drives to this many frames")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", default="bench_results/replay_work", help="cache of bags and map")
    parser.add_argument("--fresh", action="store_true", help="re-record the bags and rebuild the map")
    parser.add_argument("--out", default="bench_results/replay.json")
    args = parser.parse_args()
    conditions = args.condition or ["database", "query"]

    work = Path(args.work) / f"{args.preset}-s{args.seed}"
    ckpt = Path(args.ckpt) if args.ckpt else untrained_checkpoint(work / "untrained.ckpt")
    common = dict(preset=args.preset, seed=args.seed, split="test", rate_hz=args.rate, speed_mps=args.speed,
                  max_frames=args.max_frames, gnss_noise_m=2.0)
    tag = f"{args.rate:g}hz-{args.speed:g}mps-{args.max_frames or 'all'}"
    mapping = drive(work / f"mapping-{tag}", args.fresh, condition="database", drive_seed=1, gnss_dropout=0.0,
                    **common)
    device = resolve_device(args.device)
    db_path = work / f"map-{ckpt.stem}-{tag}"
    if args.fresh or not (db_path / "manifest.json").exists():
        model, cfg, _ = load_descriptor_model(ckpt)
        model.to(device)
        build_database_from_bag(model, cfg, ckpt, mapping["bag"], db_path, image_topic=IMAGE_TOPIC,
                                gnss_topic=GNSS_TOPIC, device=device, progress=False)
    localizer = Localizer(ckpt, db_path, device=args.device, top_k=5)
    rows, tests = [], []
    for condition in conditions:
        test = drive(work / f"test-{condition.replace(',', '_')}-{tag}", args.fresh, condition=condition,
                     drive_seed=2, gnss_dropout=0.05, **common)
        tests.append(test)
        rows.append(replay_row(test, condition, localizer, ckpt, args.preset,
                               work / f"report-{condition.replace(',', '_')}-{tag}"))

    print()
    print("| preset | look | db | frames | frames/s | latency p50 / p95 (ms) | fusion p50 / p95 (ms) "
          "| with fusion p50 / p95 (ms) | ratio p50 / p95 | R@1 | fused R@1 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['preset']} | {row['condition']} | {row['n_database']} | {row['n_frames']} "
              f"| {row['frames_per_s']} | {row['latency_ms']['p50']:.2f} / {row['latency_ms']['p95']:.2f} "
              f"| {row['fusion_ms']['p50']:.3f} / {row['fusion_ms']['p95']:.3f} "
              f"| {row['latency_fused_ms']['p50']:.2f} / {row['latency_fused_ms']['p95']:.2f} "
              f"| {row['ratio_p50']:.3f} / {row['ratio_p95']:.3f} "
              f"| {row['recall_at_1']:.1f} | {row['fused_recall_at_1']:.1f} |")
    ok = all(row["ratio_ok"] for row in rows)
    print(f"\nfusion latency ratio {'<= 1.10: OK' if ok else 'ABOVE 1.10'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "cpus": os.cpu_count(),
                               "torch_threads": torch.get_num_threads(), "mapping": mapping, "tests": tests,
                               "rows": rows}, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
