"""Keyframe training: does a model trained on ONE painted frame paint other, different frames as intended?

The "painting" is a built-in style's render of the keyframe (multistyle26 through the server's
pipeline), so the intended result of every other frame is known: the same style's render of it.
Plates (scene-linear EXR, 320 px wide) in one sequence:

- frame 1: Big Buck Bunny frame 0 (the keyframe: the bunny in its burrow);
- frames 61, 101, 131: Big Buck Bunny frames 60, 100, 130 (same shot, far away: the bunny stands in
  front of the burrow, other pose and colours);
- frames 1001-1005: OpenEXR photographs (Cannon, Carrots, Desk, StillLife, GoldenGate): other content;
- frames 201-212: Big Buck Bunny frames 61-72, consecutive: the trained model's stability in motion,
  per frame and with `--temporal`, as Lai et al.'s warping error (`vst eval temporal`, DIS flow on the
  plates), beside the built-in style's own per-frame render.

A second case is a movie with a painted PNG, the kinds a user of a movie editor has (display-referred):
Big Buck Bunny's 132 frames at 320x180 as an H.264 movie (`movie.mp4`, frames numbered from 1 as `vst
render` numbers them); keyframe = movie frame 132 (the bunny standing, rubbing its eyes); held out =
movie frames 1, 16, 31 (the bunny in its burrow and climbing out). The painting and the
intended renders are multistyle26's renders of the movie through `vst render` into PNG (the movie's
Rec.709 code values), scored in those code values.

Paintings by other means (EXR case only; `--styles` takes their names beside style numbers), so that a
painting the painter's network family could make exactly is not the only kind scored: `stylization`
and `sketch` (OpenCV's edge-preserving stylization and colour pencil sketch) and `curve` (an S-shaped
tone curve per channel with a warmer balance: keeps the plate's detail), applied to the plates in
sRGB-encoded 0..1 and written back as scene-linear EXR. The keyframe model's painter is the arbitrary
baseline's own transformer, tuned on the keyframe (server/train/painter.py), and the built-in styles'
renders come from a network of the same layout (a conditional-instance-norm transformer), which
favours the painter; on the other paintings it must earn its share.

The model is trained with exactly the checked command (`vst train keyframes PLATES PAINTED --frames 1
-o MODEL --steps N`) and the held-out frames rendered with `vst render ... --model MODEL --embedded`.
Score: PSNR of each held-out frame against the intended render, in sRGB-encoded 0..1 (clamped), versus
two baselines a user already has: copying the painted keyframe (resized to the frame), and the
arbitrary model with the painted keyframe as its style image. The training loss (L1 on the keyframe's
patches) is not the score.

    .venv/bin/python bench/keyframes.py [--steps 250,1000] [--styles 19,stylization] [--cases exr,movie]
        [--strip docs/images/keyframes.png]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_name  # noqa: E402
from server.colour import ColourSpaces, srgb_decode, srgb_encode  # noqa: E402
from server.evaluate import evaluate_temporal  # noqa: E402
from server.models import load_model  # noqa: E402
from server.pipeline import stylize_frame  # noqa: E402
from vst_plugin.exr import read_exr, write_exr  # noqa: E402
from vst_plugin.frame import Frame, Part  # noqa: E402
from vst_plugin.schema import StylizeSettings  # noqa: E402
from vst_plugin.sheet import label, write_grid  # noqa: E402

SHARED = ROOT.parent / "shared"
WIDTH = 320
KEYFRAME = 1
SAME_SHOT = {61: 60, 101: 100, 131: 130}
MOTION = {201 + i: 61 + i for i in range(12)}
"""Plates 201-212: Big Buck Bunny frames 61-72 in a row, for the stability measurement."""
PHOTOS = {1001: "ScanLines/Cannon", 1002: "ScanLines/Carrots", 1003: "ScanLines/Desk",
          1004: "ScanLines/StillLife", 1005: "Tiles/GoldenGate"}
VST = str(Path(sys.executable).parent / "vst")


def linear_frame(linear: np.ndarray) -> Frame:
    height, width = linear.shape[:2]
    window = (0, 0, width - 1, height - 1)
    return Frame([Part({c: np.ascontiguousarray(linear[..., i]) for i, c in enumerate("RGB")}, window, window)])


def resized(image: np.ndarray, width: int) -> np.ndarray:
    height = round(image.shape[0] * width / image.shape[1] / 2) * 2
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def make_plates(folder: Path, shared: Path) -> list[int]:
    """Write the plate sequence (module docstring); returns the held-out frame numbers."""
    video = cv2.VideoCapture(str(shared / "video/bigbuckbunny.mp4"))
    wanted = {0: KEYFRAME, **{source: frame for frame, source in {**SAME_SHOT, **MOTION}.items()}}
    index = 0
    while wanted:
        ok, bgr = video.read()
        if not ok:
            raise SystemExit("cannot decode enough frames of bigbuckbunny.mp4")
        if index in wanted:
            encoded = torch.from_numpy(resized(bgr[..., ::-1].astype(np.float32) / 255, WIDTH))
            write_exr(linear_frame(srgb_decode(encoded).numpy()), str(folder / f"plate.{wanted.pop(index):04d}.exr"))
        index += 1
    for frame, name in PHOTOS.items():
        part = read_exr(shared / f"exr/{name}.exr").parts[0]
        rgb = np.stack([part.channels[c] for c in "RGB"], axis=-1).astype(np.float32)
        write_exr(linear_frame(resized(np.nan_to_num(rgb), WIDTH)), str(folder / f"plate.{frame:04d}.exr"))
    return [*SAME_SHOT, *PHOTOS]


MOVIE_KEYFRAME = 132
MOVIE_HELD_OUT = (1, 16, 31)


def make_movie(path: Path, shared: Path) -> None:
    """Big Buck Bunny at WIDTH px wide as an H.264 movie, written by vst's own movie writer."""
    from fractions import Fraction

    from vst_plugin.media import MovieWriter

    video = cv2.VideoCapture(str(shared / "video/bigbuckbunny.mp4"))
    writer = MovieWriter(str(path), None, Fraction(25), None)
    while True:
        ok, bgr = video.read()
        if not ok:
            break
        writer.write(linear_frame(resized(bgr[..., ::-1].astype(np.float32) / 255, WIDTH)))
    writer.close()


