"""No message stops the server: hand-made regressions and a property-based fuzz against a real server."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vst_plugin import Client
from vst_plugin.schema import ERROR_CODES

VST = str(Path(sys.executable).parent / "vst")
FUZZ_EXAMPLES = 520
FUZZ_DRAWN = 2  # messages hypothesis builds per example
FUZZ_VARIANTS = 10  # messages sent per drawn one: itself and byte-level mutations (520 x 2 x 10 = 10,400)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def exchange(address: str, messages: list[list[bytes]], timeout: float = 60.0) -> list[dict]:
    """Send every message on one DEALER at once, then collect one reply per message."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    try:
        for frames in messages:
            socket.send_multipart(frames)
        replies = []
        deadline = time.monotonic() + timeout
        while len(replies) < len(messages):
            remaining = deadline - time.monotonic()
            assert remaining > 0 and socket.poll(int(remaining * 1000)), (
                f"{len(messages) - len(replies)} of {len(messages)} messages got no reply"
            )
            replies.append(msgpack.unpackb(socket.recv_multipart()[0], strict_map_key=False))
        return replies
    finally:
        socket.close()


def ask(address: str, header: dict | bytes, *payload: bytes) -> dict:
    packed = header if isinstance(header, bytes) else msgpack.packb(header)
    (reply,) = exchange(address, [[packed, *payload]])
    return reply


def channels(kind: object) -> dict:
    return {"parts": [{"data_window": [0, 0, 3, 3], "display_window": [0, 0, 3, 3],
                       "channels": [{"name": "R", "type": kind}]}]}


# ---- the hand-made messages of issue 14 and the envelope ---------------------------------------

@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"\x81\x91\x01\x01"], "bad_request"),  # a map whose key is an array
        ([msgpack.packb({"v": 1, "id": 2, "op": "stylize", "frame": channels(["half"])}), b"x" * 32], "bad_frame"),
        ([msgpack.packb({"v": 1, "id": 3, "op": "stylize", "exr": True, "sequence": "s", "frame_number": 1,
                         "temporal": {1: 2}}), b"x"], "bad_request"),
        ([msgpack.packb({"v": 1, "id": 4, "op": "stylize", "exr": True, "sequence": "s", "frame_number": 1,
                         "temporal": {"strength": 0.5, "preset": ["fast"]}}), b"x"], "bad_param"),
        ([msgpack.packb({"v": 1, "id": 5, "op": "stylize", "exr": True, "sequence": "s", "frame_number": True,
                         "temporal": {"strength": 0.5}}), b"x"], "bad_request"),
        ([msgpack.packb({"v": 1.0, "id": 6, "op": "ping"})], "version"),
        ([msgpack.packb({"v": True, "id": 7, "op": "ping"})], "version"),
        ([msgpack.packb({"v": 1, "id": 8, "op": "stylize", "params": {"style": [[]]}, "exr": True}), b"x"],
         "bad_param"),
    ],
)
def test_hand_made_messages_get_a_code_and_the_server_stays(server_address: str, frames, code) -> None:
    (reply,) = exchange(server_address, [frames])
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    with Client(server_address) as client:
        assert client.ping() >= 0


def test_unload_of_a_name_no_file_system_accepts(server_address: str) -> None:
    reply = ask(server_address, {"v": 1, "id": 5, "op": "unload", "model": "multi\0style26"})
    assert reply == {"v": 1, "id": 5, "op": "unload", "ok": True, "unloaded": False}
    reply = ask(server_address, {"v": 1, "id": 6, "op": "stylize", "model": "../x\0y", "exr": True}, b"x")
    assert reply["error"]["code"] == "unknown_model"


@pytest.mark.parametrize("bad_id", [2**63, 2**64 - 1, -1, "7", 1.0, True, None, [1]])
def test_ids_outside_the_protocol_are_refused_not_echoed(server_address: str, bad_id) -> None:
    reply = ask(server_address, {"v": 1, "id": bad_id, "op": "ping"})
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    assert reply["id"] == -1 and reply["op"] == "ping"  # a known op is repeated, an invalid id never


def test_the_largest_id_is_echoed(server_address: str) -> None:
    assert ask(server_address, {"v": 1, "id": 2**63 - 1, "op": "ping"})["id"] == 2**63 - 1


def test_unknown_ops_are_not_echoed(server_address: str) -> None:
    reply = ask(server_address, {"v": 1, "id": 3, "op": "x" * 10_000})
    assert reply["error"]["code"] == "unknown_op" and reply["op"] == "?" and len(reply["error"]["message"]) < 300


