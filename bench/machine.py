"""What a benchmark report records of the machine, and process memory from /proc (Linux)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """Resident memory of a process now and its peak so far (VmRSS, VmHWM; MB, Linux /proc).

    Raises OSError when the process is gone."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    kb = {name: int(fields.get(name, "0 kB").split()[0]) for name in ("VmRSS", "VmHWM")}
    return {"rss_mb": kb["VmRSS"] / 1024, "peak_rss_mb": kb["VmHWM"] / 1024}


def machine_info() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
