"""Elementwise pipeline stages fused by `torch.compile`, compiled in the background, eager until ready.

Around the network the pipeline is a few dozen elementwise passes over the frame (unpremultiply, the
highlight policy, the sRGB curve and their inverses, premultiply, casts). Run one torch op at a time
they cost more on a 2-core CPU than onnxruntime's whole network budget allows; fused by inductor into
a few loops they cost a fraction (bench/results/pipeline-cpu-2026-11-28.md). Compiling takes seconds
to a minute, so a stage runs eagerly while a background thread compiles it for that call's signature
(its constant arguments and tensor dtypes; sizes are symbolic), and switches over once that is done.
Compilation that fails (no C++ compiler on a render node) leaves the stage eager, logged once.
The compiling thread is not a daemon: a short process (`vst render --embedded` on a few small frames)
that exited while it compiled was aborted by the C++ runtime (SIGABRT, "terminate called without an
active exception"); now its exit waits for the compilation to finish.
`VST_COMPILE=0` in the environment keeps every stage eager.
"""

from __future__ import annotations

import logging
import os
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
        self._pending: set[Hashable] = set()
        self._failed = not ENABLED
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        if self._failed:
            return self._eager(*args)
        key = _signature(args)
        if key in self._ready:
            return self._compiled(*args)
        with self._lock:
            start = key not in self._pending
            self._pending.add(key)
            if self._compiled is None:
                self._compiled = torch.compile(self._eager, dynamic=True)
        if start:
            threading.Thread(target=self._compile, args=(key, args), name="vst-compile").start()
        return self._eager(*args)

    def _compile(self, key: Hashable, args: tuple[Any, ...]) -> None:
        try:
            self._compiled(*args)
        except Exception as exc:  # a node without a compiler: stay eager
            log.warning("%s: torch.compile failed (%s); running it op by op", self._eager.__name__, exc)
            self._failed = True
            return
        self._ready.add(key)
        log.info("%s: compiled for %s", self._eager.__name__, key)


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
