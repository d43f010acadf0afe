"""rosbag2 bags (mcap and sqlite3) without ROS: read and write camera and GNSS topics.

Built on ``rosbags`` (pure Python; writes bag version 9, which ROS 2 Kilted's rosbag2 reads, with
the same CDR type hashes as rosidl). Everything a robot records for vgssl goes through here: the
bag replay, ``vgssl build-db --bag``, ``vgssl synth --bag`` and the ROS ``bag_replay`` node.

Reading, three levels::

    with BagReader("drive_bag") as bag:                      # a folder, or a bare .mcap / .db3 file
        bag.topics()                                         # {"/camera/image_raw": "sensor_msgs/msg/Image", ...}
        for topic, msgtype, bag_stamp_ns, raw in bag.messages(["/camera/image_raw"]):
            ...                                              # serialized CDR: publish it as is
        for frame in bag.image_frames("/camera/image_raw"):  # Image or CompressedImage -> RGB uint8
            frame.rgb if frame.error is None else frame.error
        for fix in bag.gnss_fixes("/gnss/fix"): ...          # NavSatFix as plain data

Every stamp is integer nanoseconds. ``stamp_ns`` is the message's header stamp (when the sensor
saw it); ``bag_stamp_ns`` is when the recorder received it. A header stamp of zero (a driver that
never set it) falls back to the bag stamp.

Failures are one-line :class:`~vgssl_core.errors.VgsslError` s: a missing path, an unknown storage
format, a truncated or corrupt file, a missing topic (the message lists the topics the bag has),
a topic of the wrong type. A bag that turns unreadable part way raises :class:`BagReadError` (a
``VgsslError``) naming how far it got. One malformed message never stops a read: the typed readers
hand it over with ``error`` set, so callers count it and go on.

Writing is ``rosbag.writer.BagWriter``, on the same types and conventions.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from vgssl_core.errors import VgsslError
from vgssl_core.localization.image_codec import decode_compressed, decode_raw

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
NAVSATFIX = "sensor_msgs/msg/NavSatFix"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)

STORAGES = ("mcap", "sqlite3")
STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}

# sensor_msgs/NavSatStatus and NavSatFix constants
STATUS_NO_FIX, STATUS_FIX, STATUS_SBAS_FIX, STATUS_GBAS_FIX = -1, 0, 1, 2
SERVICE_GPS = 1
COVARIANCE_TYPE_UNKNOWN, COVARIANCE_TYPE_APPROXIMATED = 0, 1
COVARIANCE_TYPE_DIAGONAL_KNOWN, COVARIANCE_TYPE_KNOWN = 2, 3

GENERATOR_KEY = "vgssl.generator"  # bag custom data naming the tool that wrote it

_TYPESTORE = None


def typestore():
    """The ROS 2 Kilted message definitions of ``rosbags`` (loaded once, on first use)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


# --- plain records -------------------------------------------------------------------------
class BagMessage(NamedTuple):
    """One recorded message, still serialized (CDR with its 4-byte encapsulation header)."""

    topic: str
    msgtype: str  # e.g. "sensor_msgs/msg/Image"
    bag_stamp_ns: int  # receive time the recorder wrote
    rawdata: bytes  # what rclpy's ``Publisher.publish`` accepts for a serialized message


@dataclass(frozen=True)
class ImageFrame:
    """One camera message of a bag, decoded to RGB (or why it could not be)."""

    index: int  # position on its topic, 0-based, in recording order
    stamp_ns: int  # header stamp (bag stamp when the header's is zero)
    bag_stamp_ns: int
    rgb: np.ndarray | None  # H x W x 3 uint8; None when ``error`` is set or not decoded
    error: str | None = None  # one line: corrupt message, bad encoding, undecodable JPEG, ...
    error_kind: str | None = None  # "corrupt_message" or "undecodable"
    decode_s: float = 0.0  # deserializing and decoding this message took this long


@dataclass(frozen=True)
class GnssFix:
    """A ``sensor_msgs/NavSatFix`` as plain data (``error`` set: the message was unreadable)."""

    stamp_ns: int
    bag_stamp_ns: int
    status: int  # STATUS_NO_FIX (-1), STATUS_FIX (0), SBAS (1), GBAS (2)
    latitude: float
    longitude: float
    altitude: float
    covariance: tuple[float, ...] = (0.0,) * 9  # row-major 3 x 3, ENU [m^2]
    covariance_type: int = COVARIANCE_TYPE_UNKNOWN
    error: str | None = None

    @property
    def valid(self) -> bool:
        """A usable fix: readable, status at least FIX, finite latitude/longitude in range."""
        return (self.error is None and self.status >= STATUS_FIX and np.isfinite(self.latitude)
                and np.isfinite(self.longitude) and -90.0 <= self.latitude <= 90.0
                and -180.0 <= self.longitude <= 180.0)


