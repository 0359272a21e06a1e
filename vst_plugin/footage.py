"""What `vst render IN OUT` reads and writes: EXR and other image sequences, single images and movies.

`Footage.open(IN, frames)` finds the frames (the `--frames` range, else every frame on disk or every
frame of the movie, or the one file IN names), says which colour space the pixels are in when the user
names none, and loads each frame as a `jobs.Plate`. `Destination.open(OUT, footage, colorspace, codec)`
routes each result to the writer OUT's kind needs: EXR (every part and channel kept), another image
format at the input's bit depth, or a movie encoded in order. The render itself (paths, checks, pre-roll,
resuming) is a `render.RenderSpec`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from vst_plugin.client import Client, Pending
from vst_plugin.frame import Frame
from vst_plugin.media import (
    REC709,
    SRGB,
    ImageFormat,
    ImagePlate,
    MoviePlate,
    MovieReader,
    MovieWriter,
    convert_colour,
    is_exr,
    is_integer_only,
    write_image,
)
from vst_plugin.schema import DEFAULT_COLORSPACE, RAW_COLORSPACE
from vst_plugin.sequence import frame_path, frames_on_disk, has_frame_token, is_movie, parse_frames

__all__ = ["FootageError", "Footage", "Destination"]


class FootageError(ValueError):
    """The input or output of a render cannot be used as asked; the message says what to do."""


@dataclass
class Footage:
    """The input of a render: its frames, how to load each, and what its pixels are."""

    name: str
    frames: list[int]
    colorspace: str
    """Colour space assumed when the user names none."""
    description: str
    """What was found, e.g. "PNG sequence, 8-bit (display-referred)"."""
    load: Callable[[int], Any]
    movie: MovieReader | None = None
    format: ImageFormat | None = None
    """Storage format of the first frame (None for EXR: its planes are written back as they are)."""

    @classmethod
    def open(cls, name: str, frames: str | None) -> Footage:
        """Resolve IN and the optional `--frames` range; raise FootageError, SequenceError or MediaError."""
        if is_movie(name):
            return cls._movie(name, frames)
        numbers = parse_frames(frames) if frames else (frames_on_disk(name) if has_frame_token(name) else [1])
        path = lambda n: _file_of(name, n)  # noqa: E731
        kind = os.path.splitext(name)[1].lstrip(".").upper() or "image"
        shape = "sequence" if has_frame_token(name) else "file"
        if is_exr(name):
            from vst_plugin.jobs import ExrPlanes

            return cls(name, numbers, DEFAULT_COLORSPACE, f"EXR {shape} (scene-linear)",
                       lambda n: ExrPlanes.load(path(n)))
        if not os.path.isfile(path(numbers[0])):
            raise FootageError(f"input frame {numbers[0]} is missing: {path(numbers[0])}")
        fmt = ImagePlate.load(path(numbers[0])).format
        depth = f"{fmt.bits}-bit" if fmt.integer else f"{fmt.pixel_type} float"
        space = SRGB if fmt.integer else DEFAULT_COLORSPACE
        referred = "display-referred" if fmt.integer else "scene-linear"
        return cls(name, numbers, space, f"{kind} {shape}, {depth} ({referred})",
                   lambda n: ImagePlate.load(path(n)), format=fmt)

    @classmethod
    def _movie(cls, name: str, frames: str | None) -> Footage:
        if not os.path.isfile(name):
            raise FootageError(f"{name}: no such movie")
        movie = MovieReader(name)
        numbers = parse_frames(frames) if frames else list(movie.frames)
        outside = [n for n in numbers if not 1 <= n <= len(movie.frames)]
        if not movie.frames or outside:
            raise FootageError(f"{name} has frames 1-{len(movie.frames)}; --frames asks for {outside[:5]}")
        fmt = ImageFormat("uint16" if movie.bits > 8 else "uint8", movie.bits)
        size = f"{movie.width}x{movie.height} at {float(movie.rate):g} fps"
        description = f"movie, {size}, {movie.bits}-bit (display-referred)"
        return cls(name, numbers, REC709, description, lambda n: MoviePlate(movie.read(n)), movie=movie, format=fmt)

    @property
    def display_referred(self) -> bool:
        """True for integer images and movies: display-encoded values 0..1, not scene-linear ones."""
        return self.movie is not None or (self.format is not None and self.format.integer)

    def file(self, number: int) -> str:
        """The file frame `number` is read from (the movie itself for a movie)."""
        return _file_of(self.name, number)

    def close(self) -> None:
        if self.movie is not None:
            self.movie.close()


def _file_of(name: str, number: int) -> str:
    """The file of frame `number` of IN: the pattern's file, or IN itself (a single image, a movie)."""
    return frame_path(name, number) if has_frame_token(name) else name


@dataclass
class _Routed:
    """A plate whose result goes to the destination's writer (jobs.Plate)."""

    plate: Any
    save: Callable[[Any, str], None]

    def digest(self) -> str:
        return self.plate.digest()

    def submit(self, client: Client, **fields: Any) -> Pending:
        return self.plate.submit(client, **fields)


@dataclass
class Destination:
    """The output of a render: the writer each result goes to."""

    name: str
    route: Callable[[Any], Any]
    """Wraps a loaded plate so that its result is written the way OUT needs."""
    movie: MovieWriter | None = None
    encoding: str | None = None
    """Display encoding the scene-linear results are converted to for OUT (None: written as they come)."""

    @classmethod
    def open(cls, name: str, footage: Footage, colorspace: str, codec: str | None = None) -> Destination:
        """Resolve OUT for `footage` stylized in `colorspace`; raise FootageError, SequenceError or MediaError.

        Scene-linear footage (EXR, float images) written to a display-referred output (a movie, a PNG or
        JPEG) is converted from `colorspace` to `REC709` or `SRGB`; other footage keeps its encoding.
        """
        linear = (footage.format is None or not footage.format.integer) and colorspace != RAW_COLORSPACE
        if is_movie(name):
            rate = footage.movie.rate if footage.movie is not None else Fraction(24)
            writer = MovieWriter(name, codec, rate, footage.movie, footage.frames[0])
            encode = _encoder(colorspace, REC709 if linear else None)
            return cls(name, lambda plate: _Routed(plate, lambda result, _: writer.write(encode(result))),
                       movie=writer, encoding=REC709 if linear else None)
        if codec is not None:
            raise FootageError(f"--codec applies to movies; {name} is not a movie")
        if is_exr(name) and footage.format is None:
            return cls(name, lambda plate: plate)  # EXR to EXR: every part and channel kept
        fmt = footage.format or ImageFormat("half", 16)
        display = linear and is_integer_only(name)
        encode = _encoder(colorspace, SRGB if display else None)

        def route(plate: Any) -> _Routed:
            own = getattr(plate, "format", None)
            return _Routed(plate, lambda result, target: write_image(encode(result), target, own or fmt))

        return cls(name, route, encoding=SRGB if display else None)

    def finish(self) -> None:
        """Complete what is written in one piece (a movie)."""
        if self.movie is not None:
            self.movie.close()

    def abort(self) -> None:
        if self.movie is not None:
            self.movie.abort()


def _encoder(colorspace: str, target: str | None) -> Callable[[Frame], Frame]:
    if target is None:
        return lambda frame: frame
    return lambda frame: convert_colour(frame, colorspace, target)
