"""The street grid: centre lines every ``pitch_m`` along x and y, each street its own width.

Streets of one width make every view the same canyon; mixing alleys, ordinary streets and
avenues changes how much sky, skyline and facade a place shows, which is much of what
makes one place look unlike another from a few pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PITCH_M = 62.0
SIDEWALK_M = 3.0
# Building front to building front, and how often each width occurs.
STREET_WIDTHS_M = (12.0, 14.0, 16.0, 20.0, 26.0)
STREET_WIDTH_P = (0.2, 0.3, 0.25, 0.15, 0.1)


@dataclass(frozen=True)
class StreetGrid:
    """Street centre lines at ``i * pitch_m`` (i = first, first+1, ...) along each axis.

    ``half_x[k]`` is the half width of the north-south street at x = (first + k) * pitch;
    ``half_y`` likewise for east-west streets. Lines outside the stored range repeat the
    nearest stored width, so the ground is defined everywhere.
    """

    half_x: np.ndarray
    half_y: np.ndarray
    first: int
    pitch_m: float = PITCH_M
    sidewalk_m: float = SIDEWALK_M

    @classmethod
    def random(cls, rng: np.random.Generator, first: int, last: int) -> StreetGrid:
        """Streets for line indices ``first..last`` on both axes."""
        n = last - first + 1
        widths = np.array(STREET_WIDTHS_M)
        pick = lambda: widths[rng.choice(len(widths), size=n, p=STREET_WIDTH_P)] / 2.0  # noqa: E731
        return cls(pick(), pick(), first)

    def half_width(self, axis: int, index: np.ndarray | int) -> np.ndarray:
        halves = self.half_x if axis == 0 else self.half_y
        return halves[np.clip(np.asarray(index) - self.first, 0, len(halves) - 1)]

    def across(self, v: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distance to the nearest street line of this axis, that line's index and half width."""
        index = np.round(np.asarray(v) / self.pitch_m).astype(np.int64)
        return np.abs(v - index * self.pitch_m), index, self.half_width(axis, index)

    def classify(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Where ground points fall: road, sidewalk, and their distances to both street lines."""
        ax, ix, hx = self.across(x, 0)
        ay, iy, hy = self.across(y, 1)
        rx, ry = hx - self.sidewalk_m, hy - self.sidewalk_m
        road = (ax < rx) | (ay < ry)
        walk = ~road & ((ax < hx) | (ay < hy))
        return {"road": road, "walk": walk, "ax": ax, "ay": ay, "ix": ix, "iy": iy,
                "hx": hx, "hy": hy, "rx": rx, "ry": ry}
