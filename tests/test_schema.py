"""The request schema: typed fields with checks, agreement with docs/protocol.md, and a host side free of torch."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vst_plugin import schema
from vst_plugin.schema import ProtocolError, StylizeRequest, StylizeSettings, TemporalSettings

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = (ROOT / "docs/protocol.md").read_text()


def section(title: str) -> str:
    """The text of a markdown section, up to the next heading of the same or a higher level."""
    heading = re.search(rf"^(#+) {re.escape(title)}$", PROTOCOL, re.M)
    assert heading, f"docs/protocol.md has no section {title!r}"
    body = PROTOCOL[heading.end():]
    following = re.search(rf"^#{{1,{len(heading.group(1))}}} ", body, re.M)
    return body[: following.start()] if following else body


def table(text: str) -> dict[str, list[str]]:
    """First-column names (backticked, comma separated) of a markdown table -> the row's other cells."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for name in re.findall(r"`([^`]+)`", cells[0]):
            rows[name] = cells[1:]
    return rows


def test_error_codes_agree_with_the_document() -> None:
    rows = table(section("Error codes"))
    assert list(rows) == list(schema.ERROR_CODES)
    for code, meaning in schema.ERROR_CODES.items():
        assert rows[code][0] == meaning, code


def test_envelope_and_ops_agree_with_the_document() -> None:
    rows = table(section("Header"))
    assert list(rows)[:3] == [item.name for item in schema.ENVELOPE]
    assert re.findall(r"`(\w+)`", rows["op"][-1]) == list(schema.OPS)
    headings = re.findall(r"^### `(\w+)`", section("Operations"), re.M)
    assert headings == list(schema.OPS)


def test_stylize_fields_agree_with_the_document() -> None:
    rows = table(section("`stylize`"))
    documented = [name for name in rows if name in {f.name for f in schema.REQUEST_FIELDS["stylize"]}]
    assert sorted(documented) == sorted(f.name for f in schema.REQUEST_FIELDS["stylize"])
    for item in schema.REQUEST_FIELDS["stylize"]:
        if isinstance(item.default, (bool, str)):
            assert json.dumps(item.default).strip('"') in rows[item.name][0], item.name
    temporal = re.search(r"`\{([^}]*)\}`", rows["temporal"][1]).group(1)
    assert [name.strip() for name in temporal.split(",")] == [f.name for f in schema.TEMPORAL_FIELDS]
    for policy in schema.HIGHLIGHT_POLICIES:
        assert f"`{policy}`" in section("`stylize`")
    for preset in schema.FLOW_PRESETS:
        assert f"`{preset}`" in section("`stylize`")


@pytest.mark.parametrize("op", schema.OPS)
def test_every_request_and_reply_field_is_documented_under_its_op(op: str) -> None:
    text = section(f"`{op}`")
    for item in schema.REQUEST_FIELDS[op]:
        assert f"`{item.name}" in text, f"{op} request field {item.name} is not in docs/protocol.md"
    for name in schema.REPLY_FIELDS[op]:
        assert f"`{name}" in text, f"{op} reply field {name} is not in docs/protocol.md"


def test_settings_classes_hold_exactly_the_schema_fields() -> None:
    assert [f.name for f in dataclasses.fields(StylizeSettings)] == [f.name for f in schema.SETTINGS_FIELDS]
    assert [f.name for f in dataclasses.fields(TemporalSettings)] == [f.name for f in schema.TEMPORAL_FIELDS]
    for item in schema.TEMPORAL_FIELDS:
        assert getattr(TemporalSettings(), item.name) == item.default


def test_settings_round_trip_through_the_wire() -> None:
    settings = StylizeSettings("arbitrary", {"style_mix": 0.3}, "ACEScg", "compress", ("rgba", "left"), False, 256,
                               TemporalSettings(0.6, "medium", "off", "bw", "fw", False))
    header = {"v": 1, "id": 1, "op": "stylize", **settings.to_wire(), "sequence": "s", "frame_number": 4}
    request = StylizeRequest.from_wire(header)
    assert request == StylizeRequest(settings, "s", 4, False)
    assert StylizeRequest.from_wire({}).settings == StylizeSettings()


