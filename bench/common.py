"""What the benchmarks share: naming the device they ran on, starting a server in another process."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

from vst_plugin import Client, ServerUnavailable


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


def start_server(address: str, device: str, *options: str) -> subprocess.Popen:
    """`vst serve` on `address` (with more command-line `options`) in another process, once it answers `hello`."""
    vst = str(Path(sys.executable).parent / "vst")
    process = subprocess.Popen([vst, "serve", "--bind", address, "--device", device, *options])
    deadline = time.monotonic() + 120
    while True:
        try:
            with Client(address, timeout=2, heartbeat=0.5) as client:
                client.hello()
            return process
        except ServerUnavailable:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"vst serve did not start (exit code {process.poll()})") from None
