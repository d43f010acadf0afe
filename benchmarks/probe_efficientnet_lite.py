"""EfficientNet-Lite0/1/2 vs ResNet-18 as descriptor backbones on a CPU: parameters and images/s.

Why: the Lite backbones are candidates for the robot's CPU, where ResNet-18 conv4 + GeM is the
default descriptor. Descriptor = backbone -> GeM (no head), as every consumer loads and runs it
(``load_descriptor_model``, ``embed_batch``: eval mode, no grad, channels-last), batch 16,
``torch.set_num_threads(2)``; wall-clock images/s (median over timed batches after one warm-up
batch) and, since the development machines are shared, the process CPU seconds per image too.

    python benchmarks/probe_efficientnet_lite.py [--sizes 120x160,480x640] [--batches 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from benchkit import machine  # benchmarks/benchkit.py, next to this script

from vgssl_core.evaluation.descriptors import embed_batch
from vgssl_core.models.loading import load_descriptor_model
from vgssl_core.models.backbones import BACKBONES

CANDIDATES = [  # (label, model config)
    ("resnet18 conv4 + GeM", {"backbone": "resnet18", "layer": "conv4"}),
    ("efficientnet_lite0 conv4 + GeM", {"backbone": "efficientnet_lite0", "layer": "conv4"}),
    ("efficientnet_lite0 conv5 + GeM", {"backbone": "efficientnet_lite0", "layer": "conv5"}),
    ("efficientnet_lite1 conv5 + GeM", {"backbone": "efficientnet_lite1", "layer": "conv5"}),
    ("efficientnet_lite2 conv5 + GeM", {"backbone": "efficientnet_lite2", "layer": "conv5"}),
]


def throughput(model: torch.nn.Module, size: tuple[int, int], batch: int, batches: int) -> dict[str, float]:
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    cpu_device = torch.device("cpu")
    walls, cpus = [], []
    embed_batch(model, x, cpu_device)  # warm-up
    for _ in range(batches):
        wall, cpu = time.perf_counter(), time.process_time()
        embed_batch(model, x, cpu_device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"images_per_s": batch / statistics.median(walls), "cpu_ms_per_image": 1000 * statistics.median(cpus) / batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="120x160,480x640", help="HxW list")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=5, help="timed batches per size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", help="comma-separated substrings: measure only the matching models")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = []
    wanted = [w for w in (args.only or "").split(",") if w]
    for label, cfg in CANDIDATES:
        if wanted and not any(w in label for w in wanted):
            continue
        model, _, _ = load_descriptor_model(None, {**cfg, "aggregation": "gem", "weights": "random"})
        full = sum(p.numel() for p in BACKBONES[cfg["backbone"]].network().parameters())
        row = {"model": label, "descriptor_dim": model.descriptor_dim,
               "params_descriptor": sum(p.numel() for p in model.parameters()), "params_full_imagenet_net": full}
        for size in sizes:
            row[f"{size[0]}x{size[1]}"] = throughput(model, size, args.batch, args.batches)
        rows.append(row)
        cells = "  ".join(f"{k}: {v['images_per_s']:6.1f} img/s ({v['cpu_ms_per_image']:.1f} CPU ms/img)"
                          for k, v in row.items() if isinstance(v, dict))
        print(f"{label:32s} D={row['descriptor_dim']:5d} params {row['params_descriptor'] / 1e6:5.2f} M "
              f"(full net {full / 1e6:5.2f} M)  {cells}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine(), "threads": args.threads, "batch": args.batch, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
