"""Where the server listens: IPv6 loopback, ipc:// paths shared by two servers, stale socket files."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vst_plugin import Client

VST = str(Path(sys.executable).parent / "vst")


def test_serves_on_ipv6_loopback(vst_server) -> None:
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://[::1]:{port}"
    with vst_server(address=address), Client(address, timeout=5) as client:
        assert client.hello()["protocol"] == 1


def test_second_server_on_a_live_ipc_path_is_refused(vst_server, short_dir: Path) -> None:
    address = f"ipc://{short_dir}/vst.sock"
    with vst_server(address=address):
        second = subprocess.run([VST, "serve", "--bind", address, "--device", "cpu"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert "a vst server (vst-server" in second.stderr and "already listening" in second.stderr
        with Client(address, timeout=5) as client:  # the first server still owns its socket
            assert client.hello()["protocol"] == 1


def test_stale_ipc_socket_file_is_replaced(short_dir: Path) -> None:
    from server.service import claim_ipc_path

    path = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # a socket file nobody listens on, as a killed server leaves
        dead.bind(str(path))
    assert path.is_socket()
    claim_ipc_path(f"ipc://{path}")
    assert not path.exists()


def test_ipc_path_that_is_not_a_socket_is_left_alone(short_dir: Path) -> None:
    from server.service import BindError, claim_ipc_path

    path = short_dir / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(BindError, match="is not a socket"):
        claim_ipc_path(f"ipc://{path}")
    assert path.read_text() == "keep me"
