"""OpenEXR files <-> `Frame`, through OpenImageIO.

Reading keeps every part of the file (in file order), every channel in its native pixel type (half,
float or uint) and the header attributes that matter for writing the plate back. Writing is atomic:
the file appears complete under its final name or not at all. Every failure is an `ExrError` whose
message starts with the file's path (or "EXR data (N bytes)" for in-memory data).

Behaviour worth knowing:

* Limits (`FrameLimits`) are checked from the headers before any pixel memory is allocated; a plate
  over a limit raises `ExrError` chained from the `FrameLimitError`, keeping its message.
* Tiled and multi-resolution files are read at full resolution (MIP/RIP level 0) and written back as
  scanline files; deep files are refused.
* Channel order is OpenImageIO's canonical order (R, G, B, A, then the rest, layer by layer), which
  is stable through a write and a read.
* `Part.attributes` uses OpenImageIO's names for header attributes (``compression``,
  ``PixelAspectRatio``, ``multiView``, ``screenWindowCenter``, ``DateTime`` for capDate, ...), except
  ``lineOrder`` and ``colorInteropID`` (the colour space the file declares), which keep their OpenEXR
  names. Values are str, int, float or tuples of one of them.
  On writing, the OpenEXR type of a tuple comes from the attribute's name for standard attributes
  (``screenWindowCenter``, ``chromaticities``, ``FramesPerSecond``, ``smpte:TimeCode``, ...) and
  otherwise from its length and items: floats give v2f (2), v3f (3), box2f (4), m33f (9), m44f (16)
  or floatvector, ints give v2i (2), v3i (3), box2i (4), strings a stringvector. Double-precision
  attributes are written back as single precision. OpenImageIO stamps ``DateTime`` with the current
  time when a part has none.
* Planes round-trip bit-exactly, NaN payloads included. A part mixing pixel types is written through
  one float32 buffer, exact for half and float; its uint planes must stay within 2**24 (larger values
  would be rounded by OpenImageIO, so such a part is refused: put uint channels in their own part).
"""

from __future__ import annotations

import contextlib
import operator
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import OpenImageIO as oiio

from .files import describe_os_error, temporary_path, write_failure
from .frame import PIXEL_TYPES, Frame, FrameLimitError, FrameLimits, Part, Window, pixel_type_of

__all__ = ["ExrError", "read_exr", "write_exr", "decode_exr", "encode_exr"]

_MAGIC = b"\x76\x2f\x31\x01"
_DEFAULT_LIMITS = FrameLimits()

_TYPEDESC_OF: dict[str, oiio.TypeDesc] = {
    "half": oiio.TypeDesc("half"),
    "float": oiio.TypeDesc("float"),
    "uint": oiio.TypeDesc("uint"),
}

# Attributes that OpenImageIO derives from the file structure or invents while reading: writing them
# back would be wrong (``textureformat`` would turn a scanline file into a MIP-mapped one).
_DERIVED_ATTRIBUTES = {
    "name",
    "view",
    "openexr:chunkCount",
    "openexr:roundingmode",
    "openexr:levelmode",
    "openexr:luminancechroma",
    "openexr:maxSamplesPerPixel",
    "textureformat",
    "YResolution",
    "ResolutionUnit",
    "thumbnail_width",
    "thumbnail_height",
    "thumbnail_nchannels",
}

# Stored under the OpenEXR header name in Part.attributes, under OpenImageIO's name in the spec.
_RENAMED = {"openexr:lineOrder": "lineOrder", "oiio:ColorSpace": "colorInteropID"}
_OIIO_NAME = {ours: theirs for theirs, ours in _RENAMED.items()}

