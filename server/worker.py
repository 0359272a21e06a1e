"""The compute worker: one thread that owns the model device and runs queued jobs in order."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
import zmq

from server.colour import ColourSpaces
from server.models import ModelRegistry, ParamError, UnknownModelError, UnsafeCheckpointError
from server.models.base import ModelError
from server.pipeline import PipelineError, StylizeOptions, TemporalBlend, check_options, stylize_frame
from server.sequences import SequenceStates
from server.temporal import Analysis, TemporalOptions
from vst_plugin import protocol
from vst_plugin.exr import ExrError, decode_exr, encode_exr
from vst_plugin.frame import Frame, FrameLimits, Part

log = logging.getLogger("vst.server")


@dataclass
class Job:
    """A queued request: who asked, the header, and either a parsed frame or EXR bytes."""

    identity: bytes
    header: dict[str, Any]
    options: StylizeOptions | None = None
    frame: Frame | None = None
    exr: memoryview | None = None
    queued_at: float = 0.0
    temporal: TemporalOptions | None = None
    analysis: Future[Analysis] | None = None
    """The frame and its motion, analysed ahead of the worker (temporal mode only)."""


class Worker(threading.Thread):
    """Runs stylize and reset jobs one at a time and sends replies over an inproc socket."""

    def __init__(
        self,
        context: zmq.Context,
        results_address: str,
        registry: ModelRegistry,
        colours: ColourSpaces,
        limits: FrameLimits,
        sequences: SequenceStates,
    ):
        super().__init__(name="vst-worker", daemon=True)
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self._context = context
        self._results_address = results_address
        self._registry = registry
        self._colours = colours
        self._limits = limits
        self._sequences = sequences
        self.frames_done = 0
        self.errors = 0

    def stop(self) -> None:
        """Finish the jobs already queued, then end the thread."""
        self.jobs.put(None)

    def run(self) -> None:
        results = self._context.socket(zmq.PUSH)
        results.setsockopt(zmq.LINGER, -1)
        results.connect(self._results_address)
        try:
            while (job := self.jobs.get()) is not None:
                header, payload = self._execute(job)
                if not header["ok"]:
                    self.errors += 1
                    log.warning("request %s refused: %s", header["id"], header["error"]["message"])
                    if job.header["op"] == "stylize" and isinstance(job.header.get("sequence"), str):
                        # the memory now describes a frame before the failed one: the next starts anew
                        self._sequences.reset(job.identity, job.header["sequence"])
                results.send_multipart([job.identity, protocol.pack(header), *payload], copy=False)
        finally:
            results.close()

    def _execute(self, job: Job) -> tuple[dict[str, Any], list[Any]]:
        try:
            if job.header["op"] == "reset":
                return protocol.reply(job.header, reset=self._sequences.reset(job.identity, job.header["sequence"])), []
            return self._stylize(job)
        except protocol.ProtocolError as exc:
            return protocol.error_reply(job.header, exc.code, exc.message), []
        except ExrError as exc:
            return protocol.error_reply(job.header, "bad_exr", str(exc)), []
        except (PipelineError, ParamError) as exc:
            return protocol.error_reply(job.header, "bad_param", str(exc)), []
        except UnknownModelError as exc:
            return protocol.error_reply(job.header, "unknown_model", str(exc)), []
        except UnsafeCheckpointError as exc:
            return protocol.error_reply(job.header, "unsafe_model", str(exc)), []
        except ModelError as exc:
            return protocol.error_reply(job.header, "model_error", str(exc)), []
        except torch.OutOfMemoryError:
            return protocol.error_reply(
                job.header,
                "model_error",
                "the device ran out of memory for this frame, even in tiles down to 32 px; free GPU memory "
                "(unload models) or use a smaller frame",
            ), []
        except Exception as exc:  # a bug must reach the host as a reply, never kill the server
            log.exception("request %s failed", job.header.get("id"))
            return protocol.error_reply(job.header, "internal", f"{type(exc).__name__}: {exc}"), []

    def _stylize(self, job: Job) -> tuple[dict[str, Any], list[Any]]:
        started = time.perf_counter()
        options = job.options
        check_options(options, self._colours)
        model = self._registry.get(options.model)
        params = model.validate(options.params)
        temporal = None
        if job.analysis is not None:
            frame, motions = job.analysis.result()
            temporal = TemporalBlend(job.temporal.strength, motions)
        else:
            frame = job.frame if job.exr is None else decode_exr(bytes(job.exr), self._limits)
        sequence = job.header.get("sequence")
        state = None
        if isinstance(sequence, str):
            self._sequences.touch(job.identity, sequence, job.header.get("frame_number"))
            state = self._sequences.model_state(job.identity, sequence, model.name)
        changed = stylize_frame(frame, model, params, options, self._colours, state, temporal)
        self.frames_done += 1
        timing = {
            "queue_ms": round((started - job.queued_at) * 1000, 2),
            "compute_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        if job.exr is not None:
            return protocol.reply(job.header, exr=True, timing=timing), [encode_exr(_merged(frame, changed))]
        return (
            protocol.reply(job.header, frame=protocol.changed_header(changed), timing=timing),
            protocol.changed_planes(changed),
        )


def _merged(frame: Frame, changed: dict[tuple[int, str], Any]) -> Frame:
    """The frame with the changed planes in place of the originals."""
    parts = []
    for index, part in enumerate(frame.parts):
        channels = {name: changed.get((index, name), plane) for name, plane in part.channels.items()}
        parts.append(Part(channels, part.data_window, part.display_window, part.name, part.view, part.attributes))
    return Frame(parts)
