"""Image buffers from ROS messages decode to the exact RGB pixels the sender meant."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from vgssl_core.errors import VgsslError
from vgssl_core.localization.image_codec import (
    ENCODINGS,
    decode_compressed,
    decode_raw,
    encode_compressed,
    encode_raw,
)

# 2 x 3 pixels, every channel value distinct, so a swapped channel or row shows.
RGB = np.array(
    [[[10, 20, 30], [40, 50, 60], [70, 80, 90]],
     [[110, 120, 130], [140, 150, 160], [170, 180, 190]]],
    dtype=np.uint8,
)
GRAY = np.array([[0, 1, 127], [128, 254, 255]], dtype=np.uint8)
GRAY16 = np.array([[0x0000, 0x00FF, 0x0100], [0x1234, 0xFF00, 0xFFFF]], dtype=np.uint16)


def hand_made(encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels as the sender lays them out, RGB the receiver must get), built by hand."""
    alpha = np.full(RGB.shape[:2] + (1,), 200, np.uint8)
    if encoding == "rgb8":
        return RGB, RGB
    if encoding == "bgr8":
        return RGB[..., ::-1], RGB
    if encoding == "rgba8":
        return np.concatenate([RGB, alpha], axis=2), RGB
    if encoding == "bgra8":
        return np.concatenate([RGB[..., ::-1], alpha], axis=2), RGB
    if encoding == "mono8":
        return GRAY, np.repeat(GRAY[..., None], 3, axis=2)
    if encoding == "mono16":
        high = (GRAY16 >> 8).astype(np.uint8)
        return GRAY16.astype("<u2"), np.repeat(high[..., None], 3, axis=2)
    raise AssertionError(encoding)


def rows_with_padding(pixels: np.ndarray, pad: int, fill: int = 0xEE) -> tuple[int, bytes]:
    """(step, data) of ``pixels`` with ``pad`` junk bytes after every row."""
    height = pixels.shape[0]
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(height, -1)
    padded = np.full((height, rows.shape[1] + pad), fill, np.uint8)
    padded[:, : rows.shape[1]] = rows
    return padded.shape[1], padded.tobytes()


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_each_encoding_decodes_exactly(encoding):
    pixels, expected = hand_made(encoding)
    step, data = rows_with_padding(pixels, pad=0)
    out = decode_raw(encoding, 2, 3, step, data)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("pad", [1, 3, 64])
def test_row_padding_is_skipped(encoding, pad):
    pixels, expected = hand_made(encoding)
    step, data = rows_with_padding(pixels, pad=pad)
    np.testing.assert_array_equal(decode_raw(encoding, 2, 3, step, data), expected)


def test_mono16_big_endian_keeps_the_high_byte():
    big = GRAY16.astype(">u2").tobytes()
    out = decode_raw("mono16", 2, 3, 6, big, is_bigendian=True)
    np.testing.assert_array_equal(out[..., 0], [[0x00, 0x00, 0x01], [0x12, 0xFF, 0xFF]])
    # The same bytes read as little-endian give the low bytes: the flag matters.
    swapped = decode_raw("mono16", 2, 3, 6, big, is_bigendian=False)
    np.testing.assert_array_equal(swapped[..., 0], [[0x00, 0xFF, 0x00], [0x34, 0x00, 0xFF]])


def test_mono16_big_endian_with_odd_padding():
    step, data = rows_with_padding(GRAY16.astype(">u2"), pad=5)
    out = decode_raw("mono16", 2, 3, step, data, is_bigendian=1)  # ROS sends a uint8 flag
    np.testing.assert_array_equal(out[..., 2], (GRAY16 >> 8).astype(np.uint8))


def test_eight_bit_encodings_ignore_the_endianness_flag():
    step, data = rows_with_padding(RGB, pad=0)
    np.testing.assert_array_equal(decode_raw("rgb8", 2, 3, step, data, is_bigendian=True), RGB)


def test_rgb8_is_a_view_of_the_message_buffer():
    step, data = rows_with_padding(RGB, pad=4)
    buffer = bytearray(data)
    out = decode_raw("rgb8", 2, 3, step, buffer)
    assert np.shares_memory(out, np.frombuffer(buffer, np.uint8))
    buffer[0] = 99  # the sender's buffer changes: the view sees it
    assert out[0, 0, 0] == 99


def test_rclpy_and_rosbags_buffer_types_are_accepted():
    step, data = rows_with_padding(RGB[..., ::-1], pad=2)
    for buffer in (data, bytearray(data), memoryview(data), array.array("B", data), np.frombuffer(data, np.uint8)):
        np.testing.assert_array_equal(decode_raw("bgr8", 2, 3, step, buffer), RGB)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_round_trip(encoding):
    image = np.random.default_rng(1).integers(0, 256, (7, 5, 3), np.uint8)
    step, data = encode_raw(image, encoding)
    assert step == 5 * ENCODINGS[encoding].bytes_per_pixel and len(data) == step * 7
    np.testing.assert_array_equal(decode_raw(encoding, 7, 5, step, data), image)


