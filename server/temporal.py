"""Temporal stability: warp the previous stylized frame along the motion and blend it in.

Per sequence (client + sequence id) and per colour layer:

1. When a frame is accepted, the request loop admits it to its session (server/sessions.py: it
   continues the sequence when its frame number is the previous one + 1, and starts it anew after a
   jump, a repeat, a scrub or a `reset`), and hands the motion analysis of the frame, against the
   previous frame's analysis, to a thread pool (`MotionAnalysis`) ahead of the model worker:
   the backward flow (this frame -> the previous one) and a soft visibility weight per pixel
   (`server.flow.visibility`: photometric agreement of the warped previous input, disocclusion by
   splatting the previous frame forward, a lenient round trip), lowered where the previous frame
   had only just revealed the pixel, and the same for the frame before the previous one. The
   motion comes from the host's motion vectors when the frame carries them, from OpenCV DIS
   optical flow on the inputs otherwise.
2. After the network has stylized the layer, the previous *result* is warped into this frame and
   blended in by its weight; where only the frame before it is visible, that one's result is, at
   half weight, and a contrast guard keeps the per-frame result's contrast (`blend`). The result is
   kept for the next frame, so the blend is recursive.

Motion vectors follow Nuke's convention by default: ``backward.u/backward.v`` of frame t point to
frame t-1, ``forward.u/forward.v`` to frame t+1, in pixels, with v pointing up (``y_up``).
"""

from __future__ import annotations

import contextlib
import os
import threading
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
    """8-bit display image (H, W, 3) at 1/step of the size, for the visibility tests."""
    step: int
    """The scale the visibility weights are found at (`visibility_step`)."""
    window: Window
    forward: np.ndarray | None
    """Host vectors to the next frame (flow convention), for the next frame's disocclusion test."""
    to_previous: np.ndarray | None = None
    """Flow from this layer's pixels into the previous frame's layer (its local pixel coordinates)."""
    visible: np.ndarray | None = None
    """Weight 0..1 that a pixel is visible in the previous frame, at the place `to_previous` says."""
    previous_display: np.ndarray | None = None
    """The previous frame's display image (at this frame's step), for the next frame's long-term term."""
    to_earlier: np.ndarray | None = None
    """Flow into the frame before the previous one, when the previous frame continued the sequence too."""
    visible_earlier: np.ndarray | None = None
    """Weight 0..1 that a pixel is visible in the frame before the previous one (photometric test)."""
    weight: np.ndarray | None = None
    """The blend's weight 0..1 for the previous result: `visible`, times REVEALED_SHARE where the
    previous frame had only just revealed the pixel."""


Analysis = tuple[Frame, dict[str, LayerMotion]]


def layer_key(layer: ColourLayer) -> str:
    """The name under which a layer's memory is kept (the same as the model state's)."""
    return f"{layer.part}:{','.join(layer.rgb)}"


class MotionAnalysis:
    """A thread pool that analyses the motion of temporal frames ahead of the model worker."""

    def __init__(self, workers: int = 2):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vst-flow", initializer=_yield_to_model)

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


ANALYSIS_NICENESS = 10
"""How much lower than the model worker's the analysis threads' scheduling priority is (Linux: per
thread): on a CPU the network keeps every core busy, and an analysis taking a core from it stalls
its parallel sections; at a lower priority the analysis fills the time the network leaves idle."""


