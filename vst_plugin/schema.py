"""Every field of the vst requests and replies: name, type, default and checks (docs/protocol.md).

The one definition of what a request may carry, used by the client, the sequence jobs, the render
specification and the server alike: the server reads a request header through `read_fields` /
`StylizeRequest.from_wire` and gets typed values back, or a `ProtocolError` with the error code the
reply carries. tests/test_schema.py checks that docs/protocol.md and this module agree.

Pure Python on purpose: a host's own Python (Nuke's, a farm job's) imports it without numpy, ZeroMQ
or torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_COLORSPACE = "lin_rec709"
RAW_COLORSPACE = "raw"
"""The colour space name that sends values to the network unconverted."""
HIGHLIGHT_POLICIES = ("preserve", "compress", "clamp")
FLOW_PRESETS = ("ultrafast", "fast", "medium", "fine")
"""Optical flow presets a temporal request may name (server/flow.py maps them to OpenCV DIS settings;
`fine` refines at full resolution, for final renders)."""
VECTOR_MODES = ("auto", "off")
MAX_REQUEST_ID = 2**63 - 1

OPS = ("hello", "models", "stylize", "reset", "stats", "unload", "ping")


def default_address() -> str:
    """Where the server is when nothing says otherwise: $VST_SERVER, else DEFAULT_ADDRESS."""
    return os.environ.get("VST_SERVER") or DEFAULT_ADDRESS


ERROR_CODES: dict[str, str] = {
    "bad_request": "the header is malformed, a field is missing or has the wrong type",
    "version": "unsupported protocol version",
    "unknown_op": "the op is not one of the above",
    "too_large": "the frame is over the server's limits (sides, pixels, channels, parts, bytes)",
    "bad_frame": "payload frames do not match the frame header (count, sizes, pixel types)",
    "bad_exr": "the EXR bytes could not be read (damaged or unsupported file)",
    "unknown_model": "no such model, or a checkpoint no model family recognises",
    "unsafe_model": "the checkpoint would execute code when loaded; it was not loaded",
    "bad_param": "a model parameter, colour space, highlight policy or layer name is invalid",
    "model_error": "the model failed to load or run",
    "shutting_down": "the server is stopping and accepts no new frames",
    "busy": "the server's queue of frames is full (its byte budget); send the frame again after a pause",
    "abandoned": "the client sent nothing (no request, no ping) for the server's client timeout, so its queued "
                 "frame was dropped without being computed",
    "internal": "a server bug; the message carries the exception",
}
"""Error codes a reply may carry, with what each means."""


class ProtocolError(Exception):
    """A message breaks the protocol; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, header: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.header = header
        """The request header when it could be decoded, so the error reply can carry its id."""


# ---- typed fields -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One field of a header: its msgpack type, default and what values it takes."""

    name: str
    kind: str
    """"str", "int", "float", "bool", "list" or "map" (msgpack types; an int is a float too)."""
    default: Any = None
    help: str = ""
    required: bool = False
    choices: tuple[str, ...] | None = None
    bounds: tuple[float, float] | None = None
    check: Callable[[Any], str | None] | None = None
    """Returns what is wrong with a well-typed value, or None (beyond `choices` and `bounds`)."""
    code: str = "bad_request"
    """The error code when the value is of the wrong type or not accepted."""

    def read(self, header: Mapping[str, Any], context: dict[str, Any] | None = None) -> Any:
        """This field's value in `header` (its default when absent); ProtocolError when it is wrong."""
        if header.get(self.name) is None:
            if self.required:
                raise ProtocolError("bad_request", f"'{self.name}' is missing: {self.help}", context)
            return self.default
        value = header[self.name]
        if not _is_kind(value, self.kind):
            raise ProtocolError(self.code, f"'{self.name}' must be {_KIND_NAMES[self.kind]}, not {value!r}", context)
        complaint = self._complaint(value)
        if complaint:
            raise ProtocolError(self.code, f"'{self.name}' {complaint}", context)
        return float(value) if self.kind == "float" else value

    def _complaint(self, value: Any) -> str | None:
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, not {value!r}"
        if self.bounds is not None and not self.bounds[0] <= value <= self.bounds[1]:
            return f"must be in {self.bounds[0]:g}..{self.bounds[1]:g}, not {value!r}"
        return self.check(value) if self.check is not None else None

    def param(self) -> dict[str, Any]:
        """The field as a parameter schema entry (the form `models` uses), for a host's controls."""
        kind = "choice" if self.choices else _PARAM_TYPES[self.kind]
        entry: dict[str, Any] = {"name": self.name, "type": kind, "default": self.default}
        if self.bounds is not None:
            entry["min"], entry["max"] = self.bounds
        if self.choices is not None:
            entry["choices"] = list(self.choices)
        entry["help"] = self.help
        return entry


