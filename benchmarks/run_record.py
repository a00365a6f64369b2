"""What every benchmark run records about itself: the date, the machine and the exact command.

Owns reading the machine's description (CPU count and model from /proc/cpuinfo, memory, Python); it measures
nothing and never runs the engine.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the platform's processor string elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    """Total memory of the machine in GiB, from /proc/meminfo."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text(encoding="utf-8").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def run_record() -> dict[str, Any]:
    """Date (UTC), machine and command line of this run, for the results file and BENCHMARKS.md."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cpus = os.cpu_count() or 0
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "nproc": cpus,
            "cpu": cpu_model(),
            "memory_gib": memory_gib(),
            "python": platform.python_version(),
            "os": platform.platform(),
        },
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
    }


def describe(record: dict[str, Any]) -> str:
    """One Markdown line naming date, machine and command."""
    m = record["machine"]
    return (
        f"Date: {record['date']}. Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}. Command: `{record['command']}`"
    )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of the values, linear interpolation."""
    return float(np.percentile(np.asarray(values, dtype=float), q))
