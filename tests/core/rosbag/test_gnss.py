"""GNSS track (`gnss.GnssTrack`): filtering, ordering, one UTM zone, interpolation at image stamps."""

import numpy as np
import pytest
import utm

from vgssl_core.rosbag.bags import STATUS_FIX, STATUS_NO_FIX, GnssFix
from vgssl_core.errors import VgsslError
from vgssl_core.rosbag.gnss import GAP, NO_GNSS, OUTSIDE, GnssTrack

S = 1_000_000_000  # ns per second
E0, N0 = 396000.0, 4991000.0  # zone 32T, Turin


def fix(t_s, east=None, north=None, *, lat=None, lon=None, status=STATUS_FIX, error=None, zone=32, letter="T"):
    if lat is None:
        lat, lon = utm.to_latlon(east, north, zone, letter)
    stamp = int(round(t_s * S))
    return GnssFix(stamp, stamp + 3_000_000, status, float(lat), float(lon), 240.0, error=error)


def straight(n=11, dt=0.2, speed=10.0):
    """A fix every dt seconds along the easting at speed m/s."""
    return [fix(i * dt, E0 + speed * i * dt, N0) for i in range(n)]


def test_interpolation_is_linear_in_utm_and_exact_on_fixes():
    track = GnssTrack.from_fixes(straight())
    assert (track.zone, track.letter) == (32, "T") and len(track) == 11
    stamps = np.array([0, 0.1, 0.2, 0.55, 1.9, 2.0]) * S
    pos, reasons = track.interpolate(stamps.astype(np.int64), max_gap_s=0.5)
    assert reasons == [None] * 6
    assert np.allclose(pos[:, 0], E0 + 10.0 * stamps / S, atol=1e-3)  # 1 mm
    assert np.allclose(pos[:, 1], N0, atol=1e-3)


def test_a_turn_is_interpolated_along_the_chord():
    track = GnssTrack.from_fixes([fix(0, E0, N0), fix(1, E0 + 10, N0), fix(2, E0 + 10, N0 + 10)])
    pos, _ = track.interpolate(np.array([int(1.5 * S)]), max_gap_s=2.0)
    assert np.allclose(pos[0], [E0 + 10, N0 + 5], atol=1e-3)


def test_stamps_in_a_long_gap_or_outside_the_track_get_no_position():
    fixes = straight(11)
    del fixes[4:8]  # 0.6 .. 1.4 s missing: fixes at 0.6 and 1.6 s around the hole, 1.0 s apart
    track = GnssTrack.from_fixes(fixes)
    stamps = np.array([-0.1, 0.3, 1.0, 1.9, 2.1]) * S
    pos, reasons = track.interpolate(stamps.astype(np.int64), max_gap_s=0.5)
    assert reasons == [OUTSIDE, None, GAP, None, OUTSIDE]
    assert np.isnan(pos[[0, 2, 4]]).all() and np.isfinite(pos[[1, 3]]).all()
    _, reasons = track.interpolate(stamps.astype(np.int64), max_gap_s=1.5)  # a laxer gap bridges the hole
    assert reasons[2] is None
    assert track.at(int(1.0 * S), 0.5) == (None, GAP)


def test_stamps_just_beyond_the_ends_take_the_nearest_fix_within_the_tolerance():
    track = GnssTrack.from_fixes(straight(11))  # fixes at 0.0 .. 2.0 s
    stamps = (np.array([-0.25, -0.01, 0.5, 2.01, 2.2, 2.25]) * S).astype(np.int64)
    pos, reasons = track.interpolate(stamps, max_gap_s=0.5, end_tolerance_s=0.2)
    assert reasons == [OUTSIDE, None, None, None, None, OUTSIDE]
    assert np.allclose(pos[1], track.utm[0]) and np.allclose(pos[[3, 4]], track.utm[-1])
    assert np.isnan(pos[[0, 5]]).all()
    assert track.at(int(2.01 * S), 0.5)[1] == OUTSIDE  # no tolerance: as before
    assert np.allclose(track.at(int(2.01 * S), 0.5, 0.2)[0], track.utm[-1])
    with pytest.raises(VgsslError):
        track.interpolate(stamps, 0.5, end_tolerance_s=-0.1)


