"""``vgssl table``, ``vgssl gradcam`` and ``vgssl export``: results, explanations, deployment files.

Thin argument parsing over ``results``, ``attention`` and ``export``; importing this module
registers the three commands with the ``vgssl`` command line.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from vgssl_core.cli.common import add_common, finish, parse_ns, positive_int, registrar
from vgssl_core.errors import VgsslError

COMMANDS: list = []
command = registrar(COMMANDS)


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto: CUDA when available)")


def _split_overrides(args: argparse.Namespace, *names: str) -> None:
    """``key=value`` overrides may sit anywhere; list options would swallow them, so move them back."""
    for name in names:
        values = getattr(args, name, None) or []
        keep = [v for v in values if "=" not in str(v) or Path(v).exists()]
        args.overrides = list(args.overrides) + [v for v in values if v not in keep]
        setattr(args, name, keep or None)


def _out_folder(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise VgsslError(f"--out {out}: a file is in the way; --out names a folder")
    return out


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise VgsslError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise VgsslError(f"--seeds must list distinct integers, got '{text}'")
    return seeds


# --- table ---------------------------------------------------------------------------------
def _table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="+", metavar="PRESET",
                   help="strategy presets (files, or names of shipped presets); default the demo-* presets")
    p.add_argument("--data", nargs="+", metavar="ROOT",
                   help="dataset roots, one column group each; default the synthetic world under --out")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (mean ± std over them)")
    p.add_argument("--runs", nargs="+", metavar="DIR",
                   help="tabulate existing run folders (or folders holding them) instead of training")
    p.add_argument("--out", default="runs/table", help="folder for the runs, table.md and table.csv")
    p.add_argument("--world-preset", default="demo", help="synthetic world preset when no --data (default demo)")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--recall-n", default="1,5,10", help="R@N columns (default 1,5,10)")
    p.add_argument("--attention", type=int, default=0, metavar="N",
                   help="also measure geo-relevance (Grad-CAM on N test queries) for each run with class masks")
    p.add_argument("--attention-target", default="retrieved", choices=("retrieved", "true"))
    p.add_argument("--no-start", action="store_true",
                   help="leave out the starting-point rows (the untrained model of each backbone and init)")
    p.add_argument("--max-steps", type=positive_int, help="stop each training after this many optimiser steps")
    p.add_argument("--max-epochs", type=positive_int, help="stop each training after this many epochs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every training")
    p.add_argument("--device", default="auto",
                   help="for --attention (auto | cpu | cuda); training follows trainer.accelerator (an override)")
    add_common(p)


@command("table", "train a grid of strategies (or collect runs) and write the paper-style table", _table_args)
def run_table(args: argparse.Namespace) -> int:
    from vgssl_core.evaluation.descriptors import resolve_device
    from vgssl_core.training.results import (DEMO_PRESETS, build_table, collect_runs, ensure_attention, run_grid,
                          starting_points, synthetic_world, to_csv, to_dict, to_markdown)

    _split_overrides(args, "configs", "data", "runs")
    ns = [str(n) for n in parse_ns(args.recall_n)]
    if args.attention < 0:
        raise VgsslError(f"--attention must be >= 0, got {args.attention}")
    device = resolve_device(args.device)
    out = _out_folder(args.out)
    if args.runs:
        if args.configs or args.data or args.overrides or args.max_steps is not None or args.max_epochs is not None:
            raise VgsslError("--runs collects finished runs; it takes no --configs, --data, --max-steps, "
                             "--max-epochs or overrides")
        runs = collect_runs(args.runs)
        if args.attention:
            runs = [ensure_attention(r, n=args.attention, target=args.attention_target, device=device) for r in runs]
    else:
        overrides = list(args.overrides)
        if args.max_steps is not None:
            overrides.append(f"trainer.max_steps={args.max_steps}")
        if args.max_epochs is not None:
            overrides.append(f"trainer.max_epochs={args.max_epochs}")
        out.mkdir(parents=True, exist_ok=True)
        data = args.data or [synthetic_world(out, args.world_preset, args.world_seed, progress=not args.quiet)]
        runs = run_grid(args.configs or list(DEMO_PRESETS), data, seeds=_seeds(args.seeds), out=out,
                        overrides=overrides, progress=not args.quiet, attention_n=args.attention,
                        attention_target=args.attention_target, device=device)
    if not args.no_start:
        runs = starting_points(runs, out, device=device, progress=not args.quiet) + runs
    table = build_table(runs, ns)
    markdown, text_csv = to_markdown(table), to_csv(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown)
    (out / "table.csv").write_text(text_csv)
    print()
    print(markdown)
    print(f"table: {out / 'table.md'}, {out / 'table.csv'} ({len(runs)} runs)")
    return finish(args, {**to_dict(table), "markdown": markdown, "table_md": str(out / "table.md"),
                          "table_csv": str(out / "table.csv")})


# --- gradcam -------------------------------------------------------------------------------
def _gradcam_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", action="append", required=True, metavar="CKPT",
                   help="checkpoint (or run folder: its best.ckpt, else last.ckpt) to explain; "
                        "repeat for a side-by-side panel")
    p.add_argument("--labels", help="comma-separated column names (default: each checkpoint's strategy name)")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=positive_int, default=8, help="queries to explain, spread over the split (default 8)")
    p.add_argument("--target", default="retrieved", choices=("retrieved", "true"),
                   help="similarity to the retrieved database image (default) or to the true nearest one")
    p.add_argument("--out", required=True, help="folder for the overlays, panel.png and attention.json")
    _device_arg(p)
    add_common(p)


def _checkpoints(given: list[str], labels: str | None) -> list[tuple[Path, str]]:
    """(checkpoint file, column label) per --ckpt; a run folder gives its own checkpoint. Every file is
    read here, so a missing or foreign one fails before the first model's maps are made."""
    from vgssl_core.models.checkpoint import KEY, read_checkpoint
    from vgssl_core.training.results import run_checkpoint

    ckpts = [run_checkpoint(Path(c)) if Path(c).is_dir() else Path(c) for c in given]
    metas = [read_checkpoint(ckpt)[KEY] for ckpt in ckpts]
    if labels:
        names = [s.strip() for s in labels.split(",")]
        if len(names) != len(ckpts) or not all(names):
            raise VgsslError(f"--labels needs {len(ckpts)} non-empty name(s), one per --ckpt, got '{labels}'")
    else:
        names = [(meta.get("config") or {}).get("name") or meta.get("method") or ckpt.stem
                 for ckpt, meta in zip(ckpts, metas)]
    return list(zip(ckpts, _unique(names)))


