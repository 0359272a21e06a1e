"""Temporal stability: warp the previous stylized frame along the motion and blend it in.

Per sequence (client + sequence id) and per colour layer:

1. When a frame is accepted, the request loop admits it to its session (server/sessions.py: it
   continues the sequence when its frame number is the previous one + 1, and starts it anew after a
   jump, a repeat, a scrub or a `reset`), and hands the motion analysis of the frame, against the
   previous frame's analysis, to a thread pool (`MotionAnalysis`) ahead of the model worker:
   the backward flow (this frame -> the previous one) and an occlusion mask from the forward-backward
   consistency check and motion boundaries (`server.flow.occlusion`). The motion comes from the
   host's motion vectors when the frame carries them, from OpenCV DIS optical flow on the inputs
   otherwise.
2. After the network has stylized the layer, the previous *result* is warped into this frame and
   blended into the pixels that are visible in both frames:
   ``out = where(visible, (1 - s) * stylized + s * warped_previous, stylized)``, with ``s`` the
   temporal strength. The result is kept for the next frame, so the blend is recursive.

Motion vectors follow Nuke's convention by default: ``backward.u/backward.v`` of frame t point to
frame t-1, ``forward.u/forward.v`` to frame t+1, in pixels, with v pointing up (``y_up``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from server import flow
from vst_plugin.frame import ColourLayer, Frame, Window, colour_layers, layer_view, motion_vectors, window_size
from vst_plugin.schema import TemporalSettings


@dataclass
class LayerMotion:
    """What the analysis of one layer of one frame leaves for the blend and for the next frame."""

    grey: np.ndarray
    window: Window
    forward: np.ndarray | None
    """Host vectors to the next frame (flow convention), for the next frame's consistency check."""
    to_previous: np.ndarray | None = None
    """Flow from this layer's pixels into the previous frame's layer (its local pixel coordinates)."""
    visible: np.ndarray | None = None
    """Pixels visible in both frames (not occluded, not on a motion boundary, inside the previous)."""


Analysis = tuple[Frame, dict[str, LayerMotion]]


def layer_key(layer: ColourLayer) -> str:
    """The name under which a layer's memory is kept (the same as the model state's)."""
    return f"{layer.part}:{','.join(layer.rgb)}"


class MotionAnalysis:
    """A thread pool that analyses the motion of temporal frames ahead of the model worker."""

    def __init__(self, workers: int = 2):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vst-flow")

    def close(self) -> None:
        """Finish analyses under way and stop the pool."""
        self._pool.shutdown(wait=True)

    def analyse(
        self,
        previous: Future[Analysis] | None,
        load: Callable[[], Frame],
        layers: list[str] | None,
        settings: TemporalSettings,
    ) -> Future[Analysis]:
        """Queue the analysis of a frame against the `previous` frame's (None: it starts the sequence).

        `load` returns the frame (decoding EXR bytes if needed).
        """
        return self._pool.submit(_analyse, previous, load, layers, settings)


def _analyse(
    previous: Future[Analysis] | None, load: Callable[[], Frame], layers: list[str] | None, settings: TemporalSettings
) -> Analysis:
    frame = load()
    before: dict[str, LayerMotion] = {}
    if previous is not None:
        try:
            before = previous.result()[1]
        except Exception:  # the previous frame failed: this one starts the sequence anew
            before = {}
    motions = {}
    for layer in colour_layers(frame, layers):
        part = frame.parts[layer.part]
        rgb = np.stack([part.channels[name] for name in layer.rgb], axis=-1).astype(np.float32)
        backward = _vectors(frame, layer, settings.backward, settings) if settings.vectors == "auto" else None
        motion = LayerMotion(
            flow.gray8(rgb), part.data_window, _vectors(frame, layer, settings.forward, settings)
        )
        prior = before.get(layer_key(layer))
        if prior is not None:
            _relate(motion, prior, backward, settings)
        motions[layer_key(layer)] = motion
    return frame, motions


def _vectors(frame: Frame, layer: ColourLayer, name: str, settings: TemporalSettings) -> np.ndarray | None:
    """Host motion vectors of a layer's view as a flow field, or None when the frame has none over its pixels."""
    found = motion_vectors(frame, layer_view(frame, layer), name, layer.part)
    if found is None or frame.parts[found[0]].data_window != frame.parts[layer.part].data_window:
        return None
    channels = frame.parts[found[0]].channels
    return flow.from_vectors(channels[found[1]], channels[found[2]], settings.y_up)


def _relate(motion: LayerMotion, prior: LayerMotion, backward: np.ndarray | None, settings: TemporalSettings) -> None:
    """Fill `motion.to_previous` and `motion.visible` from this frame and the one before."""
    (x0, y0, x1, y1), (px0, py0, px1, py1) = motion.window, prior.window
    cx0, cy0 = min(x0, px0), min(y0, py0)
    width, height = max(x1, px1) - cx0 + 1, max(y1, py1) - cy0 + 1

    def on_canvas(image: np.ndarray, window: Window) -> np.ndarray:
        canvas = np.zeros((height, width, *image.shape[2:]), image.dtype)
        w, h = window_size(window)
        canvas[window[1] - cy0 : window[1] - cy0 + h, window[0] - cx0 : window[0] - cx0 + w] = image
        return canvas

    if backward is not None:
        to_previous = on_canvas(backward, motion.window)
        to_next = on_canvas(prior.forward, prior.window) if prior.forward is not None else None
    else:
        grey, prior_grey = on_canvas(motion.grey, motion.window), on_canvas(prior.grey, prior.window)
        to_previous = flow.dis_flow(grey, prior_grey, settings.preset)
        to_next = flow.dis_flow(prior_grey, grey, settings.preset)
    occluded = flow.occlusion(to_previous, to_next)
    w, h = window_size(motion.window)
    rows = slice(y0 - cy0, y0 - cy0 + h)
    cols = slice(x0 - cx0, x0 - cx0 + w)
    local = to_previous[rows, cols] + np.array([x0 - px0, y0 - py0], np.float32)
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    pw, ph = window_size(prior.window)
    sample_x, sample_y = grid_x + local[..., 0], grid_y + local[..., 1]
    inside = (sample_x >= 0) & (sample_x <= pw - 1) & (sample_y >= 0) & (sample_y <= ph - 1)
    motion.to_previous = local
    motion.visible = inside & ~occluded[rows, cols]


def blend(stylized: torch.Tensor, motion: LayerMotion | None, memory: dict[str, Any], strength: float) -> torch.Tensor:
    """Blend the warped previous result into `stylized` [1,3,H,W] and remember the outcome.

    `memory` is the layer's state for this sequence; without motion to the previous frame (a new
    sequence, a jump) the frame is used as it is and starts the chain.
    """
    previous = memory.get("temporal_result")
    if motion is not None and motion.to_previous is not None and previous is not None:
        height, width = stylized.shape[2:]
        prior_h, prior_w = previous.shape[2:]
        grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        sample = np.stack(
            [
                (grid_x + motion.to_previous[..., 0]) * 2 / max(prior_w - 1, 1) - 1,
                (grid_y + motion.to_previous[..., 1]) * 2 / max(prior_h - 1, 1) - 1,
            ],
            axis=-1,
        )
        grid = torch.from_numpy(sample)[None].to(stylized.device, stylized.dtype)
        warped = F.grid_sample(previous, grid, mode="bilinear", padding_mode="border", align_corners=True)
        visible = torch.from_numpy(motion.visible)[None, None].to(stylized.device)
        stylized = torch.where(visible, torch.lerp(stylized, warped, strength), stylized)
    memory["temporal_result"] = stylized
    return stylized
