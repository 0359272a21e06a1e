"""`vst train`: the command line of training (registered with the `vst` command's subcommands).

Training runs in the `vst train` process itself, never inside a server: a running `vst serve` keeps
serving (on a shared GPU the run reports the memory it takes).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from server.train.settings import KeyframeSettings, StyleSettings, TrainingError
from vst_plugin.cli import CommandError, footage_colorspace
from vst_plugin.footage import Footage, FootageError
from vst_plugin.media import REC709, SRGB, MediaError
from vst_plugin.schema import DEFAULT_COLORSPACE, HIGHLIGHT_POLICIES
from vst_plugin.sequence import SequenceError


def register(subparsers: Any) -> None:
    """Add `train keyframes` and `train style` to the `vst` command's subparsers."""
    kf, st = KeyframeSettings, StyleSettings  # every default comes from the settings
    train = subparsers.add_parser("train", help="train a model: from painted keyframes of a shot, or a style image")
    jobs = train.add_subparsers(dest="training", required=True)

    keyframes = jobs.add_parser(
        "keyframes",
        help="learn plate -> painted from one or a few painted frames; the model then paints the whole shot",
        description="Tunes a painter (the built-in arbitrary-style network) on the whole painted keyframes, trains a "
        "small feed-forward network on random patches of them, blends the two by how well each paints a strip "
        "neither learnt from, and writes a checkpoint the server loads (the keyframe family): "
        "vst render PLATES OUT --model MODEL.safetensors.",
    )
    keyframes.add_argument("plates", help="the plates, as vst render reads them: an image sequence (plate.####.exr, "
                           "plate.%%04d.png), a single image, or a movie")
    keyframes.add_argument("painted", help="the painted frames: a sequence with the plates' frame numbers, "
                           "one image, or a movie of the same frames")
    keyframes.add_argument("--frames", required=True,
                           help="the painted keyframes, numbered as vst render numbers the plates (movies from 1), "
                           "e.g. 1001 or 1001,1050")
    keyframes.add_argument("-o", "--output", required=True, type=Path, help="model file to write (.safetensors)")
    keyframes.add_argument("--steps", type=int, default=kf.steps,
                           help="training steps of the keyframe network (default %(default)s)")
    keyframes.add_argument("--minutes", type=float, default=kf.minutes,
                           help="stop after this long even if steps remain")
    keyframes.add_argument("--seed", type=int, default=kf.seed,
                           help="random seed of weights and patches (default %(default)s)")
    keyframes.add_argument("--resume", type=Path, default=None, metavar="STATE",
                           help="continue from a MODEL.safetensors.train-state file (or a trained model's weights)")
    keyframes.add_argument("--input-colorspace", default=None, metavar="NAME",
                           help="OCIO colour space of the plates, or raw (default: as vst render decides it: what a "
                           f"float file declares, else {DEFAULT_COLORSPACE}; {SRGB} for integer images, {REC709} "
                           "for movies); render with the same")
    keyframes.add_argument("--painted-colorspace", default=None, metavar="NAME",
                           help="OCIO colour space of the painted frames (default: the plates' when both are "
                           "display-referred, else decided for them as for the plates)")
    keyframes.add_argument("--highlights", default=kf.highlights, choices=HIGHLIGHT_POLICIES,
                           help="highlight policy, as in vst render (default %(default)s); render with the same")
    keyframes.add_argument("--patch", type=int, default=kf.patch,
                           help="training patch side in pixels (default %(default)s)")
    keyframes.add_argument("--batch", type=int, default=kf.batch, help="patches per step (default %(default)s)")
    keyframes.add_argument("--learning-rate", type=float, default=kf.learning_rate,
                           help=f"Adam learning rate, reached after a linear warm-up over the first {kf.warmup} "
                           "steps (at most a tenth of --steps), then decayed (default %(default)s)")
    keyframes.add_argument("--width", type=int, default=kf.width,
                           help="channels at full resolution, doubled at each level down (default %(default)s)")
    keyframes.add_argument("--levels", type=int, default=kf.levels,
                           help="steps down to half resolution (default %(default)s)")
    keyframes.add_argument("--blocks", type=int, default=kf.blocks, help="residual blocks (default %(default)s)")
    keyframes.add_argument("--painter-steps", type=int, default=kf.painter_steps, metavar="N",
                           help="tune the painter (the built-in arbitrary-style network, on whole keyframes) for at "
                           "most N steps, stopped early on a strip of each keyframe that neither network learns "
                           "from; it draws the strokes of a painterly look, and gets a share of the result by how "
                           "well it paints that strip (0: the keyframe network alone, trained on the whole "
                           "keyframes; default %(default)s)")
    keyframes.add_argument("--preview-every", type=int, default=kf.preview_every, metavar="N",
                           help="write MODEL.preview.png (plate | painted | model) every N steps (0: never)")
    keyframes.add_argument("--checkpoint-every", type=int, default=kf.checkpoint_every, metavar="N",
                           help="save the resumable training state every N steps (default %(default)s)")
    keyframes.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (default auto)")
    keyframes.add_argument("--threads", type=int, default=_half_the_cores(),
                           help="CPU threads (default: half the cores, so a server on this machine keeps the rest)")
    keyframes.set_defaults(run=run_keyframes)

    style = jobs.add_parser(
        "style",
        help="train a fast style network for one style image (Johnson et al.) with a local VGG loss network",
        description="Trains a Johnson transformer (pytorch/examples fast_neural_style layout) with content, Gram style "
        "and total-variation losses in the feature space of a VGG16/VGG19 read from a local file in torchvision's "
        "layout (nothing is downloaded), optionally a PatchGAN adversarial and a flow-warped temporal term.",
    )
    style.add_argument("style_image", type=Path, help="the style picture (EXR, PNG, JPEG, ...)")
    style.add_argument("--content", nargs="+", required=True, metavar="PLATES_OR_MOVIE",
                       help="content: image sequences, images and/or movies, as vst render reads them")
    style.add_argument("--content-frames", default=None, metavar="LIST",
                       help="frames of the content, numbered as vst render numbers them (default: every frame)")
    style.add_argument("-o", "--output", required=True, type=Path, help="model file to write (.safetensors)")
    style.add_argument("--vgg", required=True, type=Path,
                       help="local VGG16/VGG19 weights in torchvision's layout (features.N.weight), "
                       ".safetensors or a weights-only .pth")
    style.add_argument("--steps", type=int, default=st.steps, help="training steps (default %(default)s)")
    style.add_argument("--minutes", type=float, default=st.minutes, help="stop after this long even if steps remain")
    style.add_argument("--seed", type=int, default=st.seed, help="random seed (default %(default)s)")
    style.add_argument("--size", type=int, default=st.size,
                       help="content frames' shorter side in pixels (default %(default)s)")
    style.add_argument("--patch", type=int, default=st.patch, help="training crop side (default %(default)s)")
    style.add_argument("--batch", type=int, default=st.batch, help="crops per step (default %(default)s)")
    style.add_argument("--learning-rate", type=float, default=st.learning_rate,
                       help="Adam learning rate (default %(default)s)")
    style.add_argument("--width", type=int, default=st.width,
                       help="channels of the first layer (default %(default)s, as Johnson)")
    style.add_argument("--blocks", type=int, default=st.blocks, help="residual blocks (default %(default)s)")
    style.add_argument("--content-weight", type=float, default=st.content_weight)
    style.add_argument("--style-weight", type=float, default=st.style_weight)
    style.add_argument("--tv-weight", type=float, default=st.tv_weight)
    style.add_argument("--adversarial-weight", type=float, default=st.adversarial_weight,
                       help="PatchGAN term (default 0: off)")
    style.add_argument("--temporal-weight", type=float, default=st.temporal_weight,
                       help="consecutive content frames warped by optical flow (default 0: off)")
    style.add_argument("--content-colorspace", default=None, metavar="NAME",
                       help="OCIO colour space of the content (default: as vst render decides it for each)")
    style.add_argument("--style-colorspace", default=st.style_colorspace, metavar="NAME",
                       help="colour space of the style image (auto: lin_rec709 for EXR, sRGB otherwise)")
    style.add_argument("--max-frames", "--max-movie-frames", type=int, default=64,
                       help="frames read from each content source, the first ones (default 64)")
    style.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (default auto)")
    style.add_argument("--threads", type=int, default=_half_the_cores(),
                       help="CPU threads (default: half the cores, so a server on this machine keeps the rest)")
    style.set_defaults(run=run_style)


