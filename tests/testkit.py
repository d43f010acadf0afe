"""Helpers shared by the test suites: hand-made geo-tagged datasets and the in-process CLI.

A module with a name of its own (not ``conftest``): ``tests/ros/conftest.py`` would otherwise
answer ``from conftest import ...`` whenever a ROS test file is collected first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vgssl_core.geo import format_image_name, utm_to_latlon

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
