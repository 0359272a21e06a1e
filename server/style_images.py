"""Style images for the arbitrary-style model: access, reading, colour, resizing, a cache of style vectors.

A request gives a style image (an `image` parameter) as the bytes of the picture, or as the name of a
file in one of the style folders the server was started with (`vst serve --style-dir`); any path on
the server's machine only when the server allows paths (`--allow-model-paths`). `StyleImageAccess`
turns a request's value into a `StyleImage`; names outside the allowed folders all get the same
error, whether or not such a file exists. A picture is an EXR in any colour space, or a PNG/JPEG
(anything OpenImageIO reads). It
becomes what the style predictor was trained on: sRGB-encoded 0..1, square, 256x256. EXR values are
converted from their colour space to linear Rec.709 (OCIO, `server.colour.ColourSpaces`), clamped to
0..1 and sRGB-encoded; an sRGB-encoded file (PNG, JPEG) is used as it is. The image is **centre
cropped** to a square (the middle of its longer side) and resized with antialiasing, not squashed,
so brush strokes keep their shape.

Its style vector is computed once and kept in a small LRU keyed by (absolute path, size, mtime,
colour space) for a file, so a repainted file (new mtime or size) is read again, and by the SHA-256
of the bytes for a picture sent in the request.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import OpenImageIO as oiio
import torch
import torch.nn.functional as F

from server.colour import LINEAR, ColourSpaces, srgb_encode
from server.models.base import ParamError, Picture, StyleModel

AUTO = "auto"
LINEAR_SUFFIXES = (".exr", ".hdr")
"""Files whose values are scene-linear: `auto` reads them as lin_rec709."""
ENCODED = ("srgb", "srgb_tx", "srgb_texture", "srgb - texture", "utility - srgb - texture")
"""Colour space names (any case) meaning the values already are the network's sRGB-encoded 0..1."""

MAX_STYLE_VALUES = 1 << 28
"""Most values (pixels x channels) a style picture may hold; it is shrunk to 256x256 anyway."""

_colours: ColourSpaces | None = None
_colours_lock = threading.Lock()


def colour_spaces() -> ColourSpaces:
    """The OCIO colour spaces, made once per process."""
    global _colours
    with _colours_lock:
        if _colours is None:
            _colours = ColourSpaces()
        return _colours


def resolve_colorspace(path: Path, space: str) -> str:
    """The colour space a style image is read in: `auto` is lin_rec709 for EXR/HDR, sRGB otherwise."""
    if space == AUTO:
        return LINEAR if path.suffix.lower() in LINEAR_SUFFIXES else "srgb_tx"
    return space


def read_style_image(path: str | Path, space: str = AUTO, size: int = 256) -> torch.Tensor:
    """Read a style image as sRGB-encoded 0..1 [1, 3, size, size] float32; ParamError if it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"style image {path} does not exist (it must be a file on the server's machine)")
    return _checked_read(path, space, size, str(path))


def _checked_read(path: Path, space: str, size: int, what: str) -> torch.Tensor:
    """Check the colour space, then read the picture; `what` names it in errors."""
    space = resolve_colorspace(path, space)
    if space.lower() not in ENCODED:
        try:
            colour_spaces().check(space)
        except ValueError as error:
            raise ParamError(f"style_colorspace: {error}") from None
    return _read_pixels(path, space, size, what)


def _read_pixels(path: Path, space: str, size: int, what: str) -> torch.Tensor:
    """Read, convert and resize a style picture (see `read_style_image`); `what` names it in errors."""
    encoded_input = space.lower() in ENCODED
    buffer = oiio.ImageBuf(str(path))
    spec = buffer.spec()
    if not buffer.has_error and spec.width * spec.height * max(spec.nchannels, 1) > MAX_STYLE_VALUES:
        raise ParamError(f"style image {what}: {spec.width}x{spec.height} pixels is too large for a style picture")
    pixels = buffer.get_pixels(oiio.FLOAT) if not buffer.has_error else None
    if pixels is None or buffer.has_error or pixels.ndim != 3 or pixels.size == 0:
        buffer.geterror()  # clear it; its text may quote the file, so it is not passed on
        raise ParamError(f"style image {what} cannot be read as a picture (EXR, PNG, JPEG, TIFF)")
    channels = pixels.shape[2]
    rgb = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    rgb = np.nan_to_num(np.ascontiguousarray(rgb, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if encoded_input:
        encoded = torch.from_numpy(rgb).clamp(0, 1)
    else:
        try:
            linear = colour_spaces().to_linear(rgb, space)
        except ValueError as error:
            raise ParamError(f"style image {what}: {error}") from None
        encoded = srgb_encode(torch.from_numpy(np.ascontiguousarray(linear)).clamp(0, 1))
    image = encoded.permute(2, 0, 1)[None]
    height, width = image.shape[2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, :, top : top + side, left : left + side]
    return F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@dataclass(frozen=True)
class StyleImage(Picture):
    """A style picture a request may use: a file (`path`) or bytes sent in the request (`data`)."""

    name: str
    """How errors name it: the request's file name, or "sent picture (N bytes)"."""
    path: Path | None = None
    data: bytes | None = None

    def key(self, space: str) -> tuple[str, int, int, str]:
        """Cache key: file path, size and mtime, or the SHA-256 of the bytes; plus the colour space."""
        if self.data is not None:
            digest = hashlib.sha256(self.data).hexdigest()
            return (f"sha256:{digest}", len(self.data), 0, resolve_colorspace(Path(_suffixed(self.data)), space))
        try:
            stat = self.path.stat()
        except OSError:
            raise ParamError(f"style image {self.name} does not exist or cannot be opened") from None
        return (str(self.path), stat.st_size, stat.st_mtime_ns, resolve_colorspace(self.path, space))

    def read(self, space: str, size: int) -> torch.Tensor:
        """The picture as the style predictor's input (see `read_style_image`)."""
        if self.data is None:
            return _checked_read(self.path, space, size, self.name)
        with tempfile.TemporaryDirectory(prefix="vst-style-") as folder:
            staged = Path(folder) / _suffixed(self.data)
            staged.write_bytes(self.data)
            return _checked_read(staged, space, size, self.name)