# Standard attributes whose OpenEXR type cannot be told from a plain value (OpenEXR refuses to read a
# standard attribute stored with another type, e.g. an int screenWindowWidth).
_TYPED_BY_NAME: dict[str, oiio.TypeDesc] = {
    "FramesPerSecond": oiio.TypeRational,
    "smpte:TimeCode": oiio.TypeTimeCode,
    "smpte:KeyCode": oiio.TypeKeyCode,
    "screenWindowCenter": oiio.TypeFloat2,
    "adoptedNeutral": oiio.TypeFloat2,
    "chromaticities": oiio.TypeDesc("float[8]"),
    "worldtocamera": oiio.TypeMatrix44,
    "worldtoNDC": oiio.TypeMatrix44,
    "worldtoscreen": oiio.TypeMatrix44,
    "worldToCamera": oiio.TypeMatrix44,
    "worldToNDC": oiio.TypeMatrix44,
    "worldToScreen": oiio.TypeMatrix44,
}
_FLOAT_NAMES = {
    "PixelAspectRatio",
    "screenWindowWidth",
    "whiteLuminance",
    "XResolution",
    "ExposureTime",
    "FNumber",
    "utcOffset",
    "longitude",
    "latitude",
    "altitude",
    "focus",
    "isoSpeed",
    "openexr:dwaCompressionLevel",
    "effectiveFocalLength",
    "nominalFocalLength",
    "pinholeFocalLength",
    "sensorAcrossWidth",
    "sensorDownHeight",
    "sensorDiagonal",
    "tStop",
    "entrancePupilOffset",
}
_FLOAT_TUPLES = {
    2: oiio.TypeFloat2,
    3: oiio.TypeVector,
    4: oiio.TypeBox2,
    9: oiio.TypeMatrix33,
    16: oiio.TypeMatrix44,
}
_INT_TUPLES = {2: oiio.TypeVector2i, 3: oiio.TypeVector3i, 4: oiio.TypeBox2i}


class ExrError(Exception):
    """An EXR file or buffer cannot be read or written; the message names it and says why."""


# --------------------------------------------------------------------------------------------------
# Reading


