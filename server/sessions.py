"""Per-sequence state on the server: one session per (client, sequence), bounded and expiring.

A session is what the server carries from one frame of a client's sequence to the next: the frame
number last admitted, the motion analysis of that frame (the next frame's flow is measured against
it, server/temporal.py), and each model's memory (the previous stylized result of each colour layer,
a StyleGAN inversion's latents). Frames are admitted in arrival order by the request loop:

* a frame whose number is the previous one + 1 (or that carries no number) continues the session;
* anything else (the first frame, a jump, a repeat, a scrub backwards) starts it anew: the memory
  and analysis of the old one are not used, so unrelated frames are never blended;
* `reset` forgets a session; a frame that fails clears its session's memory (`Session.fail`), so the
  next frame starts from itself;
* a session untouched for `ttl` seconds expires, and at most `max_sessions` are kept: admitting one
  more drops the least recently used.

Frames already queued keep the session object they were admitted with, so a reset or a new start
never changes what a queued frame blends with.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Session:
    """What the server keeps of one client's sequence between frames."""

    last_frame: int | None
    touched: float
    analysis: Future | None = None
    """The motion analysis of the last admitted frame (temporal mode), which the next one relates to."""
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each model's memory for this sequence, by model name."""

    def model_memory(self, model: str) -> dict[str, Any]:
        """The memory a model keeps for this sequence (created empty)."""
        return self.memory.setdefault(model, {})

    def fail(self) -> None:
        """A frame of the session failed: what is remembered describes a frame before it, so drop it."""
        self.memory.clear()


class SessionStore:
    """Sessions by (client identity, sequence id), least recently used first; safe across threads."""

    def __init__(self, ttl: float = 600.0, max_sessions: int = 32):
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions}")
        self.ttl = ttl
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[tuple[bytes, str], Session] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, client: bytes, sequence: str, frame: int | None) -> tuple[Session, Future | None]:
        """Admit a frame in arrival order; returns its session and the analysis of the frame before it.

        The previous analysis is None when the frame starts the session anew. Set `analysis` on the
        session to this frame's own analysis, if any, for the next frame.
        """
        now = time.monotonic()
        key = (client, sequence)
        with self._lock:
            self._expire(now)
            session = self._sessions.get(key)
            follows = session is not None and (
                frame is None or session.last_frame is None or frame == session.last_frame + 1
            )
            if not follows:
                session = Session(frame, now)
                self._sessions[key] = session
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
                previous = None
            else:
                previous = session.analysis
                session.last_frame, session.touched = frame, now
                session.analysis = None
            self._sessions.move_to_end(key)
            return session, previous

    def reset(self, client: bytes, sequence: str) -> bool:
        """Forget a sequence: its next frame starts anew. True if it had a session."""
        with self._lock:
            return self._sessions.pop((client, sequence), None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire(time.monotonic())
            return len(self._sessions)

    def _expire(self, now: float) -> None:
        while self._sessions:
            key, oldest = next(iter(self._sessions.items()))
            if now - oldest.touched <= self.ttl:
                return
            del self._sessions[key]
