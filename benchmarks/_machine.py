"""The machine a benchmark ran on, for its table header."""

from __future__ import annotations

import os
import platform


def describe() -> str:
    """``"<cpu model>, <n> cores"`` (Linux /proc/cpuinfo when readable)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"
