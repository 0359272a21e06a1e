"""StyleGAN2 timings: synthesis per frame, inversion per step and a pSp / e4e encoder pass at the published
256, 512 and 1024 configurations.

Random weights (the speed does not depend on them). Inversion step = synthesis + pixel/multi-scale
loss + backward + Adam update, batch 1. Encoder = e4e's IR-SE-50 pyramid encoder at full width for the
generator's W+ rows, on a 256 px input. Prints a Markdown table.

    .venv/bin/python bench/stylegan.py [--sizes 256 512 1024] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from test_stylegan_encoder import psp_encoder_state  # noqa: E402

from bench.common import cpu_name  # noqa: E402
from server.models.stylegan2 import Generator, GeneratorConfig  # noqa: E402
from server.stylegan.encoder import build_encoder  # noqa: E402
from server.stylegan.losses import multiscale_loss  # noqa: E402
from server.stylegan.project import project  # noqa: E402


def timed(run, repeats: int, device: torch.device) -> float:
    """Median seconds of `run` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="inversion steps per timed run")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    threads = f"{cpu_name()}, {torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(f"# StyleGAN2 timings\n\n{datetime.date.today()}, torch {torch.__version__}, {where}\n")
    print(f"command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`\n")
    print("| config | parameters | synthesis s/frame | inversion s/step | encoder s/frame | encoder / step |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        config = GeneratorConfig.standard(size, channel_multiplier=2)
        torch.manual_seed(0)
        generator = Generator(config).to(device).eval().requires_grad_(False)
        params = sum(p.numel() for p in generator.parameters()) / 1e6
        wplus = torch.randn(1, config.n_latent, config.style_dim, device=device)
        noise = generator.constant_noise()
        with torch.no_grad():
            target = generator.synthesize(wplus, noise)
        start = torch.randn_like(wplus)

        def synthesize(generator=generator, wplus=wplus, noise=noise):
            with torch.no_grad():
                generator.synthesize(wplus, noise)

        def invert(generator=generator, target=target, start=start):
            project(generator, target, start, args.steps, 0.05, multiscale_loss)

        weights = psp_encoder_state("pyramid", widths=(64, 128, 256, 512), stem=64, style=512,
                                    rows=config.n_latent, se_reduction=16)
        encoder = build_encoder(weights, {"encoder_type": "Encoder4Editing"}, None, config.n_latent, 512).to(device)
        image = torch.rand(1, 3, size, size, device=device)

        def encode(encoder=encoder, image=image):
            with torch.no_grad():
                encoder(image)

        synthesis = timed(synthesize, args.repeats, device)
        inversion = timed(invert, args.repeats, device) / args.steps
        encoding = timed(encode, args.repeats, device)
        print(f"| {size} px, cm 2 | {params:.1f} M | {synthesis:.3f} | {inversion:.3f} | {encoding:.3f} | "
              f"{encoding / inversion:.2f} |", flush=True)


if __name__ == "__main__":
    main()