def test_a_junk_checkpoint_in_a_models_folder_is_listed_as_unreadable(tmp_path: Path, vst_server_process) -> None:
    import torch

    (tmp_path / "noise.pth").write_bytes(b"Zsecret first byte" + os.urandom(200))
    (tmp_path / "empty.pth").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "zipped.pth", "w") as archive:  # a zip that is no torch archive
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("other/secret.txt", "password=hunter2")
    with zipfile.ZipFile(tmp_path / "bare.pth", "w") as archive:
        archive.writestr("secret.txt", "password=hunter2")
    torch.save({1: torch.zeros(2), "weight": [1, 2]}, tmp_path / "oddkeys.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    (tmp_path / "recipe.json").write_text('{"family": "secret-family-field"}')
    (tmp_path / "binary.json").write_bytes(b"\x89secret")
    (tmp_path / "escape.json").write_text('{"family": "stylegan2", "base": "../../etc/passwd"}')
    with vst_server_process("--models-dir", str(tmp_path)) as (address, process):
        done = subprocess.run([VST, "models", "--server", address], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        for name in ("noise", "empty", "zipped", "bare", "oddkeys", "list", "recipe", "binary", "escape"):
            assert f"{name}: cannot be read" in done.stdout, (name, done.stdout)
        for secret in ("Zsecret", "'Z'", "hunter2", "secret-family-field", "0x89", "passwd"):
            assert secret not in done.stdout
        with Client(address) as client:
            assert client.ping() >= 0 and process.poll() is None


# ---- fuzz ---------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=12),
)
keys = st.one_of(st.sampled_from(["v", "id", "op", "frame", "parts", "channels", "type", "name", "temporal",
                                  "preset", "model", "params", "sequence", "frame_number", "exr", "layers",
                                  "tile", "colorspace", "highlights", "premultiplied", "data_window"]),
                 st.text(max_size=6), st.integers(-3, 3), st.binary(max_size=4))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=12)

VALID = {
    "hello": {"client": "fuzz"},
    "models": {},
    "stats": {},
    "ping": {},
    "reset": {"sequence": "s"},
    "unload": {"model": "multistyle26"},
    "stylize": {"model": "identity", "frame": channels("half"), "sequence": "s", "frame_number": 1,
                "params": {"strength": 0.5}, "temporal": {"strength": 0.5, "preset": "fast"}},
}


def maps_in(node: object) -> list[dict]:
    """Every map in a header tree (maps inside lists too), the header first."""
    if isinstance(node, dict):
        return [node, *(found for value in node.values() for found in maps_in(value))]
    if isinstance(node, list):
        return [found for value in node for found in maps_in(value)]
    return []


@st.composite
def mutated_request(draw: st.DrawFn) -> list[bytes]:
    """A valid request (stylize half of the time) with fields replaced, removed or added anywhere in it."""
    op = draw(st.one_of(st.just("stylize"), st.sampled_from(sorted(VALID))))
    header = {"v": 1, "id": draw(st.integers(0, 2**63 - 1)), "op": op, **msgpack.unpackb(msgpack.packb(VALID[op]))}
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(maps_in(header)))
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "remove" and target:
            del target[draw(st.sampled_from(sorted(target, key=repr)))]
        elif action == "replace" and target:
            target[draw(st.sampled_from(sorted(target, key=repr)))] = draw(values)
        else:
            target[draw(keys)] = draw(values)
    payload = draw(st.lists(st.binary(max_size=40), max_size=3))
    if op == "stylize" and draw(st.booleans()):
        payload = [b"\0" * 32]  # the size the 4x4 half channel needs
    return [msgpack.packb(header), *payload]


messages = st.one_of(
    st.lists(st.binary(max_size=40), max_size=3),  # no message, or raw bytes
    values.map(lambda value: [msgpack.packb(value)]),  # any msgpack
    st.builds(lambda header, payload: [msgpack.packb(header), *payload],
              st.dictionaries(keys, values, max_size=5), st.lists(st.binary(max_size=16), max_size=2)),
    mutated_request(),
)


@pytest.fixture(scope="module")
def fuzz_server(vst_server_process):
    with vst_server_process("--client-timeout", "600") as (address, process):
        with Client(address) as client:  # warm up: load the default model once before measuring
            client.models()
        yield address, process, rss_bytes(process.pid)


