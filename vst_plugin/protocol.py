"""The vst wire protocol, version 1 (specified in docs/protocol.md).

Everything that knows the byte layout of a message lives here: header encoding, the request and reply
envelopes, and frames as raw planes. The fields a header may carry, their types and the error codes
are defined in `vst_plugin.schema`. Client and server call these functions and never build messages
themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from vst_plugin.frame import (
    PIXEL_TYPES,
    Frame,
    FrameLimitError,
    FrameLimits,
    Part,
    pixel_type_of,
    window_size,
)
from vst_plugin.schema import MAX_REQUEST_ID, OPS, PROTOCOL_VERSION, REPLY_FIELDS, ProtocolError, read_envelope, shown

MAX_HEADER_BYTES = 16 << 20
"""Largest header frame a server reads (it may carry style pictures as bytes, see docs/protocol.md)."""


def is_ipv6(address: str) -> bool:
    """True for a tcp:// address whose host is an IPv6 literal (tcp://[::1]:5555): its socket needs zmq.IPV6."""
    return address.startswith("tcp://[")


# Payload frames are little-endian planes.
_WIRE_DTYPES = {name: dtype.newbyteorder("<") for name, dtype in PIXEL_TYPES.items()}


@dataclass(frozen=True)
class Message:
    """A decoded message: its header map and its payload frames (buffers, not copied)."""

    header: dict[str, Any]
    payload: list[memoryview]

    @property
    def id(self) -> int:
        return self.header["id"]

    @property
    def op(self) -> str:
        return self.header["op"]


def pack(header: dict[str, Any]) -> bytes:
    """Encode a header map as msgpack."""
    return msgpack.packb(header, use_bin_type=True)


def unpack(data: bytes | memoryview) -> dict[str, Any]:
    """Decode a msgpack header map; raise ProtocolError('bad_request') if it is not one."""
    try:
        header = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises ValueError, TypeError (unhashable keys), StackError ...
        raise ProtocolError("bad_request", f"the header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_request", "the header must be a msgpack map")
    return header


def request(op: str, request_id: int, **fields: Any) -> dict[str, Any]:
    """Build a request header."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}")
    return {"v": PROTOCOL_VERSION, "id": request_id, "op": op, **fields}


def valid_id(value: Any) -> bool:
    """True for a request id the protocol allows: an int (not a bool) in 0 .. 2^63-1."""
    return type(value) is int and 0 <= value <= MAX_REQUEST_ID


def reply(req: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Build a success reply header for a request header; `fields` must be the op's reply fields."""
    op = req["op"]
    unknown = set(fields) - set(REPLY_FIELDS[op])
    if unknown:
        raise ValueError(f"{op} replies carry no {', '.join(sorted(unknown))} (vst_plugin/schema.py REPLY_FIELDS)")
    return {"v": PROTOCOL_VERSION, "id": req["id"], "op": op, "ok": True, **fields}


def error_reply(req: dict[str, Any] | None, code: str, message: str) -> dict[str, Any]:
    """Build an error reply header; `req` may be None when the request could not be decoded."""
    req = req or {}  # repeat only a valid id and a known op, never what a client made up
    request_id = req.get("id") if valid_id(req.get("id")) else -1
    op = req.get("op") if isinstance(req.get("op"), str) and req.get("op") in OPS else "?"
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "op": op,
        "ok": False,
        "error": {"code": code, "message": message},
    }


def decode_request(frames: Sequence[Any]) -> Message:
    """Decode the frames of a request (header first) and check its envelope.

    Raises ProtocolError with the code the reply should carry and, where the header could be
    decoded, that header, so the error reply can name the request.
    """
    if not frames:
        raise ProtocolError("bad_request", "empty message: a request starts with a msgpack header")
    first = _buffer(frames[0])
    if first.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"the header is {first.nbytes} bytes, over {MAX_HEADER_BYTES}")
    header = unpack(first)
    read_envelope(header)
    return Message(header, [_buffer(frame) for frame in frames[1:]])


