"""The keyframe family: what `vst train keyframes` fits to painted frames, to paint the rest of a shot.

A keyframe model is one or two networks. The **keyframe network** learns the mapping from a plate to
its painted version on random patches of one or a few keyframes. It has no normalisation layer, so a
patch seen in training and the same pixels inside a whole frame give the same result::

    keyframe.head                conv 3x3, 3 -> C0, ReLU                     full resolution
    keyframe.down.{i}            conv 3x3 stride 2, Ci -> Ci+1, ReLU          1/2, 1/4, ...
    keyframe.body.{i}.conv{1,2}  residual blocks of two 3x3 convs at the coarsest level, ReLU between
    keyframe.up.{i}              nearest x2 + conv 3x3, back up one level, + that level's activation
                                 from the way down, ReLU
    keyframe.tail                conv 3x3, C0 -> 3, + the input, clamped to 0..1

Every conv is reflection padding of k//2 and a conv with bias; input and output are sRGB-encoded
0..1. Widths, levels and the number of blocks are read from the tensor shapes.

The optional **painter** is the built-in arbitrary-style transformer (server/models/arbitrary.py)
tuned on the whole keyframes, its style baked into each instance norm's own scale and shift. It
draws strokes and textures the keyframe network cannot invent on frames it never saw; the model's
result is ``(1 - share) * keyframe network + share * painter``, `share` chosen in training on a strip
of the keyframes neither network learnt from (about 0 for a grade or a clean-up, which the keyframe
network keeps sharp)::

    painter.<layer>.{weight,bias}          the shared style transformer's convs (server/models/transformer.py)
    painter.<layer>.norm.{scale,shift}     [C] per instance norm
    painter.share                          [] the painter's share of the result
    painter.reduction                      [] the painter runs on the frame shrunk this many times

A checkpoint without painter tensors (every model from before the painter) is the keyframe network
alone. Training options are stored as safetensors metadata (`server/train/keyframes.py`) and shown by
`vst models`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tiling import Act, Add, Conv, Grow, Plan, Push, Shrink, Swap, resample
from .base import ModelDescriptor
from .transformer import ConditionalNorm, StyleTransformer

FAMILY = "keyframe"
PREFIX = "keyframe."
PAINTER = "painter."
SHARE = "painter.share"
REDUCTION = "painter.reduction"
NO_STYLE = torch.empty(0)
"""The painter's norms carry their own style: what the shared transformer is handed instead of one."""

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


class PainterNorm(ConditionalNorm):
    """Instance norm with the painter's own per-channel scale and shift (its style, baked in)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def scale_shift(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale[None], self.shift[None]


def build_transformer(shapes: dict[str, torch.Size]) -> StyleTransformer:
    """The painter's transformer for `painter.`-prefixed weight shapes: the shared one with `PainterNorm`s."""

    def norm(prefix: str, channels: int) -> PainterNorm | None:
        return PainterNorm(channels) if f"{prefix}.norm.scale" in shapes else None

    return StyleTransformer(shapes, norm, prefix=PAINTER)


class Painter(nn.Module):
    """The tuned style transformer, run on the frame shrunk by `reduction` (the mean of each reduction x reduction
    block; 1 for keyframes up to server/train/painter.py's `PAINTER_PIXELS`) and its result grown back (bilinear)."""

    def __init__(self, transformer: StyleTransformer, reduction: int):
        super().__init__()
        self.transformer = transformer
        self.reduction = reduction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return paint_at(self.reduction, lambda small: self.transformer(small, NO_STYLE), x)

    def plan(self) -> Plan:
        """The painter as tiling steps."""
        steps = self.transformer.plan(NO_STYLE)
        return steps if self.reduction == 1 else [Shrink(self.reduction), *steps, Grow(self.reduction)]


