"""The farm commands: `vst farm`, `vst submit openjd|deadline`, `vst verify`, `vst farm-server start|stop`.

`vst farm` and `vst submit` take the options of `vst render` as they are (style, model, temporal,
pre-roll, device...): they are checked with `vst render`'s own parser and handed to every chunk
unchanged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from vst_plugin.farm import chunks
from vst_plugin.farm import nuke as farm_nuke
from vst_plugin.farm.deadline import DEADLINE_IDLE_EXIT
from vst_plugin.farm.openjd import MAX_CHUNK, SubmitJob, write_bundle
from vst_plugin.farm.servers import DEFAULT_IDLE_EXIT, ServerProcess, node_server, vst_executable
from vst_plugin.render import RenderError, RenderSpec
from vst_plugin.sequence import SequenceError, frame_path, has_frame_token, parse_frames

RESERVED = ("--server", "--embedded", "--frames", "--skip-existing")
"""`vst render` options a farm sets itself for each chunk."""


def register(commands: argparse._SubParsersAction) -> None:
    """Add the farm commands to the `vst` command's subparsers."""
    from vst_plugin.cli import add_model_folder_options

    verify = commands.add_parser(
        "verify", help="check that every frame of a finished render exists and is complete",
        description="Reads every frame in full; exits 1 listing each missing or unreadable one. Also removes the "
        "temporary files writers killed mid-frame left beside the frames: run it once the render has finished.",
    )
    verify.add_argument("output", help="rendered sequence pattern, e.g. out.####.exr")
    verify.add_argument("--frames", required=True, help="expected frames, e.g. 1001-1100")
    verify.set_defaults(run=run_verify)

    server = commands.add_parser("farm-server", help="start or stop the vst server of a render node's session")
    actions = server.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start `vst serve` in the background, record it in STATE")
    start.add_argument("state", help="state file (JSON) that `farm-server stop` reads")
    start.add_argument("--idle-exit", type=float, default=DEFAULT_IDLE_EXIT, metavar="SECONDS",
                       help=f"the server stops after this long without requests (default {DEFAULT_IDLE_EXIT:g})")
    start.add_argument("--openjd-env", action="store_true",
                       help="print `openjd_env: VST_SERVER=ADDR` (an Open Job Description session variable)")
    start.add_argument("--cpu", action="store_true", help="same as --device cpu")
    add_model_folder_options(start)
    start.set_defaults(run=run_server_start)
    stop = actions.add_parser("stop", help="stop the server recorded in STATE and wait until it has gone")
    stop.add_argument("state", help="state file written by `farm-server start`")
    stop.set_defaults(run=run_server_stop)

    farm = commands.add_parser(
        "farm", allow_abbrev=False, help="render a sequence in chunks on a Dask cluster",
        description="Render options (--style, --model, --temporal, --preroll, --device ...) are those of "
        "`vst render`. Each worker offers one GPU slot (`dask worker ADDR --resources GPU=1 --nthreads 1`) "
        "and runs one vst server.",
    )
    _job_arguments(farm)
    cluster = farm.add_mutually_exclusive_group(required=True)
    cluster.add_argument("--scheduler", metavar="ADDR", help="address of a Dask scheduler, e.g. tcp://farm01:8786")
    cluster.add_argument("--local", type=int, metavar="N", help="run N workers on this machine (a LocalCluster)")
    farm.add_argument("--idle-exit", type=float, default=DEFAULT_IDLE_EXIT, metavar="SECONDS",
                      help="a worker's server stops after this long without requests "
                      f"(default {DEFAULT_IDLE_EXIT:g})")
    farm.set_defaults(run=run_farm, render_options_allowed=True)

    chunk = commands.add_parser(
        "farm-chunk", allow_abbrev=False,
        help="render one farm task's frames through this node's vst server, started when none runs",
        description="For farm managers without session hooks (Deadline 10 CommandLine jobs). Render options "
        "are those of `vst render`; frames already written are skipped.",
    )
    chunk.add_argument("input", help="input sequence pattern")
    chunk.add_argument("output", help="output sequence pattern")
    chunk.add_argument("--frames", required=True, help="the task's frames, e.g. 1001-1010")
    chunk.add_argument("--idle-exit", type=float, default=DEADLINE_IDLE_EXIT, metavar="SECONDS",
                       help="the node's server stops after this long without requests "
                       f"(default {DEADLINE_IDLE_EXIT:g})")
    chunk.set_defaults(run=run_farm_chunk, render_options_allowed=True)

    submit = commands.add_parser("submit", help="write a farm manager's job for a render (and submit it)")
    engines = submit.add_subparsers(dest="engine", required=True)
    openjd = engines.add_parser(
        "openjd", allow_abbrev=False, help="an Open Job Description job bundle (AWS Deadline Cloud)",
        description="Writes BUNDLE/template.yaml and BUNDLE/parameter_values.yaml. Run it here with "
        "`openjd run BUNDLE/template.yaml --step Render`, or send it with `deadline bundle submit BUNDLE`. "
        "Render options are those of `vst render`.",
    )
    openjd.add_argument("bundle", help="folder to write the job bundle into")
    _job_arguments(openjd, nuke=True)
    _submit_options(openjd)
    openjd.set_defaults(run=run_submit_openjd, render_options_allowed=True)
    deadline = engines.add_parser(
        "deadline", allow_abbrev=False, help="Thinkbox Deadline 10 CommandLine jobs",
        description="Writes N.job.info / N.plugin.info into FOLDER (the render job, then a verification job "
        "that depends on it) and submits them with deadlinecommand when it is on the PATH; otherwise prints the "
        "command. Render options are those of `vst render`.",
    )
    deadline.add_argument("folder", help="folder to write the job files into")
    _job_arguments(deadline, nuke=True)
    _submit_options(deadline, DEADLINE_IDLE_EXIT)
    deadline.add_argument("--pool", default=None, help="Deadline pool")
    deadline.add_argument("--group", default=None, help="Deadline group (e.g. your GPU nodes)")
    deadline.add_argument("--priority", type=int, default=50, help="Deadline priority (default 50)")
    deadline.set_defaults(run=run_submit_deadline, render_options_allowed=True)


