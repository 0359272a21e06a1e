"""Temporal smoothing of latents, to suppress frame-to-frame flicker of inverted sequences.

The server sees each frame once, in order, so smoothing is causal: a frame's latent is blended with
those of the frames before it, never after.
"""

from __future__ import annotations

import math
from collections import deque

import torch

SMOOTHING = ("off", "gaussian", "exponential")


class LatentSmoother:
    """Smooths a stream of latents: a Gaussian-weighted mean over the recent past, or an exponential average.

    ``gaussian``: weights exp(-d^2 / (2 sigma^2)) for frames d = 0, 1, ... back, up to 3 sigma.
    ``exponential``: s_t = alpha * s_{t-1} + (1 - alpha) * x_t (alpha = weight of the past).
    """

    def __init__(self, kind: str, sigma: float = 1.5, alpha: float = 0.5):
        if kind not in SMOOTHING[1:]:
            raise ValueError(f"smoothing {kind!r} is not one of {', '.join(SMOOTHING[1:])}")
        self.settings = (kind, sigma, alpha)
        self._history: deque[torch.Tensor] = deque(maxlen=math.ceil(3 * sigma) + 1)
        self._average: torch.Tensor | None = None

    def step(self, latent: torch.Tensor) -> torch.Tensor:
        """Take the next frame's latent; return its smoothed value."""
        kind, sigma, alpha = self.settings
        if self._history and self._history[-1].shape != latent.shape:  # a different batch: start again
            self._history.clear()
            self._average = None
        self._history.append(latent)
        if kind == "exponential":
            self._average = latent if self._average is None else alpha * self._average + (1 - alpha) * latent
            return self._average
        weights = [math.exp(-(d**2) / (2 * sigma**2)) for d in range(len(self._history))]
        total = sum(w * x for w, x in zip(weights, reversed(self._history), strict=True))
        return total / sum(weights)


def smooth_latents(latents: torch.Tensor, kind: str, sigma: float = 1.5, alpha: float = 0.5) -> torch.Tensor:
    """Smooth a sequence of latents [T, ...] along its first dimension, as the server does frame by frame."""
    if kind == "off":
        return latents
    smoother = LatentSmoother(kind, sigma, alpha)
    return torch.stack([smoother.step(latent) for latent in latents])
