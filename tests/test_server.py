"""A real `vst serve` process on loopback, real ZeroMQ sockets, real EXR files from ../shared."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from vst_plugin import Client, Frame, Part, ServerError
from vst_plugin.exr import decode_exr, read_exr

VST = str(Path(sys.executable).parent / "vst")


def bits(plane: np.ndarray) -> np.ndarray:
    """The raw bits of a plane, so NaN payloads compare too."""
    return plane.view({2: np.uint16, 4: np.uint32}[plane.dtype.itemsize])


def raw_request(address: str, frames: list[bytes]) -> dict:
    """Send frames on a fresh DEALER and return the decoded reply header."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    try:
        socket.send_multipart(frames)
        assert socket.poll(10_000), "the server did not reply to a malformed message"
        return msgpack.unpackb(socket.recv_multipart()[0])
    finally:
        socket.close()


def test_hello_describes_server_and_limits(server_address: str) -> None:
    with Client(server_address) as client:
        hello = client.hello()
    assert hello["protocol"] == 1 and hello["device"] == "cpu"
    capabilities = hello["capabilities"]
    assert {"lin_rec709", "ACEScg", "srgb_tx", "raw"} <= set(capabilities["colorspaces"])
    assert capabilities["highlights"] == ["preserve", "compress", "clamp"]
    assert capabilities["limits"]["max_channels"] == 512
    assert capabilities["exr_bytes"] is True


def test_models_carry_a_typed_parameter_schema(server_address: str) -> None:
    with Client(server_address) as client:
        models = {model["name"]: model for model in client.models()}
    assert {"identity", "multistyle26"} <= set(models)
    params = {param["name"]: param for param in models["multistyle26"]["params"]}
    assert params["style"]["type"] == "style_mix" and len(params["style"]["choices"]) == 26
    assert params["strength"] == {**params["strength"], "type": "float", "min": 0.0, "max": 1.0, "default": 1.0}


def test_singlepart_beachball_keeps_every_other_channel(server_address: str, shared: Path) -> None:
    plate = read_exr(shared / "exr/Beachball/singlepart.0001.exr")
    data = (shared / "exr/Beachball/singlepart.0001.exr").read_bytes()
    with Client(server_address, timeout=60) as client:
        result = decode_exr(client.stylize_exr(data, params={"style": 19}))
    (part,), (original,) = result.parts, plate.parts
    assert list(part.channels) == list(original.channels)
    assert (part.data_window, part.display_window) == (original.data_window, original.display_window)
    assert part.attributes["compression"] == "zips"
    stylized = {"R", "G", "B", "left.R", "left.G", "left.B"}  # both stereo views, nothing else
    for name, plane in original.channels.items():
        assert part.channels[name].dtype == np.float16
        same = np.array_equal(bits(part.channels[name]), bits(plane))
        assert same != (name in stylized), name
    assert np.isfinite(part.channels["R"]).all()


def test_multipart_beachball_round_trips_as_raw_planes(server_address: str, shared: Path) -> None:
    plate = read_exr(shared / "exr/Beachball/multipart.0001.exr")
    with Client(server_address, timeout=60) as client:
        result = client.stylize(plate, params={"style": "3:0.5,12:0.5"}, sequence="bb", frame_number=1)
    assert [p.name for p in result.parts] == [p.name for p in plate.parts]
    for part, original in zip(result.parts, plate.parts, strict=True):
        assert (part.data_window, part.view) == (original.data_window, original.view)
        for name, plane in original.channels.items():
            same = np.array_equal(bits(part.channels[name]), bits(plane))
            assert same == (name not in "RGB" or not part.name.startswith("rgba")), (part.name, name)


@pytest.mark.parametrize("index", range(1, 17))
def test_display_window_layouts_are_preserved(server_address: str, shared: Path, index: int) -> None:
    path = shared / f"exr/DisplayWindow/t{index:02d}.exr"
    with Client(server_address, timeout=60) as client:
        result = decode_exr(client.stylize_exr(path.read_bytes(), params={"style": index}))
    original = read_exr(path)
    assert result.parts[0].data_window == original.parts[0].data_window
    assert result.parts[0].display_window == original.parts[0].display_window
    assert result.parts[0].attributes.get("PixelAspectRatio") == original.parts[0].attributes.get("PixelAspectRatio")
    assert not np.array_equal(result.parts[0].channels["G"], original.parts[0].channels["G"])


def test_nan_and_inf_pixels_come_back_and_do_not_spread(server_address: str, shared: Path) -> None:
    plate = read_exr(shared / "exr/TestImages/BrightRingsNanInf.exr")
    with Client(server_address, timeout=60) as client:
        result = client.stylize(plate)
    for name in "RGB":
        before, after = plate.parts[0].channels[name], result.parts[0].channels[name]
        bad = ~np.isfinite(before)
        assert bad.any()
        assert np.array_equal(bits(after[bad]), bits(before[bad]))
        assert np.isfinite(after[~bad]).all()


