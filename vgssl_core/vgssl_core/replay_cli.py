"""``vgssl replay`` and the ``--bag`` side of ``vgssl synth``: bags in, reports out.

Thin argument parsing over ``replay`` and ``drive``; importing this module registers ``replay``
with the ``vgssl`` command line (``cli.COMMAND_MODULES``). ``vgssl synth`` takes its drive
options from :func:`add_drive_args` and hands ``--bag`` runs to :func:`run_synth_bag`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import _common, _finish, _parse_ns, command, format_recall
from .errors import VgsslError

# --- vgssl synth --bag ---------------------------------------------------------------------
DRIVE_DEFAULTS = {"split": "test", "world": None, "condition": "query", "drive_seed": 0, "storage": "mcap",
                  "compressed": False, "rate": 2.0, "gnss_rate": 5.0, "speed": 8.0, "gnss_noise_m": 2.0,
                  "gnss_dropout": 0.0, "gnss_dropout_mode": "mixed", "max_frames": None}


def add_drive_args(p: argparse.ArgumentParser) -> None:
    """Options of a synthetic drive (``vgssl synth --bag OUT ...``); ``--preset/--seed/--size`` are synth's own."""
    from .bags import STORAGES
    from .drive import DROPOUT_MODES
    from .synth import SPLITS

    g = p.add_argument_group("drive recorded as a rosbag2 bag (with --bag)")
    g.add_argument("--split", choices=SPLITS, help="district to drive: the dataset split's (default test)")
    g.add_argument("--world", metavar="ROOT", help="drive the district of this written world (its seed and size)")
    g.add_argument("--condition", help="database | query (drawn like the dataset's) | TIME[,WEATHER[,SEASON]], "
                                       "e.g. night,rain,winter (default query)")
    g.add_argument("--drive-seed", type=int, help="seed of the drive's look, traffic and GNSS noise (default 0)")
    g.add_argument("--storage", choices=STORAGES, help="bag storage format (default mcap)")
    g.add_argument("--compressed", action="store_true", default=None,
                   help="record sensor_msgs/CompressedImage JPEG on /camera/image_raw/compressed")
    g.add_argument("--rate", type=float, metavar="HZ", help="camera frames per second (default 2)")
    g.add_argument("--gnss-rate", type=float, metavar="HZ", help="GNSS fixes per second (default 5)")
    g.add_argument("--speed", type=float, metavar="M_S", help="driving speed in m/s (default 8)")
    g.add_argument("--gnss-noise-m", type=float, metavar="SIGMA", help="GNSS position noise in metres (default 2)")
    g.add_argument("--gnss-dropout", type=float, metavar="P", help="share of GNSS epochs lost (default 0)")
    g.add_argument("--gnss-dropout-mode", choices=DROPOUT_MODES,
                   help="lost epochs as NO_FIX messages, missing messages, or both (default mixed)")
    g.add_argument("--max-frames", type=int, help="stop the drive after this many camera frames")


def reject_drive_options(args: argparse.Namespace) -> None:
    """Drive options make no sense for a dataset (``--out``): say so instead of ignoring them."""
    given = [k for k in DRIVE_DEFAULTS if getattr(args, k, None) is not None]
    if given:
        raise VgsslError(f"--{given[0].replace('_', '-')} is an option of a drive; use it with --bag OUT, not --out")


def run_synth_bag(args: argparse.Namespace, size: tuple[int, int] | None) -> int:
    """``vgssl synth --bag OUT``: record a synthetic drive."""
    from .drive import record_drive

    opt = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in DRIVE_DEFAULTS.items()}
    summary = record_drive(
        args.bag, preset=args.preset, seed=args.seed, split=opt["split"], world=opt["world"],
        condition=opt["condition"], drive_seed=opt["drive_seed"], storage=opt["storage"],
        compressed=bool(opt["compressed"]), rate_hz=opt["rate"], gnss_rate_hz=opt["gnss_rate"], speed_mps=opt["speed"],
        gnss_noise_m=opt["gnss_noise_m"], gnss_dropout=opt["gnss_dropout"], dropout_mode=opt["gnss_dropout_mode"],
        image_size=size, max_frames=opt["max_frames"], progress=not args.quiet)
    s, look = summary, summary["condition_look"]
    print(f"drive through the {s['district']} district ({s['preset'] or s['world']}, seed {s['seed']}): "
          f"{s['frames']} frames on {s['image_topic']}, {s['gnss_epochs'] - s['gnss_missing']} fixes on "
          f"{s['gnss_topic']} ({s['gnss_no_fix']} NO_FIX, {s['gnss_missing']} missing), {s['duration_s']:.1f} s, "
          f"{look['time_of_day']}/{look['weather']}/{look['season']} -> {s['bag']} ({s['storage']}, "
          f"{s['seconds']:.1f} s)")
    return _finish(args, summary)


# --- vgssl replay --------------------------------------------------------------------------
def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise VgsslError(f"{option} must be comma-separated numbers, got '{text}'") from None
    if not values or min(values) <= 0:
        raise VgsslError(f"{option} values must be > 0, got '{text}'")
    return values


