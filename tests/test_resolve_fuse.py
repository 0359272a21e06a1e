"""The Resolve Fuse (resolve/) under LuaJIT, against a real server, with a fake of the Fuse API.

The Fuse runs in lupa's LuaJIT 2.1, loads pyzmq's bundled libzmq through `ffi` and talks to a real
`vst serve` process on 127.0.0.1. Fusion itself cannot run here: tests/fake_fusion/fusion_fake.lua
implements exactly the Fuse API calls the Fuse makes, and nothing else:

* registration: ``FuRegisterClass(name, CT_Tool, attributes)``;
* controls: ``self:AddInput(label, id, attributes)`` (Text, Number and Image inputs),
  ``self:AddOutput(label, id, attributes)``, ``Input:GetValue(req)`` (``.Value``, or the image),
  ``Input:SetAttrs({LINKS_Name = ...})`` (the Status line), ``Input:SetSource(Text(name), time)`` and
  the ``NotifyChanged(input, param, time)`` event (picking a server model);
* rendering: ``Process(req)``, ``req.Time``, ``req:IsPreCalc()``, ``Output:Set(req, image)`` (nil
  fails the frame), ``self.Status``;
* images: ``Image({IMG_Like, IMG_Depth, IMG_DataWindow, IMG_NoData})``, ``img.Width``, ``img.Height``,
  ``img.DataWindow`` (left, bottom, right, top; right/top exclusive), ``img:GetPixel(x, y, p)``,
  ``img:SetPixel(x, y, p)``, ``Pixel()``;
* ``print`` (the Console).

Plates are crops of the shared Beachball frames (real scene-linear EXR): a small domain of
definition inside a 2048x1556 frame.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from vst_plugin import Client, schema
from vst_plugin.cli import main
from vst_plugin.exr import read_exr
from vst_plugin.frame import Frame, Part
from vst_plugin.install import bundled_libzmq, resolve_plan

lupa = pytest.importorskip("lupa.luajit21")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent / "fake_nuke"))
sys.path.insert(0, str(Path(__file__).parent / "fake_fusion"))

from fuse_tool import AUX, FUSE, FuseTool  # noqa: E402
from plates import crop_plates  # noqa: E402

DEFAULT_COLOURSPACE = "g24_rec709_tx"


@pytest.fixture(scope="module")
def plates(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return crop_plates(shared, tmp_path_factory.mktemp("plates"), range(1, 4))


@pytest.fixture
def fuse_env(server_address: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """VST_SERVER pointing at the test server and VST_LIBZMQ at pyzmq's bundled libzmq."""
    monkeypatch.setenv("VST_SERVER", server_address)
    monkeypatch.setenv("VST_LIBZMQ", str(bundled_libzmq()[0]))
    return server_address


def plate_part(plates: str, number: int) -> Part:
    return read_exr(plates.replace("####", f"{number:04d}")).parts[0]


def rgba_frame(part: Part) -> Frame:
    """What the Fuse sends: R, G, B, A as float32 over the part's windows."""
    channels = {n: part.channels[n].astype(np.float32) for n in "RGBA"}
    return Frame([Part(channels, part.data_window, part.display_window)])


def test_registers_and_fills_the_model_list_from_the_server(fuse_env: str) -> None:
    tool = FuseTool()
    assert tool.fake.registered.name == b"vstStyleTransfer"
    attrs = tool.fake.inputs[b"PickModel"].attrs
    picks = [attrs[i][b"CCS_AddString"].decode() for i in range(1, len(attrs) + 1)]
    assert {"multistyle26", "identity", "arbitrary"} <= set(picks)
    # picking a model writes its name into Model, which is what renders and is saved
    index = picks.index("identity")
    tool.lua.globals().NotifyChanged(tool.fake.inputs[b"PickModel"], tool.lua.table_from({b"Value": index}), 0)
    assert tool.fake.inputs[b"Model"].value == b"identity"


