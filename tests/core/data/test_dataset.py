from pathlib import Path

import numpy as np
import pytest

from testkit import ORIGIN, make_dataset, write_geo_image
from vgssl_core.data.dataset import load_image, load_split
from vgssl_core.errors import VgsslError


def test_loads_recursive_subfolders_and_mixed_suffixes(tmp_path):
    root = make_dataset(tmp_path / "d", [(0, 0), (50, 0)], [(1, 0)])
    sub = root / "images/test/database/@sub@folder@"
    write_geo_image(sub, ORIGIN[0] + 100, ORIGIN[1], suffix=".PNG")
    write_geo_image(sub, ORIGIN[0] + 150, ORIGIN[1], suffix=".jpeg")
    (root / "images/test/database/notes.txt").write_text("not an image")
    split = load_split(root, "test")
    assert len(split.database) == 4 and len(split.queries) == 1
    assert split.zone == 32 and split.letter == "T"
    assert split.database.utm.shape == (4, 2)


def test_positives_by_radius(street_dataset):
    split = load_split(street_dataset, "train")
    pos10 = split.positives(10.0)
    for q, hits in zip(split.queries.utm, pos10):
        d = np.linalg.norm(split.database.utm - q, axis=1)
        assert set(hits) == set(np.flatnonzero(d <= 10.0))
    assert all(len(p25) >= len(p10) for p25, p10 in zip(split.positives(25.0), pos10))


def test_missing_split_names_the_ones_present(street_dataset):
    with pytest.raises(VgsslError, match="split 'val' is missing.*train"):
        load_split(street_dataset, "val")


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(VgsslError, match="not a dataset folder"):
        load_split(tmp_path, "test")


def test_empty_split_is_an_error(tmp_path):
    root = make_dataset(tmp_path / "d", [(0, 0)], [(1, 0)])
    for p in (root / "images/test/queries").iterdir():
        p.unlink()
    with pytest.raises(VgsslError, match="queries: no .jpg"):
        load_split(root, "test")


def test_bad_file_name_names_the_file(tmp_path):
    root = make_dataset(tmp_path / "d", [(0, 0)], [(1, 0)])
    (root / "images/test/database/holiday.jpg").write_bytes(b"x")
    with pytest.raises(VgsslError, match="holiday.jpg: file name has no geo-tag"):
        load_split(root, "test")


def test_mixed_utm_zones_in_one_split(tmp_path):
    root = make_dataset(tmp_path / "d", [(0, 0)], [(1, 0)])
    write_geo_image(root / "images/test/database", 500000.0, 4990000.0, zone=33)
    with pytest.raises(VgsslError, match="several UTM zones.*zone 32.*zone 33"):
        load_split(root, "test")


def test_truncated_image_is_found_at_load_time(tmp_path):
    path = write_geo_image(tmp_path, ORIGIN[0], ORIGIN[1], size=(64, 48))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VgsslError, match="unreadable or truncated"):
        load_image(path)
    garbage = tmp_path / "@1@2@32@T@@@.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(VgsslError, match=garbage.name):
        load_image(garbage)
