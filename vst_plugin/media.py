"""Host-side media beyond EXR: image sequences (OpenImageIO) and movies (PyAV, which bundles FFmpeg).

The server stylizes half/float colour, so integer pixels are converted on the host: 8-bit images and
movies travel as half, deeper ones as float, values 0..1 as the file encodes them. Results are written
back the same way: an image in the format of the output's extension at the input's bit depth (OpenImageIO
rounds and clamps), a movie through an encoder chosen by the extension or `--codec`.

Display-referred inputs (integer images, movies) are encoded, not scene-linear: their default colour
space is `SRGB` (images) or `REC709` (movies), names of OCIO's built-in config; the server linearises
with it and encodes the result back the same way. Float images (EXR, float TIFF) default to linear.

Movies are read and written in order with one decoded frame held at a time (a job adds the frames it has
in flight); a frame before the last one read, or far after it, is reached by seeking to the keyframe
before it. Movie frames are numbered from 1, as Nuke numbers them. A movie output keeps the input's
frame rate and size and, where both containers have them, its timecode and audio (cut to the frames
rendered).

Nothing here imports torch or the server; OpenImageIO and PyAV are imported when first used, so the
command line starts on a host without them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from vst_plugin.client import Client, Pending
from vst_plugin.files import describe_os_error, temporary_path, write_failure
from vst_plugin.frame import Frame, FrameLimitError, FrameLimits, Part

__all__ = [
    "MediaError",
    "CODECS",
    "SRGB",
    "REC709",
    "is_exr",
    "is_integer_only",
    "convert_colour",
    "ImagePlate",
    "MoviePlate",
    "MovieReader",
    "MovieWriter",
    "read_image",
    "write_image",
]

SRGB = "srgb_tx"
"""Default colour space of integer images: sRGB-encoded Rec.709 primaries."""
REC709 = "g24_rec709_tx"
"""Default colour space of movies: Rec.709 primaries, 2.4 gamma (BT.1886 display encoding)."""

INTEGER_ONLY_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""Image formats that hold display-encoded integers only."""


@dataclass(frozen=True)
class Codec:
    """An FFmpeg encoder with the pixel format and options `vst render --codec NAME` uses."""

    encoder: str
    pixel_format: str
    options: tuple[tuple[str, str], ...] = ()


CODECS: dict[str, Codec] = {
    "prores": Codec("prores_ks", "yuv422p10le", (("profile", "3"),)),  # ProRes 422 HQ
    "h264": Codec("libx264", "yuv420p", (("crf", "14"), ("preset", "medium"))),
    "dnxhr": Codec("dnxhd", "yuv422p", (("profile", "dnxhr_hq"),)),
}
"""Movie codecs by `--codec` name."""
DEFAULT_CODECS = {".mov": "prores", ".mxf": "dnxhr", ".mp4": "h264", ".m4v": "h264", ".mkv": "h264", ".avi": "h264"}

_LIMITS = FrameLimits()
SEEK_AFTER = 48
"""A movie reader decodes on up to this many frames; further ahead it seeks."""
_MATRIX = "ITU709"
"""YUV <-> RGB matrix used both ways, so a movie written back decodes to what was stylized."""


class MediaError(Exception):
    """An image or movie cannot be read or written; the message starts with the file's path."""


def is_exr(path: str) -> bool:
    """True if `path` names an OpenEXR file (by extension)."""
    return os.path.splitext(path)[1].lower() == ".exr"


def is_integer_only(path: str) -> bool:
    """True if `path` names an image format that holds display-encoded integers only (PNG, JPEG, ...)."""
    return os.path.splitext(path)[1].lower() in INTEGER_ONLY_EXTENSIONS


def convert_colour(frame: Frame, source: str, target: str) -> Frame:
    """The first part's R, G, B (and A) converted from OCIO colour space `source` to `target`, as float."""
    import OpenImageIO as oiio

    part = frame.parts[0]
    names = [name for name in ("R", "G", "B") if name in part.channels]
    rgb = np.stack([part.channels[name].astype(np.float32) for name in names], axis=-1)
    converted = oiio.ImageBufAlgo.colorconvert(oiio.ImageBuf(np.ascontiguousarray(rgb)), source, target, False)
    if converted.has_error:
        raise MediaError(f"cannot convert {source} to {target}: {converted.geterror()}")
    pixels = converted.get_pixels(oiio.FLOAT)
    channels = {name: np.ascontiguousarray(pixels[..., index]) for index, name in enumerate(names)}
    if "A" in part.channels:
        channels["A"] = part.channels["A"].astype(np.float32)
    return Frame([Part(channels, part.data_window, part.display_window)])


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while True:
            chunk = stream.read(1 << 20)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


