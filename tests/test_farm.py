"""Farm jobs for real: `vst farm` on a Dask scheduler and workers, `vst submit openjd` run by `openjd run`.

Everything runs as real processes on 127.0.0.1 (CPU): dask scheduler and workers, vst servers, the
Open Job Description CLI. Frames are small synthetic plates so a job takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from vst_plugin.exr import read_exr, write_exr
from vst_plugin.farm import chunks
from vst_plugin.frame import Frame, Part
from vst_plugin.sequence import SequenceError

BIN = Path(sys.executable).parent
VST = str(BIN / "vst")


def vst(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([VST, *args], capture_output=True, text=True, timeout=timeout)


def make_plates(folder: Path, frames: range, size: tuple[int, int] = (48, 32)) -> str:
    """A gradient with a bright disc moving 2 px per frame, RGBA half float, as `folder/plate.####.exr`."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for number in frames:
        disc = ((x - 10 - 2 * number) ** 2 + (y - height / 2) ** 2 < (height / 4) ** 2) * 2.0
        channels = {"R": x / width + disc, "G": y / height, "B": 0.5 - x / (2 * width) + disc,
                    "A": np.ones_like(x)}
        window = (0, 0, width - 1, height - 1)
        part = Part({k: v.astype(np.float16) for k, v in channels.items()}, window, window)
        write_exr(Frame([part]), folder / f"plate.{number:04d}.exr")
    return str(folder / "plate.####.exr")


def assert_same_frames(result: str, reference: str, frames: range) -> None:
    for number in frames:
        got = read_exr(result.replace("####", f"{number:04d}")).parts[0].channels
        want = read_exr(reference.replace("####", f"{number:04d}")).parts[0].channels
        assert list(got) == list(want)
        for name in want:
            assert np.array_equal(got[name], want[name]), (number, name)


