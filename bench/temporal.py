"""Temporal stability, scored so that it cannot flatter the method: per-frame vs temporal rendering.

Everything is rendered through a real `vst serve` process, temporal mode with the defaults of
`vst render --temporal` (strength 0.8, the default flow preset, no motion vectors on the plates),
per-frame rendering with the same model and style. Styles: the default (multistyle26 style 0, no
`params` sent) and two others.

Sequences (scene-linear RGB, the way a plate arrives):

- known motion, generated here with exact flow and visibility: camera moves over photographs
  (OpenEXR ScanLines), objects moving 2-20 px/frame over textured and over flat (smooth gradient)
  backgrounds, a thin object that covers and reveals the background within a frame or two;
- real footage: ../shared/video/bigbuckbunny.mp4, decoded with OpenCV, converted to scene-linear,
  scored with flow the method does not use: `server.evaluate.scoring_flow` (OpenCV Farneback, what
  `vst eval temporal --flow-from` uses) on the display images, both directions, with its own
  forward-backward and motion-boundary test (Ruder et al.'s thresholds) deciding which pixels count.

Per case and style:

- warping error (Lai et al. 2018; display RGB 0..1, pixels visible in both frames by the scoring
  flow's visibility, 2 px bands around object edges left out): ratio temporal / per-frame; and the
  same ratio on stylized pixels only (plate within 0..1: the default `preserve` policy passes the
  plate's values above 1 through unstylized, whose resampled texture is an error floor no temporal
  method can lower);
- drift: per-channel mean and standard deviation of the temporal output against the per-frame
  output (relative; worst channel, over the sequence and on its last frame);
- ghosting (known motion with objects): in pixels revealed behind a moving object (its whole
  wake: background the object covered in any earlier frame), mean |temporal - per-frame| divided
  by the per-frame flicker there (mean |P_t - warp(P_t+1)| on the same pixels), and that divided
  by the same ratio on background the object never came near: about 1 when the wake looks like
  untouched background; a ghost or trail of the object makes it larger. And the wake deviation:
  mean |temporal - per-frame| (display 0..1) in the wake, beside the same on untouched background,
  not divided by the per-frame flicker (large in the wake: it let the ghosting index miss visible
  trails).

Further: flow quality per preset (end-point error against the exact flow: everywhere, within 20 px
of a moving object's edge, and on flat backgrounds) and analysis speed per preset at 1080p;
chunk boundaries with and without pre-roll; 1080p throughput temporal / per-frame for each flow
preset (alternating passes in one run, wall clock and the server's CPU time);
and the exact command lines of the held-out check (`vst render ... --embedded [--temporal]` on an
EXR sequence without motion vectors) on one hard case.

    .venv/bin/python bench/temporal.py [--size 320x192] [--frames 10] [--sections all]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_name  # noqa: E402
from server import flow  # noqa: E402
from server.evaluate import display_rgb, scoring_flow  # noqa: E402
from vst_plugin import Client, Frame, Part  # noqa: E402
from vst_plugin.exr import read_exr, write_exr  # noqa: E402
from vst_plugin.schema import TemporalSettings  # noqa: E402

STYLES = {"default": None, "style 19": {"style": 19}, "style 7": {"style": 7}}
TEMPORAL = {"strength": 0.8}  # what `vst render --temporal` sends
EDGE = 2  # pixels around object edges left out of the scores (mixed pixels have no single motion)


# ---- sequences -------------------------------------------------------------------------------


@dataclass
class Case:
    """Frames (linear RGB) with, per pair t -> t+1, the scoring flow and the pixels that count."""

    name: str
    frames: list[np.ndarray]
    forward: dict[int, np.ndarray]
    valid: dict[int, np.ndarray]
    revealed: dict[int, np.ndarray] = field(default_factory=dict)
    """Background pixels of frame t that a moving object covered in an earlier frame (its wake),
    visible at t+1."""
    untouched: dict[int, np.ndarray] = field(default_factory=dict)
    """Background pixels of frame t that no object covered so far, nor comes within 20 px of (control)."""
    near_edge: dict[int, np.ndarray] = field(default_factory=dict)
    """Pixels of frame t within 20 px of a moving object's edge (flow quality near edges)."""
    flat: np.ndarray | None = None
    """Flat-background pixels (where flow has nothing to hold on to)."""


