"""The host side (vst_plugin/, nuke/) runs inside Nuke 14's Python 3.9 (issue 11 item 11).

Syntax and typing rules are checked for 3.9 by ruff (`per-file-target-version` in pyproject.toml); this
checks the standard library calls with vermin, which knows when each function and keyword appeared
(`zip(strict=...)` is 3.10, for example). Annotations such as `str | None` are fine in 3.9 only with
`from __future__ import annotations`, which ruff's FA102 requires there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = [ROOT / "vst_plugin", ROOT / "nuke"]


def test_host_side_needs_no_more_than_python_39() -> None:
    vermin = Path(sys.executable).parent / "vermin"
    done = subprocess.run([str(vermin), "-t=3.9-", "--violations", "--no-tips", *map(str, HOST)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

