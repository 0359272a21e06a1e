"""Batch round trip for DaVinci Resolve Studio: timeline clips through vst and back onto the timeline.

For the clips inside the timeline's in/out range (every video track; without marks, the clip under
the playhead: Resolve's scripting API has no call for the timeline selection), each clip's source
frames, with up to `--preroll` frames of handle before them, are rendered to EXR through the render
queue from a temporary timeline holding just that clip (the EXR codec picked from GetRenderCodecs),
stylized by the same sequence job as `vst render` (temporal mode and pre-roll included), imported into
the Media Pool and placed on a new video track above the original at the same record frame (the frames
travel as EXR files: the server decodes them, so Resolve's Python needs no imaging library). Progress
goes to the Console. When anything fails, what the run added (render jobs, temporary timelines, the
new track, imported clips) is removed again and the current timeline is restored.

Run it from Resolve Studio (Workspace > Scripts, with this checkout's environment importable) or from
outside with Resolve's scripting environment variables (RESOLVE_SCRIPT_API, RESOLVE_SCRIPT_LIB,
PYTHONPATH) and a `vst serve` running:

    python resolve/vst_batch.py --style 7 --temporal 0.8 --preroll 8 --work-dir /tmp/vst_batch
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vst_plugin

from vst_plugin import Client, VstError  # noqa: E402
from vst_plugin.cli import CommandError, add_connection_options, add_style_options, connect, render_settings  # noqa: E402
from vst_plugin.jobs import ExrBytes, JobError, Progress  # noqa: E402
from vst_plugin.render import RenderError, RenderSpec  # noqa: E402
from vst_plugin.schema import FLOW_PRESETS, HIGHLIGHT_POLICIES, StylizeSettings, TemporalSettings  # noqa: E402

if TYPE_CHECKING:
    from fusionscript import MediaPool, MediaPoolItem, Project, Resolve, Timeline, TimelineItem
    from fusionscript.fusionscript import MediaPoolClipInfo

RESOLVE_COLORSPACE = "g24_rec709_tx"
"""Resolve renders EXR in the timeline's encoding, usually Rec.709 gamma 2.4."""
POLL_SECONDS = 0.5