def paint_at(reduction: int, paint: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`paint` run on x shrunk by `reduction` (sides: multiples of 4 * reduction), its result grown back."""
    if reduction == 1:
        return paint(x)
    return resample(paint(resample(x, Shrink(reduction))), Grow(reduction))


class KeyframeModel(nn.Module):
    """sRGB 0..1 in and out: the keyframe network, blended with the painter when there is one."""

    def __init__(self, net: KeyframeNet, painter: Painter | None = None, share: float = 0.0):
        super().__init__()
        self.net = net
        self.painter = painter
        self.register_buffer("share", torch.tensor(float(share)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.net(x)
        if self.painter is None:
            return result
        return torch.lerp(result, self.painter(x), self.share)

    def size_multiple(self) -> int:
        """What both networks need the frame's sides to be a multiple of."""
        multiple = 2 ** len(self.net.down)
        return multiple if self.painter is None else math.lcm(multiple, 4 * self.painter.reduction)


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    """True if the keys are those of a `KeyframeNet` state dict with the `keyframe.` prefix."""
    return all(key in state_dict for key in _REQUIRED)


def state_dict_of(model: KeyframeModel) -> dict[str, torch.Tensor]:
    """The model's tensors under the keys `build` reads (contiguous, on the CPU)."""
    tensors = {PREFIX + key: value for key, value in model.net.state_dict().items()}
    if model.painter is not None:
        tensors |= {PAINTER + key: value for key, value in model.painter.transformer.state_dict().items()}
        tensors |= {SHARE: model.share, REDUCTION: torch.tensor(model.painter.reduction)}
    return {key: value.detach().cpu().contiguous() for key, value in tensors.items()}


def build(state_dict: dict[str, torch.Tensor]) -> KeyframeModel:
    """A `KeyframeModel` with every size from the shapes, holding those weights."""
    weights = {key.removeprefix(PREFIX): value for key, value in state_dict.items() if key.startswith(PREFIX)}
    blocks = sum(1 for key in state_dict if _BLOCK.fullmatch(key))
    levels = sum(1 for key in state_dict if _DOWN.fullmatch(key))
    widths = (weights["head.weight"].shape[0], *(weights[f"down.{i}.weight"].shape[0] for i in range(levels)))
    net = KeyframeNet(widths, blocks)
    net.load_state_dict(weights)
    if SHARE not in state_dict:
        return KeyframeModel(net)
    tuned = {key: value for key, value in state_dict.items()
             if key.startswith(PAINTER) and key not in (SHARE, REDUCTION)}
    transformer = build_transformer({key: value.shape for key, value in tuned.items()})
    transformer.load_state_dict({key.removeprefix(PAINTER): value for key, value in tuned.items()})
    return KeyframeModel(net, Painter(transformer, int(state_dict[REDUCTION])), float(state_dict[SHARE]))


def _run(module: nn.Module, x: torch.Tensor, values: dict[str, Any]) -> torch.Tensor:
    return module(x)


def _step(conv: nn.Conv2d, upsample: bool = False) -> Conv:
    return Conv(conv.weight, conv.bias, conv.stride[0], upsample)


def plan(module: nn.Module, values: dict[str, Any]) -> Plan:
    """The model as tiling steps (server/tiling.py); export builds from the same steps. With a painter: the
    keyframe network's result scaled by 1 - share is kept while the painter runs on the remembered input."""
    model: KeyframeModel = module
    steps = _net_plan(model.net)
    if model.painter is None:
        return steps
    share = float(model.share)
    return [Push(), *steps, Act("scale", 1 - share), Swap(), *model.painter.plan(), Act("scale", share), Add()]


def _net_plan(net: KeyframeNet) -> Plan:
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
    model = build(state_dict)
    return ModelDescriptor(
        module=model,
        family=FAMILY,
        params=(),
        size_multiple=model.size_multiple(),
        min_size=16,
        supports_half=model.painter is None,  # the painter stays in float32, as the arbitrary family does
        run=_run,
        plan=plan,
        info=dict(getattr(state_dict, "options", {})),
    )
