"""Losses of `vst train style` (Johnson et al. 2016, Gatys et al. 2016, Isola et al. 2017, Ruder et al. 2016).

Images are sRGB-encoded 0..1 [N, 3, H, W]. The loss network is a torchvision-layout VGG read from a
local file (`server.stylegan.losses.VGGFeatures`, which returns each block's last ReLU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONTENT_BLOCK = 1
"""The block whose features the content loss compares: relu2_2 in VGG16/19, as in Johnson et al."""


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices [N, C, C] of feature maps [N, C, H, W], normalised by C*H*W."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


def vgg_input(image: torch.Tensor) -> torch.Tensor:
    """sRGB 0..1 -> the -1..1 range `VGGFeatures` expects."""
    return image * 2 - 1


def content_loss(output_features: list[torch.Tensor], content_features: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared feature distance at `CONTENT_BLOCK` (the last block when the network is shallower)."""
    block = min(CONTENT_BLOCK, len(output_features) - 1)
    return F.mse_loss(output_features[block], content_features[block])


def style_loss(output_features: list[torch.Tensor], style_grams: list[torch.Tensor]) -> torch.Tensor:
    """Sum over blocks of the squared Frobenius distance of Gram matrices to the style image's."""
    total = output_features[0].new_zeros(())
    for features, target in zip(output_features, style_grams, strict=True):
        total = total + (gram(features) - target).pow(2).sum((1, 2)).mean()
    return total


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of horizontal and vertical neighbours."""
    return (image[..., 1:, :] - image[..., :-1, :]).abs().mean() + (image[..., 1:] - image[..., :-1]).abs().mean()


class PatchDiscriminator(nn.Module):
    """A PatchGAN (Isola et al.): 4x4 convs with stride 2, LeakyReLU, one real/fake score per patch."""

    def __init__(self, width: int = 32, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        channels = 3
        for layer in range(layers):
            out = width * 2**layer
            blocks += [nn.Conv2d(channels, out, 4, 2, 1), nn.LeakyReLU(0.2)]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image * 2 - 1)


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of the discriminator: real patches to 1, generated ones to 0."""
    return (real_scores - 1).pow(2).mean() + fake_scores.pow(2).mean()


def generator_adversarial_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of the generator: make its patches score as real."""
    return (fake_scores - 1).pow(2).mean()


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `image` [N,C,H,W] at each pixel + flow [N,2,H,W] (pixels, x right, y down), bilinear."""
    _, _, height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=image.dtype), torch.arange(width, dtype=image.dtype),
                            indexing="ij")
    x = (xs.to(image.device) + flow[:, 0]) / max(width - 1, 1) * 2 - 1
    y = (ys.to(image.device) + flow[:, 1]) / max(height - 1, 1) * 2 - 1
    return F.grid_sample(image, torch.stack([x, y], dim=-1), align_corners=True, padding_mode="border")


def temporal_loss(current: torch.Tensor, previous: torch.Tensor, backward_flow: torch.Tensor,
                  visible: torch.Tensor) -> torch.Tensor:
    """Ruder et al.'s short-term loss: the stylized frame t against stylized t-1 warped to it, where visible."""
    warped = warp(previous, backward_flow)
    return ((current - warped).pow(2) * visible).sum() / (visible.sum() * current.shape[1]).clamp_min(1)
