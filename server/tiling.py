"""Running a feed-forward style network over a frame too large for the device, in tiles, exactly.

Why not independent overlapping tiles. Every family the server tiles (`multistyle`,
`fast_neural_style`) normalises each feature map by its own mean and variance (instance norm). Run a
tile on its own and it normalises by *its* statistics: a dark corner tile is brightened, a sky tile
gets other contrast, and feathering the overlaps only smears those seams and colour shifts around.

What this module does instead: **layer-wise tiled execution**. A family describes its network as a
flat list of steps (`Plan`): `Conv` (optional nearest x2 upsample, reflection padding k//2, conv),
`Norm` (instance norm with a baked per-channel scale and shift), `Act` (relu, sigmoid, a scale,
a clamp), `Push`/`Add` for residual connections, `Swap` for a second branch that starts from a
remembered activation, and `Shrink`/`Grow` for a branch that runs at a fraction of the frame's size.
`run_plan` walks the steps over the whole frame:

* every step's full-frame activation lives in *host* memory (`storage`, CPU RAM);
* a `Conv` is computed output tile by output tile on the device. Each tile gathers its input region
  plus a halo of k//2 pixels from the stored activation; the upsample and the reflection padding at
  the frame's edges are folded into the gather's row/column indices, so the tile sees exactly the
  numbers the untiled conv would see. The halo *is* the overlap: each output pixel is computed once,
  from its complete receptive field for that layer, so there is nothing to blend and no feathering
  is needed — tiles abut without seams;
* a `Norm` takes its mean and variance over the **whole** stored activation (accumulated tile by
  tile in float64), then normalises each tile with those global statistics;
* `Act`, `Push`, `Add` and `Swap` are pointwise (or mere bookkeeping) and run band by band;
  `Shrink` and `Grow` resample the whole stored activation on the host (used on 3-channel images).

The result equals the untiled network up to float rounding (about 1e-6 on 0..1 output in float32,
see tests/test_tiling.py), for any tile size. The device holds one tile's input, weights and output
at a time; the host holds a few full-frame activations (at 8K, a 32-channel float32 map is 4.2 GB).

`tile` is the side, in pixels of the input frame, of the region a tile covers; in a layer at 1/2 or
1/4 resolution a tile covers the same image region (tile/2, tile/4 pixels, at least `MIN_LAYER_TILE`).

Adding a family: give its descriptor a `plan(module, values) -> Plan` (server/models/base.py). A
network built from convs with "same" reflection padding, instance norms whose affine parameters do not
depend on the frame, pointwise activations and residual adds maps onto these steps directly; the same
plan also makes the family exportable (server/export.py). The families with plans: multistyle,
fast_neural_style and arbitrary (whose plan bakes the style image's vector into the norms; its style
predictor runs on a 256x256 image and is never tiled).

StyleGAN2 is not tiled: its plate path resizes the region to the generator's fixed resolution, has no
instance norm, and its cost does not grow with the frame size (server/models/stylegan2.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIN_LAYER_TILE = 16
"""The smallest tile side used in any layer, in that layer's pixels."""


@dataclass(frozen=True)
class Conv:
    """[nearest x2 upsample] -> reflection pad kernel//2 -> conv2d(weight, bias, stride)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    stride: int = 1
    upsample: bool = False


@dataclass(frozen=True)
class Norm:
    """Instance norm over the whole frame, then `* weight + bias` per channel."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: float = 1e-5


@dataclass(frozen=True)
class Act:
    """A pointwise function: "relu", "sigmoid", "scale" (x * value) or "clamp" (to 0..value)."""

    kind: str
    value: float = 1.0


@dataclass(frozen=True)
class Push:
    """Remember the current activation (the input of a residual block)."""


@dataclass(frozen=True)
class Add:
    """Add the most recently pushed activation (and forget it)."""


@dataclass(frozen=True)
class Swap:
    """Exchange the current activation with the most recently pushed one (a second branch starts from it)."""


@dataclass(frozen=True)
class Shrink:
    """The mean of each `factor` x `factor` block (the sides are multiples of it)."""

    factor: int


@dataclass(frozen=True)
class Grow:
    """Bilinear upsampling by `factor` (pixel centres, edges repeated): the inverse size of `Shrink`."""

    factor: int


Step = Conv | Norm | Act | Push | Add | Swap | Shrink | Grow
Plan = list[Step]


