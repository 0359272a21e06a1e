"""The last step of every farm job: each expected frame exists and reads as a complete image."""

from __future__ import annotations

import os
from collections.abc import Callable

from vst_plugin.exr import ExrError, read_exr
from vst_plugin.files import remove_temporaries
from vst_plugin.jobs import key_path


def problems(output: Callable[[int], str], frames: list[int]) -> dict[int, str]:
    """Frames whose output is missing or unreadable, each with the reason (empty when all are complete).

    Every file is read in full (header and every pixel of every part, OpenImageIO), so a truncated or
    damaged frame counts as missing.
    """
    found: dict[int, str] = {}
    for number in frames:
        path = output(number)
        if not os.path.isfile(path):
            found[number] = f"missing: {path}"
            continue
        try:
            read_exr(path)
        except ExrError as exc:
            found[number] = f"unreadable: {exc}"
    return found


def remove_leftovers(output: Callable[[int], str], frames: list[int]) -> int:
    """Remove the temporary files writers killed mid-frame left beside the frames and their cache-key
    sidecars; return how many. Only for a finished job: a writer still running would lose its file."""
    return sum(remove_temporaries(path) for number in frames for path in (output(number), key_path(output(number))))


def report(found: dict[int, str], total: int) -> str:
    """A summary of `problems` for the job's log."""
    if not found:
        return f"all {total} frame(s) present and complete"
    lines = [f"{len(found)} of {total} frame(s) missing or incomplete:"]
    lines += [f"  {number}: {reason}" for number, reason in sorted(found.items())]
    return "\n".join(lines)
