"""A fake of exactly the DaVinci Resolve scripting calls resolve/vst_batch.py makes (listed in
tests/test_resolve_batch.py). Media are real EXR frames on disk; "rendering" a timeline copies the
frames it holds into the render folder under Resolve-like names (CustomName + 8-digit frame)."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(eq=False)
class MediaPoolItem:
    name: str
    frames: list[Path]
    """Source frame i (from 0) is frames[i]."""


@dataclass(eq=False)
class TimelineItem:
    media: MediaPoolItem | None
    name: str
    start: int
    """Record frame of the first frame on the timeline."""
    source_start: int
    duration: int

    def GetMediaPoolItem(self) -> MediaPoolItem | None:  # noqa: N802 (Resolve's names)
        return self.media

    def GetName(self) -> str:  # noqa: N802
        return self.name

    def GetStart(self, subframe: bool = False) -> int:  # noqa: N802
        return self.start

    def GetEnd(self, subframe: bool = False) -> int:  # noqa: N802 (exclusive, as Resolve's)
        return self.start + self.duration

    def GetSourceStartFrame(self) -> int:  # noqa: N802
        return self.source_start

    def GetLeftOffset(self, subframe: bool = False) -> int:  # noqa: N802
        return self.source_start


@dataclass(eq=False)
class Timeline:
    name: str
    start_frame: int = 86400
    tracks: list[list[TimelineItem]] = field(default_factory=lambda: [[]])
    track_names: list[str] = field(default_factory=lambda: ["Video 1"])
    marks: dict[str, dict[str, int]] = field(default_factory=dict)
    playhead: int = 86400

    def GetMarkInOut(self) -> dict[str, dict[str, int]]:  # noqa: N802
        return dict(self.marks)

    def GetCurrentVideoItem(self) -> TimelineItem | None:  # noqa: N802
        for track in reversed(self.tracks):
            for item in track:
                if item.start <= self.playhead < item.start + item.duration:
                    return item
        return None

    def GetStartFrame(self) -> int:  # noqa: N802
        return self.start_frame

    def GetTrackCount(self, kind: str) -> int:  # noqa: N802
        assert kind == "video"
        return len(self.tracks)

    def GetItemListInTrack(self, kind: str, index: int) -> list[TimelineItem]:  # noqa: N802
        assert kind == "video"
        return list(self.tracks[index - 1])

    def AddTrack(self, kind: str) -> bool:  # noqa: N802
        assert kind == "video"
        self.tracks.append([])
        self.track_names.append(f"Video {len(self.tracks)}")
        return True

    def DeleteTrack(self, kind: str, index: int) -> bool:  # noqa: N802
        assert kind == "video"
        del self.tracks[index - 1], self.track_names[index - 1]
        return True

    def SetTrackName(self, kind: str, index: int, name: str) -> bool:  # noqa: N802
        self.track_names[index - 1] = name
        return True


class MediaPool:
    def __init__(self, project: Project):
        self.project = project
        self.clips: list[MediaPoolItem] = []
        self.refuse_append = False

    def CreateTimelineFromClips(self, name: str, infos: list[dict[str, Any]]) -> Timeline:  # noqa: N802
        timeline = Timeline(name)
        record = timeline.start_frame
        for info in infos:
            length = info["endFrame"] - info["startFrame"]  # endFrame exclusive
            timeline.tracks[0].append(TimelineItem(info["mediaPoolItem"], info["mediaPoolItem"].name, record,
                                                   info["startFrame"], length))
            record += length
        self.project.timelines.append(timeline)
        return timeline

    def DeleteTimelines(self, timelines: list[Timeline]) -> bool:  # noqa: N802
        for timeline in timelines:
            assert timeline is not self.project.current, "Resolve keeps the current timeline"
            self.project.timelines.remove(timeline)
        return True

    def ImportMedia(self, infos: list[dict[str, Any]]) -> list[MediaPoolItem]:  # noqa: N802
        items = []
        for info in infos:
            pattern = info["FilePath"]
            frames = [Path(pattern % n) for n in range(info["StartIndex"], info["EndIndex"] + 1)]
            if not all(frame.is_file() for frame in frames):
                return []
            items.append(MediaPoolItem(Path(pattern).name, frames))
        self.clips.extend(items)
        return items

    def DeleteClips(self, clips: list[MediaPoolItem]) -> bool:  # noqa: N802
        for clip in clips:
            self.clips.remove(clip)
        return True

    def AppendToTimeline(self, infos: list[dict[str, Any]]) -> list[TimelineItem]:  # noqa: N802
        if self.refuse_append:
            return []
        timeline = self.project.current
        placed = []
        for info in infos:
            item = TimelineItem(info["mediaPoolItem"], info["mediaPoolItem"].name, info["recordFrame"],
                                info["startFrame"], info["endFrame"] - info["startFrame"])
            timeline.tracks[info["trackIndex"] - 1].append(item)
            placed.append(item)
        return placed


class Project:
    def __init__(self, timeline: Timeline):
        self.timelines = [timeline]
        self.current = timeline
        self.media_pool = MediaPool(self)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.format: tuple[str, str] | None = None
        self.settings: dict[str, Any] = {}
        self._rendering: list[str] = []
        self._polls = 0

    def GetMediaPool(self) -> MediaPool:  # noqa: N802
        return self.media_pool

    def GetCurrentTimeline(self) -> Timeline:  # noqa: N802
        return self.current

    def SetCurrentTimeline(self, timeline: Timeline) -> bool:  # noqa: N802
        if timeline not in self.timelines:
            return False
        self.current = timeline
        return True

    def GetRenderCodecs(self, render_format: str) -> dict[str, str]:  # noqa: N802
        assert render_format == "exr"
        return {"RGB float (uncompressed)": "RGBFloat", "RGB half (ZIP)": "RGBHalfZIP"}

    def SetCurrentRenderFormatAndCodec(self, render_format: str, codec: str) -> bool:  # noqa: N802
        self.format = (render_format, codec)
        return True

    def SetRenderSettings(self, settings: dict[str, Any]) -> bool:  # noqa: N802
        self.settings = dict(settings)
        return True

    def AddRenderJob(self) -> str:  # noqa: N802
        job = f"job-{len(self.jobs) + 1}"
        self.jobs[job] = {"timeline": self.current, "settings": dict(self.settings), "format": self.format,
                          "status": {"JobStatus": "Ready", "CompletionPercentage": 0}}
        return job

    def DeleteRenderJob(self, job: str) -> bool:  # noqa: N802
        return self.jobs.pop(job, None) is not None

    def StartRendering(self, jobs: list[str], interactive: bool = False) -> bool:  # noqa: N802
        self._rendering, self._polls = list(jobs), 0
        return True

    def IsRenderingInProgress(self) -> bool:  # noqa: N802
        """The first poll finds the render running; the second finds it done (and the files written)."""
        if not self._rendering:
            return False
        self._polls += 1
        if self._polls < 2:
            return True
        for job in self._rendering:
            self._render(self.jobs[job])
        self._rendering = []
        return False

    def GetRenderJobStatus(self, job: str) -> dict[str, Any]:  # noqa: N802
        return dict(self.jobs[job]["status"])

    def _render(self, job: dict[str, Any]) -> None:
        settings, timeline = job["settings"], job["timeline"]
        assert job["format"][0] == "exr" and settings["SelectAllFrames"] and not settings["ExportAudio"]
        folder = Path(settings["TargetDir"])
        frame = timeline.start_frame
        for item in timeline.tracks[0]:
            for offset in range(item.duration):
                source = item.media.frames[item.source_start + offset]
                shutil.copyfile(source, folder / f"{settings['CustomName']}{frame:08d}.exr")
                frame += 1
        job["status"] = {"JobStatus": "Complete", "CompletionPercentage": 100}


class ProjectManager:
    def __init__(self, project: Project):
        self.project = project

    def GetCurrentProject(self) -> Project:  # noqa: N802
        return self.project


class Resolve:
    def __init__(self, project: Project):
        self.manager = ProjectManager(project)

    def GetProjectManager(self) -> ProjectManager:  # noqa: N802
        return self.manager


def sequence_media(pattern: str, numbers: range) -> MediaPoolItem:
    """A media pool clip over the frames `numbers` of a #### pattern (source frame 0 = numbers[0])."""
    return MediaPoolItem(Path(pattern).name, [Path(re.sub("#+", f"{n:04d}", pattern)) for n in numbers])
