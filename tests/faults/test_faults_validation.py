"""Rows 4, 7, 8 and the option checks of 10: bad values, hostile checkpoints and odd images are
one-line errors (exit 2) before any work, and images decode the way they look."""

from __future__ import annotations

import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import ORIGIN, make_dataset, run_cli

from vgssl_core.errors import VgsslError
from vgssl_core.training.config import resolve_config


@pytest.mark.parametrize("override, says", [
    ("trainer.max_epochs=abc", "trainer.max_epochs"), ("data.batch_size=abc", "data.batch_size"),
    ("optim.lr=-1", "optim.lr"), ("data.workers=-1", "data.workers"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size"), ("optim.lr=.nan", "optim.lr"),
    ("data.batch_size=2.5", "data.batch_size"), ("data.queries_per_epoch=0", "data.queries_per_epoch"),
])
def test_bad_config_values_are_refused_at_resolve(override, says):
    with pytest.raises(VgsslError, match=f"'{says}'"):
        resolve_config({}, [override])


def test_config_limits_keep_their_meaning():
    cfg = resolve_config({}, ["trainer.max_steps=-1", "data.queries_per_epoch=null", "trainer.max_epochs=3.0"])
    assert cfg["trainer"]["max_steps"] == -1 and cfg["trainer"]["max_epochs"] == 3


def test_eval_batch_size_zero_fails_before_training(tiny_world, tmp_path, capsys):
    assert run_cli("train", "--data", tiny_world, "--out", tmp_path / "run", "--quiet",
                   "trainer.eval_batch_size=0") == 2
    assert "trainer.eval_batch_size" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--workers", "-1"], ["--threshold", "-5"],
                                    ["--threshold", "nan"], ["--threshold", "inf"]])
def test_bad_eval_options_are_usage_errors(tiny_world, option, capsys):
    assert run_cli("eval", "--data", tiny_world, "--split", "val", *option) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vgssl eval: error: " + option[0]) and "\n" not in err


def _tamper(ckpt, tmp_path, change):
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    change(raw)
    out = tmp_path / "tampered.ckpt"
    torch.save(raw, out)
    return out


def test_a_checkpoint_whose_config_disagrees_with_its_weights(tiny_model, tiny_world, tmp_path, capsys):
    def wider_head(raw):
        raw["vgssl"]["model_config"]["head_dim"] = 32  # the weights are 64 wide

    bad = _tamper(tiny_model().ckpt, tmp_path, wider_head)
    assert run_cli("eval", "--data", tiny_world, "--split", "val", "--ckpt", bad, "--quiet") == 2
    assert "weights do not match the model config" in capsys.readouterr().err


def test_a_checkpoint_with_a_non_integer_format(tiny_model, tiny_world, tmp_path, capsys):
    def text_format(raw):
        raw["vgssl"]["format"] = "1"

    bad = _tamper(tiny_model().ckpt, tmp_path, text_format)
    assert run_cli("eval", "--data", tiny_world, "--split", "val", "--ckpt", bad, "--quiet") == 2
    assert "not a version number" in capsys.readouterr().err


def test_a_zone_of_inf_in_a_file_name(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", [(0, 0), (5, 0)], [(1, 0)], split="val")
    image = next((root / "images" / "val" / "queries").iterdir())
    fields = image.name.split("@")
    fields[3] = "inf"
    image.rename(image.with_name("@".join(fields)))
    assert run_cli("eval", "--data", root, "--split", "val", "--quiet") == 2
    assert "malformed geo-tag" in capsys.readouterr().err


def test_a_png_claiming_30000_by_30000_pixels(tmp_path):
    from vgssl_core.data.dataset import load_image

    path = tmp_path / "bomb.png"
    Image.new("RGB", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 30000, 30000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    with pytest.raises(VgsslError, match="too large"):
        load_image(path)


def test_a_half_written_synthetic_world_is_refused(tmp_path, capsys):
    root = make_dataset(tmp_path / "w", [(0, 0), (5, 0)], [(1, 0)], split="val")
    (root / ".synth-in-progress").write_text("generation started\n")
    assert run_cli("eval", "--data", root, "--split", "val", "--quiet") == 2
    err = capsys.readouterr().err
    assert ".synth-in-progress" in err and len(err.strip().splitlines()) == 1


def test_sixteen_bit_png_decodes_like_the_node(tmp_path):
    from vgssl_core.data.dataset import load_image
    from vgssl_core.localization.image_codec import decode_raw

    wide = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(wide).save(path)
    got = np.asarray(load_image(path))
    want = decode_raw("mono16", 3, 4, 8, wide.astype("<u2").tobytes(), False)
    assert got.shape == (3, 4, 3) and np.array_equal(got, want) and got.max() < 255


def test_exif_orientation_is_applied(tmp_path):
    from vgssl_core.data.dataset import load_image

    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 20:] = 255  # landscape: black left, white right
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    shown = np.asarray(load_image(path))
    assert shown.shape[:2] == (40, 20)  # portrait, as every viewer shows it
    assert shown[:15].mean() < 40 and shown[25:].mean() > 215  # black on top after the turn


def test_an_unreadable_subfolder_is_an_error(tmp_path, monkeypatch):
    import os

    from vgssl_core.data import dataset

    root = make_dataset(tmp_path / "d", [(0, 0), (5, 0)], [(1, 0)], split="val")
    hidden = root / "images" / "val" / "database" / "more"
    hidden.mkdir()
    real_scandir = os.scandir

    def forbidden(path="."):
        if str(path) == str(hidden):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", forbidden)  # as a folder without read permission (also as root)
    with pytest.raises(VgsslError, match="cannot read this folder"):
        dataset.load_split(root, "val")


def test_table_of_a_hand_edited_run_with_wrong_types(tmp_path, capsys):
    import json

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "test.json").write_text(json.dumps({"recall": {"1": "high", "5": 50.0}, "data": "worlds/tiny"}))
    (run / "config.json").write_text(json.dumps({"method": "simclr", "trainer": {"seed": "zero"}}))
    assert run_cli("table", "--runs", tmp_path / "runs", "--out", tmp_path / "table") == 2
    err = capsys.readouterr().err
    assert "wrong types" in err and len(err.strip().splitlines()) == 1
