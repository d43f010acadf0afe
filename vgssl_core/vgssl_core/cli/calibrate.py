"""``vgssl calibrate``: replays of recorded drives in, a calibration file for the localizer out.

Thin argument parsing over ``localization.calibration``; the file goes to the ``localizer`` node
(parameter ``calibration``) and to ``vgssl replay --calibration`` (which measures it on another drive).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vgssl_core.cli.common import add_common, finish, registrar
from vgssl_core.errors import VgsslError

COMMANDS: list = []
command = registrar(COMMANDS)


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    from vgssl_core.localization.calibration import MIN_FRAMES

    p.add_argument("--replay", action="append", required=True, metavar="DIR",
                   help="output folder of 'vgssl replay' (report.json + frames.npz); repeat to pool several drives")
    p.add_argument("--out", required=True, help="calibration file to write (JSON)")
    p.add_argument("--threshold", type=float,
                   help="metres within which a fix counts as right (default: the replays' --threshold, 25)")
    p.add_argument("--min-frames", type=int, default=MIN_FRAMES,
                   help=f"refuse to fit on fewer evaluated frames (default {MIN_FRAMES})")
    add_common(p)


@command("calibrate", "fit the localizer's confidence (a probability) and covariance scale on replayed drives",
         _calibrate_args)
def run_calibrate(args: argparse.Namespace) -> int:
    from vgssl_core.localization.calibration import fit_calibration, load_replay, summary_line

    out = Path(args.out)
    if out.is_dir():
        raise VgsslError(f"{out}: is a folder; --out must be a file path (calibration.json)")
    if args.min_frames < 1:
        raise VgsslError(f"--min-frames must be >= 1, got {args.min_frames}")
    inputs = {Path(r).resolve() for r in args.replay}
    if out.resolve().parent in inputs and out.name in ("report.json", "frames.npz"):
        raise VgsslError(f"{out}: would overwrite a replay's {out.name}; write the calibration elsewhere")
    replays = [load_replay(r) for r in args.replay]
    cal, warnings = fit_calibration(replays, threshold_m=args.threshold, min_frames=args.min_frames)
    cal.save(out)
    fitted = cal.fitted_on
    print(f"calibration of {fitted['n_frames']} frames ({fitted['n_correct']} within {cal.threshold_m:g} m), "
          f"fusion {cal.fusion}, top_k {cal.top_k}, covariance {cal.covariance_scale:.3g} S + {cal.covariance_doubt_m2:.3g} m^2 x (1 - p) -> {out}")
    print("  " + summary_line("raw (in-sample)", fitted["raw"]))
    print("  " + summary_line("calibrated (in-sample)", fitted["calibrated"]))
    print("  check it on another drive: vgssl replay ... --calibration " + str(out))
    for w in warnings:
        print(f"vgssl calibrate: warning: {w}", file=sys.stderr)
    return finish(args, cal.to_dict())
