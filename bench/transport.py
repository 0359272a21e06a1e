"""Transport overhead: a 1080p RGBA half frame through the vst server (identity model) vs a bare echo.

Both peers run as separate processes on loopback. The echo peer is a plain pyzmq ROUTER that sends
back a header and the first three planes, i.e. the same bytes a vst stylize reply carries (the server
returns only the channels it changed: R, G, B). Same run, same payload, interleaved rounds.

    .venv/bin/python bench/transport.py [--rounds 200] [--address tcp://127.0.0.1:5599]

The last line is `server/echo ratio: X` (goal: X <= 1.25).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vst_plugin import Client, Frame, Part  # noqa: E402
from vst_plugin.protocol import frame_planes, pack  # noqa: E402

WIDTH, HEIGHT = 1920, 1080


def echo_peer(address: str) -> None:
    """A bare ROUTER that answers each message with its header and first three payload frames."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.bind(address)
    while True:
        frames = socket.recv_multipart(copy=False)
        if frames[1].bytes == b"stop":
            break
        socket.send_multipart([frames[0], frames[1], *frames[2:5]], copy=False)


def make_frame() -> Frame:
    rng = np.random.default_rng(1)
    channels = {name: rng.random((HEIGHT, WIDTH), dtype=np.float32).astype(np.float16) for name in "RGBA"}
    window = (0, 0, WIDTH - 1, HEIGHT - 1)
    return Frame([Part(channels, window, window)])


def wait_for(address: str, server: bool) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if server:
                with Client(address, timeout=2) as client:
                    client.hello()
            return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"peer at {address} did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--address", default="tcp://127.0.0.1:5599")
    parser.add_argument("--echo-address", default="tcp://127.0.0.1:5598")
    parser.add_argument("--echo-peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_peer:
        echo_peer(args.echo_address)
        return

    here = os.path.dirname(os.path.abspath(__file__))
    vst = os.path.join(os.path.dirname(sys.executable), "vst")
    server = subprocess.Popen([vst, "serve", "--bind", args.address, "--device", "cpu"])
    echo = subprocess.Popen([sys.executable, os.path.join(here, "transport.py"), "--echo-peer",
                             "--echo-address", args.echo_address])
    try:
        wait_for(args.address, server=True)
        frame = make_frame()
        planes = frame_planes(frame)
        context = zmq.Context.instance()
        dealer = context.socket(zmq.DEALER)
        dealer.connect(args.echo_address)
        header = pack({"v": 1, "id": 0, "op": "echo"})
        served, echoed = [], []
        with Client(args.address, timeout=30) as client:
            for _ in range(5):  # warm-up both paths
                client.stylize(frame, model="identity", colorspace="raw")
                dealer.send_multipart([header, *planes], copy=False)
                dealer.recv_multipart(copy=False)
            for _ in range(args.rounds):
                start = time.perf_counter()
                result = client.stylize(frame, model="identity", colorspace="raw")
                served.append(time.perf_counter() - start)
                start = time.perf_counter()
                dealer.send_multipart([header, *planes], copy=False)
                reply = dealer.recv_multipart(copy=False)
                echoed.append(time.perf_counter() - start)
            assert np.array_equal(result.parts[0].channels["R"], frame.parts[0].channels["R"])
            assert len(reply) == 4
        dealer.send_multipart([b"stop"])
        dealer.close()
        payload_mb = sum(p.nbytes for p in planes) / 1e6
        server_ms = statistics.median(served) * 1000
        echo_ms = statistics.median(echoed) * 1000
        print(f"payload: 1920x1080 RGBA half, {payload_mb:.1f} MB out, {payload_mb * 3 / 4:.1f} MB back, "
              f"{args.rounds} rounds, {args.address}")
        print(f"vst server (identity model) median round trip: {server_ms:.2f} ms "
              f"(p10 {np.percentile(served, 10) * 1000:.2f}, p90 {np.percentile(served, 90) * 1000:.2f})")
        print(f"bare pyzmq echo median round trip: {echo_ms:.2f} ms "
              f"(p10 {np.percentile(echoed, 10) * 1000:.2f}, p90 {np.percentile(echoed, 90) * 1000:.2f})")
        print(f"server/echo ratio: {server_ms / echo_ms:.3f}")
    finally:
        server.terminate()
        server.wait(30)
        echo.kill()


if __name__ == "__main__":
    main()
