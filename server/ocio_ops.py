"""OCIO processors as tensor operations on the model's device.

`device_transform(processor, scene_linear_source)` turns one OCIO processor into a `DeviceTransform`: a
chain of torch operations on [N, 3, H, W] float32 tensors. The processor is optimized losslessly and
walked op by op: matrices, exponents (with or without a linear segment), log curves (plain, affine,
camera) and ranges become the same formulas in torch; a 1D LUT is interpolated between its own entries.
A processor holding anything else (fixed functions, 3D LUTs, CDLs, grading ops) is baked as a whole into
a 65^3 3D LUT behind a shaper, applied with `grid_sample`: a log2 (asinh) shaper for scene-linear
sources (2^-10 .. 2^16, linear through zero), a linear one for encoded sources (-0.125 .. 1.5).

Every chain is checked against OCIO's own CPU processor on wide-range probe values when it is built;
`max_error` holds the largest error found (`error`). An exact chain that disagrees (an OCIO option not
modelled here) is replaced by the baked LUT.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import PyOpenColorIO as OCIO
import torch
import torch.nn.functional as F

log = logging.getLogger("vst.server")

Op = Callable[[torch.Tensor], torch.Tensor]

LUT3D_SIZE = 65
EXACT_TOLERANCE = 1e-4
"""An exact chain further than this from OCIO's CPU processor on the probes is replaced by a LUT."""
SHAPER_SCALE = 2.0**-10
"""The asinh shaper is linear below about this value and logarithmic above it."""
LINEAR_DOMAIN = (-1.0, 2.0**16)
ENCODED_DOMAIN = (-0.125, 1.5)
FLT_MIN = float(np.finfo(np.float32).tiny)


def error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """The largest |ours - theirs| / max(pixel's largest |theirs|, 1) over finite (count, 3) values.

    Absolute below 1, relative to the pixel's brightest channel above (a matrix on a saturated colour
    cancels large terms: its float32 error scales with the pixel, not with each channel).
    """
    theirs = theirs.astype(np.float64)
    ours = np.where(np.isfinite(ours), ours, 0)
    finite = np.isfinite(theirs) & (np.abs(theirs) < 1e30)
    scale = np.maximum(np.abs(np.where(finite, theirs, 0)).max(axis=1, keepdims=True), 1.0)
    diff = np.abs(np.where(finite, ours - theirs, 0)) / scale
    return float(diff.max(initial=0.0))


def probes(domain: tuple[float, float], count: int = 20000, seed: int = 0) -> np.ndarray:
    """Probe RGB values over a domain: a grey ramp and colours up to 50:1 between channels; (count, 3).

    Colours are a level times per-channel factors 0.02..1 (and a few channels slightly below 0): wider
    ratios at extreme levels only measure float32 cancellation, which a log curve then amplifies.
    """
    low, high = domain
    rng = np.random.default_rng(seed)
    if high > 4:  # scene-linear: spread evenly in the shaper's (log) coordinate
        level = np.sinh(rng.uniform(_asinh(max(low, 0) + SHAPER_SCALE), _asinh(high), size=(count, 1))) * SHAPER_SCALE
        ramp = np.sinh(np.linspace(_asinh(low), _asinh(high), 2000)) * SHAPER_SCALE
    else:
        level = rng.uniform(0, high, size=(count, 1))
        ramp = np.linspace(low, high, 2000)
    colours = level * rng.uniform(0.02, 1.0, size=(count, 3))
    negative = rng.random(size=(count, 3)) < 0.05
    colours[negative] = -0.05 * np.minimum(colours[negative], 1.0)
    grey = np.repeat(ramp[:, None], 3, axis=1)
    return np.concatenate([grey, colours]).astype(np.float32)


def _asinh(x: float) -> float:
    return math.asinh(x / SHAPER_SCALE)


def ocio_apply(cpu: OCIO.CPUProcessor, rgb: np.ndarray) -> np.ndarray:
    """OCIO's CPU processor on (..., 3) float32 values (a copy)."""
    out = np.ascontiguousarray(rgb, dtype=np.float32).copy()
    cpu.applyRGB(out)
    return out


def run_on_rows(ops: list[Op], rgb: np.ndarray) -> np.ndarray:
    """Apply a chain to (count, 3) values on the CPU, for checking."""
    x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).T[None, :, :, None].contiguous()
    for op in ops:
        x = op(x)
    return x[0, :, :, 0].T.numpy()