def test_plate_equals_the_python_client_and_vst_render(fuse_env: str, plates: str, tmp_path: Path) -> None:
    part = plate_part(plates, 1)
    tool = FuseTool()
    tool.set("Style", "7")
    tool.connect(part)
    out = tool.render(1)
    assert out is not None, tool.console
    assert tool.status.startswith("Status: frame 1 stylized")
    # the domain of definition (a 96x72 crop of a 2048x1556 frame) is kept; nothing outside it exists
    assert (out.Width, out.Height) == (2048, 1556)
    dod = out.DataWindow
    assert (dod.left, dod.bottom, dod.right, dod.top) == (1000, 1556 - 672, 1096, 1556 - 600)
    styled = tool.planes(out, part)
    # alpha and auxiliary channels untouched (float32 holds the half values exactly)
    for exr, fusion in [("A", "A"), *AUX.items()]:
        assert np.array_equal(styled[fusion], part.channels[exr].astype(np.float32)), fusion
    assert not np.allclose(styled["G"], part.channels["G"].astype(np.float32), atol=1e-2)
    # the same pixels through the Python client
    with Client(fuse_env) as client:
        reference = client.stylize(rgba_frame(part), params={"style": "7", "strength": 1.0},
                                   colorspace=DEFAULT_COLOURSPACE).parts[0]
    for channel in "RGB":
        np.testing.assert_allclose(styled[channel], reference.channels[channel], rtol=0, atol=1e-5)
    # and through `vst render` of the plate file (it writes the plate's half floats)
    assert main(["render", plates, str(tmp_path / "out.####.exr"), "--frames", "1", "--style", "7",
                 "--input-colorspace", DEFAULT_COLOURSPACE, "--server", fuse_env]) == 0
    rendered = read_exr(tmp_path / "out.0001.exr").parts[0]
    for channel in "RGB":
        expected = rendered.channels[channel].astype(np.float32)
        assert np.all(np.abs(styled[channel] - expected) <= 1e-3 * np.maximum(1.0, np.abs(expected))), channel


def test_overscan_domain_of_definition(fuse_env: str, plates: str) -> None:
    """A domain of definition reaching outside the frame (overscan) keeps its place and size."""
    source = plate_part(plates, 2)
    channels = {n: source.channels[n][:40, :56] for n in ("R", "G", "B", "A", "Z")}
    part = Part(channels, (-8, -6, 47, 33), (0, 0, 39, 29))
    tool = FuseTool()
    tool.set("Style", "3:0.5,12:0.5")
    tool.set("Strength", 0.7)
    tool.set("ColourSpace", 2)  # Linear Rec.709
    tool.connect(part)
    out = tool.render(5)
    assert out is not None, tool.console
    dod = out.DataWindow
    assert (dod.left, dod.bottom, dod.right, dod.top) == (-8, -4, 48, 36)
    styled = tool.planes(out, part)
    with Client(fuse_env) as client:
        reference = client.stylize(rgba_frame(part), params={"style": "3:0.5,12:0.5", "strength": 0.7},
                                   colorspace="lin_rec709").parts[0]
    for channel in "RGB":
        np.testing.assert_allclose(styled[channel], reference.channels[channel], rtol=0, atol=1e-5)
    assert np.array_equal(styled["Z"], channels["Z"].astype(np.float32))


