"""Inversion: find the W+ latent whose image matches a target, by gradient descent from a starting latent."""

from __future__ import annotations

import math

import torch

from server.models.stylegan2 import Generator

from .losses import Loss

FINAL_LR_FRACTION = 0.1
"""The learning rate decays (cosine) to this fraction of its start over the steps."""

SHARED_FRACTION = 1 / 3
"""Share of the steps that move only the w shared by all layers, before the per-layer offsets join in."""


def best_start(generator: Generator, target: torch.Tensor, candidates: torch.Tensor, loss: Loss) -> torch.Tensor:
    """For each target [N, 3, S, S], the candidate w [K, style_dim] whose image is closest, as W+.

    One synthesis per candidate, no gradients: a cheap guard against starting in the wrong basin.
    """
    noise = generator.constant_noise()
    best = torch.full((target.shape[0],), math.inf)
    chosen = torch.zeros(target.shape[0], dtype=torch.long)
    with torch.no_grad():
        for k, w in enumerate(candidates):
            image = generator.synthesize(w[None, None].expand(1, generator.n_latent, -1), noise)
            for n in range(target.shape[0]):
                value = loss(image, target[n : n + 1]).item()
                if value < best[n]:
                    best[n], chosen[n] = value, k
    return candidates[chosen.to(candidates.device)][:, None].expand(-1, generator.n_latent, -1)


def project(
    generator: Generator, target: torch.Tensor, start: torch.Tensor, steps: int, lr: float, loss: Loss
) -> torch.Tensor:
    """Optimise W+ [N, n_latent, style_dim] from `start` for `steps` Adam steps against `target` in -1..1.

    The latent is optimised as a w shared by all layers plus a per-layer offset. The first third of
    the steps moves only the shared w (W-space inversion: the whole image, without the per-layer
    freedom that fits details before the layout is right); then the offsets fit the details. The
    generator runs with its constant noise, so the result is reproducible. Returns the latent
    (detached); with zero steps, `start` itself.
    """
    shared = start.detach().mean(dim=1, keepdim=True).clone().requires_grad_(True)
    offset = (start.detach() - shared.detach()).requires_grad_(True)
    optimiser = torch.optim.Adam([shared, offset], lr=lr)
    noise = generator.constant_noise()
    shared_only = int(steps * SHARED_FRACTION)
    with torch.enable_grad():
        for step in range(steps):
            progress = step / max(1, steps - 1)
            fraction = FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))
            optimiser.param_groups[0]["lr"] = lr * fraction
            latent = shared + (offset.detach() if step < shared_only else offset)
            value = loss(generator.synthesize(latent, noise), target)
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
    return (shared + offset).detach()
