"""The vst Style Transfer node: a Group whose controls come from the server's parameter schema.

Inside the Group: `Input1` feeds the Write `vst_input`, which renders the input as EXR (every
channel, every view, the bounding box as data window, 32-bit float, no colour conversion) into the
node's cache folder; the Read `vst_result` shows the stylized frames from that folder through
`Output1`. Apply (`vst_nuke.apply`) and farm renders (`vst_nuke.farm`) fill the folder through a
`vst_plugin.jobs.SequenceJob`; this module holds what both need. Call its functions from Nuke's main
thread: they read and set knobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nuke
from vst_plugin import Client, ServerUnavailable, VstError
from vst_plugin.jobs import ExrBytes, SequenceJob
from vst_plugin.keys import CLIENT_KEY_ENV, SERVER_KEY_ENV, CurveKeyError, client_curve
from vst_plugin.render import RenderSpec
from vst_plugin.schema import DEFAULT_COLORSPACE, StylizeSettings, default_address

SCHEMA_KNOB = "vst_schema"
"""Hidden knob holding each model's parameter list (JSON); it also marks a Group as a vst node."""
WRITE = "vst_input"
READ = "vst_result"
INPUTS = "input.####.exr"
RESULTS = "vst.####.exr"
"""File names in a node's cache folder: its rendered input and the stylized frames."""
PARAM_PREFIX = "param_"
CONNECT_TIMEOUT = 3.0
"""Seconds a server has to answer `hello` before it counts as down."""
TIMEOUT = 10.0
"""Seconds without any sign of life (replies, heartbeats) during a job before the server counts as gone."""
_CONTROLS = ("model", "colorspace", "highlights", "preroll", "apply", "status")


class NodeError(VstError):
    """The node cannot run as set up (no input, no controls yet); the message says what to do."""


@dataclass(frozen=True)
class Settings:
    """What a job of the node needs, read from its knobs in the main thread."""

    name: str
    """The node's full name: the job's sequence id and the progress bar's title."""
    address: str
    render: RenderSpec
    """The node's render: its input rendered into the cache folder, stylized beside it (frames set per run)."""
    server_key: str = ""
    """The server's public key (Z85 text or server.key file) when it serves with CURVE keys; "" plain."""
    client_key: str = ""
    """This workstation's .key_secret file for such a server."""


def create() -> Any:
    """Menu command: a new vst Style Transfer node, its controls built from the server's schema."""
    group = nuke.createNode("Group", inpanel=False)
    group.setName("vstStyleTransfer")
    with group:
        source = nuke.nodes.Input()
        write = nuke.nodes.Write()
        write.setName(WRITE)
        for knob, value in (("file_type", "exr"), ("channels", "all"), ("metadata", "all metadata"),
                            ("autocrop", False), ("datatype", "32 bit float"), ("raw", True),
                            ("create_directories", True)):
            write[knob].setValue(value)
        write.setInput(0, source)
        read = nuke.nodes.Read()
        read.setName(READ)
        read["raw"].setValue(True)
        nuke.nodes.Output().setInput(0, read)
    group.addKnob(nuke.Tab_Knob("vst", "vst Style Transfer"))
    schema = nuke.String_Knob(SCHEMA_KNOB, "schema", "{}")
    schema.setVisible(False)
    group.addKnob(schema)
    group.addKnob(nuke.String_Knob("server", "server", default_address()))
    group.addKnob(nuke.String_Knob("server_key", "server key", os.environ.get(SERVER_KEY_ENV, "")))
    group.addKnob(nuke.String_Knob("client_key", "client key file", os.environ.get(CLIENT_KEY_ENV, "")))
    button = nuke.PyScript_Knob("refresh", "Refresh from server", "import vst_nuke.node\n"
                                "vst_nuke.node.refresh(nuke.thisNode())")
    button.setTooltip("rebuild the controls from the server's models (after starting it or adding models)")
    group.addKnob(button)
    refresh(group)
    group.showControlPanel()
    return group