def _unique(names: list[str]) -> list[str]:
    """``a, a, b`` -> ``a, a-2, b``; a number is added until the name is unused (``a, a, a-2``)."""
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, k = name, 1
        while candidate in taken:
            k += 1
            candidate = f"{name}-{k}"
        taken.add(candidate)
        unique.append(candidate)
    return unique


def _folder_names(labels: list[str]) -> list[str]:
    """One overlay folder per label, safe as a file name and distinct even where labels differ only in
    punctuation (``SimCLR (a)`` / ``SimCLR [a]``); never ``.`` or ``..``."""
    return _unique([re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model" for label in labels])


def _pct(value) -> str:
    return "?" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


@command("gradcam", "Grad-CAM of descriptor models on queries, and their attention on geo-relevant classes",
         _gradcam_args)
def run_gradcam(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from vgssl_core.evaluation.attention import (GEO_CLASSES, TRANSIENT_CLASSES, explain_queries, has_masks, measure_shares, overlay,
                            pick_queries, save_panel)
    from vgssl_core.data.dataset import load_image, load_split
    from vgssl_core.evaluation.descriptors import resolve_device
    from vgssl_core.models.loading import load_descriptor_model
    from vgssl_core.training.results import _json_safe

    out = _out_folder(args.out)
    split = load_split(args.data, args.split)
    ckpts, labels = zip(*_checkpoints(args.ckpt, args.labels))
    device = resolve_device(args.device)
    queries = pick_queries(len(split.queries), args.n)
    masks = has_masks(args.data, args.split)
    images = [np.asarray(load_image(split.queries.paths[i])) for i in queries]
    columns: dict[str, list] = {}
    models = []
    for ckpt, label, name in zip(ckpts, labels, _folder_names(list(labels))):
        model, cfg, note = load_descriptor_model(ckpt)
        model.to(device)
        explained = explain_queries(model, cfg, split, queries, target=args.target, device=device,
                                    progress=not args.quiet)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        pictures = []
        for item, image in zip(explained, images):
            pictures.append(overlay(image, item["cam"]))
            Image.fromarray(pictures[-1]).save(folder / f"q{item['query']:04d}.png")
        columns[label] = pictures
        entry = {"label": label, "checkpoint": str(ckpt), "model": note, "overlays": str(folder),
                 "queries": [{k: v for k, v in e.items() if k != "cam"} for e in explained]}
        if masks:
            per_query, summary = measure_shares(args.data, args.split, explained)
            entry.update(summary)
            for q, shares in zip(entry["queries"], per_query):
                q.update({k: v for k, v in shares.items() if k != "query"})
            print(f"{label}: geo {_pct(summary['geo_share'])} of the attention on {_pct(summary['geo_pixel_share'])} "
                  f"of the pixels (lift {summary['geo_lift']:.2f}); transient {_pct(summary['transient_share'])} "
                  f"on {_pct(summary['transient_pixel_share'])} (lift {summary['transient_lift']:.2f})")
        else:
            print(f"{label}: overlays in {folder}")
        models.append(entry)
    panel = save_panel(out / "panel.png", images, columns, [f"query {i}" for i in queries])
    if not masks:
        print(f"note: {args.data} has no class masks for '{args.split}'; geo-relevance not measured")
    print(f"panel: {panel}")
    payload = _json_safe({"data": str(args.data), "split": args.split, "target": args.target, "queries": queries,
                          "classes": {"geo": list(GEO_CLASSES), "transient": list(TRANSIENT_CLASSES)},
                          "measured": masks, "panel": str(panel), "models": models})
    from vgssl_core.io import write_json

    write_json(out / "attention.json", payload)
    return finish(args, payload)


# --- export --------------------------------------------------------------------------------
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint to export")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--out", required=True, help="exported file (its sidecar is written as FILE.json)")
    p.add_argument("--dynamic", action="store_true", help="accept any input height/width (checked at two sizes)")
    p.add_argument("--height", type=positive_int, help="input height (default the model's image size)")
    p.add_argument("--width", type=positive_int, help="input width (default the model's image size)")
    add_common(p)


@command("export", "export a descriptor model to TorchScript or ONNX, with a sidecar JSON for the localizer",
         _export_args)
def run_export(args: argparse.Namespace) -> int:
    from vgssl_core.io import check_output
    from vgssl_core.models.export import export_model, is_exported, sidecar_path

    check_output(args.out, inputs=[args.ckpt], kind="export", ours=is_exported)
    check_output(sidecar_path(args.out), inputs=[args.ckpt], kind="json")
    if (args.height is None) != (args.width is None):
        raise VgsslError("give both --height and --width, or neither")
    size = [args.height, args.width] if args.height is not None else None
    side = export_model(args.ckpt, args.format, args.out, dynamic=args.dynamic, image_size=size)
    h, w = side["preprocessing"]["image_size"]
    worst = max(side["check"]["max_abs_diff"].values())
    print(f"exported {args.format} -> {args.out} (+ {sidecar_path(args.out).name}): {side['descriptor_dim']}-d "
          f"{side['metric']} descriptors from 3x{h}x{w} input{' (any size)' if args.dynamic else ''}; "
          f"max |exported - checkpoint| {worst:.1e} (tolerance {side['check']['tolerance']:g}) at "
          f"{', '.join(side['check']['max_abs_diff'])}")
    return finish(args, {"file": str(args.out), "sidecar": str(sidecar_path(args.out)), **side})
