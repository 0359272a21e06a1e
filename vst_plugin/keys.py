"""CURVE keys for a server reachable beyond loopback (ZeroMQ CurveZMQ through `zmq.auth`).

A server started with `vst serve --curve-dir DIR` encrypts every connection and accepts only clients
whose public key is in ``DIR/authorized``; its own key pair is ``DIR/server.key`` (public, give it to
the clients) and ``DIR/server.key_secret``. `vst keys DIR --name NAME` makes a key pair in the
ZeroMQ certificate format (``NAME.key`` public, ``NAME.key_secret`` secret). A client needs the
server's public key (``--server-key``, or ``VST_SERVER_KEY``: the 40-character Z85 text or the path of
``server.key``) and its own key pair (``--client-key`` / ``VST_CLIENT_KEY``: the path of its
``.key_secret`` file), whose ``.key`` the server's operator copied into ``DIR/authorized``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

SERVER_KEY_ENV = "VST_SERVER_KEY"
CLIENT_KEY_ENV = "VST_CLIENT_KEY"
SERVER_NAME = "server"
AUTHORIZED = "authorized"
"""Folder inside the curve folder holding the public keys (``*.key``) of the clients allowed in."""


class CurveKeyError(ValueError):
    """A key is missing or is not a CURVE key."""


@dataclass(frozen=True)
class Curve:
    """What a CURVE socket needs: its own key pair, and for a client the server's public key."""

    public: bytes
    secret: bytes
    server: bytes | None = None

    def apply(self, socket: zmq.Socket, server: bool = False) -> None:
        """Set the socket's CURVE options (before bind or connect)."""
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
        if server:
            socket.curve_server = True
        else:
            socket.curve_serverkey = self.server


def create_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair ``NAME.key`` and ``NAME.key_secret`` into `folder`; refuse to overwrite."""
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise CurveKeyError(f"{public} or {secret} exists already; remove them first or choose another --name")
    made_public, made_secret = zmq.auth.create_certificates(str(folder), name)
    os.chmod(made_secret, 0o600)
    return Path(made_public), Path(made_secret)


def public_key(value: str) -> bytes:
    """A public key from its 40-character Z85 text or from a ``.key`` / ``.key_secret`` file."""
    text = value.strip()
    if len(text) == 40 and not os.path.exists(text):
        return text.encode("ascii")
    public, _ = _load(Path(text).expanduser())
    return public


def key_pair(path: str | Path) -> tuple[bytes, bytes]:
    """The (public, secret) keys of a ``.key_secret`` file."""
    public, secret = _load(Path(path).expanduser())
    if secret is None:
        raise CurveKeyError(f"{path} holds no secret key: give the .key_secret file of the pair")
    return public, secret


def client_curve(server_key: str | None = None, client_key: str | None = None) -> Curve | None:
    """The client's CURVE settings from the arguments or VST_SERVER_KEY / VST_CLIENT_KEY; None: plain."""
    server_key = server_key or os.environ.get(SERVER_KEY_ENV)
    client_key = client_key or os.environ.get(CLIENT_KEY_ENV)
    if not server_key:
        if client_key:
            raise CurveKeyError(f"a client key needs the server's public key too (--server-key or {SERVER_KEY_ENV})")
        return None
    if not client_key:
        raise CurveKeyError(
            f"the server's key is given, but no client key pair (--client-key or {CLIENT_KEY_ENV}: the "
            ".key_secret file made by `vst keys`, whose .key the server's operator authorised)"
        )
    public, secret = key_pair(client_key)
    return Curve(public, secret, public_key(server_key))


def server_curve(folder: Path) -> tuple[Curve, Path]:
    """The server's key pair and the folder of authorised client keys in a curve folder."""
    public, secret = key_pair(folder / f"{SERVER_NAME}.key_secret")
    authorized = folder / AUTHORIZED
    if not authorized.is_dir():
        raise CurveKeyError(f"{authorized} does not exist: put the public keys (.key) of the allowed clients there")
    return Curve(public, secret), authorized


def _load(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise CurveKeyError(f"key file {path} does not exist (make keys with `vst keys`)")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise CurveKeyError(f"{path} is not a ZeroMQ CURVE key file ({exc})") from None
    return public, secret
