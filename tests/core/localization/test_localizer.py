"""Image -> fix: the estimator alone, the `Localizer` on a real database, and `vgssl localize`."""

import json

import numpy as np
import pytest
import torch

from testkit import run_cli
from vgssl_core.data.dataset import load_image, load_split
from vgssl_core.errors import VgsslError
from vgssl_core.localization.localizer import Localizer, estimate_fix


# --- estimate_fix: no model needed -----------------------------------------------------------
def test_agreeing_matches_give_high_confidence_and_a_tight_fix():
    utm = [[100, 200], [104, 201], [98, 197], [103, 204], [101, 199]]
    fix = estimate_fix([0.30, 0.32, 0.33, 0.35, 0.50], utm)
    assert fix.agreeing.all() and fix.agreement == pytest.approx(1.0)
    assert fix.confidence == pytest.approx(1.0)  # d_best / d_5 = 0.6: past Lowe's 0.8
    assert np.hypot(fix.easting - 100, fix.northing - 200) < 5  # near the best match
    assert np.trace(fix.covariance) < 2 * 5.0**2 + 30  # the floor plus the small spread
    assert np.allclose(fix.covariance, fix.covariance.T) and (np.linalg.eigvalsh(fix.covariance) > 0).all()


def test_disagreeing_matches_give_low_confidence_and_a_wide_fix():
    agree = estimate_fix([0.30, 0.32, 0.33, 0.35, 0.36], [[0, 0], [4, 1], [-2, -3], [3, 4], [1, -1]])
    scattered = [[0, 0], [300, 0], [0, 400], [-250, 80], [120, -500]]
    disagree = estimate_fix([0.30, 0.305, 0.31, 0.315, 0.32], scattered)
    assert disagree.agreeing.tolist() == [True, False, False, False, False]
    assert disagree.confidence < 0.1 < 0.8 < agree.confidence
    assert np.trace(disagree.covariance) > 100 * np.trace(agree.covariance)
    assert (disagree.easting, disagree.northing) == (0.0, 0.0)  # still the best match: the only agreeing one


def test_a_clear_margin_over_the_first_rival_raises_confidence():
    utm = [[0, 0], [5, 0], [500, 0], [600, 0]]
    close = estimate_fix([0.30, 0.31, 0.31, 0.32], utm)
    clear = estimate_fix([0.30, 0.31, 0.60, 0.65], utm)
    assert clear.ratio == pytest.approx(0.5) and close.ratio == pytest.approx(0.30 / 0.31)
    assert clear.confidence > 0.5 > close.confidence
    assert np.trace(clear.covariance) < np.trace(close.covariance)


def test_the_estimate_never_leaves_the_agreement_radius_of_the_best_match():
    fix = estimate_fix([0.30, 0.31, 0.32, 0.33], [[0, 0], [24, 0], [20, 10], [60, 0]], agree_radius_m=25.0)
    assert fix.agreeing.tolist() == [True, True, True, False]
    assert 0 < fix.easting and np.hypot(fix.easting, fix.northing) <= 25.0  # pulled toward, never past


def test_an_identical_image_pins_the_fix_to_itself():
    fix = estimate_fix([0.0, 0.2, 0.25], [[10, 20], [30, 20], [10, 40]])
    assert fix.easting == pytest.approx(10, abs=1e-3) and fix.northing == pytest.approx(20, abs=1e-3)
    assert fix.confidence == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(fix.covariance, 25.0 * np.eye(2), atol=0.01)  # the floor alone


def test_a_single_match_is_no_evidence():
    fix = estimate_fix([0.3], [[5, 6]], floor_m=5.0, agree_radius_m=25.0)
    assert fix.confidence == 0.0 and (fix.easting, fix.northing) == (5.0, 6.0)
    assert np.allclose(fix.covariance, (25.0 + 625.0) * np.eye(2))


def test_estimate_fix_rejects_bad_input():
    with pytest.raises(VgsslError):
        estimate_fix([], np.zeros((0, 2)))
    with pytest.raises(VgsslError):
        estimate_fix([0.1, 0.2], [[0, 0]])
    with pytest.raises(VgsslError):
        estimate_fix([0.1, np.nan], [[0, 0], [1, 1]])


# --- the Localizer on a trained checkpoint and a built database --------------------------------
@pytest.fixture(scope="module")
def world(tiny_world, tiny_model):
    """(checkpoint, database folder, the test split)."""
    model = tiny_model()
    return model.ckpt, model.db, load_split(tiny_world, "test")


@pytest.fixture(scope="module")
def localizer(world):
    return Localizer(world[0], world[1], device="cpu", top_k=5)


