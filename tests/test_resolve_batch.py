"""The Resolve batch round trip (resolve/vst_batch.py) against a fake of the Resolve calls it makes,
with the real sequence job, real EXR files and a real server underneath; type-checked with mypy
against fusionscript-stubs.

The fake (tests/fake_resolve.py) implements exactly these calls:

* ``resolve.GetProjectManager().GetCurrentProject()``;
* Project: ``GetMediaPool``, ``GetCurrentTimeline``, ``SetCurrentTimeline``, ``GetRenderCodecs("exr")``,
  ``SetCurrentRenderFormatAndCodec``, ``SetRenderSettings``, ``AddRenderJob``, ``DeleteRenderJob``,
  ``StartRendering([job], False)``, ``IsRenderingInProgress``, ``GetRenderJobStatus``;
* MediaPool: ``CreateTimelineFromClips(name, [clipInfo])``, ``DeleteTimelines``,
  ``ImportMedia([{FilePath, StartIndex, EndIndex}])``, ``DeleteClips``, ``AppendToTimeline([clipInfo])``
  (endFrame exclusive);
* Timeline: ``GetMarkInOut``, ``GetCurrentVideoItem``, ``GetStartFrame``, ``GetTrackCount("video")``,
  ``GetItemListInTrack``, ``AddTrack("video")``, ``DeleteTrack``, ``SetTrackName``;
* TimelineItem: ``GetMediaPoolItem``, ``GetName``, ``GetStart``, ``GetEnd``, ``GetSourceStartFrame``,
  ``GetLeftOffset``.

Rendering in the fake copies the timeline's source frames (real plates) into the render folder.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "resolve"))
sys.path.insert(0, str(Path(__file__).parent / "fake_nuke"))
sys.path.insert(0, str(Path(__file__).parent))

import fake_resolve  # noqa: E402
import vst_batch  # noqa: E402
from plates import crop_plates  # noqa: E402

from vst_plugin.cli import main  # noqa: E402
from vst_plugin.exr import read_exr  # noqa: E402


@pytest.fixture(scope="module")
def plates(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return crop_plates(shared, tmp_path_factory.mktemp("plates"), range(1, 5))


def project_with_clip(plates: str) -> tuple[fake_resolve.Project, fake_resolve.TimelineItem]:
    """A timeline at 86400 with one clip at record 86410: source frames 1-3 of a 4-frame plate sequence."""
    media = fake_resolve.sequence_media(plates, range(1, 5))
    item = fake_resolve.TimelineItem(media, "plate", 86410, 1, 3)
    timeline = fake_resolve.Timeline("edit", tracks=[[item]], playhead=86411)
    return fake_resolve.Project(timeline), item


def snapshot(project: fake_resolve.Project) -> tuple:
    timeline = project.timelines[0]
    return (len(project.timelines), project.current is timeline, len(project.jobs), len(project.media_pool.clips),
            [list(track) for track in timeline.tracks], list(timeline.track_names))


def test_round_trip_places_the_stylized_clip_above_at_the_same_record_frame(
        plates: str, server_address: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    project, original = project_with_clip(plates)
    work = tmp_path / "work"
    assert vst_batch.main(["--server", server_address, "--work-dir", str(work), "--style", "7", "--temporal", "0.8",
                           "--preroll", "2"], resolve=fake_resolve.Resolve(project)) == 0
    timeline = project.timelines[0]
    assert project.current is timeline and project.timelines == [timeline] and project.jobs == {}
    assert timeline.tracks[0] == [original] and timeline.track_names == ["Video 1", "vst"]
    (placed,) = timeline.tracks[1]
    assert (placed.start, placed.duration, placed.source_start) == (86410, 3, 0)
    assert project.media_pool.clips == [placed.media]
    # the same frames through `vst render` with the same options: source frames 1-3 are plates 2-4,
    # and the one frame of handle (plate 1) is the pre-roll
    assert main(["render", plates, str(tmp_path / "ref.####.exr"), "--frames", "2-4", "--style", "7", "--temporal",
                 "0.8", "--preroll", "1", "--input-colorspace", vst_batch.RESOLVE_COLORSPACE, "--server",
                 server_address]) == 0
    for offset, path in enumerate(placed.media.frames):
        ours, reference = read_exr(path).parts[0], read_exr(tmp_path / f"ref.{offset + 2:04d}.exr").parts[0]
        assert ours.data_window == reference.data_window
        for channel in ("R", "G", "B", "A", "Z"):
            assert np.array_equal(ours.channels[channel], reference.channels[channel]), (offset, channel)
    styled = read_exr(placed.media.frames[0]).parts[0]
    assert not np.array_equal(styled.channels["G"], read_exr(plates.replace("####", "0002")).parts[0].channels["G"])
    out = capsys.readouterr().out
    assert "source frames 1-3 (+1 pre-roll)" in out and "stylized frame 3 (3/3)" in out and "done, 1" in out


def test_in_out_range_trims_the_clip(plates: str, server_address: str, tmp_path: Path) -> None:
    project, _ = project_with_clip(plates)
    project.timelines[0].marks = {"video": {"in": 11, "out": 12}}  # timeline frames 86411-86412
    assert vst_batch.main(["--server", server_address, "--work-dir", str(tmp_path), "--style", "7"],
                          resolve=fake_resolve.Resolve(project)) == 0
    (placed,) = project.timelines[0].tracks[1]
    assert (placed.start, placed.duration) == (86411, 2)
    assert [path.name for path in placed.media.frames] == ["vst.00000000.exr", "vst.00000001.exr"]


def test_overlapping_clips_on_two_tracks_are_refused_before_any_work(plates: str) -> None:
    project, original = project_with_clip(plates)
    timeline = project.timelines[0]
    timeline.tracks.append([fake_resolve.TimelineItem(original.media, "above", 86411, 0, 2)])
    timeline.marks = {"video": {"in": 0, "out": 20}}
    with pytest.raises(vst_batch.BatchError, match="overlap"):
        vst_batch.find_shots(timeline, preroll=0)
    timeline.marks = {"video": {"in": 0, "out": 10}}  # only the lower clip's first frame
    (shot,) = vst_batch.find_shots(timeline, preroll=4)
    assert (shot.first, shot.last, shot.record, shot.preroll) == (1, 1, 86410, 1)


def test_a_failed_stylize_leaves_the_project_as_it_was(plates: str, server_address: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    project, _ = project_with_clip(plates)
    before = snapshot(project)
    assert vst_batch.main(["--server", server_address, "--work-dir", str(tmp_path), "--style", "99"],
                          resolve=fake_resolve.Resolve(project)) == 1
    assert snapshot(project) == before
    assert "[bad_param]" in capsys.readouterr().out


def test_a_refused_placement_removes_the_imported_clip_and_the_new_track(plates: str, server_address: str,
                                                                         tmp_path: Path) -> None:
    project, _ = project_with_clip(plates)
    project.timelines[0].marks = {"video": {"in": 10, "out": 10}}  # one frame is enough
    project.media_pool.refuse_append = True
    before = snapshot(project)
    assert vst_batch.main(["--server", server_address, "--work-dir", str(tmp_path), "--style", "7"],
                          resolve=fake_resolve.Resolve(project)) == 1
    assert snapshot(project) == before


def test_no_server_no_change(plates: str, free_address, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    project, _ = project_with_clip(plates)
    before = snapshot(project)
    assert vst_batch.main(["--server", free_address(), "--timeout", "1", "--work-dir", str(tmp_path)],
                          resolve=fake_resolve.Resolve(project)) == 1
    assert snapshot(project) == before
    assert "vst: error" in capsys.readouterr().out


def run_mypy(path: Path, folder: Path) -> subprocess.CompletedProcess:
    """mypy on one file: imported project modules are read for their types, their own errors not reported."""
    config = folder / "mypy.ini"
    config.write_text(textwrap.dedent("""\
        [mypy]
        follow_imports = silent
        ignore_missing_imports = True
        [mypy-server.*]
        follow_imports = skip
    """))
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
                           str(folder / "cache"), str(path)], capture_output=True, text=True)


def test_batch_script_type_checks_against_fusionscript_stubs(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    result = run_mypy(ROOT / "resolve" / "vst_batch.py", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # the stubs are in effect: a wrong track type is caught
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from fusionscript import Timeline\n\ndef f(t: Timeline) -> int:\n"
                     "    return t.GetTrackCount('videos')\n")
    result = run_mypy(wrong, tmp_path)
    assert result.returncode == 1 and "GetTrackCount" in result.stdout, result.stdout