def refresh(node: Any) -> None:
    """The Refresh button: rebuild the controls, or say on the node why the server cannot be read."""
    try:
        refresh_controls(node)
    except VstError as exc:
        if "status" not in node.knobs():
            node.addKnob(nuke.Text_Knob("status", "status", ""))
        report(node, f"cannot read the server's models: {exc}")


def refresh_controls(node: Any) -> None:
    """(Re)build the model, parameter, colour and Apply controls from the server, keeping set values.

    The server is asked first: when it does not answer, the node keeps the controls it has.
    """
    with connect(node["server"].value(), *_keys(node)) as client:
        hello, models = client.hello(), [m for m in client.models() if "error" not in m]
    old = {name: knob.value() for name, knob in node.knobs().items()
           if name in _CONTROLS[:4] or name.startswith(PARAM_PREFIX)}
    for name in [name for name in node.knobs() if name in _CONTROLS or name.startswith(PARAM_PREFIX)]:
        node.removeKnob(node[name])
    node[SCHEMA_KNOB].setValue(json.dumps({model["name"]: model["params"] for model in models}))
    _add_controls(node, hello["capabilities"], models)
    for name, value in old.items():
        if name in node.knobs():
            with contextlib.suppress(ValueError):  # a choice the server no longer offers
                node[name].setValue(value)
    node.addKnob(nuke.Text_Knob("status", "status", ""))
    report(node, f"connected to {hello['server']} on {hello['device']}")


def _add_controls(node: Any, capabilities: dict[str, Any], models: list[dict[str, Any]]) -> None:
    names = [model["name"] for model in models]
    model = nuke.Enumeration_Knob("model", "model", names)
    if capabilities["default_model"] in names:
        model.setValue(capabilities["default_model"])
    node.addKnob(model)
    params: dict[str, dict[str, Any]] = {}
    users: dict[str, list[str]] = {}
    for entry in models:
        for param in entry["params"]:
            params.setdefault(param["name"], param)
            users.setdefault(param["name"], []).append(entry["name"])
    for name, param in params.items():
        knob = _param_knob(param)
        knob.setTooltip(f"{param.get('help', '')} (models: {', '.join(users[name])})")
        node.addKnob(knob)
    colour = nuke.Enumeration_Knob("colorspace", "plate colour space", capabilities["colorspaces"])
    if DEFAULT_COLORSPACE in capabilities["colorspaces"]:
        colour.setValue(DEFAULT_COLORSPACE)
    colour.setTooltip("the colour space of the plate in this script (raw: send values unconverted)")
    node.addKnob(colour)
    highlights = nuke.Enumeration_Knob("highlights", "highlights", capabilities["highlights"])
    highlights.setTooltip("values above 1: preserve keeps their energy, compress rolls them off, clamp loses them")
    node.addKnob(highlights)
    preroll = nuke.Int_Knob("preroll", "pre-roll frames")
    preroll.setTooltip("frames stylized and discarded before the first one, so temporal models start settled")
    node.addKnob(preroll)
    node.addKnob(nuke.PyScript_Knob("apply", "Apply", "import vst_nuke.apply\nvst_nuke.apply.apply(nuke.thisNode())"))


def _param_knob(param: dict[str, Any]) -> Any:
    """The control for one schema parameter (docs/protocol.md, `models`)."""
    name, kind, default = PARAM_PREFIX + param["name"], param["type"], param["default"]
    if kind == "float" or kind == "int":
        knob = nuke.Double_Knob(name, param["name"]) if kind == "float" else nuke.Int_Knob(name, param["name"])
        if param.get("min") is not None and param.get("max") is not None:
            knob.setRange(param["min"], param["max"])
    elif kind == "bool":
        knob = nuke.Boolean_Knob(name, param["name"])
    elif kind == "choice":
        knob = nuke.Enumeration_Knob(name, param["name"], list(param["choices"]))
    else:  # string, style_mix: typed text ("7", or a blend "3:0.5,12:0.5")
        knob = nuke.String_Knob(name, param["name"])
        default = str(default)
    knob.setValue(default)
    return knob