def gone(pid: int, within: float = 30.0) -> bool:
    """True once process `pid` has ended (zombies count as ended)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


# ---- chunks and verification ---------------------------------------------------------------


def test_jobs_chunk_through_the_render_spec_and_farm_managers_get_one_range(tmp_path: Path) -> None:
    from vst_plugin.render import RenderSpec
    from vst_plugin.schema import StylizeSettings

    spec = RenderSpec("in.####.exr", "out.####.exr", tuple(range(1001, 1011)), StylizeSettings(), preroll=2)
    assert [chunks.range_text(c.frames) for c in spec.chunks(4)] == ["1001-1004", "1005-1008", "1009-1010"]
    assert chunks.range_text((1, 3)) == "1,3"
    assert chunks.contiguous_range("1001-1100") == (1001, 1100)
    with pytest.raises(SequenceError, match="one run of consecutive frames"):
        chunks.contiguous_range("1-10x2")
    plates = make_plates(tmp_path / "plates", range(1, 4))
    done = vst("submit", "openjd", str(tmp_path / "b"), plates, str(tmp_path / "o.####.exr"), "--frames", "1-2",
               "--chunk", "0")
    assert done.returncode == 1 and "a chunk must hold at least 1 frame" in done.stderr
    done = vst("submit", "openjd", str(tmp_path / "b"), plates, str(tmp_path / "o.####.exr"), "--frames", "1-3x2",
               "--chunk", "1")
    assert done.returncode == 1 and "one run of consecutive frames" in done.stderr
    done = vst("submit", "openjd", str(tmp_path / "b"), plates, str(tmp_path / "o.####.exr"), "--frames", "1-2",
               "--chunk", "1", "--bogus")
    assert done.returncode == 1 and "not valid `vst render` options" in done.stderr


def test_verify_lists_missing_and_truncated_frames(tmp_path: Path) -> None:
    pattern = make_plates(tmp_path, range(1, 5))
    assert vst("verify", pattern, "--frames", "1-4").returncode == 0
    (tmp_path / "plate.0002.exr").unlink()
    (tmp_path / ".plate.0004.exr.tmp-123-abcd.exr").write_bytes(b"half a frame")  # a writer killed mid-frame
    (tmp_path / "..plate.0001.exr.vstkey.tmp-123-abcd.vstkey").write_text("half a key")  # ... mid cache key
    data = (tmp_path / "plate.0003.exr").read_bytes()
    (tmp_path / "plate.0003.exr").write_bytes(data[: len(data) // 2])
    done = vst("verify", pattern, "--frames", "1-5")
    assert done.returncode == 1
    assert "3 of 5 frame(s) missing or incomplete" in done.stderr
    assert re.search(r"2: missing: .*plate\.0002\.exr", done.stderr)
    assert re.search(r"3: unreadable: ", done.stderr) and re.search(r"5: missing: ", done.stderr)
    assert "1:" not in done.stderr and "4:" not in done.stderr
    assert "removed 2 temporary file(s)" in done.stdout and not list(tmp_path.glob(".*plate.*"))


def test_an_idle_server_stops_by_itself(tmp_path: Path) -> None:
    server = subprocess.Popen([VST, "serve", "--bind", "tcp://127.0.0.1:0", "--device", "cpu", "--idle-exit", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.wait(120) == 0
    finally:
        server.kill()
    assert "no requests for 1 s (--idle-exit)" in server.stdout.read()


# ---- Dask ---------------------------------------------------------------------------------------


@pytest.fixture
def dask_cluster(free_address):
    """A real `dask scheduler` and two `dask worker --resources GPU=1` processes (no nanny) on 127.0.0.1."""
    import distributed

    address = free_address()
    port = address.rsplit(":", 1)[1]
    processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", port,
                                   "--no-dashboard"], stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            processes.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--resources", "GPU=1", "--no-nanny",
                 "--no-dashboard", "--death-timeout", "60"], stderr=subprocess.DEVNULL))
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address, processes[1:]
    finally:
        for process in reversed(processes):  # workers first: they linger while their scheduler is gone
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                raise


def test_dask_farm_survives_a_killed_worker(dask_cluster, server_address: str, tmp_path: Path) -> None:
    scheduler, workers = dask_cluster
    plates = make_plates(tmp_path / "plates", range(1, 9), size=(64, 48))
    out = str(tmp_path / "out" / "styled.####.exr")
    options = ["--style", "7", "--in-flight", "1"]
    farm = subprocess.Popen([VST, "farm", plates, out, "--frames", "1-8", "--chunk", "4", "--scheduler", scheduler,
                             *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, survivor = (psutil.Process(worker.pid) for worker in workers)
    while not list((tmp_path / "out").glob("styled.*.exr")) and farm.poll() is None:
        time.sleep(0.01)
    both_busy = not (tmp_path / "out/styled.0004.exr").exists() and not (tmp_path / "out/styled.0008.exr").exists()
    servers = [child.pid for child in victim.children() if "serve" in child.cmdline()]
    victim.send_signal(signal.SIGKILL)
    stdout, stderr = farm.communicate(timeout=240)
    assert farm.returncode == 0, stderr
    assert both_busy, "the job ended before a worker could be killed mid-chunk"
    assert "vst verify: all 8 frame(s) present and complete" in stdout
    assert servers and all(gone(pid) for pid in servers), "the killed worker's vst server outlived it"
    assert all(gone(child.pid) for child in survivor.children()), "a server outlived the job"
    reference = str(tmp_path / "ref" / "styled.####.exr")
    done = vst("render", plates, reference, "--frames", "1-8", *options, "--server", server_address)
    assert done.returncode == 0, done.stderr
    assert_same_frames(out, reference, range(1, 9))
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]


def test_farm_refuses_a_bad_job_before_starting(tmp_path: Path) -> None:
    plates = make_plates(tmp_path / "plates", range(1, 3))
    done = vst("farm", plates, str(tmp_path / "o.####.exr"), "--frames", "1-3", "--chunk", "2", "--local", "1",
               "--style", "7")
    assert done.returncode == 1 and "1 input frame(s) missing: 3" in done.stderr
    done = vst("farm", plates, str(tmp_path / "o.####.exr"), "--frames", "1-2", "--chunk", "2", "--local", "1",
               "--embedded")
    assert done.returncode == 1 and "--embedded: the farm sets this for each chunk itself" in done.stderr


# ---- Open Job Description -------------------------------------------------------------------


def openjd(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "openjd"), *args], capture_output=True, text=True, timeout=300, env=env)


def session_server(log: str) -> int:
    """The pid of the vst server a session's onEnter started, from the `openjd run` log."""
    match = re.search(r"vst server (\d+) listening on tcp://127\.0\.0\.1:\d+", log)
    assert match, log
    return int(match.group(1))


