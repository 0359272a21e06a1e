"""Output files written safely: temporary names beside the target, leftovers of killed renders, full disks.

Every output (EXR, image, movie, cache key) is written under a temporary name beside its target and
renamed over it when complete: ``.<name>.tmp-<host>-<pid>-<8 hex><ext>`` (the extension last, so that
writers choosing the format from the name still find it). A render that is killed leaves such a file
behind; `remove_stale_temporaries` deletes those of processes of this host that no longer run, so the
next render into the folder cleans up without touching the files of a render still writing there.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import secrets
import socket

__all__ = ["temporary_path", "remove_stale_temporaries", "remove_temporaries", "describe_os_error", "write_failure"]

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp-(?:(?P<host>[A-Za-z0-9_.]+)-)?(?P<pid>[0-9]+)-[0-9a-f]{8}(?:\.[^.]*)?")


def temporary_path(target: str) -> str:
    """A fresh temporary name beside `target` (same folder, same extension)."""
    directory, name = os.path.split(os.path.abspath(target))
    extension = os.path.splitext(name)[1]
    return os.path.join(directory, f"{_prefix(name)}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{extension}")


def _prefix(name: str) -> str:
    """How every temporary name of the file `name` begins."""
    return f".{name}.tmp-"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the temporary files in `directory` left by processes of this host that have ended.

    Files of other hosts (a shared render folder) and of running processes are kept. Returns the paths
    removed; a folder that does not exist has none.
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if not match or match.group("host") not in (None, _HOST) or _running(int(match.group("pid"))):
            continue
        path = os.path.join(directory, name)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed.append(path)
    return removed


def remove_temporaries(target: str) -> int:
    """Delete every temporary file of `target`, whoever wrote it; returns how many.

    Only for a job known to be finished: a writer still running would lose its file.
    """
    directory, name = os.path.split(os.path.abspath(target))
    removed = 0
    for leftover in glob.glob(os.path.join(glob.escape(directory), glob.escape(_prefix(name)) + "*")):
        with contextlib.suppress(OSError):
            os.remove(leftover)
            removed += 1
    return removed


def describe_os_error(exc: OSError) -> str:
    """The reason of an OSError as a compositor reads it ("no space left on the device" for ENOSPC)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    return exc.strerror or str(exc)


def write_failure(target: str, message: str, size: int) -> str:
    """The reason a write of about `size` bytes to `target` failed, from a library's `message`.

    Imaging and movie libraries often lose the errno ("File output failed"); when the folder has less
    free space than the write needed, the reason is a full disk and it is said so.
    """
    try:
        info = os.statvfs(os.path.dirname(os.path.abspath(target)) or ".")
        free = info.f_bavail * info.f_frsize
    except OSError:
        return message
    if "No space left" in message or free < size:
        return f"no space left on the device ({free // 1024} KiB free)"
    return message