def _stamp_ns(header: Any, bag_stamp_ns: int) -> int:
    stamp = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return stamp if stamp > 0 else int(bag_stamp_ns)


def decode_image_message(msg: Any, msgtype: str) -> np.ndarray:
    """RGB uint8 of a deserialized Image or CompressedImage (``image_codec``, the one decoder)."""
    if msgtype == IMAGE:
        return decode_raw(msg.encoding, int(msg.height), int(msg.width), int(msg.step), msg.data,
                          bool(msg.is_bigendian))
    return decode_compressed(msg.data, msg.format)


# --- reading -------------------------------------------------------------------------------
class BagReadError(VgsslError):
    """A bag that opened but turned unreadable part way (truncated or corrupt data)."""


def _open_error(path: Path, exc: BaseException) -> VgsslError:
    reason = _first_line(exc)
    low = reason.lower()
    if "storage plugin" in low and "not supported" in low:
        return VgsslError(f"{path}: unknown storage format ({reason}); vgssl reads rosbag2 bags in "
                          f"{' or '.join(STORAGES)}")
    if any(word in low for word in ("magic", "malformed", "truncated", "not a database", "corrupt",
                                    "unexpected end", "missing")):
        return VgsslError(f"{path}: truncated or corrupt bag ({reason}); an interrupted recording "
                          "needs 'ros2 bag reindex' (sqlite3) or 'mcap recover' (mcap), or record it again")
    return VgsslError(f"{path}: cannot read this bag ({type(exc).__name__}: {reason})")


def _resolve_bag_path(path: Path) -> Path:
    """A rosbag2 folder, or its single storage file when a folder lost its metadata.yaml."""
    if not path.exists():
        raise VgsslError(f"{path}: no bag here (expected a rosbag2 folder, or a .mcap or .db3 file)")
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return path
        files = [p for p in path.iterdir() if p.suffix in STORAGE_SUFFIX.values()]
        if len(files) == 1:
            return files[0]
        raise VgsslError(f"{path}: not a rosbag2 folder (no metadata.yaml"
                         + (f", and {len(files)} storage files" if files else ", no .mcap or .db3 file") + ")")
    if path.suffix == ".bag":
        raise VgsslError(f"{path}: a ROS 1 bag; convert it to rosbag2 first "
                         f"('rosbags-convert --src {path} --dst {path.with_suffix('')}')")
    if path.suffix not in STORAGE_SUFFIX.values():
        raise VgsslError(f"{path}: unknown storage format '{path.suffix or path.name}'; vgssl reads rosbag2 "
                         "folders and .mcap (mcap) or .db3 (sqlite3) files")
    return path