_KIND_NAMES = {
    "str": "a string", "int": "an integer", "float": "a number", "bool": "true or false", "list": "a list",
    "map": "a map with string keys",
}


_PARAM_TYPES = {"float": "float", "int": "int", "str": "string", "bool": "bool"}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float)) and math.isfinite(value)
    if kind == "map":
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
    return isinstance(value, {"str": str, "list": list}[kind])


def read_fields(op: str, header: Mapping[str, Any]) -> dict[str, Any]:
    """Read the fields of an op's request (REQUEST_FIELDS); ProtocolError naming the first wrong one."""
    context = dict(header)
    return {item.name: item.read(header, context) for item in REQUEST_FIELDS[op]}


def _layer_names(value: list) -> str | None:
    if value and all(isinstance(name, str) and name for name in value):
        return None
    return "must be a non-empty list of layer names"


# ---- the fields of each request ---------------------------------------------------------------

ENVELOPE = (
    Field("v", "int", help="protocol version, 1", required=True),
    Field("id", "int", help="request id chosen by the client, unique among its requests in flight (0 .. 2^63-1)",
          required=True),
    Field("op", "str", help="operation: " + ", ".join(OPS), required=True),
)

TEMPORAL_FIELDS = (
    Field("strength", "float", 0.0, "weight of the warped previous result in pixels visible in both frames; 0 is off",
          bounds=(0.0, 1.0), code="bad_param"),
    Field("preset", "str", "medium",
          "optical flow preset when the frame carries no motion vectors (fine: full resolution, final renders)",
          choices=FLOW_PRESETS, code="bad_param"),
    Field("vectors", "str", "auto",
          "use the frame's motion vector channels when present (auto) or always estimate flow (off)",
          choices=VECTOR_MODES, code="bad_param"),
    Field("backward", "str", "backward", "layer of vectors to the previous frame", code="bad_param"),
    Field("forward", "str", "forward", "layer of vectors to the next frame", code="bad_param"),
    Field("y_up", "bool", True, "vector v points up (Nuke); off: down", code="bad_param"),
)
"""The options of temporal mode (the `temporal` map of a stylize request)."""

SETTINGS_FIELDS = (
    Field("model", "str", None, "model name (from `models`); none: the server's default",
          check=lambda value: None if value else "must be a model name, not empty"),
    Field("params", "map", None, "values for the model's parameters; missing ones take their default"),
    Field("colorspace", "str", DEFAULT_COLORSPACE, "the plate's colour space (any name of the server's OCIO config); "
          "raw sends the values to the network as they are"),
    Field("highlights", "str", "preserve", "policy for values outside 0..1",
          choices=HIGHLIGHT_POLICIES, code="bad_param"),
    Field("layers", "list", None, "layer prefixes to stylize; none: the main layer of each part and view",
          check=_layer_names),
    Field("premultiplied", "bool", True, "colour is premultiplied by alpha: unpremultiply before, premultiply after"),
    Field("tile", "int", None, "force tiled execution with tiles of this side (pixels)",
          check=lambda value: None if value >= 1 else "must be a tile side in pixels (a positive integer)"),
    Field("temporal", "map", None, "temporal mode options: " + ", ".join(f.name for f in TEMPORAL_FIELDS)),
)
"""The fields of a stylize request that shape its result (`StylizeSettings`)."""

