"""`vst train style`: a Johnson et al. transformer trained for one style image, written in pytorch/examples'
fast_neural_style layout (server/models/fast_neural_style.py loads, tiles and exports it).

Loss, in the feature space of a VGG16/VGG19 read from a local file in torchvision's layout
(``features.N.weight``; safetensors or a weights-only torch file, nothing downloaded):
content (relu2_2 features of the output vs the content frame), style (Gram matrices of every block vs
the style image's), total variation, and optionally a PatchGAN adversarial term (least squares; real
patches from the style image) and Ruder et al.'s temporal term (the output of frame t+1 against the
output of frame t warped along DIS optical flow, occluded pixels left out).

Content comes from any footage `vst render` reads (image sequences, single images, movies; read like
the server reads them), scaled so the shorter side is `size`, cropped at random.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from server.flow import estimate, gray8, occlusion
from server.models import ModelError
from server.models.checkpoint import read_state_dict
from server.models.fast_neural_style import TransformerNet
from server.style_images import read_style_image
from server.stylegan.losses import VGGFeatures
from server.train import losses
from server.train.data import TrainingDataError, checked_colours, read_frame
from server.train.settings import StyleSettings, TrainingError
from vst_plugin.footage import Footage


@dataclass
class StyleResult:
    """How a run ended, with its loss curve (step, total, content, style, tv, adversarial, temporal)."""

    output: Path
    steps: int
    seconds: float
    curve: list[tuple[float, ...]]
    peak_gpu_bytes: int | None


def johnson_network(width: int = 32, blocks: int = 5) -> TransformerNet:
    """A fresh pytorch/examples TransformerNet: 9x9 conv, two stride-2 convs, residual blocks, upsampling."""
    shapes: dict[str, torch.Size] = {
        "conv1.conv2d.weight": torch.Size((width, 3, 9, 9)),
        "conv2.conv2d.weight": torch.Size((2 * width, width, 3, 3)),
        "conv3.conv2d.weight": torch.Size((4 * width, 2 * width, 3, 3)),
        "deconv1.conv2d.weight": torch.Size((2 * width, 4 * width, 3, 3)),
        "deconv2.conv2d.weight": torch.Size((width, 2 * width, 3, 3)),
        "deconv3.conv2d.weight": torch.Size((3, width, 9, 9)),
    }
    for name, channels in zip(("in1", "in2", "in3", "in4", "in5"), (1, 2, 4, 2, 1), strict=True):
        shapes[f"{name}.weight"] = torch.Size((channels * width,))
    for i in range(1, blocks + 1):
        for conv in ("conv1", "conv2"):
            shapes[f"res{i}.{conv}.conv2d.weight"] = torch.Size((4 * width, 4 * width, 3, 3))
        for norm in ("in1", "in2"):
            shapes[f"res{i}.{norm}.weight"] = torch.Size((4 * width,))
    return TransformerNet(shapes, blocks)


def read_vgg(path: Path) -> VGGFeatures:
    """The loss network from a local torchvision-layout VGG file, frozen; TrainingError if it is not one."""
    try:
        state_dict = read_state_dict(path)
        vgg = VGGFeatures(state_dict)
    except (ModelError, ValueError, KeyError, RuntimeError) as exc:
        raise TrainingError(f"--vgg {path}: not a torchvision VGG16/VGG19 file ({exc})"[:400]) from None
    return vgg.eval().requires_grad_(False)


def read_content(sources: list[tuple[Footage, str]], size: int, limit: int) -> list[list[torch.Tensor]]:
    """The first `limit` frames of each (footage, colour space), in order, read as `vst render` reads them and
    converted as serving converts them: sRGB-encoded 0..1 [3, H, W], the shorter side scaled to `size`."""
    colours = checked_colours(*(colorspace for _, colorspace in sources))
    clips = []
    for footage, colorspace in sources:
        clip = [read_frame(footage, number, colorspace, "preserve", colours, "content")
                for number in footage.frames[:limit]]
        clips.append([_scaled(frame, size) for frame in clip])
    return clips


def _scaled(frame: torch.Tensor, size: int) -> torch.Tensor:
    scale = size / min(frame.shape[1:])
    height, width = max(size, round(frame.shape[1] * scale)), max(size, round(frame.shape[2] * scale))
    return F.interpolate(frame[None], size=(height, width), mode="area" if scale < 1 else "bilinear")[0].clamp(0, 1)


class ContentSampler:
    """Random crops of content frames; with `pairs`, crops of two consecutive frames with the flow between them."""

    def __init__(self, clips: list[list[torch.Tensor]], patch: int, batch: int, generator: torch.Generator,
                 pairs: bool):
        self.clips, self.patch, self.batch, self.generator = clips, patch, batch, generator
        self.motion: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        if pairs:
            for c, clip in enumerate(clips):
                for i in range(len(clip) - 1):
                    self.motion[(c, i)] = _backward_motion(clip[i], clip[i + 1])
            if not self.motion:
                raise TrainingDataError("the temporal term needs consecutive frames: give a movie or several frames")

    def _crop_origin(self, frame: torch.Tensor) -> tuple[int, int]:
        top = int(torch.randint(frame.shape[1] - self.patch + 1, (1,), generator=self.generator))
        left = int(torch.randint(frame.shape[2] - self.patch + 1, (1,), generator=self.generator))
        return top, left

    def sample(self) -> torch.Tensor:
        """[B, 3, P, P] crops of random frames."""
        crops = []
        for _ in range(self.batch):
            clip = self.clips[int(torch.randint(len(self.clips), (1,), generator=self.generator))]
            frame = clip[int(torch.randint(len(clip), (1,), generator=self.generator))]
            top, left = self._crop_origin(frame)
            crops.append(frame[:, top : top + self.patch, left : left + self.patch])
        return torch.stack(crops)

    def sample_pair(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crops of frames t and t+1 at the same place, the backward flow of t+1 and its visible mask."""
        keys = list(self.motion)
        c, i = keys[int(torch.randint(len(keys), (1,), generator=self.generator))]
        flow, visible = self.motion[(c, i)]
        top, left = self._crop_origin(self.clips[c][i])
        rows, cols = slice(top, top + self.patch), slice(left, left + self.patch)
        crop_flow = flow[:, rows, cols]
        ys, xs = torch.meshgrid(torch.arange(self.patch), torch.arange(self.patch), indexing="ij")
        inside = ((xs + crop_flow[0] >= 0) & (xs + crop_flow[0] <= self.patch - 1)
                  & (ys + crop_flow[1] >= 0) & (ys + crop_flow[1] <= self.patch - 1))
        mask = (visible[rows, cols] & inside).float()[None, None]
        return (self.clips[c][i][None, :, rows, cols], self.clips[c][i + 1][None, :, rows, cols],
                crop_flow[None], mask)


