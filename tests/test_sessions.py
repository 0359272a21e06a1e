"""The server's session store (per client and sequence), unit by unit and through a real server."""

from __future__ import annotations

import time
from concurrent.futures import Future

import numpy as np

from server.sessions import SessionStore
from vst_plugin import Client, Frame, Part


def test_frames_in_order_continue_and_anything_else_starts_anew() -> None:
    store = SessionStore()
    first, previous = store.admit(b"c", "s", 10)
    assert previous is None
    first.analysis = Future()
    first.model_memory("m")["result"] = 1
    second, previous = store.admit(b"c", "s", 11)
    assert second is first and previous is not None and second.analysis is None
    for jump in (11, 13, 5):  # a repeat, a jump, a scrub backwards
        session, previous = store.admit(b"c", "s", jump)
        assert session is not first and previous is None and session.memory == {}
        first = session
    other, _ = store.admit(b"other client", "s", 6)
    assert other is not first  # the same sequence name from another client is another session


def test_reset_failure_expiry_and_the_bound() -> None:
    store = SessionStore(ttl=0.2, max_sessions=2)
    session, _ = store.admit(b"c", "a", 1)
    session.model_memory("m")["x"] = 1
    session.fail()
    assert session.memory == {}
    assert store.reset(b"c", "a") is True and store.reset(b"c", "a") is False
    kept, _ = store.admit(b"c", "a", 1)
    dropped, _ = store.admit(b"c", "b", 1)
    store.admit(b"c", "a", 2)  # a is now the most recently used
    store.admit(b"c", "c", 1)  # over the bound: b goes
    assert len(store) == 2
    assert store.admit(b"c", "a", 3)[0] is kept
    assert store.admit(b"c", "b", 2)[0] is not dropped  # b was dropped, so its frame 2 starts anew
    time.sleep(0.3)
    assert len(store) == 0


def test_the_server_keeps_at_most_max_sequences(vst_server) -> None:
    rgb = {name: np.full((16, 16), 0.5, np.float32) for name in "RGB"}
    frame = Frame([Part(rgb, (0, 0, 15, 15), (0, 0, 15, 15))])
    with vst_server("--max-sequences", "2") as address, Client(address, timeout=60) as client:
        for name in ("a", "b", "c"):
            client.stylize(frame, model="identity", sequence=name, frame_number=1)
        assert client.stats()["sequences"] == 2
        assert client.reset("a") is False  # the least recently used one was dropped
        assert client.reset("c") is True