@dataclass
class DeviceTransform:
    """One OCIO conversion as tensor operations on [N, 3, H, W] float32 tensors on any device."""

    kind: str
    """identity, exact (the processor's own formulas) or lut (a baked 3D LUT behind a shaper)."""
    ops: list[Op] = field(default_factory=list)
    max_error: float = 0.0
    """Largest error against OCIO's CPU processor on the probe values (see `error`)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(x)
        return x


class _Params:
    """Per-channel constants kept on the CPU and copied once to each device that asks."""

    def __init__(self, *values: np.ndarray | float):
        self._cpu = [torch.as_tensor(np.asarray(v, np.float32)).reshape(1, -1, 1, 1) for v in values]
        self._devices: dict[torch.device, list[torch.Tensor]] = {}

    def on(self, device: torch.device) -> list[torch.Tensor]:
        if device not in self._devices:
            self._devices[device] = [t.to(device) for t in self._cpu]
        return self._devices[device]


def _matrix(transform: OCIO.MatrixTransform, inverse: bool) -> Op:
    m = np.array(transform.getMatrix(), np.float64).reshape(4, 4)
    offset = np.array(transform.getOffset(), np.float64)
    if inverse:
        m = np.linalg.inv(m)
        offset = -m @ offset
    if np.abs(m[:3, 3]).max() > 0 or np.abs(m[3, :3]).max() > 0:
        raise NotImplementedError("a matrix that mixes alpha into colour")
    matrix = torch.from_numpy(m[:3, :3].astype(np.float32))
    params = _Params(offset[:3])
    cache: dict[torch.device, torch.Tensor] = {}

    def op(x: torch.Tensor) -> torch.Tensor:
        if x.device not in cache:
            cache[x.device] = matrix.to(x.device)
        (shift,) = params.on(x.device)
        return torch.einsum("ij,njhw->nihw", cache[x.device], x) + shift

    return op


def _exponent(transform: OCIO.ExponentTransform, inverse: bool) -> Op:
    gamma = np.array(transform.getValue()[:3], np.float64)
    params = _Params(1 / gamma if inverse else gamma)
    style = transform.getNegativeStyle()

    def op(x: torch.Tensor) -> torch.Tensor:
        (g,) = params.on(x.device)
        if style == OCIO.NEGATIVE_MIRROR:
            return torch.sign(x) * x.abs().pow(g)
        if style == OCIO.NEGATIVE_PASS_THRU:
            return torch.where(x < 0, x, x.clamp_min(0).pow(g))
        return x.clamp_min(0).pow(g)

    return op


def _exponent_linear(transform: OCIO.ExponentWithLinearTransform, inverse: bool) -> Op:
    """OCIO's moncurve: forward decodes ((x + o) / (1 + o))^g above the break, x * slope below it."""
    g = np.array(transform.getGamma()[:3], np.float64)
    o = np.array(transform.getOffset()[:3], np.float64)
    x_break = o / (g - 1)
    slope = (o * g / ((g - 1) * (1 + o))) ** g * (g - 1) / o
    y_break = x_break * slope
    params = _Params(g, o, x_break, slope, y_break)
    mirror = transform.getNegativeStyle() == OCIO.NEGATIVE_MIRROR

    def curve(x: torch.Tensor, device: torch.device) -> torch.Tensor:
        g, o, x_break, slope, y_break = params.on(device)
        if inverse:
            return torch.where(x >= y_break, (1 + o) * x.clamp_min(0).pow(1 / g) - o, x / slope)
        return torch.where(x >= x_break, ((x.clamp_min(0) + o) / (1 + o)).pow(g), x * slope)

    def op(x: torch.Tensor) -> torch.Tensor:
        if mirror:
            return torch.sign(x) * curve(x.abs(), x.device)
        return curve(x, x.device)

    return op


def _log(transform: OCIO.LogTransform, inverse: bool) -> Op:
    base = float(transform.getBase())

    def op(x: torch.Tensor) -> torch.Tensor:
        if inverse:
            return torch.pow(base, x)
        return torch.log2(x.clamp_min(FLT_MIN)) / math.log2(base)

    return op


def _log_affine(transform: OCIO.LogAffineTransform | OCIO.LogCameraTransform, inverse: bool) -> Op:
    base = float(transform.getBase())
    log_slope = np.array(transform.getLogSideSlopeValue(), np.float64)
    log_offset = np.array(transform.getLogSideOffsetValue(), np.float64)
    lin_slope = np.array(transform.getLinSideSlopeValue(), np.float64)
    lin_offset = np.array(transform.getLinSideOffsetValue(), np.float64)
    camera = isinstance(transform, OCIO.LogCameraTransform)
    if camera:
        lin_break = np.array(transform.getLinSideBreakValue(), np.float64)
        log_break = log_slope * np.log(lin_slope * lin_break + lin_offset) / math.log(base) + log_offset
        if transform.isLinearSlopeValueSet():
            linear_slope = np.array(transform.getLinearSlopeValue(), np.float64)
        else:
            linear_slope = log_slope * lin_slope / ((lin_slope * lin_break + lin_offset) * math.log(base))
        linear_offset = log_break - linear_slope * lin_break
    else:
        lin_break = log_break = linear_slope = linear_offset = np.zeros(3)
    params = _Params(log_slope, log_offset, lin_slope, lin_offset, lin_break, log_break, linear_slope, linear_offset)
    to_log2 = 1 / math.log2(base)

    def op(x: torch.Tensor) -> torch.Tensor:
        ls, lo, ns, no, nb, gb, ms, mo = params.on(x.device)
        if inverse:
            y = (torch.pow(base, (x - lo) / ls) - no) / ns
            return torch.where(x < gb, (x - mo) / ms, y) if camera else y
        y = ls * torch.log2((ns * x + no).clamp_min(FLT_MIN)) * to_log2 + lo
        return torch.where(x < nb, ms * x + mo, y) if camera else y

    return op