def test_openjd_bundle_renders_the_job_like_local_chunks(server_address: str, tmp_path: Path) -> None:
    plates = make_plates(tmp_path / "plates", range(1, 8))
    out = str(tmp_path / "out" / "styled.####.exr")
    options = ["--style", "7", "--temporal", "0.8", "--preroll", "1"]
    done = vst("submit", "openjd", str(tmp_path / "bundle"), plates, out, "--frames", "2-7", "--chunk", "3",
               "--cpu", *options)
    assert done.returncode == 0, done.stderr
    template = tmp_path / "bundle" / "template.yaml"
    text = template.read_text()
    assert "CHUNK[INT]" in text and "TASK_CHUNKING" in text and "amount.worker.gpu" not in text
    assert (tmp_path / "bundle" / "parameter_values.yaml").is_file()
    checked = openjd("check", str(template))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    run = openjd("run", str(template), "--step", "Render")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Chunks run: 2" in run.stdout and "openjd_env: VST_SERVER=tcp://127.0.0.1:" in run.stdout
    assert gone(session_server(run.stdout))
    reference = str(tmp_path / "ref" / "styled.####.exr")
    for frames in ("2-4", "5-7"):  # each chunk pre-rolls 1 frame, like a farm task
        local = vst("render", plates, reference, "--frames", frames, *options, "--server", server_address)
        assert local.returncode == 0, local.stderr
    assert_same_frames(out, reference, range(2, 8))
    assert not (tmp_path / "out" / "styled.0001.exr").exists()  # pre-roll frames are not written


def test_openjd_failing_chunk_fails_the_job_and_stops_the_server(tmp_path: Path) -> None:
    plates = make_plates(tmp_path / "plates", range(1, 5))
    bundle = tmp_path / "bundle"
    done = vst("submit", "openjd", str(bundle), plates, str(tmp_path / "out.####.exr"), "--frames", "1-4",
               "--chunk", "2", "--model", "identity")
    assert done.returncode == 0, done.stderr
    assert "amount.worker.gpu" in (bundle / "template.yaml").read_text()
    (tmp_path / "plates" / "plate.0003.exr").unlink()  # lost after submission
    run = openjd("run", str(bundle / "template.yaml"), "--step", "Render", "-p", "Vst=" + VST)
    assert run.returncode != 0
    assert "1 input frame(s) missing: 3" in run.stdout
    assert re.search(r"vst server \d+ on tcp://127\.0\.0\.1:\d+ stopped", run.stdout)
    assert gone(session_server(run.stdout), within=5)
    verify = openjd("run", str(bundle / "template.yaml"), "--step", "Verify")
    assert verify.returncode != 0 and "3: missing" in verify.stdout


# ---- Deadline 10 --------------------------------------------------------------------------------


