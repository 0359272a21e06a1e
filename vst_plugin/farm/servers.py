"""One vst server per worker session: started as a `vst serve` process, found by its state file, stopped.

A render node must never be left with a server holding its GPU after the job, whatever happens to the
job: every server started here stops on its own after `idle_exit` seconds without requests, and,
when given a `parent_pid`, as soon as that process ends (a Dask worker killed with SIGKILL takes its
server with it). Engines with session hooks also stop it explicitly (Open Job Description's onExit,
the Dask worker plugin's teardown).

The server binds a free loopback port chosen by the system (`tcp://127.0.0.1:0`) and reports the
endpoint on its first line of output, which goes to a log file beside the state file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vst_plugin.client import Client, ServerUnavailable, VstError

DEFAULT_IDLE_EXIT = 3600.0
"""Seconds without requests before a farm server stops itself: longer than any gap between two chunks."""
START_TIMEOUT = 300.0
"""Seconds a server may take to start (importing torch and CUDA on a busy node)."""
_LISTENING = re.compile(r"vst server listening on (\S+)")


class FarmServerError(VstError):
    """A render node's vst server could not be started or stopped."""


def vst_executable() -> str:
    """The `vst` command beside this Python (a virtual environment), else the one on the PATH."""
    beside = Path(sys.executable).parent / "vst"
    return str(beside) if beside.is_file() else shutil.which("vst") or "vst"


@dataclass(frozen=True)
class ServerProcess:
    """A running `vst serve` process: its address, process id and log file."""

    address: str
    pid: int
    log: str

    @classmethod
    def start(
        cls,
        serve_options: list[str],
        log: str,
        *,
        idle_exit: float = DEFAULT_IDLE_EXIT,
        parent_pid: int | None = None,
        detach: bool = False,
        timeout: float = START_TIMEOUT,
    ) -> ServerProcess:
        """Start `vst serve` with `serve_options` (device, model folders...) and wait until it answers.

        `detach`: in a session of its own, so it survives the command that started it (a farm
        manager's session-start action); it is stopped by `stop()` from another process or by
        `idle_exit`. Raises FarmServerError with the end of the log when it does not come up.
        """
        command = [vst_executable(), "serve", "--bind", "tcp://127.0.0.1:0", "--idle-exit", str(idle_exit)]
        if parent_pid is not None:
            command += ["--parent-pid", str(parent_pid)]
        os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
        with open(log, "wb") as stream:
            process = subprocess.Popen(
                [*command, *serve_options], stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT,
                start_new_session=detach,
            )
        deadline = time.monotonic() + timeout
        while (match := _LISTENING.search(_read(log))) is None:
            if process.poll() is not None:
                raise FarmServerError(f"vst serve exited with code {process.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                process.kill()
                raise FarmServerError(f"vst serve did not start within {timeout:g} s:\n{_tail(log)}")
            time.sleep(0.1)
        server = cls(match.group(1), process.pid, log)
        try:
            with Client(server.address, timeout=30) as client:
                client.hello()
        except ServerUnavailable:
            process.kill()
            raise FarmServerError(f"vst serve on {server.address} does not answer:\n{_tail(log)}") from None
        return server

    def running(self) -> bool:
        """Whether the server process still exists (a finished child is reaped)."""
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (frames in flight are finished), then SIGKILL after `timeout` seconds."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.05)

    def save(self, path: str) -> None:
        """Write the state file other commands find the server by."""
        with open(path, "w", encoding="utf-8") as stream:
            json.dump(asdict(self), stream)

    @classmethod
    def load(cls, path: str) -> ServerProcess:
        """Read a state file written by `save`."""
        try:
            with open(path, encoding="utf-8") as stream:
                return cls(**json.load(stream))
        except (OSError, ValueError, TypeError) as exc:
            raise FarmServerError(f"cannot read the server state file {path}: {exc}") from None


def node_server(serve_options: list[str], idle_exit: float) -> tuple[ServerProcess, bool]:
    """This node's server for these options, started (detached) unless one runs; True when started now.

    One per node, user, CUDA_VISIBLE_DEVICES and options, recorded in a state file in the temporary
    folder; a lock file makes concurrent tasks on one node share it. For farm managers without session
    hooks (Deadline 10): the server stops itself after `idle_exit` seconds without requests.
    """
    import fcntl  # POSIX render nodes

    slot = json.dumps([serve_options, os.environ.get("CUDA_VISIBLE_DEVICES", "")])
    key = hashlib.sha256(slot.encode()).hexdigest()[:12]
    state = os.path.join(tempfile.gettempdir(), f"vst-node-{os.getuid()}-{key}.json")
    with open(state + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(FarmServerError, VstError):
            server = ServerProcess.load(state)
            with Client(server.address, timeout=10) as client:
                client.hello()  # also restarts its idle clock
            return server, False
        server = ServerProcess.start(serve_options, state[: -len(".json")] + ".log", idle_exit=idle_exit,
                                     detach=True)
        server.save(state)
        return server, True


def session_log(name: str) -> str:
    """A log file for a server of this worker session, in the temporary folder."""
    return os.path.join(tempfile.gettempdir(), f"vst-serve-{name}-{os.getpid()}.log")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.read(4096)
    except OSError:
        return ""


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return "".join(stream.readlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
