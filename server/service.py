"""The request loop: a ROUTER socket that answers at once what it can and queues frames for the worker."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from server.admission import ByteBudget, ClientClock
from server.colour import ColourSpaces
from server.errors import error_reply
from server.models import ModelRegistry, resolve_device
from server.pipeline import warm_up
from server.sessions import SessionStore
from server.style_images import StyleImageAccess
from server.temporal import MotionAnalysis
from server.worker import Task, Worker
from vst_plugin import protocol
from vst_plugin.client import Client, VstError
from vst_plugin.exr import decode_exr
from vst_plugin.frame import PIXEL_TYPES, Frame, FrameLimitError, FrameLimits
from vst_plugin.keys import Curve, CurveKeyError, server_curve
from vst_plugin.schema import (
    DEFAULT_ADDRESS,
    HIGHLIGHT_POLICIES,
    PROTOCOL_VERSION,
    TEMPORAL_PARAMS,
    ProtocolError,
    StylizeRequest,
    read_fields,
)

log = logging.getLogger("vst.server")

SERVER_NAME = "vst-server 0.1.0"


class BindError(ValueError):
    """The server was asked to listen somewhere it must not."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything `vst serve` can set."""

    address: str = DEFAULT_ADDRESS
    device: str = "auto"
    model_dirs: tuple[Path, ...] = ()
    model_memory: int = 4 << 30
    default_model: str = "multistyle26"
    limits: FrameLimits = field(default_factory=FrameLimits)
    sequence_ttl: float = 600.0
    max_sequences: int = 32
    idle_exit: float | None = None
    """Stop after this many seconds without requests and with nothing in flight (None: never)."""
    parent_pid: int | None = None
    """Stop when this process ends (the farm worker or job that started the server)."""
    half: bool | None = None
    """Run networks in half precision; None: on a GPU where the family allows it."""
    queue_bytes: int = 1 << 30
    """Byte budget of queued frames; beyond it frames are refused with `busy` (clients retry)."""
    client_timeout: float = 30.0
    """A client silent this long (no request, no ping) has gone; its queued frames are dropped."""
    allow_paths: bool = False
    """Requests may name any model or style picture file on this machine (unsafe on shared machines)."""
    style_dirs: tuple[Path, ...] = ()
    curve_dir: Path | None = None
    """Serve with CURVE keys (vst_plugin/keys.py): then any address, only authorised clients."""

    @property
    def max_message_bytes(self) -> int:
        """Largest message frame accepted (ZeroMQ MAXMSGSIZE): a whole frame's bytes, or a header."""
        return max(self.limits.max_bytes, protocol.MAX_HEADER_BYTES)


def check_loopback(address: str) -> None:
    """Raise BindError unless `address` is ipc:// or tcp:// on a loopback host."""
    if address.startswith("ipc://"):
        return
    if not address.startswith("tcp://"):
        raise BindError(f"cannot serve on {address!r}: use tcp://127.0.0.1:PORT or ipc:///path")
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise BindError(
                f"refusing to serve on {address} without keys: a server without --curve-dir listens only on "
                "loopback (tcp://127.0.0.1:PORT, tcp://[::1]:PORT) or ipc://. To serve other machines, make "
                "keys with `vst keys` and start it with --curve-dir DIR (see README, Security), or reach it "
                "through an SSH tunnel."
            )


