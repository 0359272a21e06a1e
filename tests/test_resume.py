"""Resuming a killed `vst render` (issue 11 item 7): a real render process is killed and rendered again.

Frames kept by `--skip-existing` must be the very files the first render wrote; in temporal mode the render
restarts at the first missing frame (after a pre-roll); temporary files of the killed process are removed;
a full disk is named as such.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest

VST = str(Path(sys.executable).parent / "vst")
COUNT = 8


@pytest.fixture()
def plates(tmp_path: Path, bbb_frames) -> Path:
    """An 8-frame PNG sequence of real footage in tmp_path/in."""
    (tmp_path / "in").mkdir()
    for number, rgb in enumerate(bbb_frames(COUNT), start=1):
        assert oiio.ImageBuf(rgb).write(str(tmp_path / f"in/p.{number:04d}.png"))
    return tmp_path


def outputs(folder: Path) -> dict[str, tuple[int, int]]:
    """Output frames by name: (inode, modification time in ns), to tell kept files from rewritten ones."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("o.*.png")}


def killed_render(cwd: Path, *options: str) -> int:
    """Start a render, SIGKILL it once it has written 2 frames; return its pid."""
    process = subprocess.Popen(
        [VST, "render", "in/p.####.png", "out/o.####.png", "--in-flight", "1", *options],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(outputs(cwd / "out")) < 2 if (cwd / "out").is_dir() else True:
        assert process.poll() is None and time.monotonic() < deadline, "the render ended before it was killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert len(outputs(cwd / "out")) < COUNT, "the render finished before it was killed"
    return process.pid


def leftover(folder: Path, pid: int) -> Path:
    """A temporary file as a process `pid` of this host leaves it when killed while writing o.0007.png."""
    host = "".join(c if c.isalnum() or c in "_." else "_" for c in socket.gethostname())
    path = folder / f".o.0007.png.tmp-{host}-{pid}-0123abcd.png"
    path.write_bytes(b"half a frame")
    return path


def test_skip_existing_resumes_a_killed_render(plates: Path, server_address: str) -> None:
    server = ("--server", server_address, "--style", "3")
    pid = killed_render(plates, "--skip-existing", *server)
    # a frame is done once its cache key is written beside it (the kill may fall between the two)
    before = {name: stamp for name, stamp in outputs(plates / "out").items()
              if (plates / f"out/.{name}.vstkey").exists()}
    stale, alive = leftover(plates / "out", pid), leftover(plates / "out", os.getpid())
    done = subprocess.run([VST, "render", "in/p.####.png", "out/o.####.png", "--skip-existing", *server],
                          cwd=plates, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"removed [12] temporary file\(s\)", done.stderr)  # ours, and the killed one's own if any
    assert not stale.exists() and alive.exists()  # a running process's file is not touched
    after = outputs(plates / "out")
    assert len(after) == COUNT
    assert {name: after[name] for name in before} == before  # the frames of the killed render are kept
    assert f"wrote {COUNT - len(before)} frame(s), kept {len(before)} existing" in done.stdout
    # the same settings again: nothing to do; other settings: every frame again
    again = subprocess.run([VST, "render", "in/p.####.png", "out/o.####.png", "--skip-existing", *server],
                           cwd=plates, capture_output=True, text=True, timeout=300)
    assert f"wrote 0 frame(s), kept {COUNT} existing" in again.stdout and outputs(plates / "out") == after
    other = subprocess.run([VST, "render", "in/p.####.png", "out/o.####.png", "--skip-existing", "--server",
                            server_address, "--style", "5", "--frames", "1-2"],
                           cwd=plates, capture_output=True, text=True, timeout=300)
    assert "wrote 2 frame(s), kept 0 existing" in other.stdout, other.stderr


def test_temporal_resume_restarts_at_the_first_missing_frame(plates: Path, server_address: str) -> None:
    options = ("--server", server_address, "--style", "3", "--temporal", "--skip-existing")
    killed_render(plates, *options)
    before = outputs(plates / "out")
    # a frame is done once its cache key is written beside it (the kill may fall between the two)
    first_missing = next(n for n in range(1, COUNT + 1) if not (plates / f"out/.o.{n:04d}.png.vstkey").exists())
    assert first_missing > 1
    done = subprocess.run([VST, "render", "in/p.####.png", "out/o.####.png", *options],
                          cwd=plates, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming at frame {first_missing} ({first_missing - 1} frame(s) kept)" in done.stderr
    after = outputs(plates / "out")
    assert len(after) == COUNT
    for name, stamp in after.items():
        kept = int(name.split(".")[1]) < first_missing
        assert (before.get(name) == stamp) == kept, name


def test_a_full_disk_is_named(tmp_path: Path, plates: Path, server_address: str) -> None:
    script = (
        f"mount -t tmpfs -o size=48k tmpfs {tmp_path / 'out'} && "
        f"{VST} render in/p.####.png out/o.####.png --server {server_address} --model identity; "
        "status=$?; wc -c out/o.*.png; exit $status"
    )
    (tmp_path / "out").mkdir()
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a private mount namespace here (unshare -rm)")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=plates, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert "no space left on the device" in done.stderr and "o.00" in done.stderr, done.stderr
    sizes = [int(line.split()[0]) for line in done.stdout.splitlines() if "o." in line]
    assert sizes and min(sizes) > 1000  # the frames written are whole; no empty or truncated file is left


def test_movie_output_cannot_skip_existing(plates: Path, server_address: str) -> None:
    done = subprocess.run([VST, "render", "in/p.####.png", "out.mov", "--skip-existing", "--server", server_address],
                          cwd=plates, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "a movie is written in one piece" in done.stderr
    assert np.all([not p.name.startswith(".") for p in plates.iterdir()])
