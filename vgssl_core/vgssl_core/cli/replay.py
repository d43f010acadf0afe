"""``vgssl replay`` and the ``--bag`` side of ``vgssl synth``: bags in, reports out.

Thin argument parsing over ``replay`` and ``drive``; importing this module registers ``replay``
with the ``vgssl`` command line (``cli.COMMAND_MODULES``). ``vgssl synth`` takes its drive
options from :func:`add_drive_args` and hands ``--bag`` runs to :func:`run_synth_bag`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vgssl_core.cli.common import (
    add_common, finish, nonnegative_float, parse_floats, parse_ns, positive_float, positive_int,
    registrar,
)
from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.errors import VgsslError
from vgssl_core.rosbag.gnss import GNSS_TOLERANCE_S
COMMANDS: list = []
command = registrar(COMMANDS)


# --- vgssl replay --------------------------------------------------------------------------
def _replay_args(p: argparse.ArgumentParser) -> None:
    from vgssl_core.localization.fusion import METHODS

    p.add_argument("--bag", required=True, help="rosbag2 bag: folder, .mcap or .db3")
    p.add_argument("--db", required=True, help="database folder written by 'vgssl build-db'")
    p.add_argument("--ckpt", required=True, help="the checkpoint the database was built with")
    p.add_argument("--out", required=True, help="folder for report.json, report.md, route.png, frames.npz")
    p.add_argument("--image-topic", help="sensor_msgs/Image or CompressedImage topic (default: the bag's only one)")
    p.add_argument("--gnss-topic", help="sensor_msgs/NavSatFix ground truth (default: the bag's only one)")
    p.add_argument("--fusion", default="bayes", choices=METHODS,
                   help="temporal fusion over frames (default bayes; the report shows Recall@1 with and without)")
    p.add_argument("--every", type=positive_int, default=1, metavar="K", help="use every K-th frame (default 1: all)")
    p.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    p.add_argument("--max-gap", type=positive_float, default=1.0, metavar="S",
                   help="GNSS fixes around a frame may be at most this far apart (default 1 s)")
    p.add_argument("--gnss-tolerance", type=nonnegative_float, default=GNSS_TOLERANCE_S, metavar="S",
                   help="a frame this close before the first / after the last GNSS fix takes that fix "
                        "(default 0.2 s); further out it is skipped as gnss_outside")
    p.add_argument("--threshold", type=positive_float, default=EVAL_RADIUS_M, help="metres for a correct match (default 25)")
    p.add_argument("--thresholds", default="5,10,15,25,50,100", help="also report recall at these distances (m)")
    p.add_argument("--recall-n", default="1,5,10,20", help="comma-separated N values")
    p.add_argument("--top-k", type=positive_int, default=5, help="matches per frame for the fix, as the live localizer")
    p.add_argument("--max-speed", type=positive_float, help="fusion: fastest plausible speed in m/s (default 15)")
    p.add_argument("--save-descriptors", action="store_true", help="also store the frame descriptors in frames.npz")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration from 'vgssl calibrate': publish its confidence and covariance, and report both")
    p.add_argument("--force", action="store_true",
                   help="use the database (and --calibration) even if made for another checkpoint")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto: CUDA when available)")
    add_common(p)


@command("replay", "localize every frame of a rosbag2 bag and report Recall@N against its GNSS", _replay_args)
def run_replay_command(args: argparse.Namespace) -> int:
    from vgssl_core.rosbag.bags import IMAGE_TYPES, NAVSATFIX, BagReader
    from vgssl_core.localization.fusion import FusionParams
    from vgssl_core.localization.localizer import Localizer
    from vgssl_core.rosbag.replay import run_replay
    from vgssl_core.localization.calibration import summary_line as calibration_line
    from vgssl_core.rosbag.report import summary_line, write_report

    ns = parse_ns(args.recall_n)
    thresholds = parse_floats(args.thresholds, "--thresholds")
    params = None
    if args.max_speed is not None:
        try:
            params = FusionParams(max_speed_mps=args.max_speed)
        except ValueError as exc:
            raise VgsslError(f"--max-speed: {exc}") from None
    calibration = None
    if args.calibration:
        from vgssl_core.localization.calibration import Calibration

        calibration = Calibration.load(args.calibration)
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
                            calibration=calibration, force_calibration=args.force, progress=not args.quiet)
    if calibration is not None:
        result.report["calibration"]["file"] = str(args.calibration)
    write_report(result, out, save_descriptors=args.save_descriptors)
    r = result.report
    print(summary_line(r) + f" -> {out}/report.json")
    for label, m in (r.get("calibration") or {}).items():
        if isinstance(m, dict):
            print("  " + calibration_line(label, m))
    if r.get("calibration") and not r["calibration"].get("calibrated"):
        print("  uncalibrated: the confidence ranks fixes, it is not a probability (see 'vgssl calibrate')")
    finish(args, r)
    if r["interrupted"]:
        print(f"vgssl replay: interrupted after {r['n_read']} frames; the report covers those frames only",
              file=sys.stderr)
        return 130
    if r["stopped"]:
        raise VgsslError(f"{r['stopped']}; partial report of the first {r['n_read']} frames in {out}")
    if r["recall"] is None:
        raise VgsslError(f"{r['warnings'][-1]}; check --gnss-topic and --max-gap (report in {out})")
    return 0
