"""The `vst` command line. The host side has `render` and `models`; the server package adds its own
commands (`serve`, `export`, `eval`, ...) through the `vst.commands` entry-point group, so this module
never names the server and works on a host that has only `vst_plugin` installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vst_plugin import install
from vst_plugin.client import Client, ServerUnavailable, VstError
from vst_plugin.farm import commands as farm_commands
from vst_plugin.files import remove_stale_temporaries
from vst_plugin.keys import (
    AUTHORIZED,
    CLIENT_KEY_ENV,
    SERVER_KEY_ENV,
    SERVER_NAME,
    CurveKeyError,
    client_curve,
    create_keys,
    public_key,
)
from vst_plugin.media import CODECS, REC709, SRGB
from vst_plugin.render import RESUME_PREROLL
from vst_plugin.schema import (
    DEFAULT_ADDRESS,
    DEFAULT_COLORSPACE,
    FLOW_PRESETS,
    HIGHLIGHT_POLICIES,
    StylizeSettings,
    TemporalSettings,
)
from vst_plugin.sequence import SequenceError

if TYPE_CHECKING:
    from vst_plugin.footage import Footage

COMMANDS_GROUP = "vst.commands"
"""Entry points: functions `register(commands)` that add subcommands (with `run` defaults) to `vst`."""
EMBEDDED_GROUP = "vst.embedded"
"""Entry point: a context manager `embedded(device, model_dirs, model_memory)` yielding a server address."""
SERVER_EXTRA = "pip install 'vst[server]'"


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


def add_model_folder_options(parser: argparse.ArgumentParser) -> None:
    """--device, --models-dir and --model-memory: where a server (or an embedded one) finds and runs models."""
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (default auto)")
    parser.add_argument(
        "--models-dir", action="append", type=Path, default=[], metavar="DIR",
        help="extra folder of model checkpoints (repeatable; earlier folders win on name clashes)",
    )
    parser.add_argument(
        "--model-memory", type=parse_size, default=4 << 30, metavar="SIZE",
        help="memory budget of loaded models; least recently used ones are unloaded (default 4G)",
    )


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """--server / --embedded and --timeout: how a host command reaches a server."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", default=None, metavar="ADDR",
                       help=f"address of a running vst server (default $VST_SERVER, else {DEFAULT_ADDRESS})")
    where.add_argument("--embedded", action="store_true", help="run a server inside this command")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds without any answer before the server counts as gone (default 10)")
    parser.add_argument("--server-key", default=None, metavar="KEY",
                        help=f"public key of a server that serves with CURVE keys: its Z85 text or its server.key "
                        f"file (default ${SERVER_KEY_ENV})")
    parser.add_argument("--client-key", default=None, metavar="FILE",
                        help=f"this client's .key_secret file (from `vst keys`; default ${CLIENT_KEY_ENV})")
    add_model_folder_options(parser)


def add_style_options(parser: argparse.ArgumentParser, style_images: bool = True) -> None:
    """The model parameters a command sets: --style, --strength, --param and the style-image options."""
    parser.add_argument("--style", default=None,
                        help="built-in style by index or name (7, night_swirl; vst models lists them), "
                        "or a blend 3:0.5,12:0.5")
    parser.add_argument("--strength", type=float, default=None, help="mix of stylized and original, 0..1")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any other model parameter (value read as JSON when it parses)")
    if style_images:
        parser.add_argument("--style-image", default=None, metavar="PATH",
                            help="style from any picture (EXR, PNG, JPEG): the arbitrary model unless --model is given")
        parser.add_argument("--style-image-b", default=None, metavar="PATH",
                            help="second style picture, see --style-mix")
        parser.add_argument("--style-mix", type=float, default=None, metavar="X",
                            help="0: --style-image alone .. 1: --style-image-b alone")


def render_params(args: argparse.Namespace) -> dict[str, Any]:
    """Model parameters from --param, --style, --strength and the style-image options."""
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
        if getattr(args, name, None):  # sent as bytes: the server may be on another machine
            path = Path(getattr(args, name)).expanduser()
            try:
                params[name] = path.read_bytes()
            except OSError as exc:
                raise CommandError(f"--{name.replace('_', '-')} {path}: {exc.strerror or exc}") from None
    if getattr(args, "style_mix", None) is not None:
        params["style_mix"] = args.style_mix
    return params


def render_model(args: argparse.Namespace) -> str | None:
    """--model, or the arbitrary-style model when --style-image is given without one."""
    return args.model if args.model or not getattr(args, "style_image", None) else "arbitrary"


