"""Image sequence patterns and frame ranges, as compositors write them (through `fileseq`).

A pattern holds exactly one frame token:

* ``#`` runs (``plate.####.exr``) and ``@`` runs (``plate.@@@@.exr``): the padding is the number of
  characters, as in Nuke (fileseq's ``PAD_STYLE_HASH1``; fileseq's default, and RV's, reads one ``#``
  as four digits);
* printf style ``%d`` (no padding) and ``%0Nd`` (padded to N digits), as in ``plate.%04d.exr``.

Frame numbers are zero padded like printf's ``%0Nd``: the padding is the total width and a negative
frame keeps its sign in front, so frame -1 with ``####`` gives ``-001``; a number wider than the
padding is written in full. On disk, a token matches frames of its padding or wider (``#`` matches
1, 2 and 10).

Frame ranges are fileseq's: comma separated items ``5``, ``1-10``, ``1-10x2`` (every 2nd frame),
``1-10y2`` (the frames ``1-10x2`` leaves out), ``1-10:2`` (``1-10x2``, then ``1-10x1`` of what is left:
coarse to fine); frames may be negative (``-3-2`` is -3 to 2, ``-10--5`` is -10 to -5). The frames
keep the given order, with repeats dropped. Stricter than fileseq alone: an empty item, a reversed
range, a sub-frame or a frame not written in ASCII digits is an error rather than a guess.
"""

from __future__ import annotations

import os
import re

import fileseq

__all__ = [
    "MOVIE_EXTENSIONS",
    "is_movie",
    "SequenceError",
    "MAX_FRAMES",
    "parse_frames",
    "frame_path",
    "has_frame_token",
    "frames_on_disk",
]

MAX_FRAMES = 1_000_000
"""Most frames a range may expand to; a typo such as ``1-1000000000`` fails instead of eating memory."""

MOVIE_EXTENSIONS = (".mov", ".mp4", ".m4v", ".mxf", ".mkv", ".avi")
"""A movie is a sequence in one file: its frames are numbered from 1, as Nuke numbers them."""

_TOKEN = re.compile(r"#+|@+|%([0-9]*)d")
_ITEM = re.compile(r"(-?[0-9]+)(?:-(-?[0-9]+)(?:([xy:])([0-9]+))?)?", re.ASCII)


class SequenceError(ValueError):
    """A frame range or a sequence pattern is malformed."""


def parse_frames(spec: str) -> list[int]:
    """Expand a frame range such as ``"1-10,15,20-30x2"`` into frame numbers.

    Items keep their order and repeated frames are dropped (first occurrence kept). Raises
    SequenceError on an empty spec, an empty item, garbage, a reversed range or a zero step.
    """
    if not isinstance(spec, str):
        raise SequenceError(f"frame range must be a string, not {type(spec).__name__}")
    if not spec.strip():
        raise SequenceError("empty frame range")
    count = 0
    for item in spec.split(","):
        text = item.strip()
        match = _ITEM.fullmatch(text)
        if not match:
            if not text:
                raise SequenceError(f"frame range {spec!r} has an empty item")
            raise SequenceError(
                f"frame range {spec!r}: cannot read {text!r} (expected a frame such as 5, "
                "a range such as 1-10 or a stepped range such as 1-10x2)"
            )
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise SequenceError(f"frame range {spec!r}: {text!r} is reversed ({first} > {last})")
        if match.group(4) is not None and int(match.group(4)) == 0:
            raise SequenceError(f"frame range {spec!r}: {text!r} has a step of 0")
        count += last - first + 1
        if count > MAX_FRAMES:
            raise SequenceError(f"frame range {spec!r} has more than {MAX_FRAMES} frames")
    try:
        return [int(frame) for frame in fileseq.FrameSet(",".join(part.strip() for part in spec.split(",")))]
    except fileseq.FileSeqException as exc:
        raise SequenceError(f"frame range {spec!r}: {exc}") from None


def is_movie(path: str) -> bool:
    """True if `path` names a movie (by extension)."""
    return os.path.splitext(path)[1].lower() in MOVIE_EXTENSIONS


def has_frame_token(pattern: str) -> bool:
    """True if `pattern` holds a frame token (``#``, ``@`` or ``%d`` / ``%0Nd``)."""
    return _TOKEN.search(pattern) is not None


def _sequence(pattern: str) -> fileseq.FileSequence:
    """The fileseq sequence of a pattern with exactly one frame token, or SequenceError."""
    tokens = list(_TOKEN.finditer(pattern))
    if not tokens:
        raise SequenceError(f"{pattern!r} has no frame number token (#### or %04d): it cannot name several frames")
    if len(tokens) > 1:
        found = ", ".join(repr(token.group(0)) for token in tokens)
        raise SequenceError(f"{pattern!r} has {len(tokens)} frame number tokens ({found}); use exactly one")
    digits = tokens[0].group(1)
    if digits and not digits.startswith("0"):
        text = tokens[0].group(0)
        raise SequenceError(f"{pattern!r}: {text!r} pads with spaces; use %0{digits}d for a zero padded frame")
    return fileseq.FileSequence(pattern, pad_style=fileseq.PAD_STYLE_HASH1, allow_subframes=False)


def frame_path(pattern: str, frame: int) -> str:
    """Return `pattern` with its frame token replaced by `frame`, zero padded to the token's width.

    Raises SequenceError when the pattern has no frame token or more than one.
    """
    sequence = _sequence(pattern)
    if isinstance(frame, bool) or not isinstance(frame, int):
        raise SequenceError(f"frame number must be an int, not {frame!r}")
    return sequence.frame(frame)


def frames_on_disk(pattern: str) -> list[int]:
    """The frame numbers of the files matching `pattern` on disk, in order; SequenceError if none."""
    _sequence(pattern)
    try:
        found = fileseq.findSequenceOnDisk(pattern, pad_style=fileseq.PAD_STYLE_HASH1, strictPadding=True)
    except fileseq.FileSeqException:
        raise SequenceError(f"no frames on disk match {pattern!r}") from None
    return sorted(int(frame) for frame in found.frameSet() or ())