class BagReader:
    """An open rosbag2 bag: topics, raw messages, and typed camera and GNSS readers.

    ``BagReader(path)`` opens at once (one-line ``VgsslError`` when it cannot) and should be
    closed (``with BagReader(path) as bag:`` or ``close()``). Each reading method may be called
    any number of times; each call reads the bag again from the start, in recording order.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        target = _resolve_bag_path(self.path)
        try:
            self._reader = Reader(target)
            self._reader.open()
        except VgsslError:
            raise
        except Exception as exc:  # rosbags, apsw, yaml, struct ... raise many types on bad files
            raise _open_error(self.path, exc) from None
        try:
            self._topics = {name: info.msgtype for name, info in self._reader.topics.items()}
            self._counts = {name: int(info.msgcount) for name, info in self._reader.topics.items()}
            self.start_ns = int(self._reader.start_time) if self._reader.message_count else 0
            self.end_ns = int(self._reader.end_time) if self._reader.message_count else 0
        except Exception as exc:
            self.close()
            raise _open_error(self.path, exc) from None
        self._missing: dict[str, int] = {}
        inner = self._reader.storage  # a DirectoryReader over storage files, or one storage file's reader
        kind = type((getattr(inner, "storages", None) or [inner])[0]).__name__.lower()
        self.storage = "mcap" if "mcap" in kind else "sqlite3" if "sqlite" in kind else kind

    # -- lifetime
    def close(self) -> None:
        reader, self._reader = getattr(self, "_reader", None), None
        if reader is not None and reader.is_open:
            reader.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- what is inside
    def topics(self) -> dict[str, str]:
        """Topic name -> message type (``"sensor_msgs/msg/Image"``), in the bag's order."""
        return dict(self._topics)

    def message_count(self, topic: str | None = None) -> int:
        """Messages on ``topic`` (all topics when None), from the bag's index."""
        if topic is None:
            return sum(self._counts.values())
        return self._counts.get(topic, 0)

    def missing(self, topic: str) -> int:
        """Messages of ``topic`` that the bag's index announces but the last complete read of the
        topic did not return (a corrupt or truncated storage file the reader skipped silently)."""
        return self._missing.get(topic, 0)

    @property
    def duration_s(self) -> float:
        return max(self.end_ns - self.start_ns, 0) / 1e9

    @property
    def custom_data(self) -> dict[str, str]:
        """The ``custom_data`` of metadata.yaml (empty for a bare storage file)."""
        meta = getattr(self._reader.storage, "metadata", None)
        return dict(getattr(meta, "custom", None) or {})

    def describe_topics(self) -> str:
        if not self._topics:
            return "the bag has no topics"
        return ", ".join(f"{t} [{m}]" for t, m in self._topics.items())

    def require(self, topic: str, msgtypes: Sequence[str], role: str = "topic") -> str:
        """The message type of ``topic``; a one-line error listing the topics when it is absent or of another type."""
        if topic not in self._topics:
            fitting = [t for t, m in self._topics.items() if m in msgtypes]
            hint = f"; {role} candidates: {', '.join(fitting)}" if fitting else ""
            raise VgsslError(f"{self.path}: no {role} '{topic}' in this bag (it has: {self.describe_topics()}){hint}")
        msgtype = self._topics[topic]
        if msgtype not in msgtypes:
            raise VgsslError(f"{self.path}: {role} '{topic}' is {msgtype}, expected {' or '.join(msgtypes)}")
        return msgtype

    def pick_topic(self, topic: str | None, msgtypes: Sequence[str], role: str, option: str | None = None) -> str:
        """``topic`` checked with :meth:`require`; when None, the bag's only topic of ``msgtypes``.

        ``option`` names the setting that picks it (e.g. ``--gnss-topic``) in the error when several fit.
        """
        if topic:
            self.require(topic, msgtypes, role)
            return topic
        fitting = [t for t, m in self._topics.items() if m in msgtypes]
        if len(fitting) == 1:
            return fitting[0]
        if not fitting:
            raise VgsslError(f"{self.path}: no {role} ({' or '.join(msgtypes)}) in this bag "
                             f"(it has: {self.describe_topics()})")
        raise VgsslError(f"{self.path}: several {role}s ({', '.join(fitting)}); name one"
                         + (f" with {option}" if option else ""))

    # -- raw messages
    def messages(self, topics: Iterable[str] | None = None, *, start_ns: int | None = None,
                 stop_ns: int | None = None) -> Iterator[BagMessage]:
        """``BagMessage(topic, msgtype, bag_stamp_ns, rawdata)`` in bag-stamp order, still serialized.

        ``topics`` None reads every topic; a named topic the bag lacks is a ``VgsslError``.
        ``start_ns``/``stop_ns`` bound the bag stamps (``stop_ns`` excluded). The raw CDR bytes
        can be republished by rclpy without deserializing (``Publisher.publish(rawdata)``).
        """
        if self._reader is None:
            raise VgsslError(f"{self.path}: bag is closed")
        if topics is not None:
            topics = list(topics)
            for t in topics:
                if t not in self._topics:
                    raise VgsslError(f"{self.path}: no topic '{t}' in this bag (it has: {self.describe_topics()})")
        connections = [c for c in self._reader.connections if topics is None or c.topic in topics]
        if not connections:
            return
        count = 0
        per_topic: Counter = Counter()
        try:
            for conn, stamp, raw in self._reader.messages(connections, start=start_ns, stop=stop_ns):
                count += 1
                per_topic[conn.topic] += 1
                yield BagMessage(conn.topic, conn.msgtype, int(stamp), raw)
        except VgsslError:
            raise
        except Exception as exc:
            raise BagReadError(f"{self.path}: bag unreadable after {count} messages, truncated or corrupt "
                               f"({type(exc).__name__}: {_first_line(exc)})") from None
        if start_ns is None and stop_ns is None:  # a whole read: compare with what the index announced
            for topic in {c.topic for c in connections}:
                self._missing[topic] = max(self._counts.get(topic, 0) - per_topic[topic], 0)

    def deserialize(self, message: BagMessage) -> Any:
        """The ``rosbags`` message object of a raw message (its fields as in ROS)."""
        return typestore().deserialize_cdr(message.rawdata, message.msgtype)

    # -- typed readers
    def image_frames(self, topic: str, *, decode: bool = True, every: int = 1,
                     select: Callable[[int, int], bool] | None = None) -> Iterator[ImageFrame]:
        """Camera frames of ``topic`` (Image or CompressedImage) as RGB uint8, in recording order.

        A message that does not deserialize or decode comes with ``rgb=None`` and ``error`` set
        (never raised): count it and go on. ``decode=False`` reads stamps only (rgb None).
        ``every`` keeps frames whose index is a multiple of it; ``select(index, stamp_ns)``,
        called in order before decoding, skips (neither decodes nor yields) frames it rejects.
        """
        msgtype = self.require(topic, IMAGE_TYPES, "image topic")
        if every < 1:
            raise VgsslError(f"every must be >= 1, got {every}")
        store = typestore()
        for index, message in enumerate(self.messages([topic])):
            if index % every:
                continue
            t0 = time.perf_counter()
            try:
                msg = store.deserialize_cdr(message.rawdata, msgtype)
                stamp = _stamp_ns(msg.header, message.bag_stamp_ns)
            except Exception as exc:
                why = f"corrupt {msgtype.rsplit('/', 1)[-1]} message ({_first_line(exc)})"
                yield ImageFrame(index, message.bag_stamp_ns, message.bag_stamp_ns, None, why, "corrupt_message")
                continue
            if select is not None and not select(index, stamp):
                continue
            if not decode:
                yield ImageFrame(index, stamp, message.bag_stamp_ns, None)
                continue
            try:
                rgb = decode_image_message(msg, msgtype)
            except VgsslError as exc:
                yield ImageFrame(index, stamp, message.bag_stamp_ns, None, _first_line(exc), "undecodable",
                                 time.perf_counter() - t0)
                continue
            yield ImageFrame(index, stamp, message.bag_stamp_ns, rgb, decode_s=time.perf_counter() - t0)

    def gnss_fixes(self, topic: str) -> Iterator[GnssFix]:
        """The ``NavSatFix`` messages of ``topic`` as :class:`GnssFix`, in recording order.

        Nothing is filtered here (NO_FIX, NaN and unreadable messages come through, the latter
        with ``error`` set): ``gnss.GnssTrack`` decides what is usable and counts the rest.
        """
        msgtype = self.require(topic, (NAVSATFIX,), "GNSS topic")
        store = typestore()
        for message in self.messages([topic]):
            try:
                msg = store.deserialize_cdr(message.rawdata, msgtype)
                yield GnssFix(_stamp_ns(msg.header, message.bag_stamp_ns), message.bag_stamp_ns,
                              int(msg.status.status), float(msg.latitude), float(msg.longitude), float(msg.altitude),
                              tuple(float(v) for v in msg.position_covariance), int(msg.position_covariance_type))
            except Exception as exc:
                yield GnssFix(message.bag_stamp_ns, message.bag_stamp_ns, STATUS_NO_FIX, float("nan"),
                              float("nan"), float("nan"), error=f"corrupt NavSatFix message ({_first_line(exc)})")


