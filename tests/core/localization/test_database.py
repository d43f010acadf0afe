"""`vgssl build-db` and the database folder: plain files, atomic writes, the checkpoint tie."""

import json
import os

import numpy as np
import pytest
import torch

from testkit import run_cli
from vgssl_core.localization import database as mapdb
from vgssl_core.io import file_sha256
from vgssl_core.data.dataset import load_image, load_split
from vgssl_core.errors import VgsslError
from vgssl_core.models.loading import load_descriptor_model
from vgssl_core.localization.database import FILES, MapDatabase, build_database


@pytest.fixture(scope="module")
def ckpt(tiny_model):
    return tiny_model().ckpt


@pytest.fixture(scope="module")
def built(tiny_model):
    """(database folder, the CLI's JSON report) of the test split: `vgssl build-db --json` with ``ckpt``."""
    model = tiny_model()
    return model.db, model.build_report


def test_build_db_writes_plain_files_and_a_manifest(tiny_world, ckpt, built):
    db, report = built
    assert sorted(p.name for p in db.iterdir()) == sorted(FILES)
    split = load_split(tiny_world, "test")
    n = len(split.database)
    desc = np.load(db / "descriptors.npy", allow_pickle=False)
    utm = np.load(db / "utm.npy", allow_pickle=False)
    latlon = np.load(db / "latlon.npy", allow_pickle=False)
    assert desc.dtype == np.float32 and desc.shape == (n, 64)
    assert np.allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)  # ip: unit vectors, as searched
    assert utm.dtype == latlon.dtype == np.float64 and utm.shape == latlon.shape == (n, 2)
    assert np.array_equal(utm, split.database.utm) and np.allclose(latlon, split.database.latlon())
    assert json.loads((db / "ids.json").read_text()) == split.database.ids
    manifest = json.loads((db / "manifest.json").read_text())
    assert manifest["checkpoint"] == {"file": "last.ckpt", "sha256": file_sha256(ckpt)}
    assert manifest["model_config"]["image_size"] == [64, 96] and manifest["model_config"]["head_dim"] == 64
    assert (manifest["descriptor_dim"], manifest["metric"], manifest["count"]) == (64, "ip", n)
    assert (manifest["utm_zone"], manifest["utm_letter"]) == (32, "T")
    assert manifest["source"] == {"kind": "dataset", "root": str(tiny_world.absolute()), "split": "test"}
    assert manifest["index_type"] == "flat" and manifest["format_version"] == 1
    assert manifest["vgssl_version"] and manifest["created"]
    assert report["manifest"] == manifest and report["database"] == str(db.absolute())


def test_saved_descriptors_equal_the_eval_descriptors(tiny_world, ckpt, built, tmp_path):
    npz = tmp_path / "d.npz"
    assert run_cli("eval", "--data", tiny_world, "--ckpt", ckpt, "--save-descriptors", npz, "--quiet") == 0
    saved = np.load(npz, allow_pickle=False)
    assert np.array_equal(np.load(built[0] / "descriptors.npy", allow_pickle=False), saved["db_desc"])


def test_a_stream_of_rgb_frames_builds_the_same_database(tiny_world, ckpt, built, tmp_path):
    """Bag replay builds maps from decoded frames: same pixels, same descriptors as from files."""
    split = load_split(tiny_world, "test").database
    model, cfg, _ = load_descriptor_model(ckpt)
    frames = (np.asarray(load_image(p)) for p in split.paths)  # a generator: consumed once, never listed
    db = build_database(model, cfg, ckpt, frames, split.utm, None, split.ids, 32, "T", tmp_path / "frames",
                        device=torch.device("cpu"), source={"kind": "bag", "path": "x.mcap"}, progress=False)
    assert np.array_equal(db.descriptors, np.load(built[0] / "descriptors.npy", allow_pickle=False))
    assert np.allclose(db.latlon, split.latlon(), atol=1e-5)  # derived from UTM when not given
    assert db.manifest["source"] == {"kind": "bag", "path": "x.mcap"}


def test_search_returns_distances_nearest_first(built):
    db = MapDatabase.load(built[0])
    distances, indices = db.search(db.descriptors[:3], k=4)
    assert distances.shape == indices.shape == (3, 4)
    assert np.array_equal(indices[:, 0], [0, 1, 2]) and np.allclose(distances[:, 0], 0.0, atol=1e-3)
    assert (np.diff(distances, axis=1) >= 0).all()


