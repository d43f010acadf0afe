"""Row 10 (databases): NaN descriptors are refused at load; a crash between build-db's two
renames loses nothing (the retired copy comes back, and a rebuild never deletes it first)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from vgssl_core.errors import VgsslError
from vgssl_core.localization.database import MapDatabase


def _copy(tiny_model, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(tiny_model().db, db)
    return db


def test_a_database_with_nan_descriptors_is_refused_at_load(tiny_model, tmp_path):
    db = _copy(tiny_model, tmp_path)
    desc = np.load(db / "descriptors.npy")
    desc[3, 5] = np.nan
    np.save(db / "descriptors.npy", desc)
    with pytest.raises(VgsslError, match="NaN"):
        MapDatabase.load(db)


def _crash_between_renames(db):
    """What a kill -9 after ``os.replace(out, retired)`` and before ``os.replace(tmp, out)`` leaves."""
    retired = db.parent / f".{db.name}.retired-999999999-{12345}"
    os.replace(db, retired)
    return retired


def test_a_crash_between_the_renames_restores_the_retired_database(tiny_model, tmp_path):
    db = _copy(tiny_model, tmp_path)
    ids = (db / "ids.json").read_text()
    retired = _crash_between_renames(db)
    loaded = MapDatabase.load(db)
    assert loaded.ids == json.loads(ids) and not retired.exists()


def test_a_rebuild_after_such_a_crash_never_deletes_the_retired_copy_first(tiny_model, tmp_path, monkeypatch):
    from vgssl_core.localization import database

    db = _copy(tiny_model, tmp_path)
    old = MapDatabase.load(db)
    desc, utm, latlon, ids, manifest = (np.array(old.descriptors), old.utm, old.latlon, old.ids, old.manifest)
    _crash_between_renames(db)

    def disk_full(*_args, **_kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(database, "save_npy", disk_full)  # the rebuild fails half-way
    with pytest.raises(OSError):
        database.write_database(db, desc, utm, latlon, ids, manifest)
    assert MapDatabase.load(db).ids == ids  # the earlier database is still there, under its name
