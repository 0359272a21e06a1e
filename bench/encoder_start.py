"""Encoder start for StyleGAN2 inversion: does a trained encoder's W+ (pSp / e4e) beat the average latent?

A tiny e4e-layout encoder (IR-SE pyramid, widths 8-32, `server.stylegan.encoder`) is trained for
`--minutes` of wall time on images of a 32 px random-weight generator (the tests' `random_generator`),
against the latents that made them. Then 16 held-out images (another seed) are inverted with
`server.stylegan.project.project` for 0, 10, 30 and 100 steps, starting from the encoder's W+ and from
the average latent; the random-init encoder (BatchNorm statistics calibrated, weights untrained) is a
control at 0 steps. Prints a Markdown report.

    .venv/bin/python bench/encoder_start.py [--minutes 4] [--batch 8] [--lr 1e-3] [--truncation 0.7]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from test_stylegan import random_generator  # noqa: E402
from test_stylegan_encoder import psp_encoder_state  # noqa: E402

from bench.common import cpu_name  # noqa: E402
from server.models.stylegan2 import Generator  # noqa: E402
from server.stylegan.encoder import Encoder, build_encoder  # noqa: E402
from server.stylegan.losses import multiscale_loss  # noqa: E402
from server.stylegan.project import project  # noqa: E402

WIDTHS, STEM, SE_REDUCTION = (8, 16, 24, 32), 8, 4
"""The narrow encoder (the tests' `psp_encoder_state` layout): channels per body stage, stem, SE gate reduction."""

STEPS, LR = (0, 10, 30, 100), 0.05
"""Inversion step counts compared (each a separate `project` run) and its learning rate."""

HELD_OUT = 16
"""Held-out images inverted, in one batch."""

CALIBRATION_BATCHES = 8
"""Batches that set the BatchNorm running statistics before training."""

REPORT_EVERY = 30.0
"""Seconds between progress lines on stderr."""


def sample(
    generator: Generator, count: int, rng: torch.Generator, average: torch.Tensor, truncation: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` W+ latents (one w per image, truncated towards `average`) and their images in -1..1."""
    with torch.no_grad():
        w = generator.map(torch.randn(count, generator.config.style_dim, generator=rng))
        wplus = (average + truncation * (w - average))[:, None].expand(-1, generator.n_latent, -1)
        return wplus, generator.synthesize(wplus, generator.constant_noise())


def to_srgb(image: torch.Tensor) -> torch.Tensor:
    """Generator output in -1..1 -> the encoder's 0..1 input."""
    return ((image + 1) / 2).clamp(0, 1)


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of two batches in -1..1, measured on 0..1: the mean over images."""
    mse = (to_srgb(image) - to_srgb(target)).pow(2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(1 / mse)).mean().item()


def calibrate(encoder: Encoder, generator: Generator, rng: torch.Generator, average: torch.Tensor,
              truncation: float, batch: int) -> None:
    """Set the encoder's BatchNorm running statistics to their average over a few training batches."""
    batch_norms = [m for m in encoder.network.modules() if isinstance(m, nn.BatchNorm2d)]
    for module in batch_norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average
    encoder.network.train()
    with torch.no_grad():
        for _ in range(CALIBRATION_BATCHES):
            encoder(to_srgb(sample(generator, batch, rng, average, truncation)[1]))
    for module in batch_norms:
        module.momentum = 0.1
    encoder.network.eval()


def train(encoder: Encoder, generator: Generator, average: torch.Tensor, args: argparse.Namespace,
          rng: torch.Generator) -> tuple[int, float, float]:
    """Adam on the encoder network for `args.minutes`, BatchNorm in train mode (batch statistics), as e4e trains.

    Loss = MSE(predicted W+, true W+) + MSE(image of predicted W+, image). Returns the iterations and the
    mean latent and image losses over the last 20 iterations.
    """
    network = encoder.network.train().requires_grad_(True)
    optimiser = torch.optim.Adam(network.parameters(), lr=args.lr)
    noise = generator.constant_noise()
    latent_losses: list[float] = []
    image_losses: list[float] = []
    begin = last_report = time.perf_counter()
    while time.perf_counter() - begin < args.minutes * 60:
        wplus, image = sample(generator, args.batch, rng, average, args.truncation)
        predicted = encoder(to_srgb(image))
        latent_loss = F.mse_loss(predicted, wplus)
        image_loss = F.mse_loss(generator.synthesize(predicted, noise), image)
        optimiser.zero_grad(set_to_none=True)
        (latent_loss + image_loss).backward()
        optimiser.step()
        latent_losses.append(latent_loss.item())
        image_losses.append(image_loss.item())
        if time.perf_counter() - last_report >= REPORT_EVERY:
            last_report = time.perf_counter()
            print(f"{last_report - begin:6.0f} s  {len(latent_losses)} iterations  latent loss "
                  f"{statistics.mean(latent_losses[-20:]):.4f}  image loss {statistics.mean(image_losses[-20:]):.4f}",
                  file=sys.stderr, flush=True)
    network.eval().requires_grad_(False)
    return len(latent_losses), statistics.mean(latent_losses[-20:]), statistics.mean(image_losses[-20:])


def invert(generator: Generator, target: torch.Tensor, start: torch.Tensor) -> dict[int, tuple[float, float]]:
    """PSNR after each of `STEPS` inversion steps from `start` (separate runs), with the seconds each run took."""
    found = {}
    for steps in STEPS:
        begin = time.perf_counter()
        latent = project(generator, target, start, steps, LR, multiscale_loss)
        seconds = time.perf_counter() - begin
        with torch.no_grad():
            found[steps] = (psnr(generator.synthesize(latent, generator.constant_noise()), target), seconds)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="wall time to train the encoder")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--truncation", type=float, default=0.7, help="psi of training and held-out latents")
    args = parser.parse_args()
    torch.set_num_threads(2)

    generator = random_generator(seed=0)
    with torch.no_grad():
        average = generator.map(torch.randn(4096, generator.config.style_dim,
                                            generator=torch.Generator().manual_seed(0))).mean(0)
    rows, dim = generator.n_latent, generator.config.style_dim
    weights = psp_encoder_state("pyramid", WIDTHS, STEM, dim, rows, se_reduction=SE_REDUCTION)
    encoder = build_encoder(weights, {"encoder_type": "Encoder4Editing"}, average, rows, dim)
    parameters = sum(p.numel() for p in encoder.network.parameters())
    rng = torch.Generator().manual_seed(1)
    calibrate(encoder, generator, rng, average, args.truncation, args.batch)
    untrained = copy.deepcopy(encoder)

    begin = time.perf_counter()
    iterations, latent_loss, image_loss = train(encoder, generator, average, args, rng)
    trained_seconds = time.perf_counter() - begin

    wplus, target = sample(generator, HELD_OUT, torch.Generator().manual_seed(2), average, args.truncation)
    with torch.no_grad():
        starts = {"encoder": encoder(to_srgb(target)), "average": average[None, None].expand(HELD_OUT, rows, dim),
                  "untrained": untrained(to_srgb(target))}
        begin = time.perf_counter()
        encoder(to_srgb(target))
        encoder_seconds = time.perf_counter() - begin
    latent_error = {name: F.mse_loss(start, wplus).item() for name, start in starts.items()}
    results = {name: invert(generator, target, starts[name]) for name in ("encoder", "average")}
    with torch.no_grad():
        control = psnr(generator.synthesize(starts["untrained"], generator.constant_noise()), target)

    print(f"# Encoder start vs average start for StyleGAN2 inversion\n\n{datetime.date.today()}, torch "
          f"{torch.__version__}, {cpu_name()}, {torch.get_num_threads()} threads\n")
    print(f"command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`\n")
    print("## Setup\n")
    channels = dict(generator.config.channels)
    print(f"- generator: the tests' 32 px StyleGAN2 with random weights (seed 0, channels {channels}, style {dim}, "
          f"{rows} W+ rows), constant noise; average latent = mean w of 4096 mapped z")
    print(f"- encoder: e4e (`Encoder4Editing`) pyramid on an IR-SE-50 body, widths {WIDTHS}, stem {STEM}, "
          f"SE reduction {SE_REDUCTION}, {parameters / 1e6:.2f} M parameters; 32 px images, resized to 256 px "
          "by the encoder; output + average latent")
    print(f"- training: {args.minutes:g} min wall time, Adam lr {args.lr:g}, batch {args.batch}, fresh samples "
          f"each iteration (z seed 1), w truncated to psi {args.truncation:g}, W+ = w on every row; loss = "
          "MSE(W+) + MSE(image); BatchNorm in train mode (batch statistics; running statistics for evaluation)")
    print(f"- done: {iterations} iterations in {trained_seconds:.0f} s ({trained_seconds / iterations:.2f} "
          f"s/iteration); final loss (mean of the last 20) latent {latent_loss:.4f}, image {image_loss:.4f}")
    print(f"- evaluation: {HELD_OUT} held-out images (z seed 2, same psi), each k a separate `project` run "
          f"(lr {LR}, `multiscale_loss`, cosine decay, first third in W), all {HELD_OUT} in one batch "
          "(Adam is per element, so the latents do not interact); PSNR on 0..1, mean over images\n")
    print("## Results\n")
    print("| inversion steps k | encoder start PSNR dB | average start PSNR dB | encoder - average dB |")
    print("|---|---|---|---|")
    for steps in STEPS:
        a, b = results["encoder"][steps][0], results["average"][steps][0]
        print(f"| {steps} | {a:.2f} | {b:.2f} | {a - b:+.2f} |")
    print(f"| 0, untrained encoder (control) | {control:.2f} | | {control - results['average'][0][0]:+.2f} |\n")
    print(f"W+ MSE to the true latents at k = 0: trained encoder {latent_error['encoder']:.4f}, average "
          f"{latent_error['average']:.4f}, untrained encoder {latent_error['untrained']:.4f}.\n")
    per_step = {name: sum(results[name][k][1] for k in STEPS if k) / sum(k for k in STEPS if k) for name in results}
    print(f"Wall time per inversion step (batch of {HELD_OUT}, mean over the k > 0 runs): {per_step['encoder']:.3f} s "
          f"from the encoder start, {per_step['average']:.3f} s from the average "
          f"({per_step['average'] / HELD_OUT * 1000:.1f} ms per image); one encoder pass on the batch "
          "(a single timing): "
          f"{encoder_seconds:.3f} s, {encoder_seconds / per_step['average']:.1f} inversion steps.\n")
    print("## Reading\n")
    print(conclusion(results, iterations, parameters))


def conclusion(results: dict[str, dict[int, tuple[float, float]]], iterations: int, parameters: int) -> str:
    """The report's closing sentences, worded from the measured gaps."""
    gaps = {k: results["encoder"][k][0] - results["average"][k][0] for k in STEPS}
    verdict = "better" if gaps[0] > 0 else "not better"
    trend = ", ".join(f"{gaps[k]:+.2f} dB after {k}" for k in STEPS[1:])
    last = STEPS[-1]
    if abs(gaps[last]) < 0.5:
        ending = f"so by {last} steps the start hardly matters on this toy"
    elif gaps[last] > 0:
        ending = f"so the encoder start still leads after {last} steps"
    else:
        ending = f"so the average start ends ahead after {last} steps"
    return (
        f"After {iterations} training iterations the encoder's start is {verdict} than the average latent before "
        f"any inversion ({gaps[0]:+.2f} dB at k = 0); the gap is {trend} steps, {ending}. "
        f"This is a toy: the generator has random weights and only 32 px, the encoder is a {parameters / 1e6:.1f} "
        "M-parameter e4e layout trained for minutes on CPU on images from exactly the generator it inverts, and "
        "the targets are in the generator's range by construction. It says nothing about released pSp / e4e "
        "checkpoints on real plates, where the encoder's start and the target's distance from the generator's "
        "range both differ."
    )


if __name__ == "__main__":
    main()
