"""What the benchmarks share: the name of the machine they ran on, the same in every JSON and in
the summary (which compares it with the machine it runs on)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """``host (CPU model, N CPUs)``, the CPU model from /proc/cpuinfo where there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()} ({cpu}, {os.cpu_count()} CPUs)"