def linear_from_srgb(image: np.ndarray) -> np.ndarray:
    return np.where(image <= 0.04045, image / 12.92, ((image + 0.055) / 1.055) ** 2.4).astype(np.float32)


def photographs(shared: Path) -> dict[str, np.ndarray]:
    """Two real scene-linear photographs, exposed as a plate would be: their 75th luminance
    percentile at 0.3, highlights rolled off by x / (1 + x/3) (so values stay up to about 3).
    As stored, Desk has a third of its pixels above 1 and StillLife a median of 0.0005: the network
    would see clipped white or black, which hides flicker instead of measuring it."""
    images = {}
    for name in ("Desk", "StillLife"):
        part = read_exr(shared / f"exr/ScanLines/{name}.exr").parts[0]
        rgb = np.stack([part.channels[c] for c in "RGB"], axis=-1).astype(np.float32)
        rgb *= 0.3 / np.percentile(rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32), 75)
        images[name] = rgb / (1 + rgb / 3)
    return images


def flat_background(width: int, height: int) -> np.ndarray:
    """A smooth, low-texture backdrop: a gradient with faint large-scale variation (a wall, a sky)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.16 + 0.10 * x / width + 0.05 * y / height + 0.01 * np.sin(x / 37.0) * np.cos(y / 29.0)
    return np.stack([base * 0.9, base, base * 1.15], axis=-1).astype(np.float32)


def camera(motion: str, source: np.ndarray, size: tuple[int, int]):
    """A function t -> 3x3 matrix taking frame pixels to source pixels, for a camera move."""
    width, height = size
    h, w = source.shape[:2]
    centre = np.array([w / 2, h / 2])
    base = min(w / width, h / height) * 0.6

    def matrix(t: int) -> np.ndarray:
        scale, angle, shift = base, 0.0, np.zeros(2)
        if motion == "pan":
            shift = np.array([2.3 * t, 0.7 * t]) * base
        elif motion == "zoom-rotate":
            scale, angle = base * (1 - 0.012 * t), np.deg2rad(0.5 * t)
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        linear = np.array([[cos, -sin], [sin, cos]])
        offset = centre + shift - linear @ np.array([width / 2, height / 2])
        return np.vstack([np.hstack([linear, offset[:, None]]), [0, 0, 1]])

    return matrix


def known_motion(
    name: str,
    size: tuple[int, int],
    count: int,
    background: np.ndarray,
    matrix=None,
    sprite: np.ndarray | None = None,
    velocity: tuple[int, int] = (0, 0),
    start: tuple[int, int] = (8, 48),
    ellipse: bool = True,
    flat: bool = False,
) -> Case:
    """A camera move over `background` (static when `matrix` is None) with an optional object
    (`sprite`, moving `velocity` px/frame) on top; exact flow and visibility."""
    width, height = size
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height)), -1).astype(np.float64)
    homogeneous = np.concatenate([grid, np.ones((height, width, 1))], -1)
    if matrix is None:
        plate = cv2.resize(background, size, interpolation=cv2.INTER_AREA)
        backgrounds = [plate] * count
        bg_forward = {t: np.zeros((height, width, 2), np.float32) for t in range(count - 1)}
        bg_backward = dict(bg_forward)
    else:
        backgrounds = [cv2.warpAffine(background, matrix(t)[:2], size, flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP,
                                      borderMode=cv2.BORDER_REFLECT) for t in range(count)]

        def between(a: int, b: int) -> np.ndarray:
            mapped = homogeneous @ (np.linalg.inv(matrix(b)) @ matrix(a)).T
            return (mapped[..., :2] - grid).astype(np.float32)

        bg_forward = {t: between(t, t + 1) for t in range(count - 1)}
        bg_backward = {t: between(t + 1, t) for t in range(count - 1)}

    alphas = [np.zeros((height, width), np.float32) for _ in range(count)]
    frames = []
    if sprite is not None:
        sh, sw = sprite.shape[:2]
        if ellipse:  # an anti-aliased ellipse, supersampled 4x
            yy, xx = np.mgrid[0 : sh * 4, 0 : sw * 4].astype(np.float32)
            inside = ((xx + 0.5) / (sw * 2) - 1) ** 2 + ((yy + 0.5) / (sh * 2) - 1) ** 2 <= 1
            cut = inside.reshape(sh, 4, sw, 4).mean((1, 3)).astype(np.float32)
        else:
            cut = np.ones((sh, sw), np.float32)
        for t in range(count):
            x, y = start[0] + velocity[0] * t, start[1] + velocity[1] * t
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + sw, width), min(y + sh, height)
            if x1 > x0 and y1 > y0:
                alphas[t][y0:y1, x0:x1] = cut[y0 - y : y1 - y, x0 - x : x1 - x]
    for t in range(count):
        frame = backgrounds[t].copy()
        if sprite is not None:
            layer = np.zeros_like(frame)
            x, y = start[0] + velocity[0] * t, start[1] + velocity[1] * t
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + sw, width), min(y + sh, height)
            if x1 > x0 and y1 > y0:
                layer[y0:y1, x0:x1] = sprite[y0 - y : y1 - y, x0 - x : x1 - x]
            a = alphas[t][..., None]
            frame = frame * (1 - a) + layer * a
        frames.append(frame.astype(np.float32))

    kernel = np.ones((2 * EDGE + 1, 2 * EDGE + 1), np.uint8)
    solid = [a > 0.5 for a in alphas]
    band = [cv2.dilate((a > 0).astype(np.uint8), kernel).astype(bool) & ~cv2.erode((a >= 1).astype(np.uint8),
                                                                                 kernel).astype(bool)
            for a in alphas]
    covered = [cv2.dilate((a > 0).astype(np.uint8), kernel).astype(bool) for a in alphas]
    step = np.array(velocity, np.float32)
    forward, valid, revealed, untouched, near_edge = {}, {}, {}, {}, {}
    wake = np.zeros((height, width), bool)
    far = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (41, 41))
    for t in range(count - 1):
        f = np.where(solid[t][..., None], step, bg_forward[t]).astype(np.float32)
        target_x, target_y = grid[..., 0] + f[..., 0], grid[..., 1] + f[..., 1]
        inside = (target_x >= 0) & (target_x <= width - 1) & (target_y >= 0) & (target_y <= height - 1)
        tx = np.clip(np.rint(target_x), 0, width - 1).astype(int)
        ty = np.clip(np.rint(target_y), 0, height - 1).astype(int)
        hidden_next = ~solid[t] & covered[t + 1][ty, tx]  # background that the object covers at t+1
        forward[t] = f
        valid[t] = inside & ~hidden_next & ~band[t] & ~band[t + 1][ty, tx]
        if sprite is not None:
            near_edge[t] = cv2.dilate(band[t].astype(np.uint8), far).astype(bool) & valid[t]
            if t >= 1:  # background of frame t that the object covered at t-1 or before
                b = bg_backward[t - 1]
                px = np.clip(np.rint(grid[..., 0] + b[..., 0]), 0, width - 1).astype(int)
                py = np.clip(np.rint(grid[..., 1] + b[..., 1]), 0, height - 1).astype(int)
                wake = (solid[t - 1] | wake)[py, px]
                revealed[t] = ~covered[t] & wake & valid[t]
                near = cv2.dilate((wake | covered[t]).astype(np.uint8), far).astype(bool)
                untouched[t] = ~near & valid[t]
    flat_mask = ~np.any(covered, axis=0) if flat else None
    return Case(name, frames, forward, valid, revealed, untouched, near_edge, flat_mask)


def known_motion_cases(shared: Path, size: tuple[int, int], count: int) -> list[Case]:
    images = photographs(shared)
    width, height = size
    desk, still = images["Desk"], images["StillLife"]
    sprite = cv2.resize(desk[200:500, 300:700], (width * 3 // 10, height * 5 // 12), interpolation=cv2.INTER_AREA)
    pole = cv2.resize(still[100:700, 400:440], (width // 20, height), interpolation=cv2.INTER_AREA)
    wall = flat_background(width, height)
    middle = (8, height // 4)
    return [
        known_motion("camera pan, textured", size, count, desk, camera("pan", desk, size)),
        known_motion("camera zoom+rotate, textured", size, count, still, camera("zoom-rotate", still, size)),
        known_motion("object 2 px/f over texture", size, count, still, None, sprite, (2, 1), middle),
        known_motion("object 12 px/f over texture", size, count, still, None, sprite, (12, 2), middle),
        known_motion("object 4 px/f over flat", size, count, wall, None, sprite, (4, 0), middle, flat=True),
        known_motion("object 12 px/f over flat", size, count, wall, None, sprite, (12, 1), middle, flat=True),
        known_motion("object 20 px/f over flat", size, count, wall, None, sprite, (20, 0), middle, flat=True),
        known_motion("object 8 px/f over camera pan", size, count, desk, camera("pan", desk, size), sprite,
                     (8, -1), (8, height // 3)),
        known_motion("thin object 10 px/f, covers and reveals", size, count, still, None, pole, (10, 0), (20, 0),
                     ellipse=False),
    ]


def real_footage(shared: Path, size: tuple[int, int], start: int, count: int) -> Case:
    """Big Buck Bunny frames `start`.. as scene-linear plates, scored with Farneback flow."""
    capture = cv2.VideoCapture(str(shared / "video/bigbuckbunny.mp4"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    while len(frames) < count:
        ok, bgr = capture.read()
        if not ok:
            break
        small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        frames.append(linear_from_srgb(small[..., ::-1].astype(np.float32) / 255))
    greys = [flow.gray8(frame) for frame in frames]
    forward, valid = {}, {}
    for t in range(len(frames) - 1):
        f, b = scoring_flow(greys[t], greys[t + 1]), scoring_flow(greys[t + 1], greys[t])
        forward[t], valid[t] = f, ~flow.occlusion(f, b)
    return Case(f"Big Buck Bunny {start}-{start + len(frames) - 1} (Farneback scoring)", frames, forward, valid)


# ---- rendering and scores --------------------------------------------------------------------


def as_frame(rgb: np.ndarray) -> Frame:
    h, w = rgb.shape[:2]
    channels = {c: np.ascontiguousarray(rgb[..., i]).astype(np.float16) for i, c in enumerate("RGB")}
    return Frame([Part(channels, (0, 0, w - 1, h - 1), (0, 0, w - 1, h - 1))])


def render(client: Client | InProcess, frames: list[np.ndarray], params: dict | None, temporal: dict | None,
           sequence: str, first: int = 0, preroll: int = 0) -> list[np.ndarray]:
    """Stylize frames (two in flight); with `preroll`, the first frames are sent and their results dropped."""
    if isinstance(client, InProcess):
        return client.render(frames, params, temporal)[preroll:]
    options = {"params": params} if params else {}
    if temporal:
        options.update(sequence=sequence, temporal=temporal)
        client.reset(sequence)
    results, pending = [], []
    for index, rgb in enumerate(frames):
        extra = {"frame_number": first + index} if temporal else {}
        pending.append((index >= preroll, client.submit(as_frame(rgb), **options, **extra)))
        while len(pending) > 2 or (index == len(frames) - 1 and pending):
            keep, item = pending.pop(0)
            result = client.result(item)
            if keep:
                results.append(display_rgb(result))
    return results


class InProcess:
    """The server's own frame path without the transport, for runs on a loaded machine: the model,
    `server.pipeline.stylize_frame` with the sequence's memory, and `server.temporal`'s analysis
    chained frame to frame, exactly as the request loop and the worker do. Per-frame results are kept
    between calls (they do not depend on the temporal method)."""

    def __init__(self) -> None:
        from server.colour import ColourSpaces
        from server.models import load_model

        self.model = load_model("multistyle26", "cpu")
        self.colours = ColourSpaces()
        self._per_frame: dict[tuple[int, str], list[np.ndarray]] = {}

    def reset(self, sequence: str) -> None:  # the same calls as a Client gets from `render`
        pass

    def render(self, frames: list[np.ndarray], params: dict | None, temporal: dict | None) -> list[np.ndarray]:
        from concurrent.futures import Future

        from server import temporal as method
        from server.pipeline import TemporalBlend, stylize_frame
        from vst_plugin.schema import StylizeSettings

        key = (id(frames), repr(params))
        if temporal is None and key in self._per_frame:
            return self._per_frame[key]
        chosen = TemporalSettings(**temporal) if temporal else None
        settings = StylizeSettings("multistyle26", params or {}, temporal=chosen)
        memory: dict = {}
        previous = None
        results = []
        for rgb in frames:
            frame = as_frame(rgb)
            blend = None
            if settings.temporal is not None:
                done: Future = Future()
                done.set_result(method._analyse(previous, lambda frame=frame: frame, None, settings.temporal))
                blend, previous = TemporalBlend(settings.temporal.strength, done.result()[1]), done
            changed = stylize_frame(frame, self.model, dict(params or {}), settings, self.colours, memory, blend)
            frame.parts[0].channels.update({name: plane for (_, name), plane in changed.items()})
            results.append(display_rgb(frame))
        if temporal is None:
            self._per_frame[key] = results
        return results


def warping_error(outputs: list[np.ndarray], case: Case, stylized_only: bool = False) -> float:
    """Mean warping error over the sequence; `stylized_only` leaves out pixels whose plate lies outside
    0..1 in either frame of the pair (the default `preserve` highlight policy passes the plate's values
    above 1 through unstylized: the method cannot touch them, and their texture, warped by the scoring
    flow, gives every method the same floor of error)."""
    errors = []
    for t in case.forward:
        if t + 1 >= len(outputs):
            continue
        valid = case.valid[t]
        if stylized_only:
            inside = [np.all((frame >= 0) & (frame <= 1), axis=-1) for frame in case.frames[t : t + 2]]
            landing, _ = flow.warp(inside[1].astype(np.float32), case.forward[t])
            valid = valid & inside[0] & (landing >= 1 - 1e-6)
        errors.append(flow.warping_error(outputs[t], outputs[t + 1], case.forward[t], valid))
    return float(np.nanmean(errors))


def drift(temporal: list[np.ndarray], per_frame: list[np.ndarray]) -> tuple[float, float]:
    """Worst relative change of a channel's mean or standard deviation: over the sequence, last frame."""

    def worst(a: np.ndarray, b: np.ndarray) -> float:
        axes = tuple(range(a.ndim - 1))
        mean = np.abs(a.mean(axes) - b.mean(axes)) / np.maximum(b.mean(axes), 1e-3)
        std = np.abs(a.std(axes) - b.std(axes)) / np.maximum(b.std(axes), 1e-3)
        return float(max(mean.max(), std.max()))

    return worst(np.stack(temporal), np.stack(per_frame)), worst(temporal[-1], per_frame[-1])