def _job_arguments(parser: argparse.ArgumentParser, nuke: bool = False) -> None:
    optional = {"nargs": "?"} if nuke else {}
    parser.add_argument("input", help="input sequence pattern, e.g. plate.####.exr", **optional)
    parser.add_argument("output", help="output sequence pattern", **optional)
    parser.add_argument("--frames", required=True, help="frames to render, e.g. 1001-1100")
    parser.add_argument("--chunk", type=int, required=True, metavar="N", help="frames per chunk (farm task)")


def _submit_options(parser: argparse.ArgumentParser, idle_exit: float = DEFAULT_IDLE_EXIT) -> None:
    parser.add_argument("--nuke", default=None, metavar="SCRIPT",
                        help="a Nuke script job: render the vst node's input with Nuke, stylize it, render the "
                        "comp with Nuke (give --node instead of IN and OUT)")
    parser.add_argument("--node", default=None, metavar="NAME", help="the vst node of --nuke (full name)")
    parser.add_argument("--nuke-executable", default="nuke", metavar="COMMAND",
                        help="the Nuke command on the render nodes (default nuke)")
    parser.add_argument("--cpu", action="store_true", help="render on CPU nodes (no GPU host requirement)")
    parser.add_argument("--name", default=None, help="job name (default: vst and the output's file name)")
    parser.add_argument("--vst", default=vst_executable(), metavar="COMMAND",
                        help="the vst command on the render nodes (default: this one, %(default)s)")
    parser.add_argument("--idle-exit", type=float, default=idle_exit, metavar="SECONDS",
                        help=f"a node's server stops after this long without requests (default {idle_exit:g})")


def render_namespace(input: str, output: str, frames: str, options: list[str]) -> argparse.Namespace:
    """`vst render INPUT OUTPUT --frames FRAMES OPTIONS...` parsed by `vst render`'s own parser."""
    from vst_plugin.cli import CommandError, build_parser

    for option in options:
        if option.split("=", 1)[0] in RESERVED:
            raise CommandError(f"{option}: the farm sets this for each chunk itself; leave it out")
    try:
        return build_parser().parse_args(["render", input, output, "--frames", frames, *options])
    except SystemExit:  # argparse has printed what is wrong
        raise CommandError(f"the render options {' '.join(options)!r} are not valid `vst render` options") from None


def serve_options(render: argparse.Namespace, cpu: bool = False) -> list[str]:
    """The `vst serve` options (device, model folders, memory) among a command's options."""
    options = ["--device", "cpu" if cpu else render.device, "--model-memory", str(render.model_memory)]
    for folder in render.models_dir:
        options += ["--models-dir", str(Path(folder).expanduser().absolute())]
    return options


