"""Sequence jobs: a list of frames through the server, several in flight, with a cache and pre-roll.

Host-agnostic: the Nuke node, `vst render` and farm jobs describe where each frame's plate comes from
(`source`, a function of the frame number returning a `Plate`) and where its result goes (`output`,
a function of the frame number returning a path); `SequenceJob.run` does the rest:

* **Pipelining.** Up to `in_flight` frames are on the server at once; results are written in
  submission order, each atomically (the file appears complete under its final name or not at all).
* **Cache** (`cache=True`). A frame is skipped when its output exists and was made from the same
  input and the same settings. The key is the SHA-256 of the input EXR file's bytes (robust: a
  re-render that produces identical pixels and header is a hit, a touched file with other content is
  a miss; hashing costs milliseconds next to stylizing) together with the canonical JSON of the
  `StylizeSettings`. It is kept in a sidecar file ``.<output name>.vstkey`` beside each output, written
  after the output and removed before the output is replaced, so a crash in between never leaves a
  key that vouches for the wrong pixels. The key names the model, not its weights: after replacing a
  checkpoint under the same name, clear the cache.
* **Pre-roll and sequence state.** Every frame is sent with the job's `sequence` id and its
  `frame_number`. Whenever the frames sent stop being consecutive (the first frame, or a frame after
  skipped ones), the server's state for the sequence is reset and the `preroll` frames before it are
  sent first and their results dropped, so a temporal model starts settled. A job remembers the last
  frame it sent across `run` calls, so a host rendering frame by frame (a farm render) pre-rolls
  only once per contiguous range.
* **Progress and cancel.** `progress(Progress)` is called as each requested frame is done (written
  or found in the cache). `cancelled()` is polled between frames; once it returns True nothing more is
  submitted, replies still in flight are abandoned unwritten, and `run` returns with
  `cancelled=True`. Abandoned replies stay queued on the client: close it (or use a fresh one) after
  a cancelled run.
* **Server restarts** (`reconnect` seconds > 0). When the server stops answering or comes back as a
  new process (a restart under systemd), the job waits for it with growing pauses, then sends the
  frames not yet written again, starting with a reset and the pre-roll, so nothing is lost and a
  temporal sequence resumes settled.
* **Errors.** A frame that cannot be read, stylized or written stops the job with a `JobError` naming
  it; frames finished before it stay on disk. An input that cannot be read (`InputError`) first lets
  the frames already on the server finish and writes them, so none of that work is lost.
  `ServerUnavailable` passes through unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vst_plugin.client import Client, Pending, ServerError, ServerUnavailable, VstError
from vst_plugin.files import describe_os_error, temporary_path
from vst_plugin.schema import StylizeSettings

__all__ = [
    "ExrBytes",
    "ExrPlanes",
    "InputError",
    "JobError",
    "JobResult",
    "Plate",
    "Progress",
    "SequenceJob",
    "write_atomic",
]


class JobError(VstError):
    """A frame of a sequence job failed; `frame` is its number and the message names it."""

    def __init__(self, frame: int, reason: object, preroll: bool = False):
        super().__init__(f"frame {frame}{' (pre-roll)' if preroll else ''}: {reason}")
        self.frame = frame


class InputError(JobError):
    """A frame's input could not be read."""


@dataclass(frozen=True)
class Progress:
    """One requested frame is done: `done` of `total`, found in the cache or newly written."""

    done: int
    total: int
    frame: int
    cached: bool


@dataclass
class JobResult:
    """What a run did: frames written, frames taken from the cache, and whether it was cancelled."""

    rendered: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)
    cancelled: bool = False


class Plate(Protocol):
    """One frame's input as a job sends it; `ExrBytes` and `ExrPlanes` are the two kinds."""

    def digest(self) -> str:
        """SHA-256 (hex) of the input EXR file's bytes."""
        ...

    def submit(self, client: Client, **fields: Any) -> Pending:
        """Send the plate for stylizing."""
        ...

    def save(self, result: Any, path: str) -> None:
        """Write the result of `submit` to `path`, atomically."""
        ...