def _yield_to_model() -> None:
    """Lower the calling thread's priority by ANALYSIS_NICENESS where the system allows it per thread."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: keep the priority
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + ANALYSIS_NICENESS)


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
        step = visibility_step(part.data_window)
        motion = LayerMotion(
            flow.gray8(rgb), flow.display8(_shrink(rgb, step)), step, part.data_window,
            _vectors(frame, layer, settings.forward, settings),
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


def visibility_step(window: Window) -> int:
    """The n at which a layer of this data window finds its visibility weights (1/n of its size)."""
    width, height = window_size(window)
    return max(1, round(np.sqrt(width * height / VISIBILITY_PIXELS)))


def _display(motion: LayerMotion, step: int) -> np.ndarray:
    """A layer's display image at 1/step of its size (its own unless its data window changed size)."""
    if motion.step == step:
        return motion.display
    return cv2.resize(motion.display, _shrunk_size(*window_size(motion.window), step), interpolation=cv2.INTER_AREA)


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

    step = motion.step
    small = partial(_shrink, step=step)
    display, prior_display = motion.display, _display(prior, step)
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
    motion.previous_display = prior_display
    to_previous = small(to_previous, flow=True)
    motion.visible = _grow(flow.visibility(display, prior_display, to_previous, from_previous), (w, h))
    motion.weight = motion.visible
    if prior.visible is not None:  # here, in the analysis pool, rather than on the model worker
        revealed, _ = flow.warp((small(prior.visible) < REVEALED_BELOW).astype(np.float32), to_previous)
        motion.weight = motion.visible * _grow(1 - (1 - REVEALED_SHARE) * revealed, (w, h))
    if prior.to_previous is not None and prior.previous_display is not None and prior.step == step:
        # Into the frame before the previous one, for what the previous frame did not show: through
        # the previous frame's flow, or with the frame's dominant motion twice (the background's,
        # usually, which is what a moving object reveals). Where the input is too flat to tell them
        # apart the dominant motion wins: a moving object's motion smeared into a flat background
        # would otherwise drag its surroundings along behind it.
        chained, _ = flow.warp(small(prior.to_previous, flow=True), to_previous)
        dominant = np.broadcast_to(2 * np.median(to_previous.reshape(-1, 2), axis=0), to_previous.shape)
        earlier = prior.previous_display
        weights = [flow.visibility(display, earlier, c) for c in (to_previous + chained, dominant)]
        chain = weights[0] > weights[1] + 0.25
        motion.to_earlier = _grow(np.where(chain[..., None], to_previous + chained, dominant), (w, h), flow=True)
        motion.visible_earlier = _grow(np.where(chain, weights[0], weights[1]), (w, h))


def _shrink(image: np.ndarray, step: int, flow: bool = False) -> np.ndarray:
    """`image` at 1/step of its size (a flow's vectors scaled too)."""
    if step == 1:
        return image
    height, width = image.shape[:2]
    shrunk = cv2.resize(image, _shrunk_size(width, height, step), interpolation=cv2.INTER_AREA)
    return shrunk / np.float32(step) if flow else shrunk


def _shrunk_size(width: int, height: int, step: int) -> tuple[int, int]:
    """(width, height) of an image of this size at 1/step of it."""
    return max(1, round(width / step)), max(1, round(height / step))


def _grow(image: np.ndarray, size: tuple[int, int], flow: bool = False) -> np.ndarray:
    """`image` scaled up to `size` (width, height) (a flow's vectors scaled too)."""
    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    if flow:  # scale the vectors before resizing: fewer of them
        image = image * np.array([size[0] / image.shape[1], size[1] / image.shape[0]], np.float32)
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


REVEALED_BELOW = 0.25
"""A pixel whose visibility weight is below this was not shown by the previous frame: this one reveals it."""

