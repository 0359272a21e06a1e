"""Rendering scripts with the node: `nuke -x`, a farm manager, or a Write rendered in the GUI.

`register()` (called by init.py) adds a before-frame-render callback for Write nodes. Before each
frame of a render, every vst node upstream of the Write being rendered stylizes that frame into its
cache folder, where its internal Read then finds it: the frame's input is rendered with the internal
Write, frames already in the cache with the same input and settings are kept, and a frame that does
not follow the last one this node sent is preceded by the node's pre-roll. Each node keeps one
client and job for the whole render, so a chunk of consecutive frames pre-rolls once.

A vst error stops the render with a RuntimeError that names the node and the frame: a farm task fails
loudly instead of writing unstylized frames.

Farm jobs made by `vst submit openjd|deadline --nuke` split this into steps instead (Nuke refuses
to execute a node from inside another node's render callback): they set `VST_FARM_STEP` in the
environment of their two Nuke steps. Then a render aims every vst node's internal Write and Read at
its cache folder before it starts (step `input`: `nuke -x -X NODE.vst_input`), and frames are never
stylized here: step `comp` finds them in the cache, where the job's vst step put them, or fails.
"""

from __future__ import annotations

import os
from typing import Any

import nuke
from vst_nuke import node as vst_node
from vst_plugin import Client, VstError
from vst_plugin.jobs import SequenceJob
from vst_plugin.sequence import frame_path

_jobs: dict[str, tuple[vst_node.Settings, Client, SequenceJob]] = {}


FARM_STEP = "VST_FARM_STEP"
"""Environment variable set by the Nuke steps of a farm job (`input` or `comp`)."""


def register() -> None:
    """Stylize on demand whenever a Write node renders; aim the nodes' internals in farm job steps."""
    nuke.addBeforeRender(before_render, nodeClass="Write")
    nuke.addBeforeFrameRender(before_frame_render, nodeClass="Write")


def before_render() -> None:
    """Callback: in a farm job's Nuke step, aim the vst nodes this render uses at their cache folders."""
    if not os.environ.get(FARM_STEP):
        return
    write = nuke.thisNode()
    if write.name() == vst_node.WRITE:  # `nuke -X NODE.vst_input`: the node rendering its own input
        vst_node.aim_internals(nuke.toNode(write.fullName().rpartition(".")[0]))
        return
    for found in upstream_vst_nodes(write):
        vst_node.aim_internals(found)
        vst_node.show(found)  # the Read covers the input's frames, whatever range was applied last


def before_frame_render() -> None:
    """Callback: stylize the current frame for the vst nodes upstream of the Write being rendered."""
    write = nuke.thisNode()
    if write.name() == vst_node.WRITE:
        return  # a vst node rendering its own input
    frame = int(nuke.frame())
    for found in upstream_vst_nodes(write):
        if os.environ.get(FARM_STEP):
            require_stylized(found, frame)
        else:
            stylize_frame(found, frame)


def require_stylized(node: Any, frame: int) -> None:
    """Farm job step: the frame must be in the node's cache already; raise RuntimeError if it is not."""
    path = frame_path(os.path.join(vst_node.cache_folder(node), vst_node.RESULTS), frame)
    if not os.path.isfile(path):
        raise RuntimeError(f"vst Style Transfer {node.fullName()}: frame {frame} has not been stylized ({path} is "
                           "missing): the farm job's vst step must finish before the comp renders")


def upstream_vst_nodes(start: Any) -> list[Any]:
    """The vst nodes `start` depends on, nearest first."""
    found, seen, queue = [], set(), list(start.dependencies())
    while queue:
        candidate = queue.pop(0)
        if candidate.fullName() in seen:
            continue
        seen.add(candidate.fullName())
        if vst_node.is_vst_node(candidate):
            found.append(candidate)
        queue.extend(candidate.dependencies())
    return found


def stylize_frame(node: Any, frame: int) -> None:
    """Make sure the node's cache holds `frame` for its current settings; raise RuntimeError if it cannot."""
    try:
        job = _job(node)
        if job.run([frame]).rendered:
            vst_node.show(node)
    except VstError as exc:
        vst_node.report(node, f"ERROR: {exc}")
        raise RuntimeError(f"vst Style Transfer {node.fullName()}: {exc}") from None


def _job(node: Any) -> SequenceJob:
    """The node's job for its current settings, made (and the previous one's client closed) when they change."""
    current = vst_node.settings(node)
    name = node.fullName()
    if name in _jobs and _jobs[name][0] == current:
        return _jobs[name][2]
    if name in _jobs:
        _jobs.pop(name)[1].close()
    vst_node.aim_internals(node)
    write = node.node(vst_node.WRITE)
    client = vst_node.connect(current.address, current.server_key, current.client_key)
    job = vst_node.make_job(current, client, lambda number: nuke.execute(write, number, number))
    _jobs[name] = (current, client, job)
    return job