def test_highlights_are_kept_by_default_and_clamped_on_request(server_address: str, shared: Path) -> None:
    plate = read_exr(shared / "exr/TestImages/BrightRings.exr")
    assert float(plate.parts[0].channels["R"].max()) > 4
    with Client(server_address, timeout=60) as client:
        kept = client.stylize(plate)
        clamped = client.stylize(plate, highlights="clamp")
        compressed = client.stylize(plate, highlights="compress")
    assert float(kept.parts[0].channels["R"].max()) > 4
    assert float(compressed.parts[0].channels["R"].max()) > 1
    assert float(clamped.parts[0].channels["R"].max()) <= 1.0


@pytest.mark.parametrize("policy", ["preserve", "compress", "clamp"])
@pytest.mark.parametrize("space", ["lin_rec709", "ACEScg", "srgb_tx"])
def test_strength_zero_gives_the_plate_back(server_address: str, shared: Path, policy: str, space: str) -> None:
    from server.colour import ColourSpaces

    part = read_exr(shared / "exr/ScanLines/Desk.exr").parts[0]
    linear = np.stack([part.channels[name][300:364, 200:296] for name in "RGB"], axis=-1).astype(np.float32)
    encoded = ColourSpaces().from_linear(linear, space)  # the plate as it would be in that colour space
    crop = {name: np.ascontiguousarray(encoded[..., i]).astype(np.float16) for i, name in enumerate("RGB")}
    frame = Frame([Part(crop, (0, 0, 95, 63), (0, 0, 95, 63))])
    with Client(server_address, timeout=60) as client:
        result = client.stylize(frame, params={"strength": 0}, colorspace=space, highlights=policy)
    inside = np.ones(linear.shape[:2], bool)
    if policy == "clamp":  # only pixels whose linear Rec.709 values were inside 0..1 survive clamping
        inside = ((linear >= 0) & (linear <= 1)).all(axis=-1)
        assert inside.mean() > 0.1
    for name in "RGB":
        before = crop[name].astype(np.float32)[inside]
        after = result.parts[0].channels[name].astype(np.float32)[inside]
        np.testing.assert_allclose(after, before, rtol=2e-3, atol=2e-3)


def test_a_frame_without_colour_gets_an_actionable_error(server_address: str, shared: Path) -> None:
    data = (shared / "exr/TestImages/WideFloatRange.exr").read_bytes()
    with Client(server_address) as client, pytest.raises(ServerError) as raised:
        client.stylize_exr(data)
    assert raised.value.code == "bad_param"
    assert "no R, G, B layer" in str(raised.value) and "channels: G" in str(raised.value)


def test_every_damaged_file_gets_an_error_and_the_server_keeps_serving(server_address: str, shared: Path) -> None:
    damaged = sorted(p for p in (shared / "exr/Damaged").iterdir() if p.name != "README.rst")
    assert len(damaged) >= 185
    with Client(server_address, timeout=60) as client:
        pending = [client.submit_exr(path.read_bytes(), model="identity") for path in damaged]
        codes = []
        for item in pending:
            with pytest.raises(ServerError) as raised:
                client.result(item)
            codes.append(raised.value.code)
        assert set(codes) <= {"bad_exr", "too_large", "bad_param"}
        assert codes.count("bad_exr") > 150
        assert client.hello()["protocol"] == 1


@pytest.mark.parametrize(
    ("header", "payload", "code"),
    [
        (b"\xc1\xc1", [], "bad_request"),
        ({"v": 2, "id": 1, "op": "hello"}, [], "version"),
        ({"v": 1, "id": 1, "op": "explode"}, [], "unknown_op"),
        ({"v": 1, "id": 1, "op": "stylize"}, [], "bad_request"),
        ({"v": 1, "id": 1, "op": "stylize", "exr": True}, [], "bad_frame"),
        ({"v": 1, "id": 1, "op": "stylize", "frame": {"parts": [{"data_window": [0, 0, 3, 3],
          "display_window": [0, 0, 3, 3], "channels": [{"name": "R", "type": "half"}]}]}}, [b"12"], "bad_frame"),
        ({"v": 1, "id": 1, "op": "stylize", "frame": {"parts": [{"data_window": [0, 0, 99999, 99999],
          "display_window": [0, 0, 3, 3], "channels": [{"name": "R", "type": "half"}]}]}}, [b""], "too_large"),
        ({"v": 1, "id": 1, "op": "stylize", "model": "no-such-model", "exr": True}, [b"x"], "unknown_model"),
        ({"v": 1, "id": 1, "op": "stylize", "colorspace": "Kodak 5219", "exr": True}, [b"x"], "bad_param"),
        ({"v": 1, "id": 1, "op": "stylize", "params": [1], "exr": True}, [b"x"], "bad_request"),
        ({"v": 1, "id": 1, "op": "reset"}, [], "bad_request"),
        ({"v": 1, "id": 1, "op": "unload"}, [], "bad_request"),
    ],
)
def test_malformed_messages_get_error_replies(server_address: str, header, payload, code) -> None:
    packed = header if isinstance(header, bytes) else msgpack.packb(header)
    reply = raw_request(server_address, [packed, *payload])
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    with Client(server_address) as client:
        assert client.ping() >= 0