def trail(temporal: list[np.ndarray], per_frame: list[np.ndarray], case: Case) -> tuple[float, float]:
    """Mean |temporal - per-frame| (display 0..1) in a moving object's wake and on background the object
    never came near. Not divided by the per-frame flicker, as `ghosting` is: that flicker is large in
    the wake (the network's response around the object moves with it) and let `ghosting` miss visible
    trails of the object's surroundings dragged along behind it."""

    def deviation(masks: dict[int, np.ndarray]) -> float:
        values = [np.abs(temporal[t] - per_frame[t])[mask].mean() for t, mask in masks.items() if mask.any()]
        return float(np.mean(values)) if values else float("nan")

    return deviation(case.revealed), deviation(case.untouched)


def ghosting(temporal: list[np.ndarray], per_frame: list[np.ndarray], case: Case) -> float:
    """How far the temporal result strays from the per-frame one in a moving object's wake, relative
    to the per-frame flicker there, and that relative to the same ratio on untouched background:
    about 1 when the wake behaves like background the object never crossed; a ghost makes it larger."""

    def ratio(masks: dict[int, np.ndarray]) -> float:
        deviation, flicker = [], []
        for t, mask in masks.items():
            if not mask.any() or t + 1 >= len(per_frame):
                continue
            warped, _ = flow.warp(per_frame[t + 1], case.forward[t])
            deviation.append(np.abs(temporal[t] - per_frame[t])[mask].mean())
            flicker.append(np.abs(per_frame[t] - warped)[mask].mean())
        return float(np.mean(deviation) / np.mean(flicker)) if flicker else float("nan")

    return ratio(case.revealed) / ratio(case.untouched)


# ---- sections --------------------------------------------------------------------------------


def stability(client: Client, cases: list[Case]) -> list[dict]:
    rows = []
    for case in cases:
        for style, params in STYLES.items():
            per_frame = render(client, case.frames, params, None, "")
            temporal = render(client, case.frames, params, TEMPORAL, case.name)
            before, after = warping_error(per_frame, case), warping_error(temporal, case)
            stylized = warping_error(temporal, case, True) / warping_error(per_frame, case, True)
            whole, last = drift(temporal, per_frame)
            row = {"case": case.name, "style": style, "ratio": after / before, "per_frame": before,
                   "stylized": stylized, "drift": whole, "drift_last": last,
                   "ghost": ghosting(temporal, per_frame, case), "trail": trail(temporal, per_frame, case)}
            rows.append(row)
            print(f"| {case.name} | {style} | {before:.5f} | {after:.5f} | {row['ratio']:.3f} | {stylized:.3f} | "
                  f"{whole * 100:.1f}% / {last * 100:.1f}% | {row['ghost']:.2f} | {row['trail'][0]:.3f} "
                  f"({row['trail'][1]:.3f}) |", flush=True)
    return rows


def method_visibility(previous: np.ndarray, current: np.ndarray, preset: str) -> tuple[np.ndarray, np.ndarray]:
    """The server's own motion analysis of `current` after `previous` (linear RGB): its flow to the
    previous frame and its visibility weight (0..1), as the blend would use them."""
    from concurrent.futures import Future

    from server import temporal

    options = TemporalSettings(strength=0.8, preset=preset)
    done: Future = Future()
    done.set_result(temporal._analyse(None, lambda: as_frame(previous), None, options))
    motion = next(iter(temporal._analyse(done, lambda: as_frame(current), None, options)[1].values()))
    return motion.to_previous, np.asarray(motion.visible, np.float32)


