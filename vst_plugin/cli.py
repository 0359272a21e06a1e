"""The `vst` command line: serve, models, render."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from vst_plugin import protocol
from vst_plugin.client import Client, ServerUnavailable, VstError
from vst_plugin.sequence import SequenceError, frame_path, has_frame_token, parse_frames

EMBEDDED_ADDRESS = "tcp://127.0.0.1:0"


class CommandError(Exception):
    """A mistake in the command line or its files, reported without a traceback."""


def parse_size(text: str) -> int:
    """Parse a byte size such as 4G, 512M or 1073741824."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 4G or 512M)") from None


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (default auto)")
    parser.add_argument(
        "--models-dir", action="append", type=Path, default=[], metavar="DIR",
        help="extra folder of model checkpoints (repeatable; earlier folders win on name clashes)",
    )
    parser.add_argument(
        "--model-memory", type=parse_size, default=4 << 30, metavar="SIZE",
        help="memory budget of loaded models; least recently used ones are unloaded (default 4G)",
    )


def _connection_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", default=protocol.DEFAULT_ADDRESS, metavar="ADDR",
                       help=f"address of a running vst server (default {protocol.DEFAULT_ADDRESS})")
    where.add_argument("--embedded", action="store_true", help="run a server inside this command")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds without any answer before the server counts as gone (default 10)")
    _server_options(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `vst` command."""
    parser = argparse.ArgumentParser(prog="vst", description="Neural style transfer for compositing plates.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the inference server")
    serve.add_argument("--bind", default=protocol.DEFAULT_ADDRESS, metavar="ADDR",
                       help="tcp://127.0.0.1:PORT or ipc:///path (loopback only)")
    serve.add_argument("--default-model", default="multistyle26", help="model used when a request names none")
    serve.add_argument("--sequence-ttl", type=float, default=600.0, metavar="SECONDS",
                       help="forget a client's sequence state after this long without frames (default 600)")
    _server_options(serve)

    models = commands.add_parser("models", help="list the server's models and their parameters")
    models.add_argument("--json", action="store_true", help="print the raw schema as JSON")
    _connection_options(models)

    render = commands.add_parser("render", help="stylize an EXR sequence")
    render.add_argument("input", help="input sequence pattern, e.g. plate.####.exr or plate.%%04d.exr")
    render.add_argument("output", help="output sequence pattern")
    render.add_argument("--frames", required=True, help="frame list, e.g. 1001-1100 or 1-10,15,20-30x2")
    render.add_argument("--model", default=None, help="model name or checkpoint path (default: the server's)")
    render.add_argument("--style", default=None, help="style of the built-in network: 7, or a blend 3:0.5,12:0.5")
    render.add_argument("--strength", type=float, default=None, help="mix of stylized and original, 0..1")
    render.add_argument("--style-image", default=None, metavar="PATH",
                        help="style from any picture (EXR, PNG, JPEG): the arbitrary model unless --model is given")
    render.add_argument("--style-image-b", default=None, metavar="PATH", help="second style picture, see --style-mix")
    render.add_argument("--style-mix", type=float, default=None, metavar="X",
                        help="0: --style-image alone .. 1: --style-image-b alone")
    render.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any other model parameter (value read as JSON when it parses)")
    render.add_argument("--input-colorspace", default=protocol.DEFAULT_COLORSPACE, metavar="NAME",
                        help="OCIO colour space of the plates, or raw (default lin_rec709)")
    render.add_argument("--highlights", default="preserve", choices=protocol.HIGHLIGHT_POLICIES,
                        help="what happens to values outside 0..1 (default preserve)")
    render.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layers to stylize (default: main RGBA of every part and view)")
    render.add_argument("--tile", type=int, default=None, metavar="N",
                        help="run each frame in N-pixel tiles with whole-frame statistics (same result, "
                        "less GPU memory; default: only when a frame does not fit)")
    render.add_argument("--in-flight", type=int, default=2, help="frames sent ahead of the one being written")
    render.add_argument("--temporal", type=float, nargs="?", const=0.8, default=None, metavar="STRENGTH",
                        help="blend the previous result warped along the motion, 0..1 (flag alone: 0.8)")
    render.add_argument("--flow-preset", default="fast", choices=("ultrafast", "fast", "medium"),
                        help="DIS optical flow preset when the plates carry no motion vectors (default fast)")
    render.add_argument("--no-vectors", action="store_true",
                        help="estimate flow even when the plates carry backward/forward motion vectors")
    render.add_argument("--preroll", type=int, default=0, metavar="N",
                        help="render N frames before the first one and discard them (chunked temporal renders)")
    _connection_options(render)

    evaluate = commands.add_parser("eval", help="measure rendered sequences")
    measures = evaluate.add_subparsers(dest="measure", required=True)
    temporal = measures.add_parser("temporal", help="warping error of a rendered sequence (Lai et al.)")
    temporal.add_argument("output", help="rendered sequence pattern")
    temporal.add_argument("--frames", required=True, help="frame list, e.g. 1001-1100")
    flows = temporal.add_mutually_exclusive_group(required=True)
    flows.add_argument("--flow-from", metavar="IN_PATTERN", help="estimate flow (DIS) on these input plates")
    flows.add_argument("--gt-flow", metavar="PATTERN",
                       help="ground-truth flow: EXR files with forward.u/v and backward.u/v channels")
    temporal.add_argument("--preset", default="medium", choices=("ultrafast", "fast", "medium"))
    temporal.add_argument("--y-down", action="store_true", help="flow v points down (default: up, as in Nuke)")
    temporal.add_argument("--json", action="store_true", help="print the report as JSON")

    export = commands.add_parser(
        "export",
        help="write a model as TorchScript (Nuke CatFileCreator) or ONNX",
        description="The file takes one scene-linear RGB tensor [1,3,H,W] of any size and returns the stylized "
        "scene-linear RGB; colour handling (preserve highlights, sRGB), padding and the chosen style and strength "
        "are inside it. Runs here (needs torch), no server.",
    )
    export.add_argument("model", help="model name or checkpoint path")
    export.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    export.add_argument("-o", "--output", required=True, type=Path, help="file to write (.pt / .onnx)")
    export.add_argument("--style", default=None, help="style to bake in: 7, or a blend 3:0.5,12:0.5")
    export.add_argument("--strength", type=float, default=None, help="mix of stylized and original, 0..1")
    export.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any other model parameter to bake in (value read as JSON when it parses)")
    export.add_argument(
        "--models-dir", action="append", type=Path, default=[], metavar="DIR",
        help="extra folder of model checkpoints (repeatable)",
    )

    convert = commands.add_parser(
        "convert-stylegan",
        help="convert an NVlabs stylegan2-ada/stylegan3 .pkl generator to a rosinality checkpoint",
        description="Reads the pickle without running any code from it (tensors and plain containers only) "
        "and writes G_ema as a rosinality StyleGAN2 checkpoint (g_ema, latent_avg) the server loads.",
    )
    convert.add_argument("input", type=Path, help="NVlabs network pickle (.pkl)")
    convert.add_argument("output", type=Path, help="rosinality checkpoint to write (.pt)")
    return parser


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[Client]:
    """A client for the command: to --server, or to a server started inside this process."""
    if not args.embedded:
        with Client(args.server, timeout=args.timeout) as client:
            try:
                client.hello()
            except ServerUnavailable:
                raise CommandError(
                    f"no vst server is running at {args.server}. Start one in another shell with "
                    "`vst serve`, or add --embedded to run one inside this command."
                ) from None
            yield client
        return
    from server.service import Server, ServerConfig  # torch is imported only here

    server = Server(ServerConfig(EMBEDDED_ADDRESS, args.device, tuple(args.models_dir), args.model_memory))
    address = server.bind()
    thread = threading.Thread(target=server.serve_forever, name="vst-embedded-server", daemon=True)
    thread.start()
    try:
        with Client(address, timeout=args.timeout) as client:
            yield client
    finally:
        server.stop()
        thread.join()


def render_params(args: argparse.Namespace) -> dict[str, Any]:
    """Model parameters from --param, --style, --strength and the style-image options (render and export)."""
    params: dict[str, Any] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CommandError(f"--param {item!r}: use NAME=VALUE")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    if args.style is not None:
        params["style"] = args.style
    if args.strength is not None:
        params["strength"] = args.strength
    for name in ("style_image", "style_image_b"):
        if getattr(args, name, None):  # the server shares this machine's files; send absolute paths
            params[name] = str(Path(getattr(args, name)).expanduser().absolute())
    if getattr(args, "style_mix", None) is not None:
        params["style_mix"] = args.style_mix
    return params


def render_model(args: argparse.Namespace) -> str | None:
    """--model, or the arbitrary-style model when --style-image is given without one."""
    return args.model if args.model or not getattr(args, "style_image", None) else "arbitrary"


def render_temporal(args: argparse.Namespace) -> dict[str, Any] | None:
    """Temporal options from --temporal, --flow-preset and --no-vectors."""
    if args.temporal is None:
        return None
    if not 0 < args.temporal <= 1:
        raise CommandError(f"--temporal {args.temporal}: the strength must be in 0..1")
    return {"strength": args.temporal, "preset": args.flow_preset, "vectors": "off" if args.no_vectors else "auto"}


def run_eval(args: argparse.Namespace) -> int:
    """Print the warping error of a rendered sequence, per frame pair and overall."""
    from server.evaluate import EvaluationError, evaluate_temporal
    from vst_plugin.exr import ExrError

    try:
        frames = parse_frames(args.frames)
        report = evaluate_temporal(args.output, frames, args.flow_from, args.gt_flow, args.preset, not args.y_down)
    except (SequenceError, EvaluationError, ExrError) as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        pairs = [{"frames": [a, b], "warping_error": error} for a, b, error in report.pairs]
        print(json.dumps({"pairs": pairs, "mean": report.mean}, indent=2))
        return 0
    for a, b, error in report.pairs:
        print(f"{a} -> {b}: {error:.6f}")
    print(f"warping error (mean of {len(report.pairs)} pairs): {report.mean:.6f}")
    return 0


def available_preroll(frames: list[int], wanted: int, input_path: Callable[[int], str]) -> int:
    """The pre-roll every contiguous run of `frames` can have: at most `wanted` existing frames before it."""
    starts = [n for i, n in enumerate(frames) if i == 0 or frames[i - 1] != n - 1]
    preroll = wanted
    for start in starts:
        available = 0
        while available < preroll and os.path.isfile(input_path(start - available - 1)):
            available += 1
        preroll = available
    return preroll


def run_render(args: argparse.Namespace) -> int:
    """Stylize a sequence, several frames in flight, each output written atomically."""
    from tqdm import tqdm

    from vst_plugin.jobs import ExrPlanes, JobError, SequenceJob, StyleOptions

    try:
        frames = parse_frames(args.frames)
        if len(frames) > 1 and not (has_frame_token(args.input) and has_frame_token(args.output)):
            raise CommandError("several frames need a frame token (#### or %04d) in both IN and OUT")
        inputs = {n: frame_path(args.input, n) if has_frame_token(args.input) else args.input for n in frames}
        outputs = {n: frame_path(args.output, n) if has_frame_token(args.output) else args.output for n in frames}
    except SequenceError as exc:
        raise CommandError(str(exc)) from None
    missing = [n for n in frames if not os.path.isfile(inputs[n])]
    if missing:
        shown = ", ".join(f"{n} ({inputs[n]})" for n in missing[:5])
        raise CommandError(f"{len(missing)} input frame(s) missing: {shown}{' ...' if len(missing) > 5 else ''}")
    options = StyleOptions(
        model=render_model(args),
        params=render_params(args),
        colorspace=args.input_colorspace,
        highlights=args.highlights,
        layers=tuple(args.layers) if args.layers else None,
        temporal=render_temporal(args),
        tile=args.tile,
    )
    input_path = partial(frame_path, args.input) if has_frame_token(args.input) else (lambda _: args.input)
    preroll = available_preroll(frames, args.preroll, input_path)
    if preroll < args.preroll:
        print(f"vst render: pre-roll shortened to {preroll} frame(s): the plates before frame "
              f"{frames[0]} end there", file=sys.stderr)
    with connect(args) as client, tqdm(total=len(frames), unit="frame", desc="vst render") as progress:
        job = SequenceJob(
            client,
            options,
            source=lambda n: ExrPlanes.load(input_path(n)),
            output=outputs.__getitem__,
            in_flight=max(1, args.in_flight),
            preroll=preroll,
        )
        try:
            job.run(frames, progress=lambda _: progress.update(1))
        except JobError as exc:
            raise CommandError(str(exc)) from None
    print(f"wrote {len(frames)} frame(s) to {os.path.dirname(os.path.abspath(outputs[frames[0]]))}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write a model with its parameters baked in as TorchScript or ONNX."""
    from server.export import export
    from server.models import ModelError, ModelRegistry

    try:
        model = ModelRegistry(tuple(args.models_dir), "cpu").get(args.model)
        path = export(model, args.output, args.format, **render_params(args))
    except ModelError as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {path}: {model.name} ({model.family}) as {args.format}; input and output scene-linear RGB [1,3,H,W]")
    return 0


def run_models(args: argparse.Namespace) -> int:
    """Print the server's models and their parameters."""
    with connect(args) as client:
        models = client.models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for model in models:
        if "error" in model:
            print(f"{model['name']}: cannot be read: {model['error']}")
            continue
        state = "loaded" if model.get("loaded") else "not loaded"
        print(f"{model['name']}  ({model['family']}, {state})")
        for param in model["params"]:
            bounds = ""
            if param.get("min") is not None or param.get("max") is not None:
                bounds = f" [{param.get('min')}..{param.get('max')}]"
            if param.get("choices"):
                bounds = f" choices {','.join(param['choices'][:8])}{'...' if len(param['choices']) > 8 else ''}"
            print(f"    {param['name']}: {param['type']} = {param['default']!r}{bounds}  {param.get('help', '')}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Run the server in the foreground until SIGTERM or Ctrl-C."""
    import zmq

    from server.models import ModelError
    from server.service import BindError, Server, ServerConfig

    config = ServerConfig(
        args.bind, args.device, tuple(args.models_dir), args.model_memory, args.default_model,
        sequence_ttl=args.sequence_ttl,
    )
    try:
        server = Server(config)
        endpoint = server.bind()
    except (BindError, ModelError) as exc:
        raise CommandError(str(exc)) from None
    except zmq.ZMQError as exc:
        raise CommandError(f"cannot listen on {args.bind}: {exc} (is another vst server running there?)") from None
    server.install_signal_handlers()
    print(f"vst server listening on {endpoint} (device {server.device}); Ctrl-C or SIGTERM stops it", flush=True)
    server.serve_forever()
    return 0


def run_convert_stylegan(args: argparse.Namespace) -> int:
    """Convert an NVlabs StyleGAN2 pickle to a rosinality checkpoint."""
    from server.models import ModelError  # torch is imported only here
    from server.stylegan.convert import convert_nvlabs

    if not args.input.is_file():
        raise CommandError(f"{args.input} does not exist")
    try:
        config = convert_nvlabs(args.input, args.output)
    except ModelError as exc:
        raise CommandError(str(exc)) from None
    print(
        f"wrote {args.output}: StyleGAN2 {config.size} px, style dimension {config.style_dim}, "
        f"{config.n_mlp} mapping layers, {config.n_latent} W+ rows"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vst` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    commands = {
        "serve": run_serve,
        "models": run_models,
        "render": run_render,
        "eval": run_eval,
        "export": run_export,
        "convert-stylegan": run_convert_stylegan,
    }
    try:
        return commands[args.command](args)
    except (CommandError, VstError) as exc:
        print(f"vst {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vst {args.command}: interrupted", file=sys.stderr)
        return 130
