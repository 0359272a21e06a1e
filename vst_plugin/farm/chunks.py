"""A render job split into chunks: runs of N frames, each rendering its pre-roll before its first frame.

In temporal mode a frame's result depends on the frames before it; a chunk that starts cold pops. So
each chunk renders the `preroll` frames before its first one (when the plates have them) and writes
only its own frames. The pre-roll costs `preroll / size` extra work per chunk: keep chunks at least
5x the pre-roll.
"""

from __future__ import annotations

from dataclasses import dataclass

from vst_plugin.sequence import SequenceError, parse_frames


@dataclass(frozen=True)
class Chunk:
    """Frames one farm task writes, in order."""

    frames: tuple[int, ...]

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    @property
    def range(self) -> str:
        """The frames as a `--frames` value: ``A-B`` for consecutive frames, a list otherwise."""
        if self.frames == tuple(range(self.first, self.last + 1)):
            return f"{self.first}-{self.last}"
        return ",".join(str(n) for n in self.frames)


def split(frames: list[int], size: int) -> list[Chunk]:
    """`frames` in chunks of `size` frames (the last one may be shorter)."""
    if size < 1:
        raise SequenceError(f"a chunk needs at least 1 frame, not {size}")
    return [Chunk(tuple(frames[i : i + size])) for i in range(0, len(frames), size)]


def contiguous_range(spec: str) -> tuple[int, int]:
    """The first and last frame of a frame range that farm managers can chunk: one run of consecutive frames."""
    frames = parse_frames(spec)
    if frames != list(range(frames[0], frames[0] + len(frames))):
        raise SequenceError(
            f"frame range {spec!r}: farm managers chunk one run of consecutive frames such as 1001-1100; "
            "submit other ranges as separate jobs"
        )
    return frames[0], frames[-1]
