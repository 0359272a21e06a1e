"""Reading checkpoints into state dicts without running code from them.

``.safetensors`` files hold only tensors. Every other file is read with torch's weights-only
unpickler, which accepts tensors, containers and plain values, plus the classes named in
`ALLOWED_GLOBALS`; a file that needs any other class or function is refused, since unpickling it
would call that code.
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .base import ModelError, UnsafeCheckpointError

ALLOWED_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)
"""Classes and functions a torch checkpoint may reference beyond torch's weights-only defaults:
``argparse.Namespace`` holds the training options in StyleGAN2 (rosinality) training checkpoints;
rebuilding one only sets attributes to plain values."""

WRAPPER_KEYS = ("state_dict", "model", "g_ema", "g")
"""Keys under which training scripts store the weights inside a larger dict: ``state_dict``
(PyTorch Lightning, pSp, e4e and many training loops), ``model`` (common training loops), ``g_ema``
(StyleGAN2 checkpoints: the averaged generator), ``g`` (JoJoGAN and other fine-tunes that keep only
the generator). The first present, holding a dict, is used."""

PARALLEL_PREFIX = "module."
"""Prefix that saving a DataParallel / DistributedDataParallel wrapper adds to every key; removed."""

COMPANION_TENSORS = {"g_ema": ("latent_avg",), "g": ("latent_avg",), "state_dict": ("latent_avg",)}
"""Tensors stored beside a wrapper key that belong to its model; they are added to its state dict
(StyleGAN2 and pSp / e4e checkpoints keep the average latent there)."""

OPTION_KEYS = ("opts", "args")
"""Keys under which training scripts store their options beside the weights: ``opts`` (pSp, e4e),
``args`` (StyleGAN2 training checkpoints). The first present becomes `StateDict.options`."""


class StateDict(dict):
    """Tensors by name, plus `options`: the plain training options saved beside them, or a safetensors
    file's metadata (text by key; empty if none).

    Most families need only the tensors; a family whose keys leave the architecture open (pSp and
    e4e encoders share theirs) reads the option that settles it.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], options: dict[str, Any] | None = None):
        super().__init__(tensors)
        self.options = options or {}

_GLOBAL = re.compile(r"GLOBAL (\S+)")


def read_state_dict(path: str | Path) -> StateDict:
    """Return the tensors of a checkpoint on the CPU, with half precision widened to float32."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path.name}")
    if path.suffix == ".safetensors":
        try:
            data: Any = load_file(path)
            with safe_open(path, "pt") as file:
                options = dict(file.metadata() or {})
        except Exception:  # SafetensorError, OSError, and whatever a crafted header provokes
            raise ModelError(f"cannot read {path.name}: not a valid safetensors file") from None
    else:
        data = _torch_load(path)
        options = _options(data)
    if isinstance(data, dict):
        wrapper = next((key for key in WRAPPER_KEYS if isinstance(data.get(key), dict)), None)
        if wrapper is not None:
            names = COMPANION_TENSORS.get(wrapper, ())
            companions = {key: data[key] for key in names if torch.is_tensor(data.get(key))}
            data = {**data[wrapper], **companions}
    items = data.items() if isinstance(data, dict) else ()
    tensors = {key: value for key, value in items if isinstance(key, str) and torch.is_tensor(value)}
    if not tensors:
        raise ModelError(f"{path.name} holds no state dict (names mapped to tensors) but a {type(data).__name__}")
    if all(key.startswith(PARALLEL_PREFIX) for key in tensors):
        tensors = {key.removeprefix(PARALLEL_PREFIX): value for key, value in tensors.items()}
    return StateDict({key: _widen(value) for key, value in tensors.items()}, options)


def _options(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {}
    found = next((data[key] for key in OPTION_KEYS if key in data), None)
    if isinstance(found, argparse.Namespace):
        found = vars(found)
    return dict(found) if isinstance(found, dict) else {}


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _GLOBAL.search(str(error))
        if found:
            raise UnsafeCheckpointError(
                f"{path.name} was not loaded: reading it would run code ({found.group(1)[:80]}), not just read "
                "tensors. Re-save only the weights, torch.save(model.state_dict(), path), or convert "
                "the file to .safetensors, then load that."
            ) from None
        raise _damaged(path) from None
    except Exception:  # torch.load raises many kinds on files that are not checkpoints
        raise _damaged(path) from None


def _damaged(path: Path) -> ModelError:
    """The error for a file torch cannot read; the reason is not given, as it would quote the file."""
    return ModelError(f"cannot read {path.name}: not a PyTorch checkpoint, or damaged")


def _widen(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor
