"""Warping error of a rendered sequence (Lai et al. 2018), as `vst eval temporal` reports it.

For each pair of consecutive frames t, t+1: the flow from t to t+1 and back is taken from ground-truth
flow files or estimated on the input plates with `scoring_flow` (OpenCV Farneback: an estimator the
temporal method does not use, so its own flow errors are not excused); pixels that are occluded or on
motion boundaries by that flow's own forward-backward test (server.flow.occlusion) are left out; the
error is the mean over the remaining pixels and the three channels of (O_t - warp(O_t+1))², with O
the output's colour sRGB-encoded and clipped to 0..1.

Frames whose data windows differ (a moving bounding box, overscan) are compared on a common canvas,
the union of the windows of the pair: a pixel counts when it lies inside frame t's data window and its
flow target inside frame t+1's. Each view of a stereo plate is measured on its own, with the motion
vectors of that view (``forward.left.u`` or ``forward.u`` in the left part).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from server import flow
from vst_plugin.exr import read_exr
from vst_plugin.frame import ColourLayer, Frame, Window, colour_layers, layer_view, motion_vectors, window_size
from vst_plugin.sequence import frame_path


class EvaluationError(ValueError):
    """The sequence cannot be evaluated as asked."""


@dataclass(frozen=True)
class Plane:
    """An (H, W, C) image over its data window, in the frame's pixel coordinates."""

    pixels: np.ndarray
    window: Window


@dataclass(frozen=True)
class PairError:
    """The warping error from frame `first` to `second` in one view (None: a plate without views)."""

    first: int
    second: int
    view: str | None
    error: float


@dataclass
class TemporalReport:
    """Warping error per frame pair and view, overall, and what the measure had to do without."""

    pairs: list[PairError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        errors = [pair.error for pair in self.pairs if np.isfinite(pair.error)]
        return float(np.mean(errors)) if errors else float("nan")


def layer_rgb(frame: Frame, layer: ColourLayer) -> np.ndarray:
    """A colour layer as (H, W, 3) float32, sRGB-encoded and clipped to 0..1."""
    part = frame.parts[layer.part]
    rgb = np.stack([part.channels[name] for name in layer.rgb], axis=-1).astype(np.float32)
    rgb = np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0).clip(0, 1)
    return np.where(rgb <= 0.0031308, rgb * 12.92, 1.055 * np.power(rgb, 1 / 2.4) - 0.055).astype(np.float32)


def display_rgb(frame: Frame) -> np.ndarray:
    """The main colour layer as (H, W, 3) float32, sRGB-encoded and clipped to 0..1."""
    layers = colour_layers(frame)
    if not layers:
        raise EvaluationError("the frame has no R, G, B layer")
    return layer_rgb(frame, layers[0])


def view_planes(frame: Frame, what: str) -> dict[str | None, Plane]:
    """The display RGB of the main colour layer of each view, over its data window."""
    planes: dict[str | None, Plane] = {}
    for layer in colour_layers(frame):
        planes.setdefault(layer_view(frame, layer), Plane(layer_rgb(frame, layer), frame.parts[layer.part].data_window))
    if not planes:
        raise EvaluationError(f"{what} has no R, G, B layer")
    return planes


def view_vectors(frame: Frame, view: str | None, name: str, y_up: bool) -> Plane | None:
    """The `name` motion vectors of a view as a flow field over their data window, or None.

    A flow file without views serves every view.
    """
    found = motion_vectors(frame, view, name)
    if found is None and not any(part.view or part.attributes.get("multiView") for part in frame.parts):
        found = motion_vectors(frame, None, name)
    if found is None:
        return None
    part = frame.parts[found[0]]
    return Plane(flow.from_vectors(part.channels[found[1]], part.channels[found[2]], y_up), part.data_window)


FARNEBACK = (0.5, 5, 13, 10, 7, 1.5, 0)
"""OpenCV Farneback settings of `scoring_flow`: pyramid scale 0.5, 5 levels, window 13, 10 iterations,
polynomial neighbourhood 7 (sigma 1.5), no flags."""


