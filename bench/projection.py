"""Cold-start inversion quality: PSNR after `first_steps` on images random generators made from known latents.

Compares, in the same run, the plate path's inversion (best of 16 start latents, the first third of
the steps in W) with the plain one (start at the average latent, W+ from the first step). The
generators are the tests' 32 px networks with random weights; targets are their own images, so a
perfect inversion exists. Prints a Markdown report.

    .venv/bin/python bench/projection.py [--generators 6] [--targets 3] [--steps 150]
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

from test_stylegan import average_w, psnr, random_generator  # noqa: E402

from bench.common import cpu_name  # noqa: E402
from server.stylegan import project as projection  # noqa: E402
from server.stylegan.losses import multiscale_loss  # noqa: E402
from server.stylegan.plate import StyleGANPlate  # noqa: E402

LR = 0.05


def invert(plate: StyleGANPlate, target: torch.Tensor, steps: int, plain: bool) -> torch.Tensor:
    """The plate path's cold inversion, or the plain one (average start, no W-only phase)."""
    generator = plate.base
    if plain:
        start = plate.latent_avg[None, None].expand(1, generator.n_latent, -1)
        kept, projection.SHARED_FRACTION = projection.SHARED_FRACTION, 0.0
        try:
            return projection.project(generator, target, start, steps, LR, multiscale_loss)
        finally:
            projection.SHARED_FRACTION = kept
    start = projection.best_start(generator, target, plate.candidates, multiscale_loss)
    return projection.project(generator, target, start, steps, LR, multiscale_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generators", type=int, default=6)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny networks: one thread is faster than two
    print(f"# Cold-start inversion quality\n\n{datetime.date.today()}, torch {torch.__version__}, {cpu_name()}, "
          "1 thread\n")
    print(f"command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`\n")
    print("| generator seed | target seed | plain PSNR dB | plate path PSNR dB |")
    print("|---|---|---|---|")
    results: dict[bool, list[float]] = {True: [], False: []}
    seconds = {True: 0.0, False: 0.0}
    for seed in range(args.generators):
        generator = random_generator(seed=seed)
        plate = StyleGANPlate(generator, average_w(generator))
        for t in range(args.targets):
            torch.manual_seed(100 + t)
            with torch.no_grad():
                w = generator.map(torch.randn(1, generator.config.style_dim))
                target = generator.synthesize(w[:, None].expand(1, generator.n_latent, -1), generator.constant_noise())
            row = []
            for plain in (True, False):
                begin = time.perf_counter()
                found = invert(plate, target, args.steps, plain)
                seconds[plain] += time.perf_counter() - begin
                with torch.no_grad():
                    results[plain].append(psnr(generator.synthesize(found, generator.constant_noise()), target))
                row.append(f"{results[plain][-1]:.1f}")
            print(f"| {seed} | {100 + t} | {row[0]} | {row[1]} |")
    print()
    for plain, name in ((True, "plain"), (False, "plate path")):
        values = results[plain]
        reached = sum(db >= 30 for db in values)
        print(f"- {name}: median {statistics.median(values):.1f} dB, {reached}/{len(values)} at >= 30 dB, "
              f"{seconds[plain]:.1f} s in all")
    print(f"\n{args.steps} Adam steps, lr {LR}, pixel + multi-scale loss, 32 px generators "
          "(tests/test_stylegan.py random_generator), constant noise.")


if __name__ == "__main__":
    main()
