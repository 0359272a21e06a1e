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
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .base import ModelError, UnsafeCheckpointError

ALLOWED_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)
"""Classes and functions a torch checkpoint may reference beyond torch's weights-only defaults:
``argparse.Namespace`` holds the training options in StyleGAN2 (rosinality) training checkpoints;
rebuilding one only sets attributes to plain values."""

WRAPPER_KEYS = ("state_dict", "model", "g_ema")
"""Keys under which training scripts store the weights inside a larger dict: ``state_dict``
(PyTorch Lightning and many training loops), ``model`` (common training loops), ``g_ema``
(StyleGAN2 checkpoints: the averaged generator). The first present, holding a dict, is used."""

COMPANION_TENSORS = {"g_ema": ("latent_avg",)}
"""Tensors stored beside a wrapper key that belong to its model; they are added to its state dict."""

_GLOBAL = re.compile(r"GLOBAL (\S+)")
_READ_ERRORS = (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Return the tensors of a checkpoint on the CPU, with half precision widened to float32."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            data: Any = load_file(path)
        except (SafetensorError, OSError) as error:
            raise ModelError(f"cannot read {path}: not a valid safetensors file ({error})") from None
    else:
        data = _torch_load(path)
    if isinstance(data, dict):
        wrapper = next((key for key in WRAPPER_KEYS if isinstance(data.get(key), dict)), None)
        if wrapper is not None:
            names = COMPANION_TENSORS.get(wrapper, ())
            companions = {key: data[key] for key in names if torch.is_tensor(data.get(key))}
            data = {**data[wrapper], **companions}
    items = data.items() if isinstance(data, dict) else ()
    tensors = {key: value for key, value in items if torch.is_tensor(value)}
    if not tensors:
        raise ModelError(f"{path} holds no state dict (names mapped to tensors) but a {type(data).__name__}")
    return {key: _widen(value) for key, value in tensors.items()}


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _GLOBAL.search(str(error))
        if found:
            raise UnsafeCheckpointError(
                f"{path} was not loaded: reading it would run code ({found.group(1)}), not just read "
                "tensors. Re-save only the weights, torch.save(model.state_dict(), path), or convert "
                "the file to .safetensors, then load that."
            ) from None
        raise _damaged(path, error) from None
    except _READ_ERRORS as error:
        raise _damaged(path, error) from None


def _damaged(path: Path, error: Exception) -> ModelError:
    text = str(error).split("WeightsUnpickler error:")[-1]
    reason = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return ModelError(f"cannot read {path}: not a PyTorch checkpoint, or damaged ({reason[:200]})")


def _widen(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor
