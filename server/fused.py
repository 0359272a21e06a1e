"""Elementwise pipeline stages fused by `torch.compile`, compiled in the background, eager until ready.

Around the network the pipeline is a few dozen elementwise passes over the frame (unpremultiply, the
highlight policy, the sRGB curve and their inverses, premultiply, casts). Run one torch op at a time
they cost more on a 2-core CPU than onnxruntime's whole network budget allows; fused by inductor into
a few loops they cost a fraction (bench/results/pipeline-cpu-2026-11-28.md). Compiling takes seconds
to a minute, so a stage runs eagerly while a background thread compiles it for that call's signature
(its constant arguments and tensor dtypes; sizes are symbolic), and switches over once that is done;
one thread compiles every stage, one signature at a time.
Compilation that fails (no C++ compiler on a render node) leaves the stage eager, logged once.
The compiling thread is not a daemon: a short process (`vst render --embedded` on a few small frames)
that exited while it compiled was aborted by the C++ runtime (SIGABRT, "terminate called without an
active exception"). Once the main thread has finished it takes no further work, so a process's exit
waits for at most the one compilation under way.
`VST_COMPILE=0` in the environment keeps every stage eager.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Hashable
from typing import Any

import torch

log = logging.getLogger("vst.server")

ENABLED = os.environ.get("VST_COMPILE", "1") != "0"


class Fused:
    """A pure tensor function that is compiled per signature in the background and eager until then."""

    def __init__(self, function: Callable[..., Any]):
        self._eager = function
        self._compiled: Callable[..., Any] | None = None
        self._ready: set[Hashable] = set()
        self._pending: dict[Hashable, threading.Event] = {}
        """Signatures seen, each with an event set once its compilation has ended (or failed)."""
        self._lock = threading.Lock()
        self.eager = not ENABLED
        """Run op by op: compiling is disabled (`VST_COMPILE=0`) or failed (a benchmark may set it too)."""

    def __call__(self, *args: Any) -> Any:
        if self.eager:
            return self._eager(*args)
        key = _signature(args)
        if key in self._ready:
            return self._compiled(*args)
        with self._lock:
            start = key not in self._pending
            if start:
                self._pending[key] = threading.Event()
            if self._compiled is None:
                self._compiled = torch.compile(self._eager, dynamic=True)
        if start:
            _COMPILE_QUEUE.put((self, key, args))
            _start_compiler()
        return self._eager(*args)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the compilations asked for so far; True when every signature seen runs compiled."""
        for done in list(self._pending.values()):
            done.wait(timeout)
        return not self.eager and bool(self._pending) and set(self._pending) <= self._ready

    def _compile(self, key: Hashable, args: tuple[Any, ...]) -> None:
        try:
            self._compiled(*args)
        except Exception as exc:  # a node without a C++ compiler: stay eager
            self.eager = True
            if threading.main_thread().is_alive():  # not the process exiting under it
                _log_failure(exc)
        else:
            self._ready.add(key)
            log.info("%s: compiled for %s", self._eager.__name__, key)
        finally:
            self._pending[key].set()


_COMPILE_QUEUE: queue.Queue[tuple[Fused, Hashable, tuple[Any, ...]]] = queue.Queue()
"""Compilations waiting for the one background thread that runs them, one at a time: several at once
would only take more of the cores the frames need."""
_COMPILER_LOCK = threading.Lock()
_compiler: threading.Thread | None = None


def _start_compiler() -> None:
    global _compiler
    with _COMPILER_LOCK:
        if _compiler is None or not _compiler.is_alive():
            _compiler = threading.Thread(target=_compile_queued, name="vst-compile")
            _compiler.start()


def _compile_queued() -> None:
    """Run queued compilations until the main thread has finished (the process is exiting)."""
    while threading.main_thread().is_alive():
        try:
            stage, key, args = _COMPILE_QUEUE.get(timeout=0.5)
        except queue.Empty:
            continue
        stage._compile(key, args)


_FAILURE_LOCK = threading.Lock()
_failure_logged = False


def _log_failure(exc: Exception) -> None:
    """One warning per process, whichever stage fails first (they all fail alike without a compiler)."""
    global _failure_logged
    with _FAILURE_LOCK:
        if _failure_logged:
            return
        _failure_logged = True
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    log.warning(
        "pipeline stages: torch.compile failed (%s: %s); they run op by op, several times slower on a CPU; "
        "install a C++ compiler (g++, or name one in $CXX) for the fused stages",
        type(exc).__name__, reason,
    )


def _signature(args: tuple[Any, ...]) -> Hashable:
    """What a compiled graph is specialised on: constants, and each tensor's dtype, device and rank."""
    parts = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            parts.append((arg.dtype, arg.device.type, arg.ndim))
        elif isinstance(arg, (tuple, list)):
            parts.append(_signature(tuple(arg)))
        else:
            parts.append(arg if isinstance(arg, Hashable) else type(arg).__name__)
    return tuple(parts)
