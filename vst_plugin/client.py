"""Client for the vst server: a DEALER socket with request ids, pipelining and heartbeats."""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from vst_plugin import protocol
from vst_plugin.frame import Frame
from vst_plugin.keys import Curve
from vst_plugin.schema import default_address, stylize_fields


class VstError(Exception):
    """Base of the errors a host shows to the user."""


class ServerUnavailable(VstError):
    """No server answered within the timeout."""


class ServerRestarted(ServerUnavailable):
    """The server answered again, but as a new process: the requests in flight were lost."""


class ServerError(VstError):
    """The server answered with an error; `code` is a protocol error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


@dataclass
class Pending:
    """A request in flight; pass it to `Client.result`."""

    id: int
    op: str
    frame: Frame | None = None
    request: tuple[dict[str, Any], list[Any]] = field(default=({}, []), repr=False)
    """The header and payload sent, to send again when the server is busy."""


class Client:
    """Talks to one vst server. Not thread-safe: use one Client per thread.

    `address` defaults to $VST_SERVER, else tcp://127.0.0.1:5555. `timeout` is how long the client
    waits without any sign of life from the server (a reply or a heartbeat) before it raises
    ServerUnavailable. While a long frame is computed the client pings
    every `heartbeat` seconds, and the server answers pings at once, so slow frames never time out
    while the server is alive (and the server sees that the client is still there).

    `curve` (`vst_plugin.keys.client_curve`) connects to a server that serves beyond loopback with
    CURVE keys; a server that does not know the client's key never answers, so it shows as
    ServerUnavailable.

    A frame the server refuses as `busy` (its queue is full) is sent again after a pause that grows
    from 0.05 s to 2 s, for up to `busy_timeout` seconds in all.
    """

    def __init__(
        self,
        address: str | None = None,
        timeout: float = 10.0,
        heartbeat: float = 1.0,
        context: zmq.Context | None = None,
        busy_timeout: float = 600.0,
        curve: Curve | None = None,
    ):
        self.address = address = address or default_address()
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.busy_timeout = busy_timeout
        self.busy_retries = 0
        """How many times a frame was sent again because the server was busy."""
        self.instance: str | None = None
        """The server process last heard from (its ping replies' `instance`)."""
        self._restarted = False
        self._context = context or zmq.Context.instance()
        self._curve = curve
        self._socket = self._connect()
        self._ids = itertools.count(1)
        self._done: dict[int, protocol.Message] = {}
        self._pings: set[int] = set()

    def reconnect(self) -> None:
        """Start a new connection, dropping the requests in flight and anything not yet sent (after the
        server went away: a restarted server must not receive what was meant for the old one)."""
        self._socket.close(linger=0)
        self._socket = self._connect()
        self._done.clear()
        self._pings.clear()
        self._restarted = False

    def _connect(self) -> zmq.Socket:
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.IPV6, protocol.is_ipv6(self.address))
        # a send blocks while no connection is up (a refused CURVE handshake leaves none): bound it
        socket.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout * 1000)))
        if self._curve is not None:  # an encrypted, authenticated connection (vst_plugin/keys.py)
            self._curve.apply(socket)
        socket.connect(self.address)
        return socket

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
        reply = self._call("hello", client="vst_plugin")
        self._note_instance(reply)
        return reply

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
        self._note_instance(self._call("ping"))
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
        fields = stylize_fields(options)
        header = protocol.request("stylize", next(self._ids), frame=protocol.frame_header(frame), **fields)
        return self._submit(header, protocol.frame_planes(frame), frame)

    def submit_exr(self, data: bytes, **options: Any) -> Pending:
        """Send a stylize request carrying EXR bytes without waiting."""
        header = protocol.request("stylize", next(self._ids), exr=True, **stylize_fields(options))
        return self._submit(header, [data], None)

    def result(self, pending: Pending) -> Any:
        """Wait for a submitted request and return its result (Frame or EXR bytes)."""
        message = self._wait_unless_busy(pending)
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

    def _submit(self, header: dict[str, Any], payload: list[Any], frame: Frame | None) -> Pending:
        self._send(header, payload)
        return Pending(header["id"], "stylize", frame, (header, payload))

    def _wait_unless_busy(self, pending: Pending) -> protocol.Message:
        """Wait for a stylize reply; send the request again, pausing longer each time, while it is busy."""
        started = time.monotonic()
        pause = 0.05
        while True:
            try:
                return self._wait(pending.id)
            except ServerError as exc:
                if exc.code != "busy" or time.monotonic() - started + pause > self.busy_timeout:
                    raise
            self._sleep_listening(pause * random.uniform(0.75, 1.25))
            pause = min(pause * 2, 2.0)
            header, payload = pending.request
            pending.id = next(self._ids)
            pending.request = ({**header, "id": pending.id}, payload)
            self.busy_retries += 1
            self._send(*pending.request)

    def _sleep_listening(self, seconds: float) -> None:
        """Pause, keeping replies that arrive meanwhile for `_wait`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._socket.poll(max(1, int(left * 1000))):
                self._receive()

    def _receive(self) -> protocol.Message | None:
        """Read one reply into `_done`; pings are dropped. Returns it (None for a ping)."""
        frames = self._socket.recv_multipart(copy=False)
        try:
            message = protocol.decode_reply(frames)
        except protocol.ProtocolError as exc:
            raise ServerError(exc.code, exc.message) from None
        if message.id in self._pings:
            self._pings.discard(message.id)
            self._note_instance(message.header)
            return None
        self._done[message.id] = message
        return message

    def _note_instance(self, header: dict[str, Any]) -> None:
        """Remember the server process a reply came from; note when it is a new one (a restart)."""
        instance = header.get("instance")
        if isinstance(instance, str):
            if self.instance is not None and instance != self.instance:
                self._restarted = True  # what the old process held is gone
            self.instance = instance

    def _send(self, header: dict[str, Any], payload: list[Any]) -> None:
        try:
            self._socket.send_multipart([protocol.pack(header), *payload], copy=False)
        except zmq.Again:
            raise ServerUnavailable(
                f"no vst server accepts a connection at {self.address} (waited {self.timeout:g} s). Start one "
                "with `vst serve`, check the address, and for a server with keys, check both keys."
            ) from None

    def _wait(self, request_id: int) -> protocol.Message:
        last_life = time.monotonic()
        last_ping = last_life
        while request_id not in self._done:
            if self._restarted:
                self._restarted = False
                raise ServerRestarted(
                    f"the vst server at {self.address} restarted; the requests in flight were lost"
                )
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
            self._receive()
            last_life = time.monotonic()
        message = self._done.pop(request_id)
        if not message.header["ok"]:
            error = message.header.get("error") or {}
            raise ServerError(str(error.get("code", "internal")), str(error.get("message", "unknown error")))
        return message

