"""Load on one server: many clients, mixed temporal and per-frame requests, the same sequence names.

Each client sends its frames several in flight through its own connection. Every frame a client sends
is filled with that client's own value (plus a little noise), so a reply that carried another
client's pixels, or a temporal blend with another client's previous frame, shows as a value far from
the client's own. Checked: every request answered exactly once, no cross-talk, and the server's
resident memory (sampled from /proc while the load runs). A second run uses a tight queue budget and
bigger frames, so frames are refused as `busy` and sent again.

    .venv/bin/python bench/load.py --clients 8 --frames 200
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import cpu_name  # noqa: E402
from vst_plugin import Client, Frame, Part, ServerUnavailable  # noqa: E402

VST = str(Path(sys.executable).parent / "vst")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def client_frame(value: float, side: int, rng: np.random.Generator) -> Frame:
    planes = {c: (value + 0.01 * rng.random((side, side), dtype=np.float32)).astype(np.float16) for c in "RGB"}
    planes["A"] = np.ones((side, side), np.float16)
    return Frame([Part(planes, (0, 0, side - 1, side - 1), (0, 0, side - 1, side - 1))])


def one_client(address: str, index: int, frames: int, side: int, in_flight: int) -> dict:
    """Send `frames` frames; even clients in temporal mode, odd ones per frame; all name sequence "shot"."""
    value = 0.1 + 0.1 * index
    rng = np.random.default_rng(index)
    temporal = {"strength": 0.6, "preset": "ultrafast"} if index % 2 == 0 else None
    answered, wrong, worst = 0, 0, 0.0
    with Client(address, timeout=120) as client:
        pending = []
        for number in range(1, frames + 1):
            frame = client_frame(value, side, rng)
            pending.append(client.submit(frame, model="identity", sequence="shot", frame_number=number,
                                         temporal=temporal))
            while len(pending) >= in_flight or (number == frames and pending):
                result = client.result(pending.pop(0))
                answered += 1
                error = float(np.abs(result.parts[0].channels["G"].astype(np.float32) - value).max())
                worst = max(worst, error)
                wrong += error > 0.02
        leftover = len(client._done)  # replies nobody asked for: none may exist
        return {"answered": answered, "wrong": wrong, "worst": worst, "extra": leftover,
                "busy_retries": client.busy_retries}


def run(clients: int, frames: int, side: int, in_flight: int, options: list[str]) -> dict:
    address = free_address()
    server = subprocess.Popen([VST, "serve", "--bind", address, "--device", "cpu", *options],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with Client(address, timeout=2) as probe:
                    probe.hello()
                break
            except ServerUnavailable:
                if time.monotonic() > deadline:
                    raise
        idle = rss(server.pid)
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                samples.append(rss(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda i: one_client(address, i, frames, side, in_flight), range(clients)))
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        with Client(address) as probe:
            stats = probe.stats()
        return {"results": results, "elapsed": elapsed, "idle": idle, "peak": max(samples, default=idle),
                "end": rss(server.pid), "stats": stats}
    finally:
        server.terminate()
        server.wait(60)


def report(title: str, outcome: dict, clients: int, frames: int, side: int) -> None:
    results = outcome["results"]
    total = sum(r["answered"] for r in results)
    mib = 1 << 20
    print(f"{title}: {clients} clients x {frames} frames of {side}x{side} RGBA half (even clients temporal)")
    print(f"  answered {total} of {clients * frames}, extra replies {sum(r['extra'] for r in results)}, "
          f"cross-talk frames {sum(r['wrong'] for r in results)} (worst |value error| "
          f"{max(r['worst'] for r in results):.4f})")
    print(f"  busy retries {sum(r['busy_retries'] for r in results)}, server busy {outcome['stats']['busy']}, "
          f"abandoned {outcome['stats']['abandoned']}, errors {outcome['stats']['errors']}")
    print(f"  {total / outcome['elapsed']:.1f} frames/s; server RSS idle {outcome['idle'] / mib:.0f} MiB, "
          f"peak {outcome['peak'] / mib:.0f} MiB, after {outcome['end'] / mib:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=4)
    args = parser.parse_args()
    print(f"device: {cpu_name()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    outcome = run(args.clients, args.frames, args.side, args.in_flight, [])
    report("defaults", outcome, args.clients, args.frames, args.side)
    hard_frames, hard_side = max(args.frames // 4, 1), 256
    outcome = run(args.clients, hard_frames, hard_side, args.in_flight, ["--queue-memory", "2M"])
    report("tight queue (--queue-memory 2M)", outcome, args.clients, hard_frames, hard_side)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
