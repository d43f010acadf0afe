"""Grad-CAM of descriptor models and the share of attention on geo-relevant classes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from testkit import run_cli
from vgssl_core.evaluation import attention
from vgssl_core.evaluation.attention import (attention_shares, class_ids, geo_relevance, gradcam_maps, mask_path, pick_queries,
                                  read_mask, summarise_shares)
from vgssl_core.models.loading import load_descriptor_model


@pytest.fixture(scope="module")
def ckpt(tiny_model):
    return tiny_model().ckpt


# --- the measurement on hand-made cases ------------------------------------------------------
def test_shares_on_a_known_mask():
    mask = np.zeros((4, 4), np.uint8)
    mask[:, :2] = 1  # building: the left half
    mask[3, 3] = 5  # one vehicle pixel
    groups = {"geo": [1, 2], "transient": [5, 6]}
    on_buildings = attention_shares((mask == 1).astype(float), mask, groups)
    assert on_buildings == {"geo_share": 1.0, "geo_pixels": 0.5, "transient_share": 0.0, "transient_pixels": 1 / 16}
    uniform = attention_shares(np.ones((4, 4)), mask, groups)
    assert uniform["geo_share"] == pytest.approx(0.5) and uniform["transient_share"] == pytest.approx(1 / 16)
    summary = summarise_shares([on_buildings, uniform])
    assert summary["geo_share"] == pytest.approx(0.75) and summary["geo_lift"] == pytest.approx(1.5)
    assert summary["transient_lift"] == pytest.approx((1 / 32) / (1 / 16))


def test_a_map_with_no_attention_has_no_share_and_is_left_out():
    mask = np.ones((4, 4), np.uint8)
    empty = attention_shares(np.zeros((4, 4)), mask, {"geo": [1], "transient": [5]})
    assert np.isnan(empty["geo_share"]) and empty["geo_pixels"] == 1.0
    full = attention_shares(np.ones((4, 4)), mask, {"geo": [1], "transient": [5]})
    summary = summarise_shares([empty, full])
    assert summary["geo_share"] == 1.0 and summary["n_without_attention"] == 1


def test_a_cam_at_model_size_is_resized_to_the_mask():
    mask = np.zeros((120, 160), np.uint8)
    mask[:, :80] = 1
    cam = np.zeros((60, 80), np.float32)
    cam[:, :40] = 1.0
    shares = attention_shares(cam, mask, {"geo": [1], "transient": [5]})
    assert shares["geo_share"] > 0.98 and shares["geo_pixels"] == 0.5


def test_geo_relevance_is_computed_from_the_masks(tiny_world, monkeypatch):
    """A CAM that is 1 exactly on building and landmark pixels has all its attention there."""
    geo_ids = class_ids(tiny_world, attention.GEO_CLASSES)
    queries = load_split_queries(tiny_world)
    chosen = pick_queries(len(queries), 4)
    masks = [read_mask(mask_path(tiny_world, "test", queries[i])) for i in chosen]

    def cam_on_geo_pixels(model, cfg, images, references):
        assert images.shape[-2:] == masks[0].shape  # model input at the mask's size: no resizing
        return np.stack([np.isin(m, geo_ids).astype(np.float32) for m in masks[:len(images)]])

    monkeypatch.setattr(attention, "gradcam_maps", cam_on_geo_pixels)
    model, cfg, _ = load_descriptor_model(None, {"pretrained": "none", "image_size": list(masks[0].shape),
                                                 "head_layers": 1, "head_dim": 16})
    report = geo_relevance(model, cfg, tiny_world, n=4, target="true", device=torch.device("cpu"))
    pixels = np.mean([np.isin(m, geo_ids).mean() for m in masks])
    assert report["n_queries"] == 4 and report["geo_share"] == 1.0 and report["transient_share"] == 0.0
    assert report["geo_pixel_share"] == pytest.approx(pixels) and 0 < pixels < 1
    assert report["geo_lift"] == pytest.approx(1.0 / pixels)
    assert [q["query"] for q in report["per_query"]] == chosen


def load_split_queries(root):
    from vgssl_core.data.dataset import load_split

    return load_split(root, "test").queries.ids


# --- real Grad-CAM -----------------------------------------------------------------------------
def test_gradcam_cli_writes_overlays_a_panel_and_shares(tiny_world, ckpt, tmp_path, capsys):
    out = tmp_path / "cam"
    assert run_cli("gradcam", "--ckpt", ckpt, "--ckpt", ckpt, "--labels", "SimCLR,same again", "--data", tiny_world,
                   "--n", "2", "--out", out, "--device", "cpu", "--quiet", "--json", tmp_path / "cam.json") == 0
    printed = capsys.readouterr().out
    assert "SimCLR: geo" in printed and "panel:" in printed
    payload = json.loads((tmp_path / "cam.json").read_text())
    assert payload == json.loads((out / "attention.json").read_text()) and payload["measured"] is True
    assert payload["queries"] == [0, 29]
    for model, folder in zip(payload["models"], ("SimCLR", "same_again")):
        pictures = sorted(p.name for p in (out / folder).iterdir())
        assert pictures == ["q0000.png", "q0029.png"]
        assert Image.open(out / folder / "q0000.png").size == (160, 120)  # the query's own size
        assert 0.0 <= model["geo_share"] <= 1.0 and 0.0 <= model["transient_share"] <= 1.0
        assert model["geo_lift"] > 0 and model["queries"][0]["target_kind"] == "retrieved"
    first, second = payload["models"]
    assert first["geo_share"] == pytest.approx(second["geo_share"])  # same weights, same attention
    panel = Image.open(out / "panel.png")
    assert panel.size[0] > panel.size[1]  # three columns, two rows


def test_gradcam_maps_leave_the_model_as_they_found_it(ckpt):
    model, cfg, _ = load_descriptor_model(ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, *cfg["image_size"])
    refs = model.retrieval_descriptor(images.flip(0)).detach()
    maps = gradcam_maps(model, cfg, images, refs)
    assert maps.shape == (2, *cfg["image_size"]) and maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_gradcam_on_deit_reshapes_tokens_to_a_map():
    model, cfg, _ = load_descriptor_model(None, {"backbone": "deit_s", "pretrained": "none", "image_size": [32, 48],
                                                 "head_layers": 1, "head_dim": 16})
    images = torch.randn(2, 3, 32, 48)
    maps = gradcam_maps(model, cfg, images, model.retrieval_descriptor(images.flip(0)).detach())
    assert maps.shape == (2, 32, 48) and np.isfinite(maps).all()


def test_gradcam_user_errors_are_one_line(tiny_world, ckpt, tmp_path, capsys):
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "o.png").write_bytes(b"a file where the output folder goes")
    for args, message in [
        (["--ckpt", tmp_path / "nope.ckpt"], "checkpoint not found"),
        (["--ckpt", ckpt, "--n", "0"], "--n must be >= 1"),
        (["--ckpt", ckpt, "--labels", "a,b"], "--labels needs 1"),
        (["--ckpt", tmp_path / "not_a_run"], "no best.ckpt or last.ckpt in this folder"),
        (["--ckpt", ckpt, "--out", tmp_path / "o.png"], "--out names a folder"),
        # the second checkpoint is read before the first model's maps are made and written
        (["--ckpt", ckpt, "--ckpt", tmp_path / "nope.ckpt", "--labels", "a,b"], "nope.ckpt: checkpoint not found"),
    ]:
        assert run_cli("gradcam", "--data", tiny_world, "--out", tmp_path / "o", "--device", "cpu", *args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
        assert not (tmp_path / "o").exists()


def test_gradcam_takes_run_folders_and_gives_each_label_its_own_folder(tiny_world, ckpt, tmp_path):
    """Labels that differ only in punctuation never share an overlay folder."""
    out = tmp_path / "cam"
    assert run_cli("gradcam", "--ckpt", ckpt.parent, "--ckpt", ckpt, "--labels", "SimCLR (a),SimCLR [a]",
                   "--data", tiny_world, "--n", "1", "--out", out, "--device", "cpu", "--quiet") == 0
    assert sorted(p.name for p in out.iterdir()) == ["SimCLR_a", "SimCLR_a-2", "attention.json", "panel.png"]
    payload = json.loads((out / "attention.json").read_text())
    assert [m["label"] for m in payload["models"]] == ["SimCLR (a)", "SimCLR [a]"]
    assert payload["models"][0]["checkpoint"] == str(ckpt)  # the run folder's last.ckpt
    assert all(sorted(p.name for p in Path(m["overlays"]).iterdir()) == ["q0000.png"] for m in payload["models"])


def test_overlay_folders_stay_inside_the_output_folder():
    from vgssl_core.cli.results import _folder_names

    assert _folder_names(["..", ".", "a/../b", "SimCLR", "SimCLR"]) == ["model", "model-2", "a_.._b", "SimCLR",
                                                                         "SimCLR-2"]
