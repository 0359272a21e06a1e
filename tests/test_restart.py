"""A render rides out a server restart: a real server killed mid-render and started again on the same address."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from vst_plugin import Client, Frame, Part
from vst_plugin.exr import read_exr, write_exr
from vst_plugin.jobs import ExrPlanes, SequenceJob
from vst_plugin.schema import StylizeSettings, TemporalSettings
from vst_plugin.sequence import frame_path

VST = str(Path(sys.executable).parent / "vst")


def plates(folder: Path, count: int) -> str:
    pattern = str(folder / "plate.####.exr")
    rng = np.random.default_rng(0)
    for number in range(1, count + 1):
        planes = {c: (0.3 + 0.05 * rng.random((48, 64), dtype=np.float32)).astype(np.float16) for c in "RGB"}
        write_exr(Frame([Part(planes, (0, 0, 63, 47), (0, 0, 63, 47))]), frame_path(pattern, number))
    return pattern


def test_a_sequence_job_survives_a_server_restart(tmp_path: Path, free_address, vst_server_process) -> None:
    pattern = plates(tmp_path, 12)
    address = free_address()
    first = subprocess.Popen([VST, "serve", "--bind", address, "--device", "cpu"])
    restarted = threading.Event()
    holder: dict = {}

    def restart() -> None:  # as systemd would: a new process on the same address, a little later
        holder["server"] = vst_server_process(address=address)
        holder["address"], holder["process"] = holder["server"].__enter__()
        restarted.set()

    def source(number: int) -> ExrPlanes:
        if number == 7 and "thread" not in holder:  # the server dies with frames in flight
            first.send_signal(signal.SIGKILL)
            first.wait(30)
            holder["thread"] = threading.Thread(target=restart)
            holder["thread"].start()
        return ExrPlanes.load(frame_path(pattern, number))

    settings = StylizeSettings(model="identity", temporal=TemporalSettings(strength=0.5, preset="ultrafast"))
    try:
        from conftest import wait_for_server

        wait_for_server(address, first)
        with Client(address, timeout=3, heartbeat=0.3) as client:
            client.hello()  # as `vst render` does: the client knows which server process it talks to
            job = SequenceJob(client, settings, source, lambda n: str(tmp_path / f"out.{n:04d}.exr"),
                              in_flight=3, preroll=2, reconnect=120)
            after: list[int] = []
            result = job.run(range(3, 13), progress=lambda step: job.reconnections and after.append(step.frame))
            holder["thread"].join()
            assert restarted.is_set() and job.reconnections >= 1
            assert result.rendered == list(range(3, 13))
            stats = client.stats()  # the new server: the frames not written before, plus their pre-roll
        # the new server computed the frames not yet written, after a reset and 2 of pre-roll (plus at most the 3
        # frames in flight that ZeroMQ had queued for the dead server and delivered to the new one)
        assert after and 2 + len(after) <= stats["frames"] <= 10 + 2 + 3
        for number in range(3, 13):
            out = read_exr(tmp_path / f"out.{number:04d}.exr").parts[0].channels["G"].astype(np.float32)
            assert abs(float(out.mean()) - 0.325) < 0.01  # identity with temporal blend: the plate's level
    finally:
        first.kill()
        first.wait()
        if "thread" in holder:
            holder["thread"].join()
        if "server" in holder:
            holder["server"].__exit__(None, None, None)