class BatchError(VstError):
    """The round trip cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Shot:
    """A timeline clip, or its part inside the in/out range, to send through vst."""

    item: TimelineItem
    media: MediaPoolItem
    name: str
    first: int
    """First source frame to stylize."""
    last: int
    """Last source frame to stylize (inclusive)."""
    record: int
    """Timeline frame where `first` sits."""
    preroll: int
    """Source frames before `first` that exist in the media and are rendered as pre-roll."""

    @property
    def count(self) -> int:
        return self.last - self.first + 1


def find_shots(timeline: Timeline, preroll: int) -> list[Shot]:
    """The clips to process: those inside the in/out range on every video track, or the one under the playhead.

    In/out marks count from the timeline's start frame (0 = first frame) and include the out frame.
    """
    marks = timeline.GetMarkInOut().get("video")
    if marks is None:
        item = timeline.GetCurrentVideoItem()
        if item is None:
            raise BatchError("no clip under the playhead and no in/out range: mark a range or park on a clip")
        items, first, last = [item], int(item.GetStart(False)), int(item.GetEnd(False)) - 1
    else:
        start = timeline.GetStartFrame()
        first, last = start + marks["in"], start + marks["out"]
        items = [item for index in range(1, timeline.GetTrackCount("video") + 1)
                 for item in timeline.GetItemListInTrack("video", index) or []]
    shots = []
    for item in items:
        media = item.GetMediaPoolItem()
        begin, end = int(item.GetStart(False)), int(item.GetEnd(False)) - 1
        begin_in, end_in = max(begin, first), min(end, last)
        if media is None or begin_in > end_in:
            continue  # generators, titles and clips outside the range have no source frames to send
        source_first = item.GetSourceStartFrame() + (begin_in - begin)
        handle = int(item.GetLeftOffset(False)) + (begin_in - begin)
        shots.append(Shot(item, media, item.GetName(), source_first, source_first + end_in - begin_in, begin_in,
                          max(0, min(preroll, handle))))
    if not shots:
        raise BatchError("the in/out range holds no video clips with media")
    shots.sort(key=lambda shot: shot.record)
    for before, after in zip(shots, shots[1:], strict=False):
        if after.record < before.record + before.count:
            raise BatchError(f"'{before.name}' and '{after.name}' overlap in the in/out range (clips on several "
                             "tracks): mark a range where one track holds the clips")
    return shots


def exr_codec(project: Project) -> str:
    """The EXR codec to render the source with: 32-bit float if Resolve offers one, then half."""
    codecs = project.GetRenderCodecs("exr") or {}
    if not codecs:
        raise BatchError("this Resolve offers no EXR render codecs (EXR rendering needs DaVinci Resolve Studio)")
    for wanted in ("float", "half"):
        for description, codec in sorted(codecs.items()):
            if wanted in description.lower() or wanted in codec.lower():
                return codec
    return sorted(codecs.values())[0]


def _frame_number(path: Path) -> int:
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else -1


class RoundTrip:
    """One run over a project: what it added, so that a failure can take it away again."""

    def __init__(self, resolve: Resolve, log: Callable[[str], None] = print):
        self.project = resolve.GetProjectManager().GetCurrentProject()
        if self.project is None:
            raise BatchError("no project is open in Resolve")
        self.media_pool: MediaPool = self.project.GetMediaPool()
        self.timeline = self.project.GetCurrentTimeline()
        if self.timeline is None:
            raise BatchError("no timeline is open: open the timeline whose clips you want to stylize")
        self.log = log
        self._undo: list[Callable[[], Any]] = []

    def run(self, client: Client, settings: StylizeSettings, work_dir: Path, preroll: int) -> list[MediaPoolItem]:
        """Render, stylize, import and place every shot; on failure leave the project as it was."""
        try:
            shots = find_shots(self.timeline, preroll)
            track: int | None = None
            results = []
            for number, shot in enumerate(shots, 1):
                self.log(f"vst: shot {number}/{len(shots)} '{shot.name}': source frames {shot.first}-{shot.last}"
                         f" (+{shot.preroll} pre-roll)")
                folder = work_dir / f"shot{number:03d}"
                spec = RenderSpec(str(folder / "source" / "source.%08d.exr"), str(folder / "vst" / "vst.%08d.exr"),
                                  tuple(range(shot.count)), settings, shot.preroll)
                self.render_source(shot, spec)
                self.stylize(client, spec, shot)
                item = self.import_frames(spec.output, shot.count)
                if track is None:
                    track = self.add_track()
                self.place(item, shot, track)
                results.append(item)
            self.log(f"vst: done, {len(results)} stylized clip(s) on video track {track}")
            return results
        except BaseException:
            self.rollback()
            raise

    def render_source(self, shot: Shot, spec: RenderSpec) -> None:
        """Render the shot's source frames (pre-roll first) to EXR as `spec`'s inputs.

        The render's frames count from 0 at the shot's first frame (pre-roll frames are negative), so the
        stylized sequence starts at 0 too.
        """
        folder = Path(spec.input_path(0)).parent
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.exr"):  # an earlier run's frames would be taken for this render's
            stale.unlink()
        start = shot.first - shot.preroll
        temporary = self.media_pool.CreateTimelineFromClips(
            f"vst source {shot.name} {int(time.time())}",
            [{"mediaPoolItem": shot.media, "startFrame": start, "endFrame": shot.last + 1, "trackIndex": 1,
              "recordFrame": 0}],
        )
        if temporary is None:
            raise BatchError(f"Resolve could not make a temporary timeline for '{shot.name}'")
        self._undo.append(lambda: self.media_pool.DeleteTimelines([temporary]))
        self._undo.append(lambda: self.project.SetCurrentTimeline(self.timeline))
        if not self.project.SetCurrentTimeline(temporary):
            raise BatchError("Resolve could not switch to the temporary timeline")
        if not self.project.SetCurrentRenderFormatAndCodec("exr", exr_codec(self.project)):
            raise BatchError("Resolve refused the EXR render format")
        settings = {"SelectAllFrames": True, "TargetDir": str(folder), "CustomName": "source",
                    "ExportVideo": True, "ExportAudio": False}
        if not self.project.SetRenderSettings(settings):  # type: ignore[arg-type]  # a partial RenderSettings
            raise BatchError("Resolve refused the render settings")
        job = self.project.AddRenderJob()
        if not job:
            raise BatchError("Resolve could not add the render job")
        self._undo.append(lambda: self.project.DeleteRenderJob(job))
        if not self.project.StartRendering([job], False):
            raise BatchError("Resolve could not start rendering")
        while self.project.IsRenderingInProgress():
            done = dict(self.project.GetRenderJobStatus(job)).get("CompletionPercentage", 0)
            self.log(f"vst: rendering source of '{shot.name}': {done}%")
            time.sleep(POLL_SECONDS)
        status: dict[str, Any] = dict(self.project.GetRenderJobStatus(job))
        if status.get("JobStatus") != "Complete":
            raise BatchError(f"Resolve's render of '{shot.name}' ended {status.get('JobStatus', 'unknown')}: "
                             f"{status.get('Error', 'no reason given')}")
        self.project.DeleteRenderJob(job)
        self.project.SetCurrentTimeline(self.timeline)
        self.media_pool.DeleteTimelines([temporary])
        del self._undo[-3:]
        files = sorted(folder.glob("*.exr"), key=_frame_number)
        expected = shot.count + shot.preroll
        if len(files) != expected:
            raise BatchError(f"Resolve rendered {len(files)} EXR file(s) of '{shot.name}' into {folder}, "
                             f"expected {expected}")
        for index, path in enumerate(files):
            os.replace(path, spec.input_path(index - shot.preroll))

    def stylize(self, client: Client, spec: RenderSpec, shot: Shot) -> None:
        """Run the render's sequence job (the frames travel as EXR files: no imaging library needed here)."""

        def progress(step: Progress) -> None:
            self.log(f"vst: stylized frame {shot.first + step.frame} ({step.done}/{step.total})")

        try:
            spec.check()
            spec.job(client, load=ExrBytes.load).run(spec.frames, progress)
        except (JobError, RenderError) as exc:
            raise BatchError(f"'{shot.name}' {exc}") from exc

    def import_frames(self, pattern: str, count: int) -> MediaPoolItem:
        """Import the stylized frames as one image-sequence clip into the current Media Pool folder."""
        items = self.media_pool.ImportMedia([{"FilePath": pattern, "StartIndex": 0, "EndIndex": count - 1}])
        if not items:
            raise BatchError(f"Resolve could not import {pattern}")
        self._undo.append(lambda: self.media_pool.DeleteClips(items))
        return items[0]

    def add_track(self) -> int:
        """A new video track above the others; returns its index."""
        # the stub wants a sub-track type, which the API documents as used for audio tracks only
        if not self.timeline.AddTrack("video"):  # type: ignore[call-overload]
            raise BatchError("Resolve could not add a video track")
        index = self.timeline.GetTrackCount("video")
        self._undo.append(lambda: self.timeline.DeleteTrack("video", index))
        self.timeline.SetTrackName("video", index, "vst")
        return index

    def place(self, item: MediaPoolItem, shot: Shot, track: int) -> None:
        """Put the stylized clip on `track` at the shot's record frame."""
        clip: MediaPoolClipInfo = {"mediaPoolItem": item, "startFrame": 0, "endFrame": shot.count,
                                   "trackIndex": track, "recordFrame": shot.record}
        # fusionscript-stubs 21.0: this overload's return annotation `[TimelineItem]` is not a type, so mypy drops it
        placed = self.media_pool.AppendToTimeline([clip])  # type: ignore[arg-type]
        if not placed:
            raise BatchError(f"Resolve could not place the stylized '{shot.name}' on video track {track}")

    def rollback(self) -> None:
        """Undo what this run added, newest first; report what could not be undone."""
        while self._undo:
            step = self._undo.pop()
            try:
                step()
            except Exception as exc:  # keep undoing the rest
                self.log(f"vst: could not undo a step after the failure: {exc}")


