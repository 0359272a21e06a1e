"""Image sequence patterns and frame ranges, as compositors write them.

A pattern holds exactly one frame token:

* ``#`` runs (``plate.####.exr``) and ``@`` runs (``plate.@@@@.exr``): the padding is the number of
  characters;
* printf style ``%d`` (no padding) and ``%0Nd`` (padded to N digits), as in ``plate.%04d.exr``.

Frame numbers are zero padded like printf's ``%0Nd``: the padding is the total width and a negative
frame keeps its sign in front, so frame -1 with ``####`` gives ``-001``; a number wider than the
padding is written in full.

Frame ranges are comma separated items: ``5``, ``1-10``, ``1-10x2`` (every 2nd frame); frames may be
negative (``-3-2`` is -3 to 2, ``-10--5`` is -10 to -5). The frames keep the given order, with
repeats dropped.
"""

from __future__ import annotations

import re

__all__ = ["SequenceError", "MAX_FRAMES", "parse_frames", "frame_path", "has_frame_token"]

MAX_FRAMES = 1_000_000
"""Most frames a range may expand to; a typo such as ``1-1000000000`` fails instead of eating memory."""

_TOKEN = re.compile(r"#+|@+|%([0-9]*)d")
_ITEM = re.compile(r"(-?[0-9]+)(?:-(-?[0-9]+)(?:x([0-9]+))?)?")


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
    frames: dict[int, None] = {}
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
        step = 1 if match.group(3) is None else int(match.group(3))
        if last < first:
            raise SequenceError(f"frame range {spec!r}: {text!r} is reversed ({first} > {last})")
        if step <= 0:
            raise SequenceError(f"frame range {spec!r}: {text!r} has a step of 0")
        if len(frames) + (last - first) // step + 1 > MAX_FRAMES:
            raise SequenceError(f"frame range {spec!r} has more than {MAX_FRAMES} frames")
        frames.update(dict.fromkeys(range(first, last + 1, step)))
    return list(frames)


def has_frame_token(pattern: str) -> bool:
    """True if `pattern` holds a frame token (``#``, ``@`` or ``%d`` / ``%0Nd``)."""
    return _TOKEN.search(pattern) is not None


def frame_path(pattern: str, frame: int) -> str:
    """Return `pattern` with its frame token replaced by `frame`, zero padded to the token's width.

    Raises SequenceError when the pattern has no frame token or more than one.
    """
    tokens = list(_TOKEN.finditer(pattern))
    if not tokens:
        raise SequenceError(f"{pattern!r} has no frame number token (#### or %04d): it cannot name several frames")
    if len(tokens) > 1:
        found = ", ".join(repr(token.group(0)) for token in tokens)
        raise SequenceError(f"{pattern!r} has {len(tokens)} frame number tokens ({found}); use exactly one")
    if isinstance(frame, bool) or not isinstance(frame, int):
        raise SequenceError(f"frame number must be an int, not {frame!r}")
    token = tokens[0]
    text = token.group(0)
    if text[0] in "#@":
        padding = len(text)
    else:
        digits = token.group(1)
        padding = int(digits) if digits else 0
        if digits and not digits.startswith("0"):
            raise SequenceError(f"{pattern!r}: {text!r} pads with spaces; use %0{digits}d for a zero padded frame")
    return f"{pattern[: token.start()]}{frame:0{padding}d}{pattern[token.end() :]}"
