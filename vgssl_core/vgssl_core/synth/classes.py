"""Class ids of the per-pixel masks the synthetic world writes next to every image.

Ids are stable data (written to ``classes.json``) so that masks from different runs,
and any later code that drops transient objects from a descriptor, agree on them.
"""

from __future__ import annotations

SKY, BUILDING, LANDMARK, ROAD, SIDEWALK, VEHICLE, PEDESTRIAN, TERRAIN = range(8)

CLASS_NAMES: dict[int, str] = {
    SKY: "sky",
    BUILDING: "building",
    LANDMARK: "landmark",
    ROAD: "road",
    SIDEWALK: "sidewalk",
    VEHICLE: "vehicle",
    PEDESTRIAN: "pedestrian",
    TERRAIN: "terrain",
}

TRANSIENT_CLASSES = (VEHICLE, PEDESTRIAN)
