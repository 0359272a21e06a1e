"""Sequence job throughput: frames per second with several frames in flight versus one at a time.

Starts a `vst serve` process, writes N RGBA half EXR frames into a temporary folder and runs the same
`SequenceJob` over them with `in_flight=1` and `in_flight=DEPTH`, alternating, for several rounds, in
the same run against the same server. `--transport bytes` sends the EXR files as they are (the Nuke
node's path); `planes` reads them here and sends planes (the `vst render` path).

    .venv/bin/python bench/sequence.py [--width 1920 --height 1080] [--frames 8] [--rounds 2]
        [--depth 3] [--model multistyle26] [--transport bytes|planes] [--device auto]

The last line is `pipelined/serial ratio: X` (frames per second with DEPTH in flight over with 1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import start_server  # noqa: E402
from vst_plugin import Client, Frame, Part  # noqa: E402
from vst_plugin.exr import write_exr  # noqa: E402
from vst_plugin.jobs import ExrBytes, ExrPlanes, SequenceJob  # noqa: E402
from vst_plugin.schema import StylizeSettings  # noqa: E402


def make_plates(folder: Path, count: int, width: int, height: int) -> None:
    """Smooth, moving colour fields with alpha: real-looking work for the network, half precision."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for number in range(1, count + 1):
        phase = number * 0.3
        channels = {
            "R": 0.5 + 0.5 * np.sin(x / 97 + phase),
            "G": 0.5 + 0.5 * np.sin(y / 61 - phase),
            "B": 0.5 + 0.5 * np.sin((x + y) / 143 + 2 * phase),
            "A": np.ones_like(x),
        }
        window = (0, 0, width - 1, height - 1)
        part = Part({k: v.astype(np.float16) for k, v in channels.items()}, window, window,
                    attributes={"compression": "zip"})
        write_exr(Frame([part]), folder / f"plate.{number:04d}.exr")



def run(address: str, folder: Path, frames: list[int], options: StylizeSettings, kind: type, depth: int) -> float:
    """Frames per second of one job over `frames` with `depth` frames in flight."""
    out = folder / f"out-{depth}"
    with Client(address, timeout=60) as client:
        job = SequenceJob(client, options, lambda n: kind.load(str(folder / f"plate.{n:04d}.exr")),
                          lambda n: str(out / f"styled.{n:04d}.exr"), in_flight=depth)
        start = time.perf_counter()
        job.run(frames)
        return len(frames) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--model", default="multistyle26")
    parser.add_argument("--transport", choices=("bytes", "planes"), default="bytes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--address", default="tcp://127.0.0.1:5598")
    args = parser.parse_args()

    kind = ExrBytes if args.transport == "bytes" else ExrPlanes
    options = StylizeSettings(model=args.model, params={"style": "7"} if args.model == "multistyle26" else {})
    frames = list(range(1, args.frames + 1))
    server = start_server(args.address, args.device)
    try:
        with Client(args.address) as client:
            device = client.hello()["device"]
        with tempfile.TemporaryDirectory(prefix="vst-bench-") as scratch:
            folder = Path(scratch)
            make_plates(folder, args.frames, args.width, args.height)
            run(args.address, folder, frames[:1], options, kind, 1)  # load the model, warm up
            print(f"{args.frames} frames {args.width}x{args.height} RGBA half, model {args.model}, "
                  f"transport {args.transport}, device {device}")
            results: dict[int, list[float]] = {1: [], args.depth: []}
            for round_number in range(1, args.rounds + 1):
                order = (1, args.depth) if round_number % 2 else (args.depth, 1)
                for depth in order:
                    fps = run(args.address, folder, frames, options, kind, depth)
                    results[depth].append(fps)
                    print(f"round {round_number}  in_flight={depth}: {fps:.3f} fps")
    finally:
        server.terminate()
        server.wait(60)
    serial, pipelined = statistics.median(results[1]), statistics.median(results[args.depth])
    print(f"median in_flight=1: {serial:.3f} fps, in_flight={args.depth}: {pipelined:.3f} fps")
    print(f"pipelined/serial ratio: {pipelined / serial:.3f}")


if __name__ == "__main__":
    main()
