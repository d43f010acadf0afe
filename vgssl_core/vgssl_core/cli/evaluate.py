"""``vgssl eval``: Recall@N of a checkpoint, or of an untrained model, on a dataset split."""

from __future__ import annotations

import argparse
from typing import Any

from vgssl_core.cli.common import add_common, add_runtime, finish, format_recall, parse_ns, positive_float, registrar
from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.errors import VgsslError

COMMANDS: list = []
command = registrar(COMMANDS)


# --- eval ----------------------------------------------------------------------------------
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root (<root>/images/<split>/...)")
    p.add_argument("--split", default="test")
    p.add_argument("--ckpt", help="checkpoint; without it, the untrained descriptor of the model.* overrides")
    p.add_argument("--recall-n", default="1,5,10,20", help="comma-separated N values")
    p.add_argument("--threshold", type=positive_float, default=EVAL_RADIUS_M, help="metres for a correct match")
    p.add_argument("--save-descriptors", metavar="NPZ", help="write db_desc, q_desc, db_utm, q_utm")
    p.add_argument("--plots", metavar="PREFIX", help="write PREFIXrecall_vs_n.png and PREFIXrecall_vs_threshold.png")
    p.add_argument("overrides", nargs="*", metavar="model.key=value",
                   help="untrained model config, e.g. model.backbone=efficientnet_lite0 model.weights=imagenet")
    add_runtime(p)
    add_common(p)


def _eval_model_overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """``model.key=value`` overrides -> a partial model config (None: the default descriptor).

    Only for the untrained model: a checkpoint carries its own config, so overriding it would
    describe a network other than the one trained.
    """
    from vgssl_core.training.config import parse_override

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


@command("eval", "Recall@N of a checkpoint (or the untrained descriptor) on a split", _eval_args)
def run_eval(args: argparse.Namespace) -> int:
    from vgssl_core.data.dataset import load_split
    from vgssl_core.evaluation.descriptors import resolve_device
    from vgssl_core.evaluation.split import evaluate_split, save_descriptors
    from vgssl_core.models.loading import load_descriptor_model
    from vgssl_core.evaluation.plots import plot_recalls

    ns = parse_ns(args.recall_n)
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
    return finish(args, report)


