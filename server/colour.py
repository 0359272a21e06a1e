"""Colour pipeline: plate colour space <-> linear Rec.709 (OCIO) <-> the network's sRGB-encoded 0..1.

The conversions between colour spaces come from OCIO itself (PyOpenColorIO): the config named by
$OCIO when it is set, OCIO's built-in config otherwise. Each conversion runs as tensor operations on
the tensor's device (server/ocio_ops.py: the processor's own formulas where it has them, else a baked
3D LUT), checked against OCIO's CPU processor when first built. The highlight policies and the sRGB
curve run in torch too. docs/protocol.md describes the policies.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import numpy as np
import PyOpenColorIO as OCIO
import torch

from server.ocio_ops import DeviceTransform, device_transform
from vst_plugin.schema import HIGHLIGHT_POLICIES, RAW_COLORSPACE

log = logging.getLogger("vst.server")

LINEAR = "lin_rec709"
KNEE = 0.8
"""Where the `compress` policy starts rolling values off towards 1."""
LINEAR_ENCODINGS = ("scene-linear", "display-linear", "")
"""OCIO encodings whose values span a wide range (a log shaper if a conversion needs a 3D LUT)."""


class ColourError(ValueError):
    """An unknown colour space or highlight policy, or an OCIO config that cannot be read."""


def load_config() -> OCIO.Config:
    """The OCIO config named by $OCIO (a file or an ocio:// URI), else OCIO's built-in default."""
    try:
        if os.environ.get("OCIO"):
            return OCIO.Config.CreateFromEnv()
        return OCIO.Config.CreateFromBuiltinConfig("ocio://default")
    except OCIO.Exception as exc:
        raise ColourError(f"cannot read the OCIO config {os.environ.get('OCIO')!r}: {exc}") from None


class ColourSpaces:
    """Converts RGB between a plate's colour space and linear Rec.709 with the active OCIO config."""

    def __init__(self, config: OCIO.Config | None = None) -> None:
        self._config = config or load_config()
        self.config_name = self._config.getName() or os.environ.get("OCIO", "")
        names = list(self._config.getColorSpaceNames())
        for name in list(names):
            names.extend(self._config.getColorSpace(name).getAliases())
        self._names = set(names) | set(self._config.getRoleNames())
        linear = self._config.getColorSpace(LINEAR) or self._config.getColorSpace("scene_linear")
        if linear is None:
            raise ColourError(f"OCIO config {self.config_name} has neither {LINEAR} nor a scene_linear role")
        self._linear = linear.getName()
        if self._config.getColorSpace(LINEAR) is None:
            log.warning(
                "OCIO config %s has no %s colour space; the network's linear space is its scene_linear role %r",
                self.config_name, LINEAR, self._linear,
            )
        self._transforms: dict[tuple[str, str], DeviceTransform] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Every colour space name, alias and role of the config, plus `raw` (any case is accepted too)."""
        return sorted(self._names | {RAW_COLORSPACE}, key=str.lower)

    def resolve(self, space: str) -> str:
        """The config's own name for a colour space name, alias or role in any case; `raw` stays `raw`.

        Raises ColourError when the config does not know `space`.
        """
        if space == RAW_COLORSPACE:
            return RAW_COLORSPACE
        found = self._config.getColorSpace(space)
        if found is None:
            raise ColourError(
                f"unknown colour space {space!r} in OCIO config {self.config_name}; use one of its colour "
                "spaces, aliases or roles (e.g. lin_rec709, ACEScg, scene_linear, srgb_tx) or 'raw'"
            )
        return found.getName()

    def check(self, space: str) -> None:
        """Raise ColourError unless `space` is `raw` or a colour space, alias or role of the config."""
        self.resolve(space)

    def is_linear_rec709(self, space: str) -> bool:
        """True when no conversion is needed for `space`."""
        return space == RAW_COLORSPACE or self.transform(space, self._linear).kind == "identity"

    def transform(self, source: str, target: str) -> DeviceTransform:
        """The conversion from `source` to `target` as tensor operations (built once, then cached)."""
        key = (self.resolve(source), self.resolve(target))
        with self._lock:
            if key not in self._transforms:
                if RAW_COLORSPACE in key:
                    self._transforms[key] = DeviceTransform("identity")
                else:
                    processor = self._config.getProcessor(*key)
                    linear = self._config.getColorSpace(key[0]).getEncoding() in LINEAR_ENCODINGS
                    self._transforms[key] = built = device_transform(processor, linear)
                    log.info("OCIO %s -> %s: %s on the device (%.1e from OCIO's CPU processor)",
                             *key, built.kind, built.max_error)
            return self._transforms[key]

    def to_linear(self, rgb: torch.Tensor | np.ndarray, space: str) -> torch.Tensor | np.ndarray:
        """Convert [N, 3, H, W] float32 (on any device) or an (H, W, 3) array from `space` to linear Rec.709."""
        return _apply(self.transform(space, self._linear), rgb)

    def from_linear(self, rgb: torch.Tensor | np.ndarray, space: str) -> torch.Tensor | np.ndarray:
        """Convert [N, 3, H, W] float32 (on any device) or an (H, W, 3) array from linear Rec.709 to `space`."""
        return _apply(self.transform(self._linear, space), rgb)


def _apply(transform: DeviceTransform, rgb: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    if isinstance(rgb, torch.Tensor):
        return transform(rgb)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    return transform(tensor)[0].permute(1, 2, 0).contiguous().numpy()


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
    ceiling: torch.Tensor
    """Brightest finite input value per image, the cap of `compress`'s expansion."""
    original: torch.Tensor
    """The linear input: what the network does not see (above 1, below 0, non-finite) comes from it."""
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
    return NetworkInput(*shape_for_network(linear, policy, encode), linear, policy, encode)


def from_network(output: torch.Tensor, prepared: NetworkInput) -> torch.Tensor:
    """Map the network's 0..1 output back to linear values, inverting `to_network`."""
    return shape_back(output, prepared.original, prepared.ceiling, prepared.policy, prepared.encode)


def shape_for_network(linear: torch.Tensor, policy: str, encode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`to_network`'s tensors (encoded, ceiling; the ceiling only for `compress`): pure, fusable."""
    finite = torch.where(torch.isfinite(linear), linear, 0.0)
    if policy == "compress":
        ceiling = finite.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
        shaped = _compress(finite.clamp_min(0))
    else:
        ceiling = finite.new_ones(linear.shape[0], 1, 1, 1)
        shaped = finite.clamp(0, 1)
    return (srgb_encode(shaped) if encode else shaped), ceiling


def shape_back(
    output: torch.Tensor, original: torch.Tensor, ceiling: torch.Tensor, policy: str, encode: bool
) -> torch.Tensor:
    """`from_network` as a pure function of tensors, fusable: what the network did not see comes from
    `original` (the residual outside 0..1 for `preserve`, below 0 for `compress`; non-finite values)."""
    shaped = srgb_decode(output.clamp(0, 1)) if encode else output
    finite = torch.where(torch.isfinite(original), original, 0.0)
    if policy == "compress":
        result = _expand(shaped, ceiling) + finite.clamp_max(0)
    elif policy == "preserve":
        result = shaped + (finite - finite.clamp(0, 1))
    else:
        result = shaped
    return torch.where(torch.isfinite(original), result, original)