def test_a_database_image_localizes_to_itself(world, localizer):
    split = world[2]
    for i in (0, 17, 59):
        result = localizer.localize(np.asarray(load_image(split.database.paths[i])))
        assert result.best.index == i and result.best.id == split.database.ids[i]
        assert result.best.distance < 1e-3
        e = result.estimate
        assert np.hypot(e.easting - split.database.utm[i, 0], e.northing - split.database.utm[i, 1]) < 25.0
        assert (e.zone, e.letter) == (32, "T") and np.isfinite([e.latitude, e.longitude]).all()
        assert result.confidence > 0.9 and result.covariance.shape == (2, 2)
        distances = [m.distance for m in result.matches]
        assert len(distances) == 5 and distances == sorted(distances)
        assert result.timings.model > 0 and result.timings.total >= result.timings.model


def test_batch_and_single_frames_agree(world, localizer):
    frames = [np.asarray(load_image(p)) for p in world[2].queries.paths[:4]]
    batch = localizer.localize_batch(frames)
    for frame, together in zip(frames, batch):
        alone = localizer.localize(frame)
        assert [m.index for m in alone.matches] == [m.index for m in together.matches]
        assert alone.estimate.easting == pytest.approx(together.estimate.easting)
        assert np.allclose(alone.descriptor, together.descriptor, atol=1e-4)


def test_frames_from_a_decoder_work_as_views_and_with_per_call_top_k(world, localizer):
    rgb = np.asarray(load_image(world[2].database.paths[3]))
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    view = bgr[..., ::-1]  # RGB as a negative-stride view, as a BGR->RGB slice makes it
    result = localizer.localize(view, top_k=2)
    assert len(result.matches) == 2 and result.best.index == 3
    json.dumps(result.to_dict())  # plain data all the way down


def test_localizer_survives_malformed_frames(localizer):
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 3), np.uint8),
                b"\x00" * 10, np.zeros((8, 8, 4), np.uint8)):
        with pytest.raises(VgsslError, match="image"):
            localizer.localize(bad)
    assert localizer.localize(np.full((30, 40, 3), 128, np.uint8)).matches  # still works afterwards


# --- vgssl localize ------------------------------------------------------------------------------
def test_localize_cli_prints_a_line_per_image_and_writes_json(world, tmp_path, capsys):
    ckpt, db, split = world
    images = [split.database.paths[5], split.queries.paths[0]]
    report = tmp_path / "fix.json"
    assert run_cli("localize", "--db", db, "--ckpt", ckpt, *images, "--top-k", "3", "--json", report) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(str(images[0].parent.parent))]
    assert len(lines) == 2 and "confidence" in lines[0] and split.database.ids[5] in lines[0]
    payload = json.loads(report.read_text())
    assert payload["top_k"] == 3 and payload["forced"] is False and len(payload["results"]) == 2
    first = payload["results"][0]
    assert first["image"] == str(images[0]) and first["matches"][0]["id"] == split.database.ids[5]
    assert len(first["matches"]) == 3 and set(first["estimate"]) == {"easting", "northing", "zone", "letter",
                                                                     "latitude", "longitude"}
    assert np.array(first["covariance"]).shape == (2, 2) and 0 <= first["confidence"] <= 1
    assert set(first["timings"]) == {"preprocess", "model", "search", "total"}


def test_localize_refuses_another_checkpoint_unless_forced(world, tmp_path, capsys):
    ckpt, db, split = world
    other = tmp_path / "other.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = next(k for k in raw["state_dict"] if k.endswith("weight"))
    raw["state_dict"][key] = raw["state_dict"][key] + 0.01  # same model, other weights
    torch.save(raw, other)
    image = split.queries.paths[0]
    assert run_cli("localize", "--db", db, "--ckpt", other, image) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "built with checkpoint last.ckpt" in err and "not other.ckpt" in err
    assert "--force" in err
    assert run_cli("localize", "--db", db, "--ckpt", other, image, "--force") == 0
    assert "--force: built with another checkpoint" in capsys.readouterr().out


def test_localize_user_errors_are_one_line_exit_2(world, tmp_path, capsys):
    ckpt, db, split = world
    image = split.queries.paths[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(image.read_bytes()[:200])
    foreign = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    for args, message in [
        (["--db", db, "--ckpt", tmp_path / "missing.ckpt", image], "checkpoint not found"),
        (["--db", db, "--ckpt", foreign, image], "not a vgssl checkpoint"),
        (["--db", tmp_path / "no_db", "--ckpt", ckpt, image], "no database here"),
        (["--db", db, "--ckpt", ckpt, tmp_path / "nope.jpg"], "image file not found"),
        (["--db", db, "--ckpt", ckpt, broken], "unreadable or truncated image"),
        (["--db", db, "--ckpt", ckpt, image, "--top-k", "0"], "--top-k must be >= 1"),
    ]:
        assert run_cli("localize", *args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
