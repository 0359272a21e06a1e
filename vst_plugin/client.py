"""Client for the vst server: a DEALER socket with request ids, pipelining and heartbeats."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import zmq

from vst_plugin import protocol
from vst_plugin.frame import Frame
from vst_plugin.schema import default_address, stylize_fields


class VstError(Exception):
    """Base of the errors a host shows to the user."""


class ServerUnavailable(VstError):
    """No server answered within the timeout."""


class ServerError(VstError):
    """The server answered with an error; `code` is a protocol error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


@dataclass(frozen=True)
class Pending:
    """A request in flight; pass it to `Client.result`."""

    id: int
    op: str
    frame: Frame | None = None


class Client:
    """Talks to one vst server. Not thread-safe: use one Client per thread.

    `address` defaults to $VST_SERVER, else tcp://127.0.0.1:5555. `timeout` is how long the client
    waits without any sign of life from the server (a reply or a heartbeat) before it raises
    ServerUnavailable. While a long frame is computed the client pings
    every `heartbeat` seconds, and the server answers pings at once, so slow frames never time out
    while the server is alive.
    """

    def __init__(
        self,
        address: str | None = None,
        timeout: float = 10.0,
        heartbeat: float = 1.0,
        context: zmq.Context | None = None,
    ):
        self.address = address = address or default_address()
        self.timeout = timeout
        self.heartbeat = heartbeat
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.IPV6, protocol.is_ipv6(address))
        self._socket.connect(address)
        self._ids = itertools.count(1)
        self._done: dict[int, protocol.Message] = {}
        self._pings: set[int] = set()

    def close(self) -> None:
        """Close the socket; requests in flight are abandoned."""
        self._socket.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- operations -------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """Server name, protocol version, device and capabilities."""
        return self._call("hello", client="vst_plugin")

    def models(self) -> list[dict[str, Any]]:
        """The server's models with their parameter schemas."""
        return self._call("models")["models"]

    def stats(self) -> dict[str, Any]:
        """Counters, queue length and loaded models."""
        return self._call("stats")

    def reset(self, sequence: str) -> bool:
        """Forget the server's state for a sequence; True if there was some."""
        return self._call("reset", sequence=sequence)["reset"]

    def unload(self, model: str) -> bool:
        """Free a model's memory on the server; True if it was loaded."""
        return self._call("unload", model=model)["unloaded"]

    def ping(self) -> float:
        """Round-trip time of a ping in seconds."""
        start = time.perf_counter()
        self._call("ping")
        return time.perf_counter() - start

    def stylize(self, frame: Frame, **options: Any) -> Frame:
        """Stylize a frame and return a new Frame; channels the server did not change are the input's.

        Options are the stylize request fields of docs/protocol.md (vst_plugin/schema.py): model,
        params, colorspace, highlights, layers, premultiplied, tile, temporal (a map or a
        `TemporalSettings`), sequence, frame_number. `StylizeSettings.to_wire()` gives them.
        """
        return self.result(self.submit(frame, **options))

    def stylize_exr(self, data: bytes, **options: Any) -> bytes:
        """Stylize the bytes of an EXR file and return the bytes of the stylized EXR file."""
        return self.result(self.submit_exr(data, **options))

    # ---- pipelining -------------------------------------------------------------------------

    def submit(self, frame: Frame, **options: Any) -> Pending:
        """Send a stylize request without waiting; collect it with `result`."""
        frame.check()
        request_id = next(self._ids)
        header = protocol.request("stylize", request_id, frame=protocol.frame_header(frame), **stylize_fields(options))
        self._send(header, protocol.frame_planes(frame))
        return Pending(request_id, "stylize", frame)

    def submit_exr(self, data: bytes, **options: Any) -> Pending:
        """Send a stylize request carrying EXR bytes without waiting."""
        request_id = next(self._ids)
        self._send(protocol.request("stylize", request_id, exr=True, **stylize_fields(options)), [data])
        return Pending(request_id, "stylize")

    def result(self, pending: Pending) -> Any:
        """Wait for a submitted request and return its result (Frame or EXR bytes)."""
        message = self._wait(pending.id)
        if message.header.get("exr"):
            if len(message.payload) != 1:
                raise ServerError("bad_frame", "an EXR reply must carry exactly one payload frame")
            return bytes(message.payload[0])
        try:
            return protocol.apply_changed(pending.frame, message.header.get("frame"), message.payload)
        except protocol.ProtocolError as exc:
            raise ServerError(exc.code, exc.message) from None

    # ---- plumbing ---------------------------------------------------------------------------

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        self._send(protocol.request(op, request_id, **fields), [])
        return self._wait(request_id).header

    def _send(self, header: dict[str, Any], payload: list[Any]) -> None:
        self._socket.send_multipart([protocol.pack(header), *payload], copy=False)

    def _wait(self, request_id: int) -> protocol.Message:
        last_life = time.monotonic()
        last_ping = last_life
        while request_id not in self._done:
            now = time.monotonic()
            if now - last_life > self.timeout:
                raise ServerUnavailable(
                    f"no vst server answers at {self.address} (waited {self.timeout:g} s). "
                    "Start one with `vst serve`, or check the address."
                )
            if now - last_ping >= self.heartbeat:
                ping_id = next(self._ids)
                self._pings.add(ping_id)
                self._send(protocol.request("ping", ping_id), [])
                last_ping = now
            if not self._socket.poll(int(self.heartbeat * 1000) // 2 or 1):
                continue
            frames = self._socket.recv_multipart(copy=False)
            try:
                message = protocol.decode_reply(frames)
            except protocol.ProtocolError as exc:
                raise ServerError(exc.code, exc.message) from None
            last_life = time.monotonic()
            if message.id in self._pings:
                self._pings.discard(message.id)
                continue
            self._done[message.id] = message
        message = self._done.pop(request_id)
        if not message.header["ok"]:
            error = message.header.get("error") or {}
            raise ServerError(str(error.get("code", "internal")), str(error.get("message", "unknown error")))
        return message

