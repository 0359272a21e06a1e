"""Per-sequence state, keyed by client identity and sequence id, expiring when a client vanishes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SequenceState:
    """What the server remembers of one client's sequence."""

    last_frame: int | None
    touched: float
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Memory of temporal models, by model name, carried to the next frame. It is dropped when the
    next frame is not the one after `last_frame`, as it describes the frames just before."""


class SequenceStates:
    """Sequence states with a time-to-live; safe to use from the I/O loop and the worker."""

    def __init__(self, ttl: float = 600.0):
        self.ttl = ttl
        self._states: dict[tuple[bytes, str], SequenceState] = {}
        self._lock = threading.Lock()

    def touch(self, client: bytes, sequence: str, frame: int | None) -> SequenceState:
        """Record that `frame` of a sequence was processed; returns the state before this frame."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            previous = self._states.get((client, sequence), SequenceState(None, now))
            frame = frame if isinstance(frame, int) else None
            follows = None in (frame, previous.last_frame) or frame == previous.last_frame + 1
            self._states[(client, sequence)] = SequenceState(frame, now, previous.models if follows else {})
            return previous

    def model_state(self, client: bytes, sequence: str, model: str) -> dict[str, Any]:
        """The memory a temporal model keeps for this sequence (created empty); call after `touch`."""
        with self._lock:
            state = self._states.setdefault((client, sequence), SequenceState(None, time.monotonic()))
            return state.models.setdefault(model, {})

    def reset(self, client: bytes, sequence: str) -> bool:
        """Forget a sequence; True if it had state."""
        with self._lock:
            return self._states.pop((client, sequence), None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire(time.monotonic())
            return len(self._states)

    def _expire(self, now: float) -> None:
        for key in [key for key, state in self._states.items() if now - state.touched > self.ttl]:
            del self._states[key]
