"""NVlabs stylegan2-ada-pytorch / stylegan3 ``.pkl`` generators to rosinality checkpoints, without running their code.

Those pickles rebuild their networks by executing Python source stored in the file
(``torch_utils.persistence``). `RestrictedUnpickler` instead rebuilds only tensors, numpy arrays and
plain containers; every persistent network object becomes an inert `Persistent` holding the
object's saved state (its ``_parameters``, ``_buffers`` and ``_modules``), and its source is never
executed. Any other class or function in the file makes it refuse the file.

Name mapping (G_ema, StyleGAN2 "skip" generators)::

    mapping.fc{i}.{weight,bias}          -> style.{i+1}.{weight,bias}
    mapping.w_avg                        -> latent_avg
    synthesis.b4.const                   -> input.input
    synthesis.b4.conv1.*                 -> conv1.*
    synthesis.b{R}.conv0.*, conv1.*      -> convs.{2k}.*, convs.{2k+1}.*     (k = log2 R - 3)
    synthesis.b4.torgb.*, b{R}.torgb.*   -> to_rgb1.*, to_rgbs.{k}.*
    <layer>.affine                       -> <layer>.conv.modulation
    <layer>.noise_strength, .noise_const -> <layer>.noise.weight, noises.noise_{i}
"""

from __future__ import annotations

import io
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.models.base import ModelError, UnsafeCheckpointError
from server.models.stylegan2 import Generator, GeneratorConfig

_BLOCK = re.compile(r"synthesis\.b(\d+)\.")
_FC = re.compile(r"mapping\.fc(\d+)\.weight")


class Persistent:
    """What an NVlabs persistent object (a network, a layer) is unpickled as: its name and saved state only."""

    def __init__(self, class_name: str, state: Any):
        self.class_name = class_name
        self.state = state if isinstance(state, dict) else {}


class InertDict(dict):
    """Stands in for dict subclasses such as ``dnnlib.util.EasyDict``: a plain dict, nothing more."""


def _persistent(meta: Any) -> Persistent:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("a torch_utils.persistence object without class metadata")
    return Persistent(str(meta.get("class_name")), meta.get("state"))


def _storage_from_bytes(data: bytes) -> Any:
    """A tensor storage pickled by ``torch.save``; read with torch's weights-only unpickler."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _tensor(storage: Any, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> torch.Tensor:
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _numpy_reconstruct() -> Any:
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors, numpy arrays, containers and inert stand-ins; refuses every other global."""

    SAFE: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _tensor,
        ("torch._utils", "_rebuild_tensor"): _tensor,
        ("torch._utils", "_rebuild_parameter"): _parameter,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): lambda text, encoding="latin1": str(text).encode(encoding),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
        ("dnnlib.util", "EasyDict"): InertDict,
        ("dnnlib", "EasyDict"): InertDict,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.SAFE:
            return self.SAFE[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return _numpy_reconstruct() if name == "_reconstruct" else np.core.multiarray.scalar
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and name.endswith("Storage") and name in dir(torch):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"refusing to read this pickle: it asks for {module}.{name}, which could run code. Only tensors, "
            "numpy arrays, containers and NVlabs network objects (whose stored source is never run) are read."
        )


def read_nvlabs_pickle(path: str | Path) -> dict[str, Any]:
    """Unpickle an NVlabs network pickle with `RestrictedUnpickler`; returns its top-level dict."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = RestrictedUnpickler(file).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as error:
        raise ModelError(f"cannot read {path}: not an NVlabs network pickle, or damaged ({error})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds a {type(data).__name__}, not the dict of networks an NVlabs pickle has")
    return data


def module_state(obj: Persistent, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a persistent network's saved ``_parameters``, ``_buffers`` and ``_modules`` into a state dict."""
    found: dict[str, torch.Tensor] = {}
    for field in ("_parameters", "_buffers"):
        for name, value in (obj.state.get(field) or {}).items():
            if torch.is_tensor(value):
                found[prefix + name] = value
    for name, child in (obj.state.get("_modules") or {}).items():
        if isinstance(child, Persistent):
            found.update(module_state(child, f"{prefix}{name}."))
    return found


