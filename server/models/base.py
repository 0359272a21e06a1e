"""What every model family shares: typed parameters, errors, and `StyleModel`, the runnable model.

A family module (`multistyle`, `fast_neural_style`, ...) turns a state dict into a `ModelDescriptor`:
an `nn.Module` plus what the host needs to know to drive it. `StyleModel` wraps a descriptor with
everything that is the same for all families: parameter validation, padding to the network's size
multiple, dtype and device handling, the generic `strength` mix, and running a frame in tiles when it
does not fit the device (server/tiling.py): on request (`tile=`), when the frame's estimated memory is
over the budget, or as a retry after a CUDA out-of-memory error.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F

from ..tiling import Plan, default_tile, device_bytes, run_plan

log = logging.getLogger("vst.server")

PARAM_TYPES = ("float", "int", "bool", "choice", "string", "style_mix", "image")  # image: a picture's bytes or name

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ModelError(Exception):
    """A model cannot be found, read, built or run as asked."""


class UnknownModelError(ModelError):
    """No model of that name exists, or no family recognises a checkpoint's keys."""


class UnsafeCheckpointError(ModelError):
    """Reading a checkpoint would execute code from it, so it was not loaded."""


class ParamError(ModelError):
    """A parameter value is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Param:
    """A typed model parameter, which a host turns into a UI control."""

    name: str
    type: str
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"parameter {self.name!r}: type {self.type!r} is not one of {PARAM_TYPES}")

    def to_dict(self) -> dict[str, Any]:
        """Return the parameter as a plain (msgpack-able) dict; unset fields are left out."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": self.default}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.help:
            out["help"] = self.help
        return out

    def coerce(self, value: Any) -> Any:
        """Return `value` converted to this parameter's type, or raise ParamError."""
        if self.type == "float":
            return self._in_range(_to_number(self, value, float))
        if self.type == "int":
            return self._in_range(_to_number(self, value, int))
        if self.type == "bool":
            return _to_bool(self, value)
        if self.type == "choice":
            text = str(value)
            if self.choices is None or text not in self.choices:
                raise ParamError(f"{self.name}: {value!r} is not one of {', '.join(self.choices or ())}")
            return text
        if self.type == "image" and isinstance(value, (bytes, bytearray, Picture)):
            return value if isinstance(value, Picture) else bytes(value)  # sent in the request, or resolved
        if self.type in ("string", "image"):
            if not isinstance(value, str):
                raise ParamError(f"{self.name}: expected text, got a {type(value).__name__}")
            return value
        return parse_style_mix(self, value)

    def _in_range(self, number: float) -> Any:
        low = -math.inf if self.min is None else self.min
        high = math.inf if self.max is None else self.max
        if not low <= number <= high:
            raise ParamError(f"{self.name}: {number!r} is out of range; use a value from {low} to {high}")
        return number


class Picture:
    """A style picture the server resolved from a request's `image` value (server/style_images.py)."""


STRENGTH = Param("strength", "float", 1.0, 0.0, 1.0, help="mix of the stylized result over the input, 0 to 1")
"""The parameter every model has: lerp(input, stylized, strength)."""


