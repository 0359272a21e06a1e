"""Where the server is: $VST_SERVER for every command and the Python Client, `vst serve --config FILE`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vst_plugin import Client
from vst_plugin.cli import build_parser, parse_arguments

VST = str(Path(sys.executable).parent / "vst")


def test_vst_server_and_a_config_file_place_the_server(vst_server, short_dir: Path, monkeypatch) -> None:
    address = f"ipc://{short_dir}/vst.sock"
    config = short_dir / "serve.toml"
    config.write_text('default-model = "identity"\nmodel_memory = "1G"\nmodels-dir = []\nsequence-ttl = 30\n')
    monkeypatch.setenv("VST_SERVER", address)
    with vst_server("--config", str(config), address=address, bind=False):
        with Client() as client:  # the Python default address is $VST_SERVER too
            capabilities = client.hello()["capabilities"]
            assert capabilities["default_model"] == "identity"
            assert client.stats()["model_memory_budget"] == 1 << 30
        done = subprocess.run([VST, "models"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "identity  (identity" in done.stdout
    monkeypatch.setenv("VST_SERVER", f"ipc://{short_dir}/nobody.sock")
    done = subprocess.run([VST, "models", "--timeout", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"no vst server is running at ipc://{short_dir}/nobody.sock" in done.stderr


def test_command_line_options_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('bind = "ipc:///tmp/file.sock"\ndevice = "cpu"\nmodels-dir = ["/models/a"]\n'
                      'model-memory = "6G"\n')
    args = parse_arguments(build_parser(), ["serve", "--device", "cuda:1", "--config", str(config), "--bind", "tcp://127.0.0.1:6000"])
    assert (args.bind, args.device, args.model_memory) == ("tcp://127.0.0.1:6000", "cuda:1", 6 << 30)
    assert args.models_dir == [Path("/models/a")]


@pytest.mark.parametrize(("text", "message"), [
    ("colour = 1\n", "unrecognized arguments: --colour 1"),
    ("model-memory = \"lots\"\n", "not a size"),
    ("bind = \n", "is not valid TOML"),
    ("[server]\nbind = \"x\"\n", "'server' cannot be set in a config file"),
])
def test_config_file_mistakes_are_reported_with_the_file(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(text)
    done = subprocess.run([VST, "serve", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr and str(config) in done.stderr