def read_exr(path: str | os.PathLike[str], limits: FrameLimits = _DEFAULT_LIMITS) -> Frame:
    """Read every part of an EXR file, planes in their native pixel types.

    Raises ExrError (naming the file) if the file is missing, not an EXR, deep, damaged or over
    `limits`.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ExrError(f"{name}: no such file")
    if not os.path.isfile(name):
        raise ExrError(f"{name}: not a regular file")
    return _read(name, limits, name)


def decode_exr(data: bytes, limits: FrameLimits = _DEFAULT_LIMITS) -> Frame:
    """Read an EXR file held in memory (see `read_exr`); errors name "EXR data (N bytes)"."""
    what = f"EXR data ({len(data)} bytes)"
    with _scratch_file("decode") as scratch:
        try:
            with open(scratch, "wb") as stream:
                stream.write(data)
        except OSError as exc:
            raise ExrError(f"{what}: cannot stage for decoding: {exc}") from exc
        return _read(scratch, limits, what)


def _read(path: str, limits: FrameLimits, what: str) -> Frame:
    try:
        with open(path, "rb") as stream:
            magic = stream.read(4)
    except OSError as exc:
        raise ExrError(f"{what}: cannot open: {exc.strerror or exc}") from exc
    if magic != _MAGIC:
        raise ExrError(f"{what}: not an OpenEXR file (no EXR magic number)")

    inp = oiio.ImageInput.open(path)
    if inp is None:
        message = _oiio_message(_error_text(oiio.geterror), path, what)
        if "could not find a format reader" in message:
            # The magic number is right, so the OpenEXR reader refused the header.
            message = "the header is damaged or uses features this reader does not support"
        raise ExrError(f"{what}: cannot open: {message or 'unknown OpenImageIO error'}")
    try:
        return _read_parts(inp, path, limits, what)
    except UnicodeDecodeError as exc:
        raise ExrError(f"{what}: the header holds text that is not valid UTF-8 ({exc.reason})") from exc
    finally:
        inp.close()
        _error_text(inp.geterror)  # drop anything close() reported; the frame (or the error) is decided


def _read_parts(inp: Any, path: str, limits: FrameLimits, what: str) -> Frame:
    if inp.format_name() != "openexr":
        raise ExrError(f"{what}: not an OpenEXR file (read as {inp.format_name()})")
    _check_input(inp, path, what, "cannot read the header")

    first = inp.spec()
    count = first.get_int_attribute("oiio:subimages", 1)
    try:
        limits.check_parts(count, what)
    except FrameLimitError as exc:
        raise ExrError(str(exc)) from exc

    specs = []
    for index in range(count):
        spec = inp.spec(index, 0)
        _check_input(inp, path, what, "cannot read the header", _part_label(what, index, count))
        specs.append(spec)
        _check_header(spec, index, count, limits, what)

    parts = [_read_part(inp, index, count, spec, path, what) for index, spec in enumerate(specs)]
    return Frame(parts)


def _part_label(what: str, index: int, count: int) -> str:
    return what if count == 1 else f"{what} part {index}"


def _check_header(spec: Any, index: int, count: int, limits: FrameLimits, what: str) -> None:
    label = _part_label(what, index, count)
    if spec.deep:
        raise ExrError(f"{label}: deep EXR is not supported")
    if spec.depth != 1:
        raise ExrError(f"{label}: volume images (depth {spec.depth}) are not supported")
    if spec.full_width <= 0 or spec.full_height <= 0:
        raise ExrError(f"{label}: invalid display window ({spec.full_width}x{spec.full_height} pixels)")
    try:
        limits.check_part(spec.width, spec.height, spec.nchannels, label)
    except FrameLimitError as exc:
        raise ExrError(str(exc)) from exc
    names = list(spec.channelnames)
    if spec.nchannels <= 0:
        raise ExrError(f"{label}: no channels")
    if len(names) != spec.nchannels or len(set(names)) != len(names) or not all(names):
        raise ExrError(f"{label}: inconsistent channel list {names}")
    if len(_channel_types(spec)) != spec.nchannels:
        raise ExrError(f"{label}: inconsistent channel formats")
    for channel, pixel_type in zip(spec.channelnames, _channel_types(spec)):
        if pixel_type not in PIXEL_TYPES:
            raise ExrError(f"{label}: channel {channel!r} has unsupported pixel type {pixel_type}")


def _channel_types(spec: Any) -> list[str]:
    formats = tuple(spec.channelformats) or (spec.format,) * spec.nchannels
    return [str(fmt) for fmt in formats]


def _read_part(inp: Any, index: int, count: int, spec: Any, path: str, what: str) -> Part:
    label = _part_label(what, index, count)
    names = list(spec.channelnames)
    types = _channel_types(spec)
    channels: dict[str, np.ndarray] = {}
    begin = 0
    while begin < spec.nchannels:
        end = begin + 1
        while end < spec.nchannels and types[end] == types[begin]:
            end += 1
        pixels = inp.read_image(index, 0, begin, end, _TYPEDESC_OF[types[begin]])
        _check_input(inp, path, what, "cannot read the pixels", label)
        expected = (spec.height, spec.width, end - begin)
        if not isinstance(pixels, np.ndarray) or pixels.dtype != PIXEL_TYPES[types[begin]]:
            raise ExrError(f"{label}: cannot read the pixels (no {types[begin]} data returned)")
        if pixels.shape != expected:
            raise ExrError(f"{label}: pixel data {pixels.shape} does not match the data window")
        for offset in range(end - begin):
            channels[names[begin + offset]] = np.ascontiguousarray(pixels[:, :, offset])
        del pixels
        begin = end

    data_window: Window = (spec.x, spec.y, spec.x + spec.width - 1, spec.y + spec.height - 1)
    display_window: Window = (
        spec.full_x,
        spec.full_y,
        spec.full_x + spec.full_width - 1,
        spec.full_y + spec.full_height - 1,
    )
    part_name = spec.get_string_attribute("name") or None
    view = spec.get_string_attribute("view") or None
    return Part(channels, data_window, display_window, part_name, view, _plain_attributes(spec))


def _plain_attributes(spec: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for param in spec.extra_attribs:
        name = param.name
        if name not in _RENAMED and (name.startswith("oiio:") or name in _DERIVED_ATTRIBUTES):
            continue
        value = _plain(param.value)
        if value is not None:
            attributes[_RENAMED.get(name, name)] = value
    return attributes


def _plain(value: Any) -> Any:
    """Return `value` as str/int/float or a tuple of one of those, or None if it is anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (tuple, list)) and value:
        items = tuple(value)
        if any(isinstance(item, bool) for item in items):
            return None
        for kind in (str, int):
            if all(isinstance(item, kind) for item in items):
                return items
        if all(isinstance(item, (int, float)) for item in items):
            return tuple(float(item) for item in items)
    return None


