"""``generate_world``: write the synthetic world as a geo-localization dataset folder.

Layout is the deep visual geo-localization benchmark's, so the world loads like Pitts30k:
``images/{train,val,test}/{database,queries}/<geo-tagged name>.jpg``, plus the per-pixel
class masks under ``masks/`` with the same stems, ``classes.json`` and ``world.json``.
Every capture draws from its own seeded generator, so the same seed rewrites the same
bytes, and a file only gets its final name once it is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vgssl_core.errors import VgsslError
from vgssl_core.data.geo import format_image_name, utm_to_latlon
from vgssl_core.synth.captures import Capture, plan_captures
from vgssl_core.data.dataset import IN_PROGRESS
from vgssl_core.synth.city import LETTER, ZONE, City, blocks_for_length
from vgssl_core.synth.classes import CLASS_NAMES
from vgssl_core.synth.conditions import sample_condition
from vgssl_core.synth.presets import PRESETS, SPLITS

GENERATOR = "vgssl synth"
FORMAT_VERSION = 1
JPEG_QUALITY = 90
DEFAULT_SIZE = (160, 120)
OWNED = ("images", "masks", "classes.json", "world.json", IN_PROGRESS)
ROLE_FOLDER = {"database": "database", "query": "queries"}
ROLE_ID = {"database": 0, "query": 1}


def check_image_size(image_size: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) of rendered images (default 160x120); worlds and drives share the limits."""
    if image_size is None:
        return DEFAULT_SIZE
    try:
        w, h = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise VgsslError(f"image size must be (width, height) in pixels, got {image_size!r}") from None
    if not (32 <= w <= 4096 and 24 <= h <= 4096):
        raise VgsslError(f"image size {w}x{h} out of range; use 32..4096 x 24..4096 pixels, e.g. 160x120")
    return w, h


def _is_synth_world(root: Path) -> bool:
    if (root / IN_PROGRESS).is_file():
        return True
    try:
        meta = json.loads((root / "world.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == GENERATOR


def _prepare(root: Path) -> None:
    """Refuse to write over anything but an earlier synthetic world, whose own files go first."""
    if root.exists() and not root.is_dir():
        raise VgsslError(f"{root} is a file; give a folder for the synthetic world")
    if root.is_dir() and any(root.iterdir()):
        if not _is_synth_world(root):
            raise VgsslError(f"{root} is not empty and is not a synthetic world; choose an empty or new folder")
        for name in OWNED:
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / IN_PROGRESS).write_text("generation started; this folder is incomplete until world.json exists\n")


def _write_atomic(path: Path, data: bytes) -> None:
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.replace(part, path)


def _encode(ext: str, image: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {ext} image")
    return buf.tobytes()


def _file_name(c: Capture, taken: set[str], suffix: str) -> str:
    lat, lon = utm_to_latlon(c.east, c.north, ZONE, LETTER)
    name = format_image_name(c.east, c.north, ZONE, LETTER, lat, lon, heading=c.heading_deg, suffix=suffix)
    if name in taken:  # two captures rounded onto one name: keep both, tell them apart
        name = format_image_name(c.east, c.north, ZONE, LETTER, lat, lon, heading=c.heading_deg,
                                 note=f"{c.role[0]}{c.index}", suffix=suffix)
    taken.add(name)
    return name


def _write_capture(root: Path, split: str, city: City, c: Capture, seed: int, taken: set[str]) -> None:
    rng = np.random.default_rng([seed, city.district, 2 + ROLE_ID[c.role], c.index])
    condition = sample_condition(rng, c.role)
    rgb, mask = city.render(c.east, c.north, c.heading_deg, condition, rng)
    name = _file_name(c, taken, ".jpg")
    folder = ROLE_FOLDER[c.role]
    jpg = _encode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    _write_atomic(root / "images" / split / folder / name, jpg)
    _write_atomic(root / "masks" / split / folder / (Path(name).stem + ".png"), _encode(".png", mask, []))


def _plan(preset_name: str, seed: int, size: tuple[int, int]) -> dict[str, tuple[City, list[Capture], list[Capture]]]:
    preset = PRESETS[preset_name]
    plans = {}
    for district, split in enumerate(SPLITS):
        n_db, n_q = preset.counts(split)
        blocks = blocks_for_length(n_db * preset.db_spacing_m)
        city = City(seed=seed, district=district, blocks=blocks, image_size=size)
        db, queries = plan_captures(city, n_db, n_q, seed)
        plans[split] = (city, db, queries)
    return plans


def _world_meta(preset: str, seed: int, size: tuple[int, int], plans: dict) -> dict:
    return {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "preset": preset,
        "seed": seed,
        "image_size": list(size),
        "zone": ZONE,
        "letter": LETTER,
        "jpeg_quality": JPEG_QUALITY,
        "splits": {s: {"database": len(db), "queries": len(q)} for s, (_, db, q) in plans.items()},
        "districts": {
            s: {"origin_east": city.origin[0], "origin_north": city.origin[1], "blocks": list(city.blocks),
                "route_length_m": city.route_length_m}
            for s, (city, _, _) in plans.items()
        },
    }


def generate_world(out: str | Path, preset: str = "tiny", seed: int = 0,
                   image_size: tuple[int, int] | None = None, progress: bool = True) -> dict:
    """Write the synthetic world for ``preset`` into ``out`` and return a summary.

    ``out`` must be new, empty, or an earlier synthetic world (which is replaced). The
    summary is plain Python: preset, seed, image size, zone, per-split counts, seconds.
    """
    if preset not in PRESETS:
        raise VgsslError(f"unknown synth preset '{preset}'; valid presets: {', '.join(PRESETS)}")
    size = check_image_size(image_size)
    seed = int(seed)
    root = Path(out)
    start = time.perf_counter()
    _prepare(root)
    plans = _plan(preset, seed, size)
    total = sum(len(db) + len(q) for _, db, q in plans.values())
    with tqdm(total=total, desc=f"synth {preset}", unit="img", disable=not progress) as bar:
        for split, (city, db, queries) in plans.items():
            for role in ROLE_FOLDER.values():
                for kind in ("images", "masks"):
                    (root / kind / split / role).mkdir(parents=True, exist_ok=True)
            taken: set[str] = set()
            for capture in db + queries:
                _write_capture(root, split, city, capture, seed, taken)
                bar.update(1)
    meta = _world_meta(preset, seed, size, plans)
    classes = {str(k): v for k, v in CLASS_NAMES.items()}
    _write_atomic(root / "classes.json", (json.dumps(classes, indent=2) + "\n").encode())
    _write_atomic(root / "world.json", (json.dumps(meta, indent=2) + "\n").encode())
    (root / IN_PROGRESS).unlink()
    return {"root": str(root), **{k: meta[k] for k in ("preset", "seed", "image_size", "zone", "letter", "splits")},
            "images": total, "seconds": round(time.perf_counter() - start, 3)}