FRAME_FIELDS = (
    Field("sequence", "str", None, "sequence id for per-sequence state"),
    Field("frame_number", "int", None, "frame number within the sequence"),
    Field("exr", "bool", False, "the single payload frame is the bytes of an EXR file instead of frame + planes"),
    Field("frame", "map", None, "the frame's parts, channels and windows (raw planes)"),
)
"""The fields of a stylize request that place and carry this one frame."""

REQUEST_FIELDS: dict[str, tuple[Field, ...]] = {
    "hello": (Field("client", "str", None, "name and version of the client, for the log"),),
    "models": (),
    "stylize": SETTINGS_FIELDS + FRAME_FIELDS,
    "reset": (Field("sequence", "str", None, "the sequence to forget", required=True),),
    "stats": (),
    "unload": (Field("model", "str", None, "the model to unload", required=True),),
    "ping": (),
}
"""The fields each op's request carries besides the envelope."""

REPLY_FIELDS: dict[str, tuple[str, ...]] = {
    "hello": ("server", "protocol", "device", "capabilities", "instance"),
    "models": ("models",),
    "stylize": ("frame", "exr", "timing"),
    "reset": ("reset",),
    "stats": ("uptime_s", "requests", "frames", "errors", "queued", "queued_bytes", "queue_bytes", "busy",
              "abandoned", "sequences", "device", "models_loaded", "model_memory_budget"),
    "unload": ("unloaded",),
    "ping": ("instance",),
}
"""The fields each op's success reply carries besides the envelope (`v`, `id`, `op`, `ok`)."""


