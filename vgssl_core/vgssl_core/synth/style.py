"""Facade looks: one row of numbers per box, and the texture they produce.

Every building draws its own colours, window grid, trim and shop sign, so a street corner
is recognisable and the next block is not: that is the signal place recognition learns.
Landmarks are tall and loud (saturated bands, a coloured crown) so they stay recognisable
from hundreds of metres and over the roofs. Everything is a table row, not a class, so the
renderer textures thousands of pixels of hundreds of boxes in a few vectorised steps.
"""

from __future__ import annotations

import numpy as np

from vgssl_core.synth.classes import PEDESTRIAN, VEHICLE

_WIDTHS = {
    "c1": 3, "c2": 3, "glass": 3, "sign": 3, "crown": 3,
    "pitch": 1, "wfrac": 1, "floor": 1, "whfrac": 1, "ground": 1,
    "u0": 1, "u1": 1, "band": 1, "pilaster": 1, "crown_frac": 1, "grain": 1, "key": 1,
}
COL: dict[str, slice | int] = {}
_at = 0
for _name, _w in _WIDTHS.items():
    COL[_name] = slice(_at, _at + _w) if _w > 1 else _at
    _at += _w
N_STYLE = _at

# Facade colours of an old European centre (Turin): ochre, cream, terracotta, brick, stone.
FACADE_PALETTE = np.array([
    (0.85, 0.72, 0.48), (0.93, 0.85, 0.62), (0.78, 0.47, 0.35), (0.90, 0.88, 0.82),
    (0.65, 0.64, 0.62), (0.88, 0.70, 0.66), (0.62, 0.33, 0.26), (0.55, 0.62, 0.55),
    (0.96, 0.95, 0.92), (0.72, 0.60, 0.45), (0.45, 0.50, 0.62), (0.82, 0.55, 0.30),
])
GLASS_PALETTE = np.array([
    (0.20, 0.34, 0.24), (0.36, 0.25, 0.17), (0.12, 0.14, 0.18), (0.22, 0.30, 0.40), (0.55, 0.52, 0.48),
])
CAR_PALETTE = np.array([
    (0.92, 0.92, 0.92), (0.08, 0.08, 0.09), (0.62, 0.63, 0.66), (0.70, 0.08, 0.07),
    (0.10, 0.22, 0.55), (0.95, 0.78, 0.10), (0.20, 0.40, 0.25), (0.40, 0.42, 0.45),
])
SKIN = np.array([0.85, 0.66, 0.52], np.float32)
WARM_WINDOW = np.array([1.0, 0.8, 0.45], np.float32)