def render_temporal(args: argparse.Namespace) -> TemporalSettings | None:
    """Temporal settings from --temporal, --flow-preset and --no-vectors."""
    if args.temporal is None:
        return None
    if not 0 < args.temporal <= 1:
        raise CommandError(f"--temporal {args.temporal}: the strength must be in 0..1")
    return TemporalSettings(args.temporal, args.flow_preset, "off" if args.no_vectors else "auto")


def render_settings(args: argparse.Namespace, colorspace: str | None = None) -> StylizeSettings:
    """The stylize settings a `vst render` command line asks for (`colorspace`: the footage's, when
    --input-colorspace names none)."""
    return StylizeSettings(
        model=render_model(args),
        params=render_params(args),
        colorspace=args.input_colorspace or colorspace or DEFAULT_COLORSPACE,
        highlights=args.highlights,
        layers=tuple(args.layers) if args.layers else None,
        tile=args.tile,
        temporal=render_temporal(args),
    )


def _add_render(commands: Any) -> None:
    render = commands.add_parser("render", help="stylize an image sequence or a movie")
    render.add_argument("input", help="input: an image sequence (plate.####.exr, plate.%%04d.dpx, Nuke-style: one # "
                        "per digit), a single image, or a movie (.mov, .mp4, .mxf, ...)")
    render.add_argument("output", help="output: an image sequence (format from the extension, input's bit depth), "
                        "a single image, or a movie")
    render.add_argument("--frames", default=None,
                        help="frame list, e.g. 1001-1100 or 1-10,15,20-30x2 (default: every frame on disk or of "
                        "the movie; movie frames count from 1)")
    render.add_argument("--codec", default=None, choices=tuple(CODECS),
                        help="movie codec (default: .mov ProRes 422 HQ, .mp4 H.264, .mxf DNxHR HQ)")
    render.add_argument("--model", default=None, help="model name or checkpoint path (default: the server's)")
    add_style_options(render)
    render.add_argument("--input-colorspace", default=None, metavar="NAME",
                        help="OCIO colour space, alias or role of the plates, or raw (default: what a float file "
                        f"declares, else {DEFAULT_COLORSPACE}; {SRGB} for integer images, {REC709} for movies)")
    render.add_argument("--highlights", default="preserve", choices=HIGHLIGHT_POLICIES,
                        help="what happens to values outside 0..1 (default preserve)")
    render.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layers to stylize (default: main RGBA of every part and view)")
    render.add_argument("--tile", type=int, default=None, metavar="N",
                        help="run each frame in N-pixel tiles with whole-frame statistics (same result, "
                        "less GPU memory; default: only when a frame does not fit)")
    render.add_argument("--in-flight", type=int, default=2, help="frames sent ahead of the one being written")
    render.add_argument("--temporal", type=float, nargs="?", const=0.8, default=None, metavar="STRENGTH",
                        help="blend the previous result warped along the motion, 0..1 (flag alone: 0.8)")
    render.add_argument("--flow-preset", default=TemporalSettings.preset, choices=FLOW_PRESETS,
                        help=f"optical flow preset when the plates carry no motion vectors (default "
                        f"{TemporalSettings.preset}; fine: full-resolution flow for final renders, slower)")
    render.add_argument("--no-vectors", action="store_true",
                        help="estimate flow even when the plates carry backward/forward motion vectors")
    render.add_argument("--preroll", type=int, default=0, metavar="N",
                        help="render N frames before the first one and discard them (chunked temporal renders; "
                        f"{RESUME_PREROLL} when 0 and --skip-existing resumes a --temporal render mid-way)")
    render.add_argument("--skip-existing", action="store_true",
                        help="keep frames whose output exists and was made from the same input and settings "
                        "(resume a killed render; with --temporal it restarts at the first missing frame)")
    render.add_argument("--reconnect", type=float, default=120.0, metavar="SECONDS",
                        help="when the server stops or restarts mid-render, wait this long for it, then send the "
                        "frames not yet written again, with pre-roll (default 120; 0: fail at once)")
    add_connection_options(render)
    render.set_defaults(run=run_render)