def _check_input(inp: Any, path: str, what: str, doing: str, label: str | None = None) -> None:
    # OpenImageIO may hand back pixels and still record an error (a bad chunk table, a truncated
    # file): every call is followed by this check.
    if inp.has_error:
        message = _oiio_message(_error_text(inp.geterror), path, what)
        raise ExrError(f"{label or what}: {doing}: {message or 'unknown OpenImageIO error'}")


def _error_text(geterror: Any) -> str:
    """Call an OpenImageIO geterror (which clears the error); damaged files can make it non-UTF-8."""
    try:
        return str(geterror())
    except UnicodeDecodeError:
        return "damaged data (OpenImageIO's message is not valid text)"


def _oiio_message(message: str, path: str, what: str) -> str:
    """Tidy an OpenImageIO error message, naming `what` instead of a scratch file."""
    message = " ".join(message.split())
    message = re.sub(rf"EXR Error \({re.escape(path)}\):\s*", "", message)  # our prefix names the file
    if path != what:
        message = message.replace(path, what)
    return message


# --------------------------------------------------------------------------------------------------
# Writing


def write_exr(frame: Frame, path: str | os.PathLike[str]) -> None:
    """Write `frame` as an EXR file (multi-part when it has several parts), atomically.

    The file is written beside the target under a temporary name and renamed over it, so the target
    is either the complete new file or untouched. Missing parent directories are created. Raises
    ExrError naming the file.
    """
    target = os.path.abspath(os.fspath(path))
    directory, basename = os.path.split(target)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ExrError(f"{target}: cannot create the directory {directory}: {exc.strerror or exc}") from exc
    if os.path.isdir(target):
        raise ExrError(f"{target}: is a directory")
    temporary = temporary_path(target)
    try:
        _write(frame, temporary, target)
        _fsync(temporary)
        os.replace(temporary, target)
    except OSError as exc:
        _remove(temporary)
        raise ExrError(f"{target}: cannot write: {describe_os_error(exc)}") from exc
    except ExrError as exc:
        _remove(temporary)
        size = sum(plane.nbytes for part in frame.parts for plane in part.channels.values())
        reason = write_failure(target, str(exc), size)
        raise (exc if reason == str(exc) else ExrError(f"{target}: cannot write: {reason}")) from exc
    except BaseException:
        _remove(temporary)
        raise


def encode_exr(frame: Frame) -> bytes:
    """Return `frame` as the bytes of an EXR file (see `write_exr`)."""
    with _scratch_file("encode") as scratch:
        _write(frame, scratch, "EXR data")
        try:
            with open(scratch, "rb") as stream:
                return stream.read()
        except OSError as exc:
            raise ExrError(f"EXR data: cannot read back the encoded file: {exc}") from exc