def _backward_motion(previous: torch.Tensor, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DIS flow from `current` back to `previous` [2, H, W] and the mask of pixels visible in both."""
    a, b = (gray8(frame.permute(1, 2, 0).numpy() ** 2.2) for frame in (previous, current))
    backward, forward = estimate(b, a), estimate(a, b)
    visible = ~occlusion(backward, forward)
    return torch.from_numpy(backward).permute(2, 0, 1).contiguous(), torch.from_numpy(visible)


Progress = Callable[[int, dict[str, float], dict[str, Any]], None]


def train_style(
    style_image: Path,
    clips: list[list[torch.Tensor]],
    vgg: VGGFeatures,
    settings: StyleSettings,
    output: Path,
    device: torch.device,
    progress: Progress | None = None,
    sources: dict[str, str] | None = None,
) -> StyleResult:
    """Train a Johnson transformer for `style_image` on the content clips; write it to `output` (safetensors)."""
    settings.check()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    net = johnson_network(settings.width, settings.blocks).to(device).train()
    vgg = vgg.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    style = read_style_image(style_image, settings.style_colorspace, settings.size).to(device)
    with torch.no_grad():
        style_grams = [losses.gram(f) for f in vgg(losses.vgg_input(style))]
    sampler = ContentSampler(clips, settings.patch, settings.batch, generator, settings.temporal_weight > 0)
    discriminator = d_optimizer = None
    if settings.adversarial_weight > 0:
        discriminator = losses.PatchDiscriminator().to(device)
        d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=settings.learning_rate, betas=(0.5, 0.999))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def stylize(x: torch.Tensor) -> torch.Tensor:
        return net(x * 255) / 255

    started = time.monotonic()
    deadline = None if settings.minutes is None else started + settings.minutes * 60
    curve: list[tuple[float, ...]] = []
    step = 0
    while step < settings.steps and (deadline is None or time.monotonic() < deadline):
        content = sampler.sample().to(device)
        out = stylize(content)
        out_features = vgg(losses.vgg_input(out))
        with torch.no_grad():
            content_features = vgg(losses.vgg_input(content))
        terms = {
            "content": settings.content_weight * losses.content_loss(out_features, content_features),
            "style": settings.style_weight * losses.style_loss(out_features, style_grams),
            "tv": settings.tv_weight * losses.total_variation(out),
        }
        if discriminator is not None:
            terms["adversarial"] = settings.adversarial_weight * losses.generator_adversarial_loss(
                discriminator(out))
        if settings.temporal_weight > 0:
            previous, current, flow, visible = (t.to(device) for t in sampler.sample_pair())
            terms["temporal"] = settings.temporal_weight * losses.temporal_loss(
                stylize(current), stylize(previous), flow, visible)
        total = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if discriminator is not None:
            real = _style_crops(style, out.shape[-1], settings.batch, generator)
            d_loss = losses.discriminator_loss(discriminator(real), discriminator(out.detach()))
            d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            d_optimizer.step()
        step += 1
        values = {name: float(value.detach()) for name, value in terms.items()}
        values["total"] = float(total.detach())
        curve.append((step, values["total"], values["content"], values["style"], values["tv"],
                      values.get("adversarial", math.nan), values.get("temporal", math.nan)))
        if progress is not None:
            figures = {} if device.type != "cuda" else {
                "gpu_mem": f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}MiB"}
            progress(step, values, figures)
    seconds = time.monotonic() - started
    _save(net, output, settings, step, seconds, sources)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return StyleResult(output, step, seconds, curve, peak)


def _style_crops(style: torch.Tensor, patch: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    side = min(patch, style.shape[-1])
    crops = []
    for _ in range(batch):
        top = int(torch.randint(style.shape[2] - side + 1, (1,), generator=generator))
        left = int(torch.randint(style.shape[3] - side + 1, (1,), generator=generator))
        crops.append(style[0, :, top : top + side, left : left + side])
    return torch.stack(crops)


def _save(net: TransformerNet, output: Path, settings: StyleSettings, step: int, seconds: float,
          sources: dict[str, str] | None) -> None:
    metadata = {key: "" if value is None else str(value) for key, value in asdict(settings).items()}
    metadata.update(sources or {})
    metadata.update({
        "trained_by": "vst train style", "trained_steps": str(step), "training_seconds": f"{seconds:.1f}",
        "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    })
    tensors = {key: value.detach().cpu().contiguous() for key, value in net.state_dict().items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    save_file(tensors, temporary, metadata=metadata)
    os.replace(temporary, output)
