"""The compute worker: one thread that owns the model device and runs queued frames in order."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import zmq

from server.admission import ByteBudget, ClientClock
from server.colour import ColourSpaces
from server.errors import error_reply
from server.models import ModelRegistry
from server.pipeline import TemporalBlend, stylize_frame
from server.sessions import Session
from server.style_images import StyleImageAccess
from server.temporal import Analysis
from vst_plugin import protocol
from vst_plugin.exr import encode_exr
from vst_plugin.frame import Frame, Part
from vst_plugin.schema import ProtocolError, StylizeRequest

log = logging.getLogger("vst.server")


@dataclass
class Task:
    """A queued frame: who asked, the header, the request's fields, and a parsed frame or EXR bytes."""

    identity: bytes
    header: dict[str, Any]
    request: StylizeRequest
    frame: Frame | None = None
    exr: memoryview | None = None
    session: Session | None = None
    """The sequence's session this frame was admitted to; None for a frame outside any sequence."""
    analysis: Future[Analysis] | None = None
    """The frame and its motion, analysed ahead of the worker (temporal mode only)."""
    decoded: Future[Frame] | None = None
    """The EXR bytes decoded ahead of the worker, on the request loop's pool (EXR requests)."""
    queued_at: float = 0.0
    nbytes: int = 0
    """Bytes of the request's payload, reserved in the queue budget until the task is done."""


class Replier(threading.Thread):
    """Builds and sends replies off the compute thread, in order: EXR encoding, packing, the socket."""

    def __init__(self, context: zmq.Context, results_address: str):
        super().__init__(name="vst-replier", daemon=True)
        self.outbox: queue.Queue[tuple[Task, dict[str, Any], Callable[[], list[Any]]] | None] = queue.Queue()
        self._context = context
        self._results_address = results_address
        self.errors = 0

    def run(self) -> None:
        results = self._context.socket(zmq.PUSH)
        results.setsockopt(zmq.LINGER, -1)
        results.connect(self._results_address)
        try:
            while (item := self.outbox.get()) is not None:
                task, header, payload = item
                try:
                    parts = payload()
                except Exception as exc:  # an encoding failure is a reply too
                    header, parts = error_reply(task.header, exc), []
                    self.errors += 1
                    log.warning("request %s: reply failed: %s", header["id"], header["error"]["message"])
                results.send_multipart([task.identity, protocol.pack(header), *parts], copy=False)
        finally:
            results.close()


class Worker(threading.Thread):
    """Runs stylize tasks one at a time; its Replier sends the replies over an inproc socket."""

    def __init__(
        self,
        context: zmq.Context,
        results_address: str,
        registry: ModelRegistry,
        colours: ColourSpaces,
        style_images: StyleImageAccess,
        budget: ByteBudget,
        clients: ClientClock,
    ):
        super().__init__(name="vst-worker", daemon=True)
        self.tasks: queue.Queue[Task | None] = queue.Queue()
        self._replier = Replier(context, results_address)
        self._registry = registry
        self._colours = colours
        self._style_images = style_images
        self._budget = budget
        self._clients = clients
        self.frames_done = 0
        self.errors = 0
        self.abandoned = 0

    def stop(self) -> None:
        """Finish the tasks already queued, then end the thread."""
        self.tasks.put(None)

    @property
    def failures(self) -> int:
        """Frames refused, and replies that could not be built."""
        return self.errors + self._replier.errors

    def run(self) -> None:
        self._replier.start()
        try:
            while (task := self.tasks.get()) is not None:
                try:
                    self._check_client(task)
                    header, payload = self._stylize(task)
                except Exception as exc:  # every failure reaches the host as a reply, never kills the server
                    header, payload = error_reply(task.header, exc), lambda: []
                    self.errors += 1
                    log.warning("request %s refused: %s", header["id"], header["error"]["message"])
                    if task.session is not None:
                        task.session.fail()
                finally:
                    self._budget.release(task.nbytes)
                self._replier.outbox.put((task, header, payload))
        finally:
            self._replier.outbox.put(None)
            self._replier.join()

    def _check_client(self, task: Task) -> None:
        """Raise ProtocolError('abandoned') when the client of a queued frame has gone silent."""
        if self._clients.gone(task.identity):
            self.abandoned += 1
            if task.analysis is not None:
                task.analysis.cancel()
            raise ProtocolError(
                "abandoned",
                f"the client sent nothing for {self._clients.timeout:g} s (no request, no ping), so the server "
                "dropped its queued frame; send it again",
            )

    def _stylize(self, task: Task) -> tuple[dict[str, Any], Callable[[], list[Any]]]:
        """Stylize a task's frame; returns the reply header and what builds its payload (on the Replier)."""
        started = time.perf_counter()
        settings = task.request.settings
        self._colours.check(settings.colorspace)
        model = self._registry.get(settings.model)
        params = self._style_images.resolve(model, model.validate(dict(settings.params)))
        temporal = None
        if task.analysis is not None:
            frame, motions = task.analysis.result()
            temporal = TemporalBlend(settings.temporal.strength, motions)
        elif task.decoded is not None:
            frame = task.decoded.result()
        else:
            frame = task.frame
        memory = None if task.session is None else task.session.model_memory(model.name)
        changed = stylize_frame(frame, model, params, settings, self._colours, memory, temporal)
        self.frames_done += 1
        timing = {
            "queue_ms": round((started - task.queued_at) * 1000, 2),
            "compute_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        if task.exr is not None:
            return protocol.reply(task.header, exr=True, timing=timing), lambda: [encode_exr(_merged(frame, changed))]
        return (
            protocol.reply(task.header, frame=protocol.changed_header(changed), timing=timing),
            lambda: protocol.changed_planes(changed),
        )


def _merged(frame: Frame, changed: dict[tuple[int, str], Any]) -> Frame:
    """The frame with the changed planes in place of the originals."""
    parts = []
    for index, part in enumerate(frame.parts):
        channels = {name: changed.get((index, name), plane) for name, plane in part.channels.items()}
        parts.append(Part(channels, part.data_window, part.display_window, part.name, part.view, part.attributes))
    return Frame(parts)
