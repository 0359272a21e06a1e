"""Optical flow, occlusion and warping on numpy arrays (OpenCV; no torch).

Conventions: a flow field is (H, W, 2) float32 in pixels, x right and y down, and maps a pixel of
the frame it belongs to onto the other frame: `backward` flow of frame t points into frame t-1,
`forward` flow of frame t points into frame t+1.
"""

from __future__ import annotations

import cv2
import numpy as np

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
"""OpenCV's DIS settings for each preset name a request may give (vst_plugin/schema.py FLOW_PRESETS)."""


def gray8(rgb: np.ndarray) -> np.ndarray:
    """An 8-bit grey image for flow from (H, W, 3) linear or encoded values (luma, sRGB-like curve)."""
    luma = rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722
    luma = np.nan_to_num(luma, nan=0.0, posinf=1.0, neginf=0.0).clip(0, 1)
    return (np.power(luma, 1 / 2.2) * 255 + 0.5).astype(np.uint8)


def from_vectors(u: np.ndarray, v: np.ndarray, y_up: bool) -> np.ndarray:
    """A flow field from motion vector planes in pixels; `y_up` (Nuke's convention) flips v."""
    sign = -1.0 if y_up else 1.0
    return np.stack([u.astype(np.float32), sign * v.astype(np.float32)], axis=-1)


def dis_flow(source: np.ndarray, target: np.ndarray, preset: str = "fast") -> np.ndarray:
    """DIS optical flow from `source` to `target` (8-bit grey images of one size)."""
    dis = cv2.DISOpticalFlow_create(PRESETS[preset])
    return dis.calc(source, target, None)


def warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample `image` at each pixel + flow (bilinear). Returns the warped image and a mask of pixels
    whose sample fell inside `image`."""
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x = grid_x + flow[..., 0]
    map_y = grid_y + flow[..., 1]
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= image.shape[1] - 1) & (map_y >= 0) & (map_y <= image.shape[0] - 1)
    return warped, inside


def occlusion(flow: np.ndarray, reverse: np.ndarray | None) -> np.ndarray:
    """Mask of pixels that are occluded or on a motion boundary (Ruder et al.).

    `flow` maps this frame onto the other; `reverse` maps the other frame back (None: only the
    motion-boundary test is applied). A pixel is occluded when the round trip does not come back:
    |w + w_r(x + w)|^2 > 0.01 (|w|^2 + |w_r(x + w)|^2) + 0.5, or when it sits on a motion boundary:
    |grad u|^2 + |grad v|^2 > 0.01 |w|^2 + 0.002.
    """
    magnitude = (flow**2).sum(-1)
    occluded = np.zeros(flow.shape[:2], bool)
    if reverse is not None:
        back, inside = warp(reverse, flow)
        round_trip = ((flow + back) ** 2).sum(-1)
        occluded |= round_trip > 0.01 * (magnitude + (back**2).sum(-1)) + 0.5
        occluded |= ~inside
    du_y, du_x = np.gradient(flow[..., 0])
    dv_y, dv_x = np.gradient(flow[..., 1])
    occluded |= du_x**2 + du_y**2 + dv_x**2 + dv_y**2 > 0.01 * magnitude + 0.002
    return occluded


def warping_error(current: np.ndarray, following: np.ndarray, forward: np.ndarray, valid: np.ndarray) -> float:
    """Lai et al.'s warping error of one frame pair: mean over valid pixels and channels of
    (O_t - warp(O_t+1))^2, with `forward` the flow from frame t to t+1."""
    warped, inside = warp(following, forward)
    mask = valid & inside
    if not mask.any():
        return float("nan")
    return float(((current - warped) ** 2)[mask].mean())