def flow_presets(cases: list[Case], hd: list[np.ndarray]) -> None:
    """Each preset's flow against the exact one (end-point error of the flow to the previous frame),
    how much of the truly visible area its visibility keeps, and its analysis speed at 1080p."""
    print("\n| preset | EPE all | EPE within 20 px of object edges | EPE flat background | truly visible kept "
          "(mean weight) | analysis ms/frame 1080p | analysis fps |")
    print("|---|---|---|---|---|---|---|")
    for preset in flow.PRESETS:
        epe_all, epe_edge, epe_flat, kept = [], [], [], []
        for case in cases:
            for t in list(case.forward)[1:4]:
                # visible pixels x of frame t map to x + F_t in t+1, whose flow to t should be -F_t there
                to_previous, weight = method_visibility(case.frames[t], case.frames[t + 1], preset)
                back, _ = flow.warp(to_previous, case.forward[t])
                error = np.linalg.norm(back + case.forward[t], axis=-1)
                seen, _ = flow.warp(weight, case.forward[t])
                epe_all.append(error[case.valid[t]].mean())
                kept.append(seen[case.valid[t]].mean())
                if case.near_edge.get(t) is not None and case.near_edge[t].any():
                    epe_edge.append(error[case.near_edge[t]].mean())
                if case.flat is not None:
                    epe_flat.append(error[case.flat & case.valid[t]].mean())
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            method_visibility(hd[0], hd[1], preset)
            seconds.append(time.perf_counter() - start)
        best = min(seconds)
        print(f"| {preset} | {np.mean(epe_all):.2f} | {np.mean(epe_edge):.2f} | {np.mean(epe_flat):.2f} | "
              f"{np.mean(kept) * 100:.1f}% | {best * 1000:.0f} | {1 / best:.1f} |", flush=True)


