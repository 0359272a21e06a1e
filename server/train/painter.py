"""Tuning the painter of a keyframe model (server/models/keyframe.py), and the share of the result it gets.

The painter starts as the built-in arbitrary-style network's transformer (server/models/arbitrary.py)
with the style vector its predictor gives the painted keyframes (their mean). It is tuned, weights,
style maps and vector alike, with an L1 loss against the painted frames on **whole** keyframes:
instance norm then sees a whole frame's statistics, as when it serves (on patches it learns other
statistics and paints whole frames 1-2 dB worse). Keyframes above `PAINTER_PIXELS` are shrunk by a
whole factor for it (and it runs shrunk when it serves).

Neither the painter nor the keyframe network learns from a vertical strip of each keyframe
(server/train/data.py's `holdout`) until the share is chosen; the network then takes its finishing steps
on whole keyframes (server/train/keyframes.py). Tuned on one frame, the painter first learns how the keyframe is
painted, then starts copying its strokes where they are, which paints other frames worse: the state
with the lowest error on the strips is the one kept, and tuning stops `PATIENCE` steps after it. The
painter's share of the result is the least-squares blend weight of the two networks' results on the
strips, clipped to 0..1: near 0 for a grade, a clean-up or a smoothing filter (the keyframe network
keeps or rebuilds the plate's detail), more for painted strokes. Measured on the strips, which neither
network saw, the share is what the blend earns on other frames; measured on pixels the keyframe
network learnt from, it came out a third to a fifth of that (bench/results/keyframes-cpu-2026-11-28.md,
session 6, has the figures behind these choices).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from server.models import arbitrary, keyframe
from server.models.checkpoint import read_state_dict
from server.models.registry import BUILTIN_DIR
from server.models.transformer import StyleTransformer
from server.train.data import Pair, holdout, padded

ARBITRARY_WEIGHTS = BUILTIN_DIR / "arbitrary.safetensors"
PAINTER_PIXELS = 640 * 360
"""Larger keyframes are shrunk (by a whole factor) to at most this many pixels for the painter, which tunes on
whole frames: a 1080p keyframe would cost ~6 s per step on one CPU core, 640x360 ~0.7 s."""
LEARNING_RATE = 1e-3
"""For the transformer's convs; its style vector and the maps from it to the norms learn 10x faster."""
STYLE_RATE = 10.0
WARMUP = 100
PATIENCE = 100


def reduction_for(pairs: list[Pair]) -> int:
    """The smallest whole factor that shrinks every keyframe to at most `PAINTER_PIXELS`."""
    largest = max(pair.plate.shape[1] * pair.plate.shape[2] for pair in pairs)
    return max(1, math.ceil(math.sqrt(largest / PAINTER_PIXELS)))


class PainterTuner:
    """The tuning of one painter, step by step (the training loop calls `step` until `done`)."""

    def __init__(self, pairs: list[Pair], steps: int, device: torch.device):
        network = arbitrary.load(read_state_dict(ARBITRARY_WEIGHTS)).module
        styles = [F.interpolate(pair.painted[None], size=(arbitrary.PREDICTOR_SIZE,) * 2, mode="bilinear",
                                antialias=True, align_corners=False) for pair in pairs]
        vector = torch.cat([network.predict_image(style) for style in styles]).mean(0, keepdim=True)
        self.transform: StyleTransformer = network.transform.to(device).train()
        self.vector = torch.nn.Parameter(vector.to(device))
        style = [self.vector] + [p for name, p in self.transform.named_parameters() if ".norm." in name]
        convs = [p for name, p in self.transform.named_parameters() if ".norm." not in name]
        self.optimizer = torch.optim.Adam([
            {"params": style, "rate": LEARNING_RATE * STYLE_RATE},
            {"params": convs, "rate": LEARNING_RATE},
        ])
        self.reduction = reduction_for(pairs)
        self.pairs = [(padded(pair.plate, 4 * self.reduction).to(device), pair.painted.to(device)) for pair in pairs]
        self.steps = steps
        self.step_count = 0
        self.best_error = math.inf
        self.best_step = 0
        self.best = self._snapshot()

    @property
    def done(self) -> bool:
        """Whether tuning has ended (all its steps, or `PATIENCE` steps without a better state)."""
        return self.step_count >= self.steps or self.step_count - self.best_step > PATIENCE

    def step(self) -> float:
        """One update on one keyframe (in turn); returns its loss. The state before the update is kept if it paints
        the held-out strips of all keyframes better than every earlier state."""
        current = self.step_count % len(self.pairs)
        progress = self.step_count / self.steps
        factor = min(1.0, (self.step_count + 1) / WARMUP) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in self.optimizer.param_groups:
            group["lr"] = group["rate"] * factor
        squares = count = 0.0
        for index, (plate, painted) in enumerate(self.pairs):
            with torch.set_grad_enabled(index == current):
                height, width = painted.shape[1:]
                result = keyframe.paint_at(self.reduction, lambda small: self.transform(small, self.vector), plate)
                error = (result[0, :, :height, :width] - painted).abs()
            strip = error[:, :, holdout(width)].detach()
            squares, count = squares + float(strip.square().sum()), count + strip.numel()
            if index == current:
                learnt = torch.ones(width, device=error.device)
                learnt[holdout(width)] = 0
                loss = (error * learnt).sum() / (learnt.sum() * height * 3)
        if squares / count < self.best_error:
            self.best_error, self.best_step, self.best = squares / count, self.step_count, self._snapshot()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        return float(loss.detach())

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {"vector": self.vector.detach().clone(), **copy.deepcopy(self.transform.state_dict())}

    def painter(self) -> keyframe.Painter:
        """The best state as a keyframe model's painter: the style vector baked into each norm's scale and shift."""
        state = dict(self.best)
        vector = state.pop("vector")
        tuned = copy.deepcopy(self.transform)
        tuned.load_state_dict(state)
        weights: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, module in tuned.named_modules():
                if isinstance(module, arbitrary.StyleVectorNorm):
                    scale, shift = module.scale_shift(vector)
                    weights[f"{name}.scale"], weights[f"{name}.shift"] = scale[0], shift[0]
            weights |= {key: value for key, value in tuned.state_dict().items() if ".norm." not in key}
        shapes = {keyframe.PAINTER + key: value.shape for key, value in weights.items()}
        transformer = keyframe.build_transformer(shapes)
        transformer.load_state_dict(weights)
        return keyframe.Painter(transformer, self.reduction).to(vector.device)


def painter_share(net: keyframe.KeyframeNet, painter: keyframe.Painter, pairs: list[Pair],
                  device: torch.device) -> float:
    """The painter's share of the result: the least-squares blend of the two networks' results on the keyframes'
    held-out strips, clipped to 0..1."""
    multiple = keyframe.KeyframeModel(net, painter).size_multiple()
    along = across = 0.0
    with torch.no_grad():
        for pair in pairs:
            height, width = pair.plate.shape[1:]
            plate = padded(pair.plate, multiple).to(device)
            strip = holdout(width)
            ours = net(plate)[0, :, :height, strip]
            theirs = painter(plate)[0, :, :height, strip]
            gap = theirs - ours
            along += float(((pair.painted[:, :, strip].to(device) - ours) * gap).sum())
            across += float(gap.square().sum())
    return min(1.0, max(0.0, along / across)) if across > 0 else 0.0