def build_parser() -> argparse.ArgumentParser:
    """The options of `vst render` that a round trip uses (same names, same meaning)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="folder for the source and stylized EXR frames")
    parser.add_argument("--model", default=None, help="model name or checkpoint path (default: the server's)")
    add_style_options(parser)
    parser.add_argument("--input-colorspace", default=RESOLVE_COLORSPACE, metavar="NAME",
                        help=f"colour space of Resolve's EXR renders (default {RESOLVE_COLORSPACE})")
    parser.add_argument("--highlights", default="preserve", choices=HIGHLIGHT_POLICIES)
    parser.add_argument("--temporal", type=float, nargs="?", const=0.8, default=None, metavar="STRENGTH",
                        help="blend the previous result warped along the motion, 0..1 (flag alone: 0.8)")
    parser.add_argument("--flow-preset", default=TemporalSettings.preset, choices=FLOW_PRESETS)
    parser.add_argument("--no-vectors", action="store_true")
    parser.add_argument("--preroll", type=int, default=0, metavar="N",
                        help="stylize up to N frames of handle before each clip first (temporal mode)")
    add_connection_options(parser)
    parser.set_defaults(layers=None, tile=None)
    return parser


def connect_resolve() -> Resolve:
    """The running Resolve: the `resolve` global inside Resolve, DaVinciResolveScript from outside."""
    main_module = sys.modules.get("__main__")
    resolve = getattr(main_module, "resolve", None)
    if resolve is None:
        try:
            import DaVinciResolveScript  # type: ignore[import-not-found]
        except ImportError:
            raise BatchError("DaVinciResolveScript is not importable: set RESOLVE_SCRIPT_API, RESOLVE_SCRIPT_LIB "
                             "and PYTHONPATH as Resolve's scripting README says") from None
        resolve = DaVinciResolveScript.scriptapp("Resolve")
    if resolve is None:
        raise BatchError("cannot reach DaVinci Resolve: is it running, with external scripting set to Local "
                         "(Preferences > General)? Scripting from outside needs DaVinci Resolve Studio")
    return resolve


def main(argv: list[str] | None = None, resolve: Resolve | None = None) -> int:
    """Entry point: parse the options, run the round trip, report errors in the Console."""
    args = build_parser().parse_args(argv)
    try:
        settings = render_settings(args)
        trip = RoundTrip(resolve or connect_resolve())
        with connect(args) as client:
            trip.run(client, settings, args.work_dir, args.preroll)
    except (VstError, CommandError) as exc:
        print(f"vst: error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
