"""Facts about this machine that decide numerics (read once per call; no caching: they never change)."""
from __future__ import annotations

from pathlib import Path


def cpuinfo_field(name: str) -> str:
    """The first value of ``name`` in /proc/cpuinfo (e.g. "model name", "vendor_id"), or "" where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