def test_another_checkpoint_is_refused_unless_forced(ckpt, built):
    db = MapDatabase.load(built[0], expected_ckpt_sha256=file_sha256(ckpt))
    assert len(db) == 60
    with pytest.raises(VgsslError, match=r"built with checkpoint last.ckpt .*not other.ckpt.*rebuild it.*--force"):
        MapDatabase.load(built[0], expected_ckpt_sha256="f" * 64, ckpt_label="other.ckpt")
    assert len(MapDatabase.load(built[0], expected_ckpt_sha256="f" * 64, force=True)) == 60


def _copy(db, dest):
    import shutil

    shutil.copytree(db, dest)
    return dest


@pytest.mark.parametrize("name", ["descriptors.npy", "utm.npy", "latlon.npy", "ids.json"])
def test_a_missing_file_is_named(built, tmp_path, name):
    db = _copy(built[0], tmp_path / "db")
    (db / name).unlink()
    with pytest.raises(VgsslError, match=f"'{name}' is missing"):
        MapDatabase.load(db)


def test_bad_files_are_named_and_pickles_never_load(built, tmp_path):
    db = _copy(built[0], tmp_path / "db")
    np.save(db / "utm.npy", np.zeros((60, 3)))
    with pytest.raises(VgsslError, match=r"utm.npy: expected a 60x2 float64 array"):
        MapDatabase.load(db)
    with open(db / "utm.npy", "wb") as fh:  # an object array: its payload would be a pickle
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (60,)})
        fh.write(b"\x80\x04not a real pickle, and never unpickled")
    with pytest.raises(VgsslError, match="utm.npy: unreadable database file"):
        MapDatabase.load(db)
    (db / "ids.json").write_text('["a"]')
    np.save(db / "utm.npy", np.zeros((60, 2)))
    with pytest.raises(VgsslError, match="ids.json: expected a list of 60 strings"):
        MapDatabase.load(db)


def test_an_interrupted_build_is_never_loaded_and_is_cleaned(tiny_world, ckpt, tmp_path, capsys):
    out = tmp_path / "map"
    # A build killed mid-way leaves its hidden work folder (its process, pid 99999999, is gone).
    partial = _copy_partial(tmp_path, out)
    with pytest.raises(VgsslError, match=r"no database here \(an interrupted build left .map.partial-"):
        MapDatabase.load(out)
    image = load_split(tiny_world, "test").queries.paths[0]
    assert run_cli("localize", "--db", out, "--ckpt", ckpt, image) == 2
    assert "no database here" in capsys.readouterr().err
    assert run_cli("build-db", "--data", tiny_world, "--ckpt", ckpt, "--out", out, "--quiet") == 0
    assert not partial.exists() and len(MapDatabase.load(out)) == 60
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _copy_partial(tmp_path, out):
    partial = tmp_path / f".{out.name}.partial-99999999-abc"
    partial.mkdir()
    np.save(partial / "descriptors.npy", np.zeros((3, 4), np.float32))
    return partial


def test_a_crash_while_rebuilding_keeps_the_old_database(tiny_world, ckpt, built, tmp_path, monkeypatch):
    db = _copy(built[0], tmp_path / "map")
    before = (db / "manifest.json").read_text()
    model, cfg, _ = load_descriptor_model(ckpt)
    split = load_split(tiny_world, "test").database

    def crash(path, payload):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the files are written

    monkeypatch.setattr(mapdb, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        build_database(model, cfg, ckpt, split.paths[:4], split.utm[:4], None, split.ids[:4], 32, "T", db,
                       progress=False)
    assert (db / "manifest.json").read_text() == before and len(MapDatabase.load(db)) == 60
    assert sorted(os.listdir(tmp_path)) == ["map"]


def test_build_db_refuses_to_overwrite_other_folders(tiny_world, ckpt, tmp_path, capsys):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"not mine to delete")
    assert run_cli("build-db", "--data", tiny_world, "--ckpt", ckpt, "--out", precious, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a vgssl database; refusing to overwrite" in err
    assert (precious / "holiday.jpg").read_bytes() == b"not mine to delete"


def test_build_db_user_errors_are_one_line(tiny_world, ckpt, tmp_path, capsys):
    foreign = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    for args, message in [
        (["--data", tiny_world, "--ckpt", tmp_path / "missing.ckpt"], "checkpoint not found"),
        (["--data", tiny_world, "--ckpt", foreign], "not a vgssl checkpoint"),
        (["--data", tmp_path / "nowhere", "--ckpt", ckpt], "not a dataset folder"),
        (["--data", tiny_world, "--split", "nope", "--ckpt", ckpt], "split 'nope' is missing"),
    ]:
        assert run_cli("build-db", *args, "--out", tmp_path / "db", "--quiet") == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "db").exists()

