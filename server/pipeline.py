"""From a host's frame to stylized colour planes: layers, alpha, colour, highlights, network."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from server.colour import ColourSpaces, check_policy, shape_back, shape_for_network
from server.fused import Fused
from server.models import StyleModel
from server.temporal import LayerMotion, blend, layer_key
from vst_plugin.frame import ColourLayer, Frame, colour_layers
from vst_plugin.schema import RAW_COLORSPACE, StylizeSettings


@dataclass(frozen=True)
class TemporalBlend:
    """How a frame blends with its predecessor: strength and each layer's motion (by layer key)."""

    strength: float
    motions: dict[str, LayerMotion]


class PipelineError(ValueError):
    """The frame or the settings cannot be stylized as asked (reported as `bad_param`)."""


def find_layers(frame: Frame, settings: StylizeSettings) -> list[ColourLayer]:
    """The colour layers to stylize, or PipelineError saying what the frame has instead."""
    layers = colour_layers(frame, list(settings.layers) if settings.layers else None)
    if not layers:
        channels = ", ".join(name for part in frame.parts for name in part.channels)
        wanted = f"layers {', '.join(settings.layers)}" if settings.layers else "R, G, B layer"
        raise PipelineError(f"the frame has no {wanted} to stylize (its channels: {channels})")
    for layer in layers:
        part = frame.parts[layer.part]
        for name in (*layer.rgb, *([layer.alpha] if layer.alpha else [])):
            if part.channels[name].dtype.kind != "f":
                raise PipelineError(f"channel {name!r} is an integer channel; colour must be half or float")
    return layers


def stylize_frame(
    frame: Frame,
    model: StyleModel,
    params: dict[str, Any],
    settings: StylizeSettings,
    colours: ColourSpaces,
    state: dict[str, Any] | None = None,
    temporal: TemporalBlend | None = None,
) -> dict[tuple[int, str], np.ndarray]:
    """Stylize every chosen colour layer of a frame.

    Returns the new planes keyed by (part index, channel name), in the plates' own pixel types.
    Alpha and all other channels are left alone. The `identity` model returns the colour planes as
    they came, without the colour pipeline: it measures what transport and serving cost. `state` is
    the model's memory of this sequence; each layer (a stereo view, a part) keeps its own in it.
    `temporal` blends each layer's previous result, warped along the motion, into the new one
    (server/temporal.py); it needs `state`.

    Every per-pixel stage runs on the model's device (`stylize_planes`): the raw planes go up once
    and only the three new colour planes come back.
    """
    changed: dict[tuple[int, str], np.ndarray] = {}
    for layer in find_layers(frame, settings):
        part = frame.parts[layer.part]
        if model.family == "identity":
            changed.update({(layer.part, name): part.channels[name] for name in layer.rgb})
            continue
        key = layer_key(layer)
        layer_state = None if state is None else state.setdefault(key, {})
        post = None
        if temporal is not None and layer_state is not None:
            post = partial(blend, motion=temporal.motions.get(key), memory=layer_state, strength=temporal.strength)
        rgb = [part.channels[name] for name in layer.rgb]
        alpha = part.channels[layer.alpha] if layer.alpha and settings.premultiplied else None
        result = stylize_planes(rgb, alpha, model, params, settings, colours, layer_state, post)
        changed.update({(layer.part, name): plane for name, plane in zip(layer.rgb, result, strict=True)})
    return changed


def stylize_planes(
    rgb: list[np.ndarray],
    alpha: np.ndarray | None,
    model: StyleModel,
    params: dict[str, Any],
    settings: StylizeSettings,
    colours: ColourSpaces,
    state: dict[str, Any] | None = None,
    post: Callable[[torch.Tensor], torch.Tensor] | None = None,
    stages: dict[str, float] | None = None,
) -> list[np.ndarray]:
    """Three colour planes (and a premultiplying alpha) -> three stylized planes in their own pixel types.

    On the model's device: channel assembly, unpremultiply (only where alpha > 0), plate colour space
    -> linear, highlight policy and sRGB encoding (server/colour.py), the network (then `post`), the
    inverse path, premultiply with the original alpha and the cast back. Pixels with alpha <= 0 and
    non-finite values come back bit-identical to the input. `stages`, when given, receives each
    stage's milliseconds (the device synchronised between stages, so only for measuring).
    """
    device = model.device
    clock = _Stopwatch(device, stages)
    planes = upload([*rgb, *([alpha] if alpha is not None else [])], device)
    alpha_plane = planes[3] if alpha is not None else None
    clock.lap("upload")
    plate, work = ASSEMBLE(*planes[:3], alpha_plane)
    clock.lap("assemble+unpremultiply")
    encode = settings.colorspace != RAW_COLORSPACE
    if encode:
        work = colours.to_linear(work, settings.colorspace)
    clock.lap("to linear (OCIO)")
    check_policy(settings.highlights)
    encoded, ceiling = SHAPE(work, settings.highlights, encode)
    clock.lap("highlights+sRGB")
    output = model.stylize(encoded, tile=settings.tile, state=state, **params)
    if post is not None:
        output = post(output)
    clock.lap("network")
    result = SHAPE_BACK(output, work, ceiling, settings.highlights, encode)
    clock.lap("inverse highlights+sRGB")
    if encode:
        result = colours.from_linear(result, settings.colorspace)
    clock.lap("from linear (OCIO)")
    result = FINISH(result, plate, alpha_plane, *(plane.dtype for plane in planes[:3]))
    clock.lap("premultiply+cast")
    planes_out = download(list(result))
    clock.lap("download")
    return planes_out