def _keys(node: Any) -> tuple[str, str]:
    """The node's server key and client key file ("" for nodes made before these knobs existed)."""
    return tuple(node[name].value() if name in node.knobs() else "" for name in ("server_key", "client_key"))


def connect(address: str, server_key: str = "", client_key: str = "") -> Client:
    """A client of the server at `address`, which answered `hello`; raises ServerUnavailable.

    With a server key the connection uses CURVE keys (vst_plugin/keys.py); the environment's
    VST_SERVER_KEY / VST_CLIENT_KEY fill in what the knobs leave empty.
    """
    try:
        curve = client_curve(server_key or None, client_key or None)
    except CurveKeyError as exc:
        raise ServerUnavailable(f"cannot use the server key: {exc}") from None
    client = Client(address, timeout=CONNECT_TIMEOUT, curve=curve)
    try:
        client.hello()
    except BaseException:
        client.close()
        raise
    client.timeout = TIMEOUT
    return client


def is_vst_node(node: Any) -> bool:
    """True for a vst Style Transfer Group."""
    return node.knob(SCHEMA_KNOB) is not None


def settings(node: Any) -> Settings:
    """Read the node's knobs; raises NodeError when the controls were never built."""
    schema = json.loads(node[SCHEMA_KNOB].value() or "{}")
    if "model" not in node.knobs():
        raise NodeError(f"{node.fullName()} has no controls yet: start the vst server and press Refresh from server")
    model = node["model"].value()
    params = {}
    for param in schema.get(model, []):
        value = node[PARAM_PREFIX + param["name"]].value()
        if param["type"] == "image" and value:  # the picture travels with the request: any server can use it
            try:
                value = Path(value).expanduser().read_bytes()
            except OSError as exc:
                raise NodeError(f"{node.fullName()}: style picture {value}: {exc.strerror or exc}") from None
        params[param["name"]] = int(value) if param["type"] == "int" else value
    settings = StylizeSettings(model, params, node["colorspace"].value(), node["highlights"].value())
    folder = cache_folder(node)
    render = RenderSpec(os.path.join(folder, INPUTS), os.path.join(folder, RESULTS), (), settings,
                        int(node["preroll"].value()))
    return Settings(node.fullName(), node["server"].value(), render, *_keys(node))


def cache_folder(node: Any) -> str:
    """Where the node's frames go: $VST_CACHE, else vst_cache beside the saved script, else the temp folder."""
    script = nuke.root()["name"].value()
    root = os.environ.get("VST_CACHE") or os.path.join(
        os.path.dirname(script) if script else tempfile.gettempdir(), "vst_cache"
    )
    return os.path.join(root, node.fullName().replace(".", "_"))


def aim_internals(node: Any) -> None:
    """Aim the internal Write and Read at the node's cache folder, without reading its controls."""
    folder = cache_folder(node)
    node.node(WRITE)["file"].setValue(os.path.join(folder, INPUTS))
    node.node(READ)["file"].setValue(os.path.join(folder, RESULTS))


def make_job(current: Settings, client: Client, render_input: Callable[[int], None]) -> SequenceJob:
    """The node's sequence job; `render_input(frame)` makes Nuke write that frame's input EXR."""
    return current.render.job(client, load=ExrBytes.load, prepare=render_input, sequence=current.name, cache=True)


def input_range(node: Any) -> tuple[int, int]:
    """First and last frame of the node's input; raises NodeError when nothing is connected."""
    upstream = node.input(0)
    if upstream is None:
        raise NodeError(f"{node.fullName()} has no input: connect the plate to stylize")
    frames = upstream.frameRange()
    return frames.first(), frames.last()


def show(node: Any) -> None:
    """Make the internal Read cover the input's frame range and read its files again."""
    first, last = input_range(node)
    read = node.node(READ)
    for knob, value in (("first", first), ("origfirst", first), ("last", last), ("origlast", last)):
        read[knob].setValue(value)
    read["reload"].execute()


def report(node: Any, text: str) -> None:
    """Show a line in the node's status."""
    if "status" in node.knobs():
        node["status"].setValue(text)
