"""The ``localizer`` node: camera images in, visual geo-localization fixes out.

    ros2 run vgssl_ros localizer --ros-args --params-file config/localizer.yaml \\
        -p checkpoint:=run/last.ckpt -p database:=maps/city -p image_topic:=/camera/image_raw
    python -m vgssl_ros.localizer --ros-args ...          # the same, from the venv

A thin wrapper: ``vgssl_core.localization.localizer.Localizer`` loads the model and the map database once
(and warms them up), ``vgssl_core.localization.session.LocalizationSession.step`` turns each frame into
the fix to publish (the very step the offline replay runs), ``vgssl_ros.messages`` converts messages,
``vgssl_ros.frame_slot`` holds the newest frame. The node only wires them to ROS:

* subscribes to ``image_topic`` (``sensor_msgs/Image`` or ``CompressedImage``, chosen by
  ``image_transport``; ``auto`` waits for a publisher and takes its type) with sensor-data QoS
  of depth 1; the callback only stores the message in the slot, a worker thread localizes the
  newest one whenever it is free, so a slow model drops stale frames (counted) and never queues;
* publishes, stamped with the image's stamp, on the relative (remappable) topics
  ``localization`` (``vgssl_msgs/Localization``: top-k matches, confidence, latencies, always),
  ``fix`` (``sensor_msgs/NavSatFix``: ``STATUS_NO_FIX`` below ``min_confidence``, always) and
  ``pose`` (``geometry_msgs/PoseWithCovarianceStamped`` in ``utm_frame_id``, only when the
  confidence reaches ``min_confidence``: it has no status field to say "not a fix");
* serves ``~/localize`` (``vgssl_msgs/LocalizeImage``) for one image on demand;
* publishes ``/diagnostics`` once a second (rate, latency p50/p95, received / dropped / bad).

Temporal fusion (``fusion: bayes``; default ``none``, each frame on its own). One frame's
retrieval flickers (a look-alike street wins now and then), but the camera moves continuously.
With fusion on, ``vgssl_core.localization.fusion.PlaceFilter`` (a discrete Bayes filter over the database
places, the one the offline replay measures) keeps a belief across frames, and per frame:

* the search goes ``max(top_k, fusion.SEARCH_DEPTH)`` deep, the depth the replay feeds its
  filter, so a replayed fusion is the live one; the filter gets those places and distances with
  the image's header stamp (nanoseconds): the time between stamps sets how far the motion model
  lets the belief spread (``fusion_max_speed_mps``);
* all three outputs carry the fused estimate instead of the frame's own: the position, the
  confidence = the belief's probability mass within 25 m of it (so ``min_confidence`` gates the
  fused fix), the covariance ``(5 m)^2 + (1 - confidence) x (25 m)^2`` on the east/north
  diagonal (the database's own position error, widened by the mass the filter did not rule
  out); ``localization.matches`` stays the frame's raw top-k retrieval;
* a stamp going back in time (a bag looped) or a gap longer than ``fusion_reset_after_s``
  restarts the filter from no knowledge: normal, logged at info level, not an error. A camera
  that leaves the stamps at 0 gets one warning: the filter then assumes it never moves.

The filter runs in the worker thread after the descriptor (never in the image callback, which
only stores the message): about 0.1-0.4 ms a frame, update and fused messages together (0.35 ms
median in the node on a busy 2-core VM, a 60-place map; 0.1-0.15 ms alone for 60 to 100k
places), next to tens of milliseconds for the descriptor, and the GIL it holds that long delays
the image callback no more. Its median cost is in ``/diagnostics`` (``fusion_p50_us``). The ``~/localize
service stays single-frame even with fusion on: a request is one image out of any sequence,
maybe from another camera or place, with a stamp of another clock; fed into the camera's
filter it would corrupt the belief, and a filter of its own would have nothing to fuse.

Calibration (``calibration``: a file from ``vgssl calibrate``, fitted on a replay of a recorded
drive with this checkpoint, database, fusion mode and top_k; another is a one-line fatal error at
start, or a warning with ``force``): the session turns every published confidence into the
fitted probability that the fix lies within the calibration's threshold (25 m) of the truth, so
``min_confidence`` is a probability, and scales the covariances of all three outputs so that the
1- and 2-sigma ellipses hold their nominal share of errors on the calibration drive. Without it
the outputs are uncalibrated (said at start and in ``/diagnostics``: ``calibrated: no``). The
``~/localize`` service answers one image outside any sequence and stays uncalibrated.

Rename outputs with remapping (``-r fix:=/gps/visual_fix``), not parameters. A malformed image
logs one throttled warning and is counted; a missing checkpoint or database stops the node at
start with one line naming the path (exit status 2). Ctrl-C exits with status 0.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.clock import Clock, ClockType
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, NavSatFix

from vgssl_core.errors import EXIT_BAD_INPUT, VgsslError
from vgssl_core.localization.fusion import METHODS as FUSION_METHODS
from vgssl_core.localization.fusion import FusionParams
from vgssl_core.localization.fusion import check_method as check_fusion
from vgssl_msgs.msg import Localization
from vgssl_msgs.srv import LocalizeImage
from vgssl_ros.frame_slot import FrameSlot, ProcessingStats
from vgssl_ros.parameters import declare_read_only, spin_until_shutdown
from vgssl_ros.messages import (
    diagnostics_msg, has_fix, image_to_rgb, localization_msg, navsatfix_msg, pose_msg,
)

NODE_NAME = "localizer"

# name -> (default when neither a params file nor -p sets it, description shown by `ros2 param
# describe`). config/localizer.yaml sets every one. Read once at start (read-only parameters).
PARAMETERS: dict[str, tuple[Any, str]] = {
    "checkpoint": ("", "vgssl checkpoint (.ckpt) of the descriptor model; required"),
    "database": ("", "map database folder built by 'vgssl build-db' with this checkpoint; required"),
    "device": ("auto", "auto (CUDA when PyTorch sees a GPU, else CPU), cpu, cuda or cuda:N"),
    "cpu_threads": (0, "PyTorch CPU threads; 0 keeps PyTorch's default (one per core)"),
    "force": (False, "use a database (or calibration) made for another checkpoint (fixes are then "
                     "meaningless unless the models are compatible)"),
    "calibration": ("", "calibration file from 'vgssl calibrate' (JSON): confidence becomes the probability "
                        "that the fix is within its threshold, covariances the calibrated ones; empty: uncalibrated"),
    "image_topic": ("image", "camera topic (relative names follow the node's namespace and remapping)"),
    "image_transport": ("auto", "raw (sensor_msgs/Image), compressed (sensor_msgs/CompressedImage: "
                                "name the .../compressed topic) or auto (the type its publisher advertises)"),
    "top_k": (5, "database matches retrieved per image and published in 'localization'"),
    "min_confidence": (0.5, "confidence (0..1; with a calibration, a probability) from which a result is a fix: "
                            "NavSatFix STATUS_FIX and a 'pose' message; below it NavSatFix says STATUS_NO_FIX"),
    "utm_frame_id": ("utm", "frame_id of 'localization' and 'pose' (UTM, the database's zone)"),
    "fix_frame_id": ("", "frame_id of 'fix'; empty: the image's frame_id (the camera)"),
    "fusion": ("none", f"temporal fusion of consecutive frames: {' or '.join(FUSION_METHODS)} (none: every frame "
                       "alone; bayes: a Bayes filter over the database places, its estimate on every output)"),
    "fusion_max_speed_mps": (FusionParams.max_speed_mps, "bayes: the camera's top speed [m/s]; the belief "
                                                         "spreads this far per second between image stamps"),
    "fusion_reset_after_s": (FusionParams.reset_after_s, "bayes: a gap between image stamps longer than this [s] "
                                                         "(or a stamp going back) restarts the filter"),
}
TRANSPORTS = {"raw": Image, "compressed": CompressedImage}
TYPE_TRANSPORT = {"sensor_msgs/msg/Image": "raw", "sensor_msgs/msg/CompressedImage": "compressed"}

# Sensor-data QoS with depth 1: never deliver a stale frame after a fresh one was missed.
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
OUTPUT_DEPTH = 10
WARN_EVERY_S = 5.0  # throttle of the malformed-frame warning
DIAGNOSTICS_PERIOD_S = 1.0
DISCOVERY_POLL_S = 0.2  # image_transport auto: how often to look for the camera's publisher
FUSION_COST_WINDOW = 100  # frames over which /diagnostics reports the filter's median cost


class LocalizerNode(Node):
    """See the module docstring. Raises ``VgsslError`` when it cannot start (bad parameter,
    missing checkpoint or database); call :meth:`close` before ``destroy_node``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        p = self._read_parameters()
        if p["cpu_threads"] > 0:
            import torch

            torch.set_num_threads(p["cpu_threads"])
        from vgssl_core.localization.localizer import Localizer  # torch, faiss: after the cheap checks
        from vgssl_core.localization.calibration import Calibration
        from vgssl_core.localization.session import LocalizationSession

        calibration = Calibration.load(p["calibration"]) if p["calibration"] else None  # before the model loads
        self.localizer = Localizer(p["checkpoint"], p["database"], device=p["device"], top_k=p["top_k"],
                                   force=p["force"])
        # the camera's frames go through the same step as the offline replay's
        self.session = LocalizationSession(self.localizer, fusion=p["fusion"], fusion_params=p["fusion_params"],
                                           calibration=calibration, force_calibration=p["force"])
        self.fusion_name, self.filter = p["fusion"], self.session.filter
        self._fusion_costs: deque[float] = deque(maxlen=FUSION_COST_WINDOW)  # seconds per update
        self._fusion_lock = threading.Lock()  # the worker appends, the diagnostics timer reads
        self.min_confidence = p["min_confidence"]
        self.utm_frame_id, self.fix_frame_id = p["utm_frame_id"], p["fix_frame_id"]
        self.image_topic_param = p["image_topic"]
        self.image_topic = self.resolve_topic_name(p["image_topic"])
        self.slot: FrameSlot = FrameSlot()
        self.stats = ProcessingStats()
        self.subscription = None

        self.fix_pub = self.create_publisher(NavSatFix, "fix", OUTPUT_DEPTH)
        self.localization_pub = self.create_publisher(Localization, "localization", OUTPUT_DEPTH)
        self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, "pose", OUTPUT_DEPTH)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_DEPTH)
        self.create_service(LocalizeImage, "~/localize", self._on_localize)
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # runs without /clock under use_sim_time
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, clock=steady)

        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="localizer-worker", daemon=True)
        self._worker.start()

        db = self.localizer.database
        if not self.localizer.checkpoint_matches_database:
            self.get_logger().warning(f"force: database {db.path} was built with another checkpoint than "
                                      f"{self.localizer.checkpoint.name}; fixes may be meaningless")
        for problem in self.session.calibration_warnings:
            self.get_logger().warning(f"force: {problem}; its confidences and covariances may be wrong")
        if p["image_transport"] == "auto":
            self._discovery_warned = False
            self._discovery = self.create_timer(DISCOVERY_POLL_S, self._discover_transport, clock=steady)
            waiting = f"; waiting for a publisher on {self.image_topic} to learn its type (image_transport auto)"
        else:
            self._subscribe(p["image_transport"])
            waiting = ""
        self.get_logger().info(
            f"localizer ready: {self.localizer.model_note} on {self.localizer.device}, database {db.path} "
            f"({len(db)} images), top_k {self.localizer.top_k}{self._fusion_note()}; {self._calibration_note(p)}"
            f"{waiting}"
        )

    # --- start-up ------------------------------------------------------------------------------
    def _read_parameters(self) -> dict[str, Any]:
        values = declare_read_only(self, PARAMETERS)
        for name in ("checkpoint", "database"):
            if not values[name]:
                raise VgsslError(f"parameter '{name}' is not set: pass -p {name}:=PATH (or set it in the params file)")
        if values["image_transport"] not in (*TRANSPORTS, "auto"):
            raise VgsslError(f"parameter 'image_transport' is {values['image_transport']!r}; "
                             f"use one of {', '.join([*TRANSPORTS, 'auto'])}")
        if values["top_k"] < 1:
            raise VgsslError(f"parameter 'top_k' must be >= 1, got {values['top_k']}")
        if not 0.0 <= values["min_confidence"] <= 1.0:
            raise VgsslError(f"parameter 'min_confidence' must be in 0..1, got {values['min_confidence']}")
        if values["cpu_threads"] < 0:
            raise VgsslError(f"parameter 'cpu_threads' must be >= 0, got {values['cpu_threads']}")
        if not values["image_topic"]:
            raise VgsslError("parameter 'image_topic' is empty: name the camera topic")
        check_fusion(values["fusion"])
        try:  # FusionParams checks its own values; the node's parameter is its field with "fusion_"
            values["fusion_params"] = FusionParams(max_speed_mps=values["fusion_max_speed_mps"],
                                                   reset_after_s=values["fusion_reset_after_s"])
        except ValueError as err:
            raise VgsslError(f"parameter fusion_{err}") from None
        return values

    def _fusion_note(self) -> str:
        if self.filter is None:
            return ", no temporal fusion"
        prm = self.filter.params
        return (f", temporal fusion {self.fusion_name} (search depth {self.session.depth}, max speed "
                f"{prm.max_speed_mps:g} m/s, reset after {prm.reset_after_s:g} s)")

    def _calibration_note(self, p: dict[str, Any]) -> str:
        cal = self.session.calibration
        if cal is None:
            return ("uncalibrated: confidence ranks fixes but is not a probability, covariance not fitted to "
                    "errors (set 'calibration')")
        return (f"calibrated by {p['calibration']}: confidence = P(fix within {cal.threshold_m:g} m), "
                f"covariance {cal.covariance_scale:.3g} S + {cal.covariance_doubt_m2:.3g} m^2 x (1 - confidence), min_confidence {self.min_confidence:g} is a probability")

    def _discover_transport(self) -> None:
        """image_transport auto: subscribe once a publisher of a known image type appears."""
        types = {info.topic_type for info in self.get_publishers_info_by_topic(self.image_topic)}
        known = [TYPE_TRANSPORT[t] for t in sorted(types) if t in TYPE_TRANSPORT]
        if known:
            self.destroy_timer(self._discovery)
            self._subscribe(known[0])
        elif types and not self._discovery_warned:
            self._discovery_warned = True
            self.get_logger().error(f"{self.image_topic} carries {', '.join(sorted(types))}; expected "
                                    f"{' or '.join(TYPE_TRANSPORT)} (set image_topic to the camera's image topic)")

    def _subscribe(self, transport: str) -> None:
        msg_type = TRANSPORTS[transport]
        self.subscription = self.create_subscription(msg_type, self.image_topic_param, self.slot.put, IMAGE_QOS)
        self.get_logger().info(f"subscribed to {self.image_topic} (sensor_msgs/{msg_type.__name__}, {transport})")

    # --- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        """Localize the newest frame, publish, repeat; until :meth:`close`."""
        while (frame := self.slot.take()) is not None:
            try:
                self._process(frame.msg, frame.received)
            except Exception as err:  # a bug or a device error: keep serving, say so
                if self._stopping.is_set() or not self.context.ok():
                    return
                self.stats.record_failure(f"{type(err).__name__}: {err}")
                self.get_logger().error(f"localizing a frame failed: {type(err).__name__}: {err}",
                                        throttle_duration_sec=WARN_EVERY_S)

    def _process(self, msg: Image | CompressedImage, received: float) -> None:
        stamp = msg.header.stamp
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        if stamp_ns == 0 and self.filter is not None:
            self.get_logger().warning(f"images on {self.image_topic} carry no header stamp (0): temporal fusion "
                                      "cannot tell how far the camera moved between frames", once=True)
        try:
            step = self.session.step(image_to_rgb(msg), stamp_ns)
        except VgsslError as err:
            self.stats.record_bad(str(err))
            self.get_logger().warning(f"skipped a malformed image on {self.image_topic}: {err}",
                                      throttle_duration_sec=WARN_EVERY_S)
            return
        if step.fused is not None:
            with self._fusion_lock:
                self._fusion_costs.append(step.fusion_s)
            if step.fused.reset and self.filter.resets:  # not the first frame: time went back or paused too long
                self.get_logger().info(f"temporal fusion restarted (image stamps went back or paused > "
                                       f"{self.filter.params.reset_after_s:g} s)", throttle_duration_sec=WARN_EVERY_S)
        result = step.output
        fix = navsatfix_msg(result, stamp, self.fix_frame_id or msg.header.frame_id, self.min_confidence)
        pose = pose_msg(result, stamp, self.utm_frame_id) if has_fix(result, self.min_confidence) else None
        latency = time.monotonic() - received
        self.fix_pub.publish(fix)
        self.localization_pub.publish(localization_msg(result, stamp, self.utm_frame_id, latency))
        if pose is not None:
            self.pose_pub.publish(pose)
        self.stats.record_fix(latency)

    # --- service and diagnostics -------------------------------------------------------------------
    def _on_localize(self, request: LocalizeImage.Request, response: LocalizeImage.Response) -> LocalizeImage.Response:
        start = time.monotonic()
        image = request.compressed_image if request.use_compressed else request.image
        try:
            result = self.localizer.localize(image_to_rgb(image), top_k=request.top_k)
        except VgsslError as err:
            response.success, response.message = False, str(err)
            return response
        except Exception as err:  # never take the node down for one request
            self.get_logger().error(f"~/localize failed: {type(err).__name__}: {err}")
            response.success, response.message = False, f"internal error: {type(err).__name__}: {err}"
            return response
        response.localization = localization_msg(result, image.header.stamp, self.utm_frame_id,
                                                 time.monotonic() - start)
        response.success, response.message = True, "ok"
        return response

    def _publish_diagnostics(self) -> None:
        localizer = self.localizer
        extra = {
            "device": str(localizer.device),
            "checkpoint": str(localizer.checkpoint),
            "database": str(localizer.database.path),
            "database_images": str(len(localizer.database)),
            "min_confidence": f"{self.min_confidence:g}",
            "fusion": self.fusion_name,
            "calibrated": "yes" if self.session.calibration is not None else "no",
        }
        if self.filter is not None:
            with self._fusion_lock:
                costs = list(self._fusion_costs)
            extra["fusion_p50_us"] = f"{np.median(costs) * 1e6:.1f}" if costs else "nan"
            extra["fusion_resets"] = str(self.filter.resets)
        msg = diagnostics_msg(self.stats.snapshot(self.slot), self.get_clock().now().to_msg(),
                              f"{self.get_name()}: visual localization", str(localizer.device),
                              self.image_topic, extra)
        self.diagnostics_pub.publish(msg)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (it finishes the frame in hand, within ``timeout`` s)."""
        self._stopping.set()
        self.slot.close()
        self._worker.join(timeout)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run vgssl_ros localizer`` and ``python -m vgssl_ros.localizer``."""
    try:
        rclpy.init(args=args)
    except Exception as err:  # bad --ros-args (e.g. a params file that does not parse)
        print(f"{NODE_NAME}: error: cannot start ROS: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    node = None
    try:
        try:
            node = LocalizerNode()
        except VgsslError as err:
            get_logger(NODE_NAME).fatal(f"cannot start: {err}")
            return EXIT_BAD_INPUT
        spin_until_shutdown(node)
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
