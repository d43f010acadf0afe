"""Sizes of the synthetic world, as data: one row per preset.

A district is sized to hold its database at about ``db_spacing_m`` along the streets, so
every query, taken at a random point of the same streets, has database images within
10 m (positives) and within 25 m (correct retrievals).
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Preset:
    """Image counts per split as ``(database, queries)``."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]
    db_spacing_m: float = 3.0

    def counts(self, split: str) -> tuple[int, int]:
        return getattr(self, split)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(train=(120, 60), val=(60, 30), test=(60, 30)),
    "demo": Preset(train=(1500, 600), val=(300, 150), test=(1000, 2000)),  # test: a paired R@1 difference to +-2 points (95 %)
    "full": Preset(train=(15000, 6000), val=(3000, 1500), test=(5000, 2500)),
}
