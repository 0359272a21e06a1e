"""Render the README's "Style from any image" gallery: one real plate styled by two "paintings".

    .venv/bin/python tools/gallery_arbitrary.py [--out docs/images/arbitrary_gallery.png]

No paintings are available offline, so the two style images are made here, honestly labelled:
(a) another frame of the same shot (Big Buck Bunny frame 30) "painted" by the built-in multistyle26
network, saved as a PNG: the use case of a painter styling one frame of the shot; (b) a different
real photograph (OpenEXR's Carrots.exr) "painted" with another built-in style, saved as a
scene-linear EXR. The plate (frame 100, decoded from the sRGB mp4 to linear Rec.709) is stylized by
`server.pipeline.stylize_frame` with the arbitrary model from each painting and a 50/50 mix of both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import OpenImageIO as oiio
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.colour import ColourSpaces, srgb_decode, srgb_encode  # noqa: E402
from server.models import load_model  # noqa: E402
from server.pipeline import stylize_frame  # noqa: E402
from vst_plugin.frame import Frame, Part  # noqa: E402
from vst_plugin.schema import StylizeSettings  # noqa: E402
from vst_plugin.sheet import label, write_grid  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
TILE = 420


def video_frame(number: int) -> np.ndarray:
    """Frame `number` of the Big Buck Bunny clip as sRGB-encoded (H, W, 3) float32 0..1."""
    video = cv2.VideoCapture(str(SHARED / "video/bigbuckbunny.mp4"))
    video.set(cv2.CAP_PROP_POS_FRAMES, number)
    ok, bgr = video.read()
    if not ok:
        raise SystemExit(f"cannot decode frame {number} of {SHARED / 'video/bigbuckbunny.mp4'}")
    return np.ascontiguousarray(bgr[..., ::-1], dtype=np.float32) / 255


def linear_frame(linear: np.ndarray) -> Frame:
    height, width = linear.shape[:2]
    window = (0, 0, width - 1, height - 1)
    return Frame([Part({c: np.ascontiguousarray(linear[..., i]) for i, c in enumerate("RGB")}, window, window)])


def tile(encoded: np.ndarray, text: str) -> np.ndarray:
    """An sRGB-encoded image fitted into a 16:9 tile (aspect kept), with a label above it."""
    box_height = TILE * 9 // 16
    scale = min(TILE / encoded.shape[1], box_height / encoded.shape[0])
    width, height = round(encoded.shape[1] * scale), round(encoded.shape[0] * scale)
    image = cv2.resize(np.clip(encoded, 0, 1).astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    out = np.zeros((box_height, TILE, 3), np.float32)
    top, left = (box_height - height) // 2, (TILE - width) // 2
    out[top : top + height, left : left + width] = image
    return label(out, text, 18)


def encoded(frame: Frame, changed: dict) -> np.ndarray:
    planes = np.stack([changed[(0, c)] for c in "RGB"], axis=-1)
    return srgb_encode(torch.from_numpy(planes).clamp(0, 1)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/images/arbitrary_gallery.png")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vst_gallery_"))
    multistyle, arbitrary = load_model("multistyle26"), load_model("arbitrary")
    colours = ColourSpaces()

    # painting (a): another frame of the shot, painted by built-in style 19, as a PNG
    shot_frame = torch.from_numpy(video_frame(30)).permute(2, 0, 1)[None]
    painted = multistyle.stylize(shot_frame, style="19")[0].permute(1, 2, 0).numpy()
    painting_a = folder / "painted_frame_30.png"
    oiio.ImageBuf(np.ascontiguousarray(painted)).write(str(painting_a), oiio.UINT8)

    # painting (b): a different real photograph painted by built-in style 7, as a scene-linear EXR
    carrots = oiio.ImageBuf(str(SHARED / "exr/ScanLines/Carrots.exr")).get_pixels(oiio.FLOAT)[..., :3]
    carrots = cv2.resize(carrots, (carrots.shape[1] // 2, carrots.shape[0] // 2), interpolation=cv2.INTER_AREA)
    carrots_encoded = srgb_encode(torch.from_numpy(carrots).clamp(0, 1)).permute(2, 0, 1)[None]
    painted_b = multistyle.stylize(carrots_encoded, style="7")
    linear_b = srgb_decode(painted_b)[0].permute(1, 2, 0).numpy()
    painting_b = folder / "painted_carrots.exr"
    oiio.ImageBuf(np.ascontiguousarray(linear_b)).write(str(painting_b), oiio.HALF)

    plate = linear_frame(srgb_decode(torch.from_numpy(video_frame(100))).numpy())
    options = StylizeSettings("arbitrary", layers=("rgba",))
    results = []
    for params in (
        {"style_image": str(painting_a)},
        {"style_image": str(painting_b)},
        {"style_image": str(painting_a), "style_image_b": str(painting_b), "style_mix": 0.5},
    ):
        results.append(encoded(plate, stylize_frame(plate, arbitrary, arbitrary.validate(params), options, colours)))
        print(f"{params} done", flush=True)

    tiles = [
        tile(video_frame(100), "plate: Big Buck Bunny frame 100"),
        tile(painted, "painting a: frame 30, built-in style 19"),
        tile(painted_b[0].permute(1, 2, 0).numpy(), "painting b: Carrots.exr, built-in style 7"),
        tile(results[0], "plate styled from painting a"),
        tile(results[1], "plate styled from painting b"),
        tile(results[2], "style_mix 0.5 of a and b"),
    ]
    width, height = write_grid(tiles, 3, args.out)
    print(f"wrote {args.out} ({width}x{height})")

if __name__ == "__main__":
    main()
