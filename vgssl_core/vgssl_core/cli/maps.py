"""``vgssl build-db`` and ``vgssl localize``: a map from a dataset split, and fixes for image files.

Thin argument parsing over ``mapdb`` and ``localization``; importing this module registers the
two commands with the ``vgssl`` command line.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from vgssl_core.cli.common import (
    add_common, add_runtime, finish, nonnegative_float, positive_float, positive_int, registrar,
)
from vgssl_core.errors import VgsslError

COMMANDS: list = []
command = registrar(COMMANDS)


# --- build-db ------------------------------------------------------------------------------
def _index_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search index (approximate indexes for huge maps; see mapdb.INDEX_PARAMS)")
    g.add_argument("--index", default="flat", choices=("flat", "ivfpq", "hnsw"),
                   help="flat: exact (default); ivfpq: faiss IVF-PQ; hnsw: faiss HNSW")
    g.add_argument("--nlist", type=int, help="ivfpq: coarse cells (default about sqrt(N))")
    g.add_argument("--pq-m", type=int, help="ivfpq: sub-quantizers, must divide the dimension (default D/16)")
    g.add_argument("--pq-nbits", type=int, help="ivfpq: bits per sub-quantizer code (default 8)")
    g.add_argument("--nprobe", type=int, help="ivfpq: cells scanned per query (default 32)")
    g.add_argument("--rerank", type=int, help="ivfpq: candidates re-scored exactly (default 64; 0: none)")
    g.add_argument("--hnsw-m", type=int, help="hnsw: links per node (default 64)")
    g.add_argument("--ef-construction", type=int, help="hnsw: build-time beam width (default 128)")
    g.add_argument("--ef-search", type=int, help="hnsw: search-time beam width (default 512)")


def index_spec_from_args(args: argparse.Namespace) -> dict:
    """The ``--index`` options as ``mapdb.build_database``'s ``index`` argument."""
    names = {"ivfpq": {"nlist": "nlist", "pq_m": "m", "pq_nbits": "nbits", "nprobe": "nprobe", "rerank": "rerank"},
             "hnsw": {"hnsw_m": "M", "ef_construction": "ef_construction", "ef_search": "ef_search"}}
    kind = getattr(args, "index", "flat")
    for other, options in names.items():
        stray = [o for o in options if other != kind and getattr(args, o, None) is not None]
        if stray:
            raise VgsslError(f"--{stray[0].replace('_', '-')} applies to --index {other}, not --index {kind}")
    return {"type": kind, **{key: getattr(args, o) for o, key in names.get(kind, {}).items()
                             if getattr(args, o, None) is not None}}


def _bag_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mapping bag (with --bag; see replay.build_database_from_bag)")
    g.add_argument("--image-topic", help="sensor_msgs/Image or CompressedImage topic (default: the bag's only one)")
    g.add_argument("--gnss-topic", help="sensor_msgs/NavSatFix topic (default: the bag's only one)")
    g.add_argument("--max-gap", type=positive_float, default=1.0, metavar="S",
                   help="GNSS fixes around a frame may be at most this far apart, else it is skipped (default 1 s)")
    g.add_argument("--min-spacing", type=nonnegative_float, default=0.0, metavar="M",
                   help="keep a frame only this far from the previously kept one (default 0: every frame)")


def _build_from_bag(args: argparse.Namespace, model, cfg, device, index: dict):
    """``build-db --bag``: (database, extra JSON fields); prints what was kept and skipped."""
    from vgssl_core.rosbag.maps import build_database_from_bag

    db, sel = build_database_from_bag(model, cfg, args.ckpt, args.bag, args.out, image_topic=args.image_topic,
                                      gnss_topic=args.gnss_topic, max_gap_s=args.max_gap,
                                      min_spacing_m=args.min_spacing, device=device, batch_size=args.batch_size,
                                      workers=args.workers, progress=not args.quiet, index=index)
    skipped = ", ".join(f"{n} {k}" for k, n in sel.skipped.items()) or "none"
    print(f"bag: {len(sel.indices)} of {sel.n_images} frames kept (skipped: {skipped})")
    return db, {"kept": len(sel.indices), "n_images": sel.n_images, "skipped": sel.skipped, "gnss": sel.gnss}


