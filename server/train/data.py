"""Training images: plates read like the server reads them, in the network's sRGB-encoded 0..1, and random patches.

Frames are found and read by `vst render`'s own readers (vst_plugin/footage.py: EXR and other image
sequences, single images, movies numbered from 1), so a frame number means the same frame in both.
A plate goes through the same colour handling as serving (server/pipeline.py, server/colour.py): its
main colour layer is unpremultiplied by a premultiplying alpha (not PNG's or video's straight one),
converted from its colour space (decided as `vst render` decides it) to linear Rec.709 (OCIO), then
`to_network` applies the highlight policy and the sRGB encoding. A network trained on these values
therefore sees at training time exactly what it sees when it serves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from server.colour import ColourSpaces, to_network
from vst_plugin.exr import ExrError
from vst_plugin.footage import Footage
from vst_plugin.frame import Frame, colour_layers
from vst_plugin.media import MediaError
from vst_plugin.schema import RAW_COLORSPACE
from vst_plugin.sequence import has_frame_token


class TrainingDataError(ValueError):
    """A training image is missing, unreadable, or does not match its partner."""


def network_rgb(frame: Frame, premultiplied: bool, colorspace: str, highlights: str, colours: ColourSpaces,
                name: str) -> torch.Tensor:
    """A frame's main colour layer as the network sees it: [3, H, W] float32, sRGB-encoded 0..1 (`name`: for errors)."""
    layers = colour_layers(frame)
    if not layers:
        raise TrainingDataError(f"{name} has no R, G, B channels to train on")
    layer = layers[0]
    part = frame.parts[layer.part]
    rgb = np.stack([part.channels[channel] for channel in layer.rgb], axis=-1).astype(np.float32)
    if layer.alpha and premultiplied:
        alpha = part.channels[layer.alpha].astype(np.float32)[..., None]
        rgb /= np.where(alpha > 0, alpha, np.float32(1))
    if colorspace != RAW_COLORSPACE:
        rgb = colours.to_linear(rgb, colorspace)
    linear = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    return to_network(linear, highlights, encode=colorspace != RAW_COLORSPACE).encoded[0].contiguous()


def read_frame(footage: Footage, number: int, colorspace: str, highlights: str, colours: ColourSpaces,
               role: str = "input") -> torch.Tensor:
    """Frame `number` of `footage` (read as `vst render` reads it) in the network's space; TrainingDataError
    when it is missing or unreadable (`role` names the footage in the message)."""
    name = footage.file(number)
    if footage.movie is None and not os.path.isfile(name):
        raise TrainingDataError(f"{role} frame {number} is missing: {name}")
    try:
        plate = footage.load(number)
    except (ExrError, MediaError, OSError) as exc:
        raise TrainingDataError(f"{role} frame {number}: cannot read {name}: {exc}") from None
    where = f"{name} frame {number}" if footage.movie is not None else name
    return network_rgb(plate.frame, plate.premultiplied, colorspace, highlights, colours, where)


def checked_colours(*spaces: str) -> ColourSpaces:
    """The colour conversions of the active OCIO config; TrainingDataError when it does not know one of `spaces`."""
    colours = ColourSpaces()
    for space in spaces:
        try:
            colours.check(space)
        except ValueError as exc:
            raise TrainingDataError(str(exc)) from None
    return colours


@dataclass
class Pair:
    """A keyframe: the plate and its painted version, both [3, H, W] in the network's space."""

    frame: int
    plate: torch.Tensor
    painted: torch.Tensor


def read_pairs(
    plates: Footage, painted: Footage, colorspace: str, painted_colorspace: str, highlights: str
) -> list[Pair]:
    """Read each keyframe (the frames of `plates`) and its painted frame; TrainingDataError if one is missing,
    unreadable, or of another size, or when the two cannot be paired."""
    several = len(plates.frames) > 1
    for footage, role in ((plates, "PLATES"), (painted, "PAINTED")):
        if several and footage.movie is None and not has_frame_token(footage.name):
            raise TrainingDataError(f"several keyframes need a frame token (#### or %04d) or a movie as {role}: "
                                    f"{footage.name} is one image")
    if (colorspace == RAW_COLORSPACE) != (painted_colorspace == RAW_COLORSPACE):
        raise TrainingDataError(
            f"the plates are read as {colorspace} and the painted frames as {painted_colorspace}: a raw side is used "
            "as it is while the other is converted, so the two can never match; name raw for both or for neither"
        )
    colours = checked_colours(colorspace, painted_colorspace)
    pairs = []
    for frame in plates.frames:
        plate = read_frame(plates, frame, colorspace, highlights, colours, "plate")
        paint = read_frame(painted, frame, painted_colorspace, highlights, colours, "painted")
        if plate.shape != paint.shape:
            raise TrainingDataError(
                f"frame {frame}: the painted frame {painted.file(frame)} is {paint.shape[2]}x{paint.shape[1]} but its "
                f"plate {plates.file(frame)} is {plate.shape[2]}x{plate.shape[1]}; paint over the plate at its own "
                "size (same data window), without reformatting or cropping"
            )
        if min(plate.shape[1:]) < 16:
            raise TrainingDataError(f"frame {frame}: {plates.file(frame)} is smaller than 16 pixels; nothing to learn")
        pairs.append(Pair(frame, plate, paint))
    return pairs


def padded(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """A [3, H, W] training image as a batch of one, its edges repeated up to sides that are multiples of
    `multiple` (what a network needs to run on the whole frame)."""
    return F.pad(image[None], (0, -image.shape[2] % multiple, 0, -image.shape[1] % multiple), mode="replicate")


HOLDOUT = (0.6, 0.8)
"""A vertical strip of each keyframe, as fractions of its width, that training holds out when it blends a painter
with the keyframe network (server/train/painter.py): neither learns from it, and the blend is chosen on it."""


def holdout(width: int) -> slice:
    """The held-out columns of a keyframe `width` pixels wide."""
    start = int(HOLDOUT[0] * width)
    return slice(start, max(int(HOLDOUT[1] * width), start + 1))


class PatchSampler:
    """Random aligned patches of the keyframes (plate, painted), batch by batch, from a seeded generator, with the
    weight of each pixel in the loss: 0 in the held-out strip when `hold_out` is set, else 1."""

    def __init__(self, pairs: list[Pair], patch: int, batch: int, generator: torch.Generator, multiple: int,
                 hold_out: bool):
        self.pairs = pairs
        self.batch = batch
        self.generator = generator
        self.hold_out = hold_out
        smallest = min(min(pair.plate.shape[1:]) for pair in pairs)
        self.patch = min(patch, smallest) // multiple * multiple  # the network's size multiple

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of plate patches, the painted patches at the same places, [B, 3, P, P] each, and the pixels'
        weights in the loss, [B, 1, 1, P] (one per column)."""
        plates, painted, weights = [], [], []
        size = self.patch
        for _ in range(self.batch):
            index = int(torch.randint(len(self.pairs), (1,), generator=self.generator))
            pair = self.pairs[index]
            top = int(torch.randint(pair.plate.shape[1] - size + 1, (1,), generator=self.generator))
            left = int(torch.randint(pair.plate.shape[2] - size + 1, (1,), generator=self.generator))
            plates.append(pair.plate[:, top : top + size, left : left + size])
            painted.append(pair.painted[:, top : top + size, left : left + size])
            columns = torch.ones(pair.plate.shape[2])
            if self.hold_out:
                columns[holdout(pair.plate.shape[2])] = 0
            weights.append(columns[left : left + size].view(1, 1, size))
        return torch.stack(plates), torch.stack(painted), torch.stack(weights)