def _range(transform: OCIO.RangeTransform, inverse: bool) -> Op:
    ends = [
        transform.getMinInValue() if transform.hasMinInValue() else None,
        transform.getMaxInValue() if transform.hasMaxInValue() else None,
        transform.getMinOutValue() if transform.hasMinOutValue() else None,
        transform.getMaxOutValue() if transform.hasMaxOutValue() else None,
    ]
    min_in, max_in, min_out, max_out = ends[2:] + ends[:2] if inverse else ends
    clamp = transform.getStyle() == OCIO.RANGE_CLAMP
    if min_in is not None and max_in is not None:
        scale = (max_out - min_out) / (max_in - min_in)
        offset = min_out - min_in * scale
    else:
        scale = 1.0
        offset = (min_out - min_in) if min_in is not None else (max_out - max_in if max_in is not None else 0.0)
    low = min_out if clamp else None
    high = max_out if clamp else None

    def op(x: torch.Tensor) -> torch.Tensor:
        y = x * scale + offset
        return y.clamp(low, high) if low is not None or high is not None else y

    return op


def _lut1d(transform: OCIO.Lut1DTransform, inverse: bool) -> Op:
    """A 1D LUT, either direction, as piecewise-linear interpolation between its own entries.

    The entries sit at evenly spaced inputs 0..1, or at every finite half float (a half-domain LUT);
    the inverse swaps inputs and outputs, which needs entries that never decrease; other inverses
    (half-domain ones) are sampled through OCIO at 65536 points over their input range and interpolated. Outside the
    entries the ends hold, as in OCIO.
    """
    size = transform.getLength()
    values = np.asarray(transform.getData(), np.float64).reshape(size, 3)
    if transform.getInputHalfDomain():
        inputs = np.arange(size, dtype=np.uint16).view(np.float16).astype(np.float64)
    else:
        inputs = np.linspace(0.0, 1.0, size)
    keep = np.isfinite(inputs) & np.isfinite(values).all(axis=1)
    inputs, values = inputs[keep], values[keep]
    order = np.argsort(inputs, kind="stable")
    inputs, values = np.repeat(inputs[order, None], 3, axis=1), values[order]
    if inverse:
        if transform.getInputHalfDomain() or (np.diff(values, axis=0) < 0).any():
            return _sampled1d(transform, (float(values.min()), float(values.max())))
        inputs, values = values, inputs
    xs = torch.from_numpy(np.ascontiguousarray(inputs.T, np.float32))
    ys = torch.from_numpy(np.ascontiguousarray(values.T, np.float32))
    cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def op(x: torch.Tensor) -> torch.Tensor:
        if x.device not in cache:
            cache[x.device] = (xs.to(x.device), ys.to(x.device))
        return _interp1d(*cache[x.device], x)

    return op


def _sampled1d(transform: OCIO.Transform, domain: tuple[float, float], size: int = 65536) -> Op:
    """A per-channel transform sampled through OCIO at `size` points over `domain` and interpolated."""
    group = OCIO.GroupTransform()
    group.appendTransform(transform)
    cpu = OCIO.Config.CreateRaw().getProcessor(group).getDefaultCPUProcessor()
    shaper = _Shaper(domain, log=domain[1] - domain[0] > 4)
    samples = shaper.inverse(np.linspace(-1, 1, size))
    table = ocio_apply(cpu, np.repeat(samples[:, None], 3, axis=1).astype(np.float32))
    xs = torch.linspace(-1, 1, size).repeat(3, 1)
    ys = torch.from_numpy(np.ascontiguousarray(table.T))
    cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def op(x: torch.Tensor) -> torch.Tensor:
        if x.device not in cache:
            cache[x.device] = (xs.to(x.device), ys.to(x.device))
        return _interp1d(*cache[x.device], shaper(x))

    return op


