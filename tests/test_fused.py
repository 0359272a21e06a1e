"""The pipeline stages fused by torch.compile (server/fused.py) against the same stages run op by op.

The rest of the suite keeps every stage eager (VST_COMPILE=0 in conftest.py); here the real stages are
compiled once at a small size, in a scratch inductor cache, and must give what the eager stages give on
plates with the hard cases: alpha 0, highlights, negative values, NaN and infinities. A node without a
C++ compiler must fall back to the eager stages with one log line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from server import fused
from server.colour import shape_back, shape_for_network
from server.pipeline import _assemble, _finish

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def compiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile enabled for new Fused stages, caching into a scratch folder (no earlier kernels)."""
    monkeypatch.setattr(fused, "ENABLED", True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _plate(dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Three 12x10 colour planes with every hard case, and an alpha with zeros."""
    generator = torch.Generator().manual_seed(3)
    planes = [torch.rand(12, 10, generator=generator) * 6 - 1 for _ in range(3)]
    planes[0][0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 65000.0])
    planes[1][1, :3] = torch.tensor([0.0, 1.0, 0.0031308])
    alpha = torch.rand(12, 10, generator=generator)
    alpha[2] = 0
    alpha[3, :2] = torch.tensor([-0.5, 1.0])
    return [plane.to(dtype) for plane in planes], alpha.to(dtype)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="no C++ compiler (g++/c++) on this machine: torch.compile cannot build CPU kernels, "
                    "and the server runs the stages op by op")
@pytest.mark.usefixtures("compiling")
def test_compiled_stages_equal_the_eager_stages() -> None:
    planes, alpha = _plate(torch.float16)  # the plate's planes; the stages between work in float32
    plate, work = _assemble(*planes, alpha)
    encoded, ceiling = shape_for_network(work, "compress", True)
    stages = [
        (_assemble, (*planes, alpha)),
        (shape_for_network, (work, "preserve", True)),
        (shape_for_network, (work, "compress", True)),
        (shape_back, (encoded.flip(3), work, ceiling, "preserve", True)),
        (shape_back, (encoded.flip(3), work, ceiling, "compress", True)),
        (_finish, (work.flip(2), plate, alpha, torch.float16, torch.float16, torch.float16)),
    ]
    for function, args in stages:
        stage = fused.Fused(function)
        first = stage(*args)  # eager while a background thread compiles
        assert stage.join(timeout=300), f"{function.__name__} did not compile"
        _assert_same(stage(*args), first, function.__name__)


def _assert_same(ours: object, eager: object, name: str) -> None:
    ours = ours if isinstance(ours, tuple) else (ours,)
    eager = eager if isinstance(eager, tuple) else (eager,)
    for mine, theirs in zip(ours, eager, strict=True):
        assert mine.dtype == theirs.dtype, name
        # the compiled pow/division may round the last bit differently; NaN and infinities must match
        torch.testing.assert_close(mine, theirs, rtol=2e-6, atol=1e-6, equal_nan=True, msg=name)


NO_COMPILER = """
import logging, sys
import torch
from server import fused
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
x = torch.arange(6, dtype=torch.float32)
for function in (lambda x: x * 2 + 1, lambda x: x * 0.5 - 1):
    stage = fused.Fused(function)
    assert torch.equal(stage(x), function(x))
    assert not stage.join(timeout=300) and stage.eager
    assert torch.equal(stage(x), function(x))
print("eager")
"""


def test_without_a_compiler_the_stages_run_eager_with_one_log_line(tmp_path: Path) -> None:
    # A render node whose $CXX names no compiler: inductor reads $CXX when torch is imported, so this
    # runs in a process of its own, with a scratch kernel cache (no kernels built earlier to reuse).
    environment = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "VST_COMPILE": "1",
                   "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    run = subprocess.run([sys.executable, "-c", NO_COMPILER], cwd=ROOT, env=environment, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "eager", run.stderr[-3000:]
    warnings = [line for line in run.stderr.splitlines() if line.startswith("WARNING vst.server")]
    assert len(warnings) == 1, run.stderr[-3000:]
    assert "torch.compile failed" in warnings[0] and "op by op" in warnings[0] and "C++ compiler" in warnings[0]