@pytest.mark.parametrize("width, height", [(1, 1), (37, 23)])
def test_odd_sizes_and_transparent_pixels(fuse_env: str, plates: str, width: int, height: int) -> None:
    source = plate_part(plates, 3)
    channels = {n: source.channels[n][:height, :width].astype(np.float32) for n in "RGBA"}
    channels["A"][: height // 2] = 0  # a transparent band
    window = (0, 0, width - 1, height - 1)
    part = Part(channels, window, window)
    tool = FuseTool()
    tool.set("Style", "19")
    tool.connect(part)
    out = tool.render(1)
    assert out is not None, tool.console
    styled = tool.planes(out, part)
    with Client(fuse_env) as client:
        reference = client.stylize(rgba_frame(part), params={"style": "19", "strength": 1.0},
                                   colorspace=DEFAULT_COLOURSPACE).parts[0]
    for channel in "RGB":
        np.testing.assert_allclose(styled[channel], reference.channels[channel], rtol=0, atol=1e-5)
    assert np.array_equal(styled["A"], channels["A"])


def test_server_down_fails_the_frame_visibly_without_hanging(fuse_env: str, plates: str,
                                                             free_address) -> None:
    tool = FuseTool()
    down = free_address()
    tool.set("Server", down)
    tool.connect(plate_part(plates, 1))
    started = time.monotonic()
    out = tool.render(1)
    elapsed = time.monotonic() - started
    assert out is None  # the documented failure: no output image, never a black frame
    assert elapsed < 6, elapsed
    assert tool.status.startswith("ERROR at frame 1: no vst server answers at " + down)
    assert "vst serve" in tool.status
    assert any(down in line and "ERROR" in line for line in tool.console)
    # the server comes back (the test server): the same tool renders again
    tool.set("Server", fuse_env)
    assert tool.render(1) is not None


def server_pid(address: str) -> int:
    """The process id of the `vst serve --bind ADDRESS` started by this test session (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in command and address.encode() in command:
            return int(entry.name)
    raise LookupError(f"no vst serve process binds {address}")


def test_a_server_that_stops_answering_fails_the_frame_after_the_timeout(fuse_env: str, plates: str) -> None:
    """The real server frozen (SIGSTOP) mid-session: no replies, no heartbeats; the frame fails, Resolve does not."""
    tool = FuseTool()
    tool.connect(plate_part(plates, 1))
    assert tool.render(1) is not None, tool.console
    pid = server_pid(fuse_env)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert tool.render(2) is None
        elapsed = time.monotonic() - started
        timed_out = tool.status
        tool.lua.globals().self.Status = b"Abort"  # the user cancels a render: waiting stops at once
        started = time.monotonic()
        assert tool.render(3) is None
        assert time.monotonic() - started < 1 and "cancelled" in tool.status
        tool.lua.globals().self.Status = b"OK"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert 9 < elapsed < 14, elapsed
    assert "no vst server answers" in timed_out and "nothing for 10 s" in timed_out
    assert tool.render(3) is not None, tool.console  # the server thawed: the tool reconnects


def test_bad_parameter_shows_the_servers_message(fuse_env: str, plates: str) -> None:
    tool = FuseTool()
    tool.connect(plate_part(plates, 1))
    tool.set("Style", "99")
    assert tool.render(1) is None
    assert tool.status.startswith("ERROR at frame 1: ") and "[bad_param]" in tool.status
    assert "99" in tool.status
    assert tool.console and "[bad_param]" in tool.console[-1]
    tool.set("Model", "no_such_model")
    tool.set("Style", "")
    assert tool.render(1) is None
    assert "[unknown_model]" in tool.status and "no_such_model" in tool.status
    tool.set("Model", "")
    tool.set("Style", "7")
    assert tool.render(1) is not None


def test_style_image_is_sent_as_its_bytes(fuse_env: str, plates: str, tmp_path: Path) -> None:
    import OpenImageIO as oiio

    part = plate_part(plates, 2)
    picture = tmp_path / "paintover.png"  # a picture the server has no folder for: only its bytes reach it
    rgb = np.clip(np.stack([part.channels[c].astype(np.float32) for c in "RGB"], axis=-1), 0, 1) ** (1 / 2.2)
    assert oiio.ImageBuf(np.ascontiguousarray(rgb)).write(str(picture), "uint8")
    tool = FuseTool()
    tool.connect(plate_part(plates, 1))
    tool.set("StyleImage", str(picture))
    out = tool.render(1)
    assert out is not None, tool.console
    styled = tool.planes(out, plate_part(plates, 1))
    with Client(fuse_env, timeout=60) as client:
        reference = client.stylize(rgba_frame(plate_part(plates, 1)), model="arbitrary",
                                   params={"style_image": picture.read_bytes(), "strength": 1.0},
                                   colorspace=DEFAULT_COLOURSPACE).parts[0]
    for channel in "RGB":
        np.testing.assert_allclose(styled[channel], reference.channels[channel], rtol=0, atol=1e-5)
    tool.set("StyleImage", str(tmp_path / "missing.png"))
    assert tool.render(1) is None
    assert "cannot read the style image" in tool.status and "missing.png" in tool.status


def test_temporal_sequence_matches_the_python_client(fuse_env: str, plates: str) -> None:
    parts = {n: plate_part(plates, n) for n in (1, 2, 3)}
    tool = FuseTool()
    tool.set("Style", "7")
    tool.set("Temporal", 0.8)
    fuse = {}
    for number in (1, 2, 3, 1):
        tool.connect(parts[number])
        out = tool.render(number)
        assert out is not None, tool.console
        fuse[number] = tool.planes(out, parts[number])  # the last frame 1 is a jump back: starts anew
    with Client(fuse_env) as client:
        fields = {"params": {"style": "7", "strength": 1.0}, "colorspace": DEFAULT_COLOURSPACE}
        temporal = {
            n: client.stylize(rgba_frame(parts[n]), sequence="reference", frame_number=n,
                              temporal={"strength": 0.8}, **fields).parts[0]
            for n in (1, 2, 3)
        }
        alone = client.stylize(rgba_frame(parts[3]), **fields).parts[0]
    for number in (2, 3):
        for channel in "RGB":
            np.testing.assert_allclose(fuse[number][channel], temporal[number].channels[channel], atol=1e-5)
    assert np.abs(fuse[3]["G"] - alone.channels["G"]).max() > 1e-3  # the blend had an effect
    np.testing.assert_allclose(fuse[1]["G"], temporal[1].channels["G"], atol=1e-5)


def test_no_input_fails_with_a_message(fuse_env: str) -> None:
    tool = FuseTool()
    assert tool.render(1) is None
    assert tool.status == "ERROR at frame 1: the tool has no input image: connect its Input"


def test_precalc_is_answered_without_the_server(fuse_env: str, plates: str, free_address) -> None:
    tool = FuseTool()
    tool.set("Server", free_address())
    tool.connect(plate_part(plates, 1))
    started = time.monotonic()
    out = tool.render(1, precalc=True)
    assert time.monotonic() - started < 0.5
    assert out is not None and out.NoData
    dod = out.DataWindow
    assert (out.Width, out.Height, dod.left, dod.right) == (2048, 1556, 1000, 1096)
    assert tool.status == "" and tool.console == []


def test_installed_fuse_finds_its_modules_and_libzmq(fuse_env: str, plates: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`vst install resolve --target`: the copied Fuse loads its modules and libzmq from its own folder."""
    for item in resolve_plan(tmp_path):
        item.target.parent.mkdir(parents=True, exist_ok=True)
        item.target.write_bytes(item.source.read_bytes())
    monkeypatch.delenv("VST_LIBZMQ")
    tool = FuseTool(tmp_path / "Fuses" / "vst" / FUSE.name)
    tool.connect(plate_part(plates, 1))
    assert tool.render(1) is not None, tool.console


def test_edit_page_macro_wraps_the_fuse(fuse_env: str) -> None:
    tool = FuseTool()
    lua = tool.lua
    macro = lua.execute(b"""
        local path = ...
        ordered = function() return function(t) return t end end
        local function typed(kind) return function(t) t.kind = kind; return t end end
        MacroOperator, InstanceInput, InstanceOutput = typed("macro"), typed("in"), typed("out")
        GroupInfo, OperatorInfo = typed("group"), typed("op")
        Fuse = setmetatable({}, {__index = function(_, name) return typed("Fuse." .. name) end})
        local f = assert(io.open(path, "rb")); local text = f:read("*a"); f:close()
        return assert(loadstring("return " .. text))()
    """, str(ROOT / "resolve" / "vst Style Transfer.setting").encode())
    operator = next(iter(macro.Tools.values()))
    tools = dict(operator.Tools.items())
    inner = tools[b"vstStyleTransfer1"]
    assert inner.kind == b"Fuse." + tool.fake.registered.name
    inputs = dict(operator.Inputs.items())
    assert inputs[b"MainInput1"].Source == b"Input"
    assert operator.Outputs.MainOutput1.Source == b"Output"
    controls = set(tool.fake.inputs.keys())
    for name, entry in inputs.items():
        assert entry.SourceOp == b"vstStyleTransfer1" and entry.Source in controls, name


def test_lua_protocol_constants_match_the_schema() -> None:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True, encoding=None)
    lua.execute(b'package.path = "' + str(ROOT / "resolve").encode() + b'/?.lua;" .. package.path')
    wire = lua.eval(b'require("vst_wire")')
    assert wire.PROTOCOL_VERSION == schema.PROTOCOL_VERSION
    assert wire.DEFAULT_ADDRESS.decode() == schema.DEFAULT_ADDRESS
    assert {code.decode() for code in wire.ERROR_CODES} == set(schema.ERROR_CODES)


