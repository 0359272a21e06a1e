"""The one table from server exceptions to protocol error codes (vst_plugin/schema.py ERROR_CODES)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from server.colour import ColourError
from server.models import ModelError, ParamError, UnknownModelError, UnsafeCheckpointError
from server.pipeline import PipelineError
from vst_plugin import protocol
from vst_plugin.exr import ExrError
from vst_plugin.schema import ProtocolError

log = logging.getLogger("vst.server")

OUT_OF_MEMORY = (
    "the device ran out of memory for this frame, even in tiles down to 32 px; free GPU memory "
    "(unload models) or use a smaller frame"
)

_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (ExrError, "bad_exr"),
    (PipelineError, "bad_param"),
    (ColourError, "bad_param"),
    (ParamError, "bad_param"),
    (UnknownModelError, "unknown_model"),
    (UnsafeCheckpointError, "unsafe_model"),
    (ModelError, "model_error"),
)
"""Checked in order: the first class an exception is an instance of gives its code."""


MAX_MESSAGE = 2000
"""Longest error message sent back (messages may quote what a client sent)."""


def error_reply(header: dict[str, Any] | None, exc: BaseException) -> dict[str, Any]:
    """The error reply to a request that raised `exc`; anything unexpected is a server bug (`internal`)."""
    if isinstance(exc, ProtocolError):
        return _reply(exc.header or header, exc.code, exc.message)
    if isinstance(exc, torch.OutOfMemoryError):
        return _reply(header, "model_error", OUT_OF_MEMORY)
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return _reply(header, code, str(exc))
    log.error("request %r failed", (header or {}).get("id"), exc_info=exc)
    return _reply(header, "internal", f"{type(exc).__name__}: {exc}")


def _reply(header: dict[str, Any] | None, code: str, message: str) -> dict[str, Any]:
    """An error reply whose message packs (whatever bytes a file name held) and stays short."""
    text = message.encode("utf-8", errors="replace").decode("utf-8")
    text = text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
    return protocol.error_reply(header, code, text)
