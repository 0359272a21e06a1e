"""The CPU path through onnxruntime: a family's feed-forward plan exported to ONNX, run by onnxruntime.

On the CPU onnxruntime runs these convolutional networks about twice as fast as torch (bench/model.py,
bench/results/pipeline-cpu-2026-11-28.md). A model whose family chose it (`ModelDescriptor.cpu_runtime`)
runs its network here: the plan with the request's parameters baked in (server/export.py's
`PlanNetwork`, whose instance norm keeps float64-level accuracy in onnxruntime), exported once per
parameter set and kept in a small LRU of sessions. Tiled and stateful runs stay in torch.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

SESSIONS = 4
"""Parameter sets (styles) kept as ready sessions per model."""


class OnnxPlans:
    """onnxruntime sessions of one model's network, one per parameter set, least recently used dropped."""

    def __init__(self, network: Callable[[dict[str, Any]], torch.nn.Module], capacity: int = SESSIONS):
        self._network = network
        self._capacity = capacity
        self._sessions: OrderedDict[str, ort.InferenceSession] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, x: torch.Tensor, values: dict[str, Any]) -> torch.Tensor:
        """The network on a padded float32 CPU batch [N, 3, H, W] with these validated parameter values."""
        session = self._session(values)
        array = np.ascontiguousarray(x.detach().to(torch.float32).numpy())
        return torch.from_numpy(session.run(None, {"srgb": array})[0])

    def _session(self, values: dict[str, Any]) -> ort.InferenceSession:
        key = repr(sorted((name, value) for name, value in values.items() if name != "strength"))
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
        session = _session(self._network(values))
        with self._lock:
            self._sessions[key] = session
            while len(self._sessions) > self._capacity:
                self._sessions.popitem(last=False)
        return session


def _session(network: torch.nn.Module) -> ort.InferenceSession:
    """Export a network (dynamic batch, height and width) to ONNX in memory and open it in onnxruntime."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():  # the tracer's notes on shape arithmetic
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network.float().cpu().eval(),
            (torch.rand(1, 3, 64, 64),),
            buffer,
            input_names=["srgb"],
            output_names=["stylized"],
            dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in ("srgb", "stylized")},
            opset_version=17,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