REVEALED_SHARE = 0.5
"""Share of its visibility weight at which the frame after a pixel's reveal blends its result in:
the network's response around a moving object, picked up where the object has just uncovered the
background, fades faster and trails a shorter way behind it (bench/temporal.py: trails a fifth to a
quarter shorter, warping errors a little higher)."""

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
    visible (weight v1) its result is blended in, at a share s of that weight (REVEALED_SHARE where the
    previous frame had only just revealed the pixel, else 1: `motion.weight` = v1 s); where it is not
    but the frame before it is (v2), that one's result is, at half weight (LONG_TERM):
    out = stylized + strength * (v1 s (w1 - stylized) + LONG_TERM (1 - v1) v2 (w2 - stylized)),
    the second term only where its weight reaches FILL_FLOOR. Then the contrast guard: each channel
    of `out` whose standard deviation fell below CONTRAST_KEPT of the per-frame result's is scaled
    about its mean back to that (a gain of at most CONTRAST_GAIN).
    """
    previous, earlier = memory.get("temporal_result"), memory.get("temporal_earlier")
    result = stylized
    if motion is not None and motion.to_previous is not None and previous is not None:
        weight = torch.from_numpy(motion.weight)[None, None].to(stylized.device, stylized.dtype)
        result = torch.lerp(stylized, _warp(previous, motion.to_previous), strength * weight).contiguous()
        if motion.to_earlier is not None and motion.visible_earlier is not None and earlier is not None:
            fill = (strength * LONG_TERM) * (1 - motion.visible) * motion.visible_earlier
            _fill_from(result, stylized, earlier, motion.to_earlier, fill)
        result = _keep_contrast(result, stylized)
    else:
        previous = None
    memory["temporal_earlier"] = previous
    memory["temporal_result"] = result
    return result


FILL_FLOOR = 1 / 32
"""Smallest weight at which the frame before the previous one is blended in. Soft visibility leaves
1 - v1 a little above 0 on most pixels the previous frame shows, where the term would move the
result by a few hundredths of the two results' difference: left out, no ratio of bench/temporal.py
moves by more than 0.005, and a 1080p camera move samples 3% of its pixels instead of 32% (the
second warp is the blend's largest cost)."""


def _fill_from(result: torch.Tensor, stylized: torch.Tensor, earlier: torch.Tensor, to_earlier: np.ndarray,
               fill: np.ndarray) -> None:
    """result += fill * (warp(earlier) - stylized), in place (`result` contiguous), on the pixels where
    fill >= FILL_FLOOR."""
    chosen = np.flatnonzero(fill >= FILL_FLOOR)
    if chosen.size == 0:
        return
    height, width = fill.shape
    points = flow.pixel_grid(height, width).reshape(-1, 2)[chosen] + to_earlier.reshape(-1, 2)[chosen]
    warped = _sample(earlier, points[None])[0, :, 0]  # [C, N]
    index = torch.from_numpy(chosen).to(result.device)
    weight = torch.from_numpy(fill.reshape(-1)[chosen]).to(result.device, result.dtype)
    channels = result.shape[1]
    here = stylized[0].reshape(channels, -1).index_select(1, index)
    result[0].view(channels, -1).index_add_(1, index, warped.sub_(here).mul_(weight))


STATISTICS_PIXELS = 256 * 256
"""The contrast guard measures each channel's mean and spread on every n-th pixel in each direction,
about this many pixels (a 1080p frame: every 5th), rather than on all of them."""


def _keep_contrast(blended: torch.Tensor, stylized: torch.Tensor) -> torch.Tensor:
    """`blended` with each channel's deviation from its mean scaled back towards `stylized`'s (see CONTRAST_KEPT)."""
    height, width = blended.shape[2:]
    step = max(1, int(np.sqrt(height * width / STATISTICS_PIXELS)))
    sample = blended[..., ::step, ::step]
    # population spreads: their ratio is the same, and a 1-pixel data window's is 0, not NaN
    spread = stylized[..., ::step, ::step].std((2, 3), correction=0, keepdim=True)
    blended_spread = sample.std((2, 3), correction=0, keepdim=True).clamp_min(1e-6)
    gain = (CONTRAST_KEPT * spread / blended_spread).clamp_(1, CONTRAST_GAIN)
    if bool((gain == 1).all()):  # a blend of values in 0..1 with weights summing to at most 1: no clamp needed
        return blended
    mean = sample.mean((2, 3), keepdim=True)
    return (blended - mean).mul_(gain).add_(mean).clamp_(0, 1)


def _warp(image: torch.Tensor, to_image: np.ndarray) -> torch.Tensor:
    """`image` [1,C,h,w] sampled at each pixel + `to_image` (H, W, 2): [1,C,H,W]."""
    return _sample(image, flow.pixel_grid(*to_image.shape[:2]) + to_image)


def _sample(image: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    """`image` [1,C,h,w] at the pixel positions `points` (H, W, 2) x, y, a new array the call may
    change: [1,C,H,W], bicubic (less blur than bilinear when results are warped again and again),
    clamped to the network's 0..1."""
    image_h, image_w = image.shape[2:]
    grid = torch.from_numpy(points)[None].to(image.device)
    grid.mul_(torch.tensor([2 / max(image_w - 1, 1), 2 / max(image_h - 1, 1)], device=image.device)).sub_(1)
    # in float32 whatever the result's type: half has too few bits for the positions of a 1080p frame
    sampled = F.grid_sample(image.float(), grid, mode="bicubic", padding_mode="border", align_corners=True)
    return sampled.clamp_(0, 1).to(image.dtype)