# --------------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageFormat:
    """How an image stores its pixels: OpenImageIO pixel type, bits per sample, alpha association."""

    pixel_type: str
    bits: int
    unassociated_alpha: bool = False

    @property
    def integer(self) -> bool:
        return self.pixel_type not in ("half", "float", "double")

    @property
    def wire_type(self) -> str:
        """Pixel type sent to the server: half holds 8-bit steps exactly, deeper ones need float."""
        if self.pixel_type == "half" or (self.integer and self.bits <= 8):
            return "half"
        return "float"


def read_image(path: str) -> tuple[Frame, ImageFormat]:
    """Read any image OpenImageIO reads into a float Frame (first subimage) and its storage format."""
    import OpenImageIO as oiio

    config = oiio.ImageSpec()
    config.attribute("oiio:UnassociatedAlpha", 1)  # the file's own values; association is reported
    inp = oiio.ImageInput.open(path, config)
    if inp is None:
        raise MediaError(f"{path}: cannot read: {oiio.geterror() or 'unknown format'}")
    try:
        spec = inp.spec()
        try:
            _LIMITS.check_part(spec.width, spec.height, spec.nchannels, path)
        except FrameLimitError as exc:
            raise MediaError(str(exc)) from None
        names = list(spec.channelnames)
        if len(names) == 1:  # greyscale: the same plane as R, G and B
            names = ["Y"]
        fmt = ImageFormat(
            str(spec.format),
            spec.get_int_attribute("oiio:BitsPerSample", spec.format.size() * 8),
            bool(spec.get_int_attribute("oiio:UnassociatedAlpha", 0)),
        )
        pixels = inp.read_image(0, 0, 0, spec.nchannels, fmt.wire_type)
        if pixels is None:
            raise MediaError(f"{path}: cannot read the pixels: {inp.geterror()}")
    finally:
        inp.close()
    pixels = np.asarray(pixels).reshape(spec.height, spec.width, spec.nchannels)
    if names == ["Y"]:
        channels = {name: pixels[..., 0].copy() for name in "RGB"}
    else:
        channels = {name: np.ascontiguousarray(pixels[..., index]) for index, name in enumerate(names)}
    if not all(name in channels for name in "RGB"):
        raise MediaError(f"{path}: no R, G, B channels to stylize (its channels: {', '.join(names)})")
    data = (spec.x, spec.y, spec.x + spec.width - 1, spec.y + spec.height - 1)
    display = (spec.full_x, spec.full_y, spec.full_x + spec.full_width - 1, spec.full_y + spec.full_height - 1)
    return Frame([Part(channels, data, display)]), fmt