def png_rgb(path: Path) -> np.ndarray:
    """An 8-bit image's code values, 0..1."""
    import OpenImageIO as oiio

    return oiio.ImageBuf(str(path)).get_pixels(oiio.FLOAT)[..., :3]


def vst(*args: str) -> None:
    subprocess.run([VST, *args], check=True, stderr=subprocess.DEVNULL)


def movie_case(work: Path, shared: Path, style: int, steps_list: list[int], reuse: bool,
               extra: list[str]) -> list[tuple]:
    """The movie case (module docstring): rows (style, steps, seconds, frame, copy, arbitrary, trained)."""
    movie = work / "movie.mp4"
    if not movie.is_file():
        make_movie(movie, shared)
    folder = work / f"movie-style{style}"
    frames = ",".join(map(str, (*MOVIE_HELD_OUT, MOVIE_KEYFRAME)))
    vst("render", str(movie), str(folder / "intended.####.png"), "--frames", frames, "--model", "multistyle26",
        "--style", str(style), "--embedded")
    painted = folder / f"painted.{MOVIE_KEYFRAME:04d}.png"
    painted.write_bytes((folder / f"intended.{MOVIE_KEYFRAME:04d}.png").read_bytes())
    held_out = ",".join(map(str, MOVIE_HELD_OUT))
    vst("render", str(movie), str(folder / "arbitrary.####.png"), "--frames", held_out, "--style-image", str(painted),
        "--embedded")
    rows = []
    for steps in steps_list:
        model = folder / f"model{steps}.safetensors"
        started = time.monotonic()
        seconds = "reused"
        if not (reuse and model.is_file()):
            vst("train", "keyframes", str(movie), str(folder / "painted.####.png"), "--frames", str(MOVIE_KEYFRAME),
                "-o", str(model), "--steps", str(steps), *extra)
            seconds = f"{time.monotonic() - started:.0f}"
        vst("render", str(movie), str(folder / f"out{steps}.####.png"), "--frames", held_out, "--model", str(model),
            "--embedded")
        for frame in MOVIE_HELD_OUT:
            target = png_rgb(folder / f"intended.{frame:04d}.png")
            rows.append((style, steps, seconds, frame, psnr(png_rgb(painted), target),
                         psnr(png_rgb(folder / f"arbitrary.{frame:04d}.png"), target),
                         psnr(png_rgb(folder / f"out{steps}.{frame:04d}.png"), target)))
    return rows


