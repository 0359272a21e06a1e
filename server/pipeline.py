"""From a host's frame to stylized colour planes: layers, alpha, colour, highlights, network."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from server.colour import ColourSpaces, from_network, to_network
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
    Alpha and all other channels are left alone; with `premultiplied`, pixels whose alpha is not
    above 0 keep their colour bit for bit (a merge shows nothing there). The `identity` model
    returns the colour planes as they came, without the colour pipeline: it measures what transport
    and serving cost. `state` is the model's memory of this sequence; each layer (a stereo view, a
    part) keeps its own in it. `temporal` blends each layer's previous result, warped along the
    motion, into the new one (server/temporal.py); it needs `state`.
    """
    changed: dict[tuple[int, str], np.ndarray] = {}
    for layer in find_layers(frame, settings):
        part = frame.parts[layer.part]
        if model.family == "identity":
            changed.update({(layer.part, name): part.channels[name] for name in layer.rgb})
            continue
        rgb = np.stack([part.channels[name] for name in layer.rgb], axis=-1).astype(np.float32)
        alpha = transparent = None
        if layer.alpha and settings.premultiplied:
            alpha = part.channels[layer.alpha].astype(np.float32)[..., None]
            transparent = ~(alpha[..., 0] > 0)  # alpha 0, negative or NaN: nothing to unpremultiply
            rgb /= np.where(transparent[..., None], np.float32(1), alpha)
        if settings.colorspace != RAW_COLORSPACE:
            rgb = colours.to_linear(rgb, settings.colorspace)
        key = layer_key(layer)
        layer_state = None if state is None else state.setdefault(key, {})
        post = None
        if temporal is not None and layer_state is not None:
            post = partial(blend, motion=temporal.motions.get(key), memory=layer_state, strength=temporal.strength)
        result = _run_network(rgb, model, params, settings, layer_state, post)
        if settings.colorspace != RAW_COLORSPACE:
            result = colours.from_linear(result, settings.colorspace)
        if alpha is not None:
            result = result * alpha
        for index, name in enumerate(layer.rgb):
            plane = result[..., index].astype(part.channels[name].dtype)
            if transparent is not None:  # transparent pixels come back bit for bit as they came
                plane[transparent] = part.channels[name][transparent]
            changed[(layer.part, name)] = plane
    return changed


def _run_network(
    rgb: np.ndarray,
    model: StyleModel,
    params: dict[str, Any],
    settings: StylizeSettings,
    state: dict[str, Any] | None,
    post: Callable[[torch.Tensor], torch.Tensor] | None,
) -> np.ndarray:
    """Linear (H, W, 3) float32 -> network (then `post` on its 0..1 output) -> linear (H, W, 3) float32."""
    linear = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(model.device)
    prepared = to_network(linear, settings.highlights, encode=settings.colorspace != RAW_COLORSPACE)
    output = model.stylize(prepared.encoded, tile=settings.tile, state=state, **params)
    if post is not None:
        output = post(output)
    return from_network(output, prepared)[0].permute(1, 2, 0).cpu().numpy()
