"""Contact sheets: one plate in many styles, tiled into one labelled picture to choose from.

`vst sheet` stylizes the plate through a server (each style at the plate's own resolution, the
server's colour pipeline), shows every tile sRGB-encoded and clipped for display, and writes an 8-bit
image. The README's pictures are made the same way.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import OpenImageIO as oiio

from .client import Client, Pending
from .frame import Frame, Part, colour_layers

__all__ = ["SheetError", "style_choices", "sheet_tiles", "label", "write_grid"]

LABEL = 28
"""Height of the label strip above each tile, in pixels."""


class SheetError(ValueError):
    """A contact sheet cannot be made as asked."""


def style_choices(model: dict[str, Any]) -> list[str]:
    """The styles of a model's `style_mix` parameter (names, or indices), from its `models` schema."""
    for param in model.get("params", ()):
        if param["type"] == "style_mix":
            return list(param.get("choices") or ())
    raise SheetError(f"model {model['name']} has no built-in styles to compare; choose one with --model")


def main_rgb(frame: Frame) -> Frame:
    """A frame of the plate's main colour layer only (R, G, B and A of its first part), to send once per style."""
    layers = colour_layers(frame, ["rgba"])
    if not layers:
        raise SheetError("the plate has no R, G, B channels")
    layer = layers[0]
    part = frame.parts[layer.part]
    names = [*layer.rgb, *([layer.alpha] if layer.alpha else [])]
    channels = {name[-1]: part.channels[name] for name in names}
    return Frame([Part(channels, part.data_window, part.data_window, attributes=dict(part.attributes))])


def display(frame: Frame, width: int, colorspace: str) -> np.ndarray:
    """The main layer as an (H, W, 3) display image (sRGB-encoded, 0..1) `width` pixels wide."""
    part = frame.parts[0]
    rgb = np.stack([part.channels[name] for name in "RGB"], axis=-1).astype(np.float32)
    buffer = oiio.ImageBuf(np.ascontiguousarray(np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0)))
    if colorspace not in ("raw", "lin_rec709"):
        converted = oiio.ImageBufAlgo.colorconvert(buffer, colorspace, "lin_rec709")
        if not converted.has_error:  # a space this host's OCIO config lacks is shown as it is
            buffer = converted
    height = max(1, round(width * rgb.shape[0] / rgb.shape[1]))
    small = oiio.ImageBufAlgo.resize(buffer, roi=oiio.ROI(0, width, 0, height, 0, 1, 0, 3))
    linear = small.get_pixels(oiio.FLOAT).clip(0, 1)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def label(image: np.ndarray, text: str, size: int = 20) -> np.ndarray:
    """`image` (H, W, 3, display-encoded 0..1) below a black strip carrying `text`."""
    tile = np.zeros((image.shape[0] + LABEL, image.shape[1], 3), np.float32)
    tile[LABEL:] = image
    buffer = oiio.ImageBuf(tile)
    oiio.ImageBufAlgo.render_text(buffer, 8, LABEL - 8, text, size, "", (1, 1, 1))
    return buffer.get_pixels(oiio.FLOAT)


def style_label(style: str, choices: list[str]) -> str:
    """``7 starry_night`` for a named style given either way; a blend or an unnamed style as given."""
    text = style.strip().lower()
    if text in choices and not text.isdigit():
        return f"{choices.index(text)} {text}"
    if text.isdigit() and int(text) < len(choices) and choices[int(text)] != text:
        return f"{text} {choices[int(text)]}"
    return style


def sheet_tiles(
    client: Client,
    plate: Frame,
    styles: list[str],
    model: str,
    choices: list[str],
    colorspace: str,
    width: int = 320,
    progress: Callable[[str], None] | None = None,
    in_flight: int = 2,
    **options: Any,
) -> list[np.ndarray]:
    """The labelled tiles of a contact sheet: the plate, then the plate in each style.

    `options` are further stylize request fields (highlights, tile); `in_flight` styles are sent ahead.
    """
    colour = main_rgb(plate)
    tiles = [label(display(colour, width, colorspace), f"plate ({colorspace})")]
    sent: deque[tuple[str, Pending]] = deque()
    for index, style in enumerate(styles):
        sent.append((style, client.submit(colour, model=model, params={"style": style}, colorspace=colorspace,
                                          **options)))
        while sent and (len(sent) > in_flight or index == len(styles) - 1):
            done, request = sent.popleft()
            tiles.append(label(display(client.result(request), width, colorspace), style_label(done, choices)))
            if progress is not None:
                progress(done)
    return tiles


def write_grid(tiles: list[np.ndarray], columns: int, path: str) -> tuple[int, int]:
    """Write equally sized tiles, `columns` to a row, as one 8-bit image (any format OpenImageIO writes).

    Returns the sheet's (width, height).
    """
    tiles = tiles + [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    sheet = np.ascontiguousarray(np.concatenate(rows, axis=0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    out = oiio.ImageBuf(sheet)
    if not out.write(path, oiio.UINT8):
        raise SheetError(f"cannot write {path}: {out.geterror()}")
    return sheet.shape[1], sheet.shape[0]
