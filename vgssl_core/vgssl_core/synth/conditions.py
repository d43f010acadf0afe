"""Capture conditions: what changes between two photos of the same place.

Real geo-localization data is hard because database and queries were taken at different
times: daylight against dusk or night, clear against fog or rain, summer against winter,
a car-mounted camera against a hand-held one. The tables below hold those looks as data;
``sample_condition`` draws the database from a narrow, well-lit mix (a mapping campaign)
and the queries from a wide one (whoever happened to take the photo).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROLES = ("database", "query")


@dataclass(frozen=True)
class Light:
    """Sun and sky for a time of day (colours in linear-ish display RGB, 0..1)."""

    sun_elevation_deg: float
    sun: tuple[float, float, float]
    ambient: tuple[float, float, float]
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    fog: tuple[float, float, float]
    lit_windows: float  # fraction of windows lit from inside
    street_light: float  # warm light pooled on the road near the camera (headlights, lamps)


@dataclass(frozen=True)
class Weather:
    visibility_m: tuple[float, float]  # range drawn per capture
    cloud_cover: float
    sun_scale: float
    tint: tuple[float, float, float]
    rain: float  # streak density and wet-road darkening


@dataclass(frozen=True)
class Season:
    saturation: float  # facade colour saturation scale
    tint: tuple[float, float, float]
    snow: float  # ground coverage of snow
    leaves: float  # ground coverage of fallen leaves


TIME_OF_DAY: dict[str, Light] = {
    "day": Light(45.0, (0.75, 0.72, 0.66), (0.48, 0.50, 0.56), (0.30, 0.50, 0.85), (0.70, 0.80, 0.92),
                 (0.78, 0.80, 0.84), 0.0, 0.0),
    "dusk": Light(6.0, (0.70, 0.42, 0.22), (0.30, 0.26, 0.32), (0.18, 0.22, 0.45), (0.95, 0.58, 0.38),
                  (0.55, 0.48, 0.50), 0.35, 0.10),
    "night": Light(-20.0, (0.0, 0.0, 0.0), (0.09, 0.10, 0.14), (0.01, 0.02, 0.06), (0.09, 0.09, 0.15),
                   (0.10, 0.10, 0.13), 0.45, 0.2),
}

WEATHER: dict[str, Weather] = {
    "clear": Weather((2500.0, 4000.0), 0.15, 1.0, (1.0, 1.0, 1.0), 0.0),
    "overcast": Weather((1000.0, 1800.0), 0.85, 0.25, (0.95, 0.97, 1.0), 0.0),
    "fog": Weather((60.0, 160.0), 1.0, 0.1, (0.96, 0.97, 0.99), 0.0),
    "rain": Weather((300.0, 600.0), 1.0, 0.15, (0.84, 0.88, 0.98), 1.0),
}

SEASON: dict[str, Season] = {
    "spring": Season(1.0, (1.0, 1.02, 0.98), 0.0, 0.0),
    "summer": Season(1.08, (1.03, 1.0, 0.94), 0.0, 0.0),
    "autumn": Season(0.92, (1.06, 0.97, 0.86), 0.0, 0.35),
    "winter": Season(0.65, (0.92, 0.97, 1.06), 0.65, 0.0),
}

# Probability of each look per role; the database is a daytime mapping campaign.
MIX: dict[str, dict[str, dict[str, float]]] = {
    "database": {
        "time_of_day": {"day": 1.0},
        "weather": {"clear": 0.6, "overcast": 0.4},
        "season": {"summer": 0.6, "spring": 0.4},
    },
    "query": {
        "time_of_day": {"day": 0.6, "dusk": 0.25, "night": 0.15},
        "weather": {"clear": 0.4, "overcast": 0.25, "fog": 0.15, "rain": 0.2},
        "season": {"spring": 0.15, "summer": 0.25, "autumn": 0.3, "winter": 0.3},
    },
}

# Camera and traffic per role: (camera height range m, pitch std deg, blur probability, noise std).
CAMERA: dict[str, tuple[tuple[float, float], float, float, float]] = {
    "database": ((2.2, 2.5), 0.8, 0.0, 0.008),
    "query": ((1.5, 2.3), 2.0, 0.4, 0.02),
}
TRAFFIC: dict[str, tuple[float, float]] = {"day": (7.0, 10.0), "dusk": (6.0, 6.0), "night": (3.0, 2.0)}


@dataclass(frozen=True)
class Condition:
    """Everything about one capture except where it was taken.

    ``vehicles`` and ``pedestrians`` are expected counts in the 120 m square around the
    camera; where they stand is drawn from the capture's own generator at render time.
    """

    time_of_day: str = "day"
    weather: str = "clear"
    season: str = "summer"
    sun_azimuth_deg: float = 150.0
    visibility_m: float = 3000.0
    exposure: float = 1.0
    camera_height_m: float = 2.3
    pitch_deg: float = 0.0
    vehicles: float = 7.0
    pedestrians: float = 10.0
    noise: float = 0.01
    blur_sigma: float = 0.0

    def __post_init__(self) -> None:
        for name, table in (("time_of_day", TIME_OF_DAY), ("weather", WEATHER), ("season", SEASON)):
            if getattr(self, name) not in table:
                raise ValueError(f"{name} must be one of {list(table)}, got {getattr(self, name)!r}")

    @property
    def light(self) -> Light:
        return TIME_OF_DAY[self.time_of_day]

    @property
    def weather_look(self) -> Weather:
        return WEATHER[self.weather]

    @property
    def season_look(self) -> Season:
        return SEASON[self.season]


def _pick(rng: np.random.Generator, table: dict[str, float]) -> str:
    names = list(table)
    p = np.array([table[n] for n in names], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_condition(rng: np.random.Generator, role: str) -> Condition:
    """Draw one capture's look; ``role`` is ``"database"`` or ``"query"``."""
    if role not in MIX:
        raise ValueError(f"role must be one of {list(MIX)}, got {role!r}")
    mix = MIX[role]
    tod, weather, season = (_pick(rng, mix[k]) for k in ("time_of_day", "weather", "season"))
    (h_lo, h_hi), pitch_std, blur_p, noise = CAMERA[role]
    vehicles, pedestrians = TRAFFIC[tod]
    vis_lo, vis_hi = WEATHER[weather].visibility_m
    blur = float(rng.uniform(0.5, 1.0)) if rng.random() < blur_p else 0.0
    return Condition(
        time_of_day=tod,
        weather=weather,
        season=season,
        sun_azimuth_deg=float(rng.uniform(90.0, 270.0)),
        visibility_m=float(rng.uniform(vis_lo, vis_hi)),
        exposure=float(np.exp(rng.normal(0.0, 0.08 if role == "database" else 0.2))),
        camera_height_m=float(rng.uniform(h_lo, h_hi)),
        pitch_deg=float(np.clip(rng.normal(0.0, pitch_std), -3 * pitch_std, 3 * pitch_std)),
        vehicles=vehicles,
        pedestrians=pedestrians,
        noise=noise,
        blur_sigma=blur,
    )