def _interp1d(xs: torch.Tensor, ys: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-channel piecewise-linear interpolation through (xs, ys) (3, n), xs ascending, ends held."""
    out = torch.empty_like(x)
    last = xs.shape[1] - 2
    for c in range(3):
        v = x[:, c].contiguous()
        index = (torch.searchsorted(xs[c], v, right=True) - 1).clamp(0, last)
        x0, x1 = xs[c][index], xs[c][index + 1]
        t = ((v - x0) / (x1 - x0).clamp_min(1e-30)).clamp(0, 1)
        out[:, c] = torch.lerp(ys[c][index], ys[c][index + 1], t)
    return torch.where(torch.isnan(x), x, out)


class _Shaper:
    """Maps a value domain onto -1..1: linearly, or as asinh (logarithmic above SHAPER_SCALE)."""

    def __init__(self, domain: tuple[float, float], log: bool):
        self.log = log
        lo, hi = domain
        self.lo, self.hi = (math.asinh(lo / SHAPER_SCALE), math.asinh(hi / SHAPER_SCALE)) if log else (lo, hi)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.asinh(x * (1 / SHAPER_SCALE)) if self.log else x
        return (s - self.lo) * (2 / (self.hi - self.lo)) - 1

    def inverse(self, s: np.ndarray) -> np.ndarray:
        v = (np.asarray(s, np.float64) + 1) * (self.hi - self.lo) / 2 + self.lo
        return np.sinh(v) * SHAPER_SCALE if self.log else v


def _lut3d(cpu: OCIO.CPUProcessor, scene_linear: bool) -> Op:
    """The whole processor baked into a LUT3D_SIZE^3 grid behind a shaper, applied with grid_sample."""
    shaper = _Shaper(LINEAR_DOMAIN if scene_linear else ENCODED_DOMAIN, log=scene_linear)
    axis = shaper.inverse(np.linspace(-1, 1, LUT3D_SIZE)).astype(np.float32)
    b, g, r = np.meshgrid(axis, axis, axis, indexing="ij")
    lattice = ocio_apply(cpu, np.stack([r, g, b], axis=-1))  # [b, g, r, 3]: x (last axis) indexes red
    cpu_lut = torch.from_numpy(np.ascontiguousarray(lattice.transpose(3, 0, 1, 2)))[None]  # [1, 3, D, H, W]
    cache: dict[torch.device, torch.Tensor] = {}

    def op(x: torch.Tensor) -> torch.Tensor:
        if x.device not in cache:
            cache[x.device] = cpu_lut.to(x.device)
        grid = shaper(x).permute(0, 2, 3, 1).unsqueeze(1)  # [N, 1, H, W, 3] as (r, g, b) = (x, y, z)
        lut = cache[x.device].expand(x.shape[0], -1, -1, -1, -1)
        out = F.grid_sample(lut, grid.nan_to_num(0.0), mode="bilinear", padding_mode="border", align_corners=True)
        return out[:, :, 0]

    return op


EXACT: dict[type, Callable[[OCIO.Transform, bool], Op]] = {
    OCIO.MatrixTransform: _matrix,
    OCIO.ExponentTransform: _exponent,
    OCIO.ExponentWithLinearTransform: _exponent_linear,
    OCIO.LogTransform: _log,
    OCIO.LogAffineTransform: _log_affine,
    OCIO.LogCameraTransform: _log_affine,
    OCIO.RangeTransform: _range,
    OCIO.Lut1DTransform: _lut1d,
}


def exact_ops(processor: OCIO.Processor) -> list[Op]:
    """The processor's ops as torch functions; NotImplementedError for an op with no torch form here."""
    group = processor.getOptimizedProcessor(OCIO.OPTIMIZATION_LOSSLESS).createGroupTransform()
    ops = []
    for transform in group:
        build = EXACT.get(type(transform))
        if build is None:
            raise NotImplementedError(type(transform).__name__)
        ops.append(build(transform, transform.getDirection() == OCIO.TRANSFORM_DIR_INVERSE))
    return ops


def device_transform(processor: OCIO.Processor, scene_linear_source: bool) -> DeviceTransform:
    """The processor as tensor operations, checked against OCIO's CPU processor (see the module doc)."""
    if processor.isNoOp():
        return DeviceTransform("identity")
    cpu = processor.getDefaultCPUProcessor()
    values = probes(LINEAR_DOMAIN if scene_linear_source else ENCODED_DOMAIN)
    expected = ocio_apply(cpu, values)
    try:
        ops = exact_ops(processor)
        found = error(run_on_rows(ops, values), expected)
        if found <= EXACT_TOLERANCE:
            return DeviceTransform("exact", ops, found)
        log.warning("OCIO chain %s differs from OCIO by %.2g in torch; baking it into a 3D LUT",
                    [type(t).__name__ for t in processor.createGroupTransform()], found)
    except NotImplementedError:
        pass
    ops = [_lut3d(cpu, scene_linear_source)]
    return DeviceTransform("lut", ops, error(run_on_rows(ops, values), expected))
