"""Colour pipeline: plate colour space <-> linear Rec.709 (OCIO) <-> the network's sRGB-encoded 0..1.

The conversions between colour spaces use OCIO through OpenImageIO: the config named by $OCIO when it
is set, OCIO's built-in config otherwise. The highlight policies and the sRGB curve run in torch on
the model's device. docs/protocol.md describes the policies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import OpenImageIO as oiio
import torch

from vst_plugin.schema import HIGHLIGHT_POLICIES, RAW_COLORSPACE

log = logging.getLogger("vst.server")

LINEAR = "lin_rec709"
KNEE = 0.8
"""Where the `compress` policy starts rolling values off towards 1."""


class ColourError(ValueError):
    """An unknown colour space or highlight policy."""


class ColourSpaces:
    """Converts RGB between a plate's colour space and linear Rec.709 with the active OCIO config."""

    def __init__(self) -> None:
        self._config = oiio.ColorConfig()
        self.config_name = self._config.configname()
        names = list(self._config.getColorSpaceNames())
        for name in list(names):
            names.extend(self._config.getAliases(name))
        self._names = set(names) | set(self._config.getRoles())
        self._linear = self.resolve(LINEAR if self._known(LINEAR) else "scene_linear")
        if not self._known(LINEAR):
            log.warning(
                "OCIO config %s has no %s colour space; the network's linear space is its scene_linear role %r",
                self.config_name, LINEAR, self._linear,
            )

    def names(self) -> list[str]:
        """Every colour space name, alias and role of the config, plus `raw` (any case is accepted too)."""
        return sorted(self._names | {RAW_COLORSPACE}, key=str.lower)

    def _known(self, space: str) -> bool:
        return self._config.getColorSpaceIndex(space) >= 0

    def resolve(self, space: str) -> str:
        """The config's own name for a colour space name, alias or role in any case; `raw` stays `raw`.

        Raises ColourError when the config does not know `space`.
        """
        if space == RAW_COLORSPACE:
            return RAW_COLORSPACE
        if not self._known(space):
            raise ColourError(
                f"unknown colour space {space!r} in OCIO config {self.config_name}; use one of its colour "
                "spaces, aliases or roles (e.g. lin_rec709, ACEScg, scene_linear, srgb_tx) or 'raw'"
            )
        return self._config.resolve(space)

    def check(self, space: str) -> None:
        """Raise ColourError unless `space` is `raw` or a colour space, alias or role of the config."""
        self.resolve(space)

    def is_linear_rec709(self, space: str) -> bool:
        """True when no conversion is needed for `space`."""
        return space == RAW_COLORSPACE or space == self._linear or self._config.equivalent(space, self._linear)

    def to_linear(self, rgb: np.ndarray, space: str) -> np.ndarray:
        """Convert an (H, W, 3) float32 array from `space` to linear Rec.709."""
        return self._convert(rgb, space, self._linear)

    def from_linear(self, rgb: np.ndarray, space: str) -> np.ndarray:
        """Convert an (H, W, 3) float32 array from linear Rec.709 to `space`."""
        return self._convert(rgb, self._linear, space)

    def _convert(self, rgb: np.ndarray, source: str, target: str) -> np.ndarray:
        source, target = self.resolve(source), self.resolve(target)
        if self.is_linear_rec709(source if target == self._linear else target):
            return rgb
        result = oiio.ImageBufAlgo.colorconvert(oiio.ImageBuf(np.ascontiguousarray(rgb)), source, target, False)
        if result.has_error:
            raise ColourError(f"OCIO conversion {source} -> {target} failed: {result.geterror()}")
        return result.get_pixels(oiio.FLOAT)


def srgb_encode(x: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer function (IEC 61966-2-1) for values in 0..1."""
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308).pow(1 / 2.4) - 0.055)


def srgb_decode(y: torch.Tensor) -> torch.Tensor:
    """Inverse of `srgb_encode` for values in 0..1."""
    return torch.where(y <= 0.04045, y / 12.92, ((y.clamp_min(0.04045) + 0.055) / 1.055).pow(2.4))


def _compress(x: torch.Tensor) -> torch.Tensor:
    t = (x - KNEE).clamp_min(0) / (1 - KNEE)
    return torch.where(x <= KNEE, x, KNEE + (1 - KNEE) * t / (1 + t))


def _expand(y: torch.Tensor, ceiling: torch.Tensor) -> torch.Tensor:
    s = ((y - KNEE) / (1 - KNEE)).clamp(0, 1 - 1e-6)
    return torch.where(y <= KNEE, y, torch.minimum(KNEE + (1 - KNEE) * s / (1 - s), ceiling))


@dataclass
class NetworkInput:
    """The network's view of a plate and what is needed to map its output back."""

    encoded: torch.Tensor
    """[N, 3, H, W] sRGB-encoded (or raw) values in 0..1: what the network sees."""
    residual: torch.Tensor
    """Linear values the network does not see, added back after it (preserve / negatives)."""
    ceiling: torch.Tensor
    """Brightest finite input value per image, the cap of `compress`'s expansion."""
    passthrough: torch.Tensor
    """Mask of non-finite input pixels, which come back as they were."""
    original: torch.Tensor
    policy: str
    encode: bool


def check_policy(policy: str) -> None:
    """Raise ColourError for an unknown highlight policy."""
    if policy not in HIGHLIGHT_POLICIES:
        raise ColourError(f"unknown highlight policy {policy!r}; use one of {', '.join(HIGHLIGHT_POLICIES)}")


def to_network(linear: torch.Tensor, policy: str, encode: bool = True) -> NetworkInput:
    """Prepare linear values [N, 3, H, W] for the network under a highlight policy.

    `encode` False (colour space `raw`) skips the sRGB curve; the policy still decides what happens
    to values outside 0..1.
    """
    check_policy(policy)
    passthrough = ~torch.isfinite(linear)
    finite = torch.where(passthrough, torch.zeros_like(linear), linear)
    ceiling = finite.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    if policy == "compress":
        shaped = _compress(finite.clamp_min(0))
        residual = finite.clamp_max(0)
    else:
        shaped = finite.clamp(0, 1)
        residual = finite - shaped if policy == "preserve" else torch.zeros_like(finite)
    encoded = srgb_encode(shaped) if encode else shaped
    return NetworkInput(encoded, residual, ceiling, passthrough, linear, policy, encode)


def from_network(output: torch.Tensor, prepared: NetworkInput) -> torch.Tensor:
    """Map the network's 0..1 output back to linear values, inverting `to_network`."""
    shaped = srgb_decode(output.clamp(0, 1)) if prepared.encode else output
    if prepared.policy == "compress":
        shaped = _expand(shaped, prepared.ceiling)
    result = shaped + prepared.residual
    return torch.where(prepared.passthrough, prepared.original, result)
