"""StyleGAN2 generators in the rosinality/stylegan2-pytorch layout, in pure PyTorch.

Checkpoints of rosinality's ``train.py`` and converted releases (toonify, JoJoGAN, DualStyleGAN,
VToonify bases) load unchanged; the state dict keys are rosinality's::

    style.{1..n_mlp}.{weight,bias}          mapping network (EqualLinear, lr_mul 0.01; style.0 = PixelNorm)
    input.input                             [1, C, 4, 4] learned constant
    conv1.*, to_rgb1.*                      the 4 px layer and its RGB output
    convs.{i}.*                             two per resolution 8..size; even i upsample (conv.blur.kernel)
    to_rgbs.{i}.*                           RGB output per resolution 8..size (upsample.kernel: the skip)
    noises.noise_{i}                        [1, 1, 2^r, 2^r] constant noise, r = (i + 5) // 2

A StyledConv holds ``conv.weight`` [1, out, in, k, k], ``conv.modulation.{weight,bias}``,
``noise.weight`` and ``activate.bias``. Size, style dimension, mapping depth and channel widths are
read from the tensor shapes (`GeneratorConfig.from_state_dict`), so channel multipliers 1 and 2 and
narrower test networks all load.

The compiled CUDA ops of the original (upfirdn2d, fused_leaky_relu) are written here with plain torch
operations; they run on CPU and GPU alike. The family's `load` wraps the generator in the plate
path of `server.stylegan` (invert, synthesize, composite).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import ModelDescriptor
from .checkpoint import StateDict

FAMILY = "stylegan2"

BLUR_KERNEL = (1, 3, 3, 1)
MAPPING_LR_MUL = 0.01
_REQUIRED = ("style.1.weight", "input.input", "conv1.conv.weight", "conv1.conv.modulation.weight", "to_rgb1.bias")
_STYLE_KEY = re.compile(r"style\.(\d+)\.weight")
_TO_RGB_KEY = re.compile(r"to_rgbs\.(\d+)\.bias")


def stylegan2_channels(channel_multiplier: int) -> dict[int, int]:
    """The channel width per resolution of the published StyleGAN2 configurations."""
    return {
        4: 512, 8: 512, 16: 512, 32: 512,
        64: 256 * channel_multiplier, 128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
        512: 32 * channel_multiplier, 1024: 16 * channel_multiplier,
    }


@dataclass(frozen=True)
class GeneratorConfig:
    """The shape of a generator: output size, style dimension, mapping depth, channels per resolution."""

    size: int
    style_dim: int
    n_mlp: int
    channels: Mapping[int, int]

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """Number of W+ rows: one per style input (2 per resolution, minus the 4 px layer's spare one)."""
        return self.log_size * 2 - 2

    @property
    def channel_multiplier(self) -> int | None:
        """1 or 2 for the published widths; None for other widths, or sizes below 64 where it is unseen."""
        if self.size < 64 or self.channels[64] % 256:
            return None
        multiplier = self.channels[64] // 256
        standard = stylegan2_channels(multiplier)
        return multiplier if all(self.channels[r] == standard[r] for r in self.channels) else None

    @classmethod
    def standard(cls, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2) -> GeneratorConfig:
        """A published configuration (channels 512 up to 32 px, then scaled by the multiplier)."""
        channels = stylegan2_channels(channel_multiplier)
        return cls(size, style_dim, n_mlp, {2**r: channels[2**r] for r in range(2, int(math.log2(size)) + 1)})

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> GeneratorConfig:
        """Infer the configuration from a rosinality state dict's keys and shapes."""
        n_mlp = sum(1 for key in state_dict if _STYLE_KEY.fullmatch(key))
        log_size = 2 + sum(1 for key in state_dict if _TO_RGB_KEY.fullmatch(key))
        channels = {4: state_dict["input.input"].shape[1]}
        for r in range(3, log_size + 1):
            channels[2**r] = state_dict[f"convs.{2 * (r - 3)}.conv.weight"].shape[1]
        return cls(2**log_size, state_dict["style.1.weight"].shape[1], n_mlp, channels)


# -- the two compiled ops of the original, in plain torch -----------------------------------------------


def fused_leaky_relu(
    x: torch.Tensor, bias: torch.Tensor, slope: float = 0.2, scale: float = math.sqrt(2)
) -> torch.Tensor:
    """Add a per-channel bias (dimension 1), leaky ReLU, then multiply by `scale` (gain sqrt 2)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), slope) * scale


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative crops), FIR filter with `kernel`, then keep every `down`-th pixel."""
    n, c, h, w = x.shape
    if up > 1:
        spread = x.new_zeros(n, c, h * up, w * up)
        spread[:, :, ::up, ::up] = x
        x = spread
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """A normalised 2-D FIR kernel: the outer product of 1-D taps, summing to 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None] if k.ndim == 1 else k
    return k / k.sum()


# -- layers -----------------------------------------------------------------------------------------------


class PixelNorm(nn.Module):
    """Normalise each vector to unit root mean square (the mapping network's input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights scaled by lr_mul/sqrt(in) at run time."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    """FIR low-pass after a transposed-conv upsample; the kernel is scaled by factor^2 to keep energy."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """x2 upsample by zero insertion and FIR filter (the to_rgb skip path)."""

    def __init__(self, taps: Sequence[float], factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Conv whose weight is scaled per sample by a style (and demodulated), run as one grouped conv."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
        demodulate: bool = True, upsample: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            p = (len(BLUR_KERNEL) - 2) - (kernel_size - 1)
            self.blur = Blur(BLUR_KERNEL, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        _, out_c, _, k, _ = self.weight.shape
        weight = self.scale * self.weight * self.modulation(style).view(n, 1, c, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        x = x.reshape(1, n * c, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * c, out_c, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=n)
            return self.blur(out.view(n, out_c, *out.shape[2:]))
        out = F.conv2d(x, weight.reshape(n * out_c, c, k, k), padding=self.padding, groups=n)
        return out.view(n, out_c, *out.shape[2:])


class NoiseInjection(nn.Module):
    """Add per-pixel noise scaled by one learned weight."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            n, _, h, w = x.shape
            noise = x.new_empty(n, 1, h, w).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 constant the synthesis network starts from."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally upsampling x2), noise, bias and leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class FusedLeakyReLU(nn.Module):
    """Per-channel bias, leaky ReLU (slope 0.2) and gain sqrt 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) plus bias, added to the upsampled previous RGB."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample(BLUR_KERNEL)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


class Generator(nn.Module):
    """The StyleGAN2 generator (skip architecture): mapping network and synthesis network."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        ch, dim = config.channels, config.style_dim
        self.style = nn.Sequential(
            PixelNorm(),
            *(EqualLinear(dim, dim, lr_mul=MAPPING_LR_MUL, activate=True) for _ in range(config.n_mlp)),
        )
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], dim)
        self.to_rgb1 = ToRGB(ch[4], dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(config.log_size * 2 - 3):
            resolution = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, resolution, resolution))
        previous = ch[4]
        for r in range(3, config.log_size + 1):
            out = ch[2**r]
            self.convs.append(StyledConv(previous, out, dim, upsample=True))
            self.convs.append(StyledConv(out, out, dim))
            self.to_rgbs.append(ToRGB(out, dim))
            previous = out

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    def constant_noise(self) -> list[torch.Tensor]:
        """The stored noise maps, one per StyledConv, lowest resolution first."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.config.log_size * 2 - 3)]

    def map(self, z: torch.Tensor) -> torch.Tensor:
        """The mapping network: z [N, style_dim] -> w [N, style_dim]."""
        return self.style(z)

    def synthesize(self, wplus: torch.Tensor, noise: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """W+ [N, n_latent, style_dim] and one noise map (or None: random) per layer -> image [N, 3, size, size]."""
        out = self.conv1(self.input(wplus.shape[0]), wplus[:, 0], noise[0])
        skip = self.to_rgb1(out, wplus[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            i = 2 * j + 1
            out = self.convs[2 * j](out, wplus[:, i], noise[i])
            out = self.convs[2 * j + 1](out, wplus[:, i + 1], noise[i + 1])
            skip = to_rgb(out, wplus[:, i + 2], skip)
        return skip

    def forward(
        self,
        styles: Sequence[torch.Tensor],
        input_is_latent: bool = False,
        noise: Sequence[torch.Tensor | None] | None = None,
        randomize_noise: bool = True,
        truncation: float = 1.0,
        truncation_latent: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """rosinality's call: ``g_ema([z or w or W+], ...)`` -> (image in -1..1, None).

        One style tensor only (style mixing by injection index is done on W+ by the caller).
        """
        if len(styles) != 1:
            raise ValueError("pass one style tensor; mix styles by building the W+ latent yourself")
        latent = styles[0] if input_is_latent else self.map(styles[0])
        if truncation != 1.0:
            if truncation_latent is None:
                raise ValueError("truncation needs truncation_latent (the checkpoint's latent_avg)")
            latent = truncation_latent + truncation * (latent - truncation_latent)
        if latent.ndim == 2:
            latent = latent[:, None].expand(-1, self.n_latent, -1)
        if noise is None:
            noise = [None] * len(self.constant_noise()) if randomize_noise else self.constant_noise()
        return self.synthesize(latent, noise), None


# -- the family interface -------------------------------------------------------------------------------


def is_generator(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True if the keys are those of a rosinality StyleGAN2 generator."""
    return all(key in state_dict for key in _REQUIRED) and state_dict["conv1.conv.weight"].ndim == 5


def part(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.``, with the prefix removed (a pSp checkpoint's ``encoder`` or ``decoder``)."""
    start = prefix + "."
    return {key[len(start):]: value for key, value in state_dict.items() if key.startswith(start)}


def is_encoder_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a pSp / e4e checkpoint: an encoder and a rosinality generator under ``decoder.``."""
    return "encoder.input_layer.0.weight" in state_dict and is_generator(part(state_dict, "decoder"))


def detect(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a rosinality StyleGAN2 generator, or a pSp / e4e checkpoint (encoder plus generator)."""
    return is_generator(state_dict) or is_encoder_checkpoint(state_dict)


def build_generator(state_dict: Mapping[str, torch.Tensor]) -> tuple[Generator, torch.Tensor]:
    """Build a generator from a rosinality state dict (or a pSp / e4e checkpoint's decoder); returns it and
    its average w.

    The average is the checkpoint's ``latent_avg`` when present (pSp stores it once per W+ row), else the
    mean of 4096 mapped z.
    """
    latent_avg = state_dict.get("latent_avg")
    weights = part(state_dict, "decoder") if is_encoder_checkpoint(state_dict) else dict(state_dict)
    weights.pop("latent_avg", None)
    generator = Generator(GeneratorConfig.from_state_dict(weights))
    generator.load_state_dict(weights)
    if latent_avg is None:
        z = torch.randn(4096, generator.config.style_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            latent_avg = generator.map(z).mean(0)
    latent_avg = latent_avg.float().reshape(-1, generator.config.style_dim).mean(0)
    return generator.eval().requires_grad_(False), latent_avg


def load(state_dict: StateDict) -> ModelDescriptor:
    """A single file served as a plate model: a generator inverted into and synthesized by itself, or a
    pSp / e4e checkpoint whose encoder starts the inversion into its decoder."""
    from server.stylegan.plate import encoder_of, plate_descriptor  # the plate path builds on this module

    base, latent_avg = build_generator(state_dict)
    encoder = encoder_of(state_dict, base) if is_encoder_checkpoint(state_dict) else None
    return plate_descriptor(base, latent_avg, encoder=encoder)


def load_recipe(recipe: dict[str, Any], folder: Path) -> ModelDescriptor:
    """A plate model from a recipe naming base and style generators (see docs/stylegan.md)."""
    from server.stylegan.plate import recipe_descriptor

    return recipe_descriptor(recipe, folder)