def check_job(args: argparse.Namespace) -> tuple[argparse.Namespace, RenderSpec]:
    """Check a farm job's sequences, frames, chunking and render options; return the render options and the
    render specification."""
    from vst_plugin.cli import CommandError, render_settings

    render = render_namespace(args.input, args.output, args.frames, args.render_options)
    try:
        for pattern in (args.input, args.output):
            if not has_frame_token(pattern):
                raise CommandError(f"{pattern}: a farm job needs a frame token (#### or %04d) in IN and OUT")
        spec = RenderSpec(args.input, args.output, tuple(parse_frames(args.frames)), render_settings(render),
                          render.preroll)
        spec.chunks(args.chunk)  # checks the size
        if not getattr(args, "nuke", None):  # a Nuke job's first step renders its input
            spec.check()
    except (SequenceError, RenderError) as exc:
        raise CommandError(str(exc)) from None
    if render.temporal is not None and args.chunk < 5 * render.preroll:
        print(f"vst {args.command}: --chunk {args.chunk} is short for --preroll {render.preroll}: each chunk "
              "renders its pre-roll again; chunks of at least 5x the pre-roll are recommended", file=sys.stderr)
    return render, spec


def verify_or_fail(output: str, frames: list[int]) -> int:
    """Print the verification of a render; 0 when every frame is complete, 1 otherwise."""
    from vst_plugin.farm import verify

    found = verify.problems(lambda n: frame_path(output, n), frames)
    if removed := verify.remove_leftovers(lambda n: frame_path(output, n), frames):
        print(f"vst verify: removed {removed} temporary file(s) left by interrupted writers")
    print(f"vst verify: {verify.report(found, len(frames))}", file=sys.stderr if found else sys.stdout)
    return 1 if found else 0


def run_verify(args: argparse.Namespace) -> int:
    """`vst verify`: exit 1 listing every missing or incomplete frame."""
    from vst_plugin.cli import CommandError

    try:
        frames = parse_frames(args.frames)
        frame_path(args.output, frames[0])
    except SequenceError as exc:
        raise CommandError(str(exc)) from None
    return verify_or_fail(args.output, frames)


def run_server_start(args: argparse.Namespace) -> int:
    """`vst farm-server start`: a detached server for this session, recorded in the state file."""
    log = os.path.splitext(os.path.abspath(args.state))[0] + ".log"
    server = ServerProcess.start(serve_options(args, args.cpu), log, idle_exit=args.idle_exit, detach=True)
    server.save(args.state)
    print(f"vst server {server.pid} listening on {server.address} (log {server.log})", flush=True)
    if args.openjd_env:
        print(f"openjd_env: VST_SERVER={server.address}", flush=True)
    return 0


def run_server_stop(args: argparse.Namespace) -> int:
    """`vst farm-server stop`: stop the recorded server and wait until it has gone."""
    server = ServerProcess.load(args.state)
    server.stop()
    print(f"vst server {server.pid} on {server.address} stopped")
    return 0


def run_farm(args: argparse.Namespace) -> int:
    """`vst farm`: the chunks on a Dask cluster with a progress bar over frames, then the verification."""
    import distributed
    from tqdm import tqdm

    from vst_plugin.cli import CommandError
    from vst_plugin.farm import dask_farm

    render, spec = check_job(args)
    frames = list(spec.frames)
    if not args.verbose:  # Dask logs every connection at INFO; keep the progress bar readable
        os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning"  # LocalCluster's worker processes
        logging.getLogger("distributed").setLevel(logging.WARNING)
    job = dask_farm.FarmJob(args.input, args.output, tuple(args.render_options))
    plugin = dask_farm.ServerPlugin(serve_options(render), args.idle_exit)
    done: set[int] = set()
    lock = threading.Lock()
    with tqdm(total=len(frames), unit="frame", desc="vst farm") as progress:

        def on_frame(number: int) -> None:
            with lock:
                if number not in done:
                    done.add(number)
                    progress.update(1)

        if args.local:
            with distributed.LocalCluster(n_workers=args.local, threads_per_worker=1, resources={"GPU": 1},
                                          dashboard_address=None) as cluster, distributed.Client(cluster) as client:
                failed = dask_farm.run_chunks(client, job, spec.chunks(args.chunk), plugin, on_frame)
        else:
            try:
                client = distributed.Client(args.scheduler, timeout=30)
            except OSError as exc:  # TimeoutError included
                raise CommandError(f"cannot reach the Dask scheduler at {args.scheduler}: {exc}") from None
            with client:
                failed = dask_farm.run_chunks(client, job, spec.chunks(args.chunk), plugin, on_frame)
    for chunk, error in failed.items():
        print(f"vst farm: chunk {chunk} failed: {error}", file=sys.stderr)
    return max(verify_or_fail(args.output, frames), 1 if failed else 0)


