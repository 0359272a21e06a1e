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
