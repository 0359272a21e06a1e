"""Style transfer models: families of networks, safe checkpoint reading, and a caching registry.

>>> model = load_model("multistyle26")
>>> out = model.stylize(rgb, style="3:0.5,12:0.5", strength=0.8)  # rgb: [N,3,H,W] sRGB 0..1
"""

from .base import (
    ModelDescriptor,
    ModelError,
    Param,
    ParamError,
    StyleModel,
    UnknownModelError,
    UnsafeCheckpointError,
)
from .registry import ModelRegistry, load_model, resolve_device

__all__ = [
    "ModelDescriptor",
    "ModelError",
    "ModelRegistry",
    "Param",
    "ParamError",
    "StyleModel",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "load_model",
    "resolve_device",
]
