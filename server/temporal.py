"""Temporal stability: warp the previous stylized frame along the motion and blend it in.

Per sequence (client + sequence id) and per colour layer:

1. When a frame is accepted, the request loop admits it to its session (server/sessions.py: it
   continues the sequence when its frame number is the previous one + 1, and starts it anew after a
   jump, a repeat, a scrub or a `reset`), and hands the motion analysis of the frame, against the
   previous frame's analysis, to a thread pool (`MotionAnalysis`) ahead of the model worker:
   the backward flow (this frame -> the previous one) and a soft visibility weight per pixel
   (`server.flow.visibility`: photometric agreement of the warped previous input, disocclusion by
   splatting the previous frame forward, a lenient round trip), and the same for the frame before
   the previous one. The motion comes from the host's motion vectors when the frame carries them,
   from OpenCV DIS optical flow on the inputs otherwise.
2. After the network has stylized the layer, the previous *result* is warped into this frame and
   blended in by its weight; where only the frame before it is visible, that one's result is, at
   half weight, and a contrast guard keeps the per-frame result's contrast (`blend`). The result is
   kept for the next frame, so the blend is recursive.

Motion vectors follow Nuke's convention by default: ``backward.u/backward.v`` of frame t point to
frame t-1, ``forward.u/forward.v`` to frame t+1, in pixels, with v pointing up (``y_up``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import cv2
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
    display: np.ndarray
    """8-bit display image (H, W, 3), for the photometric visibility test."""
    window: Window
    forward: np.ndarray | None
    """Host vectors to the next frame (flow convention), for the next frame's disocclusion test."""
    to_previous: np.ndarray | None = None
    """Flow from this layer's pixels into the previous frame's layer (its local pixel coordinates)."""
    visible: np.ndarray | None = None
    """Weight 0..1 that a pixel is visible in the previous frame, at the place `to_previous` says."""
    previous_display: np.ndarray | None = None
    """The previous frame's display image, for the next frame's long-term term."""
    to_earlier: np.ndarray | None = None
    """Flow into the frame before the previous one, when the previous frame continued the sequence too."""
    visible_earlier: np.ndarray | None = None
    """Weight 0..1 that a pixel is visible in the frame before the previous one (photometric test)."""


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
            flow.gray8(rgb), flow.display8(rgb), part.data_window, _vectors(frame, layer, settings.forward, settings)
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


VISIBILITY_PIXELS = 640 * 360
"""Visibility weights are soft: on larger frames they are found at 1/2, 1/3... of the size (at most
about this many pixels) and scaled back up; the flows that warp the results keep full resolution."""


def _relate(motion: LayerMotion, prior: LayerMotion, backward: np.ndarray | None, settings: TemporalSettings) -> None:
    """Fill `motion`'s flows into the previous frames and their visibility weights."""
    (x0, y0, x1, y1), (px0, py0, px1, py1) = motion.window, prior.window
    cx0, cy0 = min(x0, px0), min(y0, py0)
    width, height = max(x1, px1) - cx0 + 1, max(y1, py1) - cy0 + 1
    w, h = window_size(motion.window)
    rows, cols = slice(y0 - cy0, y0 - cy0 + h), slice(x0 - cx0, x0 - cx0 + w)

    def on_canvas(image: np.ndarray, window: Window) -> np.ndarray:
        canvas = np.zeros((height, width, *image.shape[2:]), image.dtype)
        w, h = window_size(window)
        canvas[window[1] - cy0 : window[1] - cy0 + h, window[0] - cx0 : window[0] - cx0 + w] = image
        return canvas

    step = max(1, round(np.sqrt(width * height / VISIBILITY_PIXELS)))
    small = partial(_shrink, step=step)
    display, prior_display = small(motion.display), small(prior.display)
    offset = np.array([px0 - x0, py0 - y0], np.float32)  # prior-local -> local coordinates
    if backward is not None:
        to_previous = backward - offset
        from_previous = None if prior.forward is None else small(prior.forward + offset, flow=True)
    else:
        grey, prior_grey = on_canvas(motion.grey, motion.window), on_canvas(prior.grey, prior.window)
        to_previous = flow.estimate(grey, prior_grey, settings.preset)[rows, cols] - offset
        # the other direction serves the disocclusion and round-trip tests only: shrunk size will do
        from_previous = flow.estimate(small(prior_grey), small(grey), settings.preset)
        top, left = round((py0 - cy0) / step), round((px0 - cx0) / step)
        from_previous = from_previous[top : top + prior_display.shape[0], left : left + prior_display.shape[1]]
        if from_previous.shape[:2] != prior_display.shape[:2]:
            from_previous = cv2.resize(from_previous, prior_display.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        from_previous += offset / step
    motion.to_previous = to_previous
    motion.previous_display = prior.display
    to_previous = small(to_previous, flow=True)
    motion.visible = _grow(flow.visibility(display, prior_display, to_previous, from_previous), (w, h))
    if prior.to_previous is not None and prior.previous_display is not None:
        # Into the frame before the previous one, for what the previous frame did not show: through
        # the previous frame's flow, or with the frame's dominant motion twice (the background's,
        # usually, which is what a moving object reveals). Where the input is too flat to tell them
        # apart the dominant motion wins: a moving object's motion smeared into a flat background
        # would otherwise drag its surroundings along behind it.
        chained, _ = flow.warp(small(prior.to_previous, flow=True), to_previous)
        dominant = np.broadcast_to(2 * np.median(to_previous.reshape(-1, 2), axis=0), to_previous.shape)
        earlier = small(prior.previous_display)
        weights = [flow.visibility(display, earlier, c) for c in (to_previous + chained, dominant)]
        chain = weights[0] > weights[1] + 0.25
        motion.to_earlier = _grow(np.where(chain[..., None], to_previous + chained, dominant), (w, h), flow=True)
        motion.visible_earlier = _grow(np.where(chain, weights[0], weights[1]), (w, h))


def _shrink(image: np.ndarray, step: int, flow: bool = False) -> np.ndarray:
    """`image` at 1/step of its size (a flow's vectors scaled too)."""
    if step == 1:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width / step)), max(1, round(height / step)))
    shrunk = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return shrunk / np.float32(step) if flow else shrunk