def submit_job(args: argparse.Namespace) -> tuple[SubmitJob, farm_nuke.NukeJob | None]:
    """The job `vst submit` describes (checked sequences, a contiguous frame range, absolute paths) and,
    with --nuke, the Nuke script job around it."""
    from vst_plugin.cli import CommandError

    nuke_job = nuke_job_of(args)
    render, _ = check_job(args)
    try:
        first, last = chunks.contiguous_range(args.frames)
    except SequenceError as exc:
        raise CommandError(str(exc)) from None
    if args.chunk > MAX_CHUNK:
        raise CommandError(f"--chunk {args.chunk}: farm managers take at most {MAX_CHUNK} frames per task")
    job = SubmitJob(
        name=args.name or (f"vst {os.path.basename(args.nuke)} {args.node}" if nuke_job else
                           f"vst {os.path.basename(args.output)}"),
        input=os.path.abspath(args.input),
        output=os.path.abspath(args.output),
        first=first,
        last=last,
        chunk=args.chunk,
        render_options=tuple(args.render_options),
        serve_options=tuple(serve_options(render, args.cpu)),
        vst=args.vst,
        gpu=not args.cpu,
        idle_exit=args.idle_exit,
        extra_steps=farm_nuke.openjd_steps(nuke_job) if nuke_job else {},
    )
    return job, nuke_job


def nuke_job_of(args: argparse.Namespace) -> farm_nuke.NukeJob | None:
    """The Nuke script job of `vst submit --nuke SCRIPT --node NAME`, IN and OUT set to the node's cache."""
    from vst_plugin.cli import CommandError

    if args.nuke is None:
        if args.node or args.input is None or args.output is None:
            raise CommandError("give IN and OUT, or --nuke SCRIPT --node NAME")
        return None
    if not args.node or args.input is not None:
        raise CommandError("--nuke SCRIPT needs --node NAME and no IN and OUT: the node's cache folder is used")
    if not os.path.isfile(args.nuke):
        raise CommandError(f"--nuke {args.nuke}: no such script")
    job = farm_nuke.NukeJob.make(args.nuke, args.node, args.nuke_executable)
    args.input, args.output = job.input, job.output
    return job


def run_submit_openjd(args: argparse.Namespace) -> int:
    """`vst submit openjd`: write the job bundle."""
    job, nuke_job = submit_job(args)
    path = write_bundle(args.bundle, job)
    here = "--step NukeComp --run-dependencies" if nuke_job else "--step Render"
    print(f"wrote {path}\n  run it here:   openjd run {path} {here}\n"
          f"  submit it:     deadline bundle submit {os.path.dirname(path)}")
    return 0


def run_submit_deadline(args: argparse.Namespace) -> int:
    """`vst submit deadline`: write the job files; submit them when deadlinecommand is on the PATH."""
    import shlex

    from vst_plugin.cli import CommandError
    from vst_plugin.farm import deadline

    job, nuke_job = submit_job(args)
    jobs = deadline.render_jobs(job)
    if nuke_job:
        jobs = farm_nuke.deadline_jobs(nuke_job, job.frames, job.chunk, jobs)
    paths = deadline.write_jobs(args.folder, jobs, args.pool, args.group, args.priority)
    command = deadline.submit_command(paths)
    done = deadline.submit(paths)
    if done is None:
        print(f"wrote {len(paths) // 2} Deadline job(s) to {args.folder}; deadlinecommand is not on the PATH. "
              f"Submit them with:\n  {shlex.join(command)}")
        return 0
    print(done.stdout, end="")
    if done.returncode != 0:
        raise CommandError(f"deadlinecommand failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return 0


def run_farm_chunk(args: argparse.Namespace) -> int:
    """`vst farm-chunk`: this node's server (started when none runs), then `vst render --skip-existing`."""
    from vst_plugin.cli import run_render

    render = render_namespace(args.input, args.output, args.frames, args.render_options)
    server, started = node_server(serve_options(render), args.idle_exit)
    print(f"vst farm-chunk: {'started' if started else 'using'} vst server {server.pid} on {server.address}",
          file=sys.stderr, flush=True)
    render.server, render.skip_existing = server.address, True
    return run_render(render)
