"""Training images: plates read like the server reads them, in the network's sRGB-encoded 0..1, and random patches.

A plate goes through the same colour handling as serving (server/pipeline.py, server/colour.py): its
main colour layer is unpremultiplied by alpha, converted from its colour space to linear Rec.709
(OCIO), then `to_network` applies the highlight policy and the sRGB encoding. A network trained on
these values therefore sees at training time exactly what it sees when it serves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from server.colour import ColourSpaces, to_network
from vst_plugin.exr import ExrError, read_exr
from vst_plugin.frame import colour_layers
from vst_plugin.schema import RAW_COLORSPACE
from vst_plugin.sequence import frame_path, has_frame_token


class TrainingDataError(ValueError):
    """A training image is missing, unreadable, or does not match its partner."""


def sequence_path(pattern: str, frame: int) -> str:
    """The file of `frame` in a pattern with a frame token, or the pattern itself when it has none."""
    return frame_path(pattern, frame) if has_frame_token(pattern) else pattern


def read_network_rgb(path: str, colorspace: str, highlights: str, colours: ColourSpaces) -> torch.Tensor:
    """An image file's main colour layer as the network sees it: [3, H, W] float32, sRGB-encoded 0..1."""
    try:
        frame = read_exr(path)
    except (ExrError, OSError) as exc:
        raise TrainingDataError(f"cannot read {path}: {exc}") from None
    layers = colour_layers(frame)
    if not layers:
        raise TrainingDataError(f"{path} has no R, G, B channels to train on")
    layer = layers[0]
    part = frame.parts[layer.part]
    rgb = np.stack([part.channels[name] for name in layer.rgb], axis=-1).astype(np.float32)
    if layer.alpha:
        alpha = part.channels[layer.alpha].astype(np.float32)[..., None]
        rgb /= np.where(alpha > 0, alpha, np.float32(1))
    if colorspace != RAW_COLORSPACE:
        rgb = colours.to_linear(rgb, colorspace)
    linear = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    return to_network(linear, highlights, encode=colorspace != RAW_COLORSPACE).encoded[0].contiguous()


@dataclass
class Pair:
    """A keyframe: the plate and its painted version, both [3, H, W] in the network's space."""

    frame: int
    plate: torch.Tensor
    painted: torch.Tensor


def read_pairs(
    plates: str, painted: str, frames: list[int], colorspace: str, painted_colorspace: str, highlights: str
) -> list[Pair]:
    """Read each keyframe's plate and painted frame; TrainingDataError if one is missing or sizes differ."""
    if len(frames) > 1 and not (has_frame_token(plates) and has_frame_token(painted)):
        raise TrainingDataError("several keyframes need a frame token (#### or %04d) in both PLATES and PAINTED")
    colours = ColourSpaces()
    for space in (colorspace, painted_colorspace):
        try:
            colours.check(space)
        except ValueError as exc:
            raise TrainingDataError(str(exc)) from None
    pairs = []
    for frame in frames:
        plate_file, painted_file = sequence_path(plates, frame), sequence_path(painted, frame)
        plate = read_network_rgb(plate_file, colorspace, highlights, colours)
        paint = read_network_rgb(painted_file, painted_colorspace, highlights, colours)
        if plate.shape != paint.shape:
            raise TrainingDataError(
                f"frame {frame}: the painted frame {painted_file} is {paint.shape[2]}x{paint.shape[1]} but its plate "
                f"{plate_file} is {plate.shape[2]}x{plate.shape[1]}; paint over the plate at its own size "
                "(same data window), without reformatting or cropping"
            )
        if min(plate.shape[1:]) < 16:
            raise TrainingDataError(f"frame {frame}: {plate_file} is smaller than 16 pixels; nothing to learn from")
        pairs.append(Pair(frame, plate, paint))
    return pairs


class PatchSampler:
    """Random aligned patches of the keyframes (plate, painted), batch by batch, from a seeded generator."""

    def __init__(self, pairs: list[Pair], patch: int, batch: int, generator: torch.Generator, multiple: int):
        self.pairs = pairs
        self.batch = batch
        self.generator = generator
        smallest = min(min(pair.plate.shape[1:]) for pair in pairs)
        self.patch = min(patch, smallest) // multiple * multiple  # the network's size multiple

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of plate patches and the painted patches at the same places, [B, 3, P, P] each."""
        plates, painted = [], []
        size = self.patch
        for _ in range(self.batch):
            index = int(torch.randint(len(self.pairs), (1,), generator=self.generator))
            pair = self.pairs[index]
            top = int(torch.randint(pair.plate.shape[1] - size + 1, (1,), generator=self.generator))
            left = int(torch.randint(pair.plate.shape[2] - size + 1, (1,), generator=self.generator))
            plates.append(pair.plate[:, top : top + size, left : left + size])
            painted.append(pair.painted[:, top : top + size, left : left + size])
        return torch.stack(plates), torch.stack(painted)
