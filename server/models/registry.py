"""Finding, loading and caching models by name.

Names come from three places, earlier ones winning on a clash: ``identity``, the built-in weights
in ``server/weights``, then the checkpoints in the folders given to `ModelRegistry`, in order. A path
to any checkpoint file is accepted only when the registry allows paths (`vst serve
--allow-model-paths`, local tools); otherwise a name outside those folders is unknown, whether or not
such a file exists, and error messages never quote what a file holds. A
checkpoint's family is found by asking each module in `FAMILIES` whether it recognises the keys.
A ``.json`` recipe names its family and the checkpoints it combines (relative to its folder); the
family's ``load_recipe(recipe, folder)`` builds it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from . import arbitrary, fast_neural_style, identity, keyframe, multistyle, stylegan2
from .base import ModelDescriptor, ModelError, StyleModel, UnknownModelError
from .checkpoint import read_state_dict

FAMILIES = (multistyle, arbitrary, fast_neural_style, keyframe, stylegan2)
"""Detection order. Adding an architecture means adding a module and one entry here."""

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "weights"
RECIPE_SUFFIX = ".json"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", RECIPE_SUFFIX)
IDENTITY = "identity"

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a torch.device that exists here."""
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        try:
            resolved = torch.device(text)
        except RuntimeError:
            raise ModelError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available():
            raise ModelError(
                f"device {device!r} was asked for, but torch {torch.__version__} sees no CUDA GPU here; "
                "use device 'cpu' or 'auto', or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ModelError(f"device {device!r} does not exist; this machine has cuda:0 to cuda:{count - 1}")
        return resolved
    raise ModelError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N")


class ModelRegistry:
    """Loads models on first use and keeps the most recently used ones within a memory budget."""

    def __init__(
        self,
        folders: Sequence[Path] = (),
        device: str | torch.device = "cpu",
        memory_budget: int = 4 << 30,
        half: bool | None = None,
        allow_paths: bool = False,
    ):
        self.folders = tuple(Path(folder) for folder in folders)
        self.allow_paths = allow_paths
        for folder in self.folders:
            if not folder.is_dir():
                raise ModelError(f"model folder {folder} does not exist or is not a folder")
        self.device = resolve_device(device)
        self.memory_budget = memory_budget
        self.half = half
        self._loaded: OrderedDict[str, StyleModel] = OrderedDict()  # key -> model, least recent first
        self._schemas: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._lock = threading.RLock()

    def available(self) -> list[str]:
        """Return the model names that `get` accepts, without loading anything."""
        return [IDENTITY, *self._checkpoints()]

    def describe(self, name: str) -> dict[str, Any]:
        """Return a model's schema plus whether it is loaded; reads the checkpoint at most once."""
        with self._lock:
            key, path = self._resolve(name)
            if key in self._loaded:
                return {**self._loaded[key].schema(), "loaded": True}
            cpu = torch.device("cpu")
            if path is None:
                return {**StyleModel(IDENTITY, identity.load(), cpu, torch.float32).schema(), "loaded": False}
            stat = path.stat()
            stamp = (key, stat.st_mtime_ns, stat.st_size)
            if stamp not in self._schemas:
                self._schemas[stamp] = _load(path).build(path.stem, cpu, torch.float32).schema()
            return {**self._schemas[stamp], "loaded": False}

    def get(self, name_or_path: str) -> StyleModel:
        """Return the model, loading it on first use and evicting least recently used ones to fit."""
        with self._lock:
            key, path = self._resolve(name_or_path)
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            descriptor = identity.load() if path is None else _load(path)
            name = IDENTITY if path is None else path.stem
            dtype = self._dtype(descriptor)
            size = sum(
                t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size())
                for t in chain(descriptor.module.parameters(), descriptor.module.buffers())
            )
            self._make_room(name, size)
            model = descriptor.build(name, self.device, dtype)
            self._loaded[key] = model
            mib = size / 2**20
            log.info("loaded %s (%s, %.2f MiB, %s on %s)", name, model.family, mib, dtype, model.device)
            return model

    def unload(self, name: str) -> bool:
        """Drop the loaded model of that name (as `loaded` lists it) or file; False if none is loaded."""
        try:  # a loaded model's key is its file's resolved path; only loaded models can match
            path = str(Path(name).resolve())
        except (OSError, ValueError, RuntimeError):
            path = None
        with self._lock:
            for key, model in self._loaded.items():
                if name == model.name or key == path:
                    del self._loaded[key]
                    return True
            return False

    def loaded(self) -> list[dict[str, Any]]:
        """Return the loaded models, most recently used first."""
        with self._lock:
            return [
                {"name": model.name, "family": model.family, "bytes": model.memory_bytes()}
                for model in reversed(self._loaded.values())
            ]

    def _checkpoints(self) -> dict[str, Path]:
        """Map each checkpoint name to its file: built-ins first, then the folders in order."""
        found: dict[str, Path] = {}
        for folder in (BUILTIN_DIR, *self.folders):
            if not folder.is_dir():  # a folder can vanish while the server runs (an unmounted share)
                continue
            suffixes = (".safetensors",) if folder == BUILTIN_DIR else CHECKPOINT_SUFFIXES
            for path in sorted(folder.iterdir()):
                if path.suffix in suffixes and path.is_file() and path.stem != IDENTITY:
                    found.setdefault(path.stem, path)
        return found

    def _resolve(self, name_or_path: str) -> tuple[str, Path | None]:
        """Return (cache key, checkpoint file or None for identity) for a name or a file path."""
        if name_or_path == IDENTITY:
            return IDENTITY, None
        path = self._checkpoints().get(name_or_path) or self._in_folders(name_or_path)
        if path is None and self.allow_paths and _is_file(name_or_path):
            path = Path(name_or_path)
        if path is None:
            searched = ", ".join(str(folder) for folder in (BUILTIN_DIR, *self.folders))
            how = "a path to a checkpoint file works too" if self.allow_paths else (
                "other files load only from the server's model folders (vst serve --models-dir)"
            )
            raise UnknownModelError(
                f"no model named {name_or_path[:100]!r}; available: {', '.join(self.available())} "
                f"(searched {searched}; {how})"
            )
        path = path.resolve()
        return str(path), path

    def _in_folders(self, path: str) -> Path | None:
        """The checkpoint a path names when it is a file inside one of the model folders."""
        for folder in self.folders:
            try:
                resolved = (folder / path).resolve()
            except (OSError, ValueError, RuntimeError):
                return None
            if resolved.is_relative_to(folder.resolve()) and resolved.suffix in CHECKPOINT_SUFFIXES and _is_file(
                str(resolved)
            ):
                return resolved
        return None

    def _dtype(self, descriptor: ModelDescriptor) -> torch.dtype:
        half = self.device.type == "cuda" if self.half is None else self.half
        return torch.float16 if half and descriptor.supports_half else torch.float32

    def _make_room(self, name: str, size: int) -> None:
        """Evict least recently used models until `size` more bytes fit in the budget."""
        used = sum(model.memory_bytes() for model in self._loaded.values())
        while self._loaded and used + size > self.memory_budget:
            _, evicted = self._loaded.popitem(last=False)
            used -= evicted.memory_bytes()
            log.info("unloaded model %s to make room for %s", evicted.name, name)
        if size > self.memory_budget:
            log.warning(
                "model %s needs %.2f MiB, more than the %.2f MiB memory budget; it is loaded alone",
                name, size / 2**20, self.memory_budget / 2**20,
            )


