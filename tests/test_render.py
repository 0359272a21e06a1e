"""The render specification: file names, checks, pre-roll, chunks, and chunks rendered through a real server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vst_plugin import Client
from vst_plugin.exr import read_exr
from vst_plugin.render import RenderError, RenderSpec
from vst_plugin.schema import StylizeSettings, TemporalSettings

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = str(ROOT / "samples/beachball/beachball.####.exr")


def spec(frames: tuple[int, ...], preroll: int = 0, output: str = "out.####.exr") -> RenderSpec:
    return RenderSpec(SAMPLES, output, frames, StylizeSettings(model="identity"), preroll)


def test_chunks_are_runs_of_consecutive_frames_each_with_the_preroll() -> None:
    whole = spec(tuple(range(1, 11)), preroll=3)
    chunks = whole.chunks(4)
    assert [chunk.frames for chunk in chunks] == [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10)]
    assert {chunk.preroll for chunk in chunks} == {3}
    assert all((chunk.input, chunk.output, chunk.settings) == (whole.input, whole.output, whole.settings)
               for chunk in chunks)
    gaps = spec((1, 2, 3, 7, 8, 9, 20)).chunks(2)
    assert [chunk.frames for chunk in gaps] == [(1, 2), (3,), (7, 8), (9,), (20,)]
    with pytest.raises(RenderError, match="at least 1 frame"):
        whole.chunks(0)


def test_check_names_what_is_wrong_before_anything_is_sent() -> None:
    spec((1, 2, 3)).check()
    with pytest.raises(RenderError, match=r"2 input frame\(s\) missing: 4 .*beachball.0004.exr.*, 5"):
        spec((3, 4, 5)).check()
    with pytest.raises(RenderError, match="frame token"):
        spec((1, 2), output="single.exr").check()
    with pytest.raises(RenderError, match="no frames"):
        spec(()).check()


def test_preroll_is_shortened_to_the_frames_on_disk() -> None:
    assert spec((3,), preroll=5).available_preroll() == 2
    assert spec((2, 3), preroll=1).available_preroll() == 1
    assert spec((1,), preroll=4).available_preroll() == 0


def test_chunks_rendered_one_by_one_equal_the_whole_render(server_address: str, tmp_path: Path) -> None:
    settings = StylizeSettings(model="identity", temporal=TemporalSettings(0.8))
    whole = RenderSpec(SAMPLES, str(tmp_path / "whole.####.exr"), (1, 2, 3), settings, preroll=1)
    chunked = replace(whole, output=str(tmp_path / "chunk.####.exr"))
    with Client(server_address, timeout=60) as client:
        assert whole.run(client).rendered == [1, 2, 3]
        for chunk in chunked.chunks(2):
            chunk.run(client)
    for number in (1, 2, 3):
        a = read_exr(tmp_path / f"whole.{number:04d}.exr").parts[0].channels
        b = read_exr(tmp_path / f"chunk.{number:04d}.exr").parts[0].channels
        assert all(np.array_equal(a[name], b[name], equal_nan=True) for name in a)


def test_check_refuses_an_output_that_is_an_input_file(tmp_path: Path) -> None:
    """Issue 11: `vst render p.####.exr p.####.exr` overwrote the plates. Links are resolved too."""
    for number in (1, 2):
        (tmp_path / f"p.{number:04d}.exr").write_bytes(Path(SAMPLES.replace("####", f"{number:04d}")).read_bytes())
    (tmp_path / "link").symlink_to(tmp_path)
    same = RenderSpec(str(tmp_path / "p.####.exr"), str(tmp_path / "link/p.%04d.exr"), (1,), StylizeSettings())
    with pytest.raises(RenderError, match="would overwrite the plates"):
        same.check()
    (tmp_path / "q.0002.exr").symlink_to(tmp_path / "p.0002.exr")
    with pytest.raises(RenderError, match=r"p.0002.exr: it would overwrite"):
        replace(same, output=str(tmp_path / "q.####.exr"), frames=(2,)).check()
    replace(same, output=str(tmp_path / "out/p.####.exr")).check()


def test_movie_frames_count_from_one(tmp_path: Path) -> None:
    (tmp_path / "cut.mov").write_bytes(b"not decoded here")
    movie = RenderSpec(str(tmp_path / "cut.mov"), str(tmp_path / "o.mp4"), (1, 2, 3), StylizeSettings(), preroll=4)
    movie.check()
    assert movie.input_path(2) == str(tmp_path / "cut.mov")
    assert replace(movie, frames=(3,)).available_preroll() == 2
    assert not movie.input_exists(0) and movie.input_exists(500)


def test_resume_keeps_what_is_done(tmp_path: Path) -> None:
    temporal = RenderSpec(SAMPLES, str(tmp_path / "o.####.exr"), (1, 2, 3, 4, 5), StylizeSettings(
        temporal=TemporalSettings(0.8)))
    for number in (1, 2, 3, 4, 5):
        (tmp_path / f".o.{number:04d}.exr.vstkey").write_text("key")
    done = {1, 2, 4}.__contains__  # frame 3 is missing; 4 was rendered after it and depends on it
    resumed = temporal.resume(done)
    assert (resumed.frames, resumed.preroll) == ((3, 4, 5), 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.0001.exr.vstkey", ".o.0002.exr.vstkey"]
    assert replace(temporal, preroll=2).resume(done).preroll == 2
    assert temporal.resume({1, 2, 3, 4, 5}.__contains__).frames == ()
    independent = replace(temporal, settings=StylizeSettings())
    assert independent.resume(done) is independent  # the job's cache skips the done frames
