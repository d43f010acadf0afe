"""The newest camera frame waiting for the model, and what the node reports about its work.

A camera publishes faster than a CPU model localizes. Queueing frames would make every fix
older than the last and grow memory without bound; the localizer instead keeps a single
slot: the subscription callback puts each frame there (replacing, and counting as dropped,
one the worker has not taken yet), and one worker thread takes the newest frame whenever it
is free. No ROS import here, so this is tested without processes::

    slot = FrameSlot()
    slot.put(msg)            # subscription callback: never blocks for long, never queues
    frame = slot.take()      # worker: waits for a frame; None once the slot is closed

:class:`ProcessingStats` keeps the counters and a rolling window of latencies that the
node publishes on ``/diagnostics``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Frame(Generic[T]):
    """A frame as received: the message and the monotonic time of its arrival [s]."""

    msg: T
    received: float


class FrameSlot(Generic[T]):
    """Holds at most one frame: the newest. Thread-safe; one producer, one consumer.

    ``received`` counts every :meth:`put`; ``dropped`` those that replaced a frame the
    consumer had not taken (so ``received - dropped`` frames were, or are being, processed).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame[T] | None = None
        self._closed = False
        self.received = 0
        self.dropped = 0
        self.last_arrival: float | None = None  # monotonic time of the newest put

    def put(self, msg: T, received: float | None = None) -> bool:
        """Store ``msg`` as the newest frame; True if it replaced an unprocessed one."""
        frame = Frame(msg, time.monotonic() if received is None else received)
        with self._cond:
            replaced = self._frame is not None
            self._frame = frame
            self.received += 1
            self.dropped += replaced
            self.last_arrival = frame.received
            self._cond.notify()
        return replaced

    def take(self, timeout: float | None = None) -> Frame[T] | None:
        """The newest frame, emptying the slot; waits up to ``timeout`` s (None: forever).

        None when the slot was closed, or when nothing arrived within ``timeout``.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout)
            if self._closed:
                return None
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        """Wake the consumer for good: :meth:`take` returns None from now on."""
        with self._cond:
            self._closed = True
            self._frame = None
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass(frozen=True)
class StatsSnapshot:
    """What the node has done so far; latencies and rate over the last ``window_s``."""

    received: int  # frames that reached the subscription callback
    processed: int  # frames that became a fix
    dropped: int  # frames replaced by a newer one before the worker took them
    bad: int  # malformed frames (undecodable, wrong size, unknown encoding, ...)
    failed: int  # frames whose localization raised an unexpected error
    rate_hz: float  # fixes per second over the window
    latency_p50: float  # seconds from arrival to publication; NaN with no fix in the window
    latency_p95: float
    since_last_frame: float | None  # seconds since the newest frame arrived; None: none yet
    last_problem: str | None  # the newest malformed-frame or failure message; None: none yet
    last_frame_ok: bool  # False when the newest handled frame was bad or failed


class ProcessingStats:
    """Counters and a rolling latency window; written by the worker, read by a timer."""

    def __init__(self, window_s: float = 10.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self._lock = threading.Lock()
        self._done: deque[tuple[float, float]] = deque()  # (monotonic time published, latency)
        self._started = time.monotonic()
        self.processed = self.bad = self.failed = 0
        self._last_problem: str | None = None
        self._last_ok = True

    def record_fix(self, latency: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.processed += 1
            self._last_ok = True
            self._done.append((now, float(latency)))
            self._trim(now)

    def record_bad(self, problem: str) -> None:
        with self._lock:
            self.bad += 1
            self._last_problem, self._last_ok = problem, False

    def record_failure(self, problem: str) -> None:
        with self._lock:
            self.failed += 1
            self._last_problem, self._last_ok = problem, False

    def _trim(self, now: float) -> None:
        while self._done and self._done[0][0] < now - self.window_s:
            self._done.popleft()

    def snapshot(self, slot: FrameSlot, now: float | None = None) -> StatsSnapshot:
        """The counters of this object and of ``slot`` (received, dropped, newest arrival)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            latencies = np.array([lat for _, lat in self._done], dtype=np.float64)
            span = min(self.window_s, max(now - self._started, 1e-9))
            rate = len(latencies) / span
            processed, bad, failed = self.processed, self.bad, self.failed
            problem, ok = self._last_problem, self._last_ok
        p50, p95 = (np.percentile(latencies, [50, 95]) if latencies.size else (float("nan"),) * 2)
        return StatsSnapshot(
            received=slot.received, processed=processed, dropped=slot.dropped, bad=bad, failed=failed,
            rate_hz=float(rate), latency_p50=float(p50), latency_p95=float(p95),
            since_last_frame=None if slot.last_arrival is None else max(0.0, now - slot.last_arrival),
            last_problem=problem, last_frame_ok=ok,
        )
