"""Synthetic drives recorded as rosbag2 bags (``vgssl synth --bag``).

A car drives the route of one district of the synthetic world (``synth.City.route_at``: every
street of the split's district, in the right lane like the mapping car) at a constant speed, and
records what a robot would: a camera topic at ``rate_hz`` and a GNSS receiver at its own rate,
with white Gaussian position noise and dropouts, plus the noise-free position on a ground-truth
topic. The district is the dataset split's (same streets, same facades, same UTM coordinates), so
a database built from ``vgssl synth --out`` or from another drive localizes this one. Two drives
with different conditions and seeds make a mapping run and a test run::

    record_drive("map_bag", preset="tiny", condition="database", drive_seed=1)
    record_drive("test_bag", preset="tiny", condition="night,rain,winter", drive_seed=2, gnss_dropout=0.1)

Topics (header stamps = capture time; bag stamps = header + a few ms of transport delay):

* ``/camera/image_raw`` ``sensor_msgs/Image`` rgb8, or with ``compressed``
  ``/camera/image_raw/compressed`` ``sensor_msgs/CompressedImage`` JPEG;
* ``/gnss/fix`` ``sensor_msgs/NavSatFix``: noisy, covariance sigma^2; a dropout is either a
  ``NO_FIX`` message repeating the last position (as many receivers do) or no message at all;
* ``/ground_truth/fix`` ``sensor_msgs/NavSatFix``: the exact camera position, same epochs.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vgssl_core.rosbag.bags import GENERATOR_KEY, STATUS_FIX, STATUS_NO_FIX, BagReader
from vgssl_core.rosbag.writer import BagWriter, is_bag_folder
from vgssl_core.errors import VgsslError
from vgssl_core.data.geo import utm_to_latlon
from vgssl_core.synth import PRESETS, SPLITS, City, Condition, sample_condition
from vgssl_core.synth.captures import DB_LANE_M
from vgssl_core.synth.city import LETTER, ZONE, blocks_for_length
from vgssl_core.synth.conditions import ROLES, SEASON, TIME_OF_DAY, TRAFFIC, WEATHER
from vgssl_core.synth.writer import DEFAULT_SIZE, check_image_size

IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"
GNSS_TOPIC = "/gnss/fix"
TRUTH_TOPIC = "/ground_truth/fix"
GENERATOR = "vgssl synth"
START_S = 1_700_000_000  # the drive's clock starts here (2023-11-14), the same for every drive
CAMERA_DELAY_NS = 8_000_000  # header stamp -> bag stamp (exposure readout, driver, transport)
GNSS_DELAY_NS = 3_000_000
ALTITUDE_M = 240.0  # Turin
DROPOUT_MODES = ("mixed", "no_fix", "missing")
HEADING_JITTER_DEG = 1.5
PITCH_JITTER_DEG = 0.5


def drive_city(*, preset: str = "tiny", seed: int = 0, split: str = "test", world: str | Path | None = None,
               image_size: tuple[int, int] | None = None) -> City:
    """The district a drive goes through: ``world``'s split, or the one ``vgssl synth --preset`` would write.

    Sized like ``synth.writer``'s plan: enough blocks for the split's database at the preset's spacing.
    """
    if split not in SPLITS:
        raise VgsslError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    image_size = None if image_size is None else check_image_size(image_size)
    if world is not None:
        city = City.from_world(world, split)
        if image_size is not None and tuple(image_size) != (city.camera.width, city.camera.height):
            city = City(seed=city.seed, district=city.district, blocks=city.blocks, image_size=image_size)
        return city
    if preset not in PRESETS:
        raise VgsslError(f"unknown synth preset '{preset}'; valid presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    blocks = blocks_for_length(p.counts(split)[0] * p.db_spacing_m)
    return City(seed=int(seed), district=SPLITS.index(split), blocks=blocks, image_size=image_size or DEFAULT_SIZE)


def parse_condition(text: str, rng: np.random.Generator) -> Condition:
    """A drive's look: ``database`` / ``query`` (drawn like the dataset's captures) or
    ``TIME[,WEATHER[,SEASON]]``, e.g. ``night,rain`` (weather default clear, season summer)."""
    if text in ROLES:
        return sample_condition(rng, text)
    parts = [p.strip() for p in text.split(",")]
    tables = (("time of day", TIME_OF_DAY), ("weather", WEATHER), ("season", SEASON))
    if not 1 <= len(parts) <= 3:
        raise VgsslError(f"condition '{text}' must be database, query or TIME[,WEATHER[,SEASON]]")
    for part, (name, table) in zip(parts, tables):
        if part not in table:
            raise VgsslError(f"unknown {name} '{part}' in condition '{text}'; use one of {', '.join(table)}")
    base = sample_condition(rng, "query")
    tod = parts[0]
    weather = parts[1] if len(parts) > 1 else "clear"
    season = parts[2] if len(parts) > 2 else "summer"
    vis_lo, vis_hi = WEATHER[weather].visibility_m
    vehicles, pedestrians = TRAFFIC[tod]
    return dataclasses.replace(base, time_of_day=tod, weather=weather, season=season,
                               visibility_m=float(rng.uniform(vis_lo, vis_hi)), vehicles=vehicles,
                               pedestrians=pedestrians)


def _poses(city: City, t: np.ndarray, speed_mps: float) -> np.ndarray:
    """(N, 3) UTM east, north, heading at times ``t`` along the route, in the right lane."""
    local = city.route_at(np.asarray(t, float) * speed_mps)
    h = np.radians(local[:, 2])
    out = local.copy()
    out[:, 0] += city.origin[0] + DB_LANE_M * np.cos(h)
    out[:, 1] += city.origin[1] - DB_LANE_M * np.sin(h)
    return out


def _check(name: str, value: float, lo: float, hi: float = float("inf"), closed_hi: bool = False) -> None:
    if not (lo < value < hi or (closed_hi and value == hi)):
        raise VgsslError(f"--{name} must be in ({lo:g}, {hi:g}{']' if closed_hi else ')'}, got {value:g}")


def record_drive(out: str | Path, *, preset: str = "tiny", seed: int = 0, split: str = "test",
                 world: str | Path | None = None, condition: str = "query", drive_seed: int = 0,
                 storage: str = "mcap", compressed: bool = False, rate_hz: float = 2.0, gnss_rate_hz: float = 5.0,
                 speed_mps: float = 8.0, gnss_noise_m: float = 2.0, gnss_dropout: float = 0.0,
                 dropout_mode: str = "mixed", image_size: tuple[int, int] | None = None,
                 max_frames: int | None = None, progress: bool = True) -> dict:
    """Render a drive and write it as a rosbag2 bag at ``out``; returns a plain summary.

    ``out`` must be new or an earlier bag written by ``vgssl synth`` (which is replaced).
    ``max_frames`` cuts the drive short after that many camera frames.
    """
    _check("rate", rate_hz, 0.0, 100.0, True)
    _check("gnss-rate", gnss_rate_hz, 0.0, 100.0, True)
    _check("speed", speed_mps, 0.0, 70.0, True)
    if not gnss_noise_m >= 0:
        raise VgsslError(f"--gnss-noise-m must be >= 0, got {gnss_noise_m}")
    if not 0.0 <= gnss_dropout < 1.0:
        raise VgsslError(f"--gnss-dropout must be in [0, 1), got {gnss_dropout}")
    if dropout_mode not in DROPOUT_MODES:
        raise VgsslError(f"--gnss-dropout-mode must be one of {', '.join(DROPOUT_MODES)}, got '{dropout_mode}'")
    if max_frames is not None and max_frames < 1:
        raise VgsslError(f"--max-frames must be >= 1, got {max_frames}")
    out = Path(out)
    replace = is_bag_folder(out) and _written_by_us(out)
    if out.exists() and not replace:
        raise VgsslError(f"{out}: exists and is not a bag written by 'vgssl synth'; refusing to overwrite it, "
                         "choose another --bag")
    start = time.perf_counter()
    city = drive_city(preset=preset, seed=seed, split=split, world=world, image_size=image_size)
    tag = zlib.crc32(condition.encode())
    rng = np.random.default_rng([city.seed, city.district, 100, int(drive_seed), tag])
    look = parse_condition(condition, rng)

    duration = city.route_length_m / speed_mps
    if max_frames is not None:
        duration = min(duration, (max_frames - 1) / rate_hz)
    t_cam = np.arange(0.0, duration + 1e-9, 1.0 / rate_hz)
    t_gnss = np.arange(0.0, duration + 1.0 / gnss_rate_hz + 1e-9, 1.0 / gnss_rate_hz)  # one past the end
    cam = _poses(city, t_cam, speed_mps)
    cam[:, 2] = (cam[:, 2] + rng.normal(0.0, HEADING_JITTER_DEG, len(cam))) % 360.0
    gnss_true = _poses(city, t_gnss, speed_mps)[:, :2]
    noisy = gnss_true + rng.normal(0.0, gnss_noise_m, gnss_true.shape) if gnss_noise_m > 0 else gnss_true.copy()
    dropped = rng.random(len(t_gnss)) < gnss_dropout
    as_no_fix = {"no_fix": np.ones(len(t_gnss), bool), "missing": np.zeros(len(t_gnss), bool),
                 "mixed": rng.random(len(t_gnss)) < 0.5}[dropout_mode]
    start_ns = START_S * 1_000_000_000
    cam_ns = start_ns + np.round(t_cam * 1e9).astype(np.int64)
    gnss_ns = start_ns + np.round(t_gnss * 1e9).astype(np.int64)
    events = sorted([(int(s) + CAMERA_DELAY_NS, 1, i) for i, s in enumerate(cam_ns)]
                    + [(int(s) + GNSS_DELAY_NS, 0, j) for j, s in enumerate(gnss_ns)])

    image_topic = COMPRESSED_TOPIC if compressed else IMAGE_TOPIC
    counts = {"no_fix": 0, "missing": 0}
    last_fix = None
    meta = {"preset": None if world else preset, "world": str(world) if world else None, "seed": city.seed,
            "split": split, "condition": condition, "drive_seed": int(drive_seed), "speed_mps": speed_mps,
            "rate_hz": rate_hz, "gnss_rate_hz": gnss_rate_hz, "gnss_noise_m": gnss_noise_m,
            "gnss_dropout": gnss_dropout, "dropout_mode": dropout_mode}
    with BagWriter(out, storage, replace=replace) as bag, \
            tqdm(total=len(cam), desc="drive", unit="frame", disable=not progress, leave=False) as bar:
        bag.set_custom_data(GENERATOR_KEY, GENERATOR)
        bag.set_custom_data("vgssl.drive", json.dumps(meta))
        for bag_ns, is_camera, i in events:
            if is_camera:
                frame_rng = np.random.default_rng([city.seed, city.district, 101, int(drive_seed), tag, i])
                pitch = look.pitch_deg + float(frame_rng.normal(0.0, PITCH_JITTER_DEG))
                view = dataclasses.replace(look, pitch_deg=pitch)
                rgb, _ = city.render(cam[i, 0], cam[i, 1], cam[i, 2], view, frame_rng)
                if compressed:
                    bag.write_compressed(image_topic, rgb, int(cam_ns[i]), bag_stamp_ns=bag_ns)
                else:
                    bag.write_image(image_topic, rgb, int(cam_ns[i]), bag_stamp_ns=bag_ns)
                bar.update(1)
                continue
            stamp = int(gnss_ns[i])
            lat, lon = utm_to_latlon(gnss_true[i, 0], gnss_true[i, 1], ZONE, LETTER)
            bag.write_navsat(TRUTH_TOPIC, stamp, lat, lon, ALTITUDE_M, sigma_m=0.0, frame_id="ground_truth",
                             bag_stamp_ns=bag_ns)
            if dropped[i] and not as_no_fix[i]:
                counts["missing"] += 1
                continue
            if dropped[i]:
                counts["no_fix"] += 1
                lat, lon = last_fix if last_fix is not None else (float("nan"), float("nan"))
                bag.write_navsat(GNSS_TOPIC, stamp, lat, lon, ALTITUDE_M, status=STATUS_NO_FIX, bag_stamp_ns=bag_ns)
                continue
            lat, lon = utm_to_latlon(noisy[i, 0], noisy[i, 1], ZONE, LETTER)
            last_fix = (lat, lon)
            bag.write_navsat(GNSS_TOPIC, stamp, lat, lon, ALTITUDE_M + float(rng.normal(0.0, 2.0 * gnss_noise_m)),
                             status=STATUS_FIX, sigma_m=max(gnss_noise_m, 0.1), bag_stamp_ns=bag_ns)
    return {
        "bag": str(out), "storage": storage, "image_topic": image_topic, "gnss_topic": GNSS_TOPIC,
        "truth_topic": TRUTH_TOPIC, "frames": len(cam), "gnss_epochs": len(t_gnss),
        "gnss_no_fix": counts["no_fix"], "gnss_missing": counts["missing"], "duration_s": round(float(t_cam[-1]), 3),
        "route_length_m": round(city.route_length_m, 1), "district": split, "zone": f"{ZONE}{LETTER}",
        "image_size": [city.camera.width, city.camera.height], "condition_look": dataclasses.asdict(look),
        **meta, "seconds": round(time.perf_counter() - start, 3),
    }


def _written_by_us(path: Path) -> bool:
    try:
        with BagReader(path) as bag:
            return bag.custom_data.get(GENERATOR_KEY) == GENERATOR
    except VgsslError:
        return False
