"""What inversion minimises: pixel plus multi-scale error, or a VGG perceptual distance from a local file."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(image, target), both [N, 3, S, S] in -1..1 -> scalar to minimise."""

MULTISCALE_LEVELS = 3
_VGG_CONV = re.compile(r"features\.(\d+)\.weight")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def multiscale_loss(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error at full size and at 1/2, 1/4 and 1/8 (box-averaged): colour and layout first."""
    loss = F.mse_loss(image, target)
    for level in range(1, MULTISCALE_LEVELS + 1):
        factor = 2**level
        if image.shape[-1] < factor:
            break
        loss = loss + F.mse_loss(F.avg_pool2d(image, factor), F.avg_pool2d(target, factor))
    return loss


class VGGFeatures(nn.Module):
    """The convolutional part of a torchvision VGG (``features.{i}.weight``/``bias``, no batch norm).

    Layer indices follow torchvision: conv, ReLU, and a max-pool where the next conv's index skips
    one. Returns the ReLU output before each pool (and the last one): the slices LPIPS-style
    perceptual losses compare.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        super().__init__()
        indices = sorted(int(m.group(1)) for key in state_dict if (m := _VGG_CONV.fullmatch(key)))
        if not indices:
            raise ValueError("no torchvision VGG layers (features.N.weight) in this file")
        self.features = nn.ModuleDict()
        for index in indices:
            out_c, in_c, k, _ = state_dict[f"features.{index}.weight"].shape
            self.features[str(index)] = nn.Conv2d(in_c, out_c, k, padding=k // 2)
        self.features.load_state_dict({
            key.removeprefix("features."): value for key, value in state_dict.items() if key.startswith("features.")
        })
        self.pool_after = {a for a, b in zip(indices, indices[1:], strict=False) if b - a > 2}
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image in -1..1 -> feature maps at the end of each block."""
        x = ((x + 1) / 2 - self.mean) / self.std
        found = []
        for index, conv in self.features.items():
            x = F.relu(conv(x))
            if int(index) in self.pool_after:
                found.append(x)
                x = F.max_pool2d(x, 2)
        return [*found, x]


def perceptual_loss(vgg: VGGFeatures) -> Loss:
    """Distance between unit-normalised VGG features of each block (as LPIPS without learned weights), plus pixels."""

    def loss(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = F.mse_loss(image, target)
        for a, b in zip(vgg(image), vgg(target), strict=True):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (a - b).pow(2).sum(1).mean()
        return total

    return loss
