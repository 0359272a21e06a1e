"""The colour space a float image file declares about itself (host side: OpenImageIO, no OCIO config).

Used when the user names no colour space: an explicit name in the file (OpenImageIO's
``oiio:ColorSpace``, which it reads from an EXR's ``colorInteropID``), else the primaries of the EXR
``chromaticities`` attribute when they are ACES AP0, ACES AP1, Rec.709, P3-D65 or Rec.2020. The
names returned are ones every OCIO 2 ACES config knows (the server resolves them in its config).
Integer images and movies are display-referred and are not decided here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import OpenImageIO as oiio

__all__ = ["DeclaredSpace", "declared_colorspace", "space_of_chromaticities"]

# (red x, y, green x, y, blue x, y, white x, y) -> the linear colour space with those primaries.
_PRIMARIES: dict[str, tuple[tuple[float, ...], str]] = {
    "ACES AP0": ((0.7347, 0.2653, 0.0, 1.0, 0.0001, -0.077, 0.32168, 0.33767), "ACES2065-1"),
    "ACES AP1": ((0.713, 0.293, 0.165, 0.83, 0.128, 0.044, 0.32168, 0.33767), "ACEScg"),
    "Rec.709": ((0.64, 0.33, 0.3, 0.6, 0.15, 0.06, 0.3127, 0.329), "lin_rec709"),
    "P3-D65": ((0.68, 0.32, 0.265, 0.69, 0.15, 0.06, 0.3127, 0.329), "Linear P3-D65"),
    "Rec.2020": ((0.708, 0.292, 0.17, 0.797, 0.131, 0.046, 0.3127, 0.329), "Linear Rec.2020"),
}
_TOLERANCE = 2e-3
"""Chromaticities are stored as 32-bit floats and often rounded to 3 or 4 digits by the writer."""


@dataclass(frozen=True)
class DeclaredSpace:
    """A colour space a file states, and how it states it (for the message that says so)."""

    name: str
    reason: str


def space_of_chromaticities(chromaticities: tuple[float, ...]) -> DeclaredSpace | None:
    """The linear colour space whose primaries and white point an EXR `chromaticities` value gives, if known."""
    if len(chromaticities) != 8:
        return None
    for primaries, (expected, name) in _PRIMARIES.items():
        if all(abs(chromaticities[i] - expected[i]) <= _TOLERANCE for i in range(8)):
            return DeclaredSpace(name, f"the file's chromaticities are {primaries} primaries")
    return None


def declared_colorspace(path: str | os.PathLike[str]) -> DeclaredSpace | None:
    """The colour space a float image file (EXR, float TIFF, ...) declares in its header, or None.

    Reads the header only. None for integer images, unreadable files (the render reports those
    itself) and files that say nothing or name primaries not listed here.
    """
    inp = oiio.ImageInput.open(os.fspath(path))
    if inp is None:
        oiio.geterror()  # clear OpenImageIO's pending error message
        return None
    try:
        spec = inp.spec()
    finally:
        inp.close()
    if spec.format.basetype not in (oiio.HALF, oiio.FLOAT, oiio.DOUBLE):
        return None
    named = spec.getattribute("oiio:ColorSpace")
    if isinstance(named, str) and named.strip():
        return DeclaredSpace(named.strip(), "named in the file's header")
    chromaticities = spec.getattribute("chromaticities")
    return space_of_chromaticities(tuple(chromaticities)) if chromaticities else None
