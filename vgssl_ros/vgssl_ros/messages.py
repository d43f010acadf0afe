"""ROS messages <-> vgssl_core values: pure functions, tested without processes.

The localizer node receives camera messages and publishes what ``vgssl_core`` computed; every
conversion in between lives here so that it is tested on its own (tests/ros/test_messages.py)
and shared by the node, its service and the benchmarks::

    rgb = image_to_rgb(msg)                                   # sensor_msgs/Image or CompressedImage
    result = localizer.localize(rgb)                          # vgssl_core.localization.localizer
    localization_msg(result, msg.header.stamp, "utm", latency)  # vgssl_msgs/Localization
    navsatfix_msg(result, msg.header.stamp, "camera", min_confidence=0.5)
    pose_msg(result, msg.header.stamp, "utm")

Conventions (REP 103 / REP 105; documented in README and config/localizer.yaml):

* Stamps: every output carries the stamp of the image it was computed from.
* ``sensor_msgs/NavSatFix``: ``header.frame_id`` is the camera's frame (the "antenna" is the
  camera). Status ``STATUS_FIX`` when the confidence reaches ``min_confidence`` (and the
  database has a UTM zone, so latitude/longitude exist), else ``STATUS_NO_FIX`` (-1) with the
  best guess still filled in; ``service`` is 0 (no satellite system was used). Altitude is
  unknown: NaN, as the message definition asks. ``position_covariance`` is the 3x3 ENU matrix,
  row-major: the fix's 2x2 east/north block in the upper left, the vertical variance
  :data:`UNKNOWN_VARIANCE` on the diagonal, zero cross terms with "up";
  ``COVARIANCE_TYPE_APPROXIMATED`` (it comes from the spread of the retrieved places, not from
  a calibrated sensor model).
* ``geometry_msgs/PoseWithCovarianceStamped``: in the UTM frame (``header.frame_id``, e.g.
  "utm", of the database's zone): x = easting, y = northing, z = 0 [m]. Retrieval says nothing
  about heading or height, so the orientation is the identity quaternion and the 6x6
  covariance (x, y, z, roll, pitch, yaw; row-major) holds the east/north block, then
  :data:`UNKNOWN_VARIANCE` for z and each rotation: a filter that fuses the pose learns
  nothing from those (configure it to fuse x and y only).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from sensor_msgs.msg import CompressedImage, Image, NavSatFix, NavSatStatus

from vgssl_core.errors import VgsslError
from vgssl_core.localization.image_codec import decode_compressed, decode_raw
from vgssl_msgs.msg import Localization, PlaceMatch
from vgssl_ros.frame_slot import StatsSnapshot

if TYPE_CHECKING:  # annotations only: importing it would load torch, which conversions never need
    from vgssl_core.localization.localizer import LocalizationResult

# Variance [m^2 or rad^2] of what a visual fix does not measure (height, orientation):
# a standard deviation of 1000 m / 1000 rad, i.e. "unknown" to any filter.
UNKNOWN_VARIANCE = 1.0e6

# The newest frame older than this [s] makes the diagnostics warn that images stopped.
STALE_AFTER_S = 5.0


# --- images in -------------------------------------------------------------------------------
def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """H x W x 3 uint8 RGB from a ``sensor_msgs/Image`` or ``CompressedImage``.

    Malformed messages (unknown encoding, step/size mismatch, empty, undecodable data) raise
    ``VgsslError`` with a one-line message; see ``vgssl_core.localization.image_codec``.
    """
    if isinstance(msg, Image):
        return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
    if isinstance(msg, CompressedImage):
        return decode_compressed(msg.data, msg.format)
    raise VgsslError(f"expected a sensor_msgs/Image or CompressedImage, got {type(msg).__name__}")


# --- fixes out -------------------------------------------------------------------------------
def _header(msg: Any, stamp: Time, frame_id: str) -> None:
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id


def localization_msg(result: LocalizationResult, stamp: Time, frame_id: str,
                     processing_latency: float = 0.0) -> Localization:
    """``vgssl_msgs/Localization``: the fix in UTM and WGS84, its covariance and the top-k matches."""
    fix = result.estimate
    msg = Localization()
    _header(msg, stamp, frame_id)
    msg.utm_zone = int(fix.zone) if fix.zone is not None else 0
    msg.utm_band = fix.letter or ""
    msg.easting, msg.northing = float(fix.easting), float(fix.northing)
    msg.latitude, msg.longitude = float(fix.latitude), float(fix.longitude)
    msg.position_covariance_type = Localization.COVARIANCE_TYPE_APPROXIMATED
    msg.position_covariance = [float(v) for v in np.asarray(result.covariance, dtype=np.float64).reshape(4)]
    msg.confidence = float(result.confidence)
    msg.matches = [
        PlaceMatch(database_index=m.index, image_id=m.id, descriptor_distance=float(m.distance),
                   easting=m.easting, northing=m.northing, latitude=m.latitude, longitude=m.longitude)
        for m in result.matches
    ]
    msg.descriptor_latency = float(result.timings.model)
    msg.processing_latency = float(processing_latency)
    return msg


def has_fix(result: LocalizationResult, min_confidence: float) -> bool:
    """Whether the result is good enough to publish as a fix (NavSatFix STATUS_FIX, a pose)."""
    fix = result.estimate
    return result.confidence >= min_confidence and math.isfinite(fix.latitude) and math.isfinite(fix.longitude)


def enu_covariance(covariance_en: np.ndarray, vertical_variance: float = UNKNOWN_VARIANCE) -> list[float]:
    """Row-major 3x3 ENU covariance from a 2x2 east/north one, with ``vertical_variance`` for "up"."""
    cov = np.zeros((3, 3))
    cov[:2, :2] = np.asarray(covariance_en, dtype=np.float64).reshape(2, 2)
    cov[2, 2] = vertical_variance
    return [float(v) for v in cov.reshape(9)]


def navsatfix_msg(result: LocalizationResult, stamp: Time, frame_id: str, min_confidence: float) -> NavSatFix:
    """``sensor_msgs/NavSatFix`` of the estimate; ``STATUS_NO_FIX`` below ``min_confidence``."""
    fix = result.estimate
    msg = NavSatFix()
    _header(msg, stamp, frame_id)
    msg.status.status = NavSatStatus.STATUS_FIX if has_fix(result, min_confidence) else NavSatStatus.STATUS_NO_FIX
    msg.status.service = 0  # no satellite system: a visual fix
    msg.latitude, msg.longitude, msg.altitude = float(fix.latitude), float(fix.longitude), math.nan
    msg.position_covariance = enu_covariance(result.covariance)
    msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_APPROXIMATED
    return msg


def pose_covariance(covariance_en: np.ndarray, unknown_variance: float = UNKNOWN_VARIANCE) -> list[float]:
    """Row-major 6x6 (x, y, z, roll, pitch, yaw) covariance: the east/north block, the rest unknown."""
    cov = np.diag([0.0, 0.0] + [unknown_variance] * 4)
    cov[:2, :2] = np.asarray(covariance_en, dtype=np.float64).reshape(2, 2)
    return [float(v) for v in cov.reshape(36)]


def pose_msg(result: LocalizationResult, stamp: Time, frame_id: str) -> PoseWithCovarianceStamped:
    """``geometry_msgs/PoseWithCovarianceStamped`` in the UTM frame: x = easting, y = northing."""
    msg = PoseWithCovarianceStamped()
    _header(msg, stamp, frame_id)
    position = msg.pose.pose.position
    position.x, position.y, position.z = float(result.estimate.easting), float(result.estimate.northing), 0.0
    msg.pose.pose.orientation.w = 1.0  # identity: heading unknown (see the covariance)
    msg.pose.covariance = pose_covariance(result.covariance)
    return msg


# --- diagnostics -----------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return "nan" if not math.isfinite(seconds) else f"{1000.0 * seconds:.1f}"


def diagnostics_msg(stats: StatsSnapshot, stamp: Time, name: str, hardware_id: str, image_topic: str,
                    extra: dict[str, str] | None = None) -> DiagnosticArray:
    """``diagnostic_msgs/DiagnosticArray`` with one status of the localizer.

    Level: WARN while no image has
    arrived, when the newest is older than :data:`STALE_AFTER_S`, or when the newest frame
    handled was malformed or failed; OK otherwise. Values (strings, as the message requires):
    frames_received, frames_processed, frames_dropped, frames_bad, frames_failed, rate_hz,
    latency_p50_ms, latency_p95_ms (arrival to publication, over the stats window), image_topic,
    then ``extra``.
    """
    if stats.since_last_frame is None:
        level, message = DiagnosticStatus.WARN, f"waiting for images on {image_topic}"
    elif stats.since_last_frame > STALE_AFTER_S:
        level, message = DiagnosticStatus.WARN, f"no image on {image_topic} for {stats.since_last_frame:.1f} s"
    elif not stats.last_frame_ok:
        level, message = DiagnosticStatus.WARN, f"last frame not localized: {stats.last_problem}"
    else:
        level, message = DiagnosticStatus.OK, f"localizing at {stats.rate_hz:.1f} Hz"
    values = {
        "frames_received": str(stats.received),
        "frames_processed": str(stats.processed),
        "frames_dropped": str(stats.dropped),
        "frames_bad": str(stats.bad),
        "frames_failed": str(stats.failed),
        "rate_hz": f"{stats.rate_hz:.2f}",
        "latency_p50_ms": _ms(stats.latency_p50),
        "latency_p95_ms": _ms(stats.latency_p95),
        "image_topic": image_topic,
        **(extra or {}),
    }
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def diagnostic_values(array: DiagnosticArray, name: str | None = None) -> dict[str, str]:
    """The key/value pairs of the status called ``name`` (default: the first) in ``array``."""
    for status in array.status:
        if name is None or status.name == name:
            return {kv.key: kv.value for kv in status.values}
    raise KeyError(f"no diagnostic status named {name!r}")
