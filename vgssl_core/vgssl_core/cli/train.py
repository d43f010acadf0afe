"""``vgssl train`` and ``vgssl demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgssl_core.cli.common import add_common, add_runtime, finish, format_recall, nonnegative_int, positive_int, registrar

COMMANDS: list = []
command = registrar(COMMANDS)


# --- train ---------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="strategy preset: a YAML file or a shipped preset name, e.g. demo-simclr")
    p.add_argument("--data", required=True, help="dataset root with train/val/test splits")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, test.json)")
    p.add_argument("--resume", help="RUN_DIR/last.ckpt of an interrupted run")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimiser steps")
    p.add_argument("--max-epochs", type=positive_int, help="stop after this many epochs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    add_common(p)


@command("train", "train a strategy (an SSL method on GeoPairs, or the triplet baseline)", _train_args)
def run_train(args: argparse.Namespace) -> int:
    from vgssl_core.training.config import load_config
    from vgssl_core.training import train

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"trainer.max_steps={args.max_steps}")
    if args.max_epochs is not None:
        overrides.append(f"trainer.max_epochs={args.max_epochs}")
    cfg = load_config(args.config, overrides)
    summary = train(cfg, args.data, args.out, resume=args.resume, progress=not args.quiet)
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:  # a DDP worker: rank 0 reports the run
        return 0
    line = f"trained {cfg.get('name') or cfg['method']}: {summary['steps']} steps in {summary['train_seconds']:.0f} s"
    if "test" in summary:
        line += f"; test {format_recall(summary['test']['recall'])}"
    print(line)
    print(f"checkpoints: {args.out}/last.ckpt" + (f", {args.out}/best.ckpt" if summary["best_val_r5"] is not None else ""))
    return finish(args, summary)


# --- demo ----------------------------------------------------------------------------------
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the world, the runs and demo.json")
    p.add_argument("--data", help="a benchmark-format dataset root (train/val/test) instead of the synthetic world")
    p.add_argument("--preset", default="demo", help="synthetic world preset (without --data)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="world and training seed")
    p.add_argument("--robot", action="store_true",
                   help="instead: train on synthetic drives' bags, replay fog and night drives (writes OUT/robot)")
    p.add_argument("--attention", type=nonnegative_int, default=16, metavar="N",
                   help="Grad-CAM attention shares on N test queries (datasets with class masks; 0: skip)")
    p.add_argument("--max-steps", type=positive_int, help="stop each training after this many optimiser steps")
    p.add_argument("--max-epochs", type=positive_int, help="stop each training after this many epochs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every training")
    add_runtime(p)
    add_common(p)


@command("demo", "does training work? starting points vs SSL + GeoPair vs triplet, with intervals", _demo_args)
def run_demo(args: argparse.Namespace) -> int:
    if args.robot:
        from vgssl_core.training.robot_demo import run_robot_demo

        return finish(args, run_robot_demo(Path(args.out) / "robot", preset=args.preset, seed=args.seed,
                                           device_name=args.device, progress=not args.quiet))
    from vgssl_core.training.demo import run_demo as demo

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"trainer.max_steps={args.max_steps}")
    if args.max_epochs is not None:
        overrides.append(f"trainer.max_epochs={args.max_epochs}")
    return finish(args, demo(Path(args.out), data=args.data, preset=args.preset, seed=args.seed,
                             device_name=args.device, batch_size=args.batch_size, workers=args.workers,
                             progress=not args.quiet, attention_n=args.attention, overrides=overrides))
