"""What a render is: input and output sequences, frames, settings and pre-roll, and how it splits.

`RenderSpec` is the one description of a render that the command line, the Nuke node, the Resolve
scripts and farm jobs build. It names its files (`input_path`, `output_path`), checks itself before
anything is sent (`check`), splits into chunks of consecutive frames that each pre-roll on their own
(`chunks`), and runs through a `SequenceJob` on a client (`run`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from vst_plugin.client import Client, VstError
from vst_plugin.jobs import ExrPlanes, JobResult, Plate, Progress, SequenceJob
from vst_plugin.schema import StylizeSettings
from vst_plugin.sequence import frame_path, has_frame_token


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

    def check(self) -> None:
        """Raise RenderError unless the render can start: frames, frame tokens, every input frame on disk."""
        if not self.frames:
            raise RenderError("the render has no frames")
        if self.preroll < 0:
            raise RenderError(f"pre-roll must be 0 or more frames, not {self.preroll}")
        if len(self.frames) > 1 and not (has_frame_token(self.input) and has_frame_token(self.output)):
            raise RenderError("several frames need a frame token (#### or %04d) in both the input and the output")
        missing = [n for n in self.frames if not os.path.isfile(self.input_path(n))]
        if missing:
            shown = ", ".join(f"{n} ({self.input_path(n)})" for n in missing[:5])
            raise RenderError(
                f"{len(missing)} input frame(s) missing: {shown}{' ...' if len(missing) > 5 else ''}"
            )

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
            while available < preroll and os.path.isfile(self.input_path(run[0] - available - 1)):
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
        in_flight: int = 2,
        sequence: str | None = None,
        cache: bool = False,
        reconnect: float = 0.0,
    ) -> SequenceJob:
        """The sequence job of this render on `client`.

        `load(path)` reads an input file as a plate (EXR planes by default, `ExrBytes.load` for hosts
        without an imaging library); `prepare(frame)` runs first when a host must make the input
        file (Nuke renders its input). `sequence` names the server-side sequence (a random id
        otherwise); `cache` skips frames already rendered from the same input and settings;
        `reconnect` is how long to wait for a server that stopped or restarted (SequenceJob).
        """

        def source(number: int) -> Plate:
            if prepare is not None:
                prepare(number)
            return load(self.input_path(number))

        return SequenceJob(
            client, self.settings, source, self.output_path,
            in_flight=in_flight, preroll=self.preroll, sequence=sequence, cache=cache, reconnect=reconnect,
        )

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