def play(messages: Iterable[BagMessage], *, rate: float = 1.0, stop=None,
         clock=time.monotonic, sleep=time.sleep) -> Iterator[BagMessage]:
    """Yield ``messages`` at their recorded pace (bag stamps), ``rate`` times faster.

    For republishing a bag to live nodes: ``for m in play(bag.messages(topics)): pub[m.topic].publish(m.rawdata)``.
    ``stop`` is a callable (or ``threading.Event``) checked while waiting: when true, playback ends.
    A consumer slower than the recording is not caught up by bursts: time restarts from it.
    """
    if rate <= 0:
        raise VgsslError(f"playback rate must be > 0, got {rate}")
    is_stopped = (stop.is_set if hasattr(stop, "is_set") else stop) or (lambda: False)
    first_bag = start_wall = None
    for message in messages:
        if is_stopped():
            return
        if first_bag is None:
            first_bag, start_wall = message.bag_stamp_ns, clock()
        due = start_wall + (message.bag_stamp_ns - first_bag) / 1e9 / rate
        while True:
            left = due - clock()
            if left <= 0:
                break
            if is_stopped():
                return
            sleep(min(left, 0.05))
        if clock() - due > 0.5:  # far behind: restart the schedule from this message
            first_bag, start_wall = message.bag_stamp_ns, clock()
        yield message
