"""``LocalizationSession.step``: the per-frame step the node and the replay share, without ROS."""

import numpy as np
import pytest

from vgssl_core.data.dataset import load_image, load_split
from vgssl_core.errors import VgsslError
from vgssl_core.localization.fusion import SEARCH_DEPTH
from vgssl_core.localization.localizer import Localizer
from vgssl_core.localization.session import LocalizationSession


@pytest.fixture(scope="module")
def frames(tiny_world):
    """Six consecutive database images of the test district, as camera frames 0.5 s apart."""
    split = load_split(tiny_world, "test").database
    return [(np.asarray(load_image(p)), 1_000_000_000 + i * 500_000_000) for i, p in enumerate(split.paths[:6])]


@pytest.fixture(scope="module")
def localizer(tiny_model):
    model = tiny_model()
    return Localizer(model.ckpt, model.db, device="cpu", top_k=3)


def test_without_fusion_the_output_is_the_frames_own_fix_from_its_top_k(localizer, frames):
    session = LocalizationSession(localizer, min_depth=10)
    assert session.filter is None and session.depth == 10
    step = session.step(*frames[0])
    assert step.output is step.frame and step.fused is None
    assert len(step.frame.matches) == 3 and len(step.frame.ranked_indices) == 10
    alone = localizer.localize(frames[0][0])  # the same fix as a plain single-image call
    assert (step.frame.estimate, step.frame.confidence) == (alone.estimate, alone.confidence)
    assert [m.index for m in step.frame.matches] == step.frame.ranked_indices[:3].tolist()


def test_with_fusion_the_output_is_the_fused_estimate_with_its_covariance(localizer, frames):
    session = LocalizationSession(localizer, fusion="bayes")
    assert session.depth == max(3, SEARCH_DEPTH)
    for rgb, stamp in frames:
        step = session.step(rgb, stamp)
    fused, out = step.fused, step.output
    assert (out.estimate.easting, out.estimate.northing) == (fused.easting, fused.northing)
    assert out.confidence == pytest.approx(fused.probability)
    want = localizer.floor_m**2 + (1 - fused.probability) * localizer.agree_radius_m**2
    assert np.allclose(out.covariance, want * np.eye(2))
    assert out.matches == step.frame.matches  # the frame's own top-k stay what the robot sees matched
    assert session.filter.last_stamp_ns == frames[-1][1]


def test_a_malformed_frame_leaves_the_belief_untouched(localizer, frames):
    session = LocalizationSession(localizer, fusion="bayes")
    session.step(*frames[0])
    before = session.filter.probabilities().copy()
    with pytest.raises(VgsslError, match="expected an H x W x 3 uint8 RGB image"):
        session.step(np.zeros((10, 10), np.uint8), frames[1][1])
    assert np.array_equal(session.filter.probabilities(), before) and session.filter.last_stamp_ns == frames[0][1]


def test_a_calibration_turns_the_output_into_its_probability_and_keeps_the_raw_step(localizer, frames):
    from vgssl_core.localization.calibration import FEATURES, Calibration, database_sha256, frame_features

    n = len(FEATURES)
    cal = Calibration(threshold_m=25.0, mean=(0.0,) * n, scale=(1.0,) * n, coef=(2.0, 1.0, -1.0, -0.5, 1.0, -0.2),
                      intercept=-0.3, covariance_scale=1.5, covariance_doubt_m2=300.0,
                      checkpoint_sha256=localizer.checkpoint_sha256,
                      database_sha256=database_sha256(localizer.database.path), fusion="none", top_k=3)
    step = LocalizationSession(localizer, calibration=cal).step(*frames[0])
    assert step.uncalibrated is step.frame  # without fusion the raw output is the frame's own fix
    p = cal.probability(frame_features(step.frame, step.frame.confidence))[0]
    assert step.output.confidence == pytest.approx(p) and step.output.confidence != step.frame.confidence
    assert np.allclose(step.output.covariance, 1.5 * step.frame.covariance + 300.0 * (1 - p) * np.eye(2))
    assert step.output.estimate == step.frame.estimate and step.output.matches == step.frame.matches
    # a calibration of other outputs (fused ones) is refused before the first frame, or kept as a warning
    with pytest.raises(VgsslError, match="fitted on fusion 'none' outputs, this localizer runs fusion 'bayes'"):
        LocalizationSession(localizer, fusion="bayes", calibration=cal)
    forced = LocalizationSession(localizer, fusion="bayes", calibration=cal, force_calibration=True)
    assert len(forced.calibration_warnings) == 1
