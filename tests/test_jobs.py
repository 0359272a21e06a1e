"""Sequence jobs for real: a `vst serve` process and crops of the shared Beachball plates."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vst_plugin import Client, ServerUnavailable
from vst_plugin.exr import read_exr
from vst_plugin.jobs import ExrBytes, ExrPlanes, InputError, JobError, SequenceJob, key_path
from vst_plugin.schema import StylizeSettings
from vst_plugin.sequence import frame_path

sys.path.insert(0, str(Path(__file__).parent / "fake_nuke"))
from plates import crop_plates  # noqa: E402

IDENTITY = StylizeSettings(model="identity")
STYLE = StylizeSettings(model="multistyle26", params={"style": "7"})


@pytest.fixture(scope="module")
def plates(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return crop_plates(shared, tmp_path_factory.mktemp("plates"), range(1, 5))


def job(
    client: Client, plates: str, out: Path, settings: StylizeSettings = IDENTITY, kind=ExrBytes, **kw
) -> SequenceJob:
    return SequenceJob(client, settings, lambda n: kind.load(frame_path(plates, n)),
                       lambda n: str(out / f"out.{n:04d}.exr"), **kw)


def frames_done(client: Client) -> int:
    return client.stats()["frames"]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("kind", [ExrBytes, ExrPlanes])
def test_stylizes_with_several_frames_in_flight_and_keeps_other_channels(
    server_address: str, plates: str, tmp_path: Path, kind
) -> None:
    calls: list[str] = []

    class Recording(Client):
        def submit(self, *args, **kw):
            calls.append("submit")
            return super().submit(*args, **kw)

        def submit_exr(self, *args, **kw):
            calls.append("submit")
            return super().submit_exr(*args, **kw)

        def result(self, pending):
            calls.append("result")
            return super().result(pending)

    seen = []
    with Recording(server_address) as client:
        result = job(client, plates, tmp_path, STYLE, kind, in_flight=3).run([1, 2, 3], progress=seen.append)
    assert result.rendered == [1, 2, 3] and not result.cached and not result.cancelled
    assert calls[:4] == ["submit", "submit", "submit", "result"]
    assert [(p.done, p.total, p.frame, p.cached) for p in seen] == [(n, 3, n, False) for n in (1, 2, 3)]
    for number in (1, 2, 3):
        source = read_exr(frame_path(plates, number)).parts[0]
        styled = read_exr(tmp_path / f"out.{number:04d}.exr").parts[0]
        assert (styled.data_window, styled.display_window) == (source.data_window, source.display_window)
        assert list(styled.channels) == list(source.channels)
        for name in ("A", "Z", "forward.left.u", "disparityR.y", "whitebarmask.left.mask"):
            assert same_bits(styled.channels[name], source.channels[name]), name
        assert not np.array_equal(styled.channels["R"], source.channels["R"])
        assert not np.array_equal(styled.channels["left.R"], source.channels["left.R"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.0001.exr", "out.0002.exr", "out.0003.exr"]


def test_cache_renders_only_what_changed(server_address: str, plates: str, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for number in (1, 2, 3):
        (inputs / f"plate.{number:04d}.exr").write_bytes(Path(frame_path(plates, number)).read_bytes())
    pattern = str(inputs / "plate.####.exr")
    out = tmp_path / "out"
    with Client(server_address) as client:
        start = frames_done(client)
        first = job(client, pattern, out, cache=True).run([1, 2, 3])
        again = job(client, pattern, out, cache=True).run([1, 2, 3])
        assert (first.rendered, again.rendered, again.cached) == ([1, 2, 3], [], [1, 2, 3])
        assert frames_done(client) == start + 3
        (inputs / "plate.0002.exr").write_bytes(Path(frame_path(plates, 4)).read_bytes())
        changed_input = job(client, pattern, out, cache=True).run([1, 2, 3])
        assert (changed_input.rendered, changed_input.cached) == ([2], [1, 3])
        stronger = StylizeSettings(model="identity", params={"strength": 0.5})
        changed_options = job(client, pattern, out, stronger, cache=True).run([1, 2, 3])
        assert changed_options.rendered == [1, 2, 3]
        (out / "out.0003.exr").unlink()
        missing_output = job(client, pattern, out, stronger, cache=True).run([1, 2, 3])
        assert (missing_output.rendered, missing_output.cached) == ([3], [1, 2])
        assert frames_done(client) == start + 3 + 1 + 3 + 1
    assert Path(key_path(str(out / "out.0001.exr"))).is_file()


def test_preroll_and_sequence_continuity(server_address: str, plates: str, tmp_path: Path) -> None:
    resets: list[str] = []

    class Recording(Client):
        def reset(self, sequence: str) -> bool:
            resets.append(sequence)
            return super().reset(sequence)

    with Recording(server_address) as client:
        start = frames_done(client)
        sequence = job(client, plates, tmp_path, preroll=2, sequence="shot010")
        assert sequence.run([3, 4]).rendered == [3, 4]
        assert frames_done(client) == start + 4  # frames 1 and 2 pre-rolled, their results dropped
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.0003.exr", "out.0004.exr"]
        assert client.stats()["sequences"] >= 1 and resets == []
        sequence.run([4])  # not a continuation of 4: the state is reset, 2 and 3 pre-rolled again
        assert frames_done(client) == start + 7 and resets == ["shot010"]


def test_preroll_frame_without_input_names_it(server_address: str, plates: str, tmp_path: Path) -> None:
    with Client(server_address) as client, pytest.raises(JobError) as error:
        job(client, plates, tmp_path, preroll=2).run([1])
    assert error.value.frame == -1 and "frame -1: cannot read the input" in str(error.value)
    assert not any(tmp_path.iterdir())


def test_cancel_stops_submitting_and_leaves_no_partial_files(server_address: str, plates: str, tmp_path: Path) -> None:
    seen = []
    with Client(server_address) as client:
        start = frames_done(client)
        result = job(client, plates, tmp_path, in_flight=2).run([1, 2, 3, 4], progress=seen.append,
                                                                  cancelled=lambda: len(seen) >= 1)
        assert result.cancelled and result.rendered == [1]
        assert frames_done(client) - start <= 2
    with Client(server_address) as client:  # the abandoned frame must not count in later tests
        while client.stats()["queued"]:
            time.sleep(0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.0001.exr"]


def test_a_server_error_names_the_frame_and_keeps_earlier_outputs(
    server_address: str, plates: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.exr"
    broken.write_bytes(b"v/1\x01 not really an EXR")
    paths = {1: frame_path(plates, 1), 2: str(broken), 3: frame_path(plates, 3)}
    with Client(server_address) as client, pytest.raises(JobError) as error:
        SequenceJob(client, IDENTITY, lambda n: ExrBytes.load(paths[n]), lambda n: str(tmp_path / f"o.{n}.exr"),
                    in_flight=1).run([1, 2, 3])
    assert error.value.frame == 2 and str(error.value).startswith("frame 2: ") and "[bad_exr]" in str(error.value)
    assert (tmp_path / "o.1.exr").is_file() and not (tmp_path / "o.2.exr").exists()


def test_a_server_that_is_down_surfaces_as_unavailable(free_address, plates: str, tmp_path: Path) -> None:
    address = free_address()
    with Client(address, timeout=0.5, heartbeat=0.1) as client, pytest.raises(ServerUnavailable) as error:
        job(client, plates, tmp_path / "out").run([1])
    assert address in str(error.value) and "vst serve" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_input_first_writes_the_frames_already_stylized(
    server_address: str, plates: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.exr"
    broken.write_bytes(b"not an EXR at all")
    paths = {1: frame_path(plates, 1), 2: frame_path(plates, 2), 3: frame_path(plates, 3), 4: str(broken)}
    with Client(server_address) as client, pytest.raises(JobError) as error:
        SequenceJob(client, IDENTITY, lambda n: ExrPlanes.load(paths[n]), lambda n: str(tmp_path / f"o.{n}.exr"),
                    in_flight=4).run([1, 2, 3, 4])
    assert isinstance(error.value, InputError) and error.value.frame == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("o.")) == ["o.1.exr", "o.2.exr", "o.3.exr"]
