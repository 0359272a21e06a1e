"""The style transformer with conditional instance norm, shared by the `multistyle` and `arbitrary` families.

Johnson et al.'s image transformation network as Dumoulin et al. ("A Learned Representation for
Artistic Style") and Ghiasi et al. (arbitrary stylization) condition it on a style: every
normalisation is an instance norm whose scale and shift come from the style. The families differ
only in how a style becomes a scale and a shift (`norm`): a blend of learned per-style rows
(multistyle), or linear maps of a style vector (arbitrary). Module layout::

    contract.{0,1,2}        conv 9x9, then 3x3 stride 2 twice (x1/4)
    residual.{i}.{0,1}      residual blocks of two 3x3 convs
    expand.{0,1,2}          nearest x2 + conv 3x3 twice, then conv 9x9 (x4)
    <layer>.weight          every conv: reflection padding k//2, then the conv
    <layer>.bias            where the checkpoint has one
    <layer>.norm.*          where the checkpoint has one: the family's conditional norm

ReLU after each layer, except the second conv of a residual block (none, and none after the sum) and
the last (sigmoid). Input and output are sRGB-encoded 0..1. Every size comes from the weight shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..tiling import Act, Add, Conv, Norm, Plan, Push

EPS = 1e-5

NormFactory = Callable[[str, int], "nn.Module | None"]
"""(layer prefix, channels) -> the layer's conditional norm, or None when the layer has none."""


class ConditionalNorm(nn.Module):
    """What a family's norm provides: instance norm with a style's scale and shift."""

    def scale_shift(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel scale and shift [N, C] a style gives."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift(style)
        return F.instance_norm(x, eps=EPS) * scale[:, :, None, None] + shift[:, :, None, None]


class ConvLayer(nn.Module):
    """[nearest x2 upsample] -> reflection pad k//2 -> conv -> [conditional norm] -> activation."""

    def __init__(self, shapes: dict[str, torch.Size], prefix: str, norm: NormFactory, stride: int = 1,
                 upsample: bool = False, activation: str = "relu"):
        super().__init__()
        out_channels, in_channels, kernel, _ = shapes[f"{prefix}.weight"]
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if f"{prefix}.bias" in shapes else None
        self.norm = norm(prefix, out_channels)
        self.stride, self.upsample, self.activation, self.padding = stride, upsample, activation, kernel // 2

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.conv2d(F.pad(x, (self.padding,) * 4, mode="reflect"), self.weight, self.bias, stride=self.stride)
        if self.norm is not None:
            x = self.norm(x, style)
        if self.activation == "relu":
            return F.relu(x)
        if self.activation == "sigmoid":
            return torch.sigmoid(x)
        return x

    def steps(self, style: torch.Tensor) -> Plan:
        """The layer as tiling steps (server/tiling.py) for one style."""
        steps: Plan = [Conv(self.weight, self.bias, stride=self.stride, upsample=self.upsample)]
        if self.norm is not None:
            scale, shift = self.norm.scale_shift(style)
            steps.append(Norm(scale[0], shift[0], eps=EPS))
        return steps + ([Act(self.activation)] if self.activation in ("relu", "sigmoid") else [])


class ResidualBlock(nn.ModuleList):
    """x + (conv-norm-relu, conv-norm)(x), no activation after the sum."""

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        first, second = self
        return x + second(first(x, style), style)


class StyleTransformer(nn.Module):
    """Contract (x1/4), residual blocks, expand (x4), conditioned on a style; sizes from the shapes."""

    def __init__(self, shapes: dict[str, torch.Size], norm: NormFactory, prefix: str = ""):
        super().__init__()

        def layer(name: str, stride: int = 1, upsample: bool = False, activation: str = "relu") -> ConvLayer:
            return ConvLayer(shapes, f"{prefix}{name}", norm, stride, upsample, activation)

        blocks = len({key[len(prefix):].split(".")[1] for key in shapes if key.startswith(f"{prefix}residual.")})
        self.contract = nn.ModuleList([layer("contract.0"), layer("contract.1", 2), layer("contract.2", 2)])
        self.residual = nn.ModuleList(
            ResidualBlock([layer(f"residual.{i}.0"), layer(f"residual.{i}.1", activation="none")])
            for i in range(blocks)
        )
        self.expand = nn.ModuleList([
            layer("expand.0", upsample=True),
            layer("expand.1", upsample=True),
            layer("expand.2", activation="sigmoid"),
        ])

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        for module in (*self.contract, *self.residual, *self.expand):
            x = module(x, style)
        return x

    def plan(self, style: torch.Tensor) -> Plan:
        """The network as tiling steps (server/tiling.py), the style baked into the norms."""
        steps: Plan = []
        for layer in self.contract:
            steps += layer.steps(style)
        for first, second in self.residual:
            steps += [Push(), *first.steps(style), *second.steps(style), Add()]
        for layer in self.expand:
            steps += layer.steps(style)
        return steps
