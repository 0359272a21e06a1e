"""`vst train keyframes`: fit a keyframe model (server/models/keyframe.py) to painted frames of a shot.

First the painter is tuned on whole keyframes (server/train/painter.py: at most `painter_steps` steps,
stopped early on a held-out strip of each keyframe). Then the keyframe network's loop: sample aligned
patches of plate and painted keyframes, predict, L1 loss (not on the held-out strips while there is a
painter), Adam with a short linear warm-up and a cosine learning-rate decay. With a painter, its share is
then chosen on the strips (`painter_share`), and the network takes its finishing steps on whole
keyframes (`KeyframeSettings.finishing_steps`), so that it ends up having learnt from every pixel.
Every `preview_every` steps the whole first keyframe is run and written as a PNG (plate | painted |
model); every `checkpoint_every` steps (and on Ctrl-C) the training state is saved beside the output
so `--resume` continues where it stopped. The model is written as safetensors in the `keyframe`
family's layout with the training settings as metadata, so the server's registry loads it like any
other checkpoint.
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

import numpy as np
import torch
from safetensors.torch import save_file

from server.models import keyframe
from server.models.checkpoint import read_state_dict
from server.train.data import Pair, PatchSampler, padded
from server.train.painter import PainterTuner, painter_share
from server.train.settings import FINISHING_RATE, KeyframeSettings, TrainingError

STATE_SUFFIX = ".train-state"
"""Suffix of the resumable training state written beside the model (not a model the registry lists)."""


@dataclass
class TrainingResult:
    """How a run ended."""

    output: Path
    steps: int
    seconds: float
    loss: float
    painter_share: float | None
    peak_gpu_bytes: int | None
    stopped_by_time: bool


Progress = Callable[[int, float, dict[str, Any]], None]
"""(steps done, painter's and network's together; smoothed loss; extra figures) after each step."""


def state_path(output: Path) -> Path:
    """Where the resumable training state of `output` is kept."""
    return output.with_name(output.name + STATE_SUFFIX)


def preview_path(output: Path) -> Path:
    """Where the preview image of `output` is written."""
    return output.with_name(output.stem + ".preview.png")


def train_keyframes(
    pairs: list[Pair],
    settings: KeyframeSettings,
    output: Path,
    device: torch.device,
    resume: Path | None = None,
    progress: Progress | None = None,
    sources: dict[str, str] | None = None,
) -> TrainingResult:
    """Train a keyframe model (painter, then network) on `pairs` and write it to `output` (safetensors); see the
    module docstring."""
    settings.check()
    torch.manual_seed(settings.seed)
    net = keyframe.KeyframeNet(settings.widths(), settings.blocks)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    step, painter = 0, None
    if resume is not None:
        step, painter = _resume(resume, net, optimizer, generator)
        if step >= settings.steps:
            raise TrainingError(f"{resume} has already trained {step} steps; ask for more with --steps")
    net.to(device).train()
    _optimizer_to(optimizer, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.monotonic()
    deadline = None if settings.minutes is None else started + settings.minutes * 60
    smoothed = math.nan
    stopped_by_time = False

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    if painter is None and settings.painter_steps:
        tuner = PainterTuner(pairs, settings.painter_steps, device)
        try:
            while not tuner.done and not stopped_by_time:
                loss = tuner.step()
                smoothed = loss if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * loss
                if progress is not None:
                    progress(tuner.step_count, smoothed, {"tuning": "painter", **_figures(device)})
                stopped_by_time = out_of_time()
        except KeyboardInterrupt:
            raise TrainingError("interrupted while tuning the painter, before the keyframe network's first step: "
                                "nothing was written; run the command again") from None
        painter = tuner.painter()
        smoothed = math.nan
    offset = settings.painter_steps
    sampler = PatchSampler(pairs, settings.patch, settings.batch, generator, 2**settings.levels, painter is not None)
    share = None
    try:
        while step < settings.steps and not stopped_by_time:
            if out_of_time():
                stopped_by_time = True
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(settings, step)
            loss = _network_step(net, optimizer, sampler, device)
            step += 1
            smoothed = loss if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * loss
            if settings.preview_every and step % settings.preview_every == 0 and step < settings.steps:
                write_preview(_model(net, painter, pairs, device), pairs[0], preview_path(output), device)
            if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                _save_state(state_path(output), net, painter, optimizer, generator, step, settings)
            if progress is not None:
                progress(offset + step, smoothed, _figures(device))
        if painter is not None and not stopped_by_time:
            share = painter_share(net, painter, pairs, device)  # on the strips, before the network learns them
            whole = PatchSampler(pairs, settings.patch, settings.batch, generator, 2**settings.levels, False)
            for group in optimizer.param_groups:
                group["lr"] = settings.learning_rate * FINISHING_RATE
            for done in range(1, settings.finishing_steps(painter=True) + 1):
                if out_of_time():
                    stopped_by_time = True
                    break
                loss = _network_step(net, optimizer, whole, device)
                smoothed = 0.95 * smoothed + 0.05 * loss
                if progress is not None:
                    progress(offset + step + done, smoothed, _figures(device))
    except KeyboardInterrupt:
        _save_state(state_path(output), net, painter, optimizer, generator, step, settings)
        _save_model(_model(net, painter, pairs, device, share), output, settings, step, smoothed,
                    time.monotonic() - started, sources)
        raise
    seconds = time.monotonic() - started
    model = _model(net, painter, pairs, device, share)
    if settings.preview_every:
        write_preview(model, pairs[0], preview_path(output), device)
    _save_model(model, output, settings, step, smoothed, seconds, sources)
    _save_state(state_path(output), net, painter, optimizer, generator, step, settings)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    share = None if painter is None else float(model.share)
    return TrainingResult(output, step, seconds, smoothed, share, peak, stopped_by_time)


def _network_step(net: keyframe.KeyframeNet, optimizer: torch.optim.Optimizer, sampler: PatchSampler,
                  device: torch.device) -> float:
    """One update of the keyframe network on a batch of patches (L1 on the pixels the sampler weights); its loss."""
    plate, painted, weight = (t.to(device) for t in sampler.sample())
    kept = (weight.sum() * 3 * plate.shape[2]).clamp_min(1)  # a batch wholly inside held-out strips: no loss
    loss = ((net.unclamped(plate) - painted).abs() * weight).sum() / kept
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _model(net: keyframe.KeyframeNet, painter: keyframe.Painter | None, pairs: list[Pair], device: torch.device,
           share: float | None = None) -> keyframe.KeyframeModel:
    """The keyframe model as it stands: the network, and the painter at `share` (chosen now if not given)."""
    if painter is None:
        return keyframe.KeyframeModel(net)
    if share is None:
        share = painter_share(net, painter, pairs, device)
    return keyframe.KeyframeModel(net, painter, share).to(device)


def learning_rate_at(settings: KeyframeSettings, step: int) -> float:
    """Cosine decay from the learning rate to 5% of it over the planned steps, ramped up linearly over the
    first `warmup` steps (at most a tenth of them): Adam's first steps at the full rate switch off half
    the network's ReLU units for good (bench/results/keyframes-cpu-2026-11-28.md, session 3)."""
    progress = min(step / settings.steps, 1.0)
    warmup = min(settings.warmup, settings.steps // 10)
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return ramp * settings.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _figures(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {}
    return {"gpu_mem": f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}MiB"}


def write_preview(model: keyframe.KeyframeModel, pair: Pair, path: Path, device: torch.device) -> None:
    """Write plate | painted | the model's result on the whole keyframe as an 8-bit sRGB PNG."""
    import OpenImageIO as oiio

    was_training = model.training
    model.eval()
    with torch.no_grad():
        height, width = pair.plate.shape[1:]
        result = model(padded(pair.plate, model.size_multiple()).to(device))[0, :, :height, :width].cpu()
    model.train(was_training)
    strip = torch.cat([pair.plate, pair.painted, result], dim=2).permute(1, 2, 0).numpy()
    pixels = (strip.clip(0, 1) * 255 + 0.5).astype(np.uint8)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.png")
    buffer = oiio.ImageBuf(np.ascontiguousarray(pixels))
    if not buffer.write(str(temporary)):
        raise TrainingError(f"cannot write the preview {path}: {buffer.geterror()}")
    os.replace(temporary, path)


def _metadata(
    settings: KeyframeSettings, step: int, loss: float, seconds: float, sources: dict[str, str] | None
) -> dict[str, str]:
    values = {key: "" if value is None else str(value) for key, value in asdict(settings).items()}
    values.update(sources or {})
    values.update({
        "trained_by": "vst train keyframes",
        "trained_steps": str(step),
        "final_l1": f"{loss:.5f}",
        "training_seconds": f"{seconds:.1f}",
        "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    })
    return values


def _save_model(
    model: keyframe.KeyframeModel, output: Path, settings: KeyframeSettings, step: int, loss: float, seconds: float,
    sources: dict[str, str] | None,
) -> None:
    """Write the model atomically (temporary file, then rename)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    metadata = _metadata(settings, step, loss, seconds, sources)
    if model.painter is not None:
        metadata["painter_share"] = f"{float(model.share):.3f}"
    save_file(keyframe.state_dict_of(model), temporary, metadata=metadata)
    os.replace(temporary, output)


def _save_state(
    path: Path, net: keyframe.KeyframeNet, painter: keyframe.Painter | None, optimizer: torch.optim.Optimizer,
    generator: torch.Generator, step: int, settings: KeyframeSettings,
) -> None:
    """The resumable state: weights (the painter's too, once tuned), optimizer moments, step, random generator
    (plain tensors and values)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({
        "model": keyframe.state_dict_of(keyframe.KeyframeModel(net, painter)),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "generator": generator.get_state(),
        "settings": asdict(settings),
    }, temporary)
    os.replace(temporary, path)


def _resume(
    path: Path, net: keyframe.KeyframeNet, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> tuple[int, keyframe.Painter | None]:
    """Load a training state (or only the weights of a trained model): the steps already done, and the painter
    when it was tuned already."""
    if path.suffix == ".safetensors":
        state_dict = read_state_dict(path)
        painter = _load_weights(net, state_dict, path)
        return int(state_dict.options.get("trained_steps", 0)), painter
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same mistake for the user
        raise TrainingError(f"cannot resume from {path}: not a vst training state ({exc})"[:300]) from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise TrainingError(f"cannot resume from {path}: not a vst training state")
    painter = _load_weights(net, state["model"], path)
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return int(state["step"]), painter


def _load_weights(
    net: keyframe.KeyframeNet, state_dict: dict[str, torch.Tensor], path: Path
) -> keyframe.Painter | None:
    """Load the keyframe network's weights into `net`; return the painter the file holds, if any."""
    theirs = {key: tuple(value.shape) for key, value in state_dict.items() if key.startswith(keyframe.PREFIX)}
    ours = {key: tuple(value.shape) for key, value in keyframe.state_dict_of(keyframe.KeyframeModel(net)).items()}
    if theirs != ours:
        raise TrainingError(
            f"{path} holds a network of another shape than these settings build; resume with the --width, "
            "--levels and --blocks it was trained with"
        )
    model = keyframe.build(state_dict)
    net.load_state_dict(model.net.state_dict())
    return model.painter


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                state[key] = value.to(device)