def run_untiled(plan: Sequence[Step], x: torch.Tensor) -> torch.Tensor:
    """Run a plan the ordinary way, whole tensors on x's device: the reference for `run_plan`."""
    saved: list[torch.Tensor] = []
    for step in plan:
        if isinstance(step, Conv):
            x = _conv(x, step)
        elif isinstance(step, Norm):
            x = F.instance_norm(x, weight=step.weight, bias=step.bias, eps=step.eps)
        elif isinstance(step, Act):
            x = _act(x, step)
        elif isinstance(step, Push):
            saved.append(x)
        elif isinstance(step, Swap):
            x, saved[-1] = saved[-1], x
        elif isinstance(step, Shrink | Grow):
            x = resample(x, step)
        else:
            x = x + saved.pop()
    return x


def resample(x: torch.Tensor, step: Shrink | Grow) -> torch.Tensor:
    """A `Shrink` or `Grow` step on a whole activation."""
    if isinstance(step, Shrink):
        return F.avg_pool2d(x, step.factor)
    return F.interpolate(x, scale_factor=step.factor, mode="bilinear", align_corners=False)


def run_plan(
    plan: Sequence[Step], x: torch.Tensor, tile: int, device: torch.device, dtype: torch.dtype,
    storage: torch.device | None = None,
) -> torch.Tensor:
    """Run a plan layer by layer over the whole frame `x` [N,C,H,W], tile by tile on `device`.

    Full-frame activations are kept on `storage` (default: the CPU); the result is on `storage` too,
    in `dtype`. Exact: see the module docstring.
    """
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, not {tile}")
    storage = torch.device("cpu") if storage is None else storage
    frame_height = x.shape[2]
    x = x.to(device=storage, dtype=dtype, copy=True)  # steps write into it: never the caller's tensor
    saved: list[torch.Tensor] = []
    steps = list(plan)
    for index, step in enumerate(steps):
        side = max(MIN_LAYER_TILE, round(tile * x.shape[2] / frame_height))
        if isinstance(step, Conv):
            x = _tiled_conv(x, step, side, device)
        elif isinstance(step, Norm):
            following = steps[index + 1] if index + 1 < len(steps) else None
            fused = following if isinstance(following, Act) else None
            x = _tiled_norm(x, step, side, device, fused)
        elif isinstance(step, Act) and index > 0 and isinstance(steps[index - 1], Norm):
            continue  # applied with the norm, in the same pass
        elif isinstance(step, Act):
            x = _pointwise(x, side, device, lambda band, step=step: _act(band, step))
        elif isinstance(step, Push):
            saved.append(x.clone())
        elif isinstance(step, Swap):
            x, saved[-1] = saved[-1], x
        elif isinstance(step, Shrink | Grow):
            x = resample(x, step)  # whole-frame, on the host: only ever a 3-channel image (keyframe painter)
        else:
            residual = saved.pop()
            x = _pointwise(x, side, device, lambda band, rows, r=residual: band + r[:, :, rows].to(band.device), True)
    return x


def _conv(x: torch.Tensor, step: Conv) -> torch.Tensor:
    if step.upsample:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    padding = step.weight.shape[-1] // 2
    return F.conv2d(F.pad(x, (padding,) * 4, mode="reflect"), step.weight, step.bias, step.stride)


def _act(x: torch.Tensor, step: Act) -> torch.Tensor:
    if step.kind == "relu":
        return F.relu(x)
    if step.kind == "sigmoid":
        return torch.sigmoid(x)
    if step.kind == "scale":
        return x * step.value
    if step.kind == "clamp":
        return x.clamp(0, step.value)
    raise ValueError(f"unknown activation {step.kind!r}")


def _tiled_conv(x: torch.Tensor, step: Conv, side: int, device: torch.device) -> torch.Tensor:
    kernel, stride = step.weight.shape[-1], step.stride
    padding = kernel // 2
    scale = 2 if step.upsample else 1
    out_height = (x.shape[2] * scale + 2 * padding - kernel) // stride + 1
    out_width = (x.shape[3] * scale + 2 * padding - kernel) // stride + 1
    out = torch.empty(x.shape[0], step.weight.shape[0], out_height, out_width, dtype=x.dtype, device=x.device)
    for top in range(0, out_height, side):
        bottom = min(top + side, out_height)
        rows = (top * stride - padding, (bottom - 1) * stride + kernel - padding)
        for left in range(0, out_width, side):
            right = min(left + side, out_width)
            cols = (left * stride - padding, (right - 1) * stride + kernel - padding)
            piece = _region(x, rows, cols, scale, device)
            out[:, :, top:bottom, left:right] = F.conv2d(piece, step.weight, step.bias, stride).to(out.device)
    return out