def encoded_rgb(path: Path) -> np.ndarray:
    """An EXR's RGB as sRGB-encoded 0..1 (clamped): the space the score is computed in."""
    part = read_exr(path).parts[0]
    rgb = np.stack([part.channels[c] for c in "RGB"], axis=-1).astype(np.float32)
    return srgb_encode(torch.from_numpy(rgb).clamp(0, 1)).numpy()


def render_in_process(plate: Path, model: str, params: dict, output: Path, colours: ColourSpaces) -> None:
    """Stylize one plate with the server's own pipeline (what a server does for a request)."""
    frame = read_exr(plate)
    changed = stylize_frame(frame, load_model(model), params, StylizeSettings(model, params), colours)
    part = frame.parts[0]
    channels = {name: changed.get((0, name), plane) for name, plane in part.channels.items()}
    write_exr(Frame([Part(channels, part.data_window, part.display_window)]), str(output))


FILTERS = ("stylization", "sketch", "curve")


def paint(plate: Path, painting: str, output: Path, colours: ColourSpaces) -> None:
    """`plate` painted by a built-in style (a number: multistyle26 through the server's pipeline) or one of
    FILTERS (module docstring), written to `output` as a scene-linear EXR."""
    if painting.isdigit():
        render_in_process(plate, "multistyle26", {"style": int(painting)}, output, colours)
        return
    if painting not in FILTERS:
        raise SystemExit(f"--styles: {painting!r} is neither a style number nor one of {', '.join(FILTERS)}")
    encoded = encoded_rgb(plate)
    if painting == "curve":
        painted = np.clip((3 * encoded**2 - 2 * encoded**3) * np.float32([1.05, 1.0, 0.85]) + 0.02, 0, 1)
    else:
        bgr = (encoded[..., ::-1] * 255 + 0.5).astype(np.uint8)
        if painting == "stylization":
            bgr = cv2.stylization(bgr, sigma_s=60, sigma_r=0.45)
        else:
            bgr = cv2.pencilSketch(bgr, sigma_s=60, sigma_r=0.07, shade_factor=0.05)[1]
        painted = bgr[..., ::-1].astype(np.float32) / 255
    write_exr(linear_frame(srgb_decode(torch.from_numpy(np.ascontiguousarray(painted))).numpy()), str(output))


