"""What a render is: input and output sequences, frames, settings and pre-roll, and how it splits.

`RenderSpec` is the one description of a render that the command line, the Nuke node, the Resolve
scripts and farm jobs build. It names its files (`input_path`, `output_path`), checks itself before
anything is sent (`check`), splits into chunks of consecutive frames that each pre-roll on their own
(`chunks`), and runs through a `SequenceJob` on a client (`run`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from vst_plugin.client import Client, VstError
from vst_plugin.jobs import ExrPlanes, JobResult, Plate, Progress, SequenceJob, key_path
from vst_plugin.schema import StylizeSettings
from vst_plugin.sequence import SequenceError, frame_path, frames_on_disk, has_frame_token, is_movie

RESUME_PREROLL = 8
"""Pre-roll of a temporal render resumed mid-way that has none of its own: the blend has settled by then."""


class RenderError(VstError):
    """A render cannot start as described (missing inputs, patterns without frame tokens, bad chunking)."""


@dataclass(frozen=True)
class RenderSpec:
    """One render: `frames` of the `input` sequence stylized with `settings` into the `output` sequence.

    `input` and `output` are sequence patterns (``plate.####.exr``, ``plate.%04d.exr``) or, for a
    single frame, plain file names. `preroll` frames before the first frame of each contiguous run
    are stylized and discarded, so a temporal render starts settled (as many as exist on disk).
    """

    input: str
    output: str
    frames: tuple[int, ...]
    settings: StylizeSettings
    preroll: int = 0

    def input_path(self, frame: int) -> str:
        """The input file of a frame."""
        return frame_path(self.input, frame) if has_frame_token(self.input) else self.input

    def output_path(self, frame: int) -> str:
        """The output file of a frame."""
        return frame_path(self.output, frame) if has_frame_token(self.output) else self.output

    def input_exists(self, frame: int) -> bool:
        """Whether the input has `frame`: its file is on disk, or it is a movie frame (numbered from 1)."""
        if is_movie(self.input):
            return frame >= 1 and os.path.isfile(self.input)
        return os.path.isfile(self.input_path(frame))

    def check(self) -> None:
        """Raise RenderError unless the render can start: frames, frame tokens, every input frame on disk,
        and no output that is one of the input files (links resolved): nothing is written before this."""
        if not self.frames:
            raise RenderError("the render has no frames")
        if self.preroll < 0:
            raise RenderError(f"pre-roll must be 0 or more frames, not {self.preroll}")
        if len(self.frames) > 1:
            for name, side in ((self.input, "input"), (self.output, "output")):
                if not (has_frame_token(name) or is_movie(name)):
                    raise RenderError(f"several frames need a frame token (#### or %04d) in the {side}, "
                                      f"or a movie: {name}")
        missing = [n for n in self.frames if not self.input_exists(n)]
        if missing:
            shown = ", ".join(f"{n} ({self.input_path(n)})" for n in missing[:5])
            raise RenderError(
                f"{len(missing)} input frame(s) missing: {shown}{' ...' if len(missing) > 5 else ''}"
            )
        self._check_not_overwriting()

    def _check_not_overwriting(self) -> None:
        inputs: dict[tuple[int, int], str] = {}
        if has_frame_token(self.input):
            try:
                paths = [self.input_path(n) for n in frames_on_disk(self.input)]
            except SequenceError:
                paths = []
        else:
            paths = [self.input]
        for path in paths:
            with contextlib.suppress(OSError):
                info = os.stat(path)
                inputs[(info.st_dev, info.st_ino)] = path
        for target in dict.fromkeys(self.output_path(n) for n in self.frames):
            try:
                info = os.stat(target)
            except OSError:
                continue
            same = inputs.get((info.st_dev, info.st_ino))
            if same is not None:
                raise RenderError(f"the output {target} is the input file {same}: it would overwrite the plates. "
                                  "Write to another file or folder.")

    def runs(self) -> list[list[int]]:
        """The frames as runs of consecutive numbers, in order."""
        runs: list[list[int]] = []
        for number in self.frames:
            if runs and number == runs[-1][-1] + 1:
                runs[-1].append(number)
            else:
                runs.append([number])
        return runs

    def available_preroll(self) -> int:
        """The pre-roll every run can have: at most `preroll` input frames that exist before each run."""
        preroll = self.preroll
        for run in self.runs():
            available = 0
            while available < preroll and self.input_exists(run[0] - available - 1):
                available += 1
            preroll = available
        return preroll

    def chunks(self, size: int) -> list[RenderSpec]:
        """Split into renders of at most `size` consecutive frames, each with this render's pre-roll.

        Each chunk writes only its own frames and pre-rolls from the frames before it, so chunks can
        run anywhere, in any order, and join without a pop (recommended: chunks of at least 5x the
        pre-roll).
        """
        if size < 1:
            raise RenderError(f"a chunk must hold at least 1 frame, not {size}")
        return [
            replace(self, frames=tuple(run[start : start + size]))
            for run in self.runs()
            for start in range(0, len(run), size)
        ]

    def job(
        self,
        client: Client,
        *,
        load: Callable[[str], Plate] = ExrPlanes.load,
        prepare: Callable[[int], None] | None = None,
        source: Callable[[int], Plate] | None = None,
        in_flight: int = 2,
        sequence: str | None = None,
        cache: bool = False,
        reconnect: float = 0.0,
    ) -> SequenceJob:
        """The sequence job of this render on `client`.

        `load(path)` reads an input file as a plate (EXR planes by default, `ExrBytes.load` for hosts
        without an imaging library); `prepare(frame)` runs first when a host must make the input
        file (Nuke renders its input); `source(frame)` replaces both where a frame is not one file
        (movies, see vst_plugin/footage.py). `sequence` names the server-side sequence (a random id
        otherwise); `cache` skips frames already rendered from the same input and settings;
        `reconnect` is how long to wait for a server that stopped or restarted (SequenceJob).
        """

        def from_file(number: int) -> Plate:
            if prepare is not None:
                prepare(number)
            return load(self.input_path(number))

        return SequenceJob(
            client, self.settings, source or from_file, self.output_path,
            in_flight=in_flight, preroll=self.preroll, sequence=sequence, cache=cache, reconnect=reconnect,
        )

    def resume(self, done: Callable[[int], bool]) -> RenderSpec:
        """The render that finishes this one, keeping the frames for which `done(frame)` holds.

        Without temporal settings every frame stands alone: the same frames, for a job whose cache
        skips the done ones. A temporal render restarts at the first frame not done and renders every
        frame after it again (each result depends on the one before; their cache keys are removed
        first), after this render's pre-roll, or RESUME_PREROLL frames when it has none.
        """
        if self.settings.temporal is None:
            return self
        first = next((index for index, number in enumerate(self.frames) if not done(number)), len(self.frames))
        for number in self.frames[first:]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(key_path(self.output_path(number)))
        if first == 0:
            return self
        return replace(self, frames=self.frames[first:], preroll=self.preroll or RESUME_PREROLL)

    def run(
        self,
        client: Client,
        *,
        in_flight: int = 2,
        progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        reconnect: float = 0.0,
    ) -> JobResult:
        """Check the render and stylize its frames on `client` (pre-roll shortened to what exists)."""
        self.check()
        spec = replace(self, preroll=self.available_preroll())
        return spec.job(client, in_flight=in_flight, reconnect=reconnect).run(self.frames, progress, cancelled)

