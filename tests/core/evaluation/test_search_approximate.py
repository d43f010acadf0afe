"""Approximate search indexes for huge maps: IVF-PQ and HNSW against exact search, and in `build-db`."""

import json

import numpy as np
import pytest
import torch

from testkit import run_cli
from vgssl_core.data.dataset import load_image, load_split
from vgssl_core.errors import VgsslError
from vgssl_core.models.loading import load_descriptor_model
from vgssl_core.localization.localizer import Localizer
from vgssl_core.evaluation.search import ApproximateIndex, build_ann_index, resolve_index_spec
from vgssl_core.localization.database import FILES, INDEX_FILE, MapDatabase
from vgssl_core.evaluation.search import ExactIndex, prepare


def places(n, dim, *, n_places=60, spread=0.5, seed=0):
    """Descriptors with structure: images of one place scatter around the place's centre."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_places, dim)).astype(np.float32)
    return prepare(centres[rng.integers(0, n_places, n)] + spread * rng.standard_normal((n, dim), dtype=np.float32),
                   "ip")


def queries_near(db, n, *, noise=0.5, seed=1):
    """New views of database places: a database descriptor plus noise of norm about ``noise``."""
    rng = np.random.default_rng(seed)
    picked = db[rng.integers(0, len(db), n)]
    return prepare(picked + noise / np.sqrt(db.shape[1]) * rng.standard_normal(picked.shape, dtype=np.float32), "ip")


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_top1_agrees_with_exact_search(kind):
    db, q = places(4000, 64), None
    q = queries_near(db, 300)
    exact_dist, exact = ExactIndex(db, "ip", use_gpu=False).search(q, 10)
    spec = resolve_index_spec(kind, {}, n=len(db), dim=64)
    ann = ApproximateIndex(build_ann_index(db, spec), db, "ip", spec)
    dist, found = ann.search(q, 10)
    assert found.shape == dist.shape == (300, 10)
    assert np.mean(found[:, 0] == exact[:, 0]) >= 0.95
    same = found[:, 0] == exact[:, 0]
    assert np.allclose(dist[same, 0], exact_dist[same, 0], atol=1e-4)  # descriptor distances, as ExactIndex gives
    assert (np.diff(dist, axis=1) >= -1e-6).all()  # nearest first


def test_ivfpq_sizes_follow_the_map_and_bad_parameters_are_named():
    assert resolve_index_spec("ivfpq", {}, n=1_000_000, dim=1024) == {
        "type": "ivfpq", "nlist": 1000, "m": 64, "nbits": 8, "nprobe": 32, "rerank": 64, "train_size": 65536}
    tiny = resolve_index_spec("ivfpq", {}, n=60, dim=64)
    assert tiny["nlist"] == 1 and tiny["nbits"] == 5 and tiny["m"] == 4  # k-means needs 2**nbits points
    for kind, params, message in [
        ("ivfpq", {"m": 7}, "must divide the descriptor dimension 64"),
        ("ivfpq", {"nlist": 500}, "nlist=500 needs at least as many training descriptors"),
        ("ivfpq", {"ef_search": 4}, "unknown index 'ivfpq' parameter key 'ef_search'"),
        ("hnsw", {"M": 0}, "must be a positive integer"),
        ("annoy", {}, "unknown index type 'annoy'"),
    ]:
        with pytest.raises(VgsslError, match=message):
            resolve_index_spec(kind, params, n=300, dim=64)


def test_an_l2_map_gets_the_same_distances_as_exact_search():
    db = places(2000, 32) * 3.0  # not unit vectors
    spec = resolve_index_spec("hnsw", {}, n=len(db), dim=32)
    ann = ApproximateIndex(build_ann_index(prepare(db, "l2"), spec), prepare(db, "l2"), "l2", spec)
    want_dist, want = ExactIndex(db, "l2", use_gpu=False).search(db[:20], 3)
    dist, found = ann.search(db[:20], 3)
    assert (found[:, 0] == np.arange(20)).all() and np.allclose(dist[:, 0], 0.0, atol=2e-2)
    assert np.allclose(dist, want_dist, rtol=1e-4, atol=2e-2)


# --- in the map database -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained descriptor model saved as a vgssl checkpoint (build-db needs no trained one)."""
    model, cfg, _ = load_descriptor_model(None, {"pretrained": "none", "image_size": [48, 64], "head_layers": 1,
                                                 "head_dim": 32})
    path = tmp_path_factory.mktemp("ann") / "untrained.ckpt"
    torch.save({"vgssl": {"format": 1, "model_config": cfg, "method": "simclr", "model_prefix": "model."},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": 0}, path)
    return path


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_build_db_saves_and_searches_an_approximate_index(tiny_world, ckpt, tmp_path, kind):
    flat, db = tmp_path / "flat", tmp_path / kind
    extra = ["--nprobe", "4"] if kind == "ivfpq" else ["--ef-search", "32"]
    assert run_cli("build-db", "--data", tiny_world, "--ckpt", ckpt, "--out", db, "--index", kind, *extra,
                   "--quiet") == 0
    assert run_cli("build-db", "--data", tiny_world, "--ckpt", ckpt, "--out", flat, "--quiet") == 0
    assert sorted(p.name for p in db.iterdir()) == sorted([*FILES, INDEX_FILE])
    manifest = json.loads((db / "manifest.json").read_text())
    assert manifest["index_type"] == kind and manifest["index"]["type"] == kind
    assert manifest["index"]["file"] == INDEX_FILE and manifest["index"]["build_seconds"] >= 0
    assert manifest["index"].get("nprobe", 4) == min(4, manifest["index"].get("nlist", 4))
    loaded, exact = MapDatabase.load(db), MapDatabase.load(flat)
    assert isinstance(loaded.index, ApproximateIndex) and isinstance(loaded.descriptors, np.memmap)
    assert np.array_equal(np.asarray(loaded.descriptors), exact.descriptors)
    distances, found = loaded.search(exact.descriptors[:10], 3)
    assert (found[:, 0] == np.arange(10)).all() and np.allclose(distances[:, 0], 0.0, atol=1e-3)
    want_d, want = exact.search(exact.descriptors[:10], 3)
    assert np.allclose(distances, want_d, atol=1e-3)


def test_localizer_on_an_approximate_map(tiny_world, ckpt, tmp_path):
    db = tmp_path / "hnsw"
    assert run_cli("build-db", "--data", tiny_world, "--ckpt", ckpt, "--out", db, "--index", "hnsw", "--quiet") == 0
    split = load_split(tiny_world, "test")
    localizer = Localizer(ckpt, db, device="cpu", top_k=3)
    result = localizer.localize(np.asarray(load_image(split.database.paths[11])))
    assert result.best.index == 11 and result.best.distance < 1e-3 and len(result.matches) == 3


def test_index_options_and_broken_index_files_are_one_line_errors(tiny_world, ckpt, tmp_path, capsys):
    for args, message in [
        (["--nprobe", "4"], "--nprobe applies to --index ivfpq, not --index flat"),
        (["--index", "hnsw", "--nlist", "8"], "--nlist applies to --index ivfpq, not --index hnsw"),
        (["--index", "ivfpq", "--pq-m", "5"], "m=5 must divide the descriptor dimension 32"),
    ]:
        assert run_cli("build-db", "--data", tiny_world, "--ckpt", ckpt, "--out", tmp_path / "x", *args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    db = tmp_path / "ivf"
    assert run_cli("build-db", "--data", tiny_world, "--ckpt", ckpt, "--out", db, "--index", "ivfpq", "--quiet") == 0
    (db / INDEX_FILE).write_bytes(b"not a faiss index")
    with pytest.raises(VgsslError, match="unreadable faiss index"):
        MapDatabase.load(db)
    (db / INDEX_FILE).unlink()
    with pytest.raises(VgsslError, match=f"database file '{INDEX_FILE}' is missing"):
        MapDatabase.load(db)
