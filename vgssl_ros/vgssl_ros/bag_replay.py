"""The ``bag_replay`` node: a recorded rosbag2 drive, measured offline or played to the live localizer.

    ros2 run vgssl_ros bag_replay --ros-args --params-file config/bag_replay.yaml \\
        -p bag:=drives/test_run -p database:=maps/city -p checkpoint:=run/last.ckpt \\
        -p gnss_topic:=/gnss/fix -p out:=replay_out                      # offline (default)
    ros2 run vgssl_ros bag_replay --ros-args --params-file config/bag_replay.yaml \\
        -p mode:=live -p bag:=drives/test_run -p rate:=2.0 -p publish_clock:=true
    python -m vgssl_ros.bag_replay --ros-args ...                        # the same, from the venv

Two modes, chosen by the ``mode`` parameter:

* ``offline``: ``vgssl replay`` as a node. The core's ``replay.run_replay`` localizes every
  ``every``-th frame of the bag as fast as the machine allows and compares it with the bag's GNSS;
  ``replay.write_report`` writes ``report.json``, ``report.md``, ``route.png`` and ``frames.npz``
  into ``out``. Nothing is computed here: the node only reads parameters, logs progress and
  stops the core's loop on SIGINT, after which the report covers the frames processed so far.
* ``live``: republishes the bag's camera topic (``sensor_msgs/Image`` or ``CompressedImage``,
  as recorded) with sensor-data QoS on ``image_topic_out``, paced by the core's ``bags.play`` at
  the recorded rate times ``rate``, so the live ``localizer`` can be measured end to end
  (``launch/replay.launch.py`` starts both). Messages go out as the recorded CDR bytes (rclpy's
  ``Publisher.publish`` takes serialized messages), so stamps and pixels are exactly the
  recording's. With ``publish_clock``, ``/clock`` (``rosgraph_msgs/Clock``) carries each frame's
  recorded receive time just before the frame, for nodes with ``use_sim_time``.

Bad input (a missing bag, checkpoint or database, a topic the bag lacks: the message lists the
topics it has, a bad parameter) stops the node at start with one FATAL line and exit status 2.
A bag that turns unreadable part way is an error line and status 2 (offline: after writing the
report of what was read). Ctrl-C (SIGINT or SIGTERM) and the end of the bag exit with status 0.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import rclpy
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from vgssl_core.rosbag.bags import COMPRESSED_IMAGE, IMAGE, IMAGE_TYPES, NAVSATFIX, BagReader, BagReadError, play
from vgssl_core.errors import EXIT_BAD_INPUT, VgsslError
from vgssl_core.rosbag.gnss import GNSS_TOLERANCE_S
from vgssl_ros.parameters import declare_read_only

NODE_NAME = "bag_replay"
MODES = ("offline", "live")

# name -> (default when neither a params file nor -p sets it, description shown by `ros2 param
# describe`). config/bag_replay.yaml sets every one. Read once at start (read-only parameters).
PARAMETERS: dict[str, tuple[Any, str]] = {
    "mode": ("offline", "offline: localize every frame and write a Recall@N report; "
                        "live: republish the camera (and /clock) at the recorded rate x 'rate'"),
    "bag": ("", "rosbag2 bag: a folder, or a bare .mcap / .db3 file; required"),
    "image_topic": ("", "the bag's camera topic (Image or CompressedImage); empty: its only one"),
    # offline
    "gnss_topic": ("", "offline: the bag's NavSatFix ground truth; empty: its only NavSatFix topic"),
    "gnss_tolerance_s": (GNSS_TOLERANCE_S, "offline: a frame this close before the first / after the last GNSS fix takes "
                              "that fix; further out it is skipped (gnss_outside)"),
    "database": ("", "offline: map database folder built by 'vgssl build-db' with the checkpoint; required"),
    "checkpoint": ("", "offline: vgssl checkpoint (.ckpt) of the descriptor model; required"),
    "out": ("", "offline: folder for report.json, report.md, route.png, frames.npz; required"),
    "fusion": ("bayes", "offline: temporal fusion (none | bayes); the report shows Recall@1 with and without"),
    "every": (1, "offline: localize every k-th frame (1: all)"),
    "top_k": (5, "offline: matches per frame for the fix, as the live localizer's top_k"),
    "device": ("auto", "offline: auto (CUDA when PyTorch sees a GPU, else CPU), cpu, cuda or cuda:N"),
    "cpu_threads": (0, "offline: PyTorch CPU threads; 0 keeps PyTorch's default (one per core)"),
    # live
    "rate": (1.0, "live: playback speed, a factor of the recorded rate (2.0: twice as fast)"),
    "loop": (False, "live: start again from the beginning at the end of the bag"),
    "publish_clock": (False, "live: publish /clock (rosgraph_msgs/Clock) with the recorded time"),
    "image_topic_out": ("", "live: topic the camera is republished on; empty: the bag's topic name"),
    "wait_for_subscribers": (0, "live: wait until this many subscribers listen to the camera before "
                                "playing (0: start at once, as 'ros2 bag play')"),
}
IMAGE_MSGS = {IMAGE: Image, COMPRESSED_IMAGE: CompressedImage}
# A reliable writer reaches both reliable and best-effort (rclcpp ClockQoS) /clock readers.
CLOCK_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
PROGRESS_PERIOD_S = 2.0  # throttle of the progress lines
# After a publisher counts its subscribers, their side of discovery may still be finishing; a
# reader drops samples of a writer it has not matched yet, so the first frames would be lost.
DISCOVERY_SETTLE_S = 0.5


class BagReplayNode(Node):
    """See the module docstring. Raises ``VgsslError`` when it cannot start; :meth:`run` does the work."""

    def __init__(self, stop: threading.Event, replaying: threading.Event, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.stop = stop
        self.replaying = replaying  # set once the replay loop runs: from then on a signal only sets stop
        self.p = self._read_parameters()
        self._clock_type: Any = None  # rosgraph_msgs/Clock, imported only with publish_clock

    # --- start-up ------------------------------------------------------------------------------
    def _read_parameters(self) -> dict[str, Any]:
        values = declare_read_only(self, PARAMETERS)
        required = ("bag", "database", "checkpoint", "out") if values["mode"] == "offline" else ("bag",)
        checks = [
            (values["mode"] in MODES, f"'mode' is {values['mode']!r}; use one of {', '.join(MODES)}"),
            *((bool(values[n]), f"'{n}' is not set: pass -p {n}:=PATH (or set it in the params file)")
              for n in required),
            (values["rate"] > 0, f"'rate' must be > 0, got {values['rate']}"),
            (values["every"] >= 1, f"'every' must be >= 1, got {values['every']}"),
            (values["gnss_tolerance_s"] >= 0, f"'gnss_tolerance_s' must be >= 0, got {values['gnss_tolerance_s']}"),
            (values["top_k"] >= 1, f"'top_k' must be >= 1, got {values['top_k']}"),
            (values["cpu_threads"] >= 0, f"'cpu_threads' must be >= 0, got {values['cpu_threads']}"),
            (values["wait_for_subscribers"] >= 0,
             f"'wait_for_subscribers' must be >= 0, got {values['wait_for_subscribers']}"),
        ]
        for ok, problem in checks:
            if not ok:
                raise VgsslError(f"parameter {problem}")
        return values

    def run(self) -> int:
        """Replay in the configured mode until the bag ends or :attr:`stop` is set; the exit status."""
        return self._run_offline() if self.p["mode"] == "offline" else self._run_live()

    # --- offline: the core's replay and report -------------------------------------------------------
    def _run_offline(self) -> int:
        p, log = self.p, self.get_logger()
        from vgssl_core.localization.fusion import check_method

        check_method(p["fusion"])  # before the bag and the model: a typo costs milliseconds
        out = Path(p["out"])
        with BagReader(p["bag"]) as bag:  # bag mistakes first: milliseconds, the model takes seconds
            image_topic = bag.pick_topic(p["image_topic"], IMAGE_TYPES, "image topic", "-p image_topic:=TOPIC")
            gnss_topic = bag.pick_topic(p["gnss_topic"], (NAVSATFIX,), "GNSS topic", "-p gnss_topic:=TOPIC")
            try:  # an unwritable report folder is found now, not after the whole replay
                out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise VgsslError(f"{out}: cannot create the report folder ({err.strerror or err})") from None
            if p["cpu_threads"] > 0:
                import torch

                torch.set_num_threads(p["cpu_threads"])
            from vgssl_core.localization.localizer import Localizer  # torch, faiss: after the cheap checks
            from vgssl_core.rosbag.replay import run_replay
            from vgssl_core.rosbag.report import write_report

            localizer = Localizer(p["checkpoint"], p["database"], device=p["device"], top_k=p["top_k"])
            total = -(-bag.message_count(image_topic) // p["every"])
            log.info(f"offline replay of {bag.path}: {total} frames of {image_topic}, ground truth {gnss_topic}, "
                     f"{localizer.model_note} on {localizer.device}, database {localizer.database.path} "
                     f"({len(localizer.database)} places), fusion {p['fusion']}")
            started, done = time.monotonic(), [0]
            self.replaying.set()

            def progress(_frame: Any) -> None:
                done[0] += 1
                speed = done[0] / max(time.monotonic() - started, 1e-9)
                log.info(f"offline replay: {done[0]}/{total} frames, {speed:.1f} frames/s",
                         throttle_duration_sec=PROGRESS_PERIOD_S)

            result = run_replay(bag, localizer, image_topic=image_topic, gnss_topic=gnss_topic, every=p["every"],
                                gnss_tolerance_s=p["gnss_tolerance_s"], fusion=p["fusion"], stop=self.stop,
                                on_frame=progress, progress=False)
        try:
            write_report(result, out)
        except OSError as err:  # a full disk after the replay: say so in one line, not a traceback
            raise VgsslError(f"{out}: cannot write the report ({err.strerror or err})") from None
        return self._finish_offline(result.report, out)

    def _finish_offline(self, r: dict[str, Any], out: Path) -> int:
        from vgssl_core.rosbag.report import summary_line

        log = self.get_logger()
        if r["complete"] or self.stop.is_set():
            partial = "" if r["complete"] else f" (interrupted after {r['n_read']} of {r['n_images']} frames: partial)"
            log.info(f"{summary_line(r)} -> {out / 'report.json'}{partial}")
        if r["stopped"] and not self.stop.is_set():  # the bag turned unreadable part way
            log.error(f"{r['stopped']}; partial report of the first {r['n_read']} frames in {out}")
            return EXIT_BAD_INPUT
        if r["complete"] and r["recall"] is None:
            log.error(f"{r['warnings'][-1]}; check gnss_topic (report in {out})")
            return EXIT_BAD_INPUT
        return 0

    # --- live: republish the camera at the recorded rate -----------------------------------------
    def _run_live(self) -> int:
        p, log = self.p, self.get_logger()
        with BagReader(p["bag"]) as bag:
            topic = bag.pick_topic(p["image_topic"], IMAGE_TYPES, "image topic", "-p image_topic:=TOPIC")
            msgtype = bag.topics()[topic]
            publisher = self.create_publisher(IMAGE_MSGS[msgtype], p["image_topic_out"] or topic,
                                              qos_profile_sensor_data)
            clock = self._clock_publisher() if p["publish_clock"] else None
            n = bag.message_count(topic)
            if n == 0:
                raise VgsslError(f"{bag.path}: no frames on {topic}; nothing to replay")
            log.info(f"live replay of {bag.path}: {n} frames of {topic} ({msgtype}) -> {publisher.topic_name} at "
                     f"{p['rate']:g}x the recorded rate{', with /clock' if clock else ''}"
                     f"{', looping' if p['loop'] else ''}")
            self.replaying.set()
            if not self._wait_for_subscribers(publisher, p["wait_for_subscribers"]):
                return 0
            passes = 0
            while not self.stop.is_set():
                try:
                    sent, wall_s, recorded_s = self._play_once(bag, topic, publisher, clock, n)
                except BagReadError as err:
                    log.error(str(err))
                    return EXIT_BAD_INPUT
                passes += 1
                hz = (sent - 1) / wall_s if sent > 1 and wall_s > 0 else float("nan")
                wanted = (sent - 1) / recorded_s * p["rate"] if sent > 1 and recorded_s > 0 else float("nan")
                log.info(f"replayed {sent} frames in {wall_s:.2f} s: {hz:.2f} Hz (requested {wanted:.2f} Hz)"
                         f"{'' if sent == n else ' (stopped early)'}")
                if not p["loop"] or self.stop.is_set():
                    break
                log.info(f"loop: starting pass {passes + 1}")
        return 0

    def _play_once(self, bag: BagReader, topic: str, publisher: Any, clock: Any, n: int) -> tuple[int, float, float]:
        """One pass over the bag at its recorded pace: (frames sent, wall seconds, recorded seconds) first to last."""
        sent, first, last = 0, None, None  # (wall time, bag stamp) of the first and last frame sent
        for message in play(bag.messages([topic]), rate=self.p["rate"], stop=self.stop):
            if clock is not None:
                clock.publish(self._clock_msg(message.bag_stamp_ns))
            publisher.publish(bytes(message.rawdata))  # serialized CDR, deserialized by the subscribers
            last = (time.monotonic(), message.bag_stamp_ns)
            first = first or last
            sent += 1
            self.get_logger().info(f"live replay: {sent}/{n} frames", throttle_duration_sec=PROGRESS_PERIOD_S)
        if first is None:
            return 0, 0.0, 0.0
        return sent, last[0] - first[0], (last[1] - first[1]) / 1e9

    def _clock_publisher(self) -> Any:
        """A ``/clock`` publisher, or None (with a warning) where rosgraph_msgs is not installed."""
        try:
            from rosgraph_msgs.msg import Clock
        except ImportError:
            self.get_logger().warning("rosgraph_msgs is not installed: /clock is not published "
                                      "(install ros-rosgraph-msgs, or ros-<distro>-rosgraph-msgs)")
            return None
        self._clock_type = Clock
        return self.create_publisher(Clock, "/clock", CLOCK_QOS)

    def _clock_msg(self, stamp_ns: int) -> Any:
        return self._clock_type(clock=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000))

    def _wait_for_subscribers(self, publisher: Any, count: int) -> bool:
        """Block until ``count`` subscribers listen (then let discovery settle); False when stopped first."""
        if count == 0:
            return True
        self.get_logger().info(f"waiting for {count} subscriber(s) on {publisher.topic_name}")
        while publisher.get_subscription_count() < count:
            if self.stop.wait(0.05):
                return False
        return not self.stop.wait(DISCOVERY_SETTLE_S)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run vgssl_ros bag_replay`` and ``python -m vgssl_ros.bag_replay``.

    rclpy's own SIGINT handler would shut the context down under the replay's feet; this node
    takes SIGINT/SIGTERM itself. During start-up (loading a model can take many seconds) a
    signal aborts at once; once the replay runs it becomes a stop request that the loop checks
    between frames, so the offline report is still written. Either way the exit status is 0.
    """
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as err:  # bad --ros-args (e.g. a params file that does not parse)
        print(f"{NODE_NAME}: error: cannot start ROS: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    stop, replaying = threading.Event(), threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()
        if not replaying.is_set():
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node = executor = spinner = None
    try:
        node = BagReplayNode(stop, replaying)
        executor = SingleThreadedExecutor()  # parameter services answer while the replay runs
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, name="bag_replay-spin", daemon=True)
        spinner.start()
        return node.run()
    except VgsslError as err:
        get_logger(NODE_NAME).fatal(f"{'stopped' if replaying.is_set() else 'cannot start'}: {err}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # a signal during start-up: nothing was replayed, nothing to write
        return 0
    finally:
        replaying.set()  # from here a signal only sets stop: the clean-up always runs to the end
        if executor is not None:
            executor.shutdown()
        if spinner is not None:
            spinner.join(2.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        # Done, and the exit status decided: a signal from now on (launch stopping everything as
        # the bag ends) must not kill the process with it. Python's finalization puts SIGINT back to
        # its default action (death by signal, status -2) unless it is ignored.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