def test_cache_keys_of_settings_without_new_fields_stay_as_they_were() -> None:
    # the text that jobs.py hashed for its cache keys before the schema existed
    assert StylizeSettings("multistyle26", {"style": "7"}).canonical() == (
        '{"colorspace":"lin_rec709","highlights":"preserve","layers":null,"model":"multistyle26",'
        '"params":{"style":"7"},"temporal":null}'
    )
    assert StylizeSettings(temporal=TemporalSettings(0.8)).canonical().endswith('"temporal":{"strength":0.8}}')


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"tile": True}, "bad_request", "'tile' must be an integer"),
        ({"tile": 0}, "bad_request", "positive"),
        ({"premultiplied": 1}, "bad_request", "true or false"),
        ({"params": {1: 2}}, "bad_request", "'params' must be a map"),
        ({"layers": []}, "bad_request", "non-empty list"),
        ({"highlights": "soft"}, "bad_param", "one of preserve, compress, clamp"),
        ({"temporal": {"strength": 2}}, "bad_param", "in 0..1"),
        ({"temporal": {"strength": float("inf")}}, "bad_param", "a number"),
        ({"temporal": {"strength": 0.5, "speed": 1}}, "bad_param", "unknown temporal option"),
        ({"temporal": {1: 0.5}}, "bad_request", "string keys"),
        ({"temporal": {"strength": 0.5, "preset": ["fast"]}}, "bad_param", "'preset' must be a string"),
        ({"temporal": {"strength": 0.5}}, "bad_request", "needs a 'sequence'"),
        ({"sequence": 3}, "bad_request", "'sequence' must be a string"),
        ({"frame_number": 1.0}, "bad_request", "'frame_number' must be an integer"),
    ],
)
def test_wrong_fields_get_the_code_the_reply_carries(fields: dict, code: str, words: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        StylizeRequest.from_wire({"v": 1, "id": 2, "op": "stylize", **fields})
    assert raised.value.code == code and words in raised.value.message
    assert raised.value.header["id"] == 2


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ({"v": 1.0, "id": 1, "op": "ping"}, "version"),
        ({"v": True, "id": 1, "op": "ping"}, "version"),
        ({"v": 1, "id": True, "op": "ping"}, "bad_request"),
        ({"v": 1, "id": 2**63, "op": "ping"}, "bad_request"),
        ({"v": 1, "id": -1, "op": "ping"}, "bad_request"),
        ({"v": 1, "id": 1, "op": "stylise"}, "unknown_op"),
    ],
)
def test_envelope_is_strict(header: dict, code: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        schema.read_envelope(header)
    assert raised.value.code == code


def test_client_options_are_checked_against_the_schema() -> None:
    assert schema.stylize_fields({"model": None, "temporal": TemporalSettings(0.5), "sequence": "s"}) == {
        "temporal": {"strength": 0.5}, "sequence": "s",
    }
    with pytest.raises(TypeError, match="unknown stylize option"):
        schema.stylize_fields({"colourspace": "ACEScg"})


HOST_IMPORTS = """
import pkgutil, importlib, sys, vst_plugin
names = [m.name for m in pkgutil.walk_packages(vst_plugin.__path__, "vst_plugin.")]
for name in names:
    importlib.import_module(name)
print(len(names), sorted(m for m in ("torch", "server", "cv2") if m in sys.modules))
"""


def test_the_host_library_imports_neither_torch_nor_the_server() -> None:
    done = subprocess.run([sys.executable, "-c", HOST_IMPORTS], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.split(" ", 1)
    assert int(count) >= 9 and loaded.strip() == "[]"


def test_the_schema_and_the_model_code_load_without_zeromq() -> None:
    probe = ("import sys, vst_plugin.schema, server.models\n"
             "print(sorted(m for m in ('zmq', 'msgpack') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