def run_deadline_jobs(folder: Path, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """What Deadline's CommandLine plugin does, job after job: each chunk of Frames by ChunkSize runs
    Executable with Arguments, <STARTFRAME>/<ENDFRAME> replaced. Stops at the first failing task."""
    from vst_plugin.farm.chunks import contiguous_range

    done = []
    for job_file in sorted(folder.glob("*.job.info")):
        job = dict(line.split("=", 1) for line in job_file.read_text().splitlines())
        plugin = dict(line.split("=", 1) for line in job_file.with_name(
            job_file.name.replace("job.info", "plugin.info")).read_text().splitlines())
        assert job["Plugin"] == "CommandLine"
        first, last = contiguous_range(job["Frames"])
        size = int(job["ChunkSize"])
        job_env = dict(value.split("=", 1) for key, value in job.items() if key.startswith("EnvironmentKeyValue"))
        for start in range(first, last + 1, size):
            end = min(start + size - 1, last)
            arguments = plugin["Arguments"].replace("<STARTFRAME>", str(start)).replace("<ENDFRAME>", str(end))
            task = subprocess.run([plugin["Executable"], *shlex.split(arguments)], capture_output=True, text=True,
                                  timeout=300, env={**env, **job_env})
            done.append(task)
            if task.returncode != 0:
                return done
    return done


@pytest.fixture(scope="module")
def deadline_node(tmp_path_factory: pytest.TempPathFactory):
    """A render node's environment: its temporary folder, where `vst farm-chunk` records the node's server.
    The Deadline tests share the node (and so its server); it is stopped at the end and must be gone."""
    folder = tmp_path_factory.mktemp("node")
    yield {**os.environ, "TMPDIR": str(folder)}
    for state in folder.glob("vst-node-*.json"):
        pid = json.loads(state.read_text())["pid"]
        assert vst("farm-server", "stop", str(state)).returncode == 0
        assert gone(pid)


def test_deadline_jobs_render_through_one_node_server(deadline_node, server_address: str, tmp_path: Path) -> None:
    plates = make_plates(tmp_path / "plates", range(1, 6))
    out = str(tmp_path / "out dir" / "styled.####.exr")  # a space: Arguments quoting
    options = ["--style", "7", "--strength", "0.5"]
    done = vst("submit", "deadline", str(tmp_path / "jobs"), plates, out, "--frames", "1-5", "--chunk", "2",
               "--cpu", "--pool", "vfx", "--group", "gpu", "--priority", "70", *options)
    assert done.returncode == 0, done.stderr
    assert "deadlinecommand -SubmitMultipleJobs -Dependent -job" in done.stdout
    job = (tmp_path / "jobs" / "1.job.info").read_text()
    for line in ("Plugin=CommandLine", "Frames=1-5", "ChunkSize=2", "Pool=vfx", "Group=gpu", "Priority=70"):
        assert line in job.splitlines()
    assert "--frames <STARTFRAME>-<ENDFRAME>" in (tmp_path / "jobs" / "1.plugin.info").read_text()

    tasks = run_deadline_jobs(tmp_path / "jobs", deadline_node)
    assert [t.returncode for t in tasks] == [0, 0, 0, 0], [t.stderr for t in tasks]
    servers = re.findall(r"vst farm-chunk: (started|using) vst server (\d+)", "".join(t.stderr for t in tasks[:3]))
    assert len(servers) == 3 and len({pid for _, pid in servers}) == 1  # one server for every chunk
    assert [how for how, _ in servers][1:] == ["using", "using"]
    assert "all 5 frame(s) present and complete" in tasks[3].stdout
    reference = str(tmp_path / "ref" / "styled.####.exr")
    local = vst("render", plates, reference, "--frames", "1-5", *options, "--server", server_address)
    assert local.returncode == 0, local.stderr
    assert_same_frames(out, reference, range(1, 6))


# ---- Nuke scripts: input, vst, comp -------------------------------------------------------------


@pytest.fixture
def standin_nuke(tmp_path: Path) -> str:
    """A `nuke` command running tests/fake_nuke/standin_nuke.py (the glue on the fake nuke module)."""
    command = tmp_path / "bin" / "nuke"
    command.parent.mkdir()
    command.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).parent / 'fake_nuke/standin_nuke.py'} "
                       '"$@"\n')
    command.chmod(0o755)
    return str(command)


def nuke_script(tmp_path: Path, frames: range) -> Path:
    plates = make_plates(tmp_path / "plates", frames)
    script = tmp_path / "shot" / "comp.nk"
    script.parent.mkdir()
    comp = str(tmp_path / "final" / "comp.####.exr")
    script.write_text(json.dumps({"plate": plates, "first": frames[0], "last": frames[-1], "comp": comp}))
    return script


