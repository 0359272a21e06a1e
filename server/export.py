"""Exporting a model for hosts that run networks natively: TorchScript (Nuke's CatFileCreator) and ONNX.

The exported module takes ONE tensor and returns one: ``[1, 3, H, W]`` float32 **scene-linear RGB**
(Rec.709 primaries: what Nuke's Inference node hands over in a linear working space) for any H and W,
and returns scene-linear RGB of the same size. Everything the server does around the network happens
inside ``forward()``, with the server's own functions (server/colour.py), so the math is the same:

1. non-finite pixels are set aside (they come back unchanged);
2. the ``preserve`` highlight policy: the network sees the plate clamped to 0..1, and what the clamp
   removed (above 1, below 0) is added back afterwards;
3. sRGB encoding; reflection padding up to the network's size multiple (cropped back after);
4. the network, with the chosen style (or blend) and any fixed parameters baked in;
5. the `strength` mix in the network's space, sRGB decoding, the residual added back.

The network itself is built from the family's tiling plan (server/tiling.py): the same steps the tiler
walks, as plain TorchScript-friendly modules, so a family that can be tiled can be exported with no
extra code. Families without a plan (StyleGAN2: a plate path with inversion, not a feed-forward
network) cannot be exported.

Frames smaller than the family's ``min_size`` (16 px) are not supported by the exports (the server
pads those by replication; a compositing frame is never that small). TorchScript files written by this
torch version load in libtorch of the same or a newer version; Nuke ships its own libtorch (Nuke 14:
1.12), so check the version your Nuke loads.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from server.colour import srgb_decode, srgb_encode
from server.models import ModelError, StyleModel
from server.tiling import Act, Add, Conv, Grow, Norm, Plan, Push, Shrink, Swap

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17


class ConvStep(nn.Module):
    """[nearest x2 upsample] -> reflection pad kernel//2 -> conv."""

    def __init__(self, step: Conv):
        super().__init__()
        self.weight = nn.Parameter(step.weight.detach().float().clone(), requires_grad=False)
        bias = torch.zeros(step.weight.shape[0]) if step.bias is None else step.bias.detach().float().clone()
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride = step.stride
        self.upsample = step.upsample
        self.padding = step.weight.shape[-1] // 2

    def forward(self, x: torch.Tensor, saved: list[torch.Tensor]) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = F.pad(x, [self.padding, self.padding, self.padding, self.padding], mode="reflect")
        return F.conv2d(x, self.weight, self.bias, self.stride)


class NormStep(nn.Module):
    """Instance norm with the style's scale and shift baked in, its statistics reduced row by row.

    Written out (means over W, then over H) rather than as ONNX InstanceNormalization: onnxruntime
    sums a whole 1080p plane in one float32 accumulator there, which put its output 8.9e-2 away from a
    float64 run on flat black areas; in two stages of at most a few thousand values it is 9e-4
    (torch: 1.1e-3). bench/results/pipeline-cpu-2026-11-28.md has the figures.
    """

    def __init__(self, step: Norm):
        super().__init__()
        self.weight = nn.Parameter(step.weight.detach().float().clone(), requires_grad=False)
        self.bias = nn.Parameter(step.bias.detach().float().clone(), requires_grad=False)
        self.eps = float(step.eps)

    def forward(self, x: torch.Tensor, saved: list[torch.Tensor]) -> torch.Tensor:
        mean = x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
        centred = x - mean
        variance = (centred * centred).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(variance + self.eps)
        return centred * scale + self.bias.view(1, -1, 1, 1)


class ActStep(nn.Module):
    """relu, sigmoid, scale or clamp (server/tiling.py `Act`)."""

    def __init__(self, step: Act):
        super().__init__()
        if step.kind not in ("relu", "sigmoid", "scale", "clamp"):
            raise ModelError(f"cannot export activation {step.kind!r}")
        self.kind = step.kind
        self.value = float(step.value)

    def forward(self, x: torch.Tensor, saved: list[torch.Tensor]) -> torch.Tensor:
        if self.kind == "relu":
            return F.relu(x)
        if self.kind == "sigmoid":
            return torch.sigmoid(x)
        if self.kind == "scale":
            return x * self.value
        return x.clamp(0.0, self.value)


class PushStep(nn.Module):
    def forward(self, x: torch.Tensor, saved: list[torch.Tensor]) -> torch.Tensor:
        saved.append(x)
        return x


class AddStep(nn.Module):
    def forward(self, x: torch.Tensor, saved: list[torch.Tensor]) -> torch.Tensor:
        return x + saved.pop()