def shown(value: Any) -> str:
    """A short description of a value a client sent, for an error message: never all of a long value."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"a {type(value).__name__}"


def read_envelope(header: Mapping[str, Any]) -> tuple[int, str]:
    """The request id and op of a header; ProtocolError with the code the reply should carry."""
    context = dict(header)
    version = header.get("v")
    if isinstance(version, bool) or not isinstance(version, int) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            "version",
            f"protocol version {shown(version)} is not supported; this server speaks version {PROTOCOL_VERSION}. "
            "Update the host plug-in or the server so both match.",
            context,
        )
    request_id = header.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int) or not 0 <= request_id <= MAX_REQUEST_ID:
        raise ProtocolError("bad_request", "the header needs an integer request id 'id' from 0 to 2^63-1", context)
    op = header.get("op")
    if op not in OPS:
        raise ProtocolError("unknown_op", f"unknown op {shown(op)}; this server knows {', '.join(OPS)}", context)
    return request_id, op


# ---- typed settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class TemporalSettings:
    """Temporal mode: blend the previous result, warped along the motion (docs/protocol.md)."""

    strength: float = 0.0
    preset: str = "medium"
    vectors: str = "auto"
    backward: str = "backward"
    forward: str = "forward"
    y_up: bool = True

    def to_wire(self) -> dict[str, Any]:
        """The `temporal` map: the strength and every option that differs from its default."""
        defaults = TemporalSettings()
        return {
            name: value for name, value in asdict(self).items()
            if name == "strength" or value != getattr(defaults, name)
        }

    @classmethod
    def from_wire(cls, value: Any, context: dict[str, Any] | None = None) -> TemporalSettings | None:
        """Read a `temporal` map; None when it is absent or its strength is 0."""
        if value is None:
            return None
        if not _is_kind(value, "map"):
            raise ProtocolError("bad_request", "'temporal' must be a map with string keys, e.g. {strength: 0.8}",
                                context)
        unknown = set(value) - {item.name for item in TEMPORAL_FIELDS}
        if unknown:
            raise ProtocolError("bad_param", f"unknown temporal option(s): {', '.join(sorted(unknown))}", context)
        settings = cls(**{item.name: item.read(value, context) for item in TEMPORAL_FIELDS})
        return settings if settings.strength > 0 else None


TEMPORAL_PARAMS = [item.param() for item in TEMPORAL_FIELDS]
"""The temporal options as a parameter schema, announced by `hello` under `capabilities.temporal`."""


@dataclass(frozen=True)
class StylizeSettings:
    """What a stylized frame depends on besides its pixels: the stylize request fields that shape it."""

    model: str | None = None
    """Model name or checkpoint path; None: the server's default."""
    params: Mapping[str, Any] = field(default_factory=dict)
    colorspace: str = DEFAULT_COLORSPACE
    highlights: str = "preserve"
    layers: tuple[str, ...] | None = None
    """Layer prefixes to stylize; None: the main layer of each part and view."""
    premultiplied: bool = True
    tile: int | None = None
    """Force tiled execution with tiles of this many pixels; None: the server decides."""
    temporal: TemporalSettings | None = None
    """Temporal mode; None: frames are independent."""

    def to_wire(self) -> dict[str, Any]:
        """The settings as stylize request fields (`Client.submit` keywords); unset ones left out."""
        wire: dict[str, Any] = {
            "model": self.model,
            "params": dict(self.params),
            "colorspace": self.colorspace,
            "highlights": self.highlights,
            "layers": list(self.layers) if self.layers else None,
            "premultiplied": None if self.premultiplied else False,
            "tile": self.tile,
            "temporal": self.temporal.to_wire() if self.temporal else None,
        }
        return {name: value for name, value in wire.items() if value is not None}

    def canonical(self) -> str:
        """Canonical JSON of the settings (sorted keys, no spaces): equal settings give equal text.

        Unset `tile` and `premultiplied` are left out, so cache keys written before they existed
        stay valid.
        """
        wire = self.to_wire()
        if "params" in wire:  # a picture sent as bytes counts by its digest
            wire["params"] = {
                name: {"sha256": hashlib.sha256(value).hexdigest()} if isinstance(value, bytes) else value
                for name, value in wire["params"].items()
            }
        wire.setdefault("model", None)
        wire.setdefault("layers", None)
        wire.setdefault("temporal", None)
        return json.dumps(wire, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_wire(cls, header: Mapping[str, Any]) -> StylizeSettings:
        """Read and type-check the settings of a stylize request header; ProtocolError when wrong."""
        context = dict(header)
        values = {item.name: item.read(header, context) for item in SETTINGS_FIELDS}
        values["params"] = values["params"] or {}
        values["layers"] = tuple(values["layers"]) if values["layers"] else None
        values["temporal"] = TemporalSettings.from_wire(header.get("temporal"), context)
        return cls(**values)


@dataclass(frozen=True)
class StylizeRequest:
    """A stylize request's fields, read from its header."""

    settings: StylizeSettings
    sequence: str | None = None
    frame_number: int | None = None
    exr: bool = False

    @classmethod
    def from_wire(cls, header: Mapping[str, Any]) -> StylizeRequest:
        """Read a stylize header; ProtocolError when a field is wrong or temporal mode lacks its frame."""
        settings = StylizeSettings.from_wire(header)
        context = dict(header)
        sequence, frame_number, exr = (item.read(header, context) for item in FRAME_FIELDS[:3])
        if settings.temporal is not None and (sequence is None or frame_number is None):
            raise ProtocolError(
                "bad_request", "temporal mode needs a 'sequence' id and a 'frame_number' on every frame", context
            )
        return cls(settings, sequence, frame_number, exr)


def stylize_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """Client keyword options as stylize request fields: names checked, None left out.

    `temporal` may be a `TemporalSettings` or a plain map.
    """
    allowed = {item.name for item in SETTINGS_FIELDS} | {"sequence", "frame_number"}
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"unknown stylize option(s): {', '.join(sorted(unknown))}")
    wire = {name: value for name, value in options.items() if value is not None}
    if isinstance(wire.get("temporal"), TemporalSettings):
        wire["temporal"] = wire["temporal"].to_wire()
    return wire
