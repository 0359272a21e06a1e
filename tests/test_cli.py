"""The `vst` command line, run as a real process against real servers and the shipped sample plates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from vst_plugin.exr import read_exr

ROOT = Path(__file__).resolve().parents[1]
VST = str(Path(sys.executable).parent / "vst")
SAMPLES = ROOT / "samples/beachball/beachball.####.exr"


def vst(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([VST, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_embedded_render_keeps_channels_windows_and_compression(tmp_path: Path) -> None:
    out = tmp_path / "shot" / "styled.%04d.exr"
    done = vst("render", str(SAMPLES), str(out), "--frames", "2-3", "--style", "7", "--strength", "0.8",
               "--embedded", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "wrote 2 frame(s)" in done.stdout
    assert sorted(p.name for p in (tmp_path / "shot").iterdir()) == ["styled.0002.exr", "styled.0003.exr"]
    for number in (2, 3):
        source = read_exr(ROOT / f"samples/beachball/beachball.{number:04d}.exr").parts[0]
        result = read_exr(tmp_path / f"shot/styled.{number:04d}.exr").parts[0]
        assert list(result.channels) == list(source.channels)
        assert (result.data_window, result.display_window) == (source.data_window, source.display_window)
        assert result.attributes["compression"] == source.attributes["compression"]
        assert result.attributes["multiView"] == source.attributes["multiView"]
        for name in ("A", "Z", "forward.left.u", "disparityR.y", "whitebarmask.left.mask"):
            assert np.array_equal(result.channels[name].view(np.uint16), source.channels[name].view(np.uint16))
        assert not np.array_equal(result.channels["R"], source.channels["R"])


def test_render_through_a_running_server_with_printf_patterns(server_address: str, tmp_path: Path) -> None:
    pattern = str(ROOT / "samples/beachball/beachball.%04d.exr")
    done = vst("render", pattern, str(tmp_path / "id.####.exr"), "--frames", "1-3", "--model", "identity",
               "--server", server_address)
    assert done.returncode == 0, done.stderr
    for number in (1, 2, 3):
        source = read_exr(ROOT / f"samples/beachball/beachball.{number:04d}.exr").parts[0]
        result = read_exr(tmp_path / f"id.{number:04d}.exr").parts[0]
        for name, plane in source.channels.items():
            assert np.array_equal(result.channels[name].view(np.uint16), plane.view(np.uint16)), name


def test_models_lists_the_schema(server_address: str) -> None:
    done = vst("models", "--server", server_address)
    assert done.returncode == 0, done.stderr
    assert "multistyle26  (multistyle" in done.stdout
    assert "style: style_mix" in done.stdout and "strength: float = 1.0 [0.0..1.0]" in done.stdout


def test_render_without_a_server_says_how_to_start_one(tmp_path: Path, free_address) -> None:
    done = vst("render", str(SAMPLES), str(tmp_path / "x.####.exr"), "--frames", "1",
               "--server", free_address(), "--timeout", "1")
    assert done.returncode == 1
    assert "no vst server is running" in done.stderr and "vst serve" in done.stderr and "--embedded" in done.stderr
    assert not any(tmp_path.iterdir())


def test_missing_input_frames_are_listed_before_anything_renders(tmp_path: Path, server_address: str) -> None:
    done = vst("render", str(SAMPLES), str(tmp_path / "x.####.exr"), "--frames", "1-5", "--server", server_address)
    assert done.returncode == 1
    assert "2 input frame(s) missing: 4 (" in done.stderr
    assert not any(tmp_path.iterdir())


def test_a_server_error_names_the_frame_and_writes_nothing(tmp_path: Path, server_address: str) -> None:
    done = vst("render", str(SAMPLES), str(tmp_path / "x.####.exr"), "--frames", "1", "--style", "99",
               "--server", server_address)
    assert done.returncode == 1
    assert "frame 1:" in done.stderr and "bad_param" in done.stderr
    assert not any(tmp_path.iterdir())


HOST_ONLY = """
import sys
sys.modules["server"] = None  # as on a workstation with only the host side installed: no server package
import vst_plugin.cli as cli
cli._entry_points = lambda group: []  # and no package registering commands
sys.exit(cli.main(sys.argv[1:]))
"""


def host_only(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HOST_ONLY, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_a_host_only_install_renders_through_a_server_and_says_what_serve_needs(
    server_address: str, tmp_path: Path
) -> None:
    done = host_only("render", str(SAMPLES), str(tmp_path / "out.####.exr"), "--frames", "1",
                     "--model", "identity", "--server", server_address)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.0001.exr").is_file()
    serve = host_only("serve")
    assert serve.returncode == 2 and "pip install 'vst[server]'" in serve.stderr
    embedded = host_only("render", str(SAMPLES), str(tmp_path / "e.####.exr"), "--frames", "1", "--embedded")
    assert embedded.returncode == 1 and "vst[server]" in embedded.stderr
    assert not (tmp_path / "e.0001.exr").exists()


def test_server_commands_come_from_the_entry_point_group() -> None:
    from vst_plugin.cli import build_parser

    parser = build_parser()
    for command in ("serve", "export", "eval", "convert-stylegan"):
        args = parser.parse_args([command, *{"serve": [], "export": ["m", "--format", "onnx", "-o", "x"],
                                             "eval": ["temporal", "o", "--frames", "1", "--flow-from", "i"],
                                             "convert-stylegan": ["a", "b"]}[command]])
        assert args.run.__module__ == "server.commands"