def chunks(client: Client, case: Case) -> None:
    half = len(case.frames) // 2
    whole = render(client, case.frames, None, TEMPORAL, "whole")
    inside = np.mean([flow.warping_error(whole[t], whole[t + 1], case.forward[t], case.valid[t])
                      for t in case.forward if t != half - 1])
    first = render(client, case.frames[:half], None, TEMPORAL, "chunk-a")
    cold = render(client, case.frames[half:], None, TEMPORAL, "chunk-b", first=half)
    warm = render(client, case.frames[half - 4 :], None, TEMPORAL, "chunk-c", first=half - 4, preroll=4)
    t = half - 1
    across = {name: flow.warping_error(first[-1], second[0], case.forward[t], case.valid[t])
              for name, second in (("cold", cold), ("warm", warm))}
    print(f"\nchunk boundary ({case.name}, chunks 0-{t} and {half}-{len(case.frames) - 1}, default style): "
          f"warping error across the boundary without pre-roll {across['cold']:.5f}, with 4 pre-roll frames "
          f"{across['warm']:.5f}; inside a chunk {inside:.5f}", flush=True)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc; nan elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm_up(client: Client, hd: list[np.ndarray], limit: int = 8) -> None:
    """Render single 1080p frames until two in a row take within 10% of each other (at most `limit`),
    then two temporal frames: the server compiles its fused pipeline stages in a background thread
    (server/fused.py, tens of seconds of CPU) and runs them eagerly until then, which would slow
    whichever mode came first."""
    seconds: list[float] = []
    for index in range(limit):
        start = time.perf_counter()
        render(client, [hd[index % len(hd)]], None, None, "warm-up")
        seconds.append(time.perf_counter() - start)
        if len(seconds) >= 2 and abs(seconds[-1] - seconds[-2]) <= 0.1 * seconds[-2]:
            break
    render(client, hd[:2], None, TEMPORAL, "warm-up-temporal")
    print(f"1080p warm-up: {len(seconds)} single frames ({', '.join(f'{s:.1f}' for s in seconds)} s), then two "
          f"temporal frames", flush=True)


