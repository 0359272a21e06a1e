"""The Nuke glue (nuke/) against a fake `nuke` module, with the real sequence job and a real server.

The fake (tests/fake_nuke/nuke.py) implements exactly the calls the glue makes, and nothing else:

* nodes: ``nuke.createNode(cls, inpanel=)``, ``nuke.nodes.Input/Write/Read/Output()``, ``nuke.root()``,
  ``nuke.thisNode()``, ``nuke.frame()``; on nodes ``knob``, ``knobs``, ``[name]``, ``addKnob``,
  ``removeKnob``, ``setName``, ``name``, ``fullName``, ``setInput``, ``input``, ``dependencies``,
  ``frameRange().first()/last()``, ``showControlPanel``; on Groups ``with group:`` and ``node(name)``;
* knobs: ``Tab_Knob``, ``String_Knob``, ``Text_Knob``, ``Int_Knob``, ``Double_Knob``, ``Boolean_Knob``,
  ``Enumeration_Knob``, ``PyScript_Knob``; ``value``, ``setValue``, ``setTooltip``, ``setVisible``,
  ``setRange``, ``execute`` (buttons, the Read's ``reload``);
* rendering and threads: ``nuke.execute(node, first, last)``, ``nuke.addBeforeFrameRender(call,
  nodeClass=)``, ``nuke.executeInMainThread``, ``nuke.executeInMainThreadWithResult``,
  ``nuke.ProgressTask(title)`` with ``setProgress``, ``setMessage``, ``isCancelled``;
* UI: ``nuke.message``, ``nuke.menu(name).addMenu(name).addCommand(name, callable)``.

Knobs can only be touched from the main thread (as in Nuke), which runs queued work in
`nuke.process_events`, a test helper.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "nuke"))
sys.path.insert(0, str(Path(__file__).parent / "fake_nuke"))

import vst_nuke.apply  # noqa: E402
import vst_nuke.farm  # noqa: E402
import vst_nuke.node  # noqa: E402
from plates import crop_plates  # noqa: E402

import nuke  # noqa: E402
from vst_plugin import Client  # noqa: E402
from vst_plugin.exr import read_exr  # noqa: E402
from vst_plugin.sequence import frame_path  # noqa: E402


@pytest.fixture(scope="module")
def plates(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return crop_plates(shared, tmp_path_factory.mktemp("plates"), range(1, 5))


@pytest.fixture
def script(server_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty fake Nuke session with the vst menu and callbacks loaded, caching under tmp_path."""
    nuke.reset()
    monkeypatch.setenv("VST_SERVER", server_address)
    monkeypatch.setenv("VST_CACHE", str(tmp_path / "cache"))
    runpy.run_path(str(ROOT / "nuke/init.py"))
    runpy.run_path(str(ROOT / "nuke/menu.py"))
    yield nuke
    for _, client, _ in vst_nuke.farm._jobs.values():
        client.close()
    vst_nuke.farm._jobs.clear()


def new_node(plates: str, last: int = 3):
    """A plate Read (frames 1-last) and a vst node made from the menu, style 7."""
    plate = nuke.nodes.Read(file=plates, first=1, last=last)
    node = nuke.menu("Nodes").items["vst"].items["vst Style Transfer"]()
    node.setInput(0, plate)
    node["param_style"].setValue("7")
    return plate, node


def press_apply(node) -> None:
    node["apply"].execute()
    thread = vst_nuke.apply._running[node.fullName()]
    nuke.process_events(until=lambda: not thread.is_alive())


def server_frames(address: str) -> int:
    with Client(address) as client:
        return client.stats()["frames"]


def settle(address: str) -> None:
    """Wait until the server has finished every frame it was given (abandoned ones included)."""
    with Client(address) as client:
        while client.stats()["queued"]:
            time.sleep(0.05)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def assert_stylized(path: Path, plate: str) -> None:
    source, styled = read_exr(plate).parts[0], read_exr(path).parts[0]
    assert (styled.data_window, styled.display_window) == (source.data_window, source.display_window)
    assert list(styled.channels) == list(source.channels)
    for name in ("A", "Z", "left.A", "forward.right.v", "disparityL.x", "whitebarmask.right.mask"):
        assert same_bits(styled.channels[name], source.channels[name]), name
    assert not np.array_equal(styled.channels["G"], source.channels["G"])


def test_init_and_menu_register_the_node_and_the_render_callback(script) -> None:
    assert nuke.menu("Nodes").items["vst"].items["vst Style Transfer"] is vst_nuke.node.create
    assert nuke._before_frame_render == [(vst_nuke.farm.before_frame_render, "Write")]
    assert nuke._before_render == [(vst_nuke.farm.before_render, "Write")]


def test_node_controls_come_from_the_server_schema(script, plates: str, server_address: str) -> None:
    _, node = new_node(plates)
    assert node["server"].value() == server_address
    assert {"multistyle26", "identity"} <= set(node["model"].values())
    assert node["model"].value() == "multistyle26"
    assert isinstance(node["param_style"], nuke.String_Knob) and "3:0.5,12:0.5" in node["param_style"].tooltip
    assert isinstance(node["param_strength"], nuke.Double_Knob)
    assert node["param_strength"].range == (0.0, 1.0) and node["param_strength"].value() == 1.0
    assert "lin_rec709" in node["colorspace"].values() and node["colorspace"].value() == "lin_rec709"
    assert node["highlights"].values() == ["preserve", "compress", "clamp"]
    assert isinstance(node["apply"], nuke.PyScript_Knob) and node["status"].value().startswith("connected to vst")
    write, read = node.node("vst_input"), node.node("vst_result")
    assert (write["file_type"].value(), write["channels"].value(), write["metadata"].value()) == (
        "exr", "all", "all metadata")
    assert write["autocrop"].value() is False and write["raw"].value() and read["raw"].value()
    assert write.input(0).Class() == "Input" and node.node("Output1").input(0) is read


