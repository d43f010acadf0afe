"""`vgssl export`: TorchScript/ONNX files that compute the checkpoint's descriptors, and the
localizer running on them against a database built with the checkpoint."""

import json

import numpy as np
import pytest
import torch

from testkit import run_cli
from vgssl_core.io import file_sha256
from vgssl_core.data.dataset import load_image, load_split
from vgssl_core.errors import VgsslError
from vgssl_core.models.loading import load_descriptor_model
from vgssl_core.models.export import TOLERANCE, export_model, load_exported, sidecar_path
from vgssl_core.localization.localizer import Localizer


def onnx_available():
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory):
    """(checkpoint at 64x96, database built with it, folder for exports)."""
    model = tiny_model(64, 96)
    return model.ckpt, model.db, tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def reference(world):
    model, cfg, _ = load_descriptor_model(world[0])
    return model.eval(), cfg


def descriptors(model, x):
    with torch.no_grad():
        return model.retrieval_descriptor(x)


def test_torchscript_export_matches_the_checkpoint_at_a_fixed_size(world, reference, capsys):
    ckpt, _, out = world
    model, cfg = reference
    path = out / "fixed.ts"
    assert run_cli("export", "--ckpt", ckpt, "--format", "torchscript", "--out", path) == 0
    assert "max |exported - checkpoint|" in capsys.readouterr().out
    side = json.loads(sidecar_path(path).read_text())
    assert side["checkpoint"] == {"file": "last.ckpt", "sha256": file_sha256(ckpt)}
    assert side["file_sha256"] == file_sha256(path) and side["export_format"] == "torchscript"
    assert side["preprocessing"]["image_size"] == [64, 96] and side["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert (side["descriptor_dim"], side["metric"], side["normalized"], side["dynamic"]) == (64, "ip", True, False)
    assert side["model_config"] == cfg and list(side["check"]["max_abs_diff"]) == ["64x96"]
    exported = load_exported(path)
    x = torch.randn(4, 3, 64, 96)
    assert (exported(x) - descriptors(model, x)).abs().max() < TOLERANCE


def test_torchscript_export_with_dynamic_size(world, reference):
    ckpt, _, out = world
    model, _ = reference
    side = export_model(ckpt, "torchscript", out / "dynamic.ts", dynamic=True)
    assert side["dynamic"] and sorted(side["check"]["max_abs_diff"]) == ["64x96", "96x160"]
    exported = load_exported(out / "dynamic.ts")
    for shape in [(1, 3, 64, 96), (2, 3, 77, 131)]:
        x = torch.randn(*shape)
        assert (exported(x) - descriptors(model, x)).abs().max() < TOLERANCE, shape


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime / onnxscript not installed")
def test_onnx_export_matches_the_checkpoint_at_any_size(world, reference):
    ckpt, _, out = world
    model, _ = reference
    side = export_model(ckpt, "onnx", out / "model.onnx", dynamic=True)
    assert side["export_format"] == "onnx" and side["dynamic"] is True
    assert max(side["check"]["max_abs_diff"].values()) < TOLERANCE
    exported = load_exported(out / "model.onnx")
    for shape in [(3, 3, 64, 96), (1, 3, 70, 90)]:
        x = torch.randn(*shape)
        assert (exported(x) - descriptors(model, x)).abs().max() < TOLERANCE, shape


def test_localizer_on_an_export_gives_the_checkpoints_matches(tiny_world, world):
    ckpt, db, out = world
    if not (out / "fixed.ts").exists():
        export_model(ckpt, "torchscript", out / "fixed.ts")
    exports = [out / "fixed.ts"] + ([out / "model.onnx"] if (out / "model.onnx").exists() else [])
    split = load_split(tiny_world, "test")
    frames = [np.asarray(load_image(p)) for p in split.queries.paths[:3] + split.database.paths[:1]]
    want = Localizer(ckpt, db, device="cpu", top_k=5).localize_batch(frames)
    for path in exports:
        localizer = Localizer(path, db, device="cpu", top_k=5)
        assert localizer.checkpoint_matches_database and localizer.checkpoint_sha256 == file_sha256(ckpt)
        for a, b in zip(want, localizer.localize_batch(frames)):
            assert [m.index for m in a.matches] == [m.index for m in b.matches], path
            assert np.allclose([m.distance for m in a.matches], [m.distance for m in b.matches], atol=1e-4)
            assert np.allclose(a.descriptor, b.descriptor, atol=TOLERANCE)
    assert want[-1].best.index == 0  # a database image still finds itself


def test_localize_cli_takes_an_export(tiny_world, world, capsys):
    ckpt, db, out = world
    if not (out / "fixed.ts").exists():
        export_model(ckpt, "torchscript", out / "fixed.ts")
    image = load_split(tiny_world, "test").database.paths[7]
    assert run_cli("localize", "--db", db, "--ckpt", out / "fixed.ts", image, "--json", out / "fix.json") == 0
    assert "torchscript export fixed.ts of checkpoint last.ckpt" in capsys.readouterr().out
    fix = json.loads((out / "fix.json").read_text())
    assert fix["checkpoint_sha256"] == file_sha256(ckpt) and fix["results"][0]["matches"][0]["index"] == 7


def test_an_export_at_another_size_or_a_tampered_file_is_refused(world):
    ckpt, db, out = world
    small = out / "small.ts"
    side = export_model(ckpt, "torchscript", small, image_size=(48, 64))
    assert side["preprocessing"]["image_size"] == [48, 64]
    with pytest.raises(VgsslError, match="exported for 48x64 input but the database was built at 64x96"):
        Localizer(small, db, device="cpu")
    assert Localizer(small, db, device="cpu", force=True).config["image_size"] == [48, 64]
    small.write_bytes(small.read_bytes() + b"\0")
    with pytest.raises(VgsslError, match="does not match its sidecar"):
        load_exported(small)


def test_export_user_errors_are_one_line(world, tmp_path, capsys):
    ckpt = world[0]
    for args, message in [
        (["--ckpt", tmp_path / "nope.ckpt", "--format", "torchscript"], "checkpoint not found"),
        (["--ckpt", ckpt, "--format", "torchscript", "--height", "64"], "give both --height and --width"),
        (["--ckpt", ckpt, "--format", "torchscript", "--height", "8", "--width", "8"], "image_size"),
    ]:
        assert run_cli("export", *args, "--out", tmp_path / "m.ts") == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "m.ts").exists()


def test_a_failed_export_leaves_the_earlier_one_intact(world):
    ckpt, _, out = world
    target = out / "kept.ts"
    export_model(ckpt, "torchscript", target)
    before = (target.read_bytes(), sidecar_path(target).read_text())
    with pytest.raises(VgsslError, match="tolerance"):
        export_model(ckpt, "torchscript", target, tolerance=-1.0)  # no export can pass: verification fails
    assert (target.read_bytes(), sidecar_path(target).read_text()) == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no partial file left
    load_exported(target)  # still loads: file and sidecar agree
