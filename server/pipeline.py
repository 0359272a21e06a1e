"""From a host's frame to stylized colour planes: layers, alpha, colour, highlights, network."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from server.colour import RAW, ColourSpaces, check_policy, from_network, to_network
from server.models import StyleModel
from server.temporal import LayerMotion, blend, layer_key
from vst_plugin.frame import ColourLayer, Frame, colour_layers
from vst_plugin.protocol import DEFAULT_COLORSPACE, ProtocolError


@dataclass(frozen=True)
class StylizeOptions:
    """The stylize request fields that shape the pipeline (docs/protocol.md, `stylize`)."""

    model: str
    params: dict[str, Any] = field(default_factory=dict)
    colorspace: str = DEFAULT_COLORSPACE
    highlights: str = "preserve"
    layers: tuple[str, ...] | None = None
    premultiplied: bool = True
    tile: int | None = None
    """Tile side in pixels to force tiled execution (server/tiling.py); None: the model decides."""

    @classmethod
    def from_request(cls, header: dict[str, Any], default_model: str) -> StylizeOptions:
        """Read and type-check the fields of a stylize request header."""
        model = header.get("model", default_model)
        params = header.get("params", {})
        colorspace = header.get("colorspace", DEFAULT_COLORSPACE)
        highlights = header.get("highlights", "preserve")
        layers = header.get("layers")
        premultiplied = header.get("premultiplied", True)
        tile = header.get("tile")
        if not isinstance(model, str) or not model:
            raise ProtocolError("bad_request", "'model' must be a model name (string)", header)
        if not isinstance(params, dict) or not all(isinstance(key, str) for key in params):
            raise ProtocolError("bad_request", "'params' must be a map from parameter names to values", header)
        if not isinstance(colorspace, str):
            raise ProtocolError("bad_request", "'colorspace' must be a colour space name", header)
        if not isinstance(highlights, str):
            raise ProtocolError("bad_request", "'highlights' must be a policy name", header)
        if layers is not None and (
            not isinstance(layers, list) or not layers or not all(isinstance(name, str) for name in layers)
        ):
            raise ProtocolError("bad_request", "'layers' must be a non-empty list of layer names", header)
        if not isinstance(premultiplied, bool):
            raise ProtocolError("bad_request", "'premultiplied' must be true or false", header)
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
            raise ProtocolError("bad_request", "'tile' must be a tile side in pixels (a positive integer)", header)
        layers = tuple(layers) if layers else None
        return cls(model, params, colorspace, highlights, layers, premultiplied, tile)


@dataclass(frozen=True)
class TemporalBlend:
    """How a frame blends with its predecessor: strength and each layer's motion (by layer key)."""

    strength: float
    motions: dict[str, LayerMotion]


class PipelineError(ValueError):
    """The frame or the options cannot be stylized as asked (reported as `bad_param`)."""


def check_options(options: StylizeOptions, colours: ColourSpaces) -> None:
    """Raise PipelineError for an unknown colour space or highlight policy."""
    try:
        colours.check(options.colorspace)
        check_policy(options.highlights)
    except ValueError as exc:
        raise PipelineError(str(exc)) from None


def find_layers(frame: Frame, options: StylizeOptions) -> list[ColourLayer]:
    """The colour layers to stylize, or PipelineError saying what the frame has instead."""
    layers = colour_layers(frame, list(options.layers) if options.layers else None)
    if not layers:
        channels = ", ".join(name for part in frame.parts for name in part.channels)
        wanted = f"layers {', '.join(options.layers)}" if options.layers else "R, G, B layer"
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
    options: StylizeOptions,
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
    """
    changed: dict[tuple[int, str], np.ndarray] = {}
    for layer in find_layers(frame, options):
        part = frame.parts[layer.part]
        if model.family == "identity":
            changed.update({(layer.part, name): part.channels[name] for name in layer.rgb})
            continue
        rgb = np.stack([part.channels[name] for name in layer.rgb], axis=-1).astype(np.float32)
        alpha = None
        if layer.alpha and options.premultiplied:
            alpha = part.channels[layer.alpha].astype(np.float32)[..., None]
            alpha = np.where(alpha > 0, alpha, np.float32(1))
            rgb /= alpha
        if options.colorspace != RAW:
            rgb = colours.to_linear(rgb, options.colorspace)
        key = layer_key(layer)
        layer_state = None if state is None else state.setdefault(key, {})
        post = None
        if temporal is not None and layer_state is not None:
            post = partial(blend, motion=temporal.motions.get(key), memory=layer_state, strength=temporal.strength)
        result = _run_network(rgb, model, params, options, layer_state, post)
        if options.colorspace != RAW:
            result = colours.from_linear(result, options.colorspace)
        if alpha is not None:
            result = result * alpha
        for index, name in enumerate(layer.rgb):
            changed[(layer.part, name)] = result[..., index].astype(part.channels[name].dtype)
    return changed


def _run_network(
    rgb: np.ndarray,
    model: StyleModel,
    params: dict[str, Any],
    options: StylizeOptions,
    state: dict[str, Any] | None,
    post: Callable[[torch.Tensor], torch.Tensor] | None,
) -> np.ndarray:
    """Linear (H, W, 3) float32 -> network (then `post` on its 0..1 output) -> linear (H, W, 3) float32."""
    linear = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(model.device)
    prepared = to_network(linear, options.highlights, encode=options.colorspace != RAW)
    output = model.stylize(prepared.encoded, tile=options.tile, state=state, **params)
    if post is not None:
        output = post(output)
    return from_network(output, prepared)[0].permute(1, 2, 0).cpu().numpy()
