"""What the README image scripts share: labelling tiles and writing a grid of them as a PNG."""

from __future__ import annotations

import os

import numpy as np
import OpenImageIO as oiio

LABEL = 28
"""Height of the label strip above each tile, in pixels."""


def label(image: np.ndarray, text: str, size: int = 20) -> np.ndarray:
    """`image` (H, W, 3, display-encoded 0..1) below a black strip carrying `text`."""
    tile = np.zeros((image.shape[0] + LABEL, image.shape[1], 3), np.float32)
    tile[LABEL:] = image
    buffer = oiio.ImageBuf(tile)
    oiio.ImageBufAlgo.render_text(buffer, 8, LABEL - 8, text, size, "", (1, 1, 1))
    return buffer.get_pixels(oiio.FLOAT)


def write_grid(rows: list[list[np.ndarray]], path: str) -> None:
    """Write rows of equally sized tiles as one 8-bit PNG and say where it went."""
    sheet = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    out = oiio.ImageBuf(np.ascontiguousarray(sheet))
    if not out.write(path, oiio.UINT8):
        raise SystemExit(f"cannot write {path}: {out.geterror()}")
    print(f"wrote {path} ({sheet.shape[1]}x{sheet.shape[0]})")
