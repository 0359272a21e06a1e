"""Toonify layer swapping between two generators, and style mixing of W+ latents."""

from __future__ import annotations

import math
import re

import torch

from server.models.stylegan2 import Generator

_LAYER = re.compile(r"(convs|to_rgbs|noises\.noise_)\.?(\d+)")


def layer_resolution(key: str) -> int | None:
    """The resolution a state dict entry works at; None for the mapping network."""
    if key.startswith(("input.", "conv1.", "to_rgb1.")):
        return 4
    found = _LAYER.match(key)
    if found is None:
        return None
    kind, index = found.group(1), int(found.group(2))
    if kind == "convs":
        return 2 ** (index // 2 + 3)
    if kind == "to_rgbs":
        return 2 ** (index + 3)
    return 2 ** ((index + 5) // 2)


def high_weight(resolution: int, swap_resolution: int, blend_width: float) -> float:
    """Share of the high-resolution generator at a layer: a step at `swap_resolution`, or a sigmoid in octaves."""
    if blend_width <= 0:
        return 1.0 if resolution >= swap_resolution else 0.0
    return 1 / (1 + math.exp(-(math.log2(resolution) - math.log2(swap_resolution)) / blend_width))


def blend_generators(low: Generator, high: Generator, swap_resolution: int, blend_width: float = 0.0) -> Generator:
    """A generator with `low`'s layers below `swap_resolution` and `high`'s from there up (weights interpolated).

    The mapping network is `low`'s. Both generators must have the same configuration.
    """
    if low.config != high.config:
        raise ValueError(
            f"cannot swap layers between generators of different shapes ({low.config.size} px, "
            f"{low.config.style_dim}-d vs {high.config.size} px, {high.config.style_dim}-d)"
        )
    low_state, high_state = low.state_dict(), high.state_dict()
    blended = {}
    for key, value in low_state.items():
        resolution = layer_resolution(key)
        share = 0.0 if resolution is None else high_weight(resolution, swap_resolution, blend_width)
        blended[key] = torch.lerp(value, high_state[key], share) if share else value
    generator = Generator(low.config).to(device=low.conv1.conv.weight.device, dtype=low.conv1.conv.weight.dtype)
    generator.load_state_dict(blended)
    return generator.eval().requires_grad_(False)


def mix_latents(latent: torch.Tensor, reference: torch.Tensor, first_layer: int) -> torch.Tensor:
    """W+ with rows from `first_layer` on (the finer layers: colour, texture) taken from `reference`."""
    mixed = latent.clone()
    mixed[:, first_layer:] = reference[:, first_layer:].expand(latent.shape[0], -1, -1)
    return mixed