def variants(frames: list[bytes], rnd: random.Random) -> list[list[bytes]]:
    """The message and byte-level mutations of it: truncated, bytes flipped, frames dropped or added."""
    out = [frames or [b""]]
    while len(out) < FUZZ_VARIANTS:
        mutated = [bytearray(frame) for frame in frames] or [bytearray()]
        index = rnd.randrange(len(mutated))
        kind = rnd.randrange(4)
        if kind == 0 and mutated[index]:
            del mutated[index][rnd.randrange(len(mutated[index])):]
        elif kind == 1 and mutated[index]:
            for _ in range(rnd.randint(1, 3)):
                mutated[index][rnd.randrange(len(mutated[index]))] = rnd.randrange(256)
        elif kind == 2 and len(mutated) > 1:
            del mutated[rnd.randrange(1, len(mutated))]
        else:
            mutated.append(bytearray(rnd.randbytes(rnd.randrange(40))))
        out.append([bytes(frame) for frame in mutated])
    return out


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(drawn=st.lists(messages, min_size=FUZZ_DRAWN, max_size=FUZZ_DRAWN), rnd=st.randoms(use_true_random=False))
def test_fuzzed_messages_never_stop_the_server(fuzz_server, drawn, rnd) -> None:
    address, process, rss_before = fuzz_server
    batch = [variant for frames in drawn for variant in variants(frames, rnd)]
    replies = exchange(address, batch)
    codes = [reply["error"]["code"] for reply in replies if not reply.get("ok")]
    assert "internal" not in codes, [r for r in replies if r.get("error", {}).get("code") == "internal"][:3]
    assert set(codes) <= set(ERROR_CODES)
    assert process.poll() is None
    assert rss_bytes(process.pid) < rss_before + (300 << 20)


# ---- files by name ------------------------------------------------------------------------------

def test_style_pictures_come_from_the_style_folders_or_as_bytes(tmp_path: Path, vst_server, shared: Path) -> None:
    import numpy as np

    from vst_plugin import Frame, Part, ServerError

    styles = tmp_path / "styles"
    styles.mkdir()
    carrots = (shared / "exr/ScanLines/Carrots.exr").read_bytes()
    (styles / "carrots.exr").write_bytes(carrots)
    (styles / "junk.png").write_bytes(b"\x89PNG secret bytes")
    outside = tmp_path / "outside.exr"
    outside.write_bytes(carrots)
    rng = np.random.default_rng(2)
    frame = Frame([Part({c: rng.random((32, 32), dtype=np.float32) for c in "RGB"}, (0, 0, 31, 31), (0, 0, 31, 31))])
    with vst_server("--style-dir", str(styles)) as address, Client(address, timeout=120) as client:
        by_name = client.stylize(frame, model="arbitrary", params={"style_image": "carrots.exr"})
        by_path = client.stylize(frame, model="arbitrary", params={"style_image": str(styles / "carrots.exr")})
        by_bytes = client.stylize(frame, model="arbitrary", params={"style_image": carrots})
        for other in (by_path, by_bytes):
            np.testing.assert_allclose(other.parts[0].channels["R"], by_name.parts[0].channels["R"], atol=1e-5)
        messages = []
        for name in (str(outside), str(tmp_path / "missing.exr"), "../outside.exr", "/etc/passwd", "a\0b"):
            with pytest.raises(ServerError) as raised:
                client.stylize(frame, model="arbitrary", params={"style_image": name})
            assert raised.value.code == "bad_param"
            messages.append(raised.value.message.replace(repr(name[:200]), "NAME"))
        assert len(set(messages)) == 1, messages  # no telling what exists outside the folders
        for value in ("junk.png", b"\x89PNG secret bytes", b""):
            with pytest.raises(ServerError) as raised:
                client.stylize(frame, model="arbitrary", params={"style_image": value, "style_mix": 0})
            assert raised.value.code == "bad_param" and "secret" not in raised.value.message
        assert client.ping() >= 0


def test_model_paths_only_from_the_model_folders_unless_allowed(tmp_path: Path, vst_server) -> None:
    import torch

    from vst_plugin import ServerError

    folder, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (elsewhere / "notes.json").write_text('{"family": "secret"}')
    torch.save({"w": torch.zeros(1)}, elsewhere / "junk.pth")
    with vst_server("--models-dir", str(folder)) as address, Client(address) as client:
        messages = []
        for name in (str(elsewhere / "notes.json"), str(elsewhere / "junk.pth"), str(elsewhere / "none.pth"),
                     str(folder / ".." / "elsewhere" / "junk.pth"), "../elsewhere/junk.pth"):
            with pytest.raises(ServerError) as raised:
                client.stylize_exr(b"x", model=name)
            assert raised.value.code == "unknown_model"
            messages.append(raised.value.message.replace(repr(name[:100]), "NAME"))
        assert len(set(messages)) == 1 and "secret" not in messages[0]
    with vst_server("--allow-model-paths") as address, Client(address) as client:
        with pytest.raises(ServerError) as raised:
            client.stylize_exr(b"x", model=str(elsewhere / "junk.pth"))
        assert raised.value.code == "unknown_model" and "recognises" in raised.value.message
