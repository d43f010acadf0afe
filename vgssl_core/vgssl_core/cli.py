"""The ``vgssl`` command line: thin argument parsing over the library.

Every command prints a short human summary and can write machine-readable JSON (``--json``).
A user mistake (bad path, bad file, bad config) is one line on stderr and exit code 2, never
a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import EXIT_BAD_INPUT, VgsslError, user_message

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand: its argument builder and, decorated, its ``run`` function."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (add_args, run, help_text)
        return run

    return register


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto: CUDA when available)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")


def _finish(args: argparse.Namespace, payload: dict[str, Any]) -> int:
    if getattr(args, "json", None):
        from .evaluation import write_json

        write_json(args.json, payload)
    return 0


def format_recall(recall: dict) -> str:
    return "  ".join(f"R@{n} {r:5.1f}" for n, r in recall.items())


# --- synth ---------------------------------------------------------------------------------
def _synth_args(p: argparse.ArgumentParser) -> None:
    from .replay_cli import add_drive_args
    from .synth import PRESETS

    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="dataset folder to write")
    target.add_argument("--bag", metavar="OUT", help="record a drive through the world as a rosbag2 bag instead")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", metavar="WxH", help="image size, e.g. 160x120")
    add_drive_args(p)
    _common(p)


@command("synth", "generate the built-in synthetic geo-tagged world", _synth_args)
def run_synth(args: argparse.Namespace) -> int:
    from .synth import generate_world

    size = None
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise VgsslError(f"--size must look like 160x120, got '{args.size}'") from None
        size = (w, h)
    from .replay_cli import reject_drive_options, run_synth_bag  # the drive side lives beside the replay

    if args.bag:
        return run_synth_bag(args, size)
    reject_drive_options(args)
    summary = generate_world(args.out, preset=args.preset, seed=args.seed, image_size=size, progress=not args.quiet)
    print(f"synthetic world '{args.preset}' (seed {args.seed}) written to {args.out}")
    for split, counts in summary.get("splits", {}).items():
        print(f"  {split}: {counts}")
    return _finish(args, summary)


# --- eval ----------------------------------------------------------------------------------
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root (<root>/images/<split>/...)")
    p.add_argument("--split", default="test")
    p.add_argument("--ckpt", help="checkpoint; without it, the untrained descriptor of the model.* overrides")
    p.add_argument("--recall-n", default="1,5,10,20", help="comma-separated N values")
    p.add_argument("--threshold", type=float, default=25.0, help="metres for a correct match")
    p.add_argument("--save-descriptors", metavar="NPZ", help="write db_desc, q_desc, db_utm, q_utm")
    p.add_argument("--plots", metavar="PREFIX", help="write PREFIXrecall_vs_n.png and PREFIXrecall_vs_threshold.png")
    p.add_argument("overrides", nargs="*", metavar="model.key=value",
                   help="untrained model config, e.g. model.backbone=efficientnet_lite0 model.weights=imagenet")
    _runtime(p)
    _common(p)


def _eval_model_overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """``model.key=value`` overrides -> a partial model config (None: the default descriptor).

    Only for the untrained model: a checkpoint carries its own config, so overriding it would
    describe a network other than the one trained.
    """
    from .config import parse_override

    if not args.overrides:
        return None
    if args.ckpt:
        raise VgsslError("model.key=value overrides are for the untrained model; a --ckpt carries its own model config")
    cfg: dict[str, Any] = {}
    for text in args.overrides:
        node = parse_override(text)
        if set(node) != {"model"} or not isinstance(node["model"], dict):
            raise VgsslError(f"eval override '{text}' must set a model key, e.g. model.backbone=efficientnet_lite0")
        cfg.update(node["model"])
    return cfg


def _parse_ns(text: str) -> tuple[int, ...]:
    try:
        ns = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise VgsslError(f"--recall-n must be comma-separated integers, got '{text}'") from None
    if not ns or ns[0] < 1:
        raise VgsslError("--recall-n values must be >= 1")
    return ns


@command("eval", "Recall@N of a checkpoint (or the untrained descriptor) on a split", _eval_args)
def run_eval(args: argparse.Namespace) -> int:
    from .dataset import load_split
    from .descriptors import resolve_device
    from .evaluation import evaluate_split, load_descriptor_model, plot_recalls, save_descriptors

    ns = _parse_ns(args.recall_n)
    split = load_split(args.data, args.split)
    device = resolve_device(args.device)
    model, cfg, note = load_descriptor_model(args.ckpt, _eval_model_overrides(args))
    print(f"model: {note}")
    model.to(device)
    report, db_desc, q_desc, _ = evaluate_split(model, cfg, split, device, ns=ns, threshold_m=args.threshold,
                                                batch_size=args.batch_size, workers=args.workers,
                                                progress=not args.quiet)
    report["checkpoint"] = args.ckpt
    report["model_note"] = note
    report["model_init"] = getattr(model, "init_info", None)  # which weights, which file (sha256)
    print(f"{split.summary()}  ->  {format_recall(report['recall'])}  (at {args.threshold:g} m, {report['seconds']:.1f} s)")
    if args.save_descriptors:
        save_descriptors(args.save_descriptors, split, db_desc, q_desc)
    if args.plots:
        for path in plot_recalls(report, args.plots):
            print(f"plot: {path}")
    return _finish(args, report)


# --- train ---------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="strategy preset, e.g. config/strategies/simclr-fc-1-2048-1.yaml")
    p.add_argument("--data", required=True, help="dataset root with train/val/test splits")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, test.json)")
    p.add_argument("--resume", help="RUN_DIR/last.ckpt of an interrupted run")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--max-epochs", type=int, help="stop after this many epochs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    _common(p)


@command("train", "train a strategy (an SSL method on GeoPairs, or the triplet baseline)", _train_args)
def run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import train

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"trainer.max_steps={args.max_steps}")
    if args.max_epochs is not None:
        overrides.append(f"trainer.max_epochs={args.max_epochs}")
    cfg = load_config(args.config, overrides)
    summary = train(cfg, args.data, args.out, resume=args.resume, progress=not args.quiet)
    line = f"trained {cfg.get('name') or cfg['method']}: {summary['steps']} steps in {summary['train_seconds']:.0f} s"
    if "test" in summary:
        line += f"; test {format_recall(summary['test']['recall'])}"
    print(line)
    print(f"checkpoints: {args.out}/last.ckpt" + (f", {args.out}/best.ckpt" if summary["best_val_r5"] is not None else ""))
    return _finish(args, summary)


# --- demo ----------------------------------------------------------------------------------
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the world and the runs")
    p.add_argument("--preset", default="demo", help="synthetic world preset")
    p.add_argument("--seed", type=int, default=0)
    _runtime(p)
    _common(p)


@command("demo", "the whole pipeline on the built-in synthetic world", _demo_args)
def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    return _finish(args, demo(Path(args.out), preset=args.preset, seed=args.seed, device_name=args.device,
                              batch_size=args.batch_size, workers=args.workers, progress=not args.quiet))


# Commands that live beside the library part they drive; importing one registers it.
COMMAND_MODULES = ("vgssl_core.mapdb_cli", "vgssl_core.replay_cli", "vgssl_core.results_cli")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for module in COMMAND_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    parser = argparse.ArgumentParser(prog="vgssl", description="Self-supervised visual geo-localization")
    parser.add_argument("--version", action="version", version=f"vgssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, _, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for chatty in ("faiss", "pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may sit anywhere among the options (argparse keeps positionals together)
    if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        json_path = getattr(args, "json", None)
        if json_path and Path(json_path).is_dir():  # before the work, not after it
            raise VgsslError(f"{json_path}: is a folder; give a file path for --json")
        return COMMANDS[args.command][1](args)
    except VgsslError as exc:
        print(f"vgssl {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"vgssl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