def test_bad_style_names_the_valid_range(server_address: str, shared: Path) -> None:
    plate = read_exr(shared / "exr/DisplayWindow/t01.exr")
    with Client(server_address) as client, pytest.raises(ServerError) as raised:
        client.stylize(plate, params={"style": 40})
    assert raised.value.code == "bad_param" and "25" in raised.value.message


def test_pings_are_answered_while_a_frame_is_computed(server_address: str) -> None:
    rng = np.random.default_rng(3)
    big = {name: rng.random((1024, 1024), dtype=np.float32) for name in "RGB"}
    frame = Frame([Part(big, (0, 0, 1023, 1023), (0, 0, 1023, 1023))])
    with Client(server_address, timeout=60) as client, Client(server_address) as other:
        pending = client.submit(frame)
        deadline = time.monotonic() + 30
        while other.stats()["queued"] == 0:  # wait until the server has received the frame
            assert time.monotonic() < deadline
        other.ping()
        assert other.stats()["queued"] >= 1  # the frame is still in flight while the ping was answered
        result = client.result(pending)
    assert result.parts[0].channels["R"].shape == (1024, 1024)


def test_many_clients_at_once_get_their_own_replies(server_address: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one_client(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        planes = {name: rng.random((64, 80), dtype=np.float32).astype(np.float16) for name in "RGBA"}
        frame = Frame([Part(planes, (0, 0, 79, 63), (0, 0, 79, 63))])
        with Client(server_address, timeout=60) as client:
            pending = [client.submit(frame, model="identity", frame_number=i) for i in range(5)]
            results = [client.result(item) for item in reversed(pending)]
        return all(np.array_equal(r.parts[0].channels["G"], planes["G"]) for r in results)

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(one_client, range(6)))


def test_reset_and_unload(server_address: str) -> None:
    planes = {name: np.full((8, 8), 0.5, np.float16) for name in "RGB"}
    frame = Frame([Part(planes, (0, 0, 7, 7), (0, 0, 7, 7))])
    with Client(server_address, timeout=60) as client:
        assert client.reset("shot") is False
        client.stylize(frame, sequence="shot", frame_number=1001)
        assert client.reset("shot") is True
        assert client.unload("multistyle26") is True
        assert all(m["name"] != "multistyle26" for m in client.stats()["models_loaded"])
        assert client.unload("multistyle26") is False


def test_sigterm_finishes_frames_in_flight(tmp_path: Path, free_address) -> None:
    address = free_address()
    process = subprocess.Popen([VST, "serve", "--bind", address, "--device", "cpu"], stderr=subprocess.PIPE)
    try:
        rng = np.random.default_rng(4)
        planes = {name: rng.random((512, 512), dtype=np.float32) for name in "RGB"}
        frame = Frame([Part(planes, (0, 0, 511, 511), (0, 0, 511, 511))])
        with Client(address, timeout=60) as client:
            client.hello()
            first = client.submit(frame)
            second = client.submit(frame, params={"style": 5})
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            assert client.result(first).parts[0].channels["R"].shape == (512, 512)
            assert client.result(second).parts[0].channels["R"].shape == (512, 512)
        assert process.wait(60) == 0
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.4:5555"])
def test_serve_refuses_to_listen_beyond_loopback(address: str) -> None:
    done = subprocess.run([VST, "serve", "--bind", address], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "loopback" in done.stderr


def test_client_reports_a_missing_server_clearly(free_address) -> None:
    from vst_plugin import ServerUnavailable

    address = free_address()
    with Client(address, timeout=1.5, heartbeat=0.3) as client, pytest.raises(ServerUnavailable) as raised:
        client.hello()
    assert "vst serve" in str(raised.value) and address in str(raised.value)


def test_host_side_library_does_not_import_torch() -> None:
    code = "import sys, vst_plugin, vst_plugin.protocol, vst_plugin.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"

