"""Serving beyond loopback with CURVE keys: a real server bound to 0.0.0.0, reached only through 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vst_plugin import Client, ServerUnavailable
from vst_plugin.keys import client_curve

VST = str(Path(sys.executable).parent / "vst")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def keys(*arguments: str) -> str:
    done = subprocess.run([VST, "keys", *arguments], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def curve_server(tmp_path_factory, vst_server_process):
    folder = tmp_path_factory.mktemp("curve")
    keys(str(folder / "server"))
    keys(str(folder / "artist"), "--name", "artist")
    keys(str(folder / "stranger"), "--name", "stranger")
    (folder / "server/authorized/artist.key").write_bytes((folder / "artist/artist.key").read_bytes())
    port = free_port()
    with vst_server_process("--curve-dir", str(folder / "server"), address=f"tcp://0.0.0.0:{port}",
                            probe=f"tcp://127.0.0.1:{port}",
                            curve=client_curve(str(folder / "server/server.key"),
                                               str(folder / "artist/artist.key_secret"))):
        yield f"tcp://127.0.0.1:{port}", folder


def test_an_authorised_client_is_served(curve_server) -> None:
    address, folder = curve_server
    curve = client_curve(str(folder / "server/server.key"), str(folder / "artist/artist.key_secret"))
    with Client(address, curve=curve) as client:
        assert client.hello()["protocol"] == 1
    done = subprocess.run(
        [VST, "models", "--server", address, "--client-key", str(folder / "artist/artist.key_secret")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "VST_SERVER_KEY": (folder / "server/server.key").read_text().split('"')[1]},
    )
    assert done.returncode == 0 and "multistyle26" in done.stdout, done.stderr


@pytest.mark.parametrize("who", ["stranger", "plain"])
def test_others_get_nothing(curve_server, who: str) -> None:
    address, folder = curve_server
    curve = None if who == "plain" else client_curve(str(folder / "server/server.key"),
                                                     str(folder / "stranger/stranger.key_secret"))
    with Client(address, timeout=1.5, heartbeat=0.3, curve=curve) as client, pytest.raises(ServerUnavailable):
        client.hello()


def test_without_keys_the_server_refuses_other_addresses(tmp_path: Path) -> None:
    done = subprocess.run([VST, "serve", "--bind", f"tcp://0.0.0.0:{free_port()}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "--curve-dir" in done.stderr
    done = subprocess.run([VST, "serve", "--bind", f"tcp://0.0.0.0:{free_port()}", "--curve-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "server.key_secret" in done.stderr
