"""Environment for ROS 2 processes that must keep their DDS traffic on this machine.

Tests, benchmarks, demos and CI start nodes as child processes. Each run needs its own
``ROS_DOMAIN_ID`` (domains are isolated, so parallel runs cannot hear each other),
discovery restricted to localhost (otherwise Fast DDS multicasts out of the network
interface), its logs in a folder of its own, and the shipped Fast DDS profile (without
it 25-40 % of 640x480 images are lost between two processes). This module builds that
environment; it imports no ROS package, so it works before rclpy is importable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

FASTDDS_PROFILE_NAME = "fastdds_localhost.xml"
# Distributions whose Fast DDS (2.x) reads FASTRTPS_DEFAULT_PROFILES_FILE instead.
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def fastdds_profile_path() -> Path | None:
    """The shipped localhost Fast DDS profile, or None if it cannot be found.

    Looked up in the checkout first (``<repo>/config``, for editable installs and tests),
    then in the installed share folders (``share/vgssl_ros/config`` of the venv or of a
    colcon/apt install found through ``AMENT_PREFIX_PATH``).
    """
    candidates = [Path(__file__).resolve().parents[2] / "config" / FASTDDS_PROFILE_NAME]
    prefixes = [sys.prefix] + [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates += [Path(p) / "share" / "vgssl_ros" / "config" / FASTDDS_PROFILE_NAME for p in prefixes]
    return next((path for path in candidates if path.is_file()), None)


def localhost_env(
    domain_id: int,
    log_dir: str | os.PathLike[str],
    base: Mapping[str, str] | None = None,
    fastdds_profile: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) set up for a localhost-only ROS run.

    ``base`` should be the environment of an already bootstrapped Python of the venv:
    the ROS wheels' bootstrapper put ``LD_LIBRARY_PATH`` there, and a child process
    that kept ``_ROS_WHEELS_BOOTSTRAP_COMPLETE`` but lost it would fail to load rclpy.
    ``fastdds_profile`` defaults to :func:`fastdds_profile_path`.
    """
    if not 0 <= domain_id <= 232:
        raise ValueError(f"domain_id must be in 0..232 (Fast DDS port range), got {domain_id}")
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_STATIC_PEERS", None)
    env.pop("ROS_DISCOVERY_SERVER", None)
    if env.get("ROS_DISTRO") == "humble":  # Humble predates ROS_AUTOMATIC_DISCOVERY_RANGE
        env["ROS_LOCALHOST_ONLY"] = "1"
    env["ROS_LOG_DIR"] = str(log_dir)
    profile = fastdds_profile if fastdds_profile is not None else fastdds_profile_path()
    if profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)  # Fast DDS 3 (Kilted and later)
        if env.get("ROS_DISTRO") in FAST_DDS_2_DISTROS:  # Fast DDS 3 warns about the old name
            env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
    if "_ROS_WHEELS_BOOTSTRAP_COMPLETE" in env and "LD_LIBRARY_PATH" not in env:
        del env["_ROS_WHEELS_BOOTSTRAP_COMPLETE"]  # let the child bootstrap itself
    return env
