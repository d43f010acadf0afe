"""Camera image buffers <-> RGB uint8 arrays, without ROS.

The localizer node, the bag replay and the benchmarks all receive images as the plain
fields of a ``sensor_msgs/Image`` (encoding, height, width, step, data, is_bigendian) or
a ``sensor_msgs/CompressedImage`` (data, format). They hand those fields to this module,
so there is one decoder, tested here without ROS, and every caller gets the same
``H x W x 3`` RGB ``uint8`` array the descriptor model expects. ROS's ``cv_bridge`` is not
an option in the project's environment (see shared/ROS2.md).

    rgb = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
    rgb = decode_compressed(msg.data, msg.format)

Malformed input (a sender's mistake, a corrupt bag) raises :class:`VgsslError` with a
one-line message, so a node can log it and drop the frame instead of crashing.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Union

import cv2
import numpy as np

from vgssl_core.errors import VgsslError

# What rclpy (array.array), rosbags (ndarray) and plain Python (bytes) hand us as image data.
Buffer = Union[bytes, bytearray, memoryview, array.array, np.ndarray]


@dataclass(frozen=True)
class _Encoding:
    channels: int  # values per pixel
    bytes_per_channel: int
    to_rgb: int | None  # cv2.cvtColor code from the 8-bit layout to RGB; None: already RGB
    from_rgb: int | None  # cv2.cvtColor code from RGB to the 8-bit layout; None: is RGB

    @property
    def bytes_per_pixel(self) -> int:
        return self.channels * self.bytes_per_channel


# ROS image encodings (sensor_msgs/image_encodings.hpp) a camera pipeline sends us.
ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, 1, None, None),
    "bgr8": _Encoding(3, 1, cv2.COLOR_BGR2RGB, cv2.COLOR_RGB2BGR),
    "rgba8": _Encoding(4, 1, cv2.COLOR_RGBA2RGB, cv2.COLOR_RGB2RGBA),
    "bgra8": _Encoding(4, 1, cv2.COLOR_BGRA2RGB, cv2.COLOR_RGB2BGRA),
    "mono8": _Encoding(1, 1, cv2.COLOR_GRAY2RGB, cv2.COLOR_RGB2GRAY),
    "mono16": _Encoding(1, 2, cv2.COLOR_GRAY2RGB, cv2.COLOR_RGB2GRAY),
}

COMPRESSED_FORMATS = ("jpeg", "png")


def _encoding(name: str) -> _Encoding:
    if name not in ENCODINGS:
        raise VgsslError(
            f"unsupported image encoding {name!r}: use one of {', '.join(ENCODINGS)} "
            "(or a sensor_msgs/CompressedImage with JPEG or PNG data)"
        )
    return ENCODINGS[name]


def decode_raw(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Buffer,
    is_bigendian: bool = False,
) -> np.ndarray:
    """RGB ``uint8`` array of shape ``(height, width, 3)`` from raw ``sensor_msgs/Image`` fields.

    Rows may be padded (``step`` larger than ``width`` x bytes per pixel). ``mono16`` is
    scaled to 8 bits by keeping the high byte, in the byte order ``is_bigendian`` names.
    For ``rgb8`` and ``rgba8`` the result is a view of ``data`` (no copy; read-only when
    ``data`` is): copy it before writing into it. Other encodings return a new array.
    """
    spec = _encoding(encoding)
    if height <= 0 or width <= 0:
        raise VgsslError(f"empty {encoding} image: height={height}, width={width} (both must be > 0)")
    row_bytes = width * spec.bytes_per_pixel
    if step < row_bytes:
        raise VgsslError(
            f"{encoding} image step {step} is smaller than a row of {width} pixels "
            f"({row_bytes} bytes): the sender filled the step field wrongly"
        )
    raw = np.frombuffer(data, dtype=np.uint8)  # any buffer (bytes, array.array, ndarray): no copy
    if raw.size != step * height:
        raise VgsslError(
            f"{encoding} image data holds {raw.size} bytes, expected step x height = "
            f"{step} x {height} = {step * height}"
        )

    if spec.bytes_per_channel == 2:
        dtype = np.dtype(">u2" if is_bigendian else "<u2")
        wide = np.ndarray((height, width), dtype=dtype, buffer=raw, strides=(step, 2))
        pixels = (wide >> 8).astype(np.uint8)
    else:
        shape = (height, width, spec.channels) if spec.channels > 1 else (height, width)
        strides = (step, spec.channels, 1) if spec.channels > 1 else (step, 1)
        pixels = np.ndarray(shape, dtype=np.uint8, buffer=raw, strides=strides)

    if spec.to_rgb is None:
        return pixels
    if encoding == "rgba8":
        return pixels[:, :, :3]  # dropping alpha is a view, no need to copy
    return cv2.cvtColor(pixels, spec.to_rgb)


def decode_compressed(data: Buffer, format: str = "") -> np.ndarray:  # noqa: A002 (the ROS field name)
    """RGB ``uint8`` array from ``sensor_msgs/CompressedImage`` data (JPEG or PNG).

    The container is recognised from the bytes themselves; ``format`` (the message's
    free-form field, e.g. ``"jpeg"`` or ``"bgr8; png compressed bgr8"``) only serves to
    reject depth images. Grayscale images become three equal channels; 16-bit PNGs keep
    their high byte; an alpha channel is dropped.
    """
    if "compresseddepth" in format.replace(" ", "").lower():
        raise VgsslError(
            f"compressed image format {format!r} is a depth map, not a camera image: "
            "subscribe to the camera's colour or mono image topic"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        raise VgsslError("compressed image has no data")
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        shown = f" (format {format!r})" if format else ""
        raise VgsslError(
            f"cannot decode compressed image of {raw.size} bytes{shown}: expected JPEG or PNG data"
        )
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise VgsslError(f"compressed image has {image.dtype} pixels: expected 8- or 16-bit JPEG or PNG")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected a non-empty H x W x 3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    return rgb


def encode_raw(rgb: np.ndarray, encoding: str) -> tuple[int, bytes]:
    """``(step, data)`` of an unpadded, little-endian ``sensor_msgs/Image`` of ``rgb``.

    The inverse of :func:`decode_raw` for tests and tools (e.g. writing bags): colour
    encodings round-trip exactly; ``mono8`` stores the luma; ``mono16`` stores luma x 257,
    so that its high byte is the luma again; alpha is 255.
    """
    spec = _encoding(encoding)
    rgb = _check_rgb(rgb)
    pixels = rgb if spec.from_rgb is None else cv2.cvtColor(rgb, spec.from_rgb)
    if spec.bytes_per_channel == 2:
        pixels = pixels.astype("<u2") * np.uint16(257)
    data = np.ascontiguousarray(pixels).tobytes()
    return rgb.shape[1] * spec.bytes_per_pixel, data


def encode_compressed(rgb: np.ndarray, format: str = "jpeg", quality: int = 95) -> bytes:  # noqa: A002
    """JPEG or PNG bytes of ``rgb``, for a ``sensor_msgs/CompressedImage`` (tests and tools)."""
    if format not in COMPRESSED_FORMATS:
        raise VgsslError(f"unsupported compressed format {format!r}: use one of {', '.join(COMPRESSED_FORMATS)}")
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 0..100, got {quality}")
    bgr = cv2.cvtColor(_check_rgb(rgb), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if format == "jpeg" else []
    ok, buffer = cv2.imencode(".jpg" if format == "jpeg" else ".png", bgr, params)
    if not ok:
        raise VgsslError(f"OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} image as {format}")
    return buffer.tobytes()
