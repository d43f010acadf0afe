"""Count how many camera-sized images survive between two ROS processes on this machine.

Why: the localizer gets its images from another process (a camera driver, the bag
replay). With Fast DDS's built-in transports a good share of 640x480 frames is silently
dropped under best-effort QoS; config/fastdds_localhost.xml is there to fix that. This
check shows whether it does on a given machine:

    python tools/ros_image_rate_check.py                 # with the shipped profile
    python tools/ros_image_rate_check.py --no-profile    # built-in transports, to compare

A child process publishes ``--frames`` rgb8 images at ``--rate`` Hz with best-effort
sensor-data QoS; this process subscribes, counts and measures the latency from the
header stamp. The exit status is 1 when fewer than ``--min-fraction`` arrived. Everything
runs in a domain of its own with discovery restricted to localhost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vgssl_ros"))
from vgssl_ros.ros_env import fastdds_profile_path, localhost_env  # noqa: E402

TOPIC = "rate_check/image"


def qos():
    from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, DurabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=10,
        reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


def publish(frames: int, rate: float, width: int, height: int) -> int:
    """Child side: wait for the subscriber, then publish ``frames`` images at ``rate`` Hz."""
    import numpy as np
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("rate_check_publisher")
    pub = node.create_publisher(Image, TOPIC, qos())
    try:
        deadline = time.monotonic() + 20.0
        while pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                print("publisher: no subscriber matched within 20 s", file=sys.stderr)
                return 1
            rclpy.spin_once(node, timeout_sec=0.05)
        time.sleep(0.5)  # let the subscriber side finish matching too
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
        msg.header.frame_id = "camera"
        msg.data = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8).tobytes()
        period = 1.0 / rate
        start = time.monotonic()
        for i in range(frames):
            time.sleep(max(0.0, start + i * period - time.monotonic()))
            msg.header.stamp = node.get_clock().now().to_msg()
            pub.publish(msg)
        time.sleep(1.0)  # keep the writer alive while the last samples drain
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def run_check(frames: int, rate: float, width: int, height: int, profile: bool, domain: int) -> dict:
    """Parent side: start the publisher, count what arrives; return the figures."""
    import rclpy
    from rclpy.time import Time
    from sensor_msgs.msg import Image

    log_dir = tempfile.mkdtemp(prefix="vgssl_rate_check_")
    env = localhost_env(domain, log_dir)
    if not profile:
        for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
            env.pop(name, None)
            os.environ.pop(name, None)
    # This process's own participant reads the same variables (once, at its creation).
    os.environ.update({k: v for k, v in env.items() if k.startswith(("ROS_", "FAST"))})

    child = subprocess.Popen(
        [sys.executable, __file__, "--publish", "--frames", str(frames), "--rate", str(rate),
         "--width", str(width), "--height", str(height)],
        env=env,
    )
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("rate_check_subscriber", context=context)
    latencies: list[float] = []
    sizes_ok = True

    def on_image(msg: Image) -> None:
        nonlocal sizes_ok
        now = node.get_clock().now()
        latencies.append((now - Time.from_msg(msg.header.stamp)).nanoseconds * 1e-9)
        sizes_ok &= len(msg.data) == msg.step * msg.height == width * 3 * height

    node.create_subscription(Image, TOPIC, on_image, qos())
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 25.0 + frames / rate
        while child.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        for _ in range(20):  # anything still queued
            executor.spin_once(timeout_sec=0.01)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        shutil.rmtree(log_dir, ignore_errors=True)
    lat_ms = sorted(1000.0 * x for x in latencies)
    return {
        "frames_sent": frames,
        "frames_received": len(latencies),
        "fraction": len(latencies) / frames,
        "rate_hz": rate,
        "size": f"{width}x{height} rgb8",
        "profile": fastdds_profile_path() is not None and profile,
        "latency_ms_median": statistics.median(lat_ms) if lat_ms else None,
        "latency_ms_p95": lat_ms[int(0.95 * (len(lat_ms) - 1))] if lat_ms else None,
        "sizes_ok": sizes_ok,
        "publisher_rc": child.returncode,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="Hz")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--no-profile", action="store_true", help="use Fast DDS's built-in transports")
    parser.add_argument("--domain", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "57")))
    parser.add_argument("--min-fraction", type=float, default=0.95)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish:
        return publish(args.frames, args.rate, args.width, args.height)
    result = run_check(args.frames, args.rate, args.width, args.height, not args.no_profile, args.domain)
    median = result["latency_ms_median"]
    latency = f"latency median {median:.1f} ms" if median is not None else "no latency (nothing arrived)"
    print(
        f"received {result['frames_received']}/{result['frames_sent']} "
        f"({100 * result['fraction']:.1f} %) {result['size']} at {args.rate:g} Hz, "
        f"{'shipped profile' if result['profile'] else 'built-in transports'}, {latency}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = result["fraction"] >= args.min_fraction and result["sizes_ok"] and result["publisher_rc"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
