"""The built-in synthetic world: a dataset folder that looks and behaves like a real one."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vgssl_core.errors import VgsslError
from vgssl_core.data.geo import parse_image_name
from vgssl_core.synth import CLASS_NAMES, PRESETS, SPLITS, City, Condition, generate_world
from vgssl_core.synth.classes import PEDESTRIAN, VEHICLE

ROLES = ("database", "queries")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _images(root: Path, split: str, role: str) -> list[Path]:
    return sorted((root / "images" / split / role).glob("*.jpg"))


def _utm(paths: list[Path]) -> np.ndarray:
    return np.array([[t.east, t.north] for t in map(parse_image_name, paths)])


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)


def _pixel_descriptor(path: Path) -> np.ndarray:
    """Downsampled grayscale, zero mean, unit norm: the crudest place descriptor there is."""
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    d = cv2.resize(grey, (16, 12), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    d -= d.mean()
    return d / (np.linalg.norm(d) + 1e-6)


def test_unknown_preset_is_a_user_error_naming_the_presets(tmp_path):
    with pytest.raises(VgsslError, match="valid presets: tiny, demo, full"):
        generate_world(tmp_path / "w", preset="huge")
    assert not (tmp_path / "w").exists()


def test_bad_image_size_is_a_user_error(tmp_path):
    with pytest.raises(VgsslError, match="image size"):
        generate_world(tmp_path / "w", image_size=(8, 8))


def test_refuses_a_folder_that_is_not_a_synthetic_world(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(VgsslError, match="not empty"):
        generate_world(tmp_path, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_same_seed_rewrites_identical_bytes_and_another_seed_differs(tiny_world, tmp_path):
    again = tmp_path / "again"
    generate_world(again, preset="tiny", seed=0, progress=False)
    reference = _files(tiny_world)
    assert _files(again) == reference

    summary = generate_world(again, preset="tiny", seed=1, progress=False)  # overwrites its own world
    other = _files(again)
    assert summary["seed"] == 1 and json.loads(other["world.json"])["seed"] == 1
    assert other.keys() != reference.keys()
    assert not any(name.endswith(".part") for name in other)


def test_layout_names_and_masks(tiny_world):
    meta = json.loads((tiny_world / "world.json").read_text())
    classes = json.loads((tiny_world / "classes.json").read_text())
    assert {int(k): v for k, v in classes.items()} == CLASS_NAMES
    assert {"building", "landmark", "vehicle", "pedestrian", "road", "sky"} <= set(classes.values())
    assert meta["preset"] == "tiny" and meta["seed"] == 0 and meta["zone"] == 32
    assert not (tiny_world / ".synth-in-progress").exists()

    w, h = meta["image_size"]
    seen_classes: set[int] = set()
    for split in SPLITS:
        for role, count in zip(ROLES, PRESETS["tiny"].counts(split)):
            images = _images(tiny_world, split, role)
            assert len(images) == count == meta["splits"][split][role]
            for image in images:
                tag = parse_image_name(image)
                assert (tag.zone, tag.letter) == (32, "T") and tag.heading is not None
                mask = cv2.imread(str(tiny_world / "masks" / split / role / (image.stem + ".png")),
                                  cv2.IMREAD_UNCHANGED)
                assert mask is not None and mask.dtype == np.uint8 and mask.shape == (h, w)
                seen_classes |= set(np.unique(mask).tolist())
            assert cv2.imread(str(images[0])).shape == (h, w, 3)
    assert seen_classes <= set(CLASS_NAMES)
    assert {VEHICLE, PEDESTRIAN} <= seen_classes


def test_splits_are_disjoint_districts(tiny_world):
    places = {s: _utm(_images(tiny_world, s, "database") + _images(tiny_world, s, "queries")) for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert _distances(places[a], places[b]).min() > 100.0


def test_queries_have_positives_and_some_database_has_no_query(tiny_world):
    far_from_queries = 0
    for split in SPLITS:
        d = _distances(_utm(_images(tiny_world, split, "queries")), _utm(_images(tiny_world, split, "database")))
        assert np.mean(d.min(axis=1) <= 10.0) >= 0.9
        far_from_queries += int(np.sum(d.min(axis=0) > 25.0))
    assert far_from_queries > 0


def test_pixel_descriptor_distance_grows_with_geographic_distance(tiny_world):
    db_paths = [p for s in SPLITS for p in _images(tiny_world, s, "database")]
    db_utm, db_desc = _utm(db_paths), np.stack([_pixel_descriptor(p) for p in db_paths])
    near, far = [], []
    for split in SPLITS:
        q_paths = _images(tiny_world, split, "queries")
        geo = _distances(_utm(q_paths), db_utm)
        desc = _distances(np.stack([_pixel_descriptor(p) for p in q_paths]), db_desc)
        for g, d in zip(geo, desc):
            if (g <= 10.0).any():
                near.append(d[g <= 10.0].mean())
                far.append(d[g > 200.0].mean())
    assert len(near) >= 100
    assert np.mean(near) < np.mean(far) - 0.03


def test_city_route_is_continuous_along_streets_and_renders():
    city = City(seed=3, district=1, blocks=(2, 1), image_size=(96, 72))
    poses = city.route(spacing_m=2.0)
    steps = np.linalg.norm(np.diff(poses[:, :2], axis=0), axis=1)
    assert poses.shape[1] == 3 and np.all(steps <= 2.0 + 1e-6)
    assert steps.sum() == pytest.approx(city.route_length_m, abs=2.0)
    rgb, mask = city.render(*poses[10], Condition(), np.random.default_rng(0))
    assert rgb.shape == (72, 96, 3) and rgb.dtype == np.uint8 and mask.shape == (72, 96)
    again, _ = city.render(*poses[10], Condition(), np.random.default_rng(0))
    assert np.array_equal(rgb, again)
    night, _ = city.render(*poses[10], Condition(time_of_day="night"), np.random.default_rng(0))
    assert night.mean() < rgb.mean()


def test_nearby_views_look_alike_far_views_differ():
    city = City(seed=0, district=0, blocks=(3, 3))
    poses = city.route(spacing_m=1.0)
    clear = Condition(vehicles=0, pedestrians=0)

    def view(i: int) -> np.ndarray:
        rgb, _ = city.render(*poses[i], clear, np.random.default_rng(i))
        return rgb.astype(np.float32)

    gaps_near, gaps_far = [], []
    for i in range(50, len(poses) - 300, 97):
        base = view(i)
        gaps_near.append(np.abs(base - view(i + 2)).mean())
        gaps_far.append(np.abs(base - view(i + 250)).mean())
    assert np.mean(gaps_near) < 0.6 * np.mean(gaps_far)


def test_a_drive_through_a_written_world_passes_its_places(tiny_world):
    city = City.from_world(tiny_world, "train")
    drive = city.route(spacing_m=1.0)[:, :2]
    database = _utm(_images(tiny_world, "train", "database"))
    assert _distances(database, drive).min(axis=1).max() < 3.0
    with pytest.raises(VgsslError, match="no synthetic world"):
        City.from_world(tiny_world, "nowhere")
