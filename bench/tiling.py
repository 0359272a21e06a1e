"""Peak memory and time of a frame, tiled and untiled, at 1080p, 4K and 8K; and precision variants.

Each (model, size, tile) configuration runs in a fresh subprocess, so its peak memory is its own:
on the CPU the peak resident set (`getrusage` maxrss) minus the same figure before the frame (torch,
the model and the input frame loaded); on a CUDA GPU `torch.cuda.max_memory_allocated`. Time is one
frame after a small warm-up frame. The frame is the sample plate resized, sRGB-encoded.

`--precision` also times, in this process at 1080p, the built-in network in fp32, bf16 autocast and
channels_last (CPU; on a GPU fp16 as served, bf16 and channels_last) and the max / mean abs
difference of each from fp32 on the 0..1 output.

    .venv/bin/python bench/tiling.py [--sizes 1080p 4k 8k] [--tile 512] [--models multistyle26 ...]
        [--params JSON] [--skip-untiled 8k] [--precision] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = {"512": (512, 512), "1080p": (1920, 1080), "4k": (3840, 2160), "8k": (7680, 4320)}


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(model_name: str, size: str, tile: int, device: str, params: dict) -> dict:
    """One configuration, in this (fresh) process."""
    import torch

    from bench.model import real_frame
    from server.models import ModelRegistry

    width, height = SIZES[size]
    model = ModelRegistry(device=device).get(model_name)
    if tile and model._plan is None:
        return {"error": f"the {model.family} family has no tiling plan yet (tile is ignored)"}
    model.stylize(torch.rand(1, 3, 64, 64, device=device), tile=tile or None, **params)  # warm-up
    frame = real_frame(width, height).to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = maxrss_bytes()
    start = time.perf_counter()
    model.stylize(frame, tile=tile or None, **params)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else maxrss_bytes()
    return {"seconds": seconds, "peak_bytes": peak - before, "dtype": str(model.dtype)}


def run_child(model: str, size: str, tile: int, device: str, params: dict, timeout: float) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", model, size, str(tile), device, json.dumps(params)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": f"exit {done.returncode}: {last[:160]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def precision(device: str, repeats: int) -> None:
    """fp32 against the faster variants at 1080p: time and difference on 0..1 output."""
    import torch

    from bench.model import real_frame
    from server.models import ModelRegistry

    model = ModelRegistry(device=device, half=False).get("multistyle26")
    module, values = model._module, model.validate({"style": 19})
    frame = real_frame(1920, 1080).to(device)
    cuda = device.startswith("cuda")

    def network(x: torch.Tensor) -> torch.Tensor:
        return model._run(module, x, values).float()

    def timed(run) -> tuple[float, torch.Tensor]:
        with torch.inference_mode():
            out = run()
            times = []
            for _ in range(repeats):
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = run()
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2], out

    variants = {"fp32": lambda: network(frame)}
    autocast = "cuda" if cuda else "cpu"
    variants["bf16 autocast"] = lambda: _autocast(autocast, torch.bfloat16, network, frame)
    if cuda:
        half = ModelRegistry(device=device, half=True).get("multistyle26")
        variants["fp16 (as served)"] = lambda: half._run(half._module, frame.half(), values).float()
    channels_last = frame.contiguous(memory_format=torch.channels_last)

    def with_channels_last(run):
        module.to(memory_format=torch.channels_last)
        try:
            return run()
        finally:
            module.to(memory_format=torch.contiguous_format)

    variants["fp32 channels_last"] = lambda: with_channels_last(lambda: network(channels_last))
    variants["bf16 autocast + channels_last"] = lambda: with_channels_last(
        lambda: _autocast(autocast, torch.bfloat16, network, channels_last)
    )
    base_seconds, base = timed(variants.pop("fp32"))
    print(f"precision 1920x1080 {device}: fp32 {base_seconds * 1000:.0f} ms (median of {repeats})")
    for name, run in variants.items():
        seconds, out = timed(run)
        difference = (out - base).abs()
        print(f"precision 1920x1080 {device}: {name} {seconds * 1000:.0f} ms, speed-up {base_seconds / seconds:.2f}x, "
              f"max abs diff {difference.max().item():.2e}, mean {difference.mean().item():.2e}")


def _autocast(device_type, dtype, network, x):
    import torch

    with torch.autocast(device_type, dtype=dtype):
        return network(x)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, size, tile, device, params = sys.argv[2:7]
        print(json.dumps(child(model, size, int(tile), device, json.loads(params))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1080p", "4k", "8k"], choices=list(SIZES))
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--models", nargs="+", default=["multistyle26"])
    parser.add_argument("--params", default='{"multistyle26": {"style": 19}}',
                        help='JSON: parameters per model, e.g. {"arbitrary": {"style_image": "/path/style.exr"}}')
    parser.add_argument("--skip-untiled", nargs="*", default=[], choices=list(SIZES), metavar="SIZE",
                        help="sizes measured tiled only (untiled would not fit or take too long)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--precision", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    from bench.common import cpu_name

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"date {datetime.date.today()}; device {device} ({name}); torch {torch.__version__}")
    memory = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "maxrss increase"
    print(f"{'model':<14} {'size':<6} {'tiles':<8} {'seconds':>8} {'peak MiB':>9}  ({memory})")
    for model in args.models:
        params = json.loads(args.params).get(model, {})
        for size in args.sizes:
            for tile in (0, args.tile):
                if tile == 0 and size in args.skip_untiled:
                    print(f"{model:<14} {size:<6} {'untiled':<8} not measured (--skip-untiled)")
                    continue
                result = run_child(model, size, tile, device, params, args.timeout)
                label = f"{tile} px" if tile else "untiled"
                if "error" in result:
                    print(f"{model:<14} {size:<6} {label:<8} failed: {result['error']}")
                    continue
                print(f"{model:<14} {size:<6} {label:<8} {result['seconds']:>8.2f} "
                      f"{result['peak_bytes'] / 2**20:>9.0f}  {result['dtype']}", flush=True)
    if args.precision:
        precision(device, args.repeats)


if __name__ == "__main__":
    main()
