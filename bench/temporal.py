"""Temporal stability: per-frame vs `temporal` rendering through a real vst server.

Sequences with known motion are built from real images (OpenEXR ScanLines photographs and a Big Buck
Bunny frame): a pan, a zoom, a rotation, and a moving object over a static background. Each is
rendered per frame and in temporal mode (same model, style, server), then measured:

- warping error (Lai et al.; ground-truth flow, non-occluded pixels, RGB 0..1): ratio temporal /
  per-frame (goal <= 0.4);
- style kept: relative distance of Gram matrices of the temporal output to the per-frame output,
  on the features of the network's own first layer (goal within 10%);
- chunk boundaries: the sequence rendered as two chunks, without and with pre-roll, warping error of
  the pair across the boundary versus the mean inside the chunk;
- throughput of temporal vs per-frame mode at 1080p;
- warping error on ../shared/video/bigbuckbunny.mp4 with estimated (DIS) flow.

    .venv/bin/python bench/temporal.py [--size 480x270] [--frames 12] [--strength 0.8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.evaluate import display_rgb, warping_errors  # noqa: E402
from server.flow import dis_flow, gray8  # noqa: E402
from server.models import load_model  # noqa: E402
from vst_plugin import Client, Frame, Part  # noqa: E402
from vst_plugin.exr import read_exr  # noqa: E402

SHARED = ROOT.parent / "shared"
STYLE = {"style": 19}


def linear_from_srgb(image: np.ndarray) -> np.ndarray:
    return np.where(image <= 0.04045, image / 12.92, ((image + 0.055) / 1.055) ** 2.4).astype(np.float32)


def source_images() -> dict[str, np.ndarray]:
    """Linear RGB float32 images: two photographs and a video frame."""
    images = {}
    for name in ("Desk", "StillLife"):
        part = read_exr(SHARED / f"exr/ScanLines/{name}.exr").parts[0]
        images[name] = np.stack([part.channels[c] for c in "RGB"], axis=-1).astype(np.float32)
    capture = cv2.VideoCapture(str(SHARED / "video/bigbuckbunny.mp4"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 60)
    _, bgr = capture.read()
    images["bunny"] = linear_from_srgb(bgr[..., ::-1].astype(np.float32) / 255)
    return images


def affine_sequence(image: np.ndarray, size: tuple[int, int], count: int, motion: str):
    """Frames of `image` under a known affine motion; returns frames and forward/backward flows."""
    width, height = size
    h, w = image.shape[:2]
    centre = np.array([w / 2, h / 2])
    base_scale = min(w / width, h / height) * 0.6

    def matrix(t: int) -> np.ndarray:  # frame pixel -> source pixel
        scale, angle, shift = base_scale, 0.0, np.zeros(2)
        if motion == "pan":
            shift = np.array([1.7 * t, 0.6 * t])
        elif motion == "zoom":
            scale = base_scale * (1 - 0.012 * t)
        elif motion == "rotation":
            angle = np.deg2rad(0.6 * t)
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        linear = np.array([[cos, -sin], [sin, cos]])
        offset = centre + shift - linear @ np.array([width / 2, height / 2])
        return np.vstack([np.hstack([linear, offset[:, None]]), [0, 0, 1]])

    frames = [cv2.warpAffine(image, matrix(t)[:2], (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT) for t in range(count)]
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height)), -1).reshape(-1, 2).astype(np.float64)
    homogeneous = np.hstack([grid, np.ones((len(grid), 1))])
    flows = {}
    for t in range(count - 1):
        to_next = homogeneous @ (np.linalg.inv(matrix(t + 1)) @ matrix(t)).T
        to_prev = homogeneous @ (np.linalg.inv(matrix(t)) @ matrix(t + 1)).T
        forward = (to_next[:, :2] - grid).reshape(height, width, 2).astype(np.float32)
        backward = (to_prev[:, :2] - grid).reshape(height, width, 2).astype(np.float32)
        flows[t] = (forward, backward)
    return frames, flows


def object_sequence(background: np.ndarray, sprite_source: np.ndarray, size: tuple[int, int], count: int):
    """A static background with a rectangular patch of another image moving across it."""
    width, height = size
    back = cv2.resize(background, size, interpolation=cv2.INTER_AREA)
    sprite = cv2.resize(sprite_source, (width // 3, height // 3), interpolation=cv2.INTER_AREA)
    sh, sw = sprite.shape[:2]
    step = np.array([3, 1])
    frames, positions = [], []
    for t in range(count):
        x, y = 10 + step[0] * t, height // 3 + step[1] * t
        frame = back.copy()
        frame[y : y + sh, x : x + sw] = sprite
        frames.append(frame)
        positions.append((x, y))
    flows = {}
    for t in range(count - 1):
        forward = np.zeros((height, width, 2), np.float32)
        backward = np.zeros((height, width, 2), np.float32)
        x, y = positions[t]
        forward[y : y + sh, x : x + sw] = step
        x, y = positions[t + 1]
        backward[y : y + sh, x : x + sw] = -step
        flows[t] = (forward, backward)
    return frames, flows


def as_frame(rgb: np.ndarray) -> Frame:
    h, w = rgb.shape[:2]
    channels = {c: np.ascontiguousarray(rgb[..., i]).astype(np.float16) for i, c in enumerate("RGB")}
    return Frame([Part(channels, (0, 0, w - 1, h - 1), (0, 0, w - 1, h - 1))])


def render(client: Client, frames: list[np.ndarray], temporal: float | None, sequence: str, first: int = 0,
           preroll: list[np.ndarray] = ()) -> list[np.ndarray]:
    """Stylize frames (two in flight) and return display images; pre-roll frames are sent and dropped."""
    options = {"params": STYLE}
    if temporal:
        options.update(sequence=sequence, temporal={"strength": temporal})
    work = [(first - len(preroll) + i, f, False) for i, f in enumerate(preroll)]
    work += [(first + i, f, True) for i, f in enumerate(frames)]
    results, pending = [], []
    for number, rgb, keep in work:
        extra = {"frame_number": number} if temporal else {}
        pending.append((keep, client.submit(as_frame(rgb), **options, **extra)))
        if len(pending) >= 2:
            keep_it, item = pending.pop(0)
            result = client.result(item)
            if keep_it:
                results.append(display_rgb(result))
    for keep_it, item in pending:
        result = client.result(item)
        if keep_it:
            results.append(display_rgb(result))
    return results


def gram_distance(a: list[np.ndarray], b: list[np.ndarray], features: torch.nn.Module) -> float:
    """Mean relative Frobenius distance between Gram matrices of first-layer features."""
    distances = []
    for x, y in zip(a, b, strict=True):
        grams = []
        for image in (x, y):
            tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
            with torch.inference_mode():
                f = features(tensor).flatten(2)[0]
            grams.append(f @ f.T / f.shape[1])
        distances.append(float(torch.linalg.norm(grams[0] - grams[1]) / torch.linalg.norm(grams[1])))
    return float(np.mean(distances))


def first_layer(model) -> torch.nn.Module:
    """The style network's own first convolution + ReLU, as a feature extractor for Gram statistics."""
    weight = model._module.contract[0].weight.detach().float().cpu()

    class Features(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
            return torch.relu(torch.nn.functional.conv2d(x, weight))

    return Features()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="480x270")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--hd-frames", type=int, default=4, help="frames per mode for the 1080p throughput")
    parser.add_argument("--bunny-frames", type=int, default=24)
    parser.add_argument("--address", default="tcp://127.0.0.1:5597")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    vst = os.path.join(os.path.dirname(sys.executable), "vst")
    server = subprocess.Popen([vst, "serve", "--bind", args.address, "--device", "auto"])
    try:
        with Client(args.address, timeout=120) as client:
            device = client.hello()["device"]
            images = source_images()
            features = first_layer(load_model("multistyle26", "cpu"))
            print(f"device: {device}; size {size[0]}x{size[1]}, {args.frames} frames, temporal strength "
                  f"{args.strength}, model multistyle26 style 19")
            sequences = {
                "pan (Desk)": affine_sequence(images["Desk"], size, args.frames, "pan"),
                "zoom (StillLife)": affine_sequence(images["StillLife"], size, args.frames, "zoom"),
                "rotation (bunny frame)": affine_sequence(images["bunny"], size, args.frames, "rotation"),
                "moving object (Desk over StillLife)": object_sequence(images["StillLife"], images["Desk"], size,
                                                                       args.frames),
            }
            ratios, grams = [], []
            for name, (frames, flows) in sequences.items():
                per_frame = render(client, frames, None, name)
                temporal = render(client, frames, args.strength, name)
                before = warping_errors(dict(enumerate(per_frame)), flows).mean
                after = warping_errors(dict(enumerate(temporal)), flows).mean
                gram = gram_distance(temporal, per_frame, features)
                ratios.append(after / before)
                grams.append(gram)
                print(f"{name}: warping error per-frame {before:.5f}, temporal {after:.5f}, "
                      f"ratio {after / before:.3f}; Gram distance temporal vs per-frame {gram * 100:.1f}%")

            frames, flows = sequences["pan (Desk)"]
            half = len(frames) // 2
            inside = warping_errors(dict(enumerate(render(client, frames, args.strength, "whole"))), flows)
            inside_mean = float(np.mean([e for t, _, e in inside.pairs if t != half - 1]))
            first = render(client, frames[:half], args.strength, "chunk-a")
            cold = render(client, frames[half:], args.strength, "chunk-b", first=half)
            warm = render(client, frames[half:], args.strength, "chunk-c", first=half, preroll=frames[half - 4 : half])
            boundary = {half - 1: flows[half - 1]}
            cold_error = warping_errors({half - 1: first[-1], half: cold[0]}, boundary).mean
            warm_error = warping_errors({half - 1: first[-1], half: warm[0]}, boundary).mean
            print(f"chunk boundary (pan, chunks 0-{half - 1} and {half}-{len(frames) - 1}): warping error across "
                  f"the boundary without pre-roll {cold_error:.5f}, with 4 pre-roll frames {warm_error:.5f}; "
                  f"inside a chunk {inside_mean:.5f}")

            hd = affine_sequence(images["Desk"], (1920, 1080), args.hd_frames + 1, "pan")[0]
            render(client, hd[:1], None, "warm-up")
            timings = {}
            for mode, strength in (("per-frame", None), ("temporal", args.strength)):
                start = time.perf_counter()
                render(client, hd, strength, f"hd-{mode}")
                timings[mode] = len(hd) / (time.perf_counter() - start)
            print(f"1080p throughput: per-frame {timings['per-frame']:.3f} fps, temporal {timings['temporal']:.3f} "
                  f"fps, temporal/per-frame {timings['temporal'] / timings['per-frame']:.3f}")

            capture = cv2.VideoCapture(str(SHARED / "video/bigbuckbunny.mp4"))
            video = []
            while len(video) < args.bunny_frames:
                ok, bgr = capture.read()
                if not ok:
                    break
                small = cv2.resize(bgr, (640, 360), interpolation=cv2.INTER_AREA)
                video.append(linear_from_srgb(small[..., ::-1].astype(np.float32) / 255))
            greys = [gray8(frame) for frame in video]
            estimated = {t: (dis_flow(greys[t], greys[t + 1], "medium"), dis_flow(greys[t + 1], greys[t], "medium"))
                         for t in range(len(video) - 1)}
            bunny_before = warping_errors(dict(enumerate(render(client, video, None, "bbb"))), estimated).mean
            bunny_after = warping_errors(dict(enumerate(render(client, video, args.strength, "bbb"))), estimated).mean
            print(f"bigbuckbunny.mp4 ({len(video)} frames at 640x360, DIS flow on the input): warping error "
                  f"per-frame {bunny_before:.5f}, temporal {bunny_after:.5f}, ratio {bunny_after / bunny_before:.3f}")
            print(f"summary: warping error ratio temporal/per-frame worst {max(ratios):.3f} (goal <= 0.4), "
                  f"Gram distance worst {max(grams) * 100:.1f}% (goal <= 10%)")
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