_MAGIC = ((b"v/1\x01", ".exr"), (b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"),
          (b"MM\x00*", ".tif"))


def _suffixed(data: bytes) -> str:
    """A file name whose extension matches the picture's format (its first bytes), for OpenImageIO."""
    return "style" + next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), ".img")


class StyleImageAccess:
    """Which style pictures requests may use: bytes, names in `folders`, and paths if `allow_paths`."""

    def __init__(self, folders: Sequence[Path] = (), allow_paths: bool = False):
        self.folders = tuple(Path(folder).resolve() for folder in folders)
        for folder in self.folders:
            if not folder.is_dir():
                raise ParamError(f"style folder {folder} does not exist or is not a folder")
        self.allow_paths = allow_paths

    def resolve(self, model: StyleModel, values: dict[str, Any]) -> dict[str, Any]:
        """The model's validated parameter values with each `image` value made a StyleImage ("" stays)."""
        images = {param.name for param in model.params if param.type == "image"}
        return {name: self.image(name, value) if name in images and value else value for name, value in values.items()}

    def image(self, param: str, value: str | bytes) -> StyleImage:
        """The StyleImage a request's value names; ParamError if it may not be used."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return StyleImage(f"(sent picture, {len(value)} bytes)", data=bytes(value))
        for folder in self.folders:
            path = _inside(folder, value)
            if path is not None:
                return StyleImage(value, path=path)
        if self.allow_paths and os.path.isabs(value) and _is_file(value):
            path = Path(value)
            return StyleImage(str(path), path=path)
        where = ", ".join(str(folder) for folder in self.folders) or "none"
        raise ParamError(
            f"{param}: {value[:200]!r} is not a picture in the server's style folders ({where}); send the "
            "picture's bytes instead, or start the server with --style-dir"
        )


def _is_file(name: str) -> bool:
    try:
        return Path(name).is_file()
    except (OSError, ValueError):
        return False


def _inside(folder: Path, name: str) -> Path | None:
    """The file `name` (relative to `folder`, or absolute) if it is a file inside `folder`."""
    try:
        path = (folder / name).resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    return path if path.is_relative_to(folder) and _is_file(str(path)) else None


class StyleVectors:
    """Style vectors of style images, computed by `predict` and kept in a bounded LRU."""

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor], size: int = 256, capacity: int = 32):
        self._predict = predict
        self.size = size
        self.capacity = capacity
        self.reads = 0
        """How many images were read and predicted (cache misses)."""
        self._cache: OrderedDict[tuple[str, int, int, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, image: StyleImage | str | Path, space: str = AUTO) -> torch.Tensor:
        """The style vector [1, dims] (float32, CPU) of a picture, from the cache when it is fresh.

        A str or Path is a file on this machine (local use); the server passes StyleImages only.
        """
        if not isinstance(image, StyleImage):
            path = Path(image).expanduser().absolute()
            image = StyleImage(str(path), path=path)
        key = image.key(space)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        vector = self._predict(image.read(space, self.size))
        with self._lock:
            self.reads += 1
            self._cache[key] = vector
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return vector

    def clear(self) -> None:
        """Forget every cached vector."""
        with self._lock:
            self._cache.clear()
