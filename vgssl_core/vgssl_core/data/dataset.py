"""Geo-tagged dataset splits in the deep visual geo-localization benchmark layout.

``<root>/images/<split>/{database,queries}/**/*.{jpg,jpeg,png}``: the folder the benchmark's
downloader writes for Pitts30k, MSLS, Tokyo 24/7, St Lucia, Nordland or SF-XS, and the one
``vgssl synth`` writes, loads with no conversion. Positives are found by radius on UTM
easting/northing with a KD-tree, as the benchmark defines them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy.spatial import cKDTree

from vgssl_core.errors import VgsslError
from vgssl_core.data.geo import GeoTag, is_image_file, parse_image_name

SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    """The images of one side (database or queries) of a split, with their geo-tags."""

    paths: list[Path]
    tags: list[GeoTag]
    utm: np.ndarray = field(init=False)  # (N, 2) float64 easting, northing

    def __post_init__(self) -> None:
        self.utm = np.array([[t.east, t.north] for t in self.tags], dtype=np.float64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def ids(self) -> list[str]:
        return [p.name for p in self.paths]

    def latlon(self) -> np.ndarray:
        """(N, 2) latitude/longitude in degrees (NaN where the name has none)."""
        return np.array(
            [[np.nan if t.lat is None else t.lat, np.nan if t.lon is None else t.lon] for t in self.tags],
            dtype=np.float64,
        ).reshape(-1, 2)


@dataclass
class GeoSplit:
    """Database and queries of one split, and the UTM zone they share."""

    root: Path
    name: str
    database: ImageSet
    queries: ImageSet
    zone: int | None
    letter: str | None

    def positives(self, radius_m: float, *, of: str = "queries") -> list[np.ndarray]:
        """Database indices within ``radius_m`` of each query (or database image), sorted."""
        source = self.queries if of == "queries" else self.database
        tree = cKDTree(self.database.utm)
        hits = tree.query_ball_point(source.utm, r=radius_m)
        return [np.array(sorted(h), dtype=np.int64) for h in hits]

    def summary(self) -> str:
        zone = f"{self.zone}{self.letter or ''}" if self.zone is not None else "no zone"
        return f"{self.name}: {len(self.database)} database, {len(self.queries)} queries (UTM {zone})"


# Present while ``vgssl synth`` writes a world (removed last): a world that has it is partial.
IN_PROGRESS = ".synth-in-progress"


def _scan(folder: Path) -> ImageSet:
    if not folder.is_dir():
        raise VgsslError(f"{folder}: folder is missing; expected <root>/images/<split>/{{database,queries}}/")

    def unreadable(exc: OSError) -> None:  # rglob would skip the folder without a word
        raise VgsslError(f"{exc.filename}: cannot read this folder of the dataset ({exc.strerror})")

    paths = sorted(Path(top) / name for top, _, names in os.walk(folder, onerror=unreadable, followlinks=True)
                   for name in names if is_image_file(Path(top) / name))
    if not paths:
        raise VgsslError(f"{folder}: no .jpg/.jpeg/.png images found")
    return ImageSet(paths, [parse_image_name(p) for p in paths])


def _common_zone(split_dir: Path, sets: list[ImageSet]) -> tuple[int | None, str | None]:
    """The one UTM zone of a split; distances across zones are meaningless, so mixing is an error."""
    zones = {(t.zone, t.letter) for s in sets for t in s.tags if t.zone is not None}
    numbers = {z for z, _ in zones}
    if len(numbers) > 1:
        example = {z: next(p for s in sets for p, t in zip(s.paths, s.tags) if t.zone == z) for z in numbers}
        listing = ", ".join(f"zone {z} (e.g. {p.name})" for z, p in sorted(example.items()))
        raise VgsslError(f"{split_dir}: images from several UTM zones in one split: {listing}")
    if not zones:
        return None, None
    zone = numbers.pop()
    letters = sorted({letter for _, letter in zones if letter})
    return zone, (letters[0] if letters else None)


def load_split(root: str | Path, split: str = "test") -> GeoSplit:
    """Scan ``<root>/images/<split>``; a bad name, empty folder or mixed zones is a ``VgsslError``."""
    root = Path(root)
    images = root / "images"
    if not images.is_dir():
        raise VgsslError(f"{root}: not a dataset folder (no 'images/' inside); run 'vgssl synth --out {root}' to make one")
    if (root / IN_PROGRESS).exists():
        raise VgsslError(f"{root}: the synthetic world is incomplete ({IN_PROGRESS} is present: 'vgssl synth' was "
                         f"stopped or is still writing); run 'vgssl synth --out {root}' again")
    split_dir = images / split
    if not split_dir.is_dir():
        have = sorted(p.name for p in images.iterdir() if p.is_dir())
        raise VgsslError(f"{split_dir}: split '{split}' is missing; this dataset has: {', '.join(have) or 'none'}")
    database = _scan(split_dir / "database")
    queries = _scan(split_dir / "queries")
    zone, letter = _common_zone(split_dir, [database, queries])
    return GeoSplit(root, split, database, queries, zone, letter)


# PIL modes of 16-bit single-channel images (16-bit PNG, TIFF): ``convert("RGB")`` would clip them white
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_image(path: str | Path) -> Image.Image:
    """Decode an image fully (so truncation is found now, never replaced by a blank image), upright
    (its EXIF orientation applied) and as 8-bit RGB (16-bit grey keeps its high byte, as the
    localizer node decodes ``mono16`` frames)."""
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            if upright.mode in WIDE_MODES:
                return _wide_to_rgb(upright)
            return upright.convert("RGB")
    except FileNotFoundError:
        raise VgsslError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as exc:
        raise VgsslError(f"{path}: image too large to decode ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise VgsslError(f"{path}: unreadable or truncated image ({exc})") from None


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    from vgssl_core.localization.image_codec import decode_raw

    wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535).astype("<u2")
    height, width = wide.shape
    return Image.fromarray(decode_raw("mono16", height, width, 2 * width, wide.tobytes(), False))
