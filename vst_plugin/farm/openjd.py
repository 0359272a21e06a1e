"""`vst submit openjd`: an Open Job Description job bundle (AWS Deadline Cloud's job format).

The bundle holds `template.yaml` (specification `jobtemplate-2023-09`, extension `TASK_CHUNKING`) and
`parameter_values.yaml`. The template's parameter defaults are the submitted values (absolute paths on
the studio's shared storage), so

    openjd run BUNDLE/template.yaml --step Render     # renders the whole job on this machine
    deadline bundle submit BUNDLE                      # sends it to Deadline Cloud unchanged

Step `Render` runs chunks of `ChunkSize` frames (a `CHUNK[INT]` task parameter, contiguous chunks
such as `1001-1010`), each `vst render --skip-existing` with the job's render options and pre-roll.
Its step environment starts one vst server per session (onEnter publishes `VST_SERVER`, which
`vst render` uses) and stops it (onExit, which runs even when a chunk fails); the server also stops
itself after `IdleExit` seconds without requests. Step `Verify` then checks every frame. A Nuke
script job adds `NukeInput` before and `NukeComp` after (`vst_plugin.farm.nuke`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from vst_plugin.farm.servers import DEFAULT_IDLE_EXIT

STATE = "{{Session.WorkingDirectory}}/vst-server.json"
MAX_CHUNK = 150
"""Largest chunk Deadline Cloud accepts (`defaultTaskCount`)."""


@dataclass(frozen=True)
class SubmitJob:
    """A farm render as `vst submit` describes it to a farm manager."""

    name: str
    input: str
    output: str
    first: int
    last: int
    chunk: int
    render_options: tuple[str, ...]
    serve_options: tuple[str, ...]
    vst: str
    """The vst executable on the render nodes."""
    gpu: bool = True
    idle_exit: float = DEFAULT_IDLE_EXIT
    extra_steps: dict[str, Any] = field(default_factory=dict)
    """A Nuke script job's additions: steps before and after Render, parameters, job environments
    (vst_plugin.farm.nuke.openjd_steps)."""

    @property
    def frames(self) -> str:
        return f"{self.first}-{self.last}"


def parameters(job: SubmitJob) -> list[dict[str, Any]]:
    """The job parameters with the submitted values as defaults.

    The sequences are STRING parameters: the specification allows a PATH parameter only a default
    inside the bundle's folder, and plates live on the studio's shared storage.
    """
    return [
        {"name": "Vst", "type": "STRING", "default": job.vst, "description": "the vst command on render nodes"},
        {"name": "Input", "type": "STRING", "default": job.input, "description": "input sequence (####)"},
        {"name": "Output", "type": "STRING", "default": job.output, "description": "output sequence (####)"},
        {"name": "Frames", "type": "STRING", "default": job.frames, "description": "frames, e.g. 1001-1100"},
        {"name": "ChunkSize", "type": "INT", "default": job.chunk, "minValue": 1, "maxValue": MAX_CHUNK,
         "description": "frames per task"},
        {"name": "IdleExit", "type": "INT", "default": round(job.idle_exit), "minValue": 1,
         "description": "seconds without requests after which a node's vst server stops itself"},
    ]


def render_step(job: SubmitJob) -> dict[str, Any]:
    """Step `Render`: the chunks, with one vst server per session."""
    vst = "{{Param.Vst}}"
    start = [
        "farm-server", "start", STATE, "--openjd-env", "--idle-exit", "{{Param.IdleExit}}", *job.serve_options,
    ]
    step: dict[str, Any] = {
        "name": "Render",
        "parameterSpace": {
            "taskParameterDefinitions": [{
                "name": "Frame",
                "type": "CHUNK[INT]",
                "range": "{{Param.Frames}}",
                "chunks": {"defaultTaskCount": "{{Param.ChunkSize}}", "rangeConstraint": "CONTIGUOUS"},
            }],
        },
        "stepEnvironments": [{
            "name": "VstServer",
            "description": "one vst server for the session, stopped when it ends",
            "script": {"actions": {
                "onEnter": {"command": vst, "args": start},
                "onExit": {"command": vst, "args": ["farm-server", "stop", STATE]},
            }},
        }],
        "script": {"actions": {"onRun": {"command": vst, "args": [
            "render", "{{Param.Input}}", "{{Param.Output}}", "--frames", "{{Task.Param.Frame}}", "--skip-existing",
            *job.render_options,
        ]}}},
    }
    if job.gpu:
        step["hostRequirements"] = {"amounts": [{"name": "amount.worker.gpu", "min": 1}]}
    if "render_after" in job.extra_steps:
        step["dependencies"] = [{"dependsOn": job.extra_steps["render_after"]}]
    return step


def verify_step() -> dict[str, Any]:
    """Step `Verify`: every frame exists and reads as a complete image."""
    return {
        "name": "Verify",
        "dependencies": [{"dependsOn": "Render"}],
        "script": {"actions": {"onRun": {
            "command": "{{Param.Vst}}", "args": ["verify", "{{Param.Output}}", "--frames", "{{Param.Frames}}"],
        }}},
    }


def template(job: SubmitJob) -> dict[str, Any]:
    """The job template."""
    steps = [*job.extra_steps.get("before", []), render_step(job), verify_step(), *job.extra_steps.get("after", [])]
    body = {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": job.name,
        "parameterDefinitions": parameters(job) + job.extra_steps.get("parameters", []),
    }
    if "environments" in job.extra_steps:
        body["jobEnvironments"] = job.extra_steps["environments"]
    return {**body, "steps": steps}


def write_bundle(folder: str, job: SubmitJob) -> str:
    """Write `template.yaml` and `parameter_values.yaml` into `folder`; return the template's path."""
    os.makedirs(folder, exist_ok=True)
    body = template(job)
    values = {"parameterValues": [{"name": p["name"], "value": p["default"]} for p in body["parameterDefinitions"]]}
    path = os.path.join(folder, "template.yaml")
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(to_yaml(body))
    with open(os.path.join(folder, "parameter_values.yaml"), "w", encoding="utf-8") as stream:
        stream.write(to_yaml(values))
    return path


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of plain data; every string double-quoted (JSON escapes are valid YAML)."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}\n")
        return "".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            text = to_yaml(item, indent + 2) if isinstance(item, (dict, list)) and item else f"{_scalar(item)}\n"
            lines.append(f"{pad}- {text.lstrip(' ')}")
        return "".join(lines)
    return f"{pad}{_scalar(value)}\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value))
