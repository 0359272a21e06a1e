"""The `vst` command line: serve, models, render."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vst_plugin import protocol
from vst_plugin.client import Client, ServerError, ServerUnavailable, VstError
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
    render.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any other model parameter (value read as JSON when it parses)")
    render.add_argument("--input-colorspace", default=protocol.DEFAULT_COLORSPACE, metavar="NAME",
                        help="OCIO colour space of the plates, or raw (default lin_rec709)")
    render.add_argument("--highlights", default="preserve", choices=protocol.HIGHLIGHT_POLICIES,
                        help="what happens to values outside 0..1 (default preserve)")
    render.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layers to stylize (default: main RGBA of every part and view)")
    render.add_argument("--in-flight", type=int, default=2, help="frames sent ahead of the one being written")
    _connection_options(render)
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
    """Model parameters from --style, --strength and --param."""
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
    return params


def run_render(args: argparse.Namespace) -> int:
    """Stylize a sequence, several frames in flight, each output written atomically."""
    from tqdm import tqdm

    from vst_plugin.exr import ExrError, read_exr

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
    options = {
        "model": args.model,
        "params": render_params(args),
        "colorspace": args.input_colorspace,
        "highlights": args.highlights,
        "layers": args.layers,
    }
    with connect(args) as client, tqdm(total=len(frames), unit="frame", desc="vst render") as progress:
        pending: deque = deque()
        for number in frames:
            try:
                plate = read_exr(inputs[number])
            except ExrError as exc:
                raise CommandError(f"frame {number}: {exc}") from None
            pending.append((number, client.submit(plate, frame_number=number, **options)))
            if len(pending) >= max(1, args.in_flight):
                _finish(client, pending.popleft(), outputs, progress)
        while pending:
            _finish(client, pending.popleft(), outputs, progress)
    print(f"wrote {len(frames)} frame(s) to {os.path.dirname(os.path.abspath(outputs[frames[0]]))}")
    return 0


def _finish(client: Client, item: tuple, outputs: dict[int, str], progress: Any) -> None:
    from vst_plugin.exr import ExrError, write_exr

    number, pending = item
    try:
        write_exr(client.result(pending), outputs[number])
    except (ServerError, ExrError) as exc:
        raise CommandError(f"frame {number}: {exc}") from None
    progress.update(1)


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

    config = ServerConfig(args.bind, args.device, tuple(args.models_dir), args.model_memory, args.default_model)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vst` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    commands = {"serve": run_serve, "models": run_models, "render": run_render}
    try:
        return commands[args.command](args)
    except (CommandError, VstError) as exc:
        print(f"vst {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vst {args.command}: interrupted", file=sys.stderr)
        return 130