def scoring_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Flow from `source` to `target` (8-bit grey images of one size) for scoring temporal results,
    independent of the DIS flow the temporal method warps with: the frame's global motion (`_global_motion`),
    then OpenCV Farneback for what remains (Farneback alone loses motions of more than a few tens of pixels)."""
    start = _global_motion(source, target)
    aligned, _ = flow.warp(target, start)
    rest = cv2.calcOpticalFlowFarneback(source, aligned, None, *FARNEBACK)
    carried, _ = flow.warp(start, rest)
    return rest + carried


def _global_motion(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """An affine motion field fitted (RANSAC) to corners tracked by pyramidal Lucas-Kanade, kept when the
    track comes back within a pixel; zero when too few corners hold."""
    height, width = source.shape
    zero = np.zeros((height, width, 2), np.float32)
    corners = cv2.goodFeaturesToTrack(source, 500, 0.01, 7)
    if corners is None or len(corners) < 6:
        return zero
    lk = {"winSize": (21, 21), "maxLevel": 5}
    moved, found, _ = cv2.calcOpticalFlowPyrLK(source, target, corners, None, **lk)
    back, found_back, _ = cv2.calcOpticalFlowPyrLK(target, source, moved, None, **lk)
    kept = (found[:, 0] == 1) & (found_back[:, 0] == 1) & (np.linalg.norm(back - corners, axis=-1)[:, 0] < 1)
    if kept.sum() < 6:
        return zero
    affine, _ = cv2.estimateAffine2D(corners[kept], moved[kept], method=cv2.RANSAC, ransacReprojThreshold=2.0)
    if affine is None:
        return zero
    grid = flow.pixel_grid(height, width)
    x, y = grid[..., 0], grid[..., 1]
    return np.stack([affine[0, 0] * x + affine[0, 1] * y + affine[0, 2] - x,
                     affine[1, 0] * x + affine[1, 1] * y + affine[1, 2] - y], axis=-1).astype(np.float32)


def _union(windows: list[Window]) -> Window:
    return (
        min(w[0] for w in windows), min(w[1] for w in windows), max(w[2] for w in windows), max(w[3] for w in windows)
    )


def _on_canvas(plane: Plane, canvas: Window) -> np.ndarray:
    width, height = window_size(canvas)
    image = np.zeros((height, width, plane.pixels.shape[2]), np.float32)
    w, h = window_size(plane.window)
    x, y = plane.window[0] - canvas[0], plane.window[1] - canvas[1]
    image[y : y + h, x : x + w] = plane.pixels
    return image


def _inside(window: Window, canvas: Window) -> np.ndarray:
    width, height = window_size(canvas)
    mask = np.zeros((height, width), bool)
    w, h = window_size(window)
    x, y = window[0] - canvas[0], window[1] - canvas[1]
    mask[y : y + h, x : x + w] = True
    return mask


def pair_error(current: Plane, following: Plane, forward: Plane, backward: Plane | None) -> float:
    """Warping error of one pair on the union of its data windows (`backward` None: motion boundaries only)."""
    planes = [current, following, forward] + ([backward] if backward is not None else [])
    canvas = _union([plane.window for plane in planes])
    to_next = _on_canvas(forward, canvas)
    to_previous = _on_canvas(backward, canvas) if backward is not None else None
    valid = _inside(current.window, canvas) & _inside(forward.window, canvas) & ~flow.occlusion(to_next, to_previous)
    landing, _ = flow.warp(_inside(following.window, canvas).astype(np.float32), to_next)
    valid &= landing >= 1 - 1e-6  # the flow target and its bilinear neighbours lie in frame t+1's window
    return flow.warping_error(_on_canvas(current, canvas), _on_canvas(following, canvas), to_next, valid)


def warping_errors(outputs: dict[int, np.ndarray], flows: dict[int, tuple[np.ndarray, np.ndarray]]) -> TemporalReport:
    """Warping error of each pair of same-size display images given their flows (t -> t+1, t+1 -> t)."""
    report = TemporalReport()
    for t, (forward, backward) in sorted(flows.items()):
        current, following = outputs[t], outputs[t + 1]
        if current.shape != following.shape or current.shape[:2] != forward.shape[:2]:
            raise EvaluationError(f"frames {t} and {t + 1}: output and flow sizes differ")
        height, width = current.shape[:2]
        window = (0, 0, width - 1, height - 1)
        planes = (Plane(current, window), Plane(following, window), Plane(forward, window), Plane(backward, window))
        report.pairs.append(PairError(t, t + 1, None, pair_error(*planes)))
    return report


def _reader(pattern: str, convert: Callable[[Frame, str], object]) -> Callable[[int], object]:
    """Frame number -> converted frame of `pattern`, keeping the last two frames read."""

    @lru_cache(maxsize=2)
    def load(number: int) -> object:
        path = frame_path(pattern, number)
        return convert(read_exr(path), path)

    return load


def evaluate_temporal(
    out_pattern: str,
    frames: list[int],
    flow_from: str | None = None,
    gt_flow: str | None = None,
    y_up: bool = True,
) -> TemporalReport:
    """Warping error of the rendered frames `out_pattern` over `frames`, per consecutive pair and view."""
    if (flow_from is None) == (gt_flow is None):
        raise EvaluationError("give exactly one of --flow-from (input plates) and --gt-flow (flow files)")
    wanted = set(frames)
    starts = [t for t in frames if t + 1 in wanted]
    if not starts:
        raise EvaluationError("the frame list has no two consecutive frames")
    outputs = _reader(out_pattern, view_planes)
    sources = _reader(flow_from or gt_flow, view_planes if flow_from else lambda frame, _: frame)
    report = TemporalReport()
    for t in starts:
        for view, current in outputs(t).items():
            following = outputs(t + 1).get(view)
            if following is None:
                raise EvaluationError(f"{frame_path(out_pattern, t + 1)} has no {view} view")
            if gt_flow is not None:
                forward = view_vectors(sources(t), view, "forward", y_up)
                if forward is None:
                    which = f" for the {view} view" if view else ""
                    raise EvaluationError(f"{frame_path(gt_flow, t)} has no forward.u / forward.v vectors{which}")
                backward = view_vectors(sources(t + 1), view, "backward", y_up)
                if backward is None and not report.notes:
                    report.notes.append(
                        "the flow files carry no backward vectors: occlusions are found from motion boundaries only"
                    )
            else:
                forward, backward = _estimated(sources(t), sources(t + 1), view, current, following)
            report.pairs.append(PairError(t, t + 1, view, pair_error(current, following, forward, backward)))
    return report


def _estimated(
    source: dict[str | None, Plane],
    target: dict[str | None, Plane],
    view: str | None,
    current: Plane,
    following: Plane,
) -> tuple[Plane, Plane]:
    """`scoring_flow` both ways between two input plates of a view, on the union of every window of the pair."""
    if view not in source or view not in target:
        raise EvaluationError(f"the input plates have no {view} view")
    canvas = _union([source[view].window, target[view].window, current.window, following.window])
    first, second = (flow.gray8(_on_canvas(plane, canvas)) for plane in (source[view], target[view]))
    return Plane(scoring_flow(first, second), canvas), Plane(scoring_flow(second, first), canvas)
