"""Farm overhead: frames per second of a two-worker Dask render against one local render of the same frames.

Writes N plates into a temporary folder, then, alternating for several rounds:

* local: `vst serve` started, `vst render` of the frames through it, server stopped (end to end; the
  render alone is reported too);
* dask: `vst farm --scheduler ADDR --chunk C` on a `dask scheduler` with two `dask worker --resources
  GPU=1 --nthreads 1` processes started before the round (end to end: each worker starts its vst
  server, chunks, verification).

Both write every frame; the outputs are compared (they must be equal). On a machine with one GPU or
only the CPU, two workers share the same device, so the ratio shows the overhead, not a speed-up.

    .venv/bin/python bench/farm.py [--frames 16] [--width 480 --height 270] [--chunk 4] [--rounds 2]
        [--style 7] [--device cpu]

The last line is `dask/local ratio: X` (frames per second of the Dask run over the local render's).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_name  # noqa: E402
from bench.sequence import make_plates  # noqa: E402
from vst_plugin.exr import read_exr  # noqa: E402

BIN = Path(sys.executable).parent


def local_round(plates: str, out: str, frames: str, options: list[str], device: str) -> tuple[float, float]:
    """End-to-end seconds (server start, render, stop) and the render's own seconds."""
    start = time.perf_counter()
    server = subprocess.Popen([str(BIN / "vst"), "serve", "--bind", "tcp://127.0.0.1:0", "--device", device],
                              stdout=subprocess.PIPE, text=True)
    address = re.search(r"listening on (\S+)", server.stdout.readline()).group(1)
    render_start = time.perf_counter()
    subprocess.run([str(BIN / "vst"), "render", plates, out, "--frames", frames, "--server", address, *options],
                   check=True, capture_output=True)
    render = time.perf_counter() - render_start
    server.terminate()
    server.wait()
    return time.perf_counter() - start, render


def dask_round(plates: str, out: str, frames: str, chunk: int, options: list[str], device: str) -> float:
    """End-to-end seconds of `vst farm` on a scheduler with two workers started beforehand."""
    with tempfile.TemporaryDirectory() as scratch:
        port = 8786 + os.getpid() % 1000
        address = f"tcp://127.0.0.1:{port}"
        processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], stderr=subprocess.DEVNULL, cwd=scratch)]
        processes += [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--resources",
                                        "GPU=1", "--no-dashboard", "--death-timeout", "60"],
                                       stderr=subprocess.DEVNULL, cwd=scratch) for _ in range(2)]
        try:
            import distributed

            with distributed.Client(address, timeout=60) as client:
                client.wait_for_workers(2, timeout=120)
            start = time.perf_counter()
            subprocess.run([str(BIN / "vst"), "farm", plates, out, "--frames", frames, "--chunk", str(chunk),
                            "--scheduler", address, "--device", device, *options], check=True, capture_output=True)
            return time.perf_counter() - start
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--style", default="7")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    options = ["--style", args.style]
    frames = f"1-{args.frames}"
    print(f"{args.frames} frames {args.width}x{args.height}, multistyle26 style {args.style}, chunk {args.chunk}, "
          f"device {args.device} ({cpu_name()}, {os.cpu_count()} CPUs)")
    local, render, dask = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "plates").mkdir()
        make_plates(root / "plates", args.frames, args.width, args.height)
        plates = str(root / "plates" / "plate.####.exr")
        for round_number in range(args.rounds):
            for name in ("local", "dask"):
                shutil.rmtree(root / name, ignore_errors=True)
            whole, alone = local_round(plates, str(root / "local" / "o.####.exr"), frames, options, args.device)
            seconds = dask_round(plates, str(root / "dask" / "o.####.exr"), frames, args.chunk, options, args.device)
            local.append(whole)
            render.append(alone)
            dask.append(seconds)
            print(f"round {round_number + 1}: local {whole:.1f} s (render alone {alone:.1f} s), dask {seconds:.1f} s")
        for number in range(1, args.frames + 1):
            a = read_exr(root / "local" / f"o.{number:04d}.exr").parts[0].channels
            b = read_exr(root / "dask" / f"o.{number:04d}.exr").parts[0].channels
            assert all(np.array_equal(a[c], b[c]) for c in a), f"frame {number} differs"
    fps = {name: args.frames / statistics.median(values) for name, values in
           (("local", local), ("render alone", render), ("dask", dask))}
    print(f"fps: local {fps['local']:.2f} (render alone {fps['render alone']:.2f}), dask {fps['dask']:.2f}; "
          "outputs equal")
    print(f"dask/local ratio: {fps['dask'] / fps['local']:.2f}")


if __name__ == "__main__":
    main()
