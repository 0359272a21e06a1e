"""The pipeline stages fused by torch.compile (server/fused.py) against the same stages run op by op.

The rest of the suite keeps every stage eager (VST_COMPILE=0 in conftest.py); here the real stages are
compiled by a server's warm-up, in a scratch inductor cache, and a plate with the hard cases (alpha 0,
highlights, negative values, NaN and infinities) must come back exactly as the eager stages give it. A
node without a C++ compiler must fall back to the eager stages with one log line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import plate, through_network

from server import fused, pipeline
from server.colour import ColourSpaces, shape_back, shape_for_network
from server.pipeline import _assemble, _finish, stylize_planes
from vst_plugin.schema import StylizeSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def compiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile enabled for new Fused stages, caching into a scratch folder (no earlier kernels)."""
    monkeypatch.setattr(fused, "ENABLED", True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="no C++ compiler (g++/c++) on this machine: torch.compile cannot build CPU kernels, "
                    "and the server runs the stages op by op")
@pytest.mark.usefixtures("compiling")
def test_compiled_stages_equal_the_eager_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    stages = {"ASSEMBLE": _assemble, "SHAPE": shape_for_network, "SHAPE_BACK": shape_back, "FINISH": _finish}
    for name, function in stages.items():
        monkeypatch.setattr(pipeline, name, fused.Fused(function))
    fresh = [getattr(pipeline, name) for name in stages]
    pipeline.warm_up(torch.device("cpu"))  # what a server does when it starts
    assert all(stage.join(timeout=300) for stage in fresh), "the warm-up did not compile every stage"
    signatures = [len(stage._pending) for stage in fresh]

    rgb, alpha = plate(np.float16, seed=4)  # highlights, alpha 0 holes, negative values
    rgb[0][1, 1], rgb[1][2, 2], rgb[2][3, 3], rgb[0][4, 4] = np.nan, np.inf, -np.inf, -0.5
    settings = StylizeSettings("x", colorspace="ACEScg")
    for planes, matte in ((rgb, alpha), (rgb, None)):  # RGBA half, RGB half
        args = (planes, matte, through_network("cpu"), {}, settings, ColourSpaces())
        compiled = stylize_planes(*args)
        for stage in fresh:
            stage.eager = True
        eager = stylize_planes(*args)
        for stage in fresh:
            stage.eager = False
        for ours, theirs, before in zip(compiled, eager, planes, strict=True):
            assert ours.dtype == before.dtype
            np.testing.assert_array_equal(ours, theirs)
    assert [len(stage._pending) for stage in fresh] == signatures, "the plates needed code the warm-up did not compile"


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
