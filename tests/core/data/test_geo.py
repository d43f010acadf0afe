import re
from pathlib import Path

import pytest

from vgssl_core.errors import VgsslError
from vgssl_core.data.geo import format_image_name, parse_image_name

REAL_NAMES = {
    # Pitts30k (benchmark downloader): pano id and tile fields
    "@0584338.88@4477306.52@17@T@040.44694@-079.99091@003451@00@@@@@@@.jpg": (584338.88, 4477306.52, 17, "T", 40.44694),
    # San Francisco (SF-XS): pano id and date
    "@0543256.96@4178906.70@10@S@037.75197@-122.48914@Ky3fFeq1PRaVoqdIi3MOzg@@@@@@201311@@.jpg": (543256.96, 4178906.70, 10, "S", 37.75197),
    # St Lucia (southern hemisphere)
    "@0502918.04@6961617.90@56@J@-027.49746@153.01318@@@@@@@@@.jpg": (502918.04, 6961617.90, 56, "J", -27.49746),
    # Tokyo 24/7 query
    "@0387965.40@3951061.19@54@S@035.69526@139.69765@00001@@@@@@@@.png": (387965.40, 3951061.19, 54, "S", 35.69526),
}


@pytest.mark.parametrize("name, expected", REAL_NAMES.items())
def test_real_dataset_names_parse(name, expected):
    tag = parse_image_name(Path("/data/pitts30k/images/test/queries") / name)
    assert (tag.east, tag.north, tag.zone, tag.letter) == expected[:4]
    assert tag.lat == pytest.approx(expected[4])


def test_at_sign_in_parent_folder_is_ignored():
    tag = parse_image_name("/data/my@weird@folder/@0001.00@0002.00@32@T@45.0@7.0@.jpg")
    assert (tag.east, tag.north) == (1.0, 2.0)


def test_missing_trailing_fields_are_accepted():
    # Nordland-style: only easting/northing, no zone, no lat/lon
    tag = parse_image_name("@0000000.00@0001234.00@@@@@.jpg")
    assert (tag.east, tag.north, tag.zone, tag.lat) == (0.0, 1234.0, None, None)
    short = parse_image_name("@10.5@20.5@.jpg")
    assert (short.east, short.north) == (10.5, 20.5)


def test_lat_lon_derived_from_utm_when_absent():
    tag = parse_image_name("@396000.00@4991000.00@32@T@@@.jpg")
    assert tag.lat == pytest.approx(45.06, abs=0.05) and tag.lon == pytest.approx(7.68, abs=0.05)


@pytest.mark.parametrize("name", ["photo.jpg", "@abc@123@32@T@.jpg", "x@1@2@.jpg", "@nan@5@@.jpg"])
def test_name_without_coordinates_is_a_clear_error(name):
    with pytest.raises(VgsslError, match=re.escape(name)):
        parse_image_name(name)


def test_format_round_trips():
    name = format_image_name(396123.45, 4991234.56, 32, "T", 45.07, 7.68, heading=90.0)
    tag = parse_image_name(name)
    assert (tag.east, tag.north, tag.zone, tag.letter, tag.heading) == (396123.45, 4991234.56, 32, "T", 90.0)
