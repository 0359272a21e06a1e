"""Warping error of a rendered sequence (Lai et al. 2018), as `vst eval temporal` reports it.

For each pair of consecutive frames t, t+1: the flow from t to t+1 and back is taken from the input
plates (DIS optical flow) or from ground-truth flow files; pixels that are occluded or on motion
boundaries (server.flow.occlusion) are left out; the error is the mean over the remaining pixels and
the three channels of (O_t - warp(O_t+1))², with O the output's colour sRGB-encoded and clipped to 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from server import flow
from vst_plugin.exr import read_exr
from vst_plugin.frame import Frame, colour_layers
from vst_plugin.sequence import frame_path


class EvaluationError(ValueError):
    """The sequence cannot be evaluated as asked."""


@dataclass
class TemporalReport:
    """Warping error per frame pair and overall."""

    pairs: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        errors = [error for _, _, error in self.pairs if np.isfinite(error)]
        return float(np.mean(errors)) if errors else float("nan")


def display_rgb(frame: Frame) -> np.ndarray:
    """The main colour layer as (H, W, 3) float32, sRGB-encoded and clipped to 0..1."""
    layers = colour_layers(frame)
    if not layers:
        raise EvaluationError("the frame has no R, G, B layer")
    part = frame.parts[layers[0].part]
    rgb = np.stack([part.channels[name] for name in layers[0].rgb], axis=-1).astype(np.float32)
    rgb = np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0).clip(0, 1)
    return np.where(rgb <= 0.0031308, rgb * 12.92, 1.055 * np.power(rgb, 1 / 2.4) - 0.055).astype(np.float32)


def _vectors(frame: Frame, name: str, y_up: bool) -> np.ndarray:
    channels = frame.parts[0].channels
    if f"{name}.u" not in channels or f"{name}.v" not in channels:
        raise EvaluationError(f"the flow file has no {name}.u / {name}.v channels")
    return flow.from_vectors(channels[f"{name}.u"], channels[f"{name}.v"], y_up)


def pair_flows(
    frames: list[int],
    flow_from: str | None = None,
    gt_flow: str | None = None,
    preset: str = "medium",
    y_up: bool = True,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Forward (t -> t+1) and backward (t+1 -> t) flow for each t whose t+1 is in `frames`."""
    if (flow_from is None) == (gt_flow is None):
        raise EvaluationError("give exactly one of --flow-from (input plates) and --gt-flow (flow files)")
    wanted = set(frames)
    flows = {}
    greys: dict[int, np.ndarray] = {}
    for t in frames:
        if t + 1 not in wanted:
            continue
        if gt_flow is not None:
            forward = _vectors(read_exr(frame_path(gt_flow, t)), "forward", y_up)
            backward = _vectors(read_exr(frame_path(gt_flow, t + 1)), "backward", y_up)
        else:
            for n in (t, t + 1):
                if n not in greys:
                    greys[n] = flow.gray8(display_rgb(read_exr(frame_path(flow_from, n))))
            forward = flow.dis_flow(greys[t], greys[t + 1], preset)
            backward = flow.dis_flow(greys[t + 1], greys[t], preset)
        flows[t] = (forward, backward)
    return flows


def warping_errors(outputs: dict[int, np.ndarray], flows: dict[int, tuple[np.ndarray, np.ndarray]]) -> TemporalReport:
    """Warping error of each pair of display images given their flows."""
    report = TemporalReport()
    for t, (forward, backward) in sorted(flows.items()):
        current, following = outputs[t], outputs[t + 1]
        if current.shape != following.shape or current.shape[:2] != forward.shape[:2]:
            raise EvaluationError(f"frames {t} and {t + 1}: output and flow sizes differ")
        valid = ~flow.occlusion(forward, backward)
        report.pairs.append((t, t + 1, flow.warping_error(current, following, forward, valid)))
    return report


def evaluate_temporal(
    out_pattern: str,
    frames: list[int],
    flow_from: str | None = None,
    gt_flow: str | None = None,
    preset: str = "medium",
    y_up: bool = True,
) -> TemporalReport:
    """Warping error of the rendered frames `out_pattern` over `frames`."""
    flows = pair_flows(frames, flow_from, gt_flow, preset, y_up)
    if not flows:
        raise EvaluationError("the frame list has no two consecutive frames")
    outputs = {n: display_rgb(read_exr(frame_path(out_pattern, n))) for n in frames}
    return warping_errors(outputs, flows)
