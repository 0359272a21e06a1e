"""The server's `vst` subcommands (serve, export, eval, convert-stylegan, train) and the embedded server.

Registered through the `vst.commands` and `vst.embedded` entry-point groups (pyproject.toml), so the
host-side command line (`vst_plugin.cli`) finds them without naming this package. Nothing heavy is
imported until a command runs: `vst render --server ...` never loads torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from server.train import command as train
from vst_plugin.cli import CommandError, add_model_folder_options, add_style_options, parse_size, render_params
from vst_plugin.schema import DEFAULT_ADDRESS, default_address

EMBEDDED_ADDRESS = "tcp://127.0.0.1:0"


def register(commands: Any) -> None:
    """Add the server's subcommands to the `vst` parser's subcommands."""
    serve = commands.add_parser("serve", help="run the inference server")
    serve.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="TOML file of these options (bind = \"ipc:///tmp/vst.sock\", models-dir = [...]); "
                       "options given on the command line override it")
    serve.add_argument("--bind", default=None, metavar="ADDR",
                       help="tcp://127.0.0.1:PORT, tcp://[::1]:PORT or ipc:///path (loopback only unless --curve-dir; "
                       f"default $VST_SERVER, else {DEFAULT_ADDRESS})")
    serve.add_argument("--default-model", default="multistyle26", help="model used when a request names none")
    serve.add_argument("--sequence-ttl", type=float, default=600.0, metavar="SECONDS",
                       help="forget a client's sequence state after this long without frames (default 600)")
    serve.add_argument("--max-sequences", type=int, default=32, metavar="N",
                       help="sequences whose state is kept at once; the least recently used is dropped first "
                       "(default 32; a 1080p temporal sequence holds tens of MB)")
    serve.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                       help="stop after this long without requests (render nodes: no server outlives its job)")
    serve.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                       help="stop when process PID ends (the farm worker or job that started the server)")
    add_model_folder_options(serve)
    serve.add_argument("--precision", choices=("auto", "half", "float"), default="auto",
                       help="network precision: auto = half on a GPU where the model allows it, float otherwise")
    serve.add_argument("--style-dir", action="append", type=Path, default=[], metavar="DIR",
                       help="folder of style pictures requests may name (repeatable); pictures can also be sent")
    serve.add_argument("--allow-model-paths", action="store_true",
                       help="let requests load any model or style picture file this server's user can read, by "
                       "path. UNSAFE on shared machines: whoever reaches the server reads files as you")
    serve.add_argument("--queue-memory", type=parse_size, default=1 << 30, metavar="SIZE",
                       help="byte budget of queued frames; beyond it frames are refused as busy and clients "
                       "retry (default 1G)")
    serve.add_argument("--max-frame-bytes", type=parse_size, default=2 << 30, metavar="SIZE",
                       help="largest frame (all planes, or the EXR file) accepted; bigger message frames are "
                       "refused while they arrive (default 2G)")
    serve.add_argument("--curve-dir", type=Path, default=None, metavar="DIR",
                       help="serve with CURVE keys (from `vst keys DIR`): encrypted, only clients whose public key "
                       "is in DIR/authorized; then --bind may be any address, e.g. tcp://0.0.0.0:5555")
    serve.add_argument("--client-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="drop the queued frames of a client silent this long (clients ping while they "
                       "wait; default 30)")
    serve.set_defaults(run=run_serve)

    evaluate = commands.add_parser("eval", help="measure rendered sequences")
    measures = evaluate.add_subparsers(dest="measure", required=True)
    temporal = measures.add_parser("temporal", help="warping error of a rendered sequence (Lai et al.)")
    temporal.add_argument("output", help="rendered sequence pattern")
    temporal.add_argument("--frames", required=True, help="frame list, e.g. 1001-1100")
    flows = temporal.add_mutually_exclusive_group(required=True)
    flows.add_argument("--flow-from", metavar="IN_PATTERN",
                       help="estimate flow on these input plates (OpenCV Farneback with its own forward-backward "
                       "test: not the DIS flow that --temporal uses)")
    flows.add_argument("--gt-flow", metavar="PATTERN",
                       help="ground-truth flow: EXR files with forward.u/v (and backward.u/v) channels, per view too")
    temporal.add_argument("--y-down", action="store_true", help="flow v points down (default: up, as in Nuke)")
    temporal.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(run=run_eval)

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
    add_style_options(export, style_images=False)
    export.add_argument(
        "--models-dir", action="append", type=Path, default=[], metavar="DIR",
        help="extra folder of model checkpoints (repeatable)",
    )
    export.set_defaults(run=run_export)

    convert = commands.add_parser(
        "convert-stylegan",
        help="convert an NVlabs stylegan2-ada/stylegan3 .pkl generator to a rosinality checkpoint",
        description="Reads the pickle without running any code from it (tensors and plain containers only) "
        "and writes G_ema as a rosinality StyleGAN2 checkpoint (g_ema, latent_avg) the server loads.",
    )
    convert.add_argument("input", type=Path, help="NVlabs network pickle (.pkl)")
    convert.add_argument("output", type=Path, help="rosinality checkpoint to write (.pt)")
    convert.set_defaults(run=run_convert_stylegan)
    train.register(commands)


@contextlib.contextmanager
def embedded(device: str, model_dirs: Sequence[Path], model_memory: int) -> Iterator[str]:
    """Run a server in a thread of this process for the length of the block; yields its address."""
    from server.models import ModelError
    from server.service import Server, ServerConfig

    try:
        # the embedded server runs as this user for this command only: paths are this user's files
        server = Server(ServerConfig(EMBEDDED_ADDRESS, device, tuple(model_dirs), model_memory, allow_paths=True))
    except ModelError as exc:
        raise CommandError(str(exc)) from None
    address = server.bind()
    thread = threading.Thread(target=server.serve_forever, name="vst-embedded-server", daemon=True)
    thread.start()
    try:
        yield address
    finally:
        server.stop()
        thread.join()


def run_serve(args: argparse.Namespace) -> int:
    """Run the server in the foreground until SIGTERM or Ctrl-C."""
    import zmq

    from server.models import ModelError, ParamError
    from server.service import BindError, Server, ServerConfig
    from vst_plugin.frame import FrameLimits

    if args.max_sequences < 1:
        raise CommandError(f"--max-sequences {args.max_sequences}: keep at least 1 sequence")
    bind = args.bind or default_address()
    config = ServerConfig(
        bind, args.device, tuple(args.models_dir), args.model_memory, args.default_model,
        limits=FrameLimits(max_bytes=args.max_frame_bytes),
        sequence_ttl=args.sequence_ttl, max_sequences=args.max_sequences, idle_exit=args.idle_exit,
        parent_pid=args.parent_pid,
        half={"auto": None, "half": True, "float": False}[args.precision],
        queue_bytes=args.queue_memory, client_timeout=args.client_timeout,
        allow_paths=args.allow_model_paths, style_dirs=tuple(args.style_dir), curve_dir=args.curve_dir,
    )
    try:
        server = Server(config)
        endpoint = server.bind()
    except (BindError, ModelError, ParamError) as exc:
        raise CommandError(str(exc)) from None
    except zmq.ZMQError as exc:
        raise CommandError(f"cannot listen on {bind}: {exc} (is another vst server running there?)") from None
    server.install_signal_handlers()
    print(f"vst server listening on {endpoint} (device {server.device}); Ctrl-C or SIGTERM stops it", flush=True)
    server.serve_forever()
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Print the warping error of a rendered sequence, per frame pair and overall."""
    from server.evaluate import EvaluationError, evaluate_temporal
    from vst_plugin.exr import ExrError
    from vst_plugin.sequence import SequenceError, parse_frames

    try:
        frames = parse_frames(args.frames)
        report = evaluate_temporal(args.output, frames, args.flow_from, args.gt_flow, not args.y_down)
    except (SequenceError, EvaluationError, ExrError) as exc:
        raise CommandError(str(exc)) from None
    for note in report.notes:
        print(f"vst eval: {note}", file=sys.stderr)
    if args.json:
        pairs = [
            {"frames": [pair.first, pair.second], "view": pair.view, "warping_error": pair.error}
            for pair in report.pairs
        ]
        print(json.dumps({"pairs": pairs, "mean": report.mean}, indent=2))
        return 0
    for pair in report.pairs:
        print(f"{pair.first} -> {pair.second}{f' ({pair.view})' if pair.view else ''}: {pair.error:.6f}")
    print(f"warping error (mean of {len(report.pairs)} pairs): {report.mean:.6f}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write a model with its parameters baked in as TorchScript or ONNX."""
    from server.export import export
    from server.models import ModelError, ModelRegistry

    try:
        model = ModelRegistry(tuple(args.models_dir), "cpu", allow_paths=True).get(args.model)
        path = export(model, args.output, args.format, **render_params(args))
    except ModelError as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {path}: {model.name} ({model.family}) as {args.format}; input and output scene-linear RGB [1,3,H,W]")
    return 0


def run_convert_stylegan(args: argparse.Namespace) -> int:
    """Convert an NVlabs StyleGAN2 pickle to a rosinality checkpoint."""
    from server.models import ModelError
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