def throughput(client: Client, hd: list[np.ndarray], pid: int, rounds: int) -> None:
    """Per-frame and temporal passes (each flow preset) over the same 1080p frames, alternating `rounds`
    times (a shared machine's load drifts: alternation spreads it over every mode); wall-clock frames
    per second and the renderer's CPU seconds per frame (CPU time is less sensitive to other processes
    than wall time). The headline ratio is the default preset's."""
    warm_up(client, hd)
    modes = {"per-frame": None, **{preset: {**TEMPORAL, "preset": preset} for preset in flow.PRESETS}}
    wall: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_ in range(rounds):
        for mode, options in modes.items():
            start, used = time.perf_counter(), cpu_seconds(pid)
            render(client, hd, None, options, f"hd-{mode}-{round_}")
            wall[mode].append(time.perf_counter() - start)
            cpu[mode].append(cpu_seconds(pid) - used)
            label = mode if options is None else f"temporal {mode}"
            print(f"1080p round {round_ + 1} {label}: {len(hd) / wall[mode][-1]:.3f} fps, "
                  f"{cpu[mode][-1] / len(hd):.2f} CPU s/frame (load {os.getloadavg()[0]:.1f})", flush=True)
    print("\n| preset | temporal fps 1080p | temporal/per-frame (rounds) | by CPU time |\n|---|---|---|---|")
    for preset in flow.PRESETS:
        ratio = sum(wall["per-frame"]) / sum(wall[preset])
        rounds_ratio = ", ".join(f"{p / t:.3f}" for p, t in zip(wall["per-frame"], wall[preset], strict=True))
        print(f"| {preset} | {len(hd) * rounds / sum(wall[preset]):.3f} | {ratio:.3f} ({rounds_ratio}) | "
              f"{sum(cpu['per-frame']) / sum(cpu[preset]):.3f} |", flush=True)
    default = TemporalSettings().preset
    print(f"\n1080p throughput ({len(hd)} frames per pass, {rounds} alternating rounds, default style, default preset "
          f"{default}): per-frame {len(hd) * rounds / sum(wall['per-frame']):.3f} fps, temporal/per-frame "
          f"{sum(wall['per-frame']) / sum(wall[default]):.3f}", flush=True)