class SwapStep(nn.Module):
    def forward(self, x: torch.Tensor, saved: list[torch.Tensor]) -> torch.Tensor:
        other = saved.pop()
        saved.append(x)
        return other


class ResampleStep(nn.Module):
    """server/tiling.py's `resample`, in a form TorchScript compiles."""

    def __init__(self, step: Shrink | Grow):
        super().__init__()
        self.factor = step.factor
        self.shrink = isinstance(step, Shrink)

    def forward(self, x: torch.Tensor, saved: list[torch.Tensor]) -> torch.Tensor:
        if self.shrink:
            return F.avg_pool2d(x, self.factor)
        return F.interpolate(x, scale_factor=float(self.factor), mode="bilinear", align_corners=False)


class PlanNetwork(nn.Module):
    """A tiling plan as an ordinary network: sRGB 0..1 in, sRGB 0..1 out, sides a multiple of the net's."""

    def __init__(self, plan: Plan):
        super().__init__()
        kinds = {Conv: ConvStep, Norm: NormStep, Act: ActStep}
        steps: list[nn.Module] = []
        for step in plan:
            if isinstance(step, Push):
                steps.append(PushStep())
            elif isinstance(step, Add):
                steps.append(AddStep())
            elif isinstance(step, Swap):
                steps.append(SwapStep())
            elif isinstance(step, Shrink | Grow):
                steps.append(ResampleStep(step))
            else:
                steps.append(kinds[type(step)](step))
        self.steps = nn.ModuleList(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved: list[torch.Tensor] = []
        for step in self.steps:
            x = step(x, saved)
        return x


class LinearStyleTransfer(nn.Module):
    """One scene-linear RGB tensor [N,3,H,W] in, the stylized scene-linear RGB out (module docstring)."""

    def __init__(self, network: nn.Module, size_multiple: int, strength: float):
        super().__init__()
        self.network = network
        self.size_multiple = int(size_multiple)
        self.strength = float(strength)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(x)
        clean = torch.where(finite, x, torch.zeros_like(x))
        shaped = clean.clamp(0.0, 1.0)
        residual = clean - shaped
        encoded = srgb_encode(shaped)
        height, width = x.shape[2], x.shape[3]
        pad_bottom = (self.size_multiple - height % self.size_multiple) % self.size_multiple
        pad_right = (self.size_multiple - width % self.size_multiple) % self.size_multiple
        padded = F.pad(encoded, [0, pad_right, 0, pad_bottom], mode="reflect")
        stylized = self.network(padded)[:, :, :height, :width]
        mixed = encoded + (stylized - encoded) * self.strength
        result = srgb_decode(mixed.clamp(0.0, 1.0)) + residual
        return torch.where(finite, result, x)


def export_module(model: StyleModel, **params: Any) -> LinearStyleTransfer:
    """The model with `params` (style, strength, ...) baked in, as a float32 CPU module (module docstring)."""
    values = model.validate(params)
    with torch.no_grad():
        try:
            plan = model.feedforward_plan(values)
        except ModelError as exc:
            raise ModelError(f"{exc}: it cannot be exported") from None
        network = PlanNetwork(plan)
    return LinearStyleTransfer(network, model.size_multiple, values["strength"]).float().cpu().eval()


def export(model: StyleModel, output: Path | str, format: str, **params: Any) -> Path:
    """Write the model as TorchScript (``torch.jit.script``) or ONNX (dynamic H and W); returns the path."""
    if format not in FORMATS:
        raise ModelError(f"unknown export format {format!r}; use {' or '.join(FORMATS)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    module = export_module(model, **params)
    with warnings.catch_warnings():  # TorchScript's deprecation notice; the tracer's notes on shape arithmetic
        warnings.simplefilter("ignore")
        if format == "torchscript":
            torch.jit.script(module).save(str(output))  # scripted: the padding arithmetic stays dynamic
        else:
            _export_onnx(module, torch.rand(1, 3, 64, 96), output)
    return output


def _export_onnx(module: nn.Module, example: torch.Tensor, output: Path) -> None:
    """The TorchScript-based ONNX exporter, tracing `module` with dynamic batch, height and width."""
    torch.onnx.export(
        module,
        (example,),
        str(output),
        input_names=["linear_rgb"],
        output_names=["stylized_linear_rgb"],
        dynamic_axes={"linear_rgb": {0: "batch", 2: "height", 3: "width"},
                      "stylized_linear_rgb": {0: "batch", 2: "height", 3: "width"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