def claim_ipc_path(address: str, probe_timeout: float = 1.0) -> None:
    """Make ipc://PATH free to bind, or raise BindError.

    zmq would silently unlink a live server's socket file and orphan that server, or delete any file at
    PATH. So: a path that is not a socket is refused; a socket something listens on is refused (naming the
    vst server there when one answers a hello); a socket nothing listens on is stale and is removed.
    """
    path = address[len("ipc://") :]
    if path.startswith("@"):
        return  # Linux abstract namespace: no file; the kernel refuses a second bind itself
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BindError(f"cannot serve on {address}: {path} exists and is not a socket; choose another path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            log.info("removing the stale socket file %s (nothing listens there)", path)
            os.unlink(path)
            return
    with Client(address, timeout=probe_timeout, heartbeat=probe_timeout / 4) as client:
        try:
            who = f"a vst server ({client.hello().get('server', 'unknown version')})"
        except VstError:
            who = "another program"
    raise BindError(f"{who} is already listening on {address}; stop it first or choose another path")


class Server:
    """A persistent vst server: many clients, one compute worker fed by a queue."""

    def __init__(self, config: ServerConfig, context: zmq.Context | None = None):
        self.config = config
        self._curve: tuple[Curve, Path] | None = None
        if config.curve_dir is None:
            check_loopback(config.address)
        else:
            try:
                self._curve = server_curve(config.curve_dir)
            except CurveKeyError as exc:
                raise BindError(str(exc)) from None
        self._authenticator: ThreadAuthenticator | None = None
        self.device = resolve_device(config.device)
        self.registry = ModelRegistry(
            config.model_dirs, self.device, config.model_memory, half=config.half, allow_paths=config.allow_paths
        )
        self.style_images = StyleImageAccess(config.style_dirs, config.allow_paths)
        self.budget = ByteBudget(config.queue_bytes)
        self.clients = ClientClock(config.client_timeout)
        self._refused: dict[tuple[bytes, str], tuple[int, float]] = {}
        """Per client sequence, the first frame refused as `busy` and when: later frames wait for it."""
        self.colours = ColourSpaces()
        self.sessions = SessionStore(config.sequence_ttl, config.max_sequences)
        self.motion = MotionAnalysis()
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vst-decode")
        """Decodes EXR requests ahead of the worker, so decoding overlaps the frame in compute."""
        self._context = context or zmq.Context.instance()
        self._results_address = f"inproc://vst-results-{id(self)}"
        self._router: zmq.Socket | None = None
        self._results: zmq.Socket | None = None
        self._worker: Worker | None = None
        self._stopping = threading.Event()
        self._in_flight = 0
        self._started = time.monotonic()
        self._last_request = self._started
        self._watched_parent = config.parent_pid is not None and config.parent_pid == os.getppid()
        self.requests = 0
        self.errors = 0
        self.busy = 0
        self.instance = secrets.token_hex(8)
        """Random id of this server process, in ping replies: a client that sees it change knows its
        requests in flight were lost (the server restarted)."""
        self.endpoint: str | None = None

    def bind(self) -> str:
        """Bind the ROUTER socket and start the worker; returns the endpoint actually bound."""
        if self.config.address.startswith("ipc://"):
            claim_ipc_path(self.config.address)
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.IPV6, protocol.is_ipv6(self.config.address))
        self._router.setsockopt(zmq.LINGER, 1000)
        self._router.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if self._curve is not None:
            curve, authorized = self._curve
            self._authenticator = ThreadAuthenticator(self._context)
            self._authenticator.start()
            self._authenticator.configure_curve(domain="*", location=str(authorized))
            curve.apply(self._router, server=True)
        if self.config.address.startswith("tcp://") and self.config.address.endswith(":0"):
            port = self._router.bind_to_random_port(self.config.address[: -len(":0")])
            self.endpoint = f"{self.config.address[: -len(':0')]}:{port}"
        else:
            self._router.bind(self.config.address)
            self.endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._results = self._context.socket(zmq.PULL)
        self._results.bind(self._results_address)
        self._worker = Worker(
            self._context, self._results_address, self.registry, self.colours,
            self.style_images, self.budget, self.clients,
        )
        self._worker.start()
        warm_up(self.device)  # the fused pipeline stages compile in the background from now on
        log.info("vst server on %s (device %s, OCIO config %s)", self.endpoint, self.device, self.colours.config_name)
        return self.endpoint

    def stop(self) -> None:
        """Ask the loop to stop: no new frames are accepted, frames in flight are finished."""
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (call from the main thread)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())

    def serve_forever(self) -> None:
        """Run the request loop until `stop()`, then finish frames in flight and close."""
        if self._router is None:
            self.bind()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._results, zmq.POLLIN)
        try:
            while not (self._stopping.is_set() and self._in_flight == 0):
                for socket, _ in poller.poll(100):
                    if socket is self._results:
                        self._router.send_multipart(self._results.recv_multipart(copy=False), copy=False)
                        self._in_flight -= 1
                    else:
                        self._handle(self._router.recv_multipart(copy=False))
                if not self._stopping.is_set() and (reason := self._lifetime_over()):
                    log.warning("vst server stopping: %s", reason)
                    self.stop()
        finally:
            self._worker.stop()
            self._worker.join()
            self.motion.close()
            self._decoder.shutdown(wait=True)
            self._results.close(linger=0)
            self._router.close()
            if self._authenticator is not None:
                self._authenticator.stop()
            log.info("vst server stopped")

    def _lifetime_over(self) -> str | None:
        """Why the server should stop on its own (--idle-exit, --parent-pid), or None."""
        idle_exit, parent = self.config.idle_exit, self.config.parent_pid
        if idle_exit is not None and self._in_flight == 0 and time.monotonic() - self._last_request > idle_exit:
            return f"no requests for {idle_exit:g} s (--idle-exit)"
        if parent is not None and not _alive(parent, self._watched_parent):
            return f"process {parent} that started it has ended (--parent-pid)"
        return None

    # ---- requests ---------------------------------------------------------------------------

    def _handle(self, frames: list[Any]) -> None:
        identity = frames[0].bytes
        self.requests += 1
        self._last_request = time.monotonic()
        self.clients.heard(identity)
        header = None
        try:
            message = protocol.decode_request(frames[1:])
            header = message.header
            reply, payload = self._answer(identity, message)
        except Exception as exc:  # every request gets an answer; no request stops the loop
            reply, payload = error_reply(header, exc), []
        if reply is None:
            return  # queued; the worker replies
        if not reply["ok"]:
            self.errors += 1
            log.warning("request %s (%s) refused: %s", reply["id"], reply["op"], reply["error"]["message"])
        self._router.send_multipart([identity, protocol.pack(reply), *payload], copy=False)

    def _answer(self, identity: bytes, message: protocol.Message) -> tuple[dict[str, Any] | None, list[Any]]:
        header = message.header
        op = message.op
        fields = read_fields(op, header)
        if op == "ping":
            return protocol.reply(header, instance=self.instance), []
        if op == "hello":
            return protocol.reply(header, **self._hello(), instance=self.instance), []
        if op == "models":
            names = self.registry.available()
            return protocol.reply(header, models=[self._describe(name) for name in names]), []
        if op == "stats":
            return protocol.reply(header, **self._stats()), []
        if op == "unload":
            return protocol.reply(header, unloaded=self.registry.unload(fields["model"])), []
        if op == "reset":
            self._refused.pop((identity, fields["sequence"]), None)
            return protocol.reply(header, reset=self.sessions.reset(identity, fields["sequence"])), []
        if self._stopping.is_set():
            raise ProtocolError(
                "shutting_down", "the vst server is shutting down; send the frame again once it is back", header
            )
        self._accept_stylize(identity, message)
        return None, []

    def _accept_stylize(self, identity: bytes, message: protocol.Message) -> None:
        header = message.header
        request = StylizeRequest.from_wire(header)
        request = replace(request, settings=replace(request.settings,
                                                     model=request.settings.model or self.config.default_model))
        size = sum(buffer.nbytes for buffer in message.payload)
        try:
            self.config.limits.check_bytes(size)
        except FrameLimitError as exc:
            raise ProtocolError("too_large", str(exc), header) from None
        if request.exr:
            if len(message.payload) != 1:
                raise ProtocolError("bad_frame", "an EXR stylize request carries exactly one payload", header)
            task = Task(identity, header, request, exr=message.payload[0])
            load = partial(decode_exr, bytes(message.payload[0]), self.config.limits)
        else:
            try:
                frame = protocol.parse_frame(header.get("frame"), message.payload, self.config.limits)
            except ProtocolError as exc:
                raise ProtocolError(exc.code, exc.message, header) from None
            task = Task(identity, header, request, frame=frame)
            load = partial(_given, frame)
        self._admit(identity, header, request.sequence, request.frame_number, size)
        task.nbytes = size
        if request.sequence is not None:
            task.session, previous = self.sessions.admit(identity, request.sequence, request.frame_number)
            temporal = request.settings.temporal
            if temporal is not None:
                layers = list(request.settings.layers) if request.settings.layers else None
                task.analysis = task.session.analysis = self.motion.analyse(previous, load, layers, temporal)
        if request.exr and task.analysis is None:
            task.decoded = self._decoder.submit(load)
        task.queued_at = time.perf_counter()
        self._in_flight += 1
        self._worker.tasks.put(task)

    def _admit(self, identity: bytes, header: dict[str, Any], sequence: str | None, number: int | None,
               size: int) -> None:
        """Reserve the frame's bytes in the queue budget, or refuse it with `busy`.

        A frame of a sequence after one refused as busy is refused too until that one comes again (or
        the client timeout passes), so a sequence's frames reach the worker in order when re-sent.
        """
        key = (identity, sequence) if sequence is not None else None
        first_refused, when = self._refused.get(key, (None, 0.0)) if key else (None, 0.0)
        waiting = (
            first_refused is not None and number is not None and number > first_refused
            and time.monotonic() - when < self.config.client_timeout
        )
        if not waiting and self.budget.reserve(size):
            self._refused.pop(key, None)
            return
        self.busy += 1
        if key is not None and number is not None and not waiting:
            if len(self._refused) > 10_000:  # clients that never came back
                self._refused.clear()
            self._refused[key] = (number, time.monotonic())
        raise ProtocolError(
            "busy",
            f"the server's frame queue is full ({self.budget.used >> 20} MiB of {self.budget.limit >> 20} MiB); "
            "send the frame again shortly",
            header,
        )

    def _describe(self, name: str) -> dict[str, Any]:
        try:
            return self.registry.describe(name)
        except Exception as exc:  # one unreadable file must not spoil the list
            return {"name": name, "error": error_reply(None, exc)["error"]["message"]}

    def _hello(self) -> dict[str, Any]:
        limits = self.config.limits
        return {
            "server": SERVER_NAME,
            "protocol": PROTOCOL_VERSION,
            "device": str(self.device),
            "capabilities": {
                "exr_bytes": True,
                "pixel_types": list(PIXEL_TYPES),
                "colorspaces": self.colours.names(),
                "highlights": list(HIGHLIGHT_POLICIES),
                "default_model": self.config.default_model,
                "temporal": TEMPORAL_PARAMS,
                "limits": {
                    "max_side": limits.max_side,
                    "max_pixels": limits.max_pixels,
                    "max_channels": limits.max_channels,
                    "max_parts": limits.max_parts,
                    "max_frame_bytes": limits.max_bytes,
                    "max_message_bytes": self.config.max_message_bytes,
                },
            },
        }

    def _stats(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.monotonic() - self._started, 3),
            "requests": self.requests,
            "frames": self._worker.frames_done,
            "errors": self.errors + self._worker.failures,
            "queued": self._in_flight,
            "queued_bytes": self.budget.used,
            "queue_bytes": self.budget.limit,
            "busy": self.busy,
            "abandoned": self._worker.abandoned,
            "sequences": len(self.sessions),
            "device": str(self.device),
            "models_loaded": self.registry.loaded(),
            "model_memory_budget": self.config.model_memory,
        }


def _alive(pid: int, is_parent: bool) -> bool:
    """Whether process `pid` still runs; a parent counts as gone once this process is re-parented."""
    if is_parent:
        return os.getppid() == pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _given(frame: Frame) -> Frame:
    """A frame that arrived as planes: nothing to load."""
    return frame