def _assemble(
    r: torch.Tensor, g: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plate [1, 3, H, W] float32, and its colour unpremultiplied where alpha > 0."""
    plate = torch.stack([r.to(torch.float32), g.to(torch.float32), b.to(torch.float32)])[None]
    if alpha is None:
        return plate, plate
    a = alpha.to(torch.float32)[None, None]
    covered = a > 0
    return plate, torch.where(covered, plate / torch.where(covered, a, 1.0), plate)


def _finish(
    result: torch.Tensor,
    plate: torch.Tensor,
    alpha: torch.Tensor | None,
    r: torch.dtype,
    g: torch.dtype,
    b: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Premultiply by the original alpha; alpha <= 0 and non-finite plate pixels as they were; cast back."""
    if alpha is not None:
        a = alpha.to(torch.float32)[None, None]
        result = torch.where(a > 0, result * a, plate)
    result = torch.where(torch.isfinite(plate), result, plate)
    return result[0, 0].to(r), result[0, 1].to(g), result[0, 2].to(b)


ASSEMBLE = Fused(_assemble)
SHAPE = Fused(shape_for_network)
SHAPE_BACK = Fused(shape_back)
FINISH = Fused(_finish)


def warm_up(device: torch.device) -> None:
    """Start compiling the fused stages for the usual plates in the background (RGBA half, then RGB half;
    the default highlight policy, a colour space to encode), so that a new server's first frames find
    them ready. Other kinds (float planes, another policy, raw) compile on their first frame.

    Sides differ and exceed 1, so the compiled code is not specialised to square or single-pixel frames.
    Nothing happens where the stages run op by op (`VST_COMPILE=0`).
    """
    if ASSEMBLE.eager:
        return
    policy = StylizeSettings().highlights
    for with_alpha in (True, False):
        planes = [torch.zeros(10, 14, dtype=torch.float16, device=device) for _ in range(4)]
        alpha = planes[3] if with_alpha else None
        plate, work = ASSEMBLE(*planes[:3], alpha)
        encoded, ceiling = SHAPE(work, policy, True)
        result = SHAPE_BACK(encoded, work, ceiling, policy, True)
        FINISH(result, plate, alpha, *(plane.dtype for plane in planes[:3]))


class _Stopwatch:
    """Per-stage milliseconds into `stages` (nothing at all when it is None)."""

    def __init__(self, device: torch.device, stages: dict[str, float] | None):
        self._device = device
        self._stages = stages
        self._last = time.perf_counter() if stages is not None else 0.0

    def lap(self, name: str) -> None:
        if self._stages is None:
            return
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        now = time.perf_counter()
        self._stages[name] = self._stages.get(name, 0.0) + (now - self._last) * 1000
        self._last = now


def upload(planes: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Host planes -> tensors on the device in their own dtypes (on CUDA: pinned memory, a copy stream)."""
    with warnings.catch_warnings():  # planes may be read-only views of a message; they are only read
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        hosts = [torch.from_numpy(np.ascontiguousarray(plane)) for plane in planes]
    if device.type != "cuda":
        return [host.to(device) for host in hosts]
    stream = _copy_stream(device)
    with torch.cuda.stream(stream):
        tensors = [host.pin_memory().to(device, non_blocking=True) for host in hosts]
    torch.cuda.current_stream(device).wait_stream(stream)
    for tensor in tensors:
        tensor.record_stream(torch.cuda.current_stream(device))
    return tensors


def download(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Device tensors -> host arrays (on CUDA: into pinned memory on the copy stream, then waited for)."""
    if not tensors or tensors[0].device.type != "cuda":
        return [tensor.cpu().numpy() for tensor in tensors]
    device = tensors[0].device
    stream = _copy_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in tensors]
    stream.synchronize()
    return [host.numpy() for host in hosts]


_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per CUDA device for host <-> device copies, so they overlap compute."""
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]