def _to_number(param: Param, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ParamError(f"{param.name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParamError(f"{param.name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ParamError(f"{param.name}: expected a finite number, got {value!r}")
    if kind is int:
        if number != int(number):
            raise ParamError(f"{param.name}: expected a whole number, got {value!r}")
        return int(number)
    return number


def _to_bool(param: Param, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ParamError(f"{param.name}: expected true or false, got {value!r}")


def parse_style_mix(param: Param, value: Any) -> tuple[float, ...]:
    """Turn a style choice or blend into weights over `param.choices`, summing to 1.

    A style is its index or its name in `param.choices`. Accepted: an int (``7``), a string (``"7"``,
    ``"starry_night"`` or ``"starry_night:0.5,12:0.5"``; a style without a weight counts 1), a mapping
    ``{"3": 0.5, "12": 0.5}``, or one weight per style (a list or tuple, which is also what this
    returns, so validated values validate again). Repeated styles add up.
    """
    choices = list(param.choices or ())
    count = len(choices)
    named = choices != [str(i) for i in range(count)]
    names = ", a name (vst models lists them)" if named else ""
    usage = f"use an index 0-{count - 1}{names} or a blend like '3:0.5,12:0.5'"
    if isinstance(value, bool):
        raise ParamError(f"{param.name}: {value!r} is not a style; {usage}")
    if isinstance(value, int):
        pairs: list[tuple[Any, Any]] = [(value, 1.0)]
    elif isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        pairs = [(index, weight or 1.0) for index, _, weight in (part.partition(":") for part in parts)]
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and len(value) == count:
        pairs = list(enumerate(value))
    else:
        raise ParamError(f"{param.name}: {value!r} is not a style; {usage}")
    weights = [0.0] * count
    for index, weight in pairs:
        if isinstance(index, str) and index.strip().lower() in choices:
            index = choices.index(index.strip().lower())
        try:
            i = int(index)
        except (TypeError, ValueError):
            close = difflib.get_close_matches(str(index).strip().lower(), choices, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ParamError(f"{param.name}: {index!r} is not a style; {hint}{usage}") from None
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise ParamError(f"{param.name}: cannot read the weight {weight!r} of style {i}; {usage}") from None
        if not 0 <= i < count:
            raise ParamError(f"{param.name}: style {i} does not exist; {usage}")
        if not (math.isfinite(w) and w >= 0):
            raise ParamError(f"{param.name}: weight {weight!r} of style {i} must be a number >= 0")
        weights[i] += w
    total = sum(weights)
    if total <= 0:
        raise ParamError(f"{param.name}: {value!r} gives no style any weight; {usage}")
    return tuple(w / total for w in weights)


Runner = Callable[[torch.nn.Module, torch.Tensor, dict[str, Any]], torch.Tensor]
Planner = Callable[[torch.nn.Module, dict[str, Any]], Plan]

MIN_TILE = 32
"""The smallest tile side an out-of-memory retry halves down to before it gives up."""


@dataclass
class ModelDescriptor:
    """What a family's `load(state_dict)` returns: the network and how to drive it."""

    module: torch.nn.Module
    family: str
    params: tuple[Param, ...]
    """The family's own parameters; `StyleModel` adds `strength`."""
    size_multiple: int
    min_size: int
    supports_half: bool
    run: Runner
    """(module, sRGB 0..1 [N,3,H,W] already padded, validated values) -> sRGB 0..1, same size."""
    model_type: type[StyleModel] | None = None
    """The `StyleModel` subclass that serves this family (one with a wider API); None: StyleModel."""
    plan: Planner | None = None
    """(module, validated values) -> the network as tiling steps (server/tiling.py); None: never tiled."""
    info: dict[str, str] = field(default_factory=dict)
    """What the checkpoint says about itself (e.g. the settings it was trained with); shown by `vst models`."""
    cpu_runtime: str = "torch"
    """What runs the untiled network on a CPU: torch, or onnxruntime (server/onnx_cpu.py; needs `plan`),
    chosen per family by measurement (bench/model.py)."""

    def build(self, name: str, device: torch.device, dtype: torch.dtype) -> StyleModel:
        """Wrap the network in its model class on a device."""
        return (self.model_type or StyleModel)(name, self, device, dtype)


class StyleModel:
    """A loaded model on a device, ready to stylize tensors of any size."""

    memory_budget: int | None = None
    """Device bytes a frame's activations may take before it is tiled; None: free CUDA memory / no limit."""

    def __init__(self, name: str, descriptor: ModelDescriptor, device: torch.device, dtype: torch.dtype):
        if dtype != torch.float32 and not descriptor.supports_half:
            raise ModelError(f"{name}: the {descriptor.family} family does not run in {dtype}")
        self.name = name
        self.family = descriptor.family
        self.params = (*descriptor.params, STRENGTH)
        self.size_multiple = descriptor.size_multiple
        self.min_size = descriptor.min_size
        self.supports_half = descriptor.supports_half
        self.device = device
        self.dtype = dtype
        self._module = descriptor.module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self._run = descriptor.run
        self._plan = descriptor.plan
        self.info = dict(descriptor.info)
        self._onnx = None
        if descriptor.cpu_runtime == "onnxruntime" and device.type == "cpu" and dtype == torch.float32:
            from server.export import PlanNetwork  # server.export imports this module
            from server.onnx_cpu import OnnxPlans

            self._onnx = OnnxPlans(lambda values: PlanNetwork(self.feedforward_plan(values)))

    def __repr__(self) -> str:
        return f"StyleModel({self.name!r}, family={self.family!r}, device={self.device}, dtype={self.dtype})"

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Return every parameter's value: given ones coerced and checked, the rest defaulted."""
        known = {param.name: param for param in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ParamError(
                f"{self.name} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are {', '.join(known)}"
            )
        return {name: param.coerce(params.get(name, param.default)) for name, param in known.items()}

    def stylize(
        self,
        rgb: torch.Tensor,
        *,
        tile: int | None = None,
        state: dict[str, Any] | None = None,
        **params: Any,
    ) -> torch.Tensor:
        """Stylize sRGB-encoded 0..1 images [N,3,H,W] of any size; returns float32 on rgb's device.

        `tile` (pixels) runs the frame layer by layer in tiles of that side with whole-frame
        normalisation statistics (server/tiling.py; same result as untiled up to float rounding).
        None decides: untiled, unless the frame's estimated activations exceed `memory_budget`
        (default: the free memory of a CUDA device; no limit on the CPU), or a CUDA out-of-memory
        error retries it in tiles, halving the side until it fits. Families without a tiling plan
        (StyleGAN2, identity) ignore `tile`.

        `state` is the memory of one sequence (a dict kept by the caller from frame to frame) for
        models that use the previous frames; the others ignore it.
        """
        if not (torch.is_tensor(rgb) and rgb.ndim == 4 and rgb.shape[1] == 3 and rgb.is_floating_point()):
            shape = tuple(rgb.shape) if torch.is_tensor(rgb) else type(rgb).__name__
            raise ValueError(f"{self.name}: expected a float tensor [N,3,H,W], got {shape}")
        if rgb.shape[0] == 0 or rgb.shape[2] == 0 or rgb.shape[3] == 0:
            raise ValueError(f"{self.name}: empty image {tuple(rgb.shape)}")
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE):
            raise ParamError(f"tile: {tile!r} is not a tile size; use a whole number of pixels >= {MIN_TILE}")
        values = self.validate(params)
        strength = values["strength"]
        if strength == 0:
            return rgb.detach().to(torch.float32, copy=True)
        height, width = rgb.shape[2:]
        with torch.inference_mode():
            x = _pad(rgb.to(device=self.device, dtype=self.dtype), self.size_multiple, self.min_size)
            y = self._forward_fitted(x, values, state, tile)[:, :, :height, :width]
        with torch.no_grad():  # copied out of inference mode: the caller gets an ordinary tensor
            y = y.to(device=rgb.device, dtype=torch.float32, copy=True)
            return y if strength == 1 else torch.lerp(rgb.to(torch.float32), y, strength)

    def _forward_fitted(
        self, x: torch.Tensor, values: dict[str, Any], state: dict[str, Any] | None, tile: int | None
    ) -> torch.Tensor:
        """Run the network untiled or in tiles, whichever fits (see `stylize`)."""
        if self._plan is None:
            return self._forward(x, values, state)
        if tile is None:
            tile = self._automatic_tile(x, values)
        if tile is None:
            try:
                return self._forward(x, values, state)
            except torch.OutOfMemoryError:
                tile = default_tile(*x.shape[2:])
                log.warning("%s: out of device memory on a %dx%d frame; retrying in tiles of %d px",
                            self.name, x.shape[3], x.shape[2], tile)
                _release_cached(self.device)
        while True:
            try:
                return self._run_tiled(x, values, tile)
            except torch.OutOfMemoryError:
                if tile // 2 < MIN_TILE:
                    raise
                _release_cached(self.device)
                log.warning("%s: out of device memory in tiles of %d px; retrying with %d px",
                            self.name, tile, tile // 2)
                tile //= 2

    def _automatic_tile(self, x: torch.Tensor, values: dict[str, Any]) -> int | None:
        """None when the frame fits the memory budget, else the largest power-of-two tile that does."""
        budget = self.memory_budget
        if budget is None and self.device.type == "cuda":
            budget = int(torch.cuda.mem_get_info(self.device)[0] * 0.8)
        if budget is None:
            return None
        plan = self._plan(self._module, values)
        itemsize = self.dtype.itemsize
        needed = device_bytes(plan, x.shape, itemsize)
        if needed <= budget:
            return None
        tile = default_tile(*x.shape[2:])
        while tile // 2 >= MIN_TILE and device_bytes(plan, (x.shape[0], 3, tile + 16, tile + 16), itemsize) > budget:
            tile //= 2
        log.info("%s: a %dx%d frame needs about %.0f MiB of device memory, over the %.0f MiB budget; "
                 "tiles of %d px", self.name, x.shape[3], x.shape[2], needed / 2**20, budget / 2**20, tile)
        return tile

    def _run_tiled(self, x: torch.Tensor, values: dict[str, Any], tile: int) -> torch.Tensor:
        """The network layer by layer in tiles (server/tiling.py), activations kept in CPU memory."""
        return run_plan(self._plan(self._module, values), x, tile, self.device, self.dtype).to(self.device)

    def _forward(self, x: torch.Tensor, values: dict[str, Any], state: dict[str, Any] | None) -> torch.Tensor:
        """Run the network on a padded batch (in inference mode); `state` is for temporal subclasses.

        On a CPU a family that chose onnxruntime runs there (server/onnx_cpu.py); tiles stay in torch.
        """
        if self._onnx is not None:
            return self._onnx.run(x, values)
        return self._run(self._module, x, values)

    def feedforward_plan(self, params: dict[str, Any]) -> Plan:
        """The network with `params` baked in as plain steps (server/tiling.py), for exports.

        Raises ModelError for a family that is not a feed-forward network (StyleGAN2, identity).
        """
        if self._plan is None:
            raise ModelError(f"{self.name}: the {self.family} family is not a feed-forward network with a plan")
        return self._plan(self._module, self.validate(params))

    def memory_bytes(self) -> int:
        """Return the bytes held by the network's parameters and buffers."""
        tensors = chain(self._module.parameters(), self._module.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def schema(self) -> dict[str, Any]:
        """Return what a host needs to build its UI, as plain data."""
        schema = {
            "name": self.name,
            "family": self.family,
            "params": [param.to_dict() for param in self.params],
            "size_multiple": self.size_multiple,
            "supports_half": self.supports_half,
        }
        if self.info:
            schema["info"] = dict(self.info)
        return schema


def _release_cached(device: torch.device) -> None:
    """Give cached CUDA blocks back before a retry, so the smaller attempt can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _pad(x: torch.Tensor, multiple: int, min_size: int) -> torch.Tensor:
    """Pad bottom and right up to a multiple and at least min_size; reflect where possible."""
    for dim in (2, 3):
        side = x.shape[dim]
        target = max(min_size, side)
        target += -target % multiple
        amount = target - side
        if amount:
            pad = (0, 0, 0, amount) if dim == 2 else (0, amount, 0, 0)
            x = F.pad(x, pad, mode="reflect" if amount < side else "replicate")
    return x
