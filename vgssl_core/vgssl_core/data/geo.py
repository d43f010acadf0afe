"""Geo-tags of the deep visual geo-localization benchmark, and UTM helpers.

Images carry their position in the file name:
``@utm_east@utm_north@utm_zone@utm_letter@lat@lon@pano_id@tile@heading@pitch@roll@height@date@note@.jpg``
(Berton et al., CVPR 2022). Only easting and northing are required: datasets such as
Nordland leave the zone empty, and many leave every field after lat/lon empty. Only the
base name is parsed, so ``@`` may appear in parent folders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import utm

from vgssl_core.errors import VgsslError

# The two radii of the field (Berton et al.; VG-SSL): the only place they are written down.
TRAIN_RADIUS_M = 10.0  # a database image this close to a query is its positive (GeoPairs, mining)
EVAL_RADIUS_M = 25.0  # a retrieved image this close is correct (Recall@N); also "the same place"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class GeoTag:
    """Position of one image as its file name states it (UTM metres; lat/lon degrees)."""

    east: float
    north: float
    zone: int | None = None
    letter: str | None = None
    lat: float | None = None
    lon: float | None = None
    heading: float | None = None


def _optional_float(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def parse_image_name(path: str | Path) -> GeoTag:
    """Read the geo-tag from an image file name; ``VgsslError`` names the file if it has none."""
    name = Path(path).name
    fields = name.split("@")
    if len(fields) < 4 or fields[0] != "":
        raise VgsslError(
            f"{path}: file name has no geo-tag; expected '@utm_east@utm_north@zone@letter@lat@lon@...@.jpg'"
        )
    try:
        east, north = float(fields[1]), float(fields[2])
    except ValueError:
        raise VgsslError(f"{path}: cannot parse UTM easting/northing from '{fields[1]}', '{fields[2]}'") from None
    if not (math.isfinite(east) and math.isfinite(north)):
        raise VgsslError(f"{path}: UTM easting/northing are not finite numbers")
    # The last field is the extension (after the final '@'); the ones before are optional.
    meta = fields[3:-1]
    zone = letter = None
    lat = lon = heading = None
    try:
        if len(meta) > 0 and meta[0].strip():
            zone = int(float(meta[0]))
        if len(meta) > 1 and meta[1].strip():
            letter = meta[1].strip().upper()
        if len(meta) > 3:
            lat, lon = _optional_float(meta[2]), _optional_float(meta[3])
        if len(meta) > 6:  # fields: pano_id, tile_num, heading, ...
            heading = _optional_float(meta[6])
    except (ValueError, OverflowError) as exc:  # int(float("inf")) is an OverflowError
        raise VgsslError(f"{path}: malformed geo-tag field ({exc})") from None
    if (lat is None or lon is None) and zone is not None and letter is not None and 1 <= zone <= 60:
        try:
            lat, lon = (float(v) for v in utm.to_latlon(east, north, zone, letter))
        except utm.error.OutOfRangeError:
            lat = lon = None
    return GeoTag(east, north, zone, letter, lat, lon, heading)


def format_image_name(
    east: float,
    north: float,
    zone: int,
    letter: str,
    lat: float,
    lon: float,
    *,
    pano_id: str = "",
    heading: float | None = None,
    note: str = "",
    suffix: str = ".jpg",
) -> str:
    """The benchmark's file name for an image at this position (inverse of ``parse_image_name``)."""
    head = "" if heading is None else f"{heading:.1f}"
    fields = [
        "", f"{east:.2f}", f"{north:.2f}", str(int(zone)), letter, f"{lat:.6f}", f"{lon:.6f}",
        pano_id, "", head, "", "", "", "", note, suffix,
    ]
    return "@".join(fields)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def latlon_to_utm(lat: float, lon: float) -> tuple[float, float, int, str]:
    """(east, north, zone, letter) as plain Python types (``utm`` returns numpy scalars)."""
    east, north, zone, letter = utm.from_latlon(lat, lon)
    return float(east), float(north), int(zone), str(letter)


def utm_to_latlon(east: float, north: float, zone: int, letter: str) -> tuple[float, float]:
    lat, lon = utm.to_latlon(east, north, zone, letter)
    return float(lat), float(lon)


def planar_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances in metres between rows of two (N, 2) UTM arrays (same zone)."""
    return np.linalg.norm(np.asarray(a, float)[:, None, :] - np.asarray(b, float)[None, :, :], axis=-1)