def write_image(frame: Frame, path: str, fmt: ImageFormat) -> None:
    """Write the first part's R, G, B (and A) in the format of `path`'s extension at `fmt`'s depth, atomically.

    Formats that cannot hold alpha (JPEG) get R, G, B only; a format that cannot hold the depth gets the
    nearest one it has (OpenImageIO's choice).
    """
    import OpenImageIO as oiio

    target = os.path.abspath(path)
    out = oiio.ImageOutput.create(target)
    if out is None:
        raise MediaError(f"{target}: OpenImageIO cannot write {os.path.splitext(target)[1] or 'extensionless'} files")
    part = frame.parts[0]
    names = [name for name in ("R", "G", "B", "A") if name in part.channels]
    if "A" in names and not out.supports("alpha"):
        names.remove("A")
    spec = oiio.ImageSpec(part.width, part.height, len(names), fmt.pixel_type)
    spec.x, spec.y = part.data_window[:2]
    xmin, ymin, xmax, ymax = part.display_window
    spec.full_x, spec.full_y, spec.full_width, spec.full_height = xmin, ymin, xmax - xmin + 1, ymax - ymin + 1
    spec.channelnames = tuple(names)
    spec.alpha_channel = names.index("A") if "A" in names else -1
    if fmt.integer and fmt.bits != spec.format.size() * 8:
        spec.attribute("oiio:BitsPerSample", fmt.bits)  # 10- and 12-bit DPX
    if fmt.unassociated_alpha:
        spec.attribute("oiio:UnassociatedAlpha", 1)
    buffer = np.stack([part.channels[name].astype(np.float32) for name in names], axis=-1)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temporary = temporary_path(target)
    try:
        if not out.open(temporary, spec):
            raise MediaError(f"{target}: cannot create: {write_failure(target, out.geterror(), buffer.nbytes)}")
        if not out.write_image(buffer):
            raise MediaError(f"{target}: cannot write: {write_failure(target, out.geterror(), buffer.nbytes)}")
        if not out.close():
            raise MediaError(f"{target}: cannot write: {write_failure(target, out.geterror(), buffer.nbytes)}")
        problem = _unreadable(temporary)  # some writers (PNG) do not notice a failed write: read it back
        if problem:
            raise MediaError(f"{target}: cannot write: {write_failure(target, problem, buffer.nbytes)}")
        os.replace(temporary, target)
    except OSError as exc:
        raise MediaError(f"{target}: cannot write: {describe_os_error(exc)}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.remove(temporary)


def _unreadable(path: str) -> str | None:
    """Why the image just written at `path` cannot be read back whole, or None when it can."""
    import OpenImageIO as oiio

    inp = oiio.ImageInput.open(path)
    if inp is None:
        return oiio.geterror() or "the file written is empty or truncated"
    try:
        if inp.read_image() is None or inp.has_error:
            return inp.geterror() or "the file written is truncated"
        return None
    finally:
        inp.close()


class ImagePlate:
    """A non-EXR image (DPX, TIFF, PNG, JPEG, ...) read here, sent as half/float planes (jobs.Plate)."""

    def __init__(self, path: str):
        self.path = path
        self.frame, self.format = read_image(path)
        self.premultiplied = not self.format.unassociated_alpha
        """False for straight alpha, as PNG stores it: nothing to unpremultiply."""

    @classmethod
    def load(cls, path: str) -> ImagePlate:
        """Read the file; raise MediaError when it cannot be read."""
        return cls(path)

    def digest(self) -> str:
        return _file_digest(self.path)

    def submit(self, client: Client, **fields: Any) -> Pending:
        if not self.premultiplied:
            fields = {**fields, "premultiplied": False}
        return client.submit(self.frame, **fields)

    def save(self, result: Frame, path: str) -> None:
        write_image(result, path, self.format)


# --------------------------------------------------------------------------------------------------
# Movies


def _bits(pixel_format: Any) -> int:
    return max((component.bits for component in pixel_format.components), default=8)


class MovieReader:
    """A movie's video frames in order (1..N), decoded one at a time; `frames`, `rate`, `timecode`."""

    def __init__(self, path: str):
        import av

        self.path = path
        try:
            self._container = av.open(path)
            stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError) as exc:
            raise MediaError(f"{path}: cannot read a movie from it: {exc}") from None
        self.rate: Fraction = stream.average_rate or stream.guessed_rate or Fraction(24)
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        pixel_format = stream.codec_context.format
        self.bits = _bits(pixel_format) if pixel_format is not None else 8
        self.alpha = pixel_format is not None and any(component.is_alpha for component in pixel_format.components)
        self.timecode: str | None = stream.metadata.get("timecode") or self._container.metadata.get("timecode")
        count = stream.frames or sum(1 for packet in self._container.demux(stream) if packet.size)
        self.frames = list(range(1, count + 1))
        self._decoded: Any = None
        self._next = 1
        self._start = 0
        self._time_base: Fraction | None = None

    def close(self) -> None:
        self._container.close()

    def read(self, number: int) -> Frame:
        """Frame `number` (1-based) as half (8-bit sources) or float planes, values 0..1 as encoded.

        Frames are decoded in order; a frame before the last one read, or far after it, is reached by
        seeking to the keyframe before it (from the start when the movie has no timestamps).
        """
        import av

        if self._decoded is None or number < self._next or number > self._next + SEEK_AFTER:
            self._seek(number)
        try:
            for picture in self._decoded:
                current = self._index(picture)
                self._next = current + 1
                if current == number:
                    return self._planes(picture)
                if current > number:  # the seek landed past it: decode from the start instead
                    self._seek(number, exact=False)
                    return self.read_in_order(number)
        except av.FFmpegError as exc:
            raise MediaError(f"{self.path}: cannot decode frame {number}: {exc}") from None
        raise MediaError(f"{self.path}: has no frame {number} (it has {self._next - 1})")

    def read_in_order(self, number: int) -> Frame:
        """Frame `number`, decoding on from where the reader is (no seek)."""
        for picture in self._decoded:
            current = self._index(picture)
            self._next = current + 1
            if current == number:
                return self._planes(picture)
        raise MediaError(f"{self.path}: has no frame {number} (it has {self._next - 1})")

    def _seek(self, number: int, exact: bool = True) -> None:
        """Position the decoder before frame `number`: at the keyframe before it, or at the start."""
        import av

        self._container.close()
        self._container = av.open(self.path)
        stream = self._container.streams.video[0]
        self._start = stream.start_time or 0
        self._time_base = stream.time_base
        self._next = 1
        if exact and number > 1 and self._time_base:
            target = self._start + int((number - 1) / self.rate / self._time_base)
            self._container.seek(target, stream=stream, backward=True)
            self._next = 0  # unknown until a frame is decoded: its timestamp says
        self._decoded = self._container.decode(stream)

    def _index(self, picture: Any) -> int:
        """The 1-based number of a decoded frame: from its timestamp, or counted when it has none."""
        if picture.pts is None or not self._time_base:
            return max(self._next, 1)
        return round((picture.pts - self._start) * self._time_base * self.rate) + 1

    def _planes(self, picture: Any) -> Frame:
        deep = self.bits > 8
        layout = ("rgba64le" if deep else "rgba") if self.alpha else ("rgb48le" if deep else "rgb24")
        pixels = picture.to_ndarray(format=layout, src_colorspace=_MATRIX, dst_colorspace=_MATRIX)
        scale = np.float32(65535 if deep else 255)
        wire = np.float32 if deep else np.float16
        names = "RGBA" if self.alpha else "RGB"
        channels = {name: (pixels[..., index] / scale).astype(wire) for index, name in enumerate(names)}
        window = (0, 0, picture.width - 1, picture.height - 1)
        return Frame([Part(channels, window, window)])


