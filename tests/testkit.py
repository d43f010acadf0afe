"""Helpers shared by the test suites: hand-made geo-tagged datasets, the in-process CLI, and the
2-step checkpoint (+ its map database) that the tests of everything downstream of training use.

A module with a name of its own (not ``conftest``): ``tests/ros/conftest.py`` would otherwise
answer ``from conftest import ...`` whenever a ROS test file is collected first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vgssl_core.data.geo import format_image_name, utm_to_latlon

ZONE, LETTER = 32, "T"
ORIGIN = (396000.0, 4991000.0)


def write_geo_image(folder: Path, east: float, north: float, *, seed: int = 0, size=(32, 24),
                    suffix: str = ".jpg", zone: int = ZONE, letter: str = LETTER) -> Path:
    """A small random image named with its geo-tag, like the benchmark's files."""
    folder.mkdir(parents=True, exist_ok=True)
    lat, lon = utm_to_latlon(east, north, zone, letter)
    path = folder / format_image_name(east, north, zone, letter, lat, lon, suffix=suffix)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_dataset(root: Path, db_xy, q_xy, split: str = "test") -> Path:
    """``root/images/<split>/{database,queries}`` with images at ORIGIN + the given offsets (m)."""
    for side, points in (("database", db_xy), ("queries", q_xy)):
        for i, (dx, dy) in enumerate(points):
            write_geo_image(root / "images" / split / side, ORIGIN[0] + dx, ORIGIN[1] + dy, seed=i)
    return root


def run_cli(*args: str) -> int:
    """``vgssl ARGS`` in this process (fast; same code path as the console script)."""
    from vgssl_core.cli import main

    return main([str(a) for a in args])


@dataclass(frozen=True)
class TinyModel:
    """A checkpoint trained for 2 steps on the ``tiny`` world and the database of its test split."""

    ckpt: Path  # RUN/last.ckpt
    db: Path  # `vgssl build-db` folder
    build_report: dict  # the JSON `vgssl build-db --json` wrote


def train_tiny(world: Path, out: Path, image_size=(64, 96)) -> TinyModel:
    """SimCLR, FC-1-64 head, 2 steps at ``image_size`` (height, width): ``OUT/run``, then ``OUT/db``.

    One torch thread while it trains: on 2 shared cores, two threads that fight are slower.
    """
    import torch

    h, w = image_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cli("train", "--data", world, "--out", out / "run", "--max-steps", "2", "--quiet",
                       "method=simclr", "data.batch_size=6", "data.workers=0", f"model.image_size=[{h},{w}]",
                       "model.head_layers=1", "model.head_dim=64", "trainer.val_split=null",
                       "trainer.test_split=null") == 0
        ckpt = out / "run" / "last.ckpt"
        assert run_cli("build-db", "--data", world, "--ckpt", ckpt, "--out", out / "db", "--json", out / "db.json",
                       "--quiet") == 0
    finally:
        torch.set_num_threads(threads)
    return TinyModel(ckpt, out / "db", json.loads((out / "db.json").read_text()))
