"""Per-sequence state, keyed by client identity and sequence id, expiring when a client vanishes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class SequenceState:
    """What the server remembers of one client's sequence."""

    last_frame: int | None
    touched: float


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
            self._states[(client, sequence)] = SequenceState(frame if isinstance(frame, int) else None, now)
            return previous

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
