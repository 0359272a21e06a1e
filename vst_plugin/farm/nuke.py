"""Nuke scripts on the farm: a three-step job around a vst Style Transfer node.

Nuke refuses to execute a node from inside another node's render callback, which the interactive
path (nuke/vst_nuke/farm.py) relies on. A farm job therefore runs three steps, each depending on the
one before:

1. `nuke -x -X NODE.vst_input SCRIPT A-B` renders the node's input into its cache folder;
2. vst chunks stylize `CACHE/NODE/input.####.exr` into `CACHE/NODE/vst.####.exr` (then Verify);
3. `nuke -x SCRIPT A-B` renders the comp, whose vst node reads the stylized frames.

Every step gets `VST_CACHE` (so Nuke and vst agree on the folder) and the Nuke steps `VST_FARM_STEP`,
which makes the node aim its internals at that folder and never stylize inside Nuke.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vst_plugin.farm.deadline import CommandLineJob

INPUT_WRITE = "vst_input"
"""The node's internal Write (nuke/vst_nuke/node.py WRITE)."""


@dataclass(frozen=True)
class NukeJob:
    """A Nuke script with a vst node to render on the farm."""

    script: str
    node: str
    nuke: str
    """The Nuke executable on the render nodes."""
    cache: str
    """The vst cache root (VST_CACHE) every step uses."""

    @classmethod
    def make(cls, script: str, node: str, nuke: str) -> NukeJob:
        """The job of `node` in `script`; the cache root is $VST_CACHE, else vst_cache beside the script
        (where the node itself puts it)."""
        script = os.path.abspath(script)
        cache = os.environ.get("VST_CACHE") or os.path.join(os.path.dirname(script), "vst_cache")
        return cls(script, node, nuke, os.path.abspath(cache))

    @property
    def folder(self) -> str:
        return os.path.join(self.cache, self.node.replace(".", "_"))

    @property
    def input(self) -> str:
        return os.path.join(self.folder, "input.####.exr")

    @property
    def output(self) -> str:
        return os.path.join(self.folder, "vst.####.exr")

    def input_arguments(self, frames: str) -> list[str]:
        return ["-x", "-X", f"{self.node}.{INPUT_WRITE}", self.script, frames]

    def comp_arguments(self, frames: str) -> list[str]:
        return ["-x", self.script, frames]

    def environment(self, step: str | None) -> dict[str, str]:
        return {"VST_CACHE": self.cache, **({"VST_FARM_STEP": step} if step else {})}


def openjd_steps(job: NukeJob) -> dict[str, Any]:
    """Steps `NukeInput` (before Render) and `NukeComp` (after Verify), their parameters and the job's
    environment, for vst_plugin.farm.openjd.template."""

    def step(name: str, arguments: list[str], step_env: str, after: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "parameterSpace": {"taskParameterDefinitions": [{
                "name": "Frame", "type": "CHUNK[INT]", "range": "{{Param.Frames}}",
                "chunks": {"defaultTaskCount": "{{Param.ChunkSize}}", "rangeConstraint": "CONTIGUOUS"},
            }]},
            "stepEnvironments": [{"name": "NukeStep", "variables": {"VST_FARM_STEP": step_env}}],
            "script": {"actions": {"onRun": {"command": "{{Param.Nuke}}", "args": arguments}}},
        }
        if after:
            body["dependencies"] = [{"dependsOn": after}]
        return body

    frames = "{{Task.Param.Frame}}"
    input_arguments = ["-x", "-X", "{{Param.NukeNode}}." + INPUT_WRITE, "{{Param.NukeScript}}", frames]
    return {
        "parameters": [
            {"name": "Nuke", "type": "STRING", "default": job.nuke, "description": "the Nuke command on render nodes"},
            {"name": "NukeScript", "type": "STRING", "default": job.script, "description": "the Nuke script"},
            {"name": "NukeNode", "type": "STRING", "default": job.node, "description": "the vst node's name"},
        ],
        "environments": [{"name": "VstCache", "variables": {"VST_CACHE": job.cache}}],
        "before": [step("NukeInput", input_arguments, "input", None)],
        "render_after": "NukeInput",
        "after": [step("NukeComp", ["-x", "{{Param.NukeScript}}", frames], "comp", "Verify")],
    }


def deadline_jobs(job: NukeJob, frames: str, chunk: int, vst_jobs: list[CommandLineJob]) -> list[CommandLineJob]:
    """Nuke input job, the vst jobs (render, verify), Nuke comp job; each with the steps' environment."""
    tokens = "<STARTFRAME>-<ENDFRAME>"
    name = vst_jobs[0].name
    nuke_input = CommandLineJob(f"{name} (nuke input)", frames, chunk, job.nuke, job.input_arguments(tokens),
                                job.environment("input"))
    comp = CommandLineJob(f"{name} (nuke comp)", frames, chunk, job.nuke, job.comp_arguments(tokens),
                          job.environment("comp"))
    middle = [CommandLineJob(j.name, j.frames, j.chunk, j.executable, j.arguments, job.environment(None))
              for j in vst_jobs]
    return [nuke_input, *middle, comp]
