"""Where the database and the queries of one district are taken.

The database is a mapping drive: a pose every few metres along the route, close to the
lane centre, looking where the car goes. Queries are taken at random points of the same
streets, off-centre and looking a little aside, so most have database images within 10 m
(GeoPair positives) and 25 m (correct retrievals). A fraction of the streets gets no
queries at all, which gives database images with no query near them: the database
negatives of VG-SSL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vgssl_core.synth.city import City

QUERY_FREE_STREETS = 0.2
DB_LANE_M, DB_LATERAL_M, DB_HEADING_DEG = 1.5, 0.4, 4.0  # the mapping car keeps to the right lane
QUERY_LATERAL_M, QUERY_HEADING_DEG = 2.0, 6.0


@dataclass(frozen=True)
class Capture:
    """One image to take: UTM position, compass heading, role and index within its role."""

    east: float
    north: float
    heading_deg: float
    role: str
    index: int


def _offset(poses: np.ndarray, lateral: np.ndarray, turn: np.ndarray) -> np.ndarray:
    """Move poses sideways (to the right, metres) and turn them (degrees)."""
    h = np.radians(poses[:, 2])
    out = poses.copy()
    out[:, 0] += lateral * np.cos(h)
    out[:, 1] -= lateral * np.sin(h)
    out[:, 2] = (poses[:, 2] + turn) % 360.0
    return out


def _to_captures(city: City, poses: np.ndarray, role: str) -> list[Capture]:
    e0, n0 = city.origin
    return [Capture(float(x + e0), float(y + n0), float(h), role, i) for i, (x, y, h) in enumerate(poses)]


def _query_segments(city: City, rng: np.random.Generator) -> np.ndarray:
    """Route segments that get queries: all but those on a few query-free street pieces."""
    street = city.segment_streets()
    n_streets = int(street.max()) + 1
    n_free = max(1, round(QUERY_FREE_STREETS * n_streets)) if n_streets > 2 else 0
    free = rng.choice(n_streets, size=n_free, replace=False)
    return np.flatnonzero(~np.isin(street, free))


def plan_captures(city: City, n_database: int, n_queries: int, seed: int) -> tuple[list[Capture], list[Capture]]:
    """Database and query poses for one district, deterministic for ``(seed, city.district)``."""
    rng = np.random.default_rng([seed, city.district, 1])
    length = city.route_length_m
    db = city.route_at((np.arange(n_database) + 0.5) * length / max(n_database, 1))
    lateral = DB_LANE_M + np.clip(rng.normal(0.0, DB_LATERAL_M, n_database), -1.0, 1.0)
    db = _offset(db, lateral, rng.normal(0.0, DB_HEADING_DEG, n_database))

    with_queries = _query_segments(city, rng)
    segment = rng.choice(with_queries, size=n_queries)
    s = (segment + rng.uniform(0.02, 0.98, n_queries)) * city.grid.pitch_m
    q = city.route_at(s)
    q = _offset(q, rng.uniform(-QUERY_LATERAL_M, QUERY_LATERAL_M, n_queries),
                rng.normal(0.0, QUERY_HEADING_DEG, n_queries))
    return _to_captures(city, db, "database"), _to_captures(city, q, "query")
