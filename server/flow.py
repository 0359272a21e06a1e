"""Optical flow, occlusion and warping on numpy arrays (OpenCV; no torch).

Conventions: a flow field is (H, W, 2) float32 in pixels, x right and y down, and maps a pixel of
the frame it belongs to onto the other frame: `backward` flow of frame t points into frame t-1,
`forward` flow of frame t points into frame t+1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Preset:
    """OpenCV DIS settings: a DIS preset and what is changed in it (None: the preset's own value)."""

    dis: int
    finest_scale: int | None = None
    """Finest pyramid level refined (0: full resolution)."""
    patch_size: int | None = None
    patch_stride: int | None = None
    descent_iterations: int | None = None
    refinement_iterations: int | None = None
    """Variational refinement iterations at each level."""


PRESETS = {
    "ultrafast": Preset(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST),
    "fast": Preset(cv2.DISOPTICAL_FLOW_PRESET_FAST),
    "medium": Preset(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, patch_size=4, patch_stride=4, descent_iterations=8,
                     refinement_iterations=5),
    "fine": Preset(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, finest_scale=0),
}
"""OpenCV's DIS settings for each preset name a request may give (vst_plugin/schema.py FLOW_PRESETS).
`medium`, the default, is OpenCV's medium with 4x4 patches every 4 pixels instead of 8x8 ones every
3 and 8 descent iterations instead of 25: 0.55x its time at 1080p; the small patches keep a moving
object's motion out of a flat background beside it, where 8x8 ones (16 px at the half resolution
it works at) smear it (bench/results/temporal-cpu-2026-11-28.md, "Session 5"). `fine` refines at
full resolution, for final renders where object edges matter."""

ALPHA = 25.0
"""Lai et al.'s photometric weight exp(-ALPHA * |I_t - warp(I_t-1)|^2), on display values 0..1 (their 50
rejected too much of real footage's moving subjects: bench/results/temporal-cpu-2026-11-28.md,
"Session 5")."""


_ENCODE = (np.power(np.arange(65536) / 65535, 1 / 2.2) * 255 + 0.5).astype(np.uint8)
"""8-bit display code of linear 0..1 in steps of 1/65535 (a table: the power curve is slow on 1080p)."""


def _encode8(linear: np.ndarray) -> np.ndarray:
    index = linear * np.float32(65535) + np.float32(0.5)
    np.clip(index, 0, 65535, out=index)  # infinities clip to the ends
    index[np.isnan(index)] = 0
    return _ENCODE[index.astype(np.uint16)]


_LUMA = np.array([[0.2126, 0.7152, 0.0722]], np.float32)


def gray8(rgb: np.ndarray) -> np.ndarray:
    """An 8-bit grey image for flow from (H, W, 3) linear or encoded values (luma, sRGB-like curve)."""
    return _encode8(cv2.transform(np.asarray(rgb, np.float32), _LUMA))


def display8(rgb: np.ndarray) -> np.ndarray:
    """An 8-bit display image (H, W, 3) from linear or encoded values (the curve of `gray8`)."""
    return _encode8(rgb)


def from_vectors(u: np.ndarray, v: np.ndarray, y_up: bool) -> np.ndarray:
    """A flow field from motion vector planes in pixels; `y_up` (Nuke's convention) flips v."""
    sign = -1.0 if y_up else 1.0
    return np.stack([u.astype(np.float32), sign * v.astype(np.float32)], axis=-1)


SMALLEST = 32
"""Images narrower or lower than this are padded (edge pixels repeated) before DIS sees them and their
flow cropped back: DIS refuses images under 12 px, and with 4x4 patches crashes the process on some
(6x6, 7x40) instead of refusing them, where a CG element's data window can be that small."""


def estimate(source: np.ndarray, target: np.ndarray, preset: str = "fast") -> np.ndarray:
    """Optical flow from `source` to `target` (8-bit grey images of one size), OpenCV DIS."""
    height, width = source.shape[:2]
    if height < SMALLEST or width < SMALLEST:
        bottom, right = max(0, SMALLEST - height), max(0, SMALLEST - width)
        padded = [cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REPLICATE) for image in (source, target)]
        return np.ascontiguousarray(estimate(*padded, preset)[:height, :width])
    settings = PRESETS[preset]
    dis = cv2.DISOpticalFlow_create(settings.dis)
    if settings.finest_scale is not None:
        dis.setFinestScale(settings.finest_scale)
    if settings.patch_size is not None:
        dis.setPatchSize(settings.patch_size)
    if settings.patch_stride is not None:
        dis.setPatchStride(settings.patch_stride)
    if settings.descent_iterations is not None:
        dis.setGradientDescentIterations(settings.descent_iterations)
    if settings.refinement_iterations is not None:
        dis.setVariationalRefinementIterations(settings.refinement_iterations)
    return dis.calc(source, target, None)


