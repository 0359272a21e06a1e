"""The in-memory plate: parts of named channel planes with their OpenEXR windows.

A `Frame` mirrors an OpenEXR file: one or more `Part`s, each with its own channels, data window and
display window. Planes are numpy arrays of shape (height, width) covering the part's data window, in
the file's pixel type (half, float or uint). Nothing here imports torch or an imaging library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Window = tuple[int, int, int, int]
"""(xmin, ymin, xmax, ymax), inclusive, as in the OpenEXR header."""

PIXEL_TYPES: dict[str, np.dtype] = {
    "half": np.dtype(np.float16),
    "float": np.dtype(np.float32),
    "uint": np.dtype(np.uint32),
}
"""OpenEXR pixel type names and the numpy dtype a plane of that type has."""


def pixel_type_of(dtype: np.dtype) -> str:
    """Return the OpenEXR pixel type name for a numpy dtype, or raise ValueError."""
    for name, known in PIXEL_TYPES.items():
        if known == dtype:
            return name
    raise ValueError(f"pixel type {dtype} is not an EXR pixel type (half, float or uint)")


def window_size(window: Window) -> tuple[int, int]:
    """Return (width, height) of an inclusive window."""
    xmin, ymin, xmax, ymax = window
    return xmax - xmin + 1, ymax - ymin + 1


@dataclass
class Part:
    """One part of a plate: ordered channel planes over one data window."""

    channels: dict[str, np.ndarray]
    data_window: Window
    display_window: Window
    name: str | None = None
    view: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    """Header attributes kept for writing back (compression, pixel aspect, multiView, ...)."""

    @property
    def width(self) -> int:
        return window_size(self.data_window)[0]

    @property
    def height(self) -> int:
        return window_size(self.data_window)[1]

    def check(self) -> None:
        """Raise ValueError if a plane does not match the data window or has a non-EXR type."""
        width, height = window_size(self.data_window)
        if width <= 0 or height <= 0:
            raise ValueError(f"part {self.name!r}: empty data window {self.data_window}")
        for channel, plane in self.channels.items():
            if plane.shape != (height, width):
                raise ValueError(
                    f"part {self.name!r} channel {channel!r}: plane is {plane.shape[::-1]} pixels "
                    f"but the data window {self.data_window} is {width}x{height}"
                )
            pixel_type_of(plane.dtype)


@dataclass
class Frame:
    """A plate: the parts of one EXR image (a single-part file has one)."""

    parts: list[Part]

    def check(self) -> None:
        """Raise ValueError if any part is inconsistent."""
        if not self.parts:
            raise ValueError("a frame needs at least one part")
        for part in self.parts:
            part.check()


@dataclass(frozen=True)
class ColourLayer:
    """Where an RGB(A) layer of a frame lives: part index and channel names."""

    part: int
    rgb: tuple[str, str, str]
    alpha: str | None


def colour_layers(frame: Frame, layers: list[str] | None = None) -> list[ColourLayer]:
    """Find the colour layers that are stylized.

    A layer is an R, G, B triple sharing a prefix (``""``, ``"left."``, ...) with an optional A.
    By default the main layer of every part and every view is chosen: the empty prefix and the
    prefixes that are view names (``multiView`` or the part's ``view``), so both eyes of a stereo
    plate are stylized and AOV layers such as ``diffuse.R`` are left alone. `layers` names the
    prefixes explicitly instead (``"rgba"`` means the empty prefix).
    """
    if layers is not None:
        wanted = {"" if name in ("rgba", "rgb") else name.rstrip(".") + "." for name in layers}
    found: list[ColourLayer] = []
    for index, part in enumerate(frame.parts):
        if layers is None:
            views = part.attributes.get("multiView") or ()
            if isinstance(views, str):
                views = (views,)
            wanted = {""} | {f"{view}." for view in views}
        for prefix in sorted(wanted):
            rgb = (f"{prefix}R", f"{prefix}G", f"{prefix}B")
            if all(name in part.channels for name in rgb):
                alpha = f"{prefix}A" if f"{prefix}A" in part.channels else None
                found.append(ColourLayer(index, rgb, alpha))
    return found


def _default_view(part: Part) -> str | None:
    """The view a part's channels without a view in their name belong to: the part's own view (multi-part
    stereo) or the first of ``multiView`` (the default view of a single-part stereo file)."""
    if part.view:
        return part.view
    views = part.attributes.get("multiView") or ()
    if isinstance(views, str):
        views = (views,)
    return views[0] if views else None


def layer_view(frame: Frame, layer: ColourLayer) -> str | None:
    """The view of a colour layer (``left`` for ``left.R``), or None for a plate without views."""
    prefix = layer.rgb[0][:-1].rstrip(".")
    return prefix or _default_view(frame.parts[layer.part])


def motion_vectors(frame: Frame, view: str | None, name: str, first: int = 0) -> tuple[int, str, str] | None:
    """Where the ``name`` motion vectors of a view are: (part index, u channel, v channel), or None.

    ``name.VIEW.u``/``.v`` or, in a part whose default view is `view`, ``name.u``/``.v``; part `first`
    (the colour layer's own) is searched first, then the others.
    """
    order = [first] + [index for index in range(len(frame.parts)) if index != first]
    for index in order:
        part = frame.parts[index]
        prefixes = ([f"{name}.{view}."] if view else []) + ([f"{name}."] if _default_view(part) == view else [])
        for prefix in prefixes:
            if f"{prefix}u" in part.channels and f"{prefix}v" in part.channels:
                return index, f"{prefix}u", f"{prefix}v"
    return None


class FrameLimitError(ValueError):
    """A frame exceeds the server's limits; raised before any pixel memory is allocated."""


@dataclass(frozen=True)
class FrameLimits:
    """Largest frame a reader or the server accepts, checked from headers before allocating."""

    max_side: int = 32768
    max_pixels: int = 16384 * 16384
    max_channels: int = 512
    max_parts: int = 64
    max_bytes: int = 2 << 30
    """Bytes of a whole frame on the wire: all its planes together, or the EXR file. It also sets the
    server's largest message frame (ZeroMQ MAXMSGSIZE), so bigger ones are refused while arriving."""

    def check_part(self, width: int, height: int, channels: int, what: str = "frame") -> None:
        """Raise FrameLimitError if a part of this size is over the limits."""
        if width <= 0 or height <= 0:
            raise FrameLimitError(f"{what}: empty data window ({width}x{height})")
        if max(width, height) > self.max_side or width * height > self.max_pixels:
            raise FrameLimitError(
                f"{what}: {width}x{height} pixels is over the limit "
                f"({self.max_side} pixels a side, {self.max_pixels} in all)"
            )
        if channels > self.max_channels:
            raise FrameLimitError(f"{what}: {channels} channels is over the limit of {self.max_channels}")

    def check_bytes(self, count: int, what: str = "frame") -> None:
        """Raise FrameLimitError if a frame carries more bytes than allowed."""
        if count > self.max_bytes:
            raise FrameLimitError(f"{what}: {count} bytes is over the limit of {self.max_bytes}")

    def check_parts(self, count: int, what: str = "frame") -> None:
        """Raise FrameLimitError if a frame has more parts than allowed."""
        if count <= 0 or count > self.max_parts:
            raise FrameLimitError(f"{what}: {count} parts (1 to {self.max_parts} accepted)")
