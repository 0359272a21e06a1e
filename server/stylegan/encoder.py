"""pSp and e4e encoders: a plate to a W+ latent in one forward pass.

Checkpoints of eladrich/pixel2style2pixel (pSp) and omertov/encoder4editing (e4e) hold::

    {"state_dict": {"encoder.*": ..., "decoder.*": ...}, "latent_avg": [n_latent, 512], "opts": {...}}

``decoder.*`` is a rosinality StyleGAN2 generator; ``encoder.*`` is one of the encoders below on an
IR / IR-SE ResNet backbone (the ArcFace body: 24, 49 or 50 bottleneck units in four stages halving the
resolution, SE gates in IR-SE). The keys do not say how the pyramid encoder's outputs combine, so
``opts["encoder_type"]`` is read:

- ``GradualStyleEncoder`` (pSp): W+ row i comes from style block i on one level of a feature pyramid
  (rows 0-2 on the coarsest, 3-6 on the middle, the rest on the finest level).
- ``Encoder4Editing`` (e4e): the same blocks; row 0 is a w, and every other row is w plus its block's
  output (a delta).
- ``BackboneEncoderUsingLastLayerIntoW`` / ``...IntoWPlus`` (pSp): pooled last-stage features through
  linear layers to one w, or to every W+ row.

When the checkpoint has ``latent_avg`` (pSp's ``start_from_latent_avg``; always in e4e), it is added to
the encoder's output. The input is sRGB in -1..1 resized to 256 px, as both projects train. Widths
are read from the tensor shapes, so narrower encoders built for tests load the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from server.models.base import ModelError
from server.models.stylegan2 import EqualLinear

INPUT_SIZE = 256
"""Side of the square image the encoders were trained on."""

PYRAMID_TYPES = {"GradualStyleEncoder": False, "Encoder4Editing": True}
"""Pyramid encoder types and whether rows after the first are deltas added to row 0."""

BACKBONE_TYPES = ("BackboneEncoderUsingLastLayerIntoW", "BackboneEncoderUsingLastLayerIntoWPlus")

UNITS_PER_STAGE = {24: (3, 4, 14, 3), 49: (3, 13, 30, 3), 50: (3, 8, 36, 3)}
"""Bottleneck units per stage of the IR-50, IR-100 and IR-152 bodies, by their total."""

COARSE_ROWS, MIDDLE_ROWS = 3, 7
"""W+ rows below 3 read the coarsest pyramid level, rows 3-6 the middle one, the rest the finest."""

_UNIT = re.compile(r"body\.(\d+)\.res_layer\.1\.weight")
_STYLE = re.compile(r"styles\.(\d+)\.linear\.weight")


class EncoderError(ModelError):
    """A pSp / e4e checkpoint this module cannot build, with the reason."""


class SqueezeExcite(nn.Module):
    """Channel gate: global average, bottleneck 1x1 convs, sigmoid, multiply."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class BottleneckIR(nn.Module):
    """IR unit: BN, 3x3 conv, PReLU, 3x3 conv (strided), BN, optional SE gate; plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, squeeze_excite: int | None):
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if squeeze_excite is not None:
            layers.append(SqueezeExcite(out_channels, squeeze_excite))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class Backbone(nn.Module):
    """Stem (3x3 conv, BN, PReLU) and the IR body; the encoders below add their heads to it."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        super().__init__()
        stem = state_dict["input_layer.0.weight"]
        if stem.shape[1] != 3:
            raise EncoderError(
                f"this encoder takes {stem.shape[1]}-channel input (a sketch, segmentation map or ReStyle "
                "pair); vst feeds encoders RGB plates, so only RGB encoders (3 input channels) can be used"
            )
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem.shape[0], 3, 1, 1, bias=False), nn.BatchNorm2d(stem.shape[0]), nn.PReLU(stem.shape[0])
        )
        count = sum(1 for key in state_dict if _UNIT.fullmatch(key))
        if count not in UNITS_PER_STAGE:
            raise EncoderError(
                f"the encoder body has {count} bottleneck units; IR-50, -100 and -152 bodies have 24, 49 or 50"
            )
        squeeze_excite = "body.0.res_layer.5.fc1.weight" in state_dict
        units, self.stage_ends = [], []
        for length in UNITS_PER_STAGE[count]:
            for position in range(length):
                index = len(units)
                out_c, in_c = state_dict[f"body.{index}.res_layer.1.weight"].shape[:2]
                hidden = state_dict[f"body.{index}.res_layer.5.fc1.weight"].shape[0] if squeeze_excite else None
                units.append(BottleneckIR(in_c, out_c, 2 if position == 0 else 1, hidden))
            self.stage_ends.append(len(units) - 1)
        self.body = nn.Sequential(*units)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each of the four stages, finest first."""
        x = self.input_layer(x)
        stages = []
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index in self.stage_ends:
                stages.append(x)
        return stages


class StyleBlock(nn.Module):
    """Strided 3x3 convs with leaky ReLU down to 1x1, then an equalised linear layer: one W+ row."""

    def __init__(self, in_channels: int, width: int, convs: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv2d(in_channels if i == 0 else width, width, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        return self.linear(x.reshape(x.shape[0], -1))


def _upsample_add(coarse: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    return F.interpolate(coarse, size=lateral.shape[2:], mode="bilinear", align_corners=True) + lateral


class PyramidEncoder(Backbone):
    """pSp's GradualStyleEncoder and e4e's Encoder4Editing: style blocks on a three-level feature pyramid."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], deltas: bool):
        super().__init__(state_dict)
        rows = sum(1 for key in state_dict if _STYLE.fullmatch(key))
        self.styles = nn.ModuleList()
        for i in range(rows):
            first = state_dict[f"styles.{i}.convs.0.weight"]
            convs = sum(1 for key in state_dict if re.fullmatch(rf"styles\.{i}\.convs\.\d+\.weight", key))
            self.styles.append(StyleBlock(first.shape[1], first.shape[0], convs))
        lateral1, lateral2 = state_dict["latlayer1.weight"], state_dict["latlayer2.weight"]
        self.latlayer1 = nn.Conv2d(lateral1.shape[1], lateral1.shape[0], 1)
        self.latlayer2 = nn.Conv2d(lateral2.shape[1], lateral2.shape[0], 1)
        self.deltas = deltas
        self.n_latent = rows
        self.style_dim = state_dict["styles.0.linear.weight"].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c1, c2, c3 = self.stages(x)
        levels = [c3]
        if self.n_latent > COARSE_ROWS:
            levels.append(_upsample_add(c3, self.latlayer1(c2)))
        if self.n_latent > MIDDLE_ROWS:
            levels.append(_upsample_add(levels[1], self.latlayer2(c1)))
        rows = []
        for i, block in enumerate(self.styles):
            rows.append(block(levels[(i >= COARSE_ROWS) + (i >= MIDDLE_ROWS)]))
        codes = torch.stack(rows, dim=1)
        if self.deltas:  # e4e: row 0 is w; the others add their delta to it
            codes = torch.cat([codes[:, :1], codes[:, :1] + codes[:, 1:]], dim=1)
        return codes


