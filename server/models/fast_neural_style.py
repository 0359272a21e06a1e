"""Johnson et al. "Perceptual Losses for Real-Time Style Transfer", as in pytorch/examples.

Loads the ``TransformerNet`` checkpoints written by pytorch/examples' ``fast_neural_style`` (and
the published candy / mosaic / rain-princess / udnie files) unchanged::

    conv1 9x9 s1, conv2 3x3 s2, conv3 3x3 s2        .conv2d.{weight,bias}, then in1..in3
    res{1..}.conv{1,2}.conv2d.*, res{1..}.in{1,2}.*   residual blocks
    deconv1, deconv2: nearest x2 + conv 3x3          then in4, in5
    deconv3 9x9                                       no norm, no activation

Every conv is reflection padding of k//2 and a conv with bias; the norms are affine instance norms
followed by ReLU (none after a residual block's second norm, nor after the sum). The network works
on RGB 0..255. Checkpoints saved before PyTorch 0.4 also hold unused ``running_mean`` and
``running_var`` for each instance norm (and later ones ``num_batches_tracked``); those are dropped.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tiling import Act, Add, Conv, Norm, Plan, Push
from .base import ModelDescriptor

FAMILY = "fast_neural_style"

_REQUIRED = (
    "conv1.conv2d.weight", "conv2.conv2d.weight", "conv3.conv2d.weight", "in1.weight", "in3.bias",
    "res1.conv1.conv2d.weight", "res1.in2.weight",
    "deconv1.conv2d.weight", "deconv2.conv2d.weight", "deconv3.conv2d.weight", "in5.weight",
)
_UNUSED_NORM_STATS = re.compile(r"in\d+\.(running_mean|running_var|num_batches_tracked)$")
_RESIDUAL = re.compile(r"res(\d+)\.conv1\.conv2d\.weight")


class ReflectConv(nn.Module):
    """[nearest x2 upsample] -> reflection pad k//2 -> conv with bias."""

    def __init__(self, weight_shape: torch.Size, stride: int = 1, upsample: bool = False):
        super().__init__()
        out_channels, in_channels, kernel, _ = weight_shape
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel, stride)
        self.upsample = upsample
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv2d(F.pad(x, (self.padding,) * 4, mode="reflect"))


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True)


class ResidualBlock(nn.Module):
    """x + in2(conv2(relu(in1(conv1(x)))))."""

    def __init__(self, shapes: dict[str, torch.Size], prefix: str):
        super().__init__()
        self.conv1 = ReflectConv(shapes[f"{prefix}.conv1.conv2d.weight"])
        self.in1 = _norm(shapes[f"{prefix}.in1.weight"][0])
        self.conv2 = ReflectConv(shapes[f"{prefix}.conv2.conv2d.weight"])
        self.in2 = _norm(shapes[f"{prefix}.in2.weight"][0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(F.relu(self.in1(self.conv1(x)))))


class TransformerNet(nn.Module):
    """Downsample x4, residual blocks, upsample x4; RGB 0..255 in and out."""

    def __init__(self, shapes: dict[str, torch.Size], blocks: int):
        super().__init__()
        self.conv1 = ReflectConv(shapes["conv1.conv2d.weight"])
        self.in1 = _norm(shapes["in1.weight"][0])
        self.conv2 = ReflectConv(shapes["conv2.conv2d.weight"], stride=2)
        self.in2 = _norm(shapes["in2.weight"][0])
        self.conv3 = ReflectConv(shapes["conv3.conv2d.weight"], stride=2)
        self.in3 = _norm(shapes["in3.weight"][0])
        for i in range(1, blocks + 1):
            self.add_module(f"res{i}", ResidualBlock(shapes, f"res{i}"))
        self.blocks = blocks
        self.deconv1 = ReflectConv(shapes["deconv1.conv2d.weight"], upsample=True)
        self.in4 = _norm(shapes["in4.weight"][0])
        self.deconv2 = ReflectConv(shapes["deconv2.conv2d.weight"], upsample=True)
        self.in5 = _norm(shapes["in5.weight"][0])
        self.deconv3 = ReflectConv(shapes["deconv3.conv2d.weight"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.in1(self.conv1(x)))
        x = F.relu(self.in2(self.conv2(x)))
        x = F.relu(self.in3(self.conv3(x)))
        for i in range(1, self.blocks + 1):
            x = self.get_submodule(f"res{i}")(x)
        x = F.relu(self.in4(self.deconv1(x)))
        x = F.relu(self.in5(self.deconv2(x)))
        return self.deconv3(x)


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    """True if the keys are those of a pytorch/examples TransformerNet."""
    return all(key in state_dict for key in _REQUIRED)


def _run(module: nn.Module, x: torch.Tensor, values: dict[str, Any]) -> torch.Tensor:
    return (module(x * 255) / 255).clamp(0, 1)


def _steps(conv: ReflectConv, norm: nn.InstanceNorm2d | None = None, relu: bool = True) -> Plan:
    steps: Plan = [Conv(conv.conv2d.weight, conv.conv2d.bias, conv.conv2d.stride[0], conv.upsample)]
    if norm is not None:
        steps.append(Norm(norm.weight, norm.bias, norm.eps))
    return steps + ([Act("relu")] if relu else [])


def plan(module: nn.Module, values: dict[str, Any]) -> Plan:
    """The network as tiling steps (server/tiling.py), with `_run`'s scaling to and from 0..255."""
    net: TransformerNet = module
    steps: Plan = [Act("scale", 255.0)]
    steps += _steps(net.conv1, net.in1) + _steps(net.conv2, net.in2) + _steps(net.conv3, net.in3)
    for i in range(1, net.blocks + 1):
        block: ResidualBlock = net.get_submodule(f"res{i}")
        steps += [Push(), *_steps(block.conv1, block.in1), *_steps(block.conv2, block.in2, relu=False), Add()]
    steps += _steps(net.deconv1, net.in4) + _steps(net.deconv2, net.in5) + _steps(net.deconv3, relu=False)
    return steps + [Act("scale", 1 / 255), Act("clamp", 1.0)]


def load(state_dict: dict[str, torch.Tensor]) -> ModelDescriptor:
    """Build the network with channel widths and residual blocks taken from the shapes; the file's
    options (a safetensors file's metadata: `vst train style` settings) become the model's info."""
    weights = {key: value for key, value in state_dict.items() if not _UNUSED_NORM_STATS.search(key)}
    blocks = sum(1 for key in weights if _RESIDUAL.fullmatch(key))
    net = TransformerNet({key: tensor.shape for key, tensor in weights.items()}, blocks)
    net.load_state_dict(weights)
    return ModelDescriptor(
        module=net,
        family=FAMILY,
        params=(),
        size_multiple=4,
        min_size=16,
        supports_half=True,
        run=_run,
        plan=plan,
        info=dict(getattr(state_dict, "options", {})),
        cpu_runtime="onnxruntime",
    )