def test_apply_renders_the_range_then_only_what_changed(
    script, plates: str, server_address: str, tmp_path: Path
) -> None:
    plate, node = new_node(plates)
    start = server_frames(server_address)
    press_apply(node)
    cache = tmp_path / "cache" / node.fullName()
    assert node["status"].value() == "frames 1-3 done (3 stylized, 0 unchanged)"
    for number in (1, 2, 3):
        assert_stylized(cache / f"vst.{number:04d}.exr", frame_path(plates, number))
    read = node.node("vst_result")
    assert read["file"].value() == str(cache / "vst.####.exr")
    assert (read["first"].value(), read["last"].value(), read["reload"].presses) == (1, 3, 1)
    assert nuke.ProgressTask.tasks[-1].progress[-1] == 100 and not nuke.messages
    assert server_frames(server_address) == start + 3

    press_apply(node)
    assert node["status"].value() == "frames 1-3 done (0 stylized, 3 unchanged)"
    node["param_strength"].setValue(0.5)
    press_apply(node)
    assert node["status"].value() == "frames 1-3 done (3 stylized, 0 unchanged)"
    changed = tmp_path / "changed"
    changed.mkdir()
    for number, source in ((1, 1), (2, 4), (3, 3)):
        (changed / f"plate.{number:04d}.exr").write_bytes(Path(frame_path(plates, source)).read_bytes())
    plate["file"].setValue(str(changed / "plate.####.exr"))
    press_apply(node)
    assert node["status"].value() == "frames 1-3 done (1 stylized, 2 unchanged)"
    assert server_frames(server_address) == start + 3 + 3 + 1


def test_cancel_stops_the_job_and_leaves_no_partial_files(
    script, plates: str, server_address: str, tmp_path: Path
) -> None:
    _, node = new_node(plates, last=4)
    nuke.ProgressTask.cancel_after = 1
    start = server_frames(server_address)
    press_apply(node)
    assert node["status"].value().startswith("cancelled: frames 1-4 partly done (1 stylized")
    cache = tmp_path / "cache" / node.fullName()
    assert sorted(p.name for p in cache.glob("vst.*")) == ["vst.0001.exr"]
    assert not [p.name for p in cache.iterdir() if ".tmp-" in p.name]
    assert server_frames(server_address) - start <= 2
    assert not nuke.messages
    settle(server_address)  # the abandoned frame must not count in later tests


def test_a_server_that_is_down_reaches_the_node_and_the_user(
    script, plates: str, free_address, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vst_nuke.node, "CONNECT_TIMEOUT", 0.5)
    _, node = new_node(plates)
    node["server"].setValue(free_address())
    press_apply(node)
    assert node["status"].value().startswith(f"ERROR: no vst server answers at {node['server'].value()}")
    assert len(nuke.messages) == 1 and "vst serve" in nuke.messages[0] and node.name() in nuke.messages[0]
    node["refresh"].execute()
    assert node["status"].value().startswith("cannot read the server's models: no vst server answers")
    assert node["param_style"].value() == "7"  # the controls stay


def test_a_node_made_without_a_server_says_how_to_get_its_controls(
    script, free_address, server_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vst_nuke.node, "CONNECT_TIMEOUT", 0.5)
    monkeypatch.setenv("VST_SERVER", free_address())
    node = vst_nuke.node.create()
    assert "model" not in node.knobs() and "refresh" in node.knobs()
    assert node["status"].value().startswith("cannot read the server's models: no vst server answers")
    node.setInput(0, nuke.nodes.Read(file="/nowhere/plate.####.exr", first=1, last=1))
    assert vst_nuke.apply.apply(node) is None
    assert "press Refresh from server" in nuke.messages[-1]
    node["server"].setValue(server_address)
    node["refresh"].execute()
    assert "model" in node.knobs() and node["status"].value().startswith("connected to vst")


def test_headless_render_stylizes_frames_on_demand_with_preroll(
    script, plates: str, server_address: str, tmp_path: Path
) -> None:
    _, node = new_node(plates)
    node["preroll"].setValue(1)
    final = nuke.nodes.Write(file=str(tmp_path / "final" / "comp.####.exr"))
    final.setInput(0, node)
    start = server_frames(server_address)
    nuke.execute(final, 2, 3)  # what `nuke -x script.nk 2-3` does
    cache = tmp_path / "cache" / node.fullName()
    for number in (2, 3):
        delivered = tmp_path / "final" / f"comp.{number:04d}.exr"
        assert delivered.read_bytes() == (cache / f"vst.{number:04d}.exr").read_bytes()
        assert_stylized(delivered, frame_path(plates, number))
    assert server_frames(server_address) == start + 3  # frame 1 pre-rolled once, then 2 and 3
    assert sorted(p.name for p in cache.glob("vst.*")) == ["vst.0002.exr", "vst.0003.exr"]
    # frame 2's input is rendered first (the cache needs it), then pre-roll frame 1's, then frame 3's
    assert [frame for name, frame in nuke.executed if name.endswith("vst_input")] == [2, 1, 3]

    nuke.execute(final, 2, 3)  # a second render finds its frames in the cache
    assert server_frames(server_address) == start + 3

    node["param_style"].setValue("99")
    with pytest.raises(RuntimeError, match=r"vstStyleTransfer: frame 1 \(pre-roll\): .*\[bad_param\]"):
        nuke.execute(final, 2, 3)
    assert node["status"].value().startswith("ERROR: frame 1 (pre-roll): style: style 99 does not exist")
