"""``vgssl dataset``: a training dataset from a robot's own drives (``rosbag.dataset``)."""

from __future__ import annotations

import argparse

from vgssl_core.cli.common import add_common, finish, registrar
from vgssl_core.errors import VgsslError

COMMANDS: list = []
command = registrar(COMMANDS)


def parse_size(text: str | None, option: str = "--size") -> tuple[int, int] | None:
    """``WxH`` -> (width, height); None stays None."""
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise VgsslError(f"{option} must look like 160x120 (width x height), got '{text}'") from None
    return w, h


def _dataset_args(p: argparse.ArgumentParser) -> None:
    from vgssl_core.rosbag.dataset import DEFAULT_BLOCK_M, DEFAULT_MIN_SPACING_M

    p.add_argument("--bag", action="append", required=True, metavar="DRIVE",
                   help="a drive: rosbag2 bag (folder, .mcap or .db3) with a camera and a NavSatFix topic; "
                        "repeat for each drive")
    p.add_argument("--out", required=True, help="dataset folder to write (must be new or empty)")
    p.add_argument("--map", metavar="DRIVE",
                   help="the drive whose frames form the database (default: the first --bag); the others give queries")
    p.add_argument("--image-topic", help="sensor_msgs/Image or CompressedImage topic (default: each bag's only one)")
    p.add_argument("--gnss-topic", help="sensor_msgs/NavSatFix topic (default: each bag's only one)")
    p.add_argument("--min-spacing", type=float, default=DEFAULT_MIN_SPACING_M, metavar="M",
                   help=f"keep a frame only this far from the drive's previous kept one (default {DEFAULT_MIN_SPACING_M:g} m)")
    p.add_argument("--block", type=float, default=DEFAULT_BLOCK_M, metavar="M",
                   help=f"side of the square areas dealt to train/val/test (default {DEFAULT_BLOCK_M:g} m)")
    p.add_argument("--size", metavar="WxH", help="resize the images, e.g. 160x120 (default: as recorded)")
    p.add_argument("--max-gap", type=float, default=1.0, metavar="S",
                   help="GNSS fixes around a frame may be at most this far apart, else it is skipped (default 1 s)")
    add_common(p)


@command("dataset", "a train/val/test dataset (benchmark layout) from your own drives' bags", _dataset_args)
def run_dataset(args: argparse.Namespace) -> int:
    from vgssl_core.rosbag.dataset import make_dataset

    summary = make_dataset(args.bag, args.out, map_bag=args.map, image_topic=args.image_topic,
                           gnss_topic=args.gnss_topic, min_spacing_m=args.min_spacing, block_m=args.block,
                           size=parse_size(args.size), max_gap_s=args.max_gap, progress=not args.quiet)
    for d in summary["drives"]:
        skipped = ", ".join(f"{n} {k}" for k, n in d["skipped"].items()) or "none"
        print(f"{d['side']:>8}: {d['bag']}: {d['kept']} of {d['n_images']} frames (skipped: {skipped})")
    for name, c in summary["splits"].items():
        print(f"  {name}: {c['database']} database, {c['queries']} queries")
    dropped = ", ".join(f"{n} {k}" for k, n in summary["dropped"].items()) or "none"
    print(f"dropped: {dropped}; {len(summary['blocks'])} blocks of {summary['block_m']:g} m, "
          f"UTM {summary['zone']}{summary['letter']} -> {summary['root']} ({summary['seconds']:.1f} s)")
    return finish(args, summary)