def _add_keys(commands: Any) -> None:
    keys = commands.add_parser(
        "keys", help="make a CURVE key pair for serving beyond loopback",
        description="Writes NAME.key (public) and NAME.key_secret (secret, keep it private) into DIR. For a "
        f"server: `vst keys DIR` (name {SERVER_NAME}), then `vst serve --curve-dir DIR` with the clients' .key "
        f"files in DIR/{AUTHORIZED}. For a client: `vst keys DIR --name artist1`, give artist1.key to the "
        f"server's operator, and connect with --client-key DIR/artist1.key_secret --server-key server.key.",
    )
    keys.add_argument("folder", type=Path, metavar="DIR", help="folder to write the key pair into")
    keys.add_argument("--name", default=SERVER_NAME, help=f"file name of the pair (default {SERVER_NAME})")
    keys.set_defaults(run=run_keys)


def run_keys(args: argparse.Namespace) -> int:
    """Create a CURVE key pair."""
    try:
        public, secret = create_keys(args.folder, args.name)
    except CurveKeyError as exc:
        raise CommandError(str(exc)) from None
    if args.name == SERVER_NAME:
        (args.folder / AUTHORIZED).mkdir(exist_ok=True)
    print(f"wrote {public} (public: {public_key(str(public)).decode()}) and {secret} (secret: keep it private)")
    return 0


def _add_models(commands: Any) -> None:
    models = commands.add_parser("models", help="list the server's models and their parameters")
    models.add_argument("--json", action="store_true", help="print the raw schema as JSON")
    add_connection_options(models)
    models.set_defaults(run=run_models)