def _half_the_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, cores // 2)


def run_keyframes(args: argparse.Namespace) -> int:
    """Train a keyframe model from the command line, with a progress bar."""
    import torch
    from tqdm import tqdm

    from server.models import ModelError, resolve_device
    from server.train.data import TrainingDataError, read_pairs
    from server.train.keyframes import preview_path, state_path, train_keyframes

    if args.output.suffix != ".safetensors":
        raise CommandError(f"-o {args.output}: the model is written as safetensors; name it *.safetensors")
    torch.set_num_threads(max(1, args.threads))
    try:
        device = resolve_device(args.device)
        plates, painted = open_footage(args.plates, args.frames, "PLATES"), open_footage(args.painted, args.frames,
                                                                                          "PAINTED")
        try:
            colorspace = footage_colorspace(plates, args.input_colorspace, "train")
            painted_colorspace = painted_space(plates, painted, colorspace, args.painted_colorspace)
            settings = KeyframeSettings(
                steps=args.steps, minutes=args.minutes, seed=args.seed, patch=args.patch, batch=args.batch,
                learning_rate=args.learning_rate, width=args.width, levels=args.levels, blocks=args.blocks,
                painter_steps=args.painter_steps, colorspace=colorspace, painted_colorspace=painted_colorspace,
                highlights=args.highlights,
                preview_every=args.preview_every, checkpoint_every=args.checkpoint_every,
            )
            settings.check()
            pairs = read_pairs(plates, painted, colorspace, painted_colorspace, settings.highlights)
        finally:
            plates.close()
            painted.close()
    except (TrainingDataError, TrainingError, ModelError) as exc:
        raise CommandError(str(exc)) from None
    size = pairs[0].plate.shape
    for footage, space, role in ((plates, colorspace, "PLATES"), (painted, painted_colorspace, "PAINTED")):
        print(f"vst train: {role} {footage.name}: {footage.description}; colour space {space}", file=sys.stderr)
    print(f"vst train: {len(pairs)} keyframe(s) of {size[2]}x{size[1]} on {device}; "
          f"preview {preview_path(args.output)}", file=sys.stderr)
    sources = {"plates": args.plates, "painted": args.painted, "keyframes": args.frames}
    total = settings.painter_steps + settings.steps + settings.finishing_steps(painter=settings.painter_steps > 0)
    with tqdm(total=total, unit="step", desc="vst train", dynamic_ncols=True) as bar:
        def progress(step: int, loss: float, figures: dict[str, Any]) -> None:
            bar.n = step
            bar.set_postfix(l1=f"{loss:.4f}", **figures, refresh=False)
            bar.update(0)

        try:
            result = train_keyframes(pairs, settings, args.output, device, args.resume, progress, sources)
        except TrainingError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            bar.close()
            print(f"vst train: interrupted; the model so far is in {args.output}; continue with "
                  f"--resume {state_path(args.output)}", file=sys.stderr)
            return 130
    stop = f" (stopped by --minutes {args.minutes})" if result.stopped_by_time else ""
    memory = "" if result.peak_gpu_bytes is None else f", peak GPU memory {result.peak_gpu_bytes / 2**20:.0f} MiB"
    share = "" if result.painter_share is None else f", painter's share {result.painter_share:.2f}"
    print(f"wrote {args.output}: {result.steps} steps in {result.seconds:.0f} s{stop}, L1 {result.loss:.4f}{share}"
          f"{memory}. Render with: vst render PLATES OUT --frames ... --model {args.output}")
    return 0


