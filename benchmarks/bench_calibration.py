"""Calibrated fixes: does a calibration fitted on one drive hold on another drive in another look?

The deployment recipe of the README, on the synthetic world: a calibration drive and an
evaluation drive through the same test district (different look and seed), both replayed
against the same map (``vgssl replay``); ``vgssl calibrate`` fits on the first, and the second is
replayed with the calibration. Its report holds the raw (uncalibrated) and calibrated numbers:
expected calibration error, Brier score, share of errors inside the 1- and 2-sigma ellipses
(nominal 0.393 / 0.865), mean NEES (nominal 2), and the fixes kept at 95 % precision. Targets
(issue 15): calibrated ECE <= 0.05 and 2-sigma coverage in [0.80, 0.92].

    python benchmarks/bench_calibration.py --ckpt run/last.ckpt --db maps/city --world data/city
    python benchmarks/bench_calibration.py            # untrained ResNet-18 on the tiny world (CPU)

Without ``--ckpt`` an untrained descriptor is used (``bench_replay.untrained_checkpoint``): its
retrieval is weak and its features barely tell right fixes from wrong ones, so the calibrated
probability is little more than the calibration drive's share of right fixes; a trained model is
what makes the targets reachable. Bags, map and replays are cached under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchkit import machine  # benchmarks/benchkit.py, next to this script
from bench_replay import untrained_checkpoint

from vgssl_core.cli import main as vgssl
from vgssl_core.localization.calibration import summary_line

TARGET_ECE, TARGET_COVERAGE = 0.05, (0.80, 0.92)


def run(*args) -> None:
    code = vgssl([str(a) for a in args])
    if code != 0:
        sys.exit(f"vgssl {args[0]} failed with exit status {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", help="world folder (default: the tiny world, generated under --work)")
    parser.add_argument("--ckpt", help="descriptor checkpoint (default: untrained ResNet-18)")
    parser.add_argument("--db", help="map database of --ckpt (default: built from the world's test split)")
    parser.add_argument("--calib-condition", default="day,clear", help="look of the calibration drive")
    parser.add_argument("--calib-seed", type=int, default=1)
    parser.add_argument("--eval-condition", default="day,overcast", help="look of the evaluation drive")
    parser.add_argument("--eval-seed", type=int, default=2)
    parser.add_argument("--rate", type=float, default=4.0, help="camera rate of the drives (Hz)")
    parser.add_argument("--max-frames", type=int, help="cut the drives to this many frames")
    parser.add_argument("--fusion", default="bayes", choices=("none", "bayes"), help="the localizer's fusion")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", default="bench_results/calibration_work")
    parser.add_argument("--out", default="bench_results/calibration.json")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    world = Path(args.world) if args.world else work / "tiny"
    if not args.world and not world.exists():
        run("synth", "--out", world, "--preset", "tiny", "--seed", 0, "--quiet")
    ckpt = Path(args.ckpt) if args.ckpt else untrained_checkpoint(work / "untrained.ckpt")
    db = Path(args.db) if args.db else work / f"db-{ckpt.stem}"
    if not args.db and not (db / "manifest.json").exists():
        run("build-db", "--data", world, "--split", "test", "--ckpt", ckpt, "--out", db, "--quiet")
    frames = ["--max-frames", args.max_frames] if args.max_frames else []
    replays = {}
    for role, condition, seed in (("calib", args.calib_condition, args.calib_seed),
                                  ("eval", args.eval_condition, args.eval_seed)):
        bag = work / f"{role}-{condition.replace(',', '_')}-s{seed}-{args.rate:g}hz-{args.max_frames or 'all'}"
        if not bag.exists():
            run("synth", "--bag", bag, "--world", world, "--condition", condition, "--drive-seed", seed,
                "--rate", args.rate, *frames, "--quiet")
        replays[role] = bag
    common = ("--db", db, "--ckpt", ckpt, "--fusion", args.fusion, "--device", args.device,
              "--gnss-topic", "/gnss/fix", "--quiet")
    start = time.perf_counter()
    tag = f"{args.fusion}-{ckpt.stem}"
    calib_out, cal, eval_out = work / f"replay-calib-{tag}", work / f"calibration-{tag}.json", work / f"replay-eval-{tag}"
    run("replay", "--bag", replays["calib"], "--out", calib_out, *common)
    run("calibrate", "--replay", calib_out, "--out", cal)
    run("replay", "--bag", replays["eval"], "--out", eval_out, "--calibration", cal, *common)
    seconds = time.perf_counter() - start

    report = json.loads((eval_out / "report.json").read_text())
    section = report["calibration"]
    raw, calibrated = section["raw"], section["calibrated"]
    ok = calibrated["ece"] <= TARGET_ECE and TARGET_COVERAGE[0] <= calibrated["coverage_2sigma"] <= TARGET_COVERAGE[1]
    print()
    print(f"calibrated on {args.calib_condition} (seed {args.calib_seed}), evaluated on {args.eval_condition} "
          f"(seed {args.eval_seed}), fusion {args.fusion}, {raw['n']} frames, accuracy {raw['accuracy']:.2f}")
    print(summary_line("raw       ", raw))
    print(summary_line("calibrated", calibrated))
    print(f"targets: ECE <= {TARGET_ECE}, 2-sigma coverage in {list(TARGET_COVERAGE)}: {'MET' if ok else 'NOT MET'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine(), "cpus": os.cpu_count(), "checkpoint": str(ckpt), "database": str(db),
        "world": str(world), "fusion": args.fusion, "calibration_drive": [args.calib_condition, args.calib_seed],
        "evaluation_drive": [args.eval_condition, args.eval_seed], "seconds": round(seconds, 1),
        "calibration": json.loads(cal.read_text()), "raw": raw, "calibrated": calibrated, "targets_met": ok,
    }, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
