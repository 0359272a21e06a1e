"""Transparent pixels of real premultiplied plates come back exactly as they came (issue 11, item 1).

A crop of the Beachball plates (frames 3 and 4, both stereo views, every channel) around the edge of the
ball goes through a real server with style 3 for every highlight policy, tiled and untiled, temporal and
not: where alpha is 0 the colour must be bit-identical to the input (a merge over a background shows no
box), everywhere else the style must have changed it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vst_plugin import Client, Frame, Part
from vst_plugin.exr import read_exr

BOX = (1600, 1168, 1695, 1263)  # display-space crop where the ball's edge passes in frames 3 and 4
LAYERS = (("R", "G", "B", "A"), ("left.R", "left.G", "left.B", "left.A"))


def bits(plane: np.ndarray) -> np.ndarray:
    return plane.view(np.uint16 if plane.dtype.itemsize == 2 else np.uint32)


def crop(frame: Frame) -> Frame:
    """Every channel of the plate cut to BOX, keeping display window and header attributes."""
    part = frame.parts[0]
    x0, y0 = part.data_window[:2]
    xmin, ymin, xmax, ymax = BOX
    channels = {
        name: np.ascontiguousarray(plane[ymin - y0 : ymax - y0 + 1, xmin - x0 : xmax - x0 + 1])
        for name, plane in part.channels.items()
    }
    return Frame([Part(channels, BOX, part.display_window, part.name, part.view, dict(part.attributes))])


@pytest.fixture(scope="module")
def plates(shared: Path) -> list[Frame]:
    return [crop(read_exr(shared / f"exr/Beachball/singlepart.{n:04d}.exr")) for n in (3, 4)]


@pytest.mark.parametrize("temporal", [False, True], ids=["per-frame", "temporal"])
@pytest.mark.parametrize("tile", [None, 48], ids=["untiled", "tiled"])
@pytest.mark.parametrize("policy", ["preserve", "compress", "clamp"])
def test_transparent_pixels_come_back_bit_identical(
    server_address: str, plates: list[Frame], policy: str, tile: int | None, temporal: bool
) -> None:
    options = {"params": {"style": 3}, "highlights": policy, "tile": tile}
    if temporal:
        options.update(sequence=f"alpha-{policy}-{tile}", temporal={"strength": 0.8})
    with Client(server_address, timeout=60) as client:
        results = [client.stylize(plate, frame_number=n, **options) for n, plate in zip((3, 4), plates, strict=True)]
    for plate, result in zip(plates, results, strict=True):
        before, after = plate.parts[0].channels, result.parts[0].channels
        for *rgb, alpha in LAYERS:
            transparent = before[alpha] == 0
            assert 0.1 < transparent.mean() < 0.9  # the crop holds both sides of the edge
            for name in rgb:
                assert np.array_equal(bits(after[name][transparent]), bits(before[name][transparent])), name
                assert not np.array_equal(after[name][~transparent], before[name][~transparent]), name


def test_colour_under_zero_alpha_is_kept_too(server_address: str, plates: list[Frame]) -> None:
    """Premultiplied glow (colour where alpha is 0) is the plate's, not the style's: it stays as it came."""
    part = plates[0].parts[0]
    channels = dict(part.channels)
    transparent = channels["A"] == 0
    glow = np.where(transparent, np.float16(0.25), channels["R"])
    channels["R"] = glow
    frame = Frame([Part(channels, part.data_window, part.display_window, attributes=dict(part.attributes))])
    with Client(server_address, timeout=60) as client:
        result = client.stylize(frame, params={"style": 3})
    assert np.array_equal(bits(result.parts[0].channels["R"][transparent]), bits(glow[transparent]))
