"""vgssl_ros.messages and vgssl_ros.frame_slot: conversions and the newest-frame slot, no processes."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import CompressedImage, Image, NavSatFix, NavSatStatus

from vgssl_core.errors import VgsslError
from vgssl_core.localization.image_codec import encode_compressed, encode_raw
from vgssl_core.localization.localizer import Fix, LocalizationResult, Match, StageTimes
from vgssl_msgs.msg import Localization
from vgssl_ros.frame_slot import FrameSlot, ProcessingStats
from vgssl_ros.messages import (
    UNKNOWN_VARIANCE, diagnostic_values, diagnostics_msg, enu_covariance, has_fix, image_to_rgb,
    localization_msg, navsatfix_msg, pose_covariance, pose_msg,
)

STAMP = Time(sec=1_700_000_123, nanosec=456_000_000)
COV = np.array([[16.0, 3.0], [3.0, 9.0]])  # var_e 16, var_n 9, cov_en 3 [m^2]


def result(confidence: float = 0.9, latitude: float = 45.07, zone: int | None = 32) -> LocalizationResult:
    matches = [
        Match(index=7, id="@396010@4991000@32@T@45.07@7.68@.jpg", distance=0.125, easting=396010.0,
              northing=4991000.0, latitude=45.07, longitude=7.68, agrees=True),
        Match(index=2, id="@396500@4991400@32@T@45.08@7.69@.jpg", distance=0.5, easting=396500.0,
              northing=4991400.0, latitude=45.08, longitude=7.69, agrees=False),
    ]
    fix = Fix(easting=396012.5, northing=4991003.25, zone=zone, letter="T" if zone else None,
              latitude=latitude, longitude=7.6812)
    return LocalizationResult(fix, confidence, COV.copy(), matches, StageTimes(0.002, 0.05, 0.001),
                              np.zeros(4, np.float32))


# --- images in -------------------------------------------------------------------------------
def test_raw_and_compressed_images_become_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), np.uint8)
    step, data = encode_raw(rgb, "bgr8")
    raw = Image(height=6, width=8, encoding="bgr8", step=step, data=data)
    assert np.array_equal(image_to_rgb(raw), rgb)
    png = CompressedImage(format="png", data=encode_compressed(rgb, "png"))
    assert np.array_equal(image_to_rgb(png), rgb)


@pytest.mark.parametrize("msg, message", [
    (Image(height=4, width=4, encoding="yuv422", step=8, data=bytes(32)), "unsupported image encoding"),
    (Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(40)), "expected step x height"),
    (Image(height=0, width=0, encoding="rgb8", step=0, data=b""), "empty rgb8 image"),
    (CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 not really a jpeg"), "cannot decode"),
])
def test_malformed_images_raise_a_one_line_vgssl_error(msg, message):
    with pytest.raises(VgsslError, match=message) as err:
        image_to_rgb(msg)
    assert "\n" not in str(err.value)


# --- fixes out -------------------------------------------------------------------------------
def test_localization_carries_the_image_stamp_the_utm_frame_and_the_matches():
    msg = localization_msg(result(), STAMP, "utm", processing_latency=0.0625)
    assert msg.header.stamp == STAMP and msg.header.frame_id == "utm"
    assert (msg.utm_zone, msg.utm_band) == (32, "T")
    assert (msg.easting, msg.northing, msg.latitude, msg.longitude) == (396012.5, 4991003.25, 45.07, 7.6812)
    assert msg.position_covariance_type == Localization.COVARIANCE_TYPE_APPROXIMATED
    assert list(msg.position_covariance) == [16.0, 3.0, 3.0, 9.0]
    assert msg.confidence == pytest.approx(0.9)
    assert [(m.database_index, m.descriptor_distance) for m in msg.matches] == [(7, 0.125), (2, 0.5)]
    assert msg.matches[1].image_id.startswith("@396500@") and msg.matches[1].easting == 396500.0
    assert msg.descriptor_latency == pytest.approx(0.05) and msg.processing_latency == 0.0625


def test_a_database_without_utm_zone_gives_zone_0_and_no_fix():
    res = result(latitude=math.nan, zone=None)
    loc = localization_msg(res, STAMP, "utm")
    assert (loc.utm_zone, loc.utm_band) == (0, "") and math.isnan(loc.latitude)
    assert not has_fix(res, 0.0)
    assert navsatfix_msg(res, STAMP, "camera", 0.0).status.status == NavSatStatus.STATUS_NO_FIX


def test_navsatfix_covariance_is_enu_with_unknown_height():
    fix = navsatfix_msg(result(), STAMP, "camera", min_confidence=0.5)
    assert fix.header.stamp == STAMP and fix.header.frame_id == "camera"
    cov = np.array(fix.position_covariance).reshape(3, 3)
    assert np.array_equal(cov[:2, :2], COV)  # east, north
    assert cov[2, 2] == UNKNOWN_VARIANCE and not cov[2, :2].any() and not cov[:2, 2].any()
    assert fix.position_covariance_type == NavSatFix.COVARIANCE_TYPE_APPROXIMATED
    assert (fix.latitude, fix.longitude) == (45.07, 7.6812) and math.isnan(fix.altitude)
    assert fix.status.status == NavSatStatus.STATUS_FIX and fix.status.service == 0
    assert enu_covariance(COV, 4.0) == [16.0, 3.0, 0.0, 3.0, 9.0, 0.0, 0.0, 0.0, 4.0]


def test_low_confidence_is_no_fix_but_keeps_the_best_guess():
    fix = navsatfix_msg(result(confidence=0.2), STAMP, "camera", min_confidence=0.5)
    assert fix.status.status == NavSatStatus.STATUS_NO_FIX == -1
    assert fix.latitude == 45.07  # consumers ignore it, a human may want to see it
    assert navsatfix_msg(result(confidence=0.5), STAMP, "camera", 0.5).status.status == NavSatStatus.STATUS_FIX
    assert not has_fix(result(confidence=0.49), 0.5) and has_fix(result(confidence=0.5), 0.5)


def test_pose_is_utm_position_with_identity_orientation_and_unknown_rotation():
    pose = pose_msg(result(), STAMP, "utm")
    assert pose.header.stamp == STAMP and pose.header.frame_id == "utm"
    p, q = pose.pose.pose.position, pose.pose.pose.orientation
    assert (p.x, p.y, p.z) == (396012.5, 4991003.25, 0.0)
    assert (q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 1.0)
    cov = np.array(pose.pose.covariance).reshape(6, 6)
    assert np.array_equal(cov[:2, :2], COV)
    assert np.array_equal(np.diag(cov)[2:], [UNKNOWN_VARIANCE] * 4)
    off = cov.copy()
    off[:2, :2] = 0
    np.fill_diagonal(off, 0)
    assert not off.any()  # nothing correlates with what is unknown
    assert np.allclose(cov, cov.T) and pose_covariance(COV)[7] == 9.0


# --- diagnostics -----------------------------------------------------------------------------
def test_diagnostics_report_counts_rate_and_latency_percentiles():
    slot, stats = FrameSlot(), ProcessingStats(window_s=10.0)
    for _ in range(5):
        slot.put("frame")  # 4 replaced before anything was taken
    assert slot.take().msg == "frame"
    now = time.monotonic()
    for i, latency in enumerate([0.010, 0.020, 0.030, 0.040, 0.100]):
        stats.record_fix(latency, now=now - 1.0 + 0.1 * i)
    stats.record_bad("unsupported image encoding 'yuv422'")
    snap = stats.snapshot(slot, now=now)
    assert (snap.received, snap.dropped, snap.processed, snap.bad, snap.failed) == (5, 4, 5, 1, 0)
    assert snap.latency_p50 == pytest.approx(0.030) and 0.04 < snap.latency_p95 <= 0.100
    msg = diagnostics_msg(snap, STAMP, "localizer: visual localization", "cpu", "/camera/image_raw", {"device": "cpu"})
    assert msg.header.stamp == STAMP and len(msg.status) == 1
    status = msg.status[0]
    assert status.level == DiagnosticStatus.WARN and "yuv422" in status.message  # the newest frame was bad
    values = diagnostic_values(msg)
    assert values["frames_received"] == "5" and values["frames_dropped"] == "4" and values["frames_bad"] == "1"
    assert values["latency_p50_ms"] == "30.0" and values["image_topic"] == "/camera/image_raw"
    assert values["device"] == "cpu" and float(values["rate_hz"]) > 0


def test_diagnostics_warn_while_waiting_and_are_ok_when_localizing():
    slot, stats = FrameSlot(), ProcessingStats()
    waiting = diagnostics_msg(stats.snapshot(slot), STAMP, "n", "cpu", "/cam").status[0]
    assert waiting.level == DiagnosticStatus.WARN and waiting.message == "waiting for images on /cam"
    values = diagnostic_values(diagnostics_msg(stats.snapshot(slot), STAMP, "n", "cpu", "/cam"))
    assert values["latency_p50_ms"] == "nan" and values["frames_received"] == "0"
    slot.put("frame")
    stats.record_fix(0.05)
    ok = diagnostics_msg(stats.snapshot(slot), STAMP, "n", "cpu", "/cam").status[0]
    assert ok.level == DiagnosticStatus.OK and ok.message.startswith("localizing at")
    stale = diagnostics_msg(stats.snapshot(slot, now=time.monotonic() + 60), STAMP, "n", "cpu", "/cam").status[0]
    assert stale.level == DiagnosticStatus.WARN and "no image on /cam" in stale.message


# --- the slot --------------------------------------------------------------------------------
def test_the_slot_keeps_only_the_newest_frame_and_counts_the_rest():
    slot: FrameSlot[int] = FrameSlot()
    assert slot.take(timeout=0.01) is None  # nothing yet
    assert [slot.put(i) for i in range(4)] == [False, True, True, True]
    frame = slot.take()
    assert frame.msg == 3 and (slot.received, slot.dropped) == (4, 3)
    assert slot.take(timeout=0.01) is None  # taken frames are gone: nothing is processed twice


def test_a_waiting_worker_wakes_for_a_frame_and_for_close():
    slot: FrameSlot[str] = FrameSlot()
    got: list = []
    worker = threading.Thread(target=lambda: got.extend([slot.take(), slot.take()]))
    worker.start()
    time.sleep(0.05)
    slot.put("a")
    time.sleep(0.05)
    slot.close()
    worker.join(2.0)
    assert not worker.is_alive()
    assert got[0].msg == "a" and got[1] is None and slot.closed
