"""Bounded memory on a real server: the queue's byte budget, the message size limit, clients gone away."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zmq

from vst_plugin import Client, Frame, Part, ServerError
from vst_plugin.protocol import pack, request


def noise_frame(side: int, seed: int) -> Frame:
    rng = np.random.default_rng(seed)
    planes = {name: rng.random((side, side), dtype=np.float32) for name in "RGB"}
    return Frame([Part(planes, (0, 0, side - 1, side - 1), (0, 0, side - 1, side - 1))])


def test_a_full_queue_answers_busy_and_the_client_sends_again(vst_server) -> None:
    frames = [noise_frame(256, seed) for seed in range(6)]  # 768 KiB each, over a 1 MiB budget together
    with vst_server("--queue-memory", "1M") as address:
        with Client(address, timeout=60) as client:
            pending = [client.submit(frame, params={"style": 3}) for frame in frames]
            results = [client.result(item) for item in pending]
            stats = client.stats()
        assert client.busy_retries > 0 and stats["busy"] > 0
        assert stats["queued_bytes"] == 0 and stats["queue_bytes"] == 1 << 20
        for frame, result in zip(frames, results, strict=True):  # each reply is its own frame's
            assert result.parts[0].channels["R"].shape == (256, 256)
            assert not np.array_equal(result.parts[0].channels["R"], frame.parts[0].channels["R"])
        with Client(address, busy_timeout=0) as fresh, pytest.raises(ServerError) as raised:
            for item in [fresh.submit(frame) for frame in frames]:  # a client that does not wait sees busy
                fresh.result(item)
        assert raised.value.code == "busy" and "queue is full" in raised.value.message


def test_oversize_messages_are_refused_while_arriving(vst_server) -> None:
    with vst_server("--max-frame-bytes", "1M") as address:
        with Client(address) as client:
            assert client.hello()["capabilities"]["limits"]["max_frame_bytes"] == 1 << 20
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(address)
        try:
            # a plane bigger than any frame may be: ZeroMQ drops the connection, no reply comes
            socket.send_multipart([pack(request("stylize", 1, exr=True)), os.urandom(32 << 20)])
            assert not socket.poll(1500)
        finally:
            socket.close()
        with Client(address) as client, pytest.raises(ServerError) as raised:
            client.submit_exr(b"x" * (600 << 10))  # frames each within the limit, over it together:
            client._send(request("stylize", 99, exr=True), [b"x" * (600 << 10), b"y" * (600 << 10)])
            client._wait(99)
        assert raised.value.code == "too_large"
        with Client(address) as client:
            assert client.ping() >= 0


def test_queued_frames_of_a_client_gone_silent_are_dropped(vst_server) -> None:
    frame, total = noise_frame(768, 0), 16  # far more work than the server does in the 1 s timeout
    with vst_server("--client-timeout", "1") as address:
        gone = Client(address, timeout=60)
        for _ in range(total):
            gone.submit(frame, params={"style": 5})
        assert gone.stats()["queued"] >= total - 1  # the server has them all
        gone.close()  # the client went away without waiting: nobody pings for these frames
        with Client(address, timeout=60) as client:
            deadline = time.monotonic() + 120
            while (stats := client.stats())["queued"]:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert stats["abandoned"] >= total // 2 and stats["frames"] <= total - stats["abandoned"]
            assert client.stylize(noise_frame(32, 1), model="identity").parts[0].channels["R"].shape == (32, 32)