def nvlabs_to_rosinality(nv: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Map an NVlabs StyleGAN2 G_ema state dict to rosinality's keys; returns (g_ema, latent_avg)."""
    if any(key.startswith(("synthesis.input.", "synthesis.L0_")) for key in nv):
        raise ModelError(
            "this is a StyleGAN3 (alias-free) generator; its synthesis network has no StyleGAN2 equivalent, "
            "so it cannot be converted to the rosinality layout. StyleGAN2 pickles from the stylegan3 repository work."
        )
    if "mapping.embed.weight" in nv:
        raise ModelError("this is a class-conditional generator (mapping.embed); vst serves unconditional ones only")
    if "synthesis.b4.const" not in nv or "mapping.fc0.weight" not in nv:
        raise ModelError("G_ema has no synthesis.b4.const or mapping.fc0: not an NVlabs StyleGAN2 generator")
    if any(".skip." in key for key in nv) or not any(key.endswith("torgb.weight") and "b4." not in key for key in nv):
        raise ModelError("only the 'skip' generator architecture (the StyleGAN2 default) maps to rosinality's")
    n_mlp = sum(1 for key in nv if _FC.fullmatch(key))
    resolutions = sorted({int(m.group(1)) for key in nv if (m := _BLOCK.match(key))})
    channels = {r: nv[f"synthesis.b{r}.conv1.weight"].shape[0] for r in resolutions}
    z_dim, w_dim = nv["mapping.fc0.weight"].shape[1], nv[f"mapping.fc{n_mlp - 1}.weight"].shape[0]
    if z_dim != w_dim:
        raise ModelError(f"z has {z_dim} dimensions but w {w_dim}; rosinality generators need them equal")
    config = GeneratorConfig(resolutions[-1], w_dim, n_mlp, channels)
    out = dict(Generator(config).state_dict())  # gives the fixed blur and upsample kernels
    for i in range(n_mlp):
        out[f"style.{i + 1}.weight"] = nv[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = nv[f"mapping.fc{i}.bias"]
    out["input.input"] = nv["synthesis.b4.const"][None]
    _layer(out, nv, "synthesis.b4.conv1", "conv1", 0)
    _to_rgb(out, nv, "synthesis.b4.torgb", "to_rgb1")
    for k, r in enumerate(resolutions[1:]):
        _layer(out, nv, f"synthesis.b{r}.conv0", f"convs.{2 * k}", 2 * k + 1)
        _layer(out, nv, f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)
        _to_rgb(out, nv, f"synthesis.b{r}.torgb", f"to_rgbs.{k}")
    latent_avg = nv.get("mapping.w_avg")
    if latent_avg is None:
        raise ModelError("G_ema has no mapping.w_avg (the average latent)")
    return {key: value.float().contiguous() for key, value in out.items()}, latent_avg.float()


def _layer(out: dict[str, torch.Tensor], nv: dict[str, torch.Tensor], source: str, target: str, noise: int) -> None:
    out[f"{target}.conv.weight"] = nv[f"{source}.weight"][None]
    out[f"{target}.conv.modulation.weight"] = nv[f"{source}.affine.weight"]
    out[f"{target}.conv.modulation.bias"] = nv[f"{source}.affine.bias"]
    out[f"{target}.noise.weight"] = nv[f"{source}.noise_strength"].reshape(1)
    out[f"{target}.activate.bias"] = nv[f"{source}.bias"]
    out[f"noises.noise_{noise}"] = nv[f"{source}.noise_const"][None, None]


def _to_rgb(out: dict[str, torch.Tensor], nv: dict[str, torch.Tensor], source: str, target: str) -> None:
    out[f"{target}.conv.weight"] = nv[f"{source}.weight"][None]
    out[f"{target}.conv.modulation.weight"] = nv[f"{source}.affine.weight"]
    out[f"{target}.conv.modulation.bias"] = nv[f"{source}.affine.bias"]
    out[f"{target}.bias"] = nv[f"{source}.bias"].reshape(1, 3, 1, 1)


def convert_nvlabs(source: str | Path, target: str | Path) -> GeneratorConfig:
    """Read an NVlabs pickle's G_ema safely and write it as a rosinality checkpoint (g_ema, latent_avg)."""
    data = read_nvlabs_pickle(source)
    network = data.get("G_ema")
    if not isinstance(network, Persistent):
        raise ModelError(f"{source} has no G_ema network (it holds {', '.join(map(str, data)) or 'nothing'})")
    try:
        g_ema, latent_avg = nvlabs_to_rosinality(module_state(network))
        config = GeneratorConfig.from_state_dict(g_ema)
        Generator(config).load_state_dict(g_ema)  # the result must load as it will be served
    except (KeyError, RuntimeError) as error:
        raise ModelError(f"{source}: G_ema does not have the StyleGAN2 layer layout ({error})") from None
    torch.save({"g_ema": g_ema, "latent_avg": latent_avg}, target)
    return config