class BackboneEncoder(Backbone):
    """pSp's encoders from the last backbone stage: pooled to one w, or through 7x7 pooling to all of W+."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        super().__init__(state_dict)
        out_dim, in_dim = state_dict["linear.weight"].shape
        self.plus = "output_layer_2.3.weight" in state_dict
        if self.plus:
            hidden, flat = state_dict["output_layer_2.3.weight"].shape
            channels = state_dict["output_layer_2.0.weight"].shape[0]
            self.output_layer_2 = nn.Sequential(
                nn.BatchNorm2d(channels), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(flat, hidden)
            )
            self.style_dim = in_dim
            self.n_latent = out_dim // in_dim
        else:
            self.style_dim = out_dim
            self.n_latent = 0  # one w, repeated for every row by the caller
        self.linear = EqualLinear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)[-1]
        if self.plus:
            return self.linear(self.output_layer_2(x)).view(x.shape[0], self.n_latent, self.style_dim)
        return self.linear(x.mean(dim=(2, 3)))[:, None]


class Encoder(nn.Module):
    """An image encoder with its latent offset: sRGB 0..1 [N, 3, H, W] -> W+ [N, n_latent, style_dim]."""

    def __init__(self, network: PyramidEncoder | BackboneEncoder, latent_avg: torch.Tensor | None, n_latent: int):
        super().__init__()
        self.network = network
        self.n_latent = n_latent
        offset = torch.zeros(1, network.style_dim) if latent_avg is None else latent_avg.float()
        offset = offset.reshape(-1, network.style_dim)
        if network.n_latent == 0:  # pSp adds the first row to a single w
            offset = offset[:1]
        if offset.shape[0] not in (1, n_latent):
            raise EncoderError(f"latent_avg has {offset.shape[0]} rows; the generator has {n_latent} W+ rows")
        self.register_buffer("offset", offset[None])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(image, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
        codes = self.network(x * 2 - 1) + self.offset
        return codes.expand(-1, self.n_latent, -1) if codes.shape[1] == 1 else codes


def build_encoder(
    state_dict: Mapping[str, torch.Tensor], options: Mapping[str, Any], latent_avg: torch.Tensor | None,
    n_latent: int, style_dim: int,
) -> Encoder:
    """Build the encoder of a pSp / e4e checkpoint (its ``encoder.*`` keys, prefix removed) for a generator
    with `n_latent` W+ rows of `style_dim`; `options` is the checkpoint's ``opts``."""
    kind = options.get("encoder_type")
    if "styles.0.linear.weight" in state_dict:
        if kind not in PYRAMID_TYPES:
            raise EncoderError(
                f"the checkpoint's opts name encoder_type {kind!r}; a pyramid encoder is either pSp's "
                "GradualStyleEncoder or e4e's Encoder4Editing, and the two combine their outputs differently, "
                "so the type must be stored (re-save the checkpoint with its opts)"
            )
        network: PyramidEncoder | BackboneEncoder = PyramidEncoder(state_dict, PYRAMID_TYPES[kind])
    elif "linear.weight" in state_dict:
        network = BackboneEncoder(state_dict)
    else:
        raise EncoderError(
            f"unknown encoder (type {kind!r}); supported are {', '.join([*PYRAMID_TYPES, *BACKBONE_TYPES])}"
        )
    if network.style_dim != style_dim or network.n_latent not in (0, n_latent):
        raise EncoderError(
            f"the encoder gives {network.n_latent or 1} x {network.style_dim} latents; the generator takes "
            f"{n_latent} x {style_dim} (an encoder works only with the generator it was trained for)"
        )
    network.load_state_dict(state_dict)
    return Encoder(network, latent_avg, n_latent).eval().requires_grad_(False)
