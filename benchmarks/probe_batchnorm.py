"""How much of the untrained descriptor's recall comes from BatchNorm's initial statistics.

A random ResNet whose BatchNorm still has its initial running statistics (mean 0, variance 1)
passes colour and brightness through in eval mode. This probe evaluates the untrained model of a
strategy preset on a split, then recomputes only the backbone's BatchNorm statistics on training
images (forward passes in train mode, no gradient step) and evaluates again. The gap is what a
training run with ``trainer.batchnorm: train`` must win back before it can gain anything (README,
"What the CPU demo shows").

    python benchmarks/probe_batchnorm.py --data runs/demo/world-demo-0 --config demo-simclr
"""

from __future__ import annotations

import argparse

import torch

from vgssl_core.training.config import load_config
from vgssl_core.data.dataset import load_image, load_split
from vgssl_core.evaluation.split import evaluate_split
from vgssl_core.models.loading import load_descriptor_model
from vgssl_core.data.transforms import eval_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset root (e.g. the demo world)")
    parser.add_argument("--config", default="demo-simclr", help="strategy preset whose model is probed")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=640, help="training images for the statistics")
    args = parser.parse_args()

    device = torch.device("cpu")
    split, train = load_split(args.data, args.split), load_split(args.data, "train")
    model, cfg, note = load_descriptor_model(None, load_config(args.config)["model"])
    print(note)

    def recall(tag: str) -> None:
        report = evaluate_split(model, cfg, split, device, progress=False)[0]
        print(f"{tag:<40} " + "  ".join(f"R@{n} {r:5.1f}" for n, r in report["recall"].items()))

    recall("initial BatchNorm statistics")
    half = args.images // 2
    paths = train.database.paths[:half] + train.queries.paths[:half]
    to_tensor = eval_transform(cfg["image_size"])
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(paths), 32):
            model(torch.stack([to_tensor(load_image(p)) for p in paths[i:i + 32]]))
    model.eval()
    recall(f"statistics of {len(paths)} training images")


if __name__ == "__main__":
    main()