def painted_space(plates: Footage, painted: Footage, colorspace: str, given: str | None) -> str:
    """The colour space of the painted frames: `given`, else the plates' when both are display-referred (a frame
    exported from a movie and painted holds the movie's code values: the render gives those codes back), else
    decided for the painted footage as for any input (a PNG painted over an EXR plate's sRGB view is sRGB)."""
    if given is None and plates.display_referred and painted.display_referred:
        return colorspace
    return footage_colorspace(painted, given, "train")


def open_footage(name: str, frames: str | None, role: str) -> Footage:
    """`name` and its frames found as `vst render` finds them; TrainingDataError naming `role` otherwise."""
    from server.train.data import TrainingDataError

    try:
        return Footage.open(name, frames)
    except (SequenceError, FootageError, MediaError) as exc:
        raise TrainingDataError(f"{role}: {exc}") from None


def run_style(args: argparse.Namespace) -> int:
    """Train a style network from the command line, with a progress bar."""
    import torch
    from tqdm import tqdm

    from server.models import ModelError, resolve_device
    from server.train.data import TrainingDataError
    from server.train.style import read_content, read_vgg, train_style

    if args.output.suffix != ".safetensors":
        raise CommandError(f"-o {args.output}: the model is written as safetensors; name it *.safetensors")
    torch.set_num_threads(max(1, args.threads))
    settings = StyleSettings(
        steps=args.steps, minutes=args.minutes, seed=args.seed, size=args.size, patch=args.patch, batch=args.batch,
        learning_rate=args.learning_rate, width=args.width, blocks=args.blocks, content_weight=args.content_weight,
        style_weight=args.style_weight, tv_weight=args.tv_weight, adversarial_weight=args.adversarial_weight,
        temporal_weight=args.temporal_weight, style_colorspace=args.style_colorspace,
    )
    try:
        settings.check()
        if not args.style_image.is_file():
            raise TrainingDataError(f"style image {args.style_image} does not exist")
        device = resolve_device(args.device)
        sources = [open_footage(name, args.content_frames, "--content") for name in args.content]
        try:
            spaces = [footage_colorspace(footage, args.content_colorspace, "train") for footage in sources]
            clips = read_content(list(zip(sources, spaces, strict=True)), settings.size, args.max_frames)
        finally:
            for footage in sources:
                footage.close()
        settings = replace(settings, colorspace=" ".join(dict.fromkeys(spaces)))
        vgg = read_vgg(args.vgg)
    except (TrainingDataError, TrainingError, ModelError) as exc:
        raise CommandError(str(exc)) from None
    names = {"style_image": str(args.style_image), "content": " ".join(args.content), "vgg": str(args.vgg)}
    with tqdm(total=settings.steps, unit="step", desc="vst train style", dynamic_ncols=True) as bar:
        def progress(step: int, values: dict[str, float], figures: dict[str, Any]) -> None:
            bar.n = step
            bar.set_postfix({name: f"{value:.3g}" for name, value in values.items()} | figures, refresh=False)
            bar.update(0)

        try:
            result = train_style(args.style_image, clips, vgg, settings, args.output, device, progress, names)
        except (TrainingError, TrainingDataError, ModelError) as exc:
            raise CommandError(str(exc)) from None
    memory = "" if result.peak_gpu_bytes is None else f", peak GPU memory {result.peak_gpu_bytes / 2**20:.0f} MiB"
    print(f"wrote {args.output}: {result.steps} steps in {result.seconds:.0f} s{memory}")
    return 0
