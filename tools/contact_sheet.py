"""Render the README contact sheet: a real plate through the real server pipeline in several styles.

    .venv/bin/python tools/contact_sheet.py [--plate samples/beachball/beachball.0001.exr]
        [--styles 0 3 7 12 19 23 3:0.5,12:0.5] [--out docs/images/contact_sheet.png]

Each tile is the plate's main RGB layer stylized by `server.pipeline.stylize_frame` (scene-linear in,
highlights preserved), shown sRGB-encoded and clipped for display, labelled with its style.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.colour import ColourSpaces, srgb_encode  # noqa: E402
from server.models import load_model  # noqa: E402
from server.pipeline import stylize_frame  # noqa: E402
from tools.sheet import label, write_grid  # noqa: E402
from vst_plugin.exr import read_exr  # noqa: E402
from vst_plugin.frame import Frame  # noqa: E402
from vst_plugin.schema import StylizeSettings  # noqa: E402

TILE = 360


def display(frame: Frame, changed: dict | None = None) -> np.ndarray:
    """The main layer's RGB as an sRGB-encoded (H, W, 3) image scaled to the tile width."""
    part = frame.parts[0]
    planes = [(changed or {}).get((0, name), part.channels[name]) for name in "RGB"]
    rgb = torch.from_numpy(np.stack(planes).astype(np.float32))[None]
    height = round(TILE * rgb.shape[2] / rgb.shape[3])
    rgb = torch.nn.functional.interpolate(rgb, size=(height, TILE), mode="area")
    return srgb_encode(rgb.clamp(0, 1))[0].permute(1, 2, 0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plate", default="samples/beachball/beachball.0001.exr")
    parser.add_argument("--styles", nargs="+", default=["0", "3", "7", "12", "19", "23", "3:0.5,12:0.5"])
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--out", default="docs/images/contact_sheet.png")
    args = parser.parse_args()

    plate = read_exr(args.plate)
    model = load_model("multistyle26", "cuda" if torch.cuda.is_available() else "cpu")
    colours = ColourSpaces()
    options = StylizeSettings("multistyle26", layers=("rgba",))
    tiles = [label(display(plate), "original plate (lin_rec709)")]
    for style in args.styles:
        params = model.validate({"style": style})
        changed = stylize_frame(plate, model, params, options, colours)
        tiles.append(label(display(plate, changed), f"style {style}"))
        print(f"style {style} done", flush=True)
    while len(tiles) % args.columns:
        tiles.append(np.zeros_like(tiles[0]))
    write_grid([tiles[i : i + args.columns] for i in range(0, len(tiles), args.columns)], args.out)

if __name__ == "__main__":
    main()