def _region(
    x: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], scale: int, device: torch.device
) -> torch.Tensor:
    """Rows and columns [start, stop) of x upsampled `scale` times, on `device`, reflected past the edges.

    Only what lies inside the frame is copied to the device; the nearest upsample and the reflection
    padding are then done on the tile. Reflection at a frame edge only reads pixels within the
    padding of that edge, which the tile holds, so the values are those of the whole-frame padding.
    """
    height, width = x.shape[2] * scale, x.shape[3] * scale
    top, bottom = max(rows[0], 0), min(rows[1], height)
    left, right = max(cols[0], 0), min(cols[1], width)
    piece = x[:, :, top // scale : (bottom - 1) // scale + 1, left // scale : (right - 1) // scale + 1].to(device)
    if scale > 1:
        piece = F.interpolate(piece, scale_factor=scale, mode="nearest")
        piece = piece[:, :, top % scale : top % scale + bottom - top, left % scale : left % scale + right - left]
    pads = (left - cols[0], cols[1] - right, top - rows[0], rows[1] - bottom)
    return F.pad(piece, pads, mode="reflect") if any(pads) else piece


def _bands(shape: Sequence[int], side: int) -> list[slice]:
    """Bands of whole rows, about four tiles' worth of pixels each, for pointwise work."""
    height, width = shape[2], shape[3]
    rows = max(1, side * side * 4 // max(1, width))
    return [slice(top, min(top + rows, height)) for top in range(0, height, rows)]


def _tiled_norm(x: torch.Tensor, step: Norm, side: int, device: torch.device, act: Act | None) -> torch.Tensor:
    """Instance norm with the mean and variance of the whole activation, then `act` if given.

    Each band's mean and variance (float32, as the untiled norm computes them) are combined into the
    frame's in float64 (Chan et al.'s parallel formula), in one pass over the activation.
    """
    count = mean = squares = None
    for rows in _bands(x.shape, side):
        band = x[:, :, rows].to(device)
        band_var, band_mean = torch.var_mean(band.float(), dim=(2, 3), correction=0)
        n = band.shape[2] * band.shape[3]
        band_mean, band_squares = band_mean.double(), band_var.double() * n
        if count is None:
            count, mean, squares = n, band_mean, band_squares
            continue
        delta = band_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        squares = squares + band_squares + delta.square() * (count * n / total)
        count = total
    scale = step.weight.to(device, torch.float64)[None] / torch.sqrt(squares / count + step.eps)
    shift = step.bias.to(device, torch.float64)[None] - mean * scale
    scale, shift = scale[:, :, None, None].to(x.dtype), shift[:, :, None, None].to(x.dtype)
    if act is None:
        return _pointwise(x, side, device, lambda band: band * scale + shift)
    return _pointwise(x, side, device, lambda band: _act(band * scale + shift, act))


def _pointwise(
    x: torch.Tensor, side: int, device: torch.device, function: Callable[..., torch.Tensor], rows: bool = False
) -> torch.Tensor:
    """Apply `function` band by band on the device, writing into x (which the caller owns)."""
    for band_rows in _bands(x.shape, side):
        band = x[:, :, band_rows].to(device)
        result = function(band, band_rows) if rows else function(band)
        x[:, :, band_rows] = result.to(x.device)
    return x


def default_tile(height: int, width: int) -> int:
    """A first tile side for a frame that did not fit: half its longer side, a power of two."""
    return max(64, 2 ** math.floor(math.log2(max(height, width, 2) - 1)))


def device_bytes(plan: Sequence[Step], shape: Sequence[int], itemsize: int) -> int:
    """Estimate the peak bytes of activations when `plan` runs untiled on a [N,C,H,W] `shape`.

    The largest (input + padded input + output) of any step plus the residuals held meanwhile; a
    planning figure (workspace of convolution algorithms comes on top), not a measurement.
    """
    batch, channels, height, width = shape
    held = peak = 0
    for step in plan:
        before = channels * height * width
        if isinstance(step, Conv):
            kernel, stride = step.weight.shape[-1], step.stride
            up = 2 if step.upsample else 1
            padded_h, padded_w = height * up + kernel // 2 * 2, width * up + kernel // 2 * 2
            height, width = (padded_h - kernel) // stride + 1, (padded_w - kernel) // stride + 1
            now = before + step.weight.shape[1] * padded_h * padded_w + step.weight.shape[0] * height * width
            channels = step.weight.shape[0]
        elif isinstance(step, Push):
            held += before
            now = before
        elif isinstance(step, Add):
            now = before * 2
            held -= before
        elif isinstance(step, Swap):
            now = before
        elif isinstance(step, Shrink | Grow):
            height, width = (height // step.factor, width // step.factor) if isinstance(step, Shrink) else (
                height * step.factor, width * step.factor)
            now = before + channels * height * width
        else:
            now = before * 2
        peak = max(peak, now + held)
    return batch * peak * itemsize
