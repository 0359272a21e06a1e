"""`vst submit deadline`: Thinkbox Deadline 10 CommandLine jobs.

Each job is a `job.info` / `plugin.info` pair for Deadline's CommandLine plugin, which runs
`Executable` with `Arguments` once per task after replacing `<STARTFRAME>` and `<ENDFRAME>` with the
task's chunk. The render job's tasks run `vst farm-chunk`: it finds this node's vst server (one per
node, user and CUDA_VISIBLE_DEVICES, recorded in a state file) or starts it, then renders the chunk
with `--skip-existing`. Deadline has no session hooks for CommandLine jobs, so the server stops itself
after `--idle-exit` seconds without requests (default 300) once the node runs out of chunks.

Jobs after the first depend on the one before (`deadlinecommand -SubmitMultipleJobs -Dependent`): the render job,
then a one-task job that runs `vst verify`; a Nuke script job adds a Nuke input job before and a
Nuke comp job after (vst_plugin.farm.nuke).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from vst_plugin.farm.openjd import SubmitJob

DEADLINE_IDLE_EXIT = 300.0
"""Seconds a node's server waits for the next chunk before stopping (nothing else stops it on Deadline)."""


@dataclass(frozen=True)
class CommandLineJob:
    """One Deadline job for the CommandLine plugin."""

    name: str
    frames: str
    chunk: int
    executable: str
    arguments: list[str]
    environment: dict[str, str]


def quote(argument: str) -> str:
    """One argument in Deadline's Arguments line: double-quoted when it holds spaces or quotes."""
    if argument and not any(c in argument for c in ' \t"\''):
        return argument
    return '"' + argument.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_jobs(job: SubmitJob) -> list[CommandLineJob]:
    """The render job (chunks of `vst farm-chunk`) and its verification job."""
    render = CommandLineJob(
        name=job.name,
        frames=job.frames,
        chunk=job.chunk,
        executable=job.vst,
        arguments=["farm-chunk", job.input, job.output, "--frames", "<STARTFRAME>-<ENDFRAME>",
                   "--idle-exit", f"{job.idle_exit:g}", *job.serve_options, *job.render_options],
        environment={},
    )
    verify = CommandLineJob(
        name=f"{job.name} (verify)", frames=str(job.first), chunk=1, executable=job.vst,
        arguments=["verify", job.output, "--frames", job.frames], environment={},
    )
    return [render, verify]


def write_jobs(folder: str, jobs: list[CommandLineJob], pool: str | None, group: str | None,
               priority: int) -> list[str]:
    """Write `N.job.info` and `N.plugin.info` per job into `folder`; return their paths in submission order."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index, job in enumerate(jobs, start=1):
        info = {"Plugin": "CommandLine", "Name": job.name, "Frames": job.frames, "ChunkSize": str(job.chunk),
                "Priority": str(priority)}
        if pool:
            info["Pool"] = pool
        if group:
            info["Group"] = group
        for number, (key, value) in enumerate(job.environment.items()):
            info[f"EnvironmentKeyValue{number}"] = f"{key}={value}"
        plugin = {"Executable": job.executable, "Arguments": " ".join(quote(a) for a in job.arguments)}
        for suffix, content in (("job.info", info), ("plugin.info", plugin)):
            path = os.path.join(folder, f"{index}.{suffix}")
            with open(path, "w", encoding="utf-8") as stream:
                stream.writelines(f"{key}={value}\n" for key, value in content.items())
            paths.append(path)
    return paths


def submit_command(paths: list[str]) -> list[str]:
    """The `deadlinecommand` line that submits the jobs, each depending on the one before."""
    command = ["deadlinecommand", "-SubmitMultipleJobs", "-Dependent"]
    if len(paths) % 2:  # zip(strict=True) is Python 3.10; the host side keeps to 3.9 (Nuke 14)
        raise ValueError(f"job.info and plugin.info files come in pairs, not {len(paths)} files")
    for job_info, plugin_info in zip(paths[::2], paths[1::2]):
        command += ["-job", job_info, plugin_info]
    return command


def submit(paths: list[str]) -> subprocess.CompletedProcess | None:
    """Submit with `deadlinecommand` when it is on the PATH; None when it is not."""
    if shutil.which("deadlinecommand") is None:
        return None
    return subprocess.run(submit_command(paths), capture_output=True, text=True)
