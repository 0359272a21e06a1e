"""Frame ranges as farm managers take them.

Chunking itself is `vst_plugin.render.RenderSpec.chunks` (runs of N consecutive frames, each with its
own pre-roll: keep chunks at least 5x the pre-roll); this module writes a chunk's frames as a
`--frames` value and checks that a job's frames are one range a farm manager can chunk.
"""

from __future__ import annotations

from vst_plugin.sequence import SequenceError, parse_frames


def range_text(frames: tuple[int, ...]) -> str:
    """Frames as a `--frames` value: ``A-B`` for consecutive frames, a list otherwise."""
    if frames == tuple(range(frames[0], frames[-1] + 1)):
        return f"{frames[0]}-{frames[-1]}"
    return ",".join(str(n) for n in frames)


def contiguous_range(spec: str) -> tuple[int, int]:
    """The first and last frame of a frame range that farm managers can chunk: one run of consecutive frames."""
    frames = parse_frames(spec)
    if frames != list(range(frames[0], frames[0] + len(frames))):
        raise SequenceError(
            f"frame range {spec!r}: farm managers chunk one run of consecutive frames such as 1001-1100; "
            "submit other ranges as separate jobs"
        )
    return frames[0], frames[-1]
