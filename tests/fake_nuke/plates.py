"""Small real plates for the job and Nuke tests: crops of the shared Beachball sequence.

A crop keeps every channel (RGBA and Z of both stereo views, disparity, motion vectors, masks), the
pixel types, the multiView header and the 2048x1556 display window; only the data window shrinks, so
the built-in network stylizes a frame in a fraction of a second on CPU.
"""

from __future__ import annotations

from pathlib import Path

from vst_plugin.exr import read_exr, write_exr
from vst_plugin.frame import Frame, Part

CROP = (1000, 600, 1095, 671)
"""Inclusive window of the crop, inside every frame's data window."""


def crop_plates(shared: Path, folder: Path, frames: range) -> str:
    """Write crops of Beachball frames as `folder/plate.####.exr`; return that pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    xmin, ymin, xmax, ymax = CROP
    for number in frames:
        part = read_exr(shared / f"exr/Beachball/singlepart.{number:04d}.exr").parts[0]
        x0, y0 = xmin - part.data_window[0], ymin - part.data_window[1]
        channels = {name: plane[y0 : y0 + ymax - ymin + 1, x0 : x0 + xmax - xmin + 1].copy()
                    for name, plane in part.channels.items()}
        write_exr(Frame([Part(channels, CROP, part.display_window, attributes=part.attributes)]),
                  folder / f"plate.{number:04d}.exr")
    return str(folder / "plate.####.exr")