def _add_sheet(commands: Any) -> None:
    sheet = commands.add_parser(
        "sheet", help="one plate in many styles, as one labelled picture to choose a style from",
        description="Stylizes the plate in each style through a server (at the plate's own resolution, with the "
        "server's colour pipeline) and writes the tiles, labelled with each style's index and name, as one picture.",
    )
    sheet.add_argument("plate", help="an EXR plate, e.g. plate.1001.exr")
    sheet.add_argument("-o", "--output", required=True, help="picture to write (.png, .jpg, .tif)")
    sheet.add_argument("--styles", nargs="+", default=None, metavar="STYLE",
                       help="styles to show: names, indices or blends such as night_swirl:0.5,3:0.5 "
                       "(default: every style of the model)")
    sheet.add_argument("--model", default=None, help="a model with built-in styles (default: the server's)")
    sheet.add_argument("--input-colorspace", default=None, metavar="NAME",
                       help=f"colour space of the plate (default: what the file declares, else {DEFAULT_COLORSPACE})")
    sheet.add_argument("--highlights", default="preserve", choices=HIGHLIGHT_POLICIES,
                       help="what happens to values outside 0..1 (default preserve)")
    sheet.add_argument("--columns", type=int, default=6, help="tiles per row (default 6)")
    sheet.add_argument("--width", type=int, default=320, metavar="PIXELS", help="width of each tile (default 320)")
    add_connection_options(sheet)
    sheet.set_defaults(run=run_sheet)


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    found = metadata.entry_points()
    return list(found.select(group=group) if hasattr(found, "select") else found.get(group, ()))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `vst` command: host commands plus those the installed packages register."""
    parser = argparse.ArgumentParser(prog="vst", description="Neural style transfer for compositing plates.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_render(commands)
    _add_models(commands)
    install.register(commands)
    farm_commands.register(commands)
    _add_sheet(commands)
    _add_keys(commands)
    for entry in _entry_points(COMMANDS_GROUP):
        entry.load()(commands)
    return parser


def _command_names(parser: argparse.ArgumentParser) -> list[str]:
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return list(subparsers.choices)


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[Client]:
    """A client for the command: to --server, or to a server started inside this process (--embedded)."""
    if not args.embedded:
        try:
            curve = client_curve(args.server_key, args.client_key)
        except CurveKeyError as exc:
            raise CommandError(str(exc)) from None
        with Client(args.server, timeout=args.timeout, curve=curve) as client:
            try:
                client.hello()
            except ServerUnavailable:
                keys = " (or it does not accept this client's key)" if curve is not None else ""
                raise CommandError(
                    f"no vst server is running at {client.address}{keys}. Start one in another shell with "
                    "`vst serve`, or add --embedded to run one inside this command."
                ) from None
            yield client
        return
    found = _entry_points(EMBEDDED_GROUP)
    if not found:
        raise CommandError(f"--embedded needs the vst server installed here ({SERVER_EXTRA}); "
                           "or use --server ADDR to reach a running one")
    with found[0].load()(args.device, tuple(args.models_dir), args.model_memory) as address, \
            Client(address, timeout=args.timeout) as client:
        yield client


def plate_colorspace(first_input: str, command: str = "render") -> str:
    """The colour space the first input file declares (said on stderr), else the default."""
    from vst_plugin.colour import declared_colorspace

    declared = declared_colorspace(first_input)
    if declared is None:
        return DEFAULT_COLORSPACE
    print(f"vst {command}: input colour space {declared.name} ({declared.reason}); --input-colorspace overrides",
          file=sys.stderr)
    return declared.name


def footage_colorspace(footage: Footage, given: str | None, command: str = "render") -> str:
    """The colour space of `footage`'s pixels: `given` (--input-colorspace), else what a float file's header
    declares (said on stderr), else its kind's default (linear for float images, sRGB for integer images,
    Rec.709 for movies). `vst render` and `vst train` decide it here, so a model is trained in the space it serves in.
    """
    if given:
        return given
    if not footage.display_referred:
        return plate_colorspace(footage.file(footage.frames[0]), command)
    return footage.colorspace


def run_render(args: argparse.Namespace, on_frame: Callable[[int], None] | None = None) -> int:
    """Stylize a sequence or a movie, several frames in flight, each output written atomically.

    `on_frame(number)` is called as each frame is written (a farm task's progress); the progress bar
    shows only without it.
    """
    from tqdm import tqdm

    from vst_plugin.footage import Destination, Footage, FootageError
    from vst_plugin.jobs import JobError, Progress
    from vst_plugin.media import MediaError
    from vst_plugin.render import RenderError, RenderSpec

    try:
        footage = Footage.open(args.input, args.frames)
        spec = RenderSpec(args.input, args.output, tuple(footage.frames), render_settings(args, footage.colorspace),
                          args.preroll)
        spec.check()
        colorspace = footage_colorspace(footage, args.input_colorspace)
        spec = replace(spec, settings=replace(spec.settings, colorspace=colorspace))
        destination = Destination.open(args.output, footage, colorspace, args.codec)
    except (SequenceError, FootageError, MediaError, RenderError) as exc:
        raise CommandError(str(exc)) from None
    how = "given by --input-colorspace" if args.input_colorspace else "assumed; --input-colorspace overrides"
    print(f"vst render: {args.input}: {footage.description}, {len(spec.frames)} frame(s); colour space "
          f"{colorspace} ({how})", file=sys.stderr)
    if destination.encoding:
        print(f"vst render: {args.output} is display-referred: results are converted to {destination.encoding}",
              file=sys.stderr)
    if args.skip_existing and destination.movie is not None:
        raise CommandError("--skip-existing resumes image sequences; a movie is written in one piece")
    folder = os.path.dirname(os.path.abspath(spec.output_path(spec.frames[0])))
    stale = remove_stale_temporaries(folder)
    if stale:
        print(f"vst render: removed {len(stale)} temporary file(s) left in {folder} by a render that was killed",
              file=sys.stderr)
    try:
        with connect(args) as client:
            job = spec.job(client, source=lambda n: destination.route(footage.load(n)),
                           in_flight=max(1, args.in_flight), cache=args.skip_existing,
                           reconnect=args.reconnect)
            if args.skip_existing:
                resumed = spec.resume(job.done)
                if resumed.frames and resumed.frames[0] != spec.frames[0]:
                    print(f"vst render: resuming at frame {resumed.frames[0]} "
                          f"({len(spec.frames) - len(resumed.frames)} frame(s) kept)", file=sys.stderr)
                spec = resumed
            job.preroll = spec.available_preroll() if spec.frames else 0
            if job.preroll < spec.preroll:
                print(f"vst render: pre-roll shortened to {job.preroll} frame(s): the plates before frame "
                      f"{spec.frames[0]} end there", file=sys.stderr)
            with tqdm(total=len(spec.frames), unit="frame", desc=f"vst render ({colorspace})",
                      disable=on_frame is not None) as bar:

                def progress(done: Progress) -> None:
                    bar.update(1)
                    if on_frame is not None and not done.cached:
                        on_frame(done.frame)

                result = job.run(spec.frames, progress=progress)
            destination.finish()
    except (JobError, MediaError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        destination.abort()
        footage.close()
    kept = f", kept {len(footage.frames) - len(result.rendered)} existing" if args.skip_existing else ""
    print(f"wrote {len(result.rendered)} frame(s){kept} to {folder if destination.movie is None else destination.name}")
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
        if model.get("info"):  # what the checkpoint says about itself, e.g. its training settings
            print(f"    info: {', '.join(f'{key}={value}' for key, value in sorted(model['info'].items()))}")
        for param in model["params"]:
            bounds = ""
            if param.get("min") is not None or param.get("max") is not None:
                bounds = f" [{param.get('min')}..{param.get('max')}]"
            if param.get("choices") and param["type"] != "style_mix":
                bounds = f" choices {','.join(param['choices'][:8])}{'...' if len(param['choices']) > 8 else ''}"
            print(f"    {param['name']}: {param['type']} = {param['default']!r}{bounds}  {param.get('help', '')}")
            if param["type"] == "style_mix" and param.get("choices"):
                styles = ", ".join(f"{i} {name}" if name != str(i) else name for i, name in enumerate(param["choices"]))
                print(textwrap.fill(f"styles: {styles}", width=110, initial_indent=" " * 8, subsequent_indent=" " * 16))
    return 0


def run_sheet(args: argparse.Namespace) -> int:
    """Write a contact sheet of the plate in each style of a model."""
    from tqdm import tqdm

    from vst_plugin.exr import ExrError, read_exr
    from vst_plugin.sheet import SheetError, sheet_tiles, style_choices, write_grid

    if args.columns < 1 or args.width < 16:
        raise CommandError("--columns must be at least 1 and --width at least 16 pixels")
    try:
        plate = read_exr(args.plate)
    except ExrError as exc:
        raise CommandError(str(exc)) from None
    colorspace = args.input_colorspace or plate_colorspace(args.plate, "sheet")
    with connect(args) as client:
        name = args.model or client.hello()["capabilities"]["default_model"]
        model = next((model for model in client.models() if model["name"] == name), None)
        if model is None or "error" in model:
            reason = model["error"] if model else "no such model on the server (vst models lists them)"
            raise CommandError(f"model {name}: {reason}")
        try:
            choices = style_choices(model)
            styles = args.styles or choices
            with tqdm(total=len(styles), unit="style", desc="vst sheet") as progress:
                tiles = sheet_tiles(client, plate, styles, name, choices, colorspace, args.width,
                                    progress=lambda _: progress.update(1), highlights=args.highlights)
            width, height = write_grid(tiles, min(args.columns, len(tiles)), args.output)
        except SheetError as exc:
            raise CommandError(str(exc)) from None
    print(f"wrote {args.output} ({width}x{height}: the plate and {len(styles)} styles of {name})")
    return 0


def config_arguments(path: Path) -> list[str]:
    """A TOML file of a command's long options as command-line arguments (`key = value`; a list repeats
    the option; `true` gives a flag)."""
    try:
        import tomllib  # novermin (3.11; tomli below on older Pythons)
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as file:
            settings = tomllib.load(file)
    except OSError as exc:
        raise CommandError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"{path} is not valid TOML: {exc}") from None
    arguments: list[str] = []
    for key, value in settings.items():
        option = "--" + key.replace("_", "-")
        if option == "--config" or isinstance(value, dict):
            raise CommandError(f"{path}: {key!r} cannot be set in a config file")
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                arguments.append(option)
            elif item is not False:
                arguments += [option, str(item)]
    return arguments


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse the command line; a command's --config FILE counts as options written before its own.

    Options the parser does not know are an error, except for commands that pass render options on
    (farm commands): those get them as `args.render_options`.
    """
    args, extra = parser.parse_known_args(argv)
    config = getattr(args, "config", None)
    try:
        if config is not None:
            at = argv.index(args.command) + 1
            args, extra = parser.parse_known_args([*argv[:at], *config_arguments(config), *argv[at:]])
        if extra and not getattr(args, "render_options_allowed", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit:
        if config is not None:
            print(f"vst: the options above include those of {config}", file=sys.stderr)
        raise
    args.render_options = extra
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vst` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    word = next((item for item in argv if not item.startswith("-")), None)
    if word is not None and word not in _command_names(parser) and not _entry_points(COMMANDS_GROUP):
        print(f"vst {word}: not available here: this installation has only the host side of vst "
              f"({', '.join(_command_names(parser))}). Server commands come with the server: {SERVER_EXTRA}",
              file=sys.stderr)
        return 2
    try:
        args = parse_arguments(parser, argv)
    except CommandError as exc:
        print(f"vst: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.run(args)
    except (CommandError, VstError) as exc:
        print(f"vst {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vst {args.command}: interrupted", file=sys.stderr)
        return 130