def decode_reply(frames: Sequence[Any]) -> Message:
    """Decode the frames of a reply and check its envelope."""
    if not frames:
        raise ProtocolError("bad_request", "empty reply from the server")
    header = unpack(_buffer(frames[0]))
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            "version",
            f"the server speaks protocol version {header.get('v')!r}; this plug-in speaks {PROTOCOL_VERSION}",
        )
    if type(header.get("id")) is not int or not isinstance(header.get("ok"), bool):
        raise ProtocolError("bad_request", "reply header lacks 'id' or 'ok'")
    return Message(header, [_buffer(frame) for frame in frames[1:]])


def _buffer(frame: Any) -> memoryview:
    """The bytes of a ZeroMQ frame (zmq.Frame with copy=False, or bytes) as a memoryview."""
    buffer = getattr(frame, "buffer", None)
    return buffer if buffer is not None else memoryview(frame)


# ---- frames as raw planes -------------------------------------------------------------------


def frame_header(frame: Frame) -> dict[str, Any]:
    """Describe a frame for a stylize request (the `frame` field)."""
    return {
        "parts": [
            {
                "name": part.name,
                "view": part.view,
                "data_window": list(part.data_window),
                "display_window": list(part.display_window),
                "channels": [
                    {"name": name, "type": pixel_type_of(plane.dtype)} for name, plane in part.channels.items()
                ],
                "attributes": part.attributes,
            }
            for part in frame.parts
        ]
    }


def frame_planes(frame: Frame) -> list[np.ndarray]:
    """The payload frames of a frame: every plane, C-contiguous little-endian, in header order."""
    return [_wire_plane(plane) for part in frame.parts for plane in part.channels.values()]


def _wire_plane(plane: np.ndarray) -> np.ndarray:
    wire = _WIRE_DTYPES[pixel_type_of(plane.dtype)]
    return np.ascontiguousarray(plane, dtype=wire)