def _grow(image: np.ndarray, size: tuple[int, int], flow: bool = False) -> np.ndarray:
    """`image` scaled up to `size` (width, height) (a flow's vectors scaled too)."""
    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    grown = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if flow:
        grown *= np.array([size[0] / image.shape[1], size[1] / image.shape[0]], np.float32)
    return grown


LONG_TERM = 0.5
"""Weight of the frame before the previous one, relative to the previous one, where only it is
visible: an older, less certain match (at 1 a fast object's surroundings linger behind it longer)."""


CONTRAST_KEPT = 0.92
"""Share of the per-frame result's contrast (per-channel standard deviation) the contrast guard
restores: averaging frames whose textures differ (a strongly flickering style) pulls the result
towards its mean, recursively, and a few frames into a shot the style looks washed out. Smaller
losses are left alone (restoring them raises the frame-to-frame differences a little too)."""

CONTRAST_GAIN = 1.25
"""Most the contrast guard may raise a blended frame's contrast."""


def blend(stylized: torch.Tensor, motion: LayerMotion | None, memory: dict[str, Any], strength: float) -> torch.Tensor:
    """Blend the warped previous results into `stylized` [1,3,H,W] and remember the outcome.

    `memory` is the layer's state for this sequence; without motion to the previous frame (a new
    sequence, a jump) the frame is used as it is and starts the chain. Where the previous frame is
    visible (weight v1) its result is blended in; where it is not but the frame before it is (v2),
    that one's result is, at half weight (LONG_TERM):
    out = stylized + strength * (v1 (w1 - stylized) + LONG_TERM (1 - v1) v2 (w2 - stylized)).
    Then the contrast guard: each channel of `out` whose standard deviation fell below CONTRAST_KEPT
    of the per-frame result's is scaled about its mean back to that (a gain of at most CONTRAST_GAIN).
    """
    previous, earlier = memory.get("temporal_result"), memory.get("temporal_earlier")
    result = stylized
    if motion is not None and motion.to_previous is not None and previous is not None:
        visible = _weight(motion.visible, stylized)
        result = torch.lerp(stylized, _warp(previous, motion.to_previous), strength * visible)
        if motion.to_earlier is not None and earlier is not None:
            fill = (strength * LONG_TERM) * (1 - visible) * _weight(motion.visible_earlier, stylized)
            result.addcmul_(fill, _warp(earlier, motion.to_earlier) - stylized)
        result = _keep_contrast(result, stylized)
    else:
        previous = None
    memory["temporal_earlier"] = previous
    memory["temporal_result"] = result
    return result


def _keep_contrast(blended: torch.Tensor, stylized: torch.Tensor) -> torch.Tensor:
    """`blended` with each channel's deviation from its mean scaled back towards `stylized`'s (see CONTRAST_KEPT)."""
    mean = blended.mean((2, 3), keepdim=True)
    gain = CONTRAST_KEPT * stylized.std((2, 3), keepdim=True) / blended.std((2, 3), keepdim=True).clamp_min(1e-6)
    return (blended - mean).mul_(gain.clamp_(1, CONTRAST_GAIN)).add_(mean).clamp_(0, 1)


def _weight(weight: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(weight)[None, None].to(like.device, like.dtype)


def _warp(image: torch.Tensor, to_image: np.ndarray) -> torch.Tensor:
    """Sample `image` [1,C,h,w] at each pixel + `to_image` (H, W, 2), bicubic (less blur than bilinear
    when results are warped again and again), clamped to the network's 0..1."""
    height, width = to_image.shape[:2]
    image_h, image_w = image.shape[2:]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    sample = np.stack(
        [
            (grid_x + to_image[..., 0]) * 2 / max(image_w - 1, 1) - 1,
            (grid_y + to_image[..., 1]) * 2 / max(image_h - 1, 1) - 1,
        ],
        axis=-1,
    )
    grid = torch.from_numpy(sample)[None].to(image.device, image.dtype)
    return F.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=True).clamp_(0, 1)
