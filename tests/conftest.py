"""Shared fixtures: ../shared beside the repository, free loopback addresses, a real server process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("VST_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
"""../shared beside the repository; VST_SHARED names it elsewhere (a git worktree's checkout)."""

DEVICE = os.environ.get("VST_TEST_DEVICE", "cpu")
"""Where test servers and the pipeline tests run: cpu here and in CI; `VST_TEST_DEVICE=cuda` on a GPU machine
(bench/gpu_check.sh)."""

# Pipeline stages stay eager in tests (and in the servers they start): background torch.compile runs
# take tens of seconds of CPU; bench/pipeline.py checks the compiled stages against the eager ones.
os.environ.setdefault("VST_COMPILE", "0")


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ../shared folder; skipped when absent, a failure under CI=true."""
    if not SHARED.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED} is missing; CI must run with ../shared beside the repository")
        pytest.skip("../shared is not beside the repository")
    return SHARED


def _free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: ipc socket paths are limited to about 100 bytes."""
    with tempfile.TemporaryDirectory(prefix="vst-", dir="/tmp") as folder:
        yield Path(folder)


@pytest.fixture(scope="session")
def device() -> str:
    """The device of the models and servers under test (DEVICE)."""
    return DEVICE


@pytest.fixture(scope="session")
def free_address() -> Callable[[], str]:
    """A function returning a loopback tcp address nobody listens on."""
    return _free_address


@contextlib.contextmanager
def _running_server(*options: str, address: str | None = None, bind: bool = True) -> Iterator[str]:
    """Start `vst serve` on `address` (default a free loopback one) with extra options; stop it afterwards.

    `bind` False leaves --bind out: the server finds `address` itself ($VST_SERVER, --config)."""
    with running_server_process(*options, address=address, bind=bind) as (address, _):
        yield address


@contextlib.contextmanager
def running_server_process(
    *options: str, address: str | None = None, bind: bool = True, probe: str | None = None, **client_options: object
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`vst serve` with extra options on `address` (default: a free loopback one): (address, process).

    `probe` is the address to check it answers at (default `address`), with `client_options` for the Client.
    """
    address = address or _free_address()
    vst = str(Path(sys.executable).parent / "vst")
    process = subprocess.Popen([vst, "serve", *(["--bind", address] if bind else []), "--device", DEVICE, *options])
    try:
        wait_for_server(probe or address, process, **client_options)
        yield address, process
    finally:
        process.terminate()
        process.wait(60)


def wait_for_server(address: str, process: subprocess.Popen, **client_options: object) -> None:
    """Wait until a started `vst serve` answers `hello`; RuntimeError if it exits or takes 2 minutes."""
    from vst_plugin import Client, ServerUnavailable

    deadline = time.monotonic() + 120
    while True:
        try:
            with Client(address, timeout=2, heartbeat=0.5, **client_options) as client:
                client.hello()
            return
        except ServerUnavailable:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vst serve did not start (exit code {process.poll()})") from None


@pytest.fixture(scope="session")
def vst_server() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """`with vst_server("--models-dir", d, address=None) as address:` runs a real server of its own (on DEVICE)."""
    return _running_server


@pytest.fixture(scope="session")
def server_address() -> Iterator[str]:
    """Address of a real `vst serve` process (on DEVICE) shared by the tests of a session."""
    with _running_server() as address:
        yield address


@pytest.fixture(scope="session")
def bbb_frames(shared: Path) -> Callable[[int], list]:
    """`bbb_frames(n)`: the first n frames of ../shared/video/bigbuckbunny.mp4 cropped to 128x72, 8-bit RGB."""
    import av

    def first(count: int) -> list:
        frames = []
        with av.open(str(shared / "video/bigbuckbunny.mp4")) as movie:
            for picture in movie.decode(video=0):
                frames.append(picture.to_ndarray(format="rgb24")[300:372, 500:628].copy())
                if len(frames) == count:
                    return frames
        raise AssertionError(f"bigbuckbunny.mp4 has fewer than {count} frames")

    return first


@pytest.fixture(scope="session")
def vst_server_process() -> Callable[..., contextlib.AbstractContextManager[tuple[str, subprocess.Popen]]]:
    """`with vst_server_process("--opt", address=a) as (address, process):` a real server and its process."""
    return running_server_process