@pytest.mark.parametrize("value", [
    {"v": 1, "id": 7, "op": "stylize", "params": {"style": "3:0.5,12:0.5", "strength": 0.8}},
    {"ints": [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53, -1, -32, -33, -128, -129,
              -32768, -32769, -2**31, -2**31 - 1, -2**53]},
    {"floats": [0.5, -0.0, 1e-310, 3.4028234663852886e38, 1.7976931348623157e308, -2.5e-7, 0.1]},
    {"text": "é" * 40, "long": "x" * 70000, "nested": [[1, [2, {"a": None}]], True, False], "empty": {}},
])
def test_lua_msgpack_round_trips_with_python_msgpack(value) -> None:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True, encoding=None)
    lua.execute(b'package.path = "' + str(ROOT / "resolve").encode() + b'/?.lua;" .. package.path')
    pack = lua.eval(b'require("vst_msgpack")')
    # Python -> Lua -> Python
    data = msgpack.packb(value, use_bin_type=True)
    again = pack.encode(pack.decode(data))
    decoded = msgpack.unpackb(again, raw=False, strict_map_key=False)
    expected = {k: v for k, v in value.items()}
    if "nested" in expected:  # Lua tables cannot hold nil: a nil map value disappears
        expected["nested"] = [[1, [2, {}]], True, False]
    assert decoded == expected
    # float32, which the Lua encoder never writes, and bin decode too
    assert pack.decode(b"\xca\x3f\xc0\x00\x00") == 1.5
    assert pack.decode(msgpack.packb(b"\x00\xff", use_bin_type=True)) == b"\x00\xff"
    # a string marked binary (a style picture's bytes) encodes as bin, at every length
    for raw in (b"\x00\xff", b"\x89PNG" * 100, b"\x01" * 70000):
        assert msgpack.unpackb(pack.encode(pack.binary(raw))) == raw