def _replay_args(p: argparse.ArgumentParser) -> None:
    from .fusion import METHODS

    p.add_argument("--bag", required=True, help="rosbag2 bag: folder, .mcap or .db3")
    p.add_argument("--db", required=True, help="database folder written by 'vgssl build-db'")
    p.add_argument("--ckpt", required=True, help="the checkpoint the database was built with")
    p.add_argument("--out", required=True, help="folder for report.json, report.md, route.png, frames.npz")
    p.add_argument("--image-topic", help="sensor_msgs/Image or CompressedImage topic (default: the bag's only one)")
    p.add_argument("--gnss-topic", help="sensor_msgs/NavSatFix ground truth (default: the bag's only one)")
    p.add_argument("--fusion", default="bayes", choices=METHODS,
                   help="temporal fusion over frames (default bayes; the report shows Recall@1 with and without)")
    p.add_argument("--every", type=int, default=1, metavar="K", help="use every K-th frame (default 1: all)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--max-gap", type=float, default=1.0, metavar="S",
                   help="GNSS fixes around a frame may be at most this far apart (default 1 s)")
    p.add_argument("--gnss-tolerance", type=float, default=0.2, metavar="S",
                   help="a frame this close before the first / after the last GNSS fix takes that fix "
                        "(default 0.2 s); further out it is skipped as gnss_outside")
    p.add_argument("--threshold", type=float, default=25.0, help="metres for a correct match (default 25)")
    p.add_argument("--thresholds", default="5,10,15,25,50,100", help="also report recall at these distances (m)")
    p.add_argument("--recall-n", default="1,5,10,20", help="comma-separated N values")
    p.add_argument("--top-k", type=int, default=5, help="matches per frame for the fix, as the live localizer")
    p.add_argument("--max-speed", type=float, help="fusion: fastest plausible speed in m/s (default 15)")
    p.add_argument("--save-descriptors", action="store_true", help="also store the frame descriptors in frames.npz")
    p.add_argument("--force", action="store_true", help="use the database even if built with another checkpoint")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto: CUDA when available)")
    _common(p)


@command("replay", "localize every frame of a rosbag2 bag and report Recall@N against its GNSS", _replay_args)
def run_replay_command(args: argparse.Namespace) -> int:
    from .bags import IMAGE_TYPES, NAVSATFIX, BagReader
    from .fusion import FusionParams
    from .localization import Localizer
    from .replay import run_replay, write_report

    ns = _parse_ns(args.recall_n)
    thresholds = _floats(args.thresholds, "--thresholds")
    if not args.threshold > 0:
        raise VgsslError(f"--threshold must be > 0 m, got {args.threshold}")
    if args.top_k < 1:
        raise VgsslError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.gnss_tolerance >= 0:  # before the model loads (Replay checks it again)
        raise VgsslError(f"--gnss-tolerance must be >= 0 s, got {args.gnss_tolerance}")
    if args.max_frames is not None and args.max_frames < 1:
        raise VgsslError(f"--max-frames must be >= 1, got {args.max_frames}")
    params = None
    if args.max_speed is not None:
        try:
            params = FusionParams(max_speed_mps=args.max_speed)
        except ValueError as exc:
            raise VgsslError(f"--max-speed: {exc}") from None
    out = Path(args.out)
    if out.is_file():
        raise VgsslError(f"{out}: is a file; --out must be a folder")
    with BagReader(args.bag) as bag:  # bag mistakes first: they are found in milliseconds, the model takes seconds
        image_topic = bag.pick_topic(args.image_topic, IMAGE_TYPES, "image topic", "--image-topic")
        gnss_topic = bag.pick_topic(args.gnss_topic, (NAVSATFIX,), "GNSS topic", "--gnss-topic")
        localizer = Localizer(args.ckpt, args.db, device=args.device, top_k=args.top_k, force=args.force)
        forced = "" if localizer.checkpoint_matches_database else "  [--force: built with another checkpoint]"
        print(f"model: {localizer.model_note}; database: {localizer.database.path} "
              f"({len(localizer.database)} places){forced}")
        result = run_replay(bag, localizer, image_topic=image_topic, gnss_topic=gnss_topic, every=args.every,
                            max_gap_s=args.max_gap, gnss_tolerance_s=args.gnss_tolerance,
                            fusion=args.fusion, fusion_params=params, ns=ns,
                            threshold_m=args.threshold, thresholds=thresholds, max_frames=args.max_frames,
                            progress=not args.quiet)
    write_report(result, out, save_descriptors=args.save_descriptors)
    r = result.report
    print(summary_line(r) + f" -> {out}/report.json")
    _finish(args, r)
    if r["interrupted"]:
        print(f"vgssl replay: interrupted after {r['n_read']} frames; the report covers those frames only",
              file=sys.stderr)
        return 130
    if r["stopped"]:
        raise VgsslError(f"{r['stopped']}; partial report of the first {r['n_read']} frames in {out}")
    if r["recall"] is None:
        raise VgsslError(f"{r['warnings'][-1]}; check --gnss-topic and --max-gap (report in {out})")
    return 0


def summary_line(r: dict) -> str:
    """One line: frames, skips, recall, fused recall, error, latency, speed."""
    skipped = ", ".join(f"{n} {k}" for k, n in r["skipped"].items())
    line = f"{Path(r['bag']).name}: {r['n_frames']} frames"
    if skipped:
        line += f" ({r['n_skipped']} skipped: {skipped})"
    if r["recall"]:
        line += f"  {format_recall({int(n): v for n, v in r['recall'].items()})} at {r['threshold_m']:g} m"
        fusion = r.get("fusion") or {}
        if fusion.get("method", "none") != "none":
            line += f"  fused R@1 {fusion['recall']['1']:.1f}"
        line += f"  error median {r['error_m']['median']:.1f} m"
    if r["latency_ms"]:
        line += f"  latency p50 {r['latency_ms']['p50']:.1f} ms p95 {r['latency_ms']['p95']:.1f} ms"
    if r["frames_per_s"]:
        line += f"  {r['frames_per_s']:.1f} frames/s"
    return line
