"""What the request loop admits: a byte budget for queued frames and which clients are still there."""

from __future__ import annotations

import threading
import time


class ByteBudget:
    """Bytes held by queued frames. A frame is admitted while the total stays within `limit`, and
    always when nothing is queued, so any frame within the frame limits gets through eventually."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        """Take `size` bytes if they fit; False (nothing taken) when the queue is too full."""
        with self._lock:
            if self.used and self.used + size > self.limit:
                return False
            self.used += size
            return True

    def release(self, size: int) -> None:
        """Give back what `reserve` took once the frame is done (answered or dropped)."""
        with self._lock:
            self.used -= size


class ClientClock:
    """When each client (ROUTER identity) was last heard from.

    Clients send a request or a ping at least every second while they wait for a frame; one silent
    for `timeout` seconds has gone away (crashed, cancelled, closed), and its queued frames are dropped.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._seen: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self._next_prune = time.monotonic() + timeout

    def heard(self, identity: bytes) -> None:
        """Note a message from a client."""
        now = time.monotonic()
        with self._lock:
            self._seen[identity] = now
            if now >= self._next_prune:  # forget long-gone clients, so the table stays small
                self._seen = {key: seen for key, seen in self._seen.items() if now - seen <= self.timeout}
                self._next_prune = now + self.timeout

    def gone(self, identity: bytes) -> bool:
        """True if the client has sent nothing for `timeout` seconds."""
        with self._lock:
            seen = self._seen.get(identity)
        return seen is None or time.monotonic() - seen > self.timeout
