"""Transient objects: cars in the lanes and people on the sidewalks, new for every capture.

Real database and query photos of one place never share their traffic; a descriptor has
to learn to look past it. Placement is drawn from the capture's own generator, so a
capture is reproducible but no two captures agree.
"""

from __future__ import annotations

import numpy as np

from vgssl_core.synth.classes import PEDESTRIAN, VEHICLE
from vgssl_core.synth.conditions import Condition
from vgssl_core.synth.render import Boxes
from vgssl_core.synth.streets import StreetGrid
from vgssl_core.synth.style import pedestrian_styles, vehicle_styles

AREA_M = 60.0  # half-side of the square around the camera that gets traffic
CLEAR_M = 2.0  # no object within this distance of the camera


def _candidates(x: float, y: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.uniform(x - AREA_M, x + AREA_M, n), rng.uniform(y - AREA_M, y + AREA_M, n)], axis=1)


def _clear_of_camera(lo: np.ndarray, hi: np.ndarray, x: float, y: float, min_dist: float) -> np.ndarray:
    gap = np.maximum(np.maximum(lo - (x, y), (x, y) - hi), 0.0)
    return np.linalg.norm(gap, axis=1) > min_dist


def _vehicles(grid: StreetGrid, x: float, y: float, n: int, rng: np.random.Generator) -> Boxes:
    """Cars (now and then a van or bus) in a lane, aligned with their street, off the crossings."""
    p = _candidates(x, y, 6 * n + 6, rng)
    g = grid.classify(p[:, 0], p[:, 1])
    along_y = (g["ax"] < g["rx"]) & (g["ay"] > g["hy"] + 3.0)  # on a north-south street
    along_x = (g["ay"] < g["ry"]) & (g["ax"] > g["hx"] + 3.0)
    ok = along_y | along_x
    p, along_y = p[ok], along_y[ok]
    m = len(p)
    road_half = np.where(along_y, g["rx"][ok], g["ry"][ok])
    line = np.where(along_y, g["ix"][ok], g["iy"][ok]) * grid.pitch_m
    side = np.where(rng.random(m) < 0.5, -1.0, 1.0) * rng.uniform(1.3, 1.3 + np.maximum(road_half - 2.4, 0.1), m)
    centre = np.where(along_y[:, None], np.stack([line + side, p[:, 1]], 1), np.stack([p[:, 0], line + side], 1))
    big = rng.random(m) < 0.12
    half_len = np.where(big, rng.uniform(3.0, 6.0, m), rng.uniform(1.9, 2.5, m))
    half_wid = np.where(big, 1.2, rng.uniform(0.85, 1.0, m))
    height = np.where(big, rng.uniform(2.4, 3.2, m), rng.uniform(1.4, 1.7, m))
    half = np.where(along_y[:, None], np.stack([half_wid, half_len], 1), np.stack([half_len, half_wid], 1))
    lo, hi = centre - half, centre + half
    keep = np.flatnonzero(_clear_of_camera(lo, hi, x, y, CLEAR_M + 1.5))[:n]
    styles = vehicle_styles(rng, m)
    return Boxes(lo[keep], hi[keep], height[keep], np.full(len(keep), VEHICLE, np.uint8), styles[keep])


def _pedestrians(grid: StreetGrid, x: float, y: float, n: int, rng: np.random.Generator) -> Boxes:
    p = _candidates(x, y, 4 * n + 4, rng)
    g = grid.classify(p[:, 0], p[:, 1])
    inside_x = (g["ax"] > g["rx"] + 0.4) & (g["ax"] < g["hx"] - 0.4)
    inside_y = (g["ay"] > g["ry"] + 0.4) & (g["ay"] < g["hy"] - 0.4)
    p = p[g["walk"] & (inside_x | inside_y)]
    m = len(p)
    half = np.stack([rng.uniform(0.2, 0.3, m), rng.uniform(0.15, 0.25, m)], 1)
    lo, hi = p - half, p + half
    height = rng.uniform(1.5, 1.9, m)
    keep = np.flatnonzero(_clear_of_camera(lo, hi, x, y, CLEAR_M))[:n]
    styles = pedestrian_styles(rng, m)
    return Boxes(lo[keep], hi[keep], height[keep], np.full(len(keep), PEDESTRIAN, np.uint8), styles[keep])


def place_transients(grid: StreetGrid, x: float, y: float, condition: Condition, rng: np.random.Generator) -> Boxes:
    """This capture's cars and people around local (x, y)."""
    n_cars, n_people = int(rng.poisson(condition.vehicles)), int(rng.poisson(condition.pedestrians))
    return Boxes.concat([_vehicles(grid, x, y, n_cars, rng), _pedestrians(grid, x, y, n_people, rng)])
