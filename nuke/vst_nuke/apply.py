"""The Apply button: stylize the input's frame range in a worker thread, with progress and cancel.

The knobs are read in the main thread when the button is pressed. The worker thread talks to the
server and reports through `nuke.ProgressTask`; everything that touches Nuke (rendering an input
frame with the internal Write, the status line, the Read, messages) runs in the main thread through
`nuke.executeInMainThread` / `nuke.executeInMainThreadWithResult`.
"""

from __future__ import annotations

import threading
from typing import Any

import nuke
from vst_nuke import node as vst_node
from vst_plugin import VstError
from vst_plugin.jobs import JobResult, Progress

_running: dict[str, threading.Thread] = {}


class InputRenderError(VstError):
    """Nuke could not render a frame of the node's input."""


def apply(node: Any) -> threading.Thread | None:
    """Start stylizing the input's frame range; returns the worker thread, or None if it cannot start."""
    name = node.fullName()
    if name in _running and _running[name].is_alive():
        nuke.message(f"{name} is already being applied; cancel it in the progress bar to start again.")
        return None
    try:
        current = vst_node.settings(node)
        first, last = vst_node.input_range(node)
    except VstError as exc:
        _fail(node, str(exc))
        return None
    vst_node.aim_internals(node)
    vst_node.report(node, f"applying frames {first}-{last} ...")
    write = node.node(vst_node.WRITE)
    thread = threading.Thread(target=_work, args=(node, write, current, first, last), name=f"vst-apply-{name}",
                              daemon=True)
    _running[name] = thread
    thread.start()
    return thread


def _work(node: Any, write: Any, current: vst_node.Settings, first: int, last: int) -> None:
    """The worker thread: run the node's job over `first`-`last`, then report in the main thread.

    `node` and `write` are only passed on to main-thread calls, never touched here.
    """
    task = nuke.ProgressTask(f"vst Style Transfer: {current.name}")

    def render_input(number: int) -> None:
        error = nuke.executeInMainThreadWithResult(_render, (write, number))
        if error:
            raise InputRenderError(f"Nuke could not render the input: {error}")

    def progress(step: Progress) -> None:
        task.setProgress(100 * step.done // step.total)
        task.setMessage(f"frame {step.frame} {'unchanged' if step.cached else 'stylized'} ({step.done}/{step.total})")

    try:
        with vst_node.connect(current.address, current.server_key, current.client_key) as client:
            job = vst_node.make_job(current, client, render_input)
            result = job.run(range(first, last + 1), progress, task.isCancelled)
    except VstError as exc:
        nuke.executeInMainThread(_fail, (node, str(exc)))
    else:
        nuke.executeInMainThread(_finish, (node, result, first, last))
    # returning drops the last reference to the task, which closes the progress bar


def _render(write: Any, number: int) -> str | None:
    """Main thread: render one frame of the internal Write; the error text, or None."""
    try:
        nuke.execute(write, number, number)
    except RuntimeError as exc:
        return str(exc) or "the render was cancelled"
    return None


def _finish(node: Any, result: JobResult, first: int, last: int) -> None:
    """Main thread: show the new frames and say what was done."""
    vst_node.show(node)
    done = f"{len(result.rendered)} stylized, {len(result.cached)} unchanged"
    if result.cancelled:
        vst_node.report(node, f"cancelled: frames {first}-{last} partly done ({done})")
    else:
        vst_node.report(node, f"frames {first}-{last} done ({done})")


def _fail(node: Any, message: str) -> None:
    """Main thread: put the error on the node and in front of the user."""
    vst_node.report(node, f"ERROR: {message}")
    nuke.message(f"vst Style Transfer ({node.fullName()}): {message}")