def _write(frame: Frame, path: str, what: str) -> None:
    try:
        frame.check()
    except ValueError as exc:
        raise ExrError(f"{what}: {exc}") from exc
    multipart = len(frame.parts) > 1
    labels = [f"{what} part {index}" if multipart else what for index in range(len(frame.parts))]
    specs = [_part_spec(part, label, multipart) for part, label in zip(frame.parts, labels)]
    buffers = [_interleave(part, label) for part, label in zip(frame.parts, labels)]

    out = oiio.ImageOutput.create("openexr")
    if out is None:
        raise ExrError(f"{what}: no OpenEXR writer: {_error_text(oiio.geterror)}")
    try:
        if multipart and not out.supports("multiimage"):
            raise ExrError(f"{what}: this OpenEXR writer cannot write multi-part files")
        opened = out.open(path, specs) if multipart else out.open(path, specs[0], "Create")
        _check_output(out, opened, path, what, "cannot create the file")
        for index, buffer in enumerate(buffers):
            if index > 0:
                opened = out.open(path, specs[index], "AppendSubimage")
                _check_output(out, opened, path, what, "cannot start the part", labels[index])
            written = out.write_image(buffer)
            _check_output(out, written, path, what, "cannot write the pixels", labels[index])
        closed = out.close()
        _check_output(out, closed, path, what, "cannot finish the file")
    except BaseException:
        out.close()
        _error_text(out.geterror)
        raise


def _part_spec(part: Part, label: str, multipart: bool) -> Any:
    names = list(part.channels)
    if not names:
        raise ExrError(f"{label}: no channels")
    if not all(isinstance(name, str) and name for name in names):
        raise ExrError(f"{label}: channel names must be non-empty strings, not {names}")
    types = [pixel_type_of(plane.dtype) for plane in part.channels.values()]
    xmin, ymin, xmax, ymax = _window(part.data_window, "data", label)
    dxmin, dymin, dxmax, dymax = _window(part.display_window, "display", label)
    spec = oiio.ImageSpec(xmax - xmin + 1, ymax - ymin + 1, len(names), _TYPEDESC_OF[types[0]])
    spec.x, spec.y = xmin, ymin
    spec.full_x, spec.full_y = dxmin, dymin
    spec.full_width, spec.full_height = dxmax - dxmin + 1, dymax - dymin + 1
    spec.channelnames = tuple(names)
    spec.channelformats = tuple(_TYPEDESC_OF[pixel_type] for pixel_type in types)
    for name, value in part.attributes.items():
        _set_attribute(spec, name, value, label)
    _encode_compression_level(spec)
    if part.name:
        spec.attribute("name", part.name)
    elif multipart:
        raise ExrError(f"{label}: parts of a multi-part file need a name")
    if part.view:
        spec.attribute("view", part.view)
    return spec


def _window(window: Window, kind: str, label: str) -> Window:
    """The window as Python ints, or ExrError if it is empty or outside OpenEXR's 32-bit range."""
    try:
        xmin, ymin, xmax, ymax = (operator.index(value) for value in window)
    except (TypeError, ValueError) as exc:
        raise ExrError(f"{label}: the {kind} window {window!r} is not four integers") from exc
    if xmax < xmin or ymax < ymin:
        raise ExrError(f"{label}: empty {kind} window {window}")
    if min(xmin, ymin) < -(2**31) or max(xmax, ymax) >= 2**31 or max(xmax - xmin, ymax - ymin) >= 2**31 - 1:
        raise ExrError(f"{label}: the {kind} window {window} is outside OpenEXR's 32-bit range")
    return xmin, ymin, xmax, ymax


def _set_attribute(spec: Any, name: str, value: Any, label: str) -> None:
    if name in ("name", "view") or name.startswith("oiio:"):
        return
    key = _OIIO_NAME.get(name, name)
    plain = _plain(value)
    if plain is None:
        raise ExrError(f"{label}: attribute {name!r} has a value that cannot be stored in EXR: {value!r}")
    if isinstance(plain, str):
        spec.attribute(key, plain)
    elif isinstance(plain, int) and key not in _FLOAT_NAMES:
        spec.attribute(key, oiio.TypeInt, plain)
    elif isinstance(plain, (int, float)):
        spec.attribute(key, oiio.TypeFloat, float(plain))
    elif isinstance(plain[0], str):
        spec.attribute(key, oiio.TypeDesc(f"string[{len(plain)}]"), plain)
    elif key in _TYPED_BY_NAME:
        typedesc = _TYPED_BY_NAME[key]
        if len(plain) != typedesc.basevalues():
            raise ExrError(f"{label}: attribute {name!r} needs {typedesc.basevalues()} values, not {plain!r}")
        if typedesc.basetype == oiio.BASETYPE.FLOAT:
            plain = tuple(float(item) for item in plain)
        spec.attribute(key, typedesc, plain)
    elif all(isinstance(item, int) for item in plain) and len(plain) in _INT_TUPLES:
        spec.attribute(key, _INT_TUPLES[len(plain)], plain)
    else:
        floats = tuple(float(item) for item in plain)
        spec.attribute(key, _FLOAT_TUPLES.get(len(floats), oiio.TypeDesc(f"float[{len(floats)}]")), floats)


