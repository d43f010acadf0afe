"""The localizer node's end-to-end latency against the same work done in one process.

For one 640x480 rgb8 camera frame, compares

* **in process**: ``image_to_rgb`` (decode) + ``Localizer.localize`` (preprocess, model, search,
  fix) in this process — the least any node can take;
* **end to end**: this process publishes the ``sensor_msgs/Image`` to a real ``localizer`` node
  process (started with ``config/localizer.yaml``) and waits for its ``sensor_msgs/NavSatFix``;
  latency = fix received - just before publish (one clock, this process);
* the node's own ``processing_latency`` (arrival in its callback -> publication) from the
  ``vgssl_msgs/Localization`` message.

Frames are sent one at a time (the next after the previous fix plus a short pause), so this
measures latency, not queueing. The two paths alternate frame by frame, so a change of load on
a shared machine hits both alike. Target: end-to-end p50 <= 1.2 x in-process p50.

    python benchmarks/bench_localizer.py                       # builds a tiny map (~1 min)
    python benchmarks/bench_localizer.py --ckpt run/last.ckpt --db maps/city --frames 100 --device auto

Writes ``bench_results/localizer.json``. Everything stays on this host (localhost discovery, a
domain of its own, the shipped Fast DDS profile).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchkit import machine  # benchmarks/benchkit.py, next to this script

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "config" / "localizer.yaml"
TOPIC = "bench/image_raw"


def build_map(work: Path, image_size: str) -> tuple[Path, Path, Path]:
    """(checkpoint, database, world): the tiny synthetic world and a 2-step checkpoint."""
    from vgssl_core.cli import main as vgssl
    from vgssl_core.synth import generate_world

    world, run, db = work / "world", work / "run", work / "db"
    if not (world / "images").is_dir():
        generate_world(world, preset="tiny", seed=0, progress=False)
    if not (run / "last.ckpt").is_file():
        assert vgssl(["train", "--data", str(world), "--out", str(run), "--max-steps", "2", "--quiet",
                      "data.batch_size=6", "data.workers=0", f"model.image_size=[{image_size}]",
                      "trainer.val_split=null", "trainer.test_split=null"]) == 0
    if not (db / "manifest.json").is_file():
        assert vgssl(["build-db", "--data", str(world), "--ckpt", str(run / "last.ckpt"), "--out", str(db),
                      "--quiet"]) == 0
    return run / "last.ckpt", db, world


def camera_frame(world: Path | None) -> np.ndarray:
    """A 640x480 RGB frame: a database image of the world scaled up, or noise without a world."""
    import cv2

    if world is not None:
        from vgssl_core.data.dataset import load_image, load_split

        rgb = np.asarray(load_image(load_split(world, "test").database.paths[7]))
        return cv2.resize(rgb, (640, 480), interpolation=cv2.INTER_LINEAR)
    return np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)


def percentiles(values: list[float]) -> dict[str, float]:
    ms = 1000.0 * np.asarray(values)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "mean_ms": round(float(ms.mean()), 2), "n": int(ms.size)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="checkpoint (default: build a tiny map in --work)")
    parser.add_argument("--db", type=Path, help="database built with --ckpt")
    parser.add_argument("--work", type=Path, help="folder for the tiny map (default: a temporary one)")
    parser.add_argument("--image-size", default="120,160", help="model input H,W of the tiny map's checkpoint")
    parser.add_argument("--frames", type=int, default=40, help="frames per path (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between a fix and the next frame")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda (both paths)")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="PyTorch threads in both processes (0: PyTorch's default); 1 is steadiest on a shared CPU")
    parser.add_argument("--domain", type=int, default=61 + os.getpid() % 39, help="ROS_DOMAIN_ID of the run")
    parser.add_argument("--out", type=Path, default=REPO / "bench_results" / "localizer.json")
    args = parser.parse_args()
    if (args.ckpt is None) != (args.db is None):
        parser.error("give both --ckpt and --db, or neither")

    work = args.work or Path(tempfile.mkdtemp(prefix="vgssl_bench_localizer_"))
    work.mkdir(parents=True, exist_ok=True)
    from vgssl_ros.ros_env import localhost_env

    env = localhost_env(args.domain, work / "ros_log")
    os.environ.update({k: v for k, v in env.items() if k.startswith(("ROS_", "FASTDDS_", "FASTRTPS_"))})

    import torch

    if args.cpu_threads > 0:
        torch.set_num_threads(args.cpu_threads)
    if args.ckpt is None:
        print(f"building a tiny map in {work} ...", flush=True)
        ckpt, db, world = build_map(work, args.image_size)
    else:
        ckpt, db, world = args.ckpt, args.db, None

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, NavSatFix

    from vgssl_core.localization.image_codec import encode_raw
    from vgssl_core.localization.localizer import Localizer
    from vgssl_msgs.msg import Localization
    from vgssl_ros.messages import image_to_rgb

    rgb = camera_frame(world)
    step, data = encode_raw(rgb, "rgb8")
    msg = Image(height=480, width=640, encoding="rgb8", step=step, data=data)
    msg.header.frame_id = "camera"
    localizer = Localizer(ckpt, db, device=args.device)

    log = open(work / "localizer.log", "wb")
    node_cmd = [sys.executable, "-m", "vgssl_ros.localizer", "--ros-args", "--params-file", str(PARAMS),
                "-p", f"checkpoint:={ckpt}", "-p", f"database:={db}", "-p", f"image_topic:={TOPIC}",
                "-p", "image_transport:=raw", "-p", f"device:={args.device}", "-p", f"cpu_threads:={args.cpu_threads}"]
    process = subprocess.Popen(node_cmd, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    rclpy.init(domain_id=args.domain)
    node = rclpy.create_node("bench_camera")
    fixes: dict[int, float] = {}
    locs: dict[int, Localization] = {}
    node.create_subscription(NavSatFix, "fix", lambda m: fixes.setdefault(m.header.stamp.sec, time.perf_counter()), 10)
    node.create_subscription(Localization, "localization", lambda m: locs.setdefault(m.header.stamp.sec, m), 10)
    camera = node.create_publisher(Image, TOPIC, qos_profile_sensor_data)

    alone: list[float] = []
    e2e: list[float] = []
    try:
        deadline = time.monotonic() + 180
        while camera.get_subscription_count() == 0 or node.count_publishers("fix") == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the localizer did not start; see {work / 'localizer.log'}")
            rclpy.spin_once(node, timeout_sec=0.1)
        time.sleep(0.5)  # let the node's side of the match settle
        for i in range(args.warmup + args.frames):
            # end to end: publish, wait for the fix (again if the best-effort frame was lost)
            msg.header.stamp.sec = i
            for _attempt in range(5):
                sent = time.perf_counter()
                camera.publish(msg)
                while i not in fixes and time.perf_counter() - sent < 5.0:
                    rclpy.spin_once(node, timeout_sec=0.5)  # wakes for the fix: no busy polling
                if i in fixes:
                    break
            else:
                raise SystemExit(f"no fix for frame {i}; see {work / 'localizer.log'}")
            rclpy.spin_once(node, timeout_sec=0.02)  # the Localization right behind it
            if i >= args.warmup:
                e2e.append(fixes[i] - sent)
            time.sleep(args.pause)
            # in process: the same frame, decode + localize
            t0 = time.perf_counter()
            localizer.localize(image_to_rgb(msg))
            if i >= args.warmup:
                alone.append(time.perf_counter() - t0)
            time.sleep(args.pause)
    finally:
        process.send_signal(2)  # SIGINT: the node's clean shutdown
        try:
            code = process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        node.destroy_node()
        rclpy.try_shutdown()
        log.close()

    measured = range(args.warmup, args.warmup + args.frames)
    node_side = [float(locs[i].processing_latency) for i in measured if i in locs]
    model = [float(locs[i].descriptor_latency) for i in measured if i in locs]
    rows = {
        "in_process_decode_localize": percentiles(alone),
        "node_arrival_to_publish": percentiles(node_side),
        "node_model_forward": percentiles(model),
        "end_to_end_publish_to_fix": percentiles(e2e),
    }
    ratio = rows["end_to_end_publish_to_fix"]["p50_ms"] / rows["in_process_decode_localize"]["p50_ms"]
    ratio95 = rows["end_to_end_publish_to_fix"]["p95_ms"] / rows["in_process_decode_localize"]["p95_ms"]
    print()
    print(f"localizer latency, 640x480 rgb8, device {localizer.device}, model input "
          f"{localizer.config['image_size']}, {args.frames} frames, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| path | p50 (ms) | p95 (ms) | mean (ms) |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['p50_ms']} | {r['p95_ms']} | {r['mean_ms']} |")
    print(f"\nend-to-end / in-process: p50 {ratio:.2f}, p95 {ratio95:.2f} (target p50 <= 1.2); node exit status {code}")
    payload = {
        "machine": machine(), "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2), "device": str(localizer.device),
        "torch_threads": torch.get_num_threads(), "model_image_size": localizer.config["image_size"],
        "frame": "640x480 rgb8", "frames": args.frames, "pause_s": args.pause, "rows": rows,
        "ratio_p50": round(ratio, 3), "ratio_p95": round(ratio95, 3), "target_ratio_p50": 1.2,
        "node_exit_status": code,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
