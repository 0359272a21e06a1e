"""The identity model: returns its input unchanged, for transport benchmarks and round-trip tests.

It has no checkpoint; the registry offers it under the built-in name ``identity``. It runs in
float32 without padding, so a round trip through it is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ModelDescriptor

FAMILY = "identity"


def _run(module: nn.Module, x: torch.Tensor, values: dict[str, Any]) -> torch.Tensor:
    return x


def load() -> ModelDescriptor:
    """Return the identity model's descriptor."""
    return ModelDescriptor(
        module=nn.Identity(),
        family=FAMILY,
        params=(),
        size_multiple=1,
        min_size=1,
        supports_half=False,
        run=_run,
    )