def _hsv_colour(rng: np.random.Generator, n: int, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    """Saturated colours for signs and landmarks (hue uniform)."""
    h = rng.random(n) * 6.0
    sat, val = rng.uniform(*s, n), rng.uniform(*v, n)
    k = np.stack([(5.0 + h) % 6.0, (3.0 + h) % 6.0, (1.0 + h) % 6.0], axis=1)
    return val[:, None] * (1.0 - sat[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def building_styles(rng: np.random.Generator, n: int, theme: np.ndarray | None = None) -> np.ndarray:
    """Random but plausible facades for ``n`` ordinary buildings.

    ``theme`` (n, 4): colour and brightness of each building's block. Facades lean half
    way towards it, so a quarter keeps a character over a few dozen metres (views a few
    metres apart look alike) while every building still has its own colour and pattern.
    """
    s = np.zeros((n, N_STYLE), np.float32)
    c1 = FACADE_PALETTE[rng.integers(len(FACADE_PALETTE), size=n)]
    if theme is not None:
        c1 = (0.5 * c1 + 0.5 * theme[:, :3]) * theme[:, 3:4]
    c1 = np.clip(c1 * rng.uniform(0.85, 1.1, (n, 1)) + rng.normal(0.0, 0.04, (n, 3)), 0.05, 1.0)
    trim = rng.integers(3, size=n)[:, None]
    c2 = np.where(trim == 0, c1 * 0.6 + 0.4, np.where(trim == 1, c1 * 0.68, 0.93))
    s[:, COL["c1"]], s[:, COL["c2"]] = c1, c2
    s[:, COL["glass"]] = GLASS_PALETTE[rng.integers(len(GLASS_PALETTE), size=n)]
    s[:, COL["sign"]] = _hsv_colour(rng, n, (0.6, 1.0), (0.6, 1.0))
    s[:, COL["crown"]] = c2 * 0.8
    s[:, COL["pitch"]] = rng.uniform(2.2, 4.5, n)
    s[:, COL["wfrac"]] = rng.uniform(0.35, 0.6, n)
    s[:, COL["floor"]] = rng.uniform(3.0, 3.8, n)
    s[:, COL["whfrac"]] = rng.uniform(0.35, 0.55, n)
    s[:, COL["ground"]] = rng.uniform(3.6, 5.0, n)
    has_sign = rng.random(n) < 0.65
    u0 = rng.uniform(0.5, 4.0, n)
    s[:, COL["u0"]] = np.where(has_sign, u0, -1.0)
    s[:, COL["u1"]] = np.where(has_sign, u0 + rng.uniform(3.0, 9.0, n), -2.0)
    s[:, COL["band"]] = rng.random(n) < 0.25
    s[:, COL["pilaster"]] = rng.random(n) < 0.25
    s[:, COL["crown_frac"]] = rng.uniform(0.02, 0.06, n)
    s[:, COL["grain"]] = rng.uniform(0.02, 0.09, n)
    s[:, COL["key"]] = rng.random(n) * 1000.0
    return s


def block_themes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Colour and brightness (n, 4) of ``n`` blocks, see ``building_styles``."""
    colour = FACADE_PALETTE[rng.integers(len(FACADE_PALETTE), size=n)]
    return np.column_stack([colour, rng.uniform(0.7, 1.15, n)])


def landmark_styles(rng: np.random.Generator, n: int) -> np.ndarray:
    """Loud towers: two saturated colours in wide bands and a contrasting crown."""
    s = building_styles(rng, n)
    s[:, COL["c1"]] = _hsv_colour(rng, n, (0.5, 0.9), (0.55, 0.95))
    s[:, COL["c2"]] = _hsv_colour(rng, n, (0.1, 0.5), (0.85, 1.0))
    s[:, COL["crown"]] = _hsv_colour(rng, n, (0.7, 1.0), (0.8, 1.0))
    s[:, COL["floor"]] = rng.uniform(5.0, 9.0, n)
    s[:, COL["pitch"]] = rng.uniform(2.0, 3.0, n)
    s[:, COL["band"]] = 1.0
    s[:, COL["pilaster"]] = rng.random(n) < 0.5
    s[:, COL["crown_frac"]] = rng.uniform(0.1, 0.2, n)
    s[:, COL["u0"]], s[:, COL["u1"]] = -1.0, -2.0
    return s


def vehicle_styles(rng: np.random.Generator, n: int) -> np.ndarray:
    s = np.zeros((n, N_STYLE), np.float32)
    s[:, COL["c1"]] = np.clip(CAR_PALETTE[rng.integers(len(CAR_PALETTE), size=n)]
                              + rng.normal(0.0, 0.03, (n, 3)), 0.0, 1.0)
    s[:, COL["glass"]] = (0.10, 0.12, 0.15)
    s[:, COL["pitch"]] = s[:, COL["floor"]] = 100.0
    s[:, COL["u0"]], s[:, COL["u1"]] = -1.0, -2.0
    s[:, COL["key"]] = rng.random(n) * 1000.0
    return s


def pedestrian_styles(rng: np.random.Generator, n: int) -> np.ndarray:
    s = vehicle_styles(rng, n)
    s[:, COL["c1"]] = _hsv_colour(rng, n, (0.2, 0.9), (0.2, 0.95))
    s[:, COL["c2"]] = _hsv_colour(rng, n, (0.0, 0.5), (0.1, 0.5))
    return s


def hash01(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Stable pseudo-random value in [0, 1) per integer lattice cell (same from every view).

    Integer mixing, not ``sin`` tricks, so the bytes do not depend on the CPU's libm.
    """
    h = (np.asarray(a).astype(np.int64) * 73856093) ^ (np.asarray(b).astype(np.int64) * 19349663) \
        ^ (np.asarray(c).astype(np.int64) * 83492791)
    h = h.view(np.uint64) if isinstance(h, np.ndarray) else np.uint64(h)
    h = (h ^ (h >> np.uint64(15))) * np.uint64(0x2C1B3C6D)
    h = (h ^ (h >> np.uint64(12))) * np.uint64(0x297A2D39)
    h = h ^ (h >> np.uint64(15))
    return (h & np.uint64(0xFFFFFF)).astype(np.float32) / np.float32(1 << 24)


def _fade(size_m: np.ndarray | float, pix_m: np.ndarray) -> np.ndarray:
    """1 where a pattern of this size spans 4+ pixels, 0 below 2: poor man's mip-mapping."""
    return np.clip(np.asarray(size_m) / pix_m * 0.5 - 1.0, 0.0, 1.0)


def _material_table(table: np.ndarray) -> np.ndarray:
    """Per box, the flat colours that replace the facade where a material applies (B, 9, 3)."""
    glass, sign = table[:, COL["glass"]], table[:, COL["sign"]]
    flat = lambda rgb: np.broadcast_to(np.asarray(rgb, np.float32), glass.shape)  # noqa: E731
    return np.stack([flat(0.0), glass * 0.6, sign, 0.55 + 0.45 * (1.0 - sign), table[:, COL["crown"]],
                     glass, flat(0.06), table[:, COL["c2"]], flat(SKIN)], axis=1)


SHOP, SIGN, LETTERS, CROWN, CAR_GLASS, TYRE, LEGS, FACE = range(1, 9)


def facade_albedo(table: np.ndarray, obj: np.ndarray, u: np.ndarray, z: np.ndarray, height: np.ndarray,
                  cls: np.ndarray, pix_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour of wall points and the light each gives off at night (lit windows, signs).

    ``table`` holds one style row per box and ``obj`` the box of each point; ``u`` runs
    along the facade from the box corner, ``z`` up from the ground (metres); ``pix_m`` is
    the size of one pixel at that distance, used to fade detail into its mean colour
    instead of aliasing into noise. ``height`` and ``cls`` are per box.
    """
    col = lambda name: table[:, COL[name]][obj]  # noqa: E731
    pitch, floor_h, h = col("pitch"), col("floor"), height[obj]
    fu = np.mod(u / pitch, 1.0)
    level = np.floor(z / floor_h)
    fz = z / floor_h - level
    fade_w, fade_f = _fade(pitch, pix_m), _fade(floor_h, pix_m)

    trim = col("band") * (np.mod(level, 2.0) * fade_f + 0.5 * (1 - fade_f))
    trim += col("pilaster") * ((fu < 0.12) * fade_w + 0.12 * (1 - fade_w))
    c1 = col("c1")
    colour = c1 + (col("c2") - c1) * np.clip(trim, 0.0, 1.0)[:, None]

    ground = col("ground")
    upper = (z > ground) & (z < h - 0.8)
    cover = upper * col("wfrac") * col("whfrac")
    window = upper & (np.abs(fu - 0.5) < col("wfrac") * 0.5) & (fz > 0.3) & (fz < 0.3 + col("whfrac"))
    win_amount = np.where(window, fade_w, 0.0) + cover * (1 - fade_w)
    colour += (col("glass") - colour) * win_amount[:, None]

    sign = (z > ground - 1.0) & (z < ground - 0.25) & (u >= col("u0")) & (u <= col("u1"))
    material = _materials(u, z, h, ground, sign, col("crown_frac"), cls[obj])
    paint = np.flatnonzero(material)
    colour[paint] = _material_table(table)[obj[paint], material[paint]]

    key = col("key")
    grain = hash01(np.floor(u * 3.0), np.floor(z * 3.0), key) - 0.5
    colour *= (1.0 + col("grain") * grain * _fade(0.5, pix_m))[:, None]

    lit = hash01(key, level, np.floor(u / pitch)) < 0.5
    lit_amount = np.where(window & lit, fade_w, 0.0) + cover * 0.5 * (1 - fade_w)
    glow = lit_amount[:, None] * WARM_WINDOW
    glow[sign] += table[:, COL["sign"]][obj[sign]] * 0.8
    return colour.astype(np.float32), glow.astype(np.float32)


def _materials(u: np.ndarray, z: np.ndarray, h: np.ndarray, ground: np.ndarray, sign: np.ndarray,
               crown_frac: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Which flat material covers each point (0: the facade itself); later rules win."""
    m = np.zeros(len(u), np.int64)
    m[(z < ground - 1.1) & (z > 0.4) & (np.mod(u, 4.5) < 3.2)] = SHOP
    m[sign] = SIGN
    m[sign & (np.mod(u * 2.2, 1.0) < 0.45) & (np.abs(z - (ground - 0.62)) < 0.17)] = LETTERS
    m[z > h * (1.0 - crown_frac)] = CROWN
    zr = z / h
    car, person = cls == VEHICLE, cls == PEDESTRIAN
    m[car & (zr > 0.55) & (zr < 0.9)] = CAR_GLASS
    m[car & (zr < 0.28)] = TYRE
    m[person & (zr < 0.5)] = LEGS
    m[person & (zr > 0.87)] = FACE
    return m
