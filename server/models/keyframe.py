"""The keyframe network: a small feed-forward net that `vst train keyframes` fits to painted frames.

It learns the mapping from a plate to its painted version on random patches of one or a few
keyframes, then paints every other frame of the shot. It has no normalisation layer, so a patch
seen in training and the same pixels inside a whole frame give the same result (an instance-norm
network would see other statistics on a full frame than on its training patches)::

    keyframe.head                conv 3x3, 3 -> C0, ReLU                     full resolution
    keyframe.down.{i}            conv 3x3 stride 2, Ci -> Ci+1, ReLU          1/2, 1/4, ...
    keyframe.body.{i}.conv{1,2}  residual blocks of two 3x3 convs at the coarsest level, ReLU between
    keyframe.up.{i}              nearest x2 + conv 3x3, back up one level, + that level's activation
                                 from the way down, ReLU
    keyframe.tail                conv 3x3, C0 -> 3, + the input, clamped to 0..1

Every conv is reflection padding of k//2 and a conv with bias; input and output are sRGB-encoded
0..1. Widths, levels and the number of blocks are read from the tensor shapes. Training options are stored
as safetensors metadata (`server/train/keyframes.py`) and shown by `vst models`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tiling import Act, Add, Conv, Plan, Push
from .base import ModelDescriptor

FAMILY = "keyframe"
PREFIX = "keyframe."

_REQUIRED = tuple(f"{PREFIX}{name}" for name in ("head.weight", "down.0.weight", "up.0.weight", "tail.weight"))
_BLOCK = re.compile(r"keyframe\.body\.(\d+)\.conv1\.weight")
_DOWN = re.compile(r"keyframe\.down\.(\d+)\.weight")


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride)


def _same(conv: nn.Conv2d, x: torch.Tensor, upsample: bool = False) -> torch.Tensor:
    """[nearest x2] -> reflection pad k//2 -> conv (what server/tiling.py's `Conv` step does)."""
    if upsample:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    pad = conv.kernel_size[0] // 2
    return conv(F.pad(x, (pad,) * 4, mode="reflect"))


class Block(nn.Module):
    """x + conv2(relu(conv1(x)))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv(channels, channels)
        self.conv2 = _conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _same(self.conv2, F.relu(_same(self.conv1, x)))


class KeyframeNet(nn.Module):
    """sRGB 0..1 [N,3,H,W] (H, W multiples of 2**levels) -> painted sRGB 0..1, same size.

    `widths` are the channels at full resolution, 1/2, 1/4, ...: one stride-2 conv per step down,
    residual blocks at the coarsest level, one nearest x2 conv per step up plus the same level's
    activation from the way down (a U-Net with additive skips).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 4):
        super().__init__()
        self.head = _conv(3, widths[0])
        steps = list(zip(widths[:-1], widths[1:], strict=True))
        self.down = nn.ModuleList(_conv(a, b, stride=2) for a, b in steps)
        self.body = nn.ModuleList(Block(widths[-1]) for _ in range(blocks))
        self.up = nn.ModuleList(_conv(b, a) for a, b in reversed(steps))
        self.tail = _conv(widths[0], 3)
        nn.init.zeros_(self.tail.weight)  # starts as the identity: the painting is learnt as a change
        nn.init.zeros_(self.tail.bias)

    def unclamped(self, x: torch.Tensor) -> torch.Tensor:
        """The output before clamping (training uses it, so gradients reach saturated pixels)."""
        h = F.relu(_same(self.head, x))
        skips = [h]
        for conv in self.down:
            h = F.relu(_same(conv, h))
            skips.append(h)
        skips.pop()
        for block in self.body:
            h = block(h)
        for conv in self.up:
            h = F.relu(_same(conv, h, upsample=True) + skips.pop())
        return x + _same(self.tail, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unclamped(x).clamp(0, 1)


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    """True if the keys are those of a `KeyframeNet` state dict with the `keyframe.` prefix."""
    return all(key in state_dict for key in _REQUIRED)


def state_dict_of(net: KeyframeNet) -> dict[str, torch.Tensor]:
    """The network's tensors under the keys `detect` recognises (contiguous, on the CPU)."""
    return {PREFIX + key: value.detach().cpu().contiguous() for key, value in net.state_dict().items()}


def build(state_dict: dict[str, torch.Tensor]) -> KeyframeNet:
    """A `KeyframeNet` with widths and block count from the shapes, holding those weights."""
    weights = {key.removeprefix(PREFIX): value for key, value in state_dict.items() if key.startswith(PREFIX)}
    blocks = sum(1 for key in state_dict if _BLOCK.fullmatch(key))
    levels = sum(1 for key in state_dict if _DOWN.fullmatch(key))
    widths = (weights["head.weight"].shape[0], *(weights[f"down.{i}.weight"].shape[0] for i in range(levels)))
    net = KeyframeNet(widths, blocks)
    net.load_state_dict(weights)
    return net


def _run(module: nn.Module, x: torch.Tensor, values: dict[str, Any]) -> torch.Tensor:
    return module(x)


def _step(conv: nn.Conv2d, upsample: bool = False) -> Conv:
    return Conv(conv.weight, conv.bias, conv.stride[0], upsample)


def plan(module: nn.Module, values: dict[str, Any]) -> Plan:
    """The network as tiling steps (server/tiling.py); export builds from the same steps."""
    net: KeyframeNet = module
    relu = Act("relu")
    steps: Plan = [Push(), _step(net.head), relu]
    for conv in net.down:  # keep the finer level's activation for the way up
        steps += [Push(), _step(conv), relu]
    for block in net.body:
        steps += [Push(), _step(block.conv1), relu, _step(block.conv2), Add()]
    for conv in net.up:
        steps += [_step(conv, upsample=True), Add(), relu]
    return steps + [_step(net.tail), Add(), Act("clamp", 1.0)]


def load(state_dict: dict[str, torch.Tensor]) -> ModelDescriptor:
    """Build the network from a state dict; its training options (if any) become the model's info."""
    net = build(state_dict)
    return ModelDescriptor(
        module=net,
        family=FAMILY,
        params=(),
        size_multiple=2 ** len(net.down),
        min_size=16,
        supports_half=True,
        run=_run,
        plan=plan,
        info=dict(getattr(state_dict, "options", {})),
    )
