"""Style images for the arbitrary-style model: reading, colour, resizing, and a cache of style vectors.

A style image is a file on the server's machine (the server is loopback-only, so host and server
share the filesystem): an EXR in any colour space, or a PNG/JPEG (anything OpenImageIO reads). It
becomes what the style predictor was trained on: sRGB-encoded 0..1, square, 256x256. EXR values are
converted from their colour space to linear Rec.709 (OCIO, `server.colour.ColourSpaces`), clamped to
0..1 and sRGB-encoded; an sRGB-encoded file (PNG, JPEG) is used as it is. The image is **centre
cropped** to a square (the middle of its longer side) and resized with antialiasing, not squashed,
so brush strokes keep their shape.

Its style vector is computed once and kept in a small LRU keyed by (absolute path, size, mtime,
colour space): a repainted file (new mtime or size) is read again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import torch
import torch.nn.functional as F

from server.colour import LINEAR, ColourSpaces, srgb_encode
from server.models.base import ParamError

AUTO = "auto"
LINEAR_SUFFIXES = (".exr", ".hdr")
"""Files whose values are scene-linear: `auto` reads them as lin_rec709."""
ENCODED = ("srgb", "srgb_tx", "srgb_texture", "srgb - texture", "utility - srgb - texture")
"""Colour space names (any case) meaning the values already are the network's sRGB-encoded 0..1."""

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
    space = resolve_colorspace(path, space)
    encoded_input = space.lower() in ENCODED
    if not encoded_input:
        try:
            colour_spaces().check(space)
        except ValueError as error:
            raise ParamError(f"style_colorspace: {error}") from None
    if not path.is_file():
        raise ParamError(f"style image {path} does not exist (it must be a file on the server's machine)")
    buffer = oiio.ImageBuf(str(path))
    pixels = buffer.get_pixels(oiio.FLOAT) if not buffer.has_error else None
    if pixels is None or buffer.has_error or pixels.ndim != 3 or pixels.size == 0:
        reason = buffer.geterror().strip().splitlines()[0] if buffer.has_error else "no pixels"
        raise ParamError(f"style image {path} cannot be read as an image ({reason})")
    channels = pixels.shape[2]
    rgb = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    rgb = np.nan_to_num(np.ascontiguousarray(rgb, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if encoded_input:
        encoded = torch.from_numpy(rgb).clamp(0, 1)
    else:
        try:
            linear = colour_spaces().to_linear(rgb, space)
        except ValueError as error:
            raise ParamError(f"style image {path}: {error}") from None
        encoded = srgb_encode(torch.from_numpy(np.ascontiguousarray(linear)).clamp(0, 1))
    image = encoded.permute(2, 0, 1)[None]
    height, width = image.shape[2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, :, top : top + side, left : left + side]
    return F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


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

    def get(self, path: str | Path, space: str = AUTO) -> torch.Tensor:
        """The style vector [1, dims] (float32, CPU) of an image file, from the cache when it is fresh."""
        resolved = Path(path).expanduser().absolute()
        try:
            stat = resolved.stat()
        except OSError:
            raise ParamError(f"style image {resolved} does not exist or cannot be opened") from None
        key = (str(resolved), stat.st_size, stat.st_mtime_ns, resolve_colorspace(resolved, space))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        vector = self._predict(read_style_image(resolved, space, self.size))
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