def _window(value: Any, what: str) -> tuple[int, int, int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ProtocolError("bad_request", f"{what} must be [xmin, ymin, xmax, ymax] integers")
    return tuple(value)  # type: ignore[return-value]


def _channel_list(value: Any, what: str) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise ProtocolError("bad_request", f"{what}: 'channels' must be a list")
    channels = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError("bad_request", f"{what}: each channel needs a 'name' string and a 'type'")
        if not isinstance(entry.get("type"), str) or entry["type"] not in PIXEL_TYPES:
            raise ProtocolError(
                "bad_frame",
                f"{what} channel {entry['name'][:80]!r}: pixel type {shown(entry.get('type'))} is not one of "
                f"{', '.join(PIXEL_TYPES)}",
            )
        channels.append((entry["name"], entry["type"]))
    names = [name for name, _ in channels]
    if len(set(names)) != len(names):
        raise ProtocolError("bad_frame", f"{what}: channel names repeat")
    return channels


def parse_frame(header: Any, payload: Sequence[memoryview], limits: FrameLimits) -> Frame:
    """Rebuild a Frame from a `frame` header and its payload frames, without copying pixels.

    Every size is checked against `limits` and against the payload lengths before any array is
    made; the planes are read-only views of the received buffers.
    """
    if not isinstance(header, dict) or not isinstance(header.get("parts"), list):
        raise ProtocolError("bad_request", "'frame' must be a map with a 'parts' list")
    parts_header = header["parts"]
    try:
        limits.check_parts(len(parts_header))
    except FrameLimitError as exc:
        raise ProtocolError("too_large", str(exc)) from None
    layouts = []
    for index, entry in enumerate(parts_header):
        what = f"part {index}"
        if not isinstance(entry, dict):
            raise ProtocolError("bad_request", f"{what} must be a map")
        data_window = _window(entry.get("data_window"), f"{what} data_window")
        display_window = _window(entry.get("display_window"), f"{what} display_window")
        channels = _channel_list(entry.get("channels"), what)
        width, height = window_size(data_window)
        try:
            limits.check_part(width, height, len(channels), what)
        except FrameLimitError as exc:
            raise ProtocolError("too_large", str(exc)) from None
        layouts.append((entry, data_window, display_window, channels, width, height))
    expected = sum(len(layout[3]) for layout in layouts)
    try:
        limits.check_bytes(sum(_WIRE_DTYPES[t].itemsize * w * h for _, _, _, c, w, h in layouts for _, t in c))
    except FrameLimitError as exc:
        raise ProtocolError("too_large", str(exc)) from None
    if len(payload) != expected:
        raise ProtocolError(
            "bad_frame", f"the frame header lists {expected} channels but {len(payload)} payload frames came"
        )
    parts = []
    planes = iter(payload)
    for index, (entry, data_window, display_window, channels, width, height) in enumerate(layouts):
        arrays: dict[str, np.ndarray] = {}
        for name, pixel_type in channels:
            buffer = next(planes)
            dtype = _WIRE_DTYPES[pixel_type]
            if buffer.nbytes != width * height * dtype.itemsize:
                raise ProtocolError(
                    "bad_frame",
                    f"part {index} channel {name!r}: {buffer.nbytes} bytes, expected "
                    f"{width}x{height} {pixel_type} = {width * height * dtype.itemsize}",
                )
            arrays[name] = _plane(buffer, pixel_type, width, height)
        attributes = entry.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise ProtocolError("bad_request", f"part {index}: 'attributes' must be a map")
        parts.append(
            Part(
                channels=arrays,
                data_window=data_window,
                display_window=display_window,
                name=entry.get("name") if isinstance(entry.get("name"), str) else None,
                view=entry.get("view") if isinstance(entry.get("view"), str) else None,
                attributes=attributes,
            )
        )
    return Frame(parts)


def _plane(buffer: memoryview, pixel_type: str, width: int, height: int) -> np.ndarray:
    """A (height, width) plane in the native dtype of its pixel type; a view of `buffer` when possible."""
    plane = np.frombuffer(buffer, dtype=_WIRE_DTYPES[pixel_type]).reshape(height, width)
    native = PIXEL_TYPES[pixel_type]
    return plane.view(native) if plane.dtype.isnative else plane.astype(native)


def changed_header(changed: dict[tuple[int, str], np.ndarray]) -> dict[str, Any]:
    """Describe the channels a stylize reply carries (`frame` of the reply), grouped by part."""
    parts: dict[int, list[dict[str, str]]] = {}
    for (index, name), plane in changed.items():
        parts.setdefault(index, []).append({"name": name, "type": pixel_type_of(plane.dtype)})
    return {"parts": [{"index": index, "channels": channels} for index, channels in parts.items()]}


def changed_planes(changed: dict[tuple[int, str], np.ndarray]) -> list[np.ndarray]:
    """Payload frames of a stylize reply, in the order of `changed_header`."""
    order = changed_header(changed)
    return [
        _wire_plane(changed[(entry["index"], channel["name"])])
        for entry in order["parts"]
        for channel in entry["channels"]
    ]


def apply_changed(frame: Frame, header: Any, payload: Sequence[memoryview]) -> Frame:
    """Return a copy of `frame` with the channels of a stylize reply replaced.

    Channels the reply does not carry are the caller's own arrays, untouched.
    """
    if not isinstance(header, dict) or not isinstance(header.get("parts"), list):
        raise ProtocolError("bad_request", "reply 'frame' must be a map with a 'parts' list")
    parts = [
        Part(dict(p.channels), p.data_window, p.display_window, p.name, p.view, p.attributes)
        for p in frame.parts
    ]
    planes = iter(payload)
    count = 0
    for entry in header["parts"]:
        index = entry.get("index")
        if not isinstance(index, int) or not 0 <= index < len(parts):
            raise ProtocolError("bad_frame", f"reply names part {index!r}, the frame has {len(parts)}")
        part = parts[index]
        for name, pixel_type in _channel_list(entry.get("channels"), f"reply part {index}"):
            buffer = next(planes, None)
            if buffer is None:
                raise ProtocolError("bad_frame", "the reply carries fewer payload frames than it lists")
            dtype = _WIRE_DTYPES[pixel_type]
            if name not in part.channels or buffer.nbytes != part.width * part.height * dtype.itemsize:
                raise ProtocolError("bad_frame", f"reply channel {name!r} does not fit part {index}")
            part.channels[name] = _plane(buffer, pixel_type, part.width, part.height)
            count += 1
    if count != len(payload):
        raise ProtocolError("bad_frame", "the reply carries more payload frames than it lists")
    return Frame(parts)
