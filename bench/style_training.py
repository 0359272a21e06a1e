"""`vst train style` loss curves on CPU with a small VGG-shaped loss network (no pretrained VGG exists here).

The loss network has torchvision's VGG16 layer layout (13 convs, 5 blocks) at 1/4 of the widths, with
random He-initialised weights: it exercises the loss code and shows the optimisation runs, but its
features are not ImageNet features, so the look of the result means nothing. Content: the first 32
frames of ../shared/video/bigbuckbunny.mp4; style: OpenEXR's Carrots.exr (scene-linear). Three runs
of the same length: the base losses (content, Gram style, TV), + PatchGAN adversarial, + temporal.

    .venv/bin/python bench/style_training.py [--steps 150]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_name  # noqa: E402
from server.stylegan.losses import VGGFeatures  # noqa: E402
from server.train.settings import StyleSettings  # noqa: E402
from server.train.style import read_content, train_style  # noqa: E402
from vst_plugin.footage import Footage  # noqa: E402

SHARED = ROOT.parent / "shared"
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def small_vgg16(divisor: int = 4) -> VGGFeatures:
    """VGG16's layout (torchvision indices) at 1/divisor of the widths, random weights."""
    torch.manual_seed(0)
    state, index, channels = {}, 0, 3
    for item in VGG16:
        if item == "M":
            index += 1
            continue
        out = item // divisor
        state[f"features.{index}.weight"] = torch.randn(out, channels, 3, 3) * (2 / (9 * channels)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(out)
        channels, index = out, index + 2
    return VGGFeatures(state).eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--shared", type=Path, default=SHARED)
    args = parser.parse_args()
    torch.set_num_threads(1)
    movie = Footage.open(str(args.shared / "video/bigbuckbunny.mp4"), None)
    clips = read_content([(movie, movie.colorspace)], 128, 32)
    movie.close()
    style = args.shared / "exr/ScanLines/Carrots.exr"
    vgg = small_vgg16()
    print(f"# train style loss curves\n\n{cpu_name()}, torch {torch.__version__}, 1 thread, "
          f"load {os.getloadavg()[0]:.1f}; content 128 px (BBB, 32 frames), patch 96, batch 2, Johnson width 16\n")
    runs = {"base": {}, "+ adversarial 0.1": {"adversarial_weight": 0.1}, "+ temporal 10": {"temporal_weight": 10.0}}
    for name, extra in runs.items():
        settings = StyleSettings(steps=args.steps, size=128, patch=96, batch=2, width=16, blocks=3,
                                 learning_rate=1e-2, **extra)
        started = time.monotonic()
        result = train_style(style, clips, vgg, settings, Path(f"/tmp/vst-style-{os.getpid()}.safetensors"),
                             torch.device("cpu"))
        seconds = time.monotonic() - started
        print(f"\n## {name} ({seconds:.0f} s, {seconds / args.steps:.2f} s/step)\n")
        print("| step | total | content | style | tv | adversarial | temporal |\n|---|---|---|---|---|---|---|")
        every = max(1, args.steps // 10)
        for row in result.curve[every - 1 :: every]:
            window = result.curve[max(0, int(row[0]) - every) : int(row[0])]  # mean over the last `every` steps
            means = [sum(r[i] for r in window) / len(window) for i in range(1, 7)]
            print(f"| {int(row[0])} | " + " | ".join(f"{v:.4g}" for v in means) + " |")
        Path(f"/tmp/vst-style-{os.getpid()}.safetensors").unlink(missing_ok=True)
    print(f"\nload after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