@pytest.mark.parametrize("encoding", ["mono8", "mono16"])
def test_mono_encodings_round_trip_the_luma(encoding):
    image = np.random.default_rng(2).integers(0, 256, (4, 6, 3), np.uint8)
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    step, data = encode_raw(image, encoding)
    out = decode_raw(encoding, 4, 6, step, data)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], luma)


def test_png_round_trips_exactly():
    image = np.random.default_rng(3).integers(0, 256, (9, 11, 3), np.uint8)
    np.testing.assert_array_equal(decode_compressed(encode_compressed(image, "png"), "png"), image)


def test_jpeg_keeps_channel_order_and_is_close():
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = 200  # pure-ish red: a BGR/RGB mix-up would make it blue
    image[..., 2] = 30
    out = decode_compressed(encode_compressed(image, "jpeg", quality=95), "jpeg")
    assert out.shape == image.shape
    assert np.abs(out.astype(int) - image).max() <= 4


def test_grayscale_png_becomes_three_equal_channels():
    ok, png = cv2.imencode(".png", GRAY)
    assert ok
    out = decode_compressed(png.tobytes(), "mono8; png compressed mono8")
    np.testing.assert_array_equal(out, np.repeat(GRAY[..., None], 3, axis=2))


def test_sixteen_bit_png_keeps_the_high_byte():
    ok, png = cv2.imencode(".png", GRAY16)
    assert ok
    out = decode_compressed(png.tobytes(), "png")
    np.testing.assert_array_equal(out[..., 1], (GRAY16 >> 8).astype(np.uint8))


def test_png_with_alpha_drops_it_and_is_rgb():
    bgra = np.concatenate([RGB[..., ::-1], np.full((2, 3, 1), 17, np.uint8)], axis=2)
    ok, png = cv2.imencode(".png", bgra)
    assert ok
    np.testing.assert_array_equal(decode_compressed(png.tobytes()), RGB)


def test_compressed_data_from_rclpy_array_is_accepted():
    png = encode_compressed(RGB, "png")
    np.testing.assert_array_equal(decode_compressed(array.array("B", png), ""), RGB)


# --- errors: one line, saying what is wrong ------------------------------------------------


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def test_unknown_encoding_lists_the_supported_ones():
    with pytest.raises(VgsslError) as excinfo:
        decode_raw("yuv422", 2, 3, 6, bytes(12))
    message = one_line(excinfo)
    assert "'yuv422'" in message
    for name in ENCODINGS:
        assert name in message


def test_step_smaller_than_a_row_is_rejected():
    with pytest.raises(VgsslError, match=r"step 8 is smaller than a row of 3 pixels \(9 bytes\)") as excinfo:
        decode_raw("rgb8", 2, 3, 8, bytes(16))
    one_line(excinfo)


@pytest.mark.parametrize("size", [17, 19, 0])
def test_data_size_other_than_step_times_height_is_rejected(size):
    with pytest.raises(VgsslError, match=r"holds \d+ bytes, expected step x height = 9 x 2 = 18") as excinfo:
        decode_raw("rgb8", 2, 3, 9, bytes(size))
    one_line(excinfo)


@pytest.mark.parametrize("height, width", [(0, 3), (2, 0), (0, 0)])
def test_empty_image_is_rejected(height, width):
    with pytest.raises(VgsslError, match="must be > 0") as excinfo:
        decode_raw("mono8", height, width, 3, b"")
    one_line(excinfo)


@pytest.mark.parametrize("data", [b"not an image at all", bytes(100), b"\x89PNG\r\n\x1a\n" + bytes(30)])
def test_undecodable_compressed_data_is_rejected(data):
    with pytest.raises(VgsslError, match="cannot decode compressed image") as excinfo:
        decode_compressed(data, "jpeg")
    one_line(excinfo)


def test_truncated_jpeg_is_rejected_or_decodes_to_an_image():
    """libjpeg may fill a cut-off scan with grey; it must never raise anything but VgsslError."""
    jpeg = encode_compressed(np.full((16, 16, 3), 90, np.uint8), "jpeg")
    try:
        out = decode_compressed(jpeg[: len(jpeg) // 3])
    except VgsslError as err:
        assert "\n" not in str(err)
    else:
        assert out.shape == (16, 16, 3)


def test_empty_compressed_data_is_rejected():
    with pytest.raises(VgsslError, match="no data") as excinfo:
        decode_compressed(b"")
    one_line(excinfo)


def test_depth_images_are_rejected_with_a_hint():
    png = encode_compressed(RGB, "png")
    with pytest.raises(VgsslError, match="depth map") as excinfo:
        decode_compressed(png, "16UC1; compressedDepth png")
    one_line(excinfo)


def test_unknown_compressed_format_for_encoding_is_rejected():
    with pytest.raises(VgsslError, match="'webp'.*jpeg, png"):
        encode_compressed(RGB, "webp")


def test_encoding_a_non_rgb_array_is_a_programming_error():
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        encode_raw(GRAY, "mono8")