@functools.lru_cache(maxsize=4)
def pixel_grid(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float32 x, y of every pixel (read only: shared between calls)."""
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    grid = np.stack([grid_x, grid_y], axis=-1)
    grid.flags.writeable = False
    return grid


def warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample `image` at each pixel + flow (bilinear). Returns the warped image and a mask of pixels
    whose sample fell inside `image`."""
    grid = pixel_grid(*flow.shape[:2])
    map_x = grid[..., 0] + flow[..., 0]
    map_y = grid[..., 1] + flow[..., 1]
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= image.shape[1] - 1) & (map_y >= 0) & (map_y <= image.shape[0] - 1)
    return warped, inside


def photometric_weight(current: np.ndarray, warped_previous: np.ndarray) -> np.ndarray:
    """Lai et al.'s per-pixel confidence that the previous frame, warped, shows the same thing:
    exp(-ALPHA * |I_t - warp(I_t-1)|^2), |.| the RGB distance of 8-bit display images taken as 0..1."""
    difference = (current.astype(np.float32) - warped_previous.astype(np.float32)) * np.float32(1 / 255)
    return np.exp(np.float32(-ALPHA) * (difference**2).sum(-1))


def coverage(from_previous: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """How much of the previous frame lands on each pixel of this one (`size` (width, height), by
    default the previous frame's) when every previous pixel is pushed along `from_previous` (its
    flow into this frame, bilinear splatting). About 1 where this frame shows what the previous one
    showed; near 0 where it reveals what the previous frame hid (disocclusion)."""
    height, width = from_previous.shape[:2]
    out_w, out_h = size or (width, height)
    grid = pixel_grid(height, width)
    x, y = grid[..., 0] + from_previous[..., 0], grid[..., 1] + from_previous[..., 1]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    total = np.zeros(out_h * out_w, np.float64)
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < out_w) & (yi >= 0) & (yi < out_h)
        total += np.bincount((yi * out_w + xi)[ok], weights=weight[ok], minlength=out_h * out_w)
    return total.reshape(out_h, out_w).astype(np.float32)


ROUND_TRIP = 9.0
"""Squared pixels of round-trip disagreement (plus 1% of the squared motion) at which the soft
forward-backward weight falls to 1/e: lenient, because in flat regions the two directions of a
flow disagree by a pixel or so without being wrong, while a moving object's motion smeared into
its surroundings comes back several pixels off."""


def visibility(
    current: np.ndarray, previous: np.ndarray, to_previous: np.ndarray, from_previous: np.ndarray | None = None
) -> np.ndarray:
    """Soft weight 0..1 that each pixel of `current` is visible in `previous` and that `to_previous`
    takes it to the right place there (display images (H, W, 3) uint8; flows in pixels, each in the
    coordinates of the frame it belongs to).

    The product of: the photometric weight of the warped previous frame (`photometric_weight`; it
    holds in flat regions); 0 where the flow leaves the previous frame; and, when the previous
    frame's flow into this one is known, a disocclusion weight from `coverage` (1 where at least 3/4
    of a pixel's worth of the previous frame lands, 5x5 mean, 0 below 1/4) and a soft round-trip
    weight exp(-|w + w_r(x + w)|^2 / (ROUND_TRIP + 0.01 (|w|^2 + |w_r(x + w)|^2))).
    """
    warped, inside = warp(previous, to_previous)
    weight = photometric_weight(current, warped) * inside
    if from_previous is not None:
        height, width = to_previous.shape[:2]
        covered = cv2.blur(coverage(from_previous, (width, height)), (5, 5))
        weight *= np.clip((covered - 0.25) * 2, 0, 1)
        back, _ = warp(from_previous, to_previous)
        round_trip = ((to_previous + back) ** 2).sum(-1)
        weight *= np.exp(-round_trip / (ROUND_TRIP + 0.01 * ((to_previous**2).sum(-1) + (back**2).sum(-1))))
    return weight


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
