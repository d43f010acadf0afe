"""One district of the procedural city: street grid, buildings, landmarks, and a drive route.

A district is a block grid at real UTM coordinates (zone 32T, around Turin). Each block is
cut into lots along its edges, one building per lot with its own facade; a few blocks carry
a landmark tower in their courtyard that shows over the roofs. Districts of one seed sit
3 km apart along the easting, far enough that train, val and test never see each other.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from vgssl_core.errors import VgsslError
from vgssl_core.data.geo import utm_to_latlon
from vgssl_core.synth.classes import BUILDING, LANDMARK
from vgssl_core.synth.conditions import Condition
from vgssl_core.synth.presets import SPLITS
from vgssl_core.synth.render import Boxes, Camera, render_view, visible_boxes
from vgssl_core.synth.streets import PITCH_M, StreetGrid
from vgssl_core.synth.style import COL, block_themes, building_styles, landmark_styles
from vgssl_core.synth.traffic import place_transients

ZONE, LETTER = 32, "T"
CENTRE_EAST, CENTRE_NORTH = 396000.0, 4991000.0  # Turin
DISTRICT_STRIDE_M = 3000.0
MARGIN_BLOCKS = 2  # built-up blocks around the driven streets, so edge views are not empty
BLOCKS_PER_LANDMARK = 10
EMPTY_LOT_P = 0.08  # squares, parking lots and building gaps


def route_length_m(blocks: tuple[int, int], pitch_m: float = PITCH_M) -> float:
    """Length of ``City.route`` for a block grid: every street once, edge streets twice."""
    nx, ny = blocks
    return pitch_m * (2 * nx * ny + 2 * nx + 2 * ny)


def blocks_for_length(length_m: float, pitch_m: float = PITCH_M) -> tuple[int, int]:
    """The smallest near-square block grid whose route is at least ``length_m`` long."""
    n = 1
    while True:
        for blocks in ((n, n), (n, n + 1)):
            if route_length_m(blocks, pitch_m) >= length_m:
                return blocks
        n += 1


def _cuts(rng: np.random.Generator, size: float, lo: float, hi: float) -> np.ndarray:
    """Lot boundaries across one block side: widths in [lo, hi], last lot absorbs the rest."""
    edges = [0.0]
    while size - edges[-1] > hi:
        edges.append(edges[-1] + rng.uniform(lo, hi))
    if size - edges[-1] < lo and len(edges) > 1:
        edges.pop()
    edges.append(size)
    return np.array(edges)


def _route_waypoints(nx: int, ny: int) -> np.ndarray:
    """Grid intersections (i, j) visited by a serpentine over east-west streets then north-south ones."""
    pts, i = [(0, 0)], 0
    for j in range(ny + 1):
        target = nx if i == 0 else 0
        step = 1 if target > i else -1
        pts += [(k, j) for k in range(i + step, target + step, step)]
        i = target
        if j < ny:
            pts.append((i, j + 1))
    j = ny
    columns = range(i, nx + 1) if i == 0 else range(i, -1, -1)
    for n, col in enumerate(columns):
        if n > 0:
            pts.append((col, j))
        target = 0 if j == ny else ny
        step = 1 if target > j else -1
        pts += [(col, k) for k in range(j + step, target + step, step)]
        j = target
    return np.array(pts, float)


class City:
    """One district: its boxes, its route, and a renderer of street-level views.

    Built deterministically from ``(seed, district, blocks)``: the same values give the same
    streets and facades. ``blocks`` is the driven block grid (the route covers its streets);
    ``MARGIN_BLOCKS`` of built-up blocks surround it. Coordinates in and out are UTM metres,
    zone 32T. ``City.from_world(root, split)`` rebuilds the district of a written dataset, so
    a robot drive recorded later passes the places of that dataset.

        city = City(seed=0, district=0, blocks=(3, 3))
        poses = city.route(spacing_m=2.0)               # (N, 3) east, north, heading
        rgb, mask = city.render(*poses[0], Condition(), np.random.default_rng(0))
    """

    def __init__(self, seed: int = 0, district: int = 0, blocks: tuple[int, int] = (3, 3),
                 image_size: tuple[int, int] = (160, 120), hfov_deg: float = 90.0) -> None:
        nx, ny = (int(b) for b in blocks)
        if nx < 1 or ny < 1:
            raise ValueError(f"blocks must be two positive integers, got {blocks}")
        self.seed, self.district, self.blocks = int(seed), int(district), (nx, ny)
        rng = np.random.default_rng([self.seed, self.district, 0])
        self.grid = StreetGrid.random(rng, -MARGIN_BLOCKS, max(nx, ny) + MARGIN_BLOCKS)
        self.camera = Camera(int(image_size[0]), int(image_size[1]), hfov_deg)
        half = (self.grid.pitch_m * (max(nx, ny) / 2 + MARGIN_BLOCKS))
        if half > DISTRICT_STRIDE_M / 2 - 200.0:
            raise ValueError(f"blocks {blocks} make a district wider than the "
                             f"{DISTRICT_STRIDE_M:.0f} m between districts")
        p = self.grid.pitch_m
        self.origin = (CENTRE_EAST + (district - 1) * DISTRICT_STRIDE_M - nx * p / 2,
                       CENTRE_NORTH - ny * p / 2)
        self.boxes = Boxes.concat([self._buildings(rng), self._landmarks(rng)])
        self._waypoints = _route_waypoints(nx, ny) * p

    @classmethod
    def from_world(cls, root: str | Path, split: str) -> City:
        """The district of ``split`` in a world written by ``generate_world`` (same streets, same facades).

        A drive rendered from it passes the very places of that dataset, so a model trained
        or a database built on the dataset can be measured on the drive.
        """
        path = Path(root) / "world.json"
        try:
            meta = json.loads(path.read_text())
            district = meta["districts"][split]
            return cls(seed=meta["seed"], district=SPLITS.index(split), blocks=tuple(district["blocks"]),
                       image_size=tuple(meta["image_size"]))
        except (OSError, ValueError, KeyError) as exc:
            raise VgsslError(f"{path}: no synthetic world with a '{split}' split here ({exc}); "
                             f"run 'vgssl synth --out {root}' first") from None

    @property
    def zone(self) -> tuple[int, str]:
        return ZONE, LETTER

    @property
    def route_length_m(self) -> float:
        return float(len(self._waypoints) - 1) * self.grid.pitch_m

    @property
    def n_segments(self) -> int:
        """Route segments, one per street between two crossings (``pitch_m`` long each)."""
        return len(self._waypoints) - 1

    def segment_streets(self) -> np.ndarray:
        """Per route segment, an id of the street piece it drives (same id both ways, revisits too)."""
        a = np.round(self._waypoints[:-1] / self.grid.pitch_m).astype(np.int64)
        b = np.round(self._waypoints[1:] / self.grid.pitch_m).astype(np.int64)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        keys = np.column_stack([lo, hi])
        return np.unique(keys, axis=0, return_inverse=True)[1].ravel()

    def _height_field(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Wave numbers and phases of a smooth field so some quarters are taller than others."""
        return rng.uniform(0.004, 0.012, (3, 2)), rng.uniform(0, 2 * math.pi, 3)

    def _buildings(self, rng: np.random.Generator) -> Boxes:
        g, (nx, ny) = self.grid, self.blocks
        lo, hi, block = [], [], []
        for bi in range(-MARGIN_BLOCKS, nx + MARGIN_BLOCKS):
            x0, x1 = bi * g.pitch_m + g.half_width(0, bi), (bi + 1) * g.pitch_m - g.half_width(0, bi + 1)
            for bj in range(-MARGIN_BLOCKS, ny + MARGIN_BLOCKS):
                y0, y1 = bj * g.pitch_m + g.half_width(1, bj), (bj + 1) * g.pitch_m - g.half_width(1, bj + 1)
                xs, ys = x0 + _cuts(rng, x1 - x0, 8.0, 18.0), y0 + _cuts(rng, y1 - y0, 8.0, 18.0)
                for a in range(len(xs) - 1):
                    for b in range(len(ys) - 1):
                        if 0 < a < len(xs) - 2 and 0 < b < len(ys) - 2:
                            continue  # courtyard lot, never seen from the street
                        block.append((bi + MARGIN_BLOCKS) * (ny + 2 * MARGIN_BLOCKS) + bj + MARGIN_BLOCKS)
                        lo.append((xs[a], ys[b]))
                        hi.append((xs[a + 1], ys[b + 1]))
        keep = rng.random(len(lo)) >= EMPTY_LOT_P
        lo, hi, block = np.array(lo)[keep], np.array(hi)[keep], np.array(block)[keep]
        n = len(lo)
        themes = block_themes(rng, (nx + 2 * MARGIN_BLOCKS) * (ny + 2 * MARGIN_BLOCKS))[block]
        styles = building_styles(rng, n, themes)
        k, phase = self._height_field(rng)
        field = np.mean(np.sin(((lo + hi) / 2) @ k.T + phase), axis=1) * 0.5 + 0.5
        floors = np.clip(np.round(2.0 + 7.0 * field + rng.normal(0.0, 1.5, n)), 2, 11)
        height = floors * styles[:, COL["floor"]] + 0.8
        return Boxes(lo, hi, height, np.full(n, BUILDING, np.uint8), styles)

    def _landmarks(self, rng: np.random.Generator) -> Boxes:
        """Towers in block courtyards: a wide shaft, then one or two narrower tiers above it."""
        g, (nx, ny) = self.grid, self.blocks
        all_blocks = [(i, j) for i in range(-MARGIN_BLOCKS + 1, nx + MARGIN_BLOCKS - 1)
                      for j in range(-MARGIN_BLOCKS + 1, ny + MARGIN_BLOCKS - 1)]
        n = max(2, round(len(all_blocks) / BLOCKS_PER_LANDMARK))
        chosen = rng.choice(len(all_blocks), size=min(n, len(all_blocks)), replace=False)
        lo, hi, height, styles = [], [], [], []
        for c in chosen:
            i, j = all_blocks[c]
            centre = np.array([(i + 0.5) * g.pitch_m, (j + 0.5) * g.pitch_m])
            style = landmark_styles(rng, 1)
            half, top = rng.uniform(8.0, 11.0), rng.uniform(45.0, 90.0)
            for _ in range(int(rng.integers(2, 4))):
                lo.append(centre - half)
                hi.append(centre + half)
                height.append(top)
                styles.append(style)
                half, top = half * rng.uniform(0.4, 0.7), top + rng.uniform(10.0, 30.0)
        m = len(lo)
        return Boxes(np.array(lo), np.array(hi), np.array(height), np.full(m, LANDMARK, np.uint8),
                     np.concatenate(styles))

    def route_at(self, s: np.ndarray) -> np.ndarray:
        """Local (x, y, heading_deg) at arc lengths ``s`` along the route (clipped to its ends)."""
        s = np.clip(np.asarray(s, float), 0.0, self.route_length_m)
        seg = np.minimum((s // self.grid.pitch_m).astype(int), self.n_segments - 1)
        a, b = self._waypoints[seg], self._waypoints[seg + 1]
        frac = (s - seg * self.grid.pitch_m) / self.grid.pitch_m
        xy = a + (b - a) * frac[:, None]
        heading = np.degrees(np.arctan2(b[:, 0] - a[:, 0], b[:, 1] - a[:, 1])) % 360.0
        return np.column_stack([xy, heading])

    def route(self, spacing_m: float) -> np.ndarray:
        """A continuous drive along every driven street: (N, 3) UTM east, north, compass heading.

        Poses every ``spacing_m`` metres of the centre line; the heading is the driving
        direction (it turns by 90 degrees at corners). Feed rows to ``render`` to record a drive.
        """
        if spacing_m <= 0:
            raise ValueError(f"spacing_m must be positive, got {spacing_m}")
        poses = self.route_at(np.arange(0.0, self.route_length_m + 1e-9, spacing_m))
        poses[:, 0] += self.origin[0]
        poses[:, 1] += self.origin[1]
        return poses

    def latlon(self, east: float, north: float) -> tuple[float, float]:
        return utm_to_latlon(east, north, ZONE, LETTER)

    def render(self, east: float, north: float, heading_deg: float, condition: Condition,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The view from a UTM position: RGB (H, W, 3) uint8 and class mask (H, W) uint8.

        ``rng`` is this capture's own generator: it places the cars and people and draws
        clouds, rain and sensor noise, so the same (pose, condition, rng seed) renders the
        same bytes while two captures of one place never share their transient content.
        """
        x, y = east - self.origin[0], north - self.origin[1]
        near = visible_boxes(self.boxes, x, y, heading_deg, self.camera.hfov_deg)
        traffic = place_transients(self.grid, x, y, condition, rng)
        boxes = Boxes.concat([near, visible_boxes(traffic, x, y, heading_deg, self.camera.hfov_deg)])
        return render_view(boxes, self.grid, self.camera, x, y, heading_deg, condition, rng)
