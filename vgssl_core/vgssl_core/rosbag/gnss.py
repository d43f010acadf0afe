"""A GNSS track from ``NavSatFix`` messages, and the position at any image stamp.

Recorded GNSS is messy, and a replay's ground truth is only as good as this module's care:

* **Unusable fixes are dropped and counted**: status ``NO_FIX`` (receivers often repeat the last
  position with it), NaN or out-of-range latitude/longitude, unreadable messages.
* **Stamps are header stamps** (when the receiver measured), sorted: messages that reached the
  recorder out of order are put back in place and counted; a repeated stamp keeps its first fix.
* **One UTM zone for the whole track**: every fix is projected into the zone of the first usable
  fix (or a zone given by the caller, e.g. the map database's), with
  ``utm.from_latlon(..., force_zone_number=, force_zone_letter=)``. A drive that crosses a zone
  edge thus stays in one metric frame instead of jumping by hundreds of kilometres.
* **Interpolation is linear in UTM** between the two fixes around a stamp, and only when they are
  at most ``max_gap_s`` apart; a stamp exactly on a fix takes it. Stamps in a longer gap
  (``"gnss_gap"``) get no position.
* **The ends of a drive**: a stamp before the first / after the last fix takes that fix when it is
  at most ``end_tolerance_s`` away (a 2 Hz receiver's last fix is often just before the last
  image, and that frame is real ground truth); further out it is ``"gnss_outside"``.

    track = GnssTrack.from_fixes(bag.gnss_fixes("/gnss/fix"))
    utm, reasons = track.interpolate(image_stamps_ns, max_gap_s=1.0)   # NaN rows where reasons[i]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import utm as utm_lib

from vgssl_core.rosbag.bags import GnssFix
from vgssl_core.errors import VgsslError

MAX_GAP_S = 1.0  # default: GNSS fixes around an image stamp may be at most this far apart [s]
# default: a frame this close before the first / after the last fix takes that fix (a bag from
# another recorder often ends with an image just after a 2 Hz receiver's last fix) [s]
GNSS_TOLERANCE_S = 0.2

GAP = "gnss_gap"  # the fixes around the stamp are more than max_gap_s apart
OUTSIDE = "gnss_outside"  # before the first or after the last usable fix
NO_GNSS = "no_gnss"  # the track has no usable fix at all


@dataclass(frozen=True)
class GnssTrack:
    """Usable fixes sorted by stamp, projected into one UTM zone."""

    stamps_ns: np.ndarray  # (M,) int64, strictly increasing
    utm: np.ndarray  # (M, 2) float64 easting, northing [m] in ``zone``/``letter``
    latlon: np.ndarray  # (M, 2) float64 degrees
    altitude: np.ndarray  # (M,) float64 metres
    zone: int | None
    letter: str | None
    counts: dict[str, int] = field(default_factory=dict)  # received, used, no_fix, invalid, corrupt, duplicate,
    #                                                       reordered (see ``from_fixes``)

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @classmethod
    def from_fixes(cls, fixes: Iterable[GnssFix], *, zone: int | None = None, letter: str | None = None) -> GnssTrack:
        """The track of ``fixes`` (recording order); ``zone``/``letter`` None: the first usable fix's zone."""
        received = no_fix = invalid = corrupt = reordered = 0
        stamps, lat, lon, alt = [], [], [], []
        latest = None
        for fix in fixes:
            received += 1
            if fix.error is not None:
                corrupt += 1
                continue
            if fix.status < 0:
                no_fix += 1
                continue
            if not fix.valid:
                invalid += 1
                continue
            if latest is not None and fix.stamp_ns < latest:
                reordered += 1
            latest = fix.stamp_ns if latest is None else max(latest, fix.stamp_ns)
            stamps.append(int(fix.stamp_ns))
            lat.append(fix.latitude)
            lon.append(fix.longitude)
            alt.append(fix.altitude)
        stamps_arr = np.asarray(stamps, dtype=np.int64)
        order = np.argsort(stamps_arr, kind="stable")  # the first of equal stamps stays first
        stamps_arr = stamps_arr[order]
        keep = np.ones(len(stamps_arr), bool)
        keep[1:] = np.diff(stamps_arr) > 0
        duplicate = int((~keep).sum())
        idx = order[keep]
        stamps_arr = stamps_arr[keep]
        latlon = np.column_stack([np.asarray(lat, float)[idx], np.asarray(lon, float)[idx]]).reshape(-1, 2)
        counts = {"received": received, "used": int(len(stamps_arr)), "no_fix": no_fix, "invalid": invalid,
                  "corrupt": corrupt, "duplicate": duplicate, "reordered": reordered}
        if len(stamps_arr) == 0:
            return cls(stamps_arr, np.zeros((0, 2)), latlon, np.zeros(0), zone, letter, counts)
        if zone is None or not letter:
            _, _, zone, letter = utm_lib.from_latlon(latlon[0, 0], latlon[0, 1])
        easting, northing = to_zone(latlon[:, 0], latlon[:, 1], int(zone), str(letter))
        return cls(stamps_arr, np.column_stack([easting, northing]), latlon, np.asarray(alt, float)[idx],
                   int(zone), str(letter), counts)

    @property
    def zone_label(self) -> str:
        return f"{self.zone}{self.letter}" if self.zone is not None else "-"

    def interpolate(self, stamps_ns: np.ndarray | Iterable[int], max_gap_s: float,
                    end_tolerance_s: float = 0.0) -> tuple[np.ndarray, list[str | None]]:
        """((K, 2) UTM at each stamp, NaN where there is none; K reasons, None where there is one).

        ``end_tolerance_s``: a stamp this close before the first / after the last fix takes that fix.
        """
        if not max_gap_s > 0:
            raise VgsslError(f"the GNSS max gap must be > 0 s, got {max_gap_s}")
        if not end_tolerance_s >= 0:
            raise VgsslError(f"the GNSS end tolerance must be >= 0 s, got {end_tolerance_s}")
        stamps = stamps_ns if isinstance(stamps_ns, np.ndarray) else list(stamps_ns)
        t = np.asarray(stamps, dtype=np.int64).reshape(-1)
        out = np.full((len(t), 2), np.nan)
        if len(self) == 0:
            return out, [NO_GNSS] * len(t)
        ts = self.stamps_ns
        hi = np.searchsorted(ts, t, side="left")  # first fix at or after t
        exact = (hi < len(ts)) & (ts[np.minimum(hi, len(ts) - 1)] == t)
        out[exact] = self.utm[hi[exact]]
        inside = ~exact & (hi > 0) & (hi < len(ts))
        i1 = hi[inside]
        i0 = i1 - 1
        span = (ts[i1] - ts[i0]).astype(np.float64)
        ok = span <= max_gap_s * 1e9
        w = ((t[inside] - ts[i0]) / span)[:, None]
        pos = self.utm[i0] + w * (self.utm[i1] - self.utm[i0])
        rows = np.flatnonzero(inside)
        out[rows[ok]] = pos[ok]
        tolerance_ns = end_tolerance_s * 1e9
        near_first = (hi == 0) & ~exact & (ts[0] - t <= tolerance_ns)
        near_last = (hi == len(ts)) & (t - ts[-1] <= tolerance_ns)
        out[near_first] = self.utm[0]
        out[near_last] = self.utm[-1]
        reasons: list[str | None] = [None] * len(t)
        for r in np.flatnonzero(~exact & ~inside & ~near_first & ~near_last):
            reasons[r] = OUTSIDE
        for r in rows[~ok]:
            reasons[r] = GAP
        return out, reasons

    def at(self, stamp_ns: int, max_gap_s: float,
           end_tolerance_s: float = 0.0) -> tuple[np.ndarray | None, str | None]:
        """(easting, northing) at one stamp, or (None, reason); see :meth:`interpolate`."""
        utm, reasons = self.interpolate(np.array([stamp_ns], dtype=np.int64), max_gap_s, end_tolerance_s)
        return (None, reasons[0]) if reasons[0] else (utm[0], None)

    def summary(self) -> dict:
        """Plain data for reports: the counts, the zone, the time span and the mean rate."""
        span = (self.stamps_ns[-1] - self.stamps_ns[0]) / 1e9 if len(self) > 1 else 0.0
        return {**self.counts, "zone": self.zone, "letter": self.letter, "duration_s": round(float(span), 3),
                "rate_hz": round((len(self) - 1) / span, 3) if span > 0 else None}


def to_zone(lat: np.ndarray, lon: np.ndarray, zone: int, letter: str) -> tuple[np.ndarray, np.ndarray]:
    """UTM easting, northing of latitude/longitude arrays, all in the given zone (even outside it)."""
    try:
        easting, northing, _, _ = utm_lib.from_latlon(np.asarray(lat, float), np.asarray(lon, float),
                                                      force_zone_number=int(zone), force_zone_letter=str(letter))
    except (utm_lib.error.OutOfRangeError, ValueError) as exc:
        raise VgsslError(f"GNSS positions cannot be projected into UTM zone {zone}{letter}: {exc}") from None
    return np.asarray(easting, float).reshape(-1), np.asarray(northing, float).reshape(-1)
