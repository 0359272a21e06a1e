"""Inversion: find the W+ latent whose image matches a target, by gradient descent from a starting latent."""

from __future__ import annotations

import math

import torch

from server.models.stylegan2 import Generator

from .losses import Loss

FINAL_LR_FRACTION = 0.1
"""The learning rate decays (cosine) to this fraction of its start over the steps."""


def project(
    generator: Generator, target: torch.Tensor, start: torch.Tensor, steps: int, lr: float, loss: Loss
) -> torch.Tensor:
    """Optimise W+ [N, n_latent, style_dim] from `start` for `steps` Adam steps against `target` in -1..1.

    The latent is optimised as a w shared by all layers plus a per-layer offset: the shared part
    moves the whole image quickly (as W-space inversion does), the offsets then fit the details.
    The generator runs with its constant noise, so the result is reproducible. Returns the latent
    (detached); with zero steps, `start` itself.
    """
    shared = start.detach().mean(dim=1, keepdim=True).clone().requires_grad_(True)
    offset = (start.detach() - shared.detach()).requires_grad_(True)
    optimiser = torch.optim.Adam([shared, offset], lr=lr)
    noise = generator.constant_noise()
    with torch.enable_grad():
        for step in range(steps):
            progress = step / max(1, steps - 1)
            fraction = FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))
            optimiser.param_groups[0]["lr"] = lr * fraction
            value = loss(generator.synthesize(shared + offset, noise), target)
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
    return (shared + offset).detach()