def test_openjd_nuke_job_renders_input_then_vst_then_comp(
    standin_nuke: str, server_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VST_CACHE", raising=False)
    script = nuke_script(tmp_path, range(1, 5))
    bundle = tmp_path / "bundle"
    done = vst("submit", "openjd", str(bundle), "--nuke", str(script), "--node", "vstStyleTransfer",
               "--frames", "1-4", "--chunk", "2", "--cpu", "--nuke-executable", standin_nuke, "--style", "7")
    assert done.returncode == 0, done.stderr
    assert "--step NukeComp --run-dependencies" in done.stdout
    run = openjd("run", str(bundle / "template.yaml"), "--step", "NukeComp", "--run-dependencies")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    order = [run.stdout.index(f"rendered {what}") for what in ("vstStyleTransfer.vst_input", "Write1")]
    assert order == sorted(order) and "all 4 frame(s) present and complete" in run.stdout
    cache = tmp_path / "shot" / "vst_cache" / "vstStyleTransfer"
    assert sorted(p.name for p in cache.glob("input.*.exr")) == [f"input.{n:04d}.exr" for n in range(1, 5)]
    reference = str(tmp_path / "ref" / "styled.####.exr")
    local = vst("render", str(tmp_path / "plates" / "plate.####.exr"), reference, "--frames", "1-4", "--style", "7",
                "--server", server_address)
    assert local.returncode == 0, local.stderr
    assert_same_frames(str(tmp_path / "final" / "comp.####.exr"), reference, range(1, 5))


def test_deadline_nuke_job_chains_four_jobs(deadline_node, standin_nuke: str, tmp_path: Path) -> None:
    script = nuke_script(tmp_path, range(1, 4))
    cache = tmp_path / "cache"
    done = subprocess.run([VST, "submit", "deadline", str(tmp_path / "jobs"), "--nuke", str(script), "--node",
                           "vstStyleTransfer", "--frames", "1-3", "--chunk", "3", "--cpu", "--nuke-executable",
                           standin_nuke, "--model", "identity"], capture_output=True, text=True,
                          env={**os.environ, "VST_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr
    names = [dict(line.split("=", 1) for line in path.read_text().splitlines())["Name"]
             for path in sorted((tmp_path / "jobs").glob("*.job.info"))]
    assert names == ["vst comp.nk vstStyleTransfer (nuke input)", "vst comp.nk vstStyleTransfer",
                     "vst comp.nk vstStyleTransfer (verify)", "vst comp.nk vstStyleTransfer (nuke comp)"]
    assert "EnvironmentKeyValue1=VST_FARM_STEP=comp" in (tmp_path / "jobs" / "4.job.info").read_text()
    node = {k: v for k, v in deadline_node.items() if k != "VST_CACHE"}  # Deadline sets it from the job
    tasks = run_deadline_jobs(tmp_path / "jobs", node)
    assert [t.returncode for t in tasks] == [0, 0, 0, 0], [t.stderr for t in tasks]
    for number in (1, 2, 3):  # identity: the comp is the plate, through input, vst and comp steps
        delivered = read_exr(tmp_path / "final" / f"comp.{number:04d}.exr").parts[0].channels
        plate = read_exr(tmp_path / "plates" / f"plate.{number:04d}.exr").parts[0].channels
        assert all(np.array_equal(delivered[c], plate[c]) for c in plate)
    final = tmp_path / "final" / "comp.0002.exr"
    final.unlink()
    (cache / "vstStyleTransfer" / "vst.0002.exr").unlink()
    comp = subprocess.run([standin_nuke, "-x", str(script), "1-3"], capture_output=True, text=True,
                          env={**node, "VST_CACHE": str(cache), "VST_FARM_STEP": "comp"})
    assert comp.returncode == 1 and "frame 2 has not been stylized" in comp.stderr and not final.exists()
