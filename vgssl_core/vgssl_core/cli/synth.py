"""``vgssl synth``: the built-in synthetic world as a dataset, or a drive through it as a bag."""

from __future__ import annotations

import argparse

from vgssl_core.cli.common import add_common, finish, registrar
from vgssl_core.errors import VgsslError

COMMANDS: list = []
command = registrar(COMMANDS)


# --- vgssl synth --bag ---------------------------------------------------------------------
DRIVE_DEFAULTS = {"split": "test", "world": None, "condition": "query", "drive_seed": 0, "storage": "mcap",
                  "compressed": False, "rate": 2.0, "gnss_rate": 5.0, "speed": 8.0, "gnss_noise_m": 2.0,
                  "gnss_dropout": 0.0, "gnss_dropout_mode": "mixed", "max_frames": None}


def add_drive_args(p: argparse.ArgumentParser) -> None:
    """Options of a synthetic drive (``vgssl synth --bag OUT ...``); ``--preset/--seed/--size`` are synth's own."""
    from vgssl_core.rosbag.bags import STORAGES
    from vgssl_core.synth.drive import DROPOUT_MODES
    from vgssl_core.synth import SPLITS

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
    from vgssl_core.synth.drive import record_drive

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
    return finish(args, summary)


# --- synth ---------------------------------------------------------------------------------
def _synth_args(p: argparse.ArgumentParser) -> None:
    from vgssl_core.synth import PRESETS

    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="dataset folder to write")
    target.add_argument("--bag", metavar="OUT", help="record a drive through the world as a rosbag2 bag instead")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", metavar="WxH", help="image size, e.g. 160x120")
    add_drive_args(p)
    add_common(p)


@command("synth", "generate the built-in synthetic geo-tagged world", _synth_args)
def run_synth(args: argparse.Namespace) -> int:
    from vgssl_core.synth import generate_world

    size = None
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise VgsslError(f"--size must look like 160x120, got '{args.size}'") from None
        size = (w, h)

    if args.bag:
        return run_synth_bag(args, size)
    reject_drive_options(args)
    summary = generate_world(args.out, preset=args.preset, seed=args.seed, image_size=size, progress=not args.quiet)
    print(f"synthetic world '{args.preset}' (seed {args.seed}) written to {args.out}")
    for split, counts in summary.get("splits", {}).items():
        print(f"  {split}: {counts}")
    return finish(args, summary)