def boxed(image: np.ndarray, width: int = WIDTH, height: int = 214) -> np.ndarray:
    """`image` fitted into a width x height black box, aspect kept."""
    scale = min(width / image.shape[1], height / image.shape[0])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    out = np.zeros((height, width, 3), np.float32)
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    out[top : top + size[1], left : left + size[0]] = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a - b) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="1000", help="training lengths to measure, comma separated")
    parser.add_argument("--styles", default="19", help="what paints the keyframe, comma separated: built-in style "
                        f"numbers, or {', '.join(FILTERS)} (EXR case only)")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--strip", type=Path, default=None, help="write the README strip here (first style)")
    parser.add_argument("--work", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="use models already trained in --work")
    parser.add_argument("--cases", default="exr,movie", help="exr (EXR plates), movie (movie + painted PNG)")
    parser.add_argument("--painter-steps", default=None,
                        help="pass --painter-steps to vst train (a comparison; default: the checked command as it is)")
    args = parser.parse_args()
    cases = args.cases.split(",")
    extra = [] if args.painter_steps is None else ["--painter-steps", args.painter_steps]
    steps_list = [int(s) for s in args.steps.split(",")]
    if not (args.shared / "video/bigbuckbunny.mp4").is_file():
        raise SystemExit(f"{args.shared} holds no video/bigbuckbunny.mp4; pass --shared PATH")
    work = args.work or Path(tempfile.mkdtemp(prefix="vst-keyframes-"))
    plates = work / "plates"
    plates.mkdir(parents=True, exist_ok=True)
    held_out = make_plates(plates, args.shared)
    colours = ColourSpaces()
    print(f"# keyframes benchmark\n\n{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.1f}; plates {WIDTH} px wide; keyframe = Big Buck Bunny frame 0\n")
    print("| style | steps | train s | group | frame | copy keyframe | arbitrary | trained | trained - best baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary, stability = [], []
    for style in args.styles.split(",") if "exr" in cases else []:
        folder = work / f"style{style}"
        (folder / "intended").mkdir(parents=True, exist_ok=True)
        painted = folder / f"painted.{KEYFRAME:04d}.exr"
        paint(plates / f"plate.{KEYFRAME:04d}.exr", style, painted, colours)
        painted_rgb = encoded_rgb(painted)
        baselines = {}
        for frame in held_out:
            plate = plates / f"plate.{frame:04d}.exr"
            intended = folder / "intended" / f"{frame}.exr"
            paint(plate, style, intended, colours)
            arbitrary = folder / f"arbitrary.{frame}.exr"
            render_in_process(plate, "arbitrary", {"style_image": str(painted)}, arbitrary, colours)
            target = encoded_rgb(intended)
            copy = cv2.resize(painted_rgb, target.shape[1::-1], interpolation=cv2.INTER_AREA)
            baselines[frame] = (target, psnr(copy, target), psnr(encoded_rgb(arbitrary), target))
        for steps in steps_list:
            model = folder / f"model{steps}.safetensors"
            started = time.monotonic()
            seconds = "reused"
            if not (args.reuse and model.is_file()):
                subprocess.run([VST, "train", "keyframes", str(plates / "plate.####.exr"),
                                str(folder / "painted.####.exr"), "--frames", str(KEYFRAME), "-o", str(model),
                                "--steps", str(steps), *extra], check=True)
                seconds = f"{time.monotonic() - started:.0f}"
            out = folder / f"out{steps}"
            frames = ",".join(map(str, held_out))
            subprocess.run([VST, "render", str(plates / "plate.####.exr"), str(out / "out.####.exr"),
                            "--frames", frames, "--model", str(model), "--embedded"], check=True)
            margins = {"same shot": [], "photographs": [], "movie": []}
            for frame in held_out:
                target, copy, arbitrary = baselines[frame]
                trained = psnr(encoded_rgb(out / f"out.{frame:04d}.exr"), target)
                group = "same shot" if frame in SAME_SHOT else "photographs"
                margin = trained - max(copy, arbitrary)
                margins[group].append(margin)
                name = f"BBB {SAME_SHOT[frame]}" if frame in SAME_SHOT else PHOTOS[frame].split("/")[1]
                print(f"| {style} | {steps} | {seconds} | {group} | {name} | {copy:.2f} | {arbitrary:.2f} | "
                      f"{trained:.2f} | {margin:+.2f} |", flush=True)
            summary.append((style, steps, seconds, margins))
        steps = max(steps_list)
        stability.append((style, steps, measure_stability(plates, folder, style, steps, colours)))
        if args.strip and style == args.styles.split(",")[0]:
            write_strip(args.strip, plates, folder, painted_rgb, held_out, steps)
    if "movie" in cases:
        print(f"\nMovie case: movie.mp4 (BBB at {WIDTH} px), keyframe = movie frame {MOVIE_KEYFRAME}, painted PNG; "
              "PSNR on the PNG code values\n")
        print("| style | steps | train s | frame | copy keyframe | arbitrary | trained | trained - best baseline |")
        print("|---|---|---|---|---|---|---|---|")
        for style in [int(s) for s in args.styles.split(",") if s.isdigit()]:
            by_steps: dict[tuple[int, str], list[float]] = {}
            rows = movie_case(work, args.shared, style, steps_list, args.reuse, extra)
            for _, steps, seconds, frame, copy, arbitrary, trained in rows:
                margin = trained - max(copy, arbitrary)
                by_steps.setdefault((steps, seconds), []).append(margin)
                print(f"| {style} | {steps} | {seconds} | movie {frame} | {copy:.2f} | {arbitrary:.2f} | "
                      f"{trained:.2f} | {margin:+.2f} |", flush=True)
            summary += [(style, steps, seconds, {"movie": margins}) for (steps, seconds), margins in by_steps.items()]
    print("\n| style | steps | train s | group | mean margin | min margin |")
    print("|---|---|---|---|---|---|")
    for style, steps, seconds, margins in summary:
        for group, values in margins.items():
            if values:
                print(f"| {style} | {steps} | {seconds} | {group} | {np.mean(values):+.2f} | {min(values):+.2f} |")
    if stability:
        print("\nStability on Big Buck Bunny frames 61-72 (warping error, sRGB 0..1, lower is steadier):\n")
        print("| style | steps | painting per frame | trained per frame | trained --temporal |")
        print("|---|---|---|---|---|")
        for style, steps, errors in stability:
            values = " | ".join(f"{errors[name]:.2e}" for name in ("intended", "per frame", "temporal"))
            print(f"| {style} | {steps} | {values} |")
    print(f"\nload after: {os.getloadavg()[0]:.1f}; files in {work}")


def measure_stability(plates: Path, folder: Path, style: str, steps: int, colours: ColourSpaces) -> dict[str, float]:
    """Warping error of the motion frames: intended (the painting per frame), trained per frame and temporal."""
    frames = list(MOTION)
    pattern = str(plates / "plate.####.exr")
    model = folder / f"model{steps}.safetensors"
    renders = {"intended": folder / "motion-intended", "per frame": folder / "motion-trained",
               "temporal": folder / "motion-temporal"}
    renders["intended"].mkdir(exist_ok=True)
    for frame in frames:
        paint(plates / f"plate.{frame:04d}.exr", style, renders["intended"] / f"out.{frame:04d}.exr", colours)
    for name, extra in (("per frame", []), ("temporal", ["--temporal"])):
        subprocess.run([VST, "render", pattern, str(renders[name] / "out.####.exr"), "--frames",
                        f"{frames[0]}-{frames[-1]}", "--model", str(model), "--embedded", *extra], check=True)
    return {name: evaluate_temporal(str(where / "out.####.exr"), frames, flow_from=pattern).mean
            for name, where in renders.items()}


def write_strip(path: Path, plates: Path, folder: Path, painted: np.ndarray, held_out: list[int], steps: int) -> None:
    """plate | painted keyframe | for two held-out frames: plate, trained, arbitrary, intended."""
    keyframe = encoded_rgb(plates / f"plate.{KEYFRAME:04d}.exr")
    tiles = []
    for frame in (held_out[1], held_out[4]):
        target = encoded_rgb(folder / "intended" / f"{frame}.exr")
        row = [
            (keyframe, "keyframe plate"), (painted, "painted keyframe"),
            (encoded_rgb(plates / f"plate.{frame:04d}.exr"), "held-out plate"),
            (encoded_rgb(folder / f"out{steps}" / f"out.{frame:04d}.exr"), f"trained ({steps} steps)"),
            (encoded_rgb(folder / f"arbitrary.{frame}.exr"), "arbitrary"), (target, "intended"),
        ]
        tiles += [label(boxed(image), text, 16) for image, text in row]
    write_grid(tiles, 6, str(path))


if __name__ == "__main__":
    main()
