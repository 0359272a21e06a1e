"""`vst farm`: a render's chunks on dask.distributed workers, one GPU slot per worker.

Workers offer one GPU slot each (`dask worker --resources GPU=1`, one worker per GPU with
`CUDA_VISIBLE_DEVICES`); every chunk asks for it, so a worker renders one chunk at a time. A worker
plugin starts one `vst serve` per worker process (watching that process, so a killed worker takes its
server with it) and stops it at teardown. A chunk whose worker dies is re-run by the scheduler on
another worker; it skips the frames already written (atomic writes: a frame is complete or absent)
and pre-rolls before the first one it renders. Workers report each written frame as an event, which
drives the progress bar here.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import distributed
from distributed.diagnostics.plugin import WorkerPlugin

from vst_plugin.client import VstError
from vst_plugin.farm.chunks import range_text
from vst_plugin.farm.servers import DEFAULT_IDLE_EXIT, ServerProcess, session_log
from vst_plugin.render import RenderSpec

PLUGIN = "vst-server"
TOPIC = "vst-frames"
RETRIES = 2
"""Re-runs of a chunk that raised (lost workers are re-run by the scheduler, see `allowed-failures`)."""


class ClusterError(VstError):
    """The Dask cluster cannot run the job as it is set up."""


class ServerPlugin(WorkerPlugin):
    """Starts one vst server per worker process in the background; `server()` waits for it."""

    name = PLUGIN

    def __init__(self, serve_options: list[str], idle_exit: float = DEFAULT_IDLE_EXIT):
        self.serve_options = serve_options
        self.idle_exit = idle_exit

    def setup(self, worker: distributed.Worker) -> None:
        self._server: ServerProcess | BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="vst-server-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self._server = ServerProcess.start(
                self.serve_options, session_log("dask"), idle_exit=self.idle_exit, parent_pid=os.getpid()
            )
        except BaseException as exc:  # reported to every task of this worker
            self._server = exc

    def server(self) -> ServerProcess:
        """This worker's server, once it answers; raises FarmServerError if it could not start."""
        self._thread.join()
        if isinstance(self._server, BaseException):
            raise self._server
        return self._server

    def teardown(self, worker: distributed.Worker) -> None:
        self._thread.join()
        if isinstance(self._server, ServerProcess):
            self._server.stop()


@dataclass(frozen=True)
class FarmJob:
    """What every chunk of a `vst farm` render needs: the sequences and the `vst render` options."""

    input: str
    output: str
    render_options: tuple[str, ...]


def render_chunk(job: FarmJob, frames: str) -> list[int]:
    """Task: render one chunk through this worker's server, skipping frames already written."""
    from vst_plugin.cli import run_render
    from vst_plugin.farm.commands import render_namespace  # on the worker

    worker = distributed.get_worker()
    server = worker.plugins[PLUGIN].server()
    args = render_namespace(job.input, job.output, frames, list(job.render_options))
    args.server, args.skip_existing = server.address, True
    written: list[int] = []

    def done(number: int) -> None:
        written.append(number)
        worker.log_event(TOPIC, {"frame": number, "pid": os.getpid()})

    run_render(args, on_frame=done)
    return written


def run_chunks(
    client: distributed.Client,
    job: FarmJob,
    chunks: list[RenderSpec],
    plugin: ServerPlugin,
    on_frame: Callable[[int], None],
) -> dict[str, BaseException]:
    """Render `chunks` on the cluster; return the frames of the chunks that failed, with their errors.

    `on_frame(number)` is called (from Dask's event thread) as workers write frames, and again for
    every frame of a finished chunk: count distinct frames.
    """
    workers = client.scheduler_info()["workers"].values()
    if workers and not any(w.get("resources", {}).get("GPU") for w in workers):
        raise ClusterError(
            "no Dask worker offers a GPU slot, so no chunk could start: start workers with "
            "`dask worker ADDR --resources GPU=1 --nthreads 1` (one per GPU, CUDA_VISIBLE_DEVICES=N)"
        )
    client.register_plugin(plugin, name=PLUGIN)  # replaces (stops) the server of an earlier job
    client.subscribe_topic(TOPIC, lambda event: on_frame(event[1]["frame"]))
    token = uuid.uuid4().hex[:8]
    failed: dict[str, BaseException] = {}
    try:
        futures = {
            client.submit(render_chunk, job, frames, resources={"GPU": 1}, retries=RETRIES, pure=False,
                          key=f"vst-chunk-{frames}-{token}"): frames
            for frames in (range_text(chunk.frames) for chunk in chunks)
        }
        for future in distributed.as_completed(futures):
            if future.status == "error":
                failed[futures[future]] = future.exception()
            else:
                for number in future.result():
                    on_frame(number)
    finally:
        client.unsubscribe_topic(TOPIC)
        client.unregister_worker_plugin(PLUGIN)  # teardown: each worker stops its server
    return failed