def _is_file(name: str) -> bool:
    """Whether a name is the path of a file (False for names no file system accepts)."""
    try:
        return Path(name).is_file()
    except (OSError, ValueError):
        return False


def _load(path: Path) -> ModelDescriptor:
    """Read a checkpoint and build it with the first family that recognises its keys.

    Whatever the file holds, the outcome is a model or a ModelError naming the file, never another
    exception and never a quote of the file's contents (the detail goes to the server's log).
    """
    try:
        if path.suffix == RECIPE_SUFFIX:
            return _load_recipe(path)
        state_dict = read_state_dict(path)
        family = next((family for family in FAMILIES if family.detect(state_dict)), None)
        if family is None:
            families = ", ".join(family.FAMILY for family in FAMILIES)
            raise UnknownModelError(
                f"{path.name}: no model family recognises this checkpoint's {len(state_dict)} tensors "
                f"(tried {families})"
            )
        try:
            return family.load(state_dict)
        except ModelError:
            raise  # the family's own message says what is wrong
        except Exception as error:
            log.info("%s does not fit %s: %s", path, family.FAMILY, error)
            raise ModelError(
                f"{path.name} looks like a {family.FAMILY} checkpoint but its tensors do not fit that "
                "architecture (details in the server log)"
            ) from None
    except ModelError:
        raise
    except Exception as error:
        log.info("cannot read %s: %r", path, error)
        raise ModelError(f"cannot read {path.name}: not a model checkpoint, or damaged") from None


def _load_recipe(path: Path) -> ModelDescriptor:
    """Build a model from a JSON recipe with the family it names."""
    try:
        recipe = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"cannot read recipe {path.name}: not a JSON file, or damaged") from None
    takers = {family.FAMILY: family for family in FAMILIES if hasattr(family, "load_recipe")}
    name = recipe.get("family") if isinstance(recipe, dict) else None
    if not isinstance(name, str) or name not in takers:
        raise UnknownModelError(
            f"{path.name}: a recipe is a JSON object whose 'family' is one of {', '.join(takers)}"
        )
    return takers[name].load_recipe(recipe, path.parent)


_default_registries: dict[torch.device, ModelRegistry] = {}
_default_lock = threading.Lock()


def load_model(path_or_name: str, device: str | torch.device = "cpu") -> StyleModel:
    """Load a model by name or checkpoint path, through a shared registry for that device (local use)."""
    resolved = resolve_device(device)
    with _default_lock:
        if resolved not in _default_registries:
            _default_registries[resolved] = ModelRegistry(device=resolved, allow_paths=True)
        registry = _default_registries[resolved]
    return registry.get(path_or_name)