class ExrBytes:
    """An EXR file sent as it is: the server decodes and re-encodes it. Needs no imaging library."""

    def __init__(self, data: bytes):
        self.data = data

    @classmethod
    def load(cls, path: str) -> ExrBytes:
        """Read the file; raise OSError when it cannot be read."""
        with open(path, "rb") as stream:
            return cls(stream.read())

    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def submit(self, client: Client, **fields: Any) -> Pending:
        return client.submit_exr(self.data, **fields)

    def save(self, result: bytes, path: str) -> None:
        write_atomic(path, result)


class ExrPlanes:
    """An EXR file read here (OpenImageIO) and sent as planes; the server returns only what it changed."""

    premultiplied = True
    """EXR colour is premultiplied by its alpha (the render's settings may say otherwise)."""

    def __init__(self, path: str):
        from vst_plugin.exr import read_exr

        self.path = path
        self.frame = read_exr(path)

    @classmethod
    def load(cls, path: str) -> ExrPlanes:
        """Read the file; raise ExrError when it cannot be read."""
        return cls(path)

    def digest(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def submit(self, client: Client, **fields: Any) -> Pending:
        return client.submit(self.frame, **fields)

    def save(self, result: Any, path: str) -> None:
        from vst_plugin.exr import write_exr

        write_exr(result, path)


def write_atomic(path: str, data: bytes) -> None:
    """Write bytes to `path` through a temporary file beside it and a rename; creates the folder."""
    target = os.path.abspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temporary = temporary_path(target)
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def key_path(output: str) -> str:
    """The cache-key sidecar of an output file."""
    directory, name = os.path.split(os.path.abspath(output))
    return os.path.join(directory, f".{name}.vstkey")


@dataclass
class _Flight:
    """A frame on the server: its number and where its result goes (None for pre-roll)."""

    frame: int
    pending: Pending
    plate: Plate
    output: str | None
    key: str | None


class SequenceJob:
    """Stylizes frames of one sequence through one client (see the module docstring)."""

    def __init__(
        self,
        client: Client,
        settings: StylizeSettings,
        source: Callable[[int], Plate],
        output: Callable[[int], str],
        *,
        in_flight: int = 2,
        preroll: int = 0,
        sequence: str | None = None,
        cache: bool = False,
        reconnect: float = 0.0,
    ):
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, not {in_flight}")
        if preroll < 0:
            raise ValueError(f"preroll must be 0 or more frames, not {preroll}")
        self.client = client
        self.settings = settings
        self.source = source
        self.output = output
        self.in_flight = in_flight
        self.preroll = preroll
        self.sequence = sequence or f"vst-{uuid.uuid4().hex[:12]}"
        self.cache = cache
        self.reconnect = reconnect
        self.reconnections = 0
        """How many times the job waited for the server and went on (it stopped or restarted)."""
        self._settings_text = settings.canonical()
        self._last_sent: int | None = None
        self._sent_any = False

    def run(
        self,
        frames: Iterable[int],
        progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> JobResult:
        """Stylize `frames` in order; return what was rendered, cached, and whether it was cancelled.

        With `reconnect` > 0, a server that stops answering or restarts (ServerUnavailable) is waited
        for up to that many seconds, then the frames not yet written are sent again, starting with a
        reset and pre-roll, so a temporal sequence resumes as it would have run.
        """
        frames = list(frames)
        result = JobResult()
        todo = frames
        while True:
            try:
                self._run_frames(todo, len(frames), result, progress, cancelled)
            except ServerUnavailable as exc:
                self._last_sent = None  # the next frame starts a run: reset and pre-roll on the server
                if self.reconnect <= 0:
                    raise
                done = set(result.rendered) | set(result.cached)
                todo = [number for number in todo if number not in done]
                self._wait_for_server(exc)
                continue
            except BaseException:
                self._last_sent = None  # replies may be lost: the next run starts a fresh run
                raise
            if result.cancelled:
                self._last_sent = None
            return result

    def _run_frames(
        self,
        frames: list[int],
        total: int,
        result: JobResult,
        progress: Callable[[Progress], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        """Send `frames` (several in flight) and write their results into `result`."""
        flights: deque[_Flight] = deque()

        def finish(flight: _Flight) -> None:
            self._collect(flight)
            if flight.output is not None:
                result.rendered.append(flight.frame)
                report(flight.frame, cached=False)

        def report(frame: int, cached: bool) -> None:
            if progress is not None:
                progress(Progress(len(result.rendered) + len(result.cached), total, frame, cached))

        try:
            for number in frames:
                if cancelled is not None and cancelled():
                    result.cancelled = True
                    return
                plate = self._load(number)
                output = self.output(number)
                key = self._key(number, plate) if self.cache else None
                if key is not None and _cached(output, key):
                    result.cached.append(number)
                    report(number, cached=True)
                    continue
                if self._last_sent is None or number != self._last_sent + 1:
                    self._start_run(number, flights, finish)
                flights.append(self._submit(number, plate, output, key))
                while len(flights) >= self.in_flight:
                    finish(flights.popleft())
            while flights:
                if cancelled is not None and cancelled():
                    result.cancelled = True
                    return
                finish(flights.popleft())
        except InputError:
            while flights:  # the frames sent before the unreadable one are stylized: write them
                finish(flights.popleft())
            raise

    def _wait_for_server(self, lost: ServerUnavailable) -> None:
        """Wait (pausing 0.5 s, doubling to 5 s) until the server answers again; re-raise `lost` after
        `reconnect` seconds."""
        self.client.reconnect()
        deadline = time.monotonic() + self.reconnect
        pause = 0.5
        while True:
            try:
                self.client.hello()
            except ServerUnavailable:
                if time.monotonic() + pause > deadline:
                    raise lost from None
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            self.client.reconnect()  # drops what the hello may have seen of the old process
            self.reconnections += 1
            return

    def done(self, number: int) -> bool:
        """True if frame `number`'s output exists and its cache key says it was made from this input and options."""
        return _cached(self.output(number), self._key(number, self._load(number)))

    def _start_run(self, first: int, flights: deque[_Flight], finish: Callable[[_Flight], None]) -> None:
        """Begin a contiguous run at `first`: reset the server's sequence state and pre-roll."""
        if self._sent_any:
            self.client.reset(self.sequence)
        for number in range(first - self.preroll, first):
            flights.append(self._submit(number, self._load(number), None, None))
            while len(flights) >= self.in_flight:
                finish(flights.popleft())

    def _load(self, number: int) -> Plate:
        try:
            return self.source(number)
        except VstError:
            raise
        except OSError as exc:
            raise InputError(number, f"cannot read the input: {exc}") from exc
        except Exception as exc:  # ExrError, a host's render error: their messages name the file
            raise InputError(number, exc) from exc

    def _key(self, number: int, plate: Plate) -> str:
        try:
            digest = plate.digest()
        except OSError as exc:
            raise InputError(number, f"cannot read the input: {exc}") from exc
        return hashlib.sha256(f"{digest}\n{self._settings_text}".encode()).hexdigest()

    def _submit(self, number: int, plate: Plate, output: str | None, key: str | None) -> _Flight:
        pending = plate.submit(self.client, sequence=self.sequence, frame_number=number, **self.settings.to_wire())
        self._last_sent, self._sent_any = number, True
        return _Flight(number, pending, plate, output, key)

    def _collect(self, flight: _Flight) -> None:
        """Wait for a frame's result and write it (pre-roll results are dropped)."""
        try:
            stylized = self.client.result(flight.pending)
        except ServerError as exc:
            raise JobError(flight.frame, exc, preroll=flight.output is None) from exc
        if flight.output is None:
            return
        try:
            if flight.key is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(key_path(flight.output))
            flight.plate.save(stylized, flight.output)
            if flight.key is not None:
                write_atomic(key_path(flight.output), flight.key.encode())
        except OSError as exc:
            raise JobError(flight.frame, f"cannot write {flight.output}: {describe_os_error(exc)}") from exc
        except Exception as exc:  # ExrError, whose message names the file
            raise JobError(flight.frame, exc) from exc


def _cached(output: str, key: str) -> bool:
    """True if `output` exists and its sidecar holds `key`."""
    try:
        with open(key_path(output), encoding="ascii") as stream:
            return stream.read().strip() == key and os.path.isfile(output)
    except (OSError, UnicodeDecodeError):
        return False
