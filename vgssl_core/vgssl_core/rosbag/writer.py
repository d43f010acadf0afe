"""Writing rosbag2 bags (version 9, mcap or sqlite3) without ROS: camera frames and GNSS fixes.

Atomic: the bag is written in a hidden sibling folder and only appears under its name once closed
without an error::

    with BagWriter("drive_bag", storage="mcap") as bag:
        bag.write_image("/camera/image_raw", rgb, stamp_ns)
        bag.write_navsat("/gnss/fix", stamp_ns, lat, lon, alt, sigma_m=2.0)

Reading, the message types and the stamp conventions are in ``rosbag.bags``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vgssl_core.errors import VgsslError
from vgssl_core.localization.image_codec import encode_compressed, encode_raw
from vgssl_core.rosbag.bags import (COMPRESSED_IMAGE, COVARIANCE_TYPE_DIAGONAL_KNOWN, COVARIANCE_TYPE_KNOWN, COVARIANCE_TYPE_UNKNOWN, IMAGE, NAVSATFIX, SERVICE_GPS, STATUS_FIX, STORAGES, typestore)


def _time(stamp_ns: int) -> Any:
    store = typestore()
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise VgsslError(f"stamps must be >= 0 ns, got {stamp_ns}")
    return store.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def _header(stamp_ns: int, frame_id: str) -> Any:
    return typestore().types["std_msgs/msg/Header"](stamp=_time(stamp_ns), frame_id=frame_id)


def is_bag_folder(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.yaml").is_file()


class BagWriter:
    """Write a rosbag2 bag (version 9) in ``mcap`` or ``sqlite3``; use it as a context manager.

    The bag is written inside a hidden sibling folder and renamed to ``path`` when closed without
    an error, so a crash never leaves a half-written bag under the name. An existing ``path`` is
    refused unless ``replace`` is true and it is a rosbag2 folder, which is then replaced.
    ``bag_stamp_ns`` (receive time) defaults to the header stamp of each message.
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap", *, replace: bool = False) -> None:
        if storage not in STORAGES:
            raise VgsslError(f"unknown storage format '{storage}'; use one of {', '.join(STORAGES)}")
        self.path = Path(path).absolute()
        self.storage = storage
        if self.path.exists() and not (replace and is_bag_folder(self.path)):
            what = "a bag" if is_bag_folder(self.path) else "not a bag"
            raise VgsslError(f"{self.path}: exists ({what}); refusing to overwrite it, choose another path")
        self._writer = None
        self._tmp: Path | None = None
        self._connections: dict[str, Any] = {}
        self._custom: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-{os.getpid()}-", dir=self.path.parent))
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._tmp / self.path.name, version=9, storage_plugin=plugin)
        self._writer.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def set_custom_data(self, key: str, value: str) -> None:
        """A string in metadata.yaml's ``custom_data`` (e.g. how the bag was made)."""
        self._custom[str(key)] = str(value)

    def close(self) -> Path:
        """Finish the bag and move it into place; returns its path."""
        if self._writer is None:
            raise VgsslError("BagWriter is not open; use it as 'with BagWriter(...) as bag:'")
        try:
            for key, value in self._custom.items():
                self._writer.set_custom_data(key, value)
            self._writer.close()
            self._writer = None
            retired = None
            if self.path.exists():
                retired = self.path.parent / f".{self.path.name}.retired-{os.getpid()}-{time.time_ns()}"
                os.replace(self.path, retired)
            os.replace(self._tmp / self.path.name, self.path)
            if retired is not None:
                shutil.rmtree(retired, ignore_errors=True)
        except BaseException:
            self.abort()
            raise
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Drop the partial bag (an error or Ctrl-C while writing)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- messages
    def _connection(self, topic: str, msgtype: str) -> Any:
        conn = self._connections.get(topic)
        if conn is None:
            if self._writer is None:
                raise VgsslError("BagWriter is not open; use it as 'with BagWriter(...) as bag:'")
            conn = self._writer.add_connection(topic, msgtype, typestore=typestore())
            self._connections[topic] = conn
            self.counts[topic] = 0
        elif conn.msgtype != msgtype:
            raise VgsslError(f"topic '{topic}' already holds {conn.msgtype}, cannot write {msgtype} to it")
        return conn

    def write_raw(self, topic: str, msgtype: str, bag_stamp_ns: int, data: bytes) -> None:
        """An already serialized (CDR) message."""
        self._writer.write(self._connection(topic, msgtype), int(bag_stamp_ns), data)
        self.counts[topic] += 1

    def write_message(self, topic: str, msg: Any, bag_stamp_ns: int) -> None:
        """A ``rosbags`` message object (``typestore().types[msgtype](...)``)."""
        msgtype = msg.__msgtype__
        self.write_raw(topic, msgtype, bag_stamp_ns, typestore().serialize_cdr(msg, msgtype))

    def write_image_fields(self, topic: str, stamp_ns: int, *, encoding: str, height: int, width: int, step: int,
                           data: bytes, is_bigendian: bool = False, frame_id: str = "camera",
                           bag_stamp_ns: int | None = None) -> None:
        """A ``sensor_msgs/Image`` from its fields as given (no check: tools and tests of bad input)."""
        msg = typestore().types[IMAGE](
            header=_header(stamp_ns, frame_id), height=int(height), width=int(width), encoding=str(encoding),
            is_bigendian=int(bool(is_bigendian)), step=int(step), data=np.frombuffer(bytes(data), dtype=np.uint8))
        self.write_message(topic, msg, stamp_ns if bag_stamp_ns is None else bag_stamp_ns)

    def write_image(self, topic: str, rgb: np.ndarray, stamp_ns: int, *, encoding: str = "rgb8",
                    frame_id: str = "camera", bag_stamp_ns: int | None = None) -> None:
        """A ``sensor_msgs/Image`` of an RGB uint8 array in ``encoding`` (``image_codec.encode_raw``)."""
        step, data = encode_raw(rgb, encoding)
        self.write_image_fields(topic, stamp_ns, encoding=encoding, height=rgb.shape[0], width=rgb.shape[1],
                                step=step, data=data, frame_id=frame_id, bag_stamp_ns=bag_stamp_ns)

    def write_compressed(self, topic: str, rgb: np.ndarray | None, stamp_ns: int, *, format: str = "jpeg",  # noqa: A002
                         quality: int = 90, data: bytes | None = None, frame_id: str = "camera",
                         bag_stamp_ns: int | None = None) -> None:
        """A ``sensor_msgs/CompressedImage``: ``rgb`` encoded as JPEG/PNG, or ``data`` as given."""
        if data is None:
            data = encode_compressed(rgb, format, quality)
        # image_transport's convention: "<original encoding>; <codec> compressed <stored encoding>"
        fmt = f"rgb8; {format} compressed bgr8" if format in ("jpeg", "png") else format
        msg = typestore().types[COMPRESSED_IMAGE](header=_header(stamp_ns, frame_id), format=fmt,
                                                  data=np.frombuffer(bytes(data), dtype=np.uint8))
        self.write_message(topic, msg, stamp_ns if bag_stamp_ns is None else bag_stamp_ns)

    def write_navsat(self, topic: str, stamp_ns: int, latitude: float, longitude: float, altitude: float = 0.0, *,
                     status: int = STATUS_FIX, service: int = SERVICE_GPS, sigma_m: float | None = None,
                     covariance: Sequence[float] | None = None, covariance_type: int | None = None,
                     frame_id: str = "gnss", bag_stamp_ns: int | None = None) -> None:
        """A ``sensor_msgs/NavSatFix``; ``sigma_m`` gives a diagonal covariance (vertical 2 x sigma)."""
        store = typestore()
        if covariance is None:
            if sigma_m is None:
                cov, kind = np.zeros(9), COVARIANCE_TYPE_UNKNOWN
            else:
                s2 = float(sigma_m) ** 2
                cov, kind = np.diag([s2, s2, 4.0 * s2]).ravel(), COVARIANCE_TYPE_DIAGONAL_KNOWN
        else:
            cov, kind = np.asarray(covariance, dtype=np.float64).reshape(9), COVARIANCE_TYPE_KNOWN
        msg = store.types[NAVSATFIX](
            header=_header(stamp_ns, frame_id),
            status=store.types["sensor_msgs/msg/NavSatStatus"](status=int(status), service=int(service)),
            latitude=float(latitude), longitude=float(longitude), altitude=float(altitude),
            position_covariance=np.asarray(cov, dtype=np.float64),
            position_covariance_type=int(kind if covariance_type is None else covariance_type))
        self.write_message(topic, msg, stamp_ns if bag_stamp_ns is None else bag_stamp_ns)
