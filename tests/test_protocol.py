"""The wire protocol module: envelopes, frames as planes, limits before allocation."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from vst_plugin import protocol
from vst_plugin.frame import Frame, FrameLimits, Part, colour_layers


def small_frame() -> Frame:
    rng = np.random.default_rng(0)
    rgba = {name: rng.random((3, 5), dtype=np.float32).astype(np.float16) for name in "RGBA"}
    rgba["Z"] = rng.random((3, 5), dtype=np.float32)
    ids = {"id": np.arange(8, dtype=np.uint32).reshape(2, 4)}
    return Frame(
        [
            Part(rgba, (10, 20, 14, 22), (0, 0, 99, 99), name="rgba", view="left", attributes={"compression": "zip"}),
            Part(ids, (-2, -1, 1, 0), (0, 0, 99, 99), name="ids"),
        ]
    )


def test_frame_round_trip_through_wire_is_exact() -> None:
    frame = small_frame()
    header = protocol.request("stylize", 7, frame=protocol.frame_header(frame))
    planes = [memoryview(plane) for plane in protocol.frame_planes(frame)]
    message = protocol.decode_request([protocol.pack(header), *planes])
    rebuilt = protocol.parse_frame(message.header["frame"], message.payload, FrameLimits())
    assert message.id == 7 and message.op == "stylize"
    for original, part in zip(frame.parts, rebuilt.parts, strict=True):
        assert list(part.channels) == list(original.channels)
        assert part.data_window == original.data_window and part.display_window == original.display_window
        assert (part.name, part.view, part.attributes) == (original.name, original.view, original.attributes)
        for name, plane in original.channels.items():
            assert part.channels[name].dtype == plane.dtype
            assert np.array_equal(part.channels[name], plane)


def test_parse_frame_does_not_copy_pixels() -> None:
    frame = small_frame()
    planes = protocol.frame_planes(frame)
    buffers = [memoryview(plane) for plane in planes]
    rebuilt = protocol.parse_frame(protocol.frame_header(frame), buffers, FrameLimits())
    assert np.shares_memory(rebuilt.parts[0].channels["R"], planes[0])


def test_limits_are_checked_before_payload_sizes() -> None:
    frame = small_frame()
    header = protocol.frame_header(frame)
    header["parts"][0]["data_window"] = [0, 0, 99_999, 99_999]
    with pytest.raises(protocol.ProtocolError) as raised:
        protocol.parse_frame(header, [], FrameLimits())
    assert raised.value.code == "too_large"
    assert "100000x100000" in raised.value.message


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h, p: p.pop(), "bad_frame"),
        (lambda h, p: p.__setitem__(0, memoryview(b"123")), "bad_frame"),
        (lambda h, p: h["parts"][0]["channels"][0].__setitem__("type", "double"), "bad_frame"),
        (lambda h, p: h["parts"][0].__setitem__("data_window", [0, 0, "a", 1]), "bad_request"),
        (lambda h, p: h["parts"][0]["channels"].append({"name": "R", "type": "half"}), "bad_frame"),
        (lambda h, p: h.__setitem__("parts", [{}] * 65), "too_large"),
    ],
)
def test_inconsistent_frames_are_refused_with_a_code(mutate, code) -> None:
    frame = small_frame()
    header = protocol.frame_header(frame)
    payload = [memoryview(plane) for plane in protocol.frame_planes(frame)]
    mutate(header, payload)
    with pytest.raises(protocol.ProtocolError) as raised:
        protocol.parse_frame(header, payload, FrameLimits())
    assert raised.value.code == code


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([], "bad_request"),
        ([b"\xc1not msgpack"], "bad_request"),
        ([msgpack.packb([1, 2])], "bad_request"),
        ([msgpack.packb({"v": 99, "id": 1, "op": "hello"})], "version"),
        ([msgpack.packb({"v": 1, "id": -4, "op": "hello"})], "bad_request"),
        ([msgpack.packb({"v": 1, "id": 1, "op": "explode"})], "unknown_op"),
    ],
)
def test_malformed_requests_raise_protocol_errors(frames, code) -> None:
    with pytest.raises(protocol.ProtocolError) as raised:
        protocol.decode_request(frames)
    assert raised.value.code == code


def test_error_reply_keeps_the_request_id_when_known() -> None:
    reply = protocol.error_reply({"id": 12, "op": "stylize"}, "bad_param", "no")
    assert reply == {"v": 1, "id": 12, "op": "stylize", "ok": False, "error": {"code": "bad_param", "message": "no"}}
    assert protocol.error_reply(None, "bad_request", "x")["id"] == -1


def test_changed_planes_replace_only_their_channels() -> None:
    frame = small_frame()
    new_r = np.full((3, 5), 2.0, np.float16)
    changed = {(0, "R"): new_r}
    header = protocol.changed_header(changed)
    result = protocol.apply_changed(frame, header, [memoryview(p) for p in protocol.changed_planes(changed)])
    assert np.array_equal(result.parts[0].channels["R"], new_r)
    assert result.parts[0].channels["G"] is frame.parts[0].channels["G"]
    assert result.parts[1].channels["id"] is frame.parts[1].channels["id"]
    assert frame.parts[0].channels["R"][0, 0] != 2.0  # the input frame is not modified


def test_colour_layers_follow_views_and_leave_aovs_alone() -> None:
    plane = np.zeros((2, 2), np.float16)
    names = ["R", "G", "B", "A", "left.R", "left.G", "left.B", "diffuse.R", "diffuse.G", "diffuse.B"]
    views = {"multiView": ("right", "left")}
    part = Part({name: plane for name in names}, (0, 0, 1, 1), (0, 0, 1, 1), attributes=views)
    frame = Frame([part])
    found = {(layer.rgb, layer.alpha) for layer in colour_layers(frame)}
    assert found == {(("R", "G", "B"), "A"), (("left.R", "left.G", "left.B"), None)}
    explicit = colour_layers(frame, ["diffuse"])
    assert [layer.rgb for layer in explicit] == [("diffuse.R", "diffuse.G", "diffuse.B")]


@pytest.mark.parametrize("value", [1.0, True, "1", None, [1]])
def test_only_the_integer_one_is_version_one(value) -> None:
    with pytest.raises(protocol.ProtocolError) as raised:
        protocol.decode_request([msgpack.packb({"v": value, "id": 1, "op": "ping"})])
    assert raised.value.code == "version"