def test_no_fix_nan_and_unreadable_messages_are_dropped_and_counted():
    fixes = straight(6)
    fixes[1] = fix(0.2, lat=45.0, lon=7.7, status=STATUS_NO_FIX)  # a receiver repeating a stale position
    fixes[2] = fix(0.4, lat=float("nan"), lon=float("nan"))
    fixes[3] = fix(0.6, lat=95.0, lon=7.7)  # out of range
    fixes.append(GnssFix(2 * S, 2 * S, STATUS_NO_FIX, float("nan"), float("nan"), float("nan"), error="corrupt"))
    track = GnssTrack.from_fixes(fixes)
    assert track.counts == {"received": 7, "used": 3, "no_fix": 1, "invalid": 2, "corrupt": 1, "duplicate": 0,
                            "reordered": 0}
    assert np.array_equal(track.stamps_ns, np.array([0, 0.8, 1.0]) * S)


def test_out_of_order_fixes_are_sorted_and_repeated_stamps_keep_the_first():
    fixes = straight(6)
    shuffled = [fixes[0], fixes[3], fixes[1], fixes[2], fixes[4], fixes[5]]
    again = fix(0.4, E0 + 1000, N0)  # same stamp as fixes[2], another position
    track = GnssTrack.from_fixes(shuffled + [again])
    assert track.counts["reordered"] == 3 and track.counts["duplicate"] == 1 and len(track) == 6
    assert (np.diff(track.stamps_ns) > 0).all()
    assert np.allclose(track.utm[:, 0], E0 + 10.0 * np.arange(6) * 0.2, atol=1e-3)  # the first at 0.4 s kept


def test_a_drive_across_a_zone_edge_stays_in_the_first_fixes_zone():
    # along latitude 45 N, east across the 32/33 boundary at 12 E: 100 fixes 20 m apart
    lat = 45.0
    lon0 = 12.0 - 1000.0 / (111_320.0 * np.cos(np.radians(lat)))
    lons = lon0 + np.arange(100) * 20.0 / (111_320.0 * np.cos(np.radians(lat)))
    assert lons[0] < 12.0 < lons[-1]
    fixes = [fix(i, lat=lat, lon=lo) for i, lo in enumerate(lons)]
    track = GnssTrack.from_fixes(fixes)
    assert (track.zone, track.letter) == (32, "T")
    steps = np.linalg.norm(np.diff(track.utm, axis=0), axis=1)
    assert np.allclose(steps, 20.0, rtol=0.01)  # no 300 km jump at the edge
    assert utm.from_latlon(lat, lons[-1])[2] == 33  # where the drive ended, the usual zone would differ


def test_a_given_zone_overrides_the_first_fix():
    fixes = straight(3)
    track = GnssTrack.from_fixes(fixes, zone=33, letter="T")
    assert track.zone == 33
    e, n, _, _ = utm.from_latlon(fixes[0].latitude, fixes[0].longitude, force_zone_number=33, force_zone_letter="T")
    assert np.allclose(track.utm[0], [e, n])


def test_an_empty_track_has_no_position_anywhere():
    track = GnssTrack.from_fixes([fix(0, lat=float("nan"), lon=float("nan"))])
    assert len(track) == 0 and track.zone is None
    assert track.interpolate(np.array([0, 5]), 1.0)[1] == [NO_GNSS, NO_GNSS]
    with pytest.raises(VgsslError, match="max gap must be > 0"):
        track.interpolate(np.array([0]), 0.0)


def test_a_header_stamp_of_zero_falls_back_to_the_bag_stamp(tmp_path):
    from vgssl_core.rosbag.bags import BagReader
    from vgssl_core.rosbag.writer import BagWriter

    with BagWriter(tmp_path / "b") as bag:
        bag.write_navsat("/fix", 0, 45.0, 7.7, bag_stamp_ns=5 * S)
    with BagReader(tmp_path / "b") as bag:
        (only,) = bag.gnss_fixes("/fix")
    assert only.stamp_ns == 5 * S and only.bag_stamp_ns == 5 * S
