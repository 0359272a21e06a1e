"""Host-side vst library: request schema, wire protocol, client, frames, sequence jobs, renders.

Imports no torch, no imaging library and nothing of the server. The names below load on first use, so
`vst_plugin.schema` can be imported by itself (no numpy, no ZeroMQ).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Client": "vst_plugin.client",
    "Pending": "vst_plugin.client",
    "ServerError": "vst_plugin.client",
    "ServerUnavailable": "vst_plugin.client",
    "VstError": "vst_plugin.client",
    "Frame": "vst_plugin.frame",
    "Part": "vst_plugin.frame",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vst_plugin' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
