"""What the benchmarks share: naming the device they ran on."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU model, for recording which machine a figure came from."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