def _build_db_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="dataset root (<root>/images/<split>/database/...)")
    source.add_argument("--bag", help="a mapping run instead: rosbag2 bag (folder, .mcap or .db3) with images and GNSS")
    p.add_argument("--split", default="test", help="split whose database images form the map (default test)")
    p.add_argument("--ckpt", required=True, help="checkpoint that describes the images (and later the queries)")
    p.add_argument("--out", required=True, help="database folder to write (replaced if it is a database)")
    _bag_args(p)
    _index_args(p)
    add_runtime(p)
    add_common(p)


@command("build-db", "build a localization database from a split's database images or a mapping bag",
         _build_db_args)
def run_build_db(args: argparse.Namespace) -> int:
    from vgssl_core.evaluation.descriptors import resolve_device
    from vgssl_core.models.loading import load_descriptor_model
    from vgssl_core.localization.database import build_database_from_split

    index = index_spec_from_args(args)
    device = resolve_device(args.device)
    model, cfg, note = load_descriptor_model(args.ckpt)
    print(f"model: {note}")
    model.to(device)
    start = time.perf_counter()
    extra: dict = {}
    if args.bag:
        db, extra = _build_from_bag(args, model, cfg, device, index)
    else:
        db = build_database_from_split(model, cfg, args.ckpt, args.data, args.split, args.out, device=device,
                                       batch_size=args.batch_size, workers=args.workers, progress=not args.quiet,
                                       index=index)
    seconds = time.perf_counter() - start
    m = db.manifest
    zone = f"UTM {m['utm_zone']}{m['utm_letter'] or ''}" if m["utm_zone"] is not None else "no UTM zone"
    print(f"database: {m['count']} images, {m['descriptor_dim']}-d {m['metric']} descriptors, {zone}, "
          f"{m.get('index_type', 'flat')} index -> {db.path} ({seconds:.1f} s)")
    return finish(args, {"database": str(db.path), "seconds": round(seconds, 3), "manifest": m, **extra})


# --- localize ------------------------------------------------------------------------------
def _localize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="database folder written by 'vgssl build-db'")
    p.add_argument("--ckpt", required=True, help="the checkpoint the database was built with")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to localize")
    p.add_argument("--top-k", type=positive_int, default=5, help="database matches per image (default 5)")
    p.add_argument("--force", action="store_true", help="use the database even if built with another checkpoint")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto: CUDA when available)")
    add_common(p)


def _fmt(value: float, spec: str) -> str:
    return "?" if value is None or not math.isfinite(value) else format(value, spec)


def summary_line(image: str, result) -> str:
    """One line per image: where, how sure, and the evidence."""
    e, best = result.estimate, result.best
    zone = f"{e.zone}{e.letter or ''}" if e.zone is not None else "-"
    return (f"{image}: lat {_fmt(e.latitude, '.6f')} lon {_fmt(e.longitude, '.6f')}  "
            f"UTM {zone} {e.easting:.1f} E {e.northing:.1f} N  confidence {result.confidence:.2f}  "
            f"best {best.id} (distance {best.distance:.4f})")


@command("localize", "localize image files against a database built with 'vgssl build-db'", _localize_args)
def run_localize(args: argparse.Namespace) -> int:
    import numpy as np

    from vgssl_core.data.dataset import load_image
    from vgssl_core.localization.localizer import Localizer

    if args.top_k < 1:
        raise VgsslError(f"--top-k must be >= 1, got {args.top_k}")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise VgsslError(f"{missing[0]}: image file not found{more}")
    localizer = Localizer(args.ckpt, args.db, device=args.device, top_k=args.top_k, force=args.force)
    print(f"model: {localizer.model_note}; database: {localizer.database.path} ({len(localizer.database)} images)"
          + ("" if localizer.checkpoint_matches_database else "  [--force: built with another checkpoint]"))
    results = []
    for image in args.images:
        result = localizer.localize(np.asarray(load_image(image)))
        print(summary_line(image, result))
        results.append({"image": str(image), **result.to_dict()})
    return finish(args, {
        "database": str(localizer.database.path),
        "checkpoint": str(args.ckpt),
        "checkpoint_sha256": localizer.checkpoint_sha256,
        "forced": not localizer.checkpoint_matches_database,
        "device": str(localizer.device),
        "top_k": args.top_k,
        "metric": localizer.database.metric,
        "results": results,
    })
