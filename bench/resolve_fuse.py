"""The Resolve Fuse's cost per frame under LuaJIT: its pixel loops, and a whole frame against a server.

Runs resolve/vst_planes.lua and the Fuse in lupa's LuaJIT 2.1 with the fake Fuse API of the tests
(tests/fake_fusion/fusion_fake.lua, whose GetPixel/SetPixel are LuaJIT code over ffi arrays; Fusion's
own are C calls whose cost cannot be measured here). In the same run, as baselines:

* `bare copy`: the same number of floats copied between ffi arrays in a LuaJIT loop (no API calls);
* `python client`: the same frame's R, G, B, A float32 planes through `Client.stylize` (transport and
  server only) against the same server, identity model, linear Rec.709 on both sides (no OCIO work).

    .venv/bin/python bench/resolve_fuse.py [--width 1920 --height 1080] [--rounds 5] [--device cpu]

Prints per-round seconds (wall clock; host CPU seconds of this process beside them, which other jobs on
a shared machine disturb less) and medians; the last lines are the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fake_fusion"))

from fuse_tool import FuseTool, lupa  # noqa: E402

from bench.common import cpu_name, start_server  # noqa: E402
from vst_plugin import Client, Frame, Part  # noqa: E402
from vst_plugin.install import bundled_libzmq  # noqa: E402

LOOPS = b"""
local planes, fake, width, height = ...
local ffi = require("ffi")
local names = {"R", "G", "B", "A"}
local img = Image({IMG_Width = width, IMG_Height = height, channels = names})
local count = width * height
for _, name in ipairs(names) do
  local plane = img.planes[name]
  for i = 0, count - 1 do plane[i] = (i % 997) / 997 end
end
local out = Image({IMG_Like = img, IMG_Depth = 8})
local dod = planes.domain(img)
local clock = os.clock
local t0 = clock()
local colour = planes.read(img, dod)
local t1 = clock()
planes.write(img, out, dod, colour)
local t2 = clock()
local src, dst = ffi.new("float[?]", count * 4), ffi.new("float[?]", count * 4)
for i = 0, count * 4 - 1 do dst[i] = src[i] end
local t3 = clock()
return t1 - t0, t2 - t1, t3 - t2
"""



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--address", default="tcp://127.0.0.1:5591")
    args = parser.parse_args()
    width, height = args.width, args.height
    print(f"{width}x{height} RGBA, LuaJIT from lupa, {cpu_name()}, {os.cpu_count()} cores")

    # pixel loops alone
    lua = lupa.LuaRuntime(unpack_returned_tuples=True, encoding=None)
    lua.execute(b'package.path = "' + str(ROOT / "resolve").encode() + b'/?.lua;' + str(ROOT / "tests/fake_fusion")
                .encode() + b'/?.lua;" .. package.path')
    fake = lua.eval(b'require("fusion_fake")')
    planes = lua.eval(b'require("vst_planes")')
    reads, writes, copies = [], [], []
    for number in range(1, args.rounds + 1):
        read, write, copy = lua.execute(LOOPS, planes, fake, width, height)
        reads.append(read)
        writes.append(write)
        copies.append(copy)
        print(f"round {number}: read {read:.3f} s, write {write:.3f} s, bare copy {copy:.3f} s")
    print(f"median: read {statistics.median(reads):.3f} s, write {statistics.median(writes):.3f} s, "
          f"bare copy {statistics.median(copies):.3f} s")

    # a whole frame through the Fuse against a server, versus the Python client
    os.environ["VST_SERVER"] = args.address
    os.environ["VST_LIBZMQ"] = str(bundled_libzmq()[0])
    server = start_server(args.address, args.device)
    try:
        rng = np.random.default_rng(0)
        window = (0, 0, width - 1, height - 1)
        part = Part({n: rng.random((height, width), dtype=np.float32) for n in "RGBA"}, window, window)
        tool = FuseTool()
        tool.set("Model", "identity")
        tool.set("ColourSpace", 2)  # Linear Rec.709, the client's default: no OCIO conversion on either side
        tool.connect(part)
        fuse_times, client_times, fuse_cpu, client_cpu = [], [], [], []
        with Client(args.address) as client:
            for number in range(1, args.rounds + 1):
                started, cpu = time.perf_counter(), time.process_time()
                assert tool.render(number) is not None, tool.console
                fuse_times.append(time.perf_counter() - started)
                fuse_cpu.append(time.process_time() - cpu)
                started, cpu = time.perf_counter(), time.process_time()
                client.stylize(Frame([part]), model="identity")
                client_times.append(time.perf_counter() - started)
                client_cpu.append(time.process_time() - cpu)
                print(f"round {number}: fuse frame {fuse_times[-1]:.3f} s (host CPU {fuse_cpu[-1]:.3f} s), "
                      f"python client {client_times[-1]:.3f} s (host CPU {client_cpu[-1]:.3f} s)")
    finally:
        server.terminate()
        server.wait(60)
    fuse, python = statistics.median(fuse_times), statistics.median(client_times)
    print(f"median: fuse frame {fuse:.3f} s (host CPU {statistics.median(fuse_cpu):.3f} s), python client "
          f"{python:.3f} s (host CPU {statistics.median(client_cpu):.3f} s)")
    loops = statistics.median(reads) + statistics.median(writes)
    print(f"pixel loops / bare copy: {loops / statistics.median(copies):.1f}")
    print(f"fuse frame / python client: {fuse / python:.2f}")


if __name__ == "__main__":
    main()