def _encode_compression_level(spec: Any) -> None:
    # OpenImageIO reports DWA compression as "dwaa" plus openexr:dwaCompressionLevel, but on writing
    # it only keeps the level when it is given as "dwaa:<level>".
    compression = spec.get_string_attribute("compression")
    level = spec.get_float_attribute("openexr:dwaCompressionLevel", 0.0)
    if compression.lower() in ("dwaa", "dwab") and level > 0:
        spec.attribute("compression", f"{compression}:{round(level)}")


_UINT_SCALE = float(np.iinfo(np.uint32).max)
_UINT_EXACT = 2**24
"""Largest uint that survives OpenImageIO's float conversion in a part mixing pixel types."""


def _interleave(part: Part, label: str) -> np.ndarray:
    """Stack the planes into one (height, width, channels) buffer that OpenImageIO writes exactly.

    One pixel type: that type, no conversion at all. Mixed types: float32, which holds every half
    value (NaN payloads included); OpenImageIO converts each channel through float, mapping [0, 1]
    onto the whole uint range, so uint planes are divided by 2**32 - 1 and come back exactly up to
    2**24. A mixed part with larger uint values is refused rather than written wrong.
    """
    planes = list(part.channels.items())
    dtypes = {plane.dtype for _, plane in planes}
    uint = np.dtype(np.uint32)
    dtype = PIXEL_TYPES[pixel_type_of(planes[0][1].dtype)] if len(dtypes) == 1 else np.dtype(np.float32)
    buffer = np.empty((part.height, part.width, len(planes)), dtype)
    for index, (channel, plane) in enumerate(planes):
        if plane.dtype == uint and dtype != uint:
            if plane.size and int(plane.max()) > _UINT_EXACT:
                raise ExrError(
                    f"{label}: uint channel {channel!r} holds values above {_UINT_EXACT}, which "
                    "cannot be written exactly beside half/float channels; put the uint channels "
                    "in a part of their own"
                )
            buffer[:, :, index] = plane / _UINT_SCALE
        else:
            buffer[:, :, index] = plane
    return buffer


def _check_output(out: Any, ok: bool, path: str, what: str, doing: str, label: str | None = None) -> None:
    if ok and not out.has_error:
        return
    message = _oiio_message(_error_text(out.geterror), path, what)
    raise ExrError(f"{label or what}: {doing}: {message or 'unknown OpenImageIO error'}")


# --------------------------------------------------------------------------------------------------
# Scratch files


def _scratch_dir() -> str | None:
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None  # tempfile's default


@contextlib.contextmanager
def _scratch_file(purpose: str) -> Iterator[str]:
    """A fresh, empty .exr file for OpenImageIO to use, deleted afterwards whatever happens."""
    try:
        handle, scratch = tempfile.mkstemp(prefix=f".vst-{purpose}-", suffix=".exr", dir=_scratch_dir())
    except OSError as exc:
        raise ExrError(f"EXR data: cannot create a scratch file: {exc}") from exc
    os.close(handle)
    try:
        yield scratch
    finally:
        _remove(scratch)


def _fsync(path: str) -> None:
    """Flush a finished file to storage, so that the rename never exposes a file still in flight."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