def held_out_commands(case: Case, vst: str) -> None:
    """The held-out check's command lines, verbatim, on an EXR sequence without motion vectors."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for t, rgb in enumerate(case.frames, start=1):
            write_exr(as_frame(rgb), str(folder / f"plate.{t:04d}.exr"))
        frames = f"1-{len(case.frames)}"
        outputs = {}
        for name, extra in (("single", []), ("temporal", ["--temporal"])):
            command = [vst, "render", str(folder / "plate.####.exr"), str(folder / f"{name}.####.exr"),
                       "--frames", frames, "--embedded", *extra]
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
            outputs[name] = [display_rgb(read_exr(str(folder / f"{name}.{t:04d}.exr")))
                             for t in range(1, len(case.frames) + 1)]
        before, after = warping_error(outputs["single"], case), warping_error(outputs["temporal"], case)
        whole, last = drift(outputs["temporal"], outputs["single"])
        print(f"\n`vst render plate.####.exr out.####.exr --frames {frames} --embedded [--temporal]` on "
              f"{case.name}: warping error {before:.5f} -> {after:.5f}, ratio {after / before:.3f}; drift "
              f"{whole * 100:.1f}% / {last * 100:.1f}%; ghosting "
              f"{ghosting(outputs['temporal'], outputs['single'], case):.2f}", flush=True)


def measure(client: Client | InProcess, args: argparse.Namespace, cases: list[Case], sections: set[str], shared: Path,
            size: tuple[int, int], real_size: tuple[int, int], hd: list[np.ndarray] | None, pid: int) -> None:
    """The sections that render: stability, real footage, chunk boundaries, throughput."""
    rows = []
    if sections & {"stability", "real"}:
        print("| case | style | warping error per-frame | temporal | ratio | ratio, stylized pixels | drift seq / last "
              "| ghosting | wake deviation (untouched) |")
        print("|---|---|---|---|---|---|---|---|---|")
    if "stability" in sections:
        rows += stability(client, cases)
    if "real" in sections:
        for segment in args.real.split(","):
            start, count = (int(v) for v in segment.split(":"))
            rows += stability(client, [real_footage(shared, real_size, start, count)])
    if rows:
        known = [row for row in rows if not row["case"].startswith("Big Buck")]
        real = [row for row in rows if row["case"].startswith("Big Buck")]
        ghosts = [row["ghost"] for row in rows if np.isfinite(row["ghost"])]
        trails = [row["trail"][0] for row in rows if np.isfinite(row["trail"][0])]
        print(f"\nsummary: worst ratio known motion {max((r['ratio'] for r in known), default=np.nan):.3f} "
              f"(goal <= 0.40), real footage {max((r['ratio'] for r in real), default=np.nan):.3f} "
              f"(goal <= 0.60); worst drift {max(r['drift'] for r in rows) * 100:.1f}% over the sequence, "
              f"{max(r['drift_last'] for r in rows) * 100:.1f}% on the last frame (goal <= 10%); worst "
              f"ghosting {max(ghosts, default=np.nan):.2f}, wake deviation {max(trails, default=np.nan):.3f}; "
              f"worst ratio on stylized pixels, known motion "
              f"{max((r['stylized'] for r in known), default=np.nan):.3f}", flush=True)
    if "chunks" in sections:
        chunks(client, known_motion_cases(shared, size, 12)[0])
    if "throughput" in sections and isinstance(client, InProcess):
        print("\n1080p throughput: not measured in process (per-frame results are kept between calls there)")
    elif "throughput" in sections:
        throughput(client, hd, pid, args.hd_rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="320x192", help="known-motion frame size (multiples of 4)")
    parser.add_argument("--frames", type=int, default=10, help="frames per known-motion sequence")
    parser.add_argument("--real-size", default="480x272")
    parser.add_argument("--real", default="12:12,36:12", help="Big Buck Bunny segments START:COUNT,...")
    parser.add_argument("--hd-frames", type=int, default=3, help="frames per pass for the 1080p throughput")
    parser.add_argument("--hd-rounds", type=int, default=2, help="alternating per-frame/temporal passes at 1080p")
    parser.add_argument("--sections", default="stability,real,presets,chunks,cli,throughput")
    parser.add_argument("--cases", default="", help="only known-motion cases whose name contains one of these")
    parser.add_argument("--styles", default=",".join(STYLES), help="styles to render (names as in STYLES)")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--address", default="tcp://127.0.0.1:5597")
    parser.add_argument("--in-process", action="store_true",
                        help="render with the server's pipeline in this process (no transport; for a loaded machine)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    real_size = tuple(int(v) for v in args.real_size.split("x"))
    sections = set(args.sections.split(","))
    shared = Path(args.shared)
    for name in set(STYLES) - set(args.styles.split(",")):
        del STYLES[name]

    cases = known_motion_cases(shared, size, args.frames)
    if args.cases:
        cases = [case for case in cases if any(part in case.name for part in args.cases.split(","))]
    hd = None
    if sections & {"presets", "throughput"}:
        desk = photographs(shared)["Desk"]
        hd = known_motion("hd", (1920, 1080), args.hd_frames + 1, desk, camera("pan", desk, (1920, 1080))).frames
    vst = os.path.join(os.path.dirname(sys.executable), "vst")
    print(f"# bench/temporal.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\ndevice: {cpu_name()}, "
          f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; known motion {size[0]}x{size[1]}, "
          f"{args.frames} frames; temporal {TEMPORAL} (defaults otherwise)")
    if "presets" in sections:
        flow_presets(cases, hd)
    if args.in_process:
        print("renders: in process (server.pipeline + server.temporal, no transport)\n")
        measure(InProcess(), args, cases, sections, shared, size, real_size, hd, os.getpid())
    else:
        server = subprocess.Popen([vst, "serve", "--bind", args.address, "--device", "auto"])
        try:
            with Client(args.address, timeout=300) as client:
                print(f"server device: {client.hello()['device']}\n")
                measure(client, args, cases, sections, shared, size, real_size, hd, server.pid)
        finally:
            server.terminate()
            server.wait(60)
    if "cli" in sections:
        hard = [case for case in known_motion_cases(shared, size, args.frames) if "20 px/f" in case.name]
        held_out_commands(hard[0], vst)


if __name__ == "__main__":
    main()