class MoviePlate:
    """One decoded movie frame (jobs.Plate); its digest is that of its pixels."""

    premultiplied = False
    """Video alpha is straight."""

    def __init__(self, frame: Frame):
        self.frame = frame

    def digest(self) -> str:
        digest = hashlib.sha256()
        for name, plane in self.frame.parts[0].channels.items():
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(plane).tobytes())
        return digest.hexdigest()

    def submit(self, client: Client, **fields: Any) -> Pending:
        return client.submit(self.frame, **{**fields, "premultiplied": self.premultiplied})


def _advance_timecode(timecode: str, frames: int, rate: Fraction) -> str | None:
    """`timecode` moved on by `frames` (non-drop-frame); None for a drop-frame or unreadable one."""
    parts = timecode.split(":")
    if len(parts) != 4 or not all(part.isdigit() for part in parts):
        return None
    base = round(rate)
    hours, minutes, seconds, frame = (int(part) for part in parts)
    total = ((hours * 60 + minutes) * 60 + seconds) * base + frame + frames
    frame, total = total % base, total // base
    return f"{total // 3600 % 24:02d}:{total // 60 % 60:02d}:{total % 60:02d}:{frame:02d}"


class MovieWriter:
    """Encodes frames in order into a movie, atomically (a temporary file renamed on `close`).

    `source` is the input movie, whose timecode and audio are carried over for the frames from
    `first` on (1-based), when there is one.
    """

    def __init__(self, path: str, codec: str | None, rate: Fraction, source: MovieReader | None, first: int = 1):
        self.path = os.path.abspath(path)
        extension = os.path.splitext(path)[1].lower()
        name = codec or DEFAULT_CODECS.get(extension)
        if name not in CODECS:
            raise MediaError(f"{self.path}: unknown codec {name!r}; use one of {', '.join(CODECS)}")
        self.codec = CODECS[name]
        self.codec_name = name
        self.rate = Fraction(rate)
        self.source = source
        self.first = first
        self._temporary = temporary_path(self.path)
        self._container: Any = None
        self._video: Any = None
        self._audio: Any = None  # (input container, input stream, output stream, packets, time offset)
        self._pending_audio: Any = None
        self._count = 0

    def _open(self, width: int, height: int) -> None:
        import av

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            self._container = av.open(self._temporary, "w", format=_muxer(self.path))
            video = self._container.add_stream(self.codec.encoder, rate=self.rate)
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"{self.path}: cannot write a {self.codec_name} movie: {exc}") from None
        video.width, video.height, video.pix_fmt = width, height, self.codec.pixel_format
        video.options = dict(self.codec.options)
        context = video.codec_context  # tagged BT.709 (FFmpeg's value 1 for matrix, primaries and transfer)
        context.colorspace = context.color_primaries = context.color_trc = 1
        self._video = video
        if self.source is not None:
            offset = Fraction(self.first - 1) / self.source.rate
            if self.source.timecode:
                timecode = _advance_timecode(self.source.timecode, self.first - 1, self.source.rate)
                if timecode:
                    self._container.metadata["timecode"] = timecode
            self._start_audio(offset)

    def _start_audio(self, offset: Fraction) -> None:
        import av

        assert self.source is not None
        source = av.open(self.source.path)
        if not source.streams.audio:
            source.close()
            return
        stream = source.streams.audio[0]
        try:
            output = self._container.add_stream_from_template(stream)
        except (av.FFmpegError, ValueError):  # the container cannot hold this audio codec
            source.close()
            return
        packets = (packet for packet in source.demux(stream) if packet.pts is not None and packet.size)
        self._audio = (source, stream, output, packets, offset)

    def _mux_audio(self, until: Fraction | None) -> None:
        """Mux the input's audio packets up to time `until` (None: all the rest of the rendered range)."""
        if self._audio is None:
            return
        source, stream, output, packets, offset = self._audio
        while True:
            packet = self._pending_audio or next(packets, None)
            self._pending_audio = None
            if packet is None:
                return
            time = Fraction(packet.pts) * stream.time_base - offset
            if time < 0:
                continue
            if until is not None and time > until:
                self._pending_audio = packet
                return
            if until is None and time >= Fraction(self._count) / self.rate:
                return
            shift = round(offset / stream.time_base)
            packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = output
            self._container.mux(packet)

    def write(self, frame: Frame) -> None:
        """Encode the next frame (R, G, B of the first part, 0..1 as encoded)."""
        import av

        part = frame.parts[0]
        if self._container is None:
            self._open(part.width, part.height)
        rgb = np.stack([part.channels[name].astype(np.float32) for name in "RGB"], axis=-1)
        deep = _bits(av.VideoFormat(self.codec.pixel_format)) > 8
        scale = 65535 if deep else 255
        pixels = np.clip(np.nan_to_num(rgb) * scale + 0.5, 0, scale).astype(np.uint16 if deep else np.uint8)
        picture = av.VideoFrame.from_ndarray(pixels, format="rgb48le" if deep else "rgb24")
        picture = picture.reformat(format=self.codec.pixel_format, src_colorspace=_MATRIX, dst_colorspace=_MATRIX)
        picture.pts = self._count
        picture.time_base = 1 / self.rate
        try:
            self._mux_audio(Fraction(self._count) / self.rate)
            self._container.mux(self._video.encode(picture))
        except av.FFmpegError as exc:
            hint = ""
            if self.codec.encoder == "dnxhd" and (part.width < 256 or part.height < 120):
                hint = f" (DNxHR needs frames of at least 256x120, these are {part.width}x{part.height})"
            elif self.codec.pixel_format == "yuv420p" and (part.width % 2 or part.height % 2):
                hint = f" (H.264 needs an even width and height, these are {part.width}x{part.height})"
            raise MediaError(f"{self.path}: cannot encode frame {self._count + 1}: {exc}{hint}") from None
        except OSError as exc:
            raise MediaError(f"{self.path}: cannot write: {describe_os_error(exc)}") from exc
        self._count += 1

    def close(self) -> None:
        """Finish the movie and move it into place; nothing is written for a movie without frames."""
        import av

        if self._container is None:
            return
        try:
            self._container.mux(self._video.encode(None))
            self._mux_audio(None)
            self._container.close()
            self._container = None
            os.replace(self._temporary, self.path)
        except av.FFmpegError as exc:
            raise MediaError(f"{self.path}: cannot finish the movie: {exc}") from None
        except OSError as exc:
            raise MediaError(f"{self.path}: cannot write: {describe_os_error(exc)}") from exc
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop a movie not finished (its temporary file)."""
        if self._audio is not None:
            self._audio[0].close()
            self._audio = None
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        with contextlib.suppress(OSError):
            os.remove(self._temporary)


def _muxer(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    return {".mov": "mov", ".mp4": "mp4", ".m4v": "mp4", ".mxf": "mxf", ".mkv": "matroska", ".avi": "avi"}[extension]
