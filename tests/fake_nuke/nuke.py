"""A small stand-in for Nuke's `nuke` module: exactly the calls the vst glue makes (see tests/test_nuke.py).

Behaviour kept real where the glue depends on it: knobs hold values; only known knobs exist on the
built-in node classes (a misspelt knob raises NameError, as in Nuke); knobs may only be touched from
the main thread; `executeInMainThread*` queue work for the main thread, which the test runs with
`process_events`; `execute(write, first, last)` runs the before-frame-render callbacks and "renders"
each frame by copying the EXR file that the Write's upstream Read names (through Groups, via their
Output node, and out of them, via their inputs) to the Write's file pattern; `ProgressTask` records
progress and reports cancelled once told to.
"""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vst_plugin.sequence import frame_path

# ---- knobs ---------------------------------------------------------------------------------------


def _main_thread_only(what: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise AssertionError(f"{what} touched outside Nuke's main thread")


class Knob:
    def __init__(self, name: str, label: str | None = None, value: Any = None):
        self._name, self.label, self._value = name, label, value
        self.tooltip, self.visible, self.range = "", True, None

    def name(self) -> str:
        return self._name

    def value(self) -> Any:
        _main_thread_only(f"knob {self._name}")
        return self._value

    def setValue(self, value: Any) -> bool:  # noqa: N802 - Nuke's names
        _main_thread_only(f"knob {self._name}")
        self._value = value
        return True

    def setTooltip(self, text: str) -> None:  # noqa: N802
        self.tooltip = text

    def setVisible(self, visible: bool) -> None:  # noqa: N802
        self.visible = visible


class Tab_Knob(Knob):  # noqa: N801
    pass


class Text_Knob(Knob):  # noqa: N801
    def __init__(self, name: str, label: str | None = None, text: str = ""):
        super().__init__(name, label, text)


class String_Knob(Knob):  # noqa: N801
    def __init__(self, name: str, label: str | None = None, text: str = ""):
        super().__init__(name, label, text)


class Int_Knob(Knob):  # noqa: N801
    def __init__(self, name: str, label: str | None = None):
        super().__init__(name, label, 0)

    def setRange(self, low: float, high: float) -> None:  # noqa: N802
        self.range = (low, high)


class Double_Knob(Int_Knob):  # noqa: N801
    def setValue(self, value: Any) -> bool:  # noqa: N802
        return super().setValue(float(value))


class Boolean_Knob(Knob):  # noqa: N801
    def __init__(self, name: str, label: str | None = None):
        super().__init__(name, label, False)


class Enumeration_Knob(Knob):  # noqa: N801
    def __init__(self, name: str, label: str, values: list[str]):
        super().__init__(name, label, values[0] if values else "")
        self._values = list(values)

    def values(self) -> list[str]:
        return list(self._values)

    def setValue(self, value: Any) -> bool:  # noqa: N802
        if value not in self._values:
            raise ValueError(f"{value!r} is not one of {self._name}'s values")
        return super().setValue(value)


class PyScript_Knob(Knob):  # noqa: N801
    def __init__(self, name: str, label: str | None = None, command: Any = ""):
        super().__init__(name, label, command)
        self.node: Node | None = None
        self.presses = 0

    def execute(self) -> None:
        _main_thread_only(f"button {self._name}")
        self.presses += 1
        command = self._value
        if callable(command):
            command()
        elif command:
            _context.append(self.node)
            try:
                exec(command, {"nuke": _module()})
            finally:
                _context.pop()


# ---- nodes ---------------------------------------------------------------------------------------

_KNOBS: dict[str, Callable[[], list[Knob]]] = {
    "Write": lambda: [String_Knob("file"), String_Knob("file_type"), String_Knob("channels", text="rgb"),
                      String_Knob("metadata"), Boolean_Knob("autocrop"), String_Knob("datatype"),
                      Boolean_Knob("raw"), Boolean_Knob("create_directories"), Boolean_Knob("disable")],
    "Read": lambda: [String_Knob("file"), Int_Knob("first"), Int_Knob("last"), Int_Knob("origfirst"),
                     Int_Knob("origlast"), Boolean_Knob("raw"), PyScript_Knob("reload"), Boolean_Knob("disable")],
    "Root": lambda: [String_Knob("name"), Int_Knob("first_frame"), Int_Knob("last_frame")],
}


class FrameRange:
    def __init__(self, first: int, last: int):
        self._first, self._last = first, last

    def first(self) -> int:
        return self._first

    def last(self) -> int:
        return self._last


class Node:
    def __init__(self, node_class: str, parent: Group | None):
        self._class, self._parent, self._inputs = node_class, parent, {}
        self._knobs: dict[str, Knob] = {}
        self._name = ""
        for knob in _KNOBS.get(node_class, lambda: [Boolean_Knob("disable")])():
            self.addKnob(knob)
        if parent is not None:
            parent._children.append(self)
            self.setName(f"{node_class}1")

    def Class(self) -> str:  # noqa: N802
        return self._class

    def name(self) -> str:
        return self._name

    def fullName(self) -> str:  # noqa: N802
        _main_thread_only(f"node {self._name}")
        if self._parent is None or self._parent is _root:
            return self._name
        return f"{self._parent.fullName()}.{self._name}"

    def setName(self, name: str, uncollide: bool = True) -> None:  # noqa: N802
        taken = {child._name for child in self._parent._children if child is not self}
        base = name.rstrip("0123456789") or name
        candidate, number = name, 1
        while candidate in taken:
            candidate, number = f"{base}{number}", number + 1
        self._name = candidate

    def knob(self, name: str) -> Knob | None:
        return self._knobs.get(name)

    def knobs(self) -> dict[str, Knob]:
        return dict(self._knobs)

    def __getitem__(self, name: str) -> Knob:
        if name not in self._knobs:
            raise NameError(f"{self._name} has no knob named {name!r}")
        return self._knobs[name]

    def addKnob(self, knob: Knob) -> None:  # noqa: N802
        _main_thread_only(f"node {self._name}")
        if knob.name() in self._knobs:
            raise ValueError(f"{self._class} already has a knob named {knob.name()!r}")
        if isinstance(knob, PyScript_Knob):
            knob.node = self
        self._knobs[knob.name()] = knob

    def removeKnob(self, knob: Knob) -> None:  # noqa: N802
        _main_thread_only(f"node {self._name}")
        del self._knobs[knob.name()]

    def setInput(self, index: int, node: Node | None) -> bool:  # noqa: N802
        self._inputs[index] = node
        return True

    def input(self, index: int) -> Node | None:
        return self._inputs.get(index)

    def dependencies(self) -> list[Node]:
        return [node for _, node in sorted(self._inputs.items()) if node is not None]

    def frameRange(self) -> FrameRange:  # noqa: N802
        if "first" in self._knobs:
            return FrameRange(self._knobs["first"]._value, self._knobs["last"]._value)
        upstream = self.input(0)
        if upstream is not None:
            return upstream.frameRange()
        return FrameRange(_root["first_frame"]._value, _root["last_frame"]._value)

    def showControlPanel(self) -> None:  # noqa: N802
        _main_thread_only(f"node {self._name}")


class Group(Node):
    def __init__(self, node_class: str, parent: Group | None):
        self._children: list[Node] = []
        super().__init__(node_class, parent)

    def node(self, name: str) -> Node | None:
        _main_thread_only(f"group {self._name}")
        return next((child for child in self._children if child._name == name), None)

    def nodes(self) -> list[Node]:
        return list(self._children)

    def __enter__(self) -> Group:
        _current.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _current.pop()


_root = Group("Root", None)
_root._name = "root"
_current: list[Group] = [_root]
_context: list[Node | None] = []


def _make(node_class: str, **knobs: Any) -> Node:
    _main_thread_only(f"creating a {node_class}")
    node = (Group if node_class == "Group" else Node)(node_class, _current[-1])
    for name, value in knobs.items():
        node[name].setValue(value)
    return node


class _Nodes:
    def __getattr__(self, node_class: str) -> Callable[..., Node]:
        return lambda **knobs: _make(node_class, **knobs)


nodes = _Nodes()


def createNode(node_class: str, inpanel: bool = True) -> Node:  # noqa: N802
    return _make(node_class)


def root() -> Group:
    return _root


def thisNode() -> Node | None:  # noqa: N802
    return _context[-1] if _context else None


_frame: list[int] = [1]


def frame() -> int:
    return _frame[-1]


# ---- rendering -----------------------------------------------------------------------------------

_before_frame_render: list[tuple[Callable[[], None], str]] = []
executed: list[tuple[str, int]] = []
"""Every frame `execute` rendered, as (node full name, frame): tests read it."""


_before_render: list[tuple[Callable[[], None], str]] = []


def addBeforeFrameRender(call: Callable[[], None], nodeClass: str = "*") -> None:  # noqa: N802, N803
    _before_frame_render.append((call, nodeClass))


def addBeforeRender(call: Callable[[], None], nodeClass: str = "*") -> None:  # noqa: N802, N803
    _before_render.append((call, nodeClass))


def toNode(name: str) -> Node | None:  # noqa: N802
    group: Node | None = _root
    for part in name.split("."):
        group = group.node(part) if isinstance(group, Group) else None
    return group


def execute(node: Node, first: int, last: int) -> None:
    _main_thread_only("execute")
    _context.append(node)
    try:
        for call, node_class in _before_render:
            if node_class in ("*", node.Class()):
                call()
    finally:
        _context.pop()
    for number in range(first, last + 1):
        _frame.append(number)
        _context.append(node)
        try:
            for call, node_class in _before_frame_render:
                if node_class in ("*", node.Class()):
                    call()
            source = _source_file(node.input(0), number)
            target = Path(frame_path(node["file"]._value, number))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            executed.append((node.fullName(), number))
        finally:
            _context.pop()
            _frame.pop()


def _source_file(node: Node | None, number: int) -> str:
    """The file a Read upstream of `node` shows at `number`, following Groups in and out."""
    while node is not None:
        if node.Class() == "Read":
            if node["disable"]._value:
                raise RuntimeError(f"{node.fullName()}: disabled")
            first, last = node["first"]._value, node["last"]._value
            path = frame_path(node["file"]._value, min(max(number, first), last))
            if not Path(path).is_file():
                raise RuntimeError(f"{node.fullName()}: Read error: {path}: no such file")
            return path
        if isinstance(node, Group) and node.Class() == "Group":
            node = next(child for child in node._children if child.Class() == "Output").input(0)
        elif node.Class() == "Input":
            node = node._parent.input(0)
        else:
            node = node.input(0)
    raise RuntimeError("nothing connected upstream")


# ---- threads and UI -----------------------------------------------------------------------------

_main_queue: queue.Queue = queue.Queue()
messages: list[str] = []


def executeInMainThread(call: Callable[..., Any], args: tuple = (), kwargs: dict | None = None) -> None:  # noqa: N802
    _main_queue.put((call, args, kwargs or {}, None))


def executeInMainThreadWithResult(call: Callable[..., Any], args: tuple = (), kwargs: dict | None = None) -> Any:  # noqa: N802
    if threading.current_thread() is threading.main_thread():
        raise AssertionError("executeInMainThreadWithResult from the main thread deadlocks Nuke")
    box: dict[str, Any] = {"done": threading.Event()}
    _main_queue.put((call, args, kwargs or {}, box))
    box["done"].wait()
    if "error" in box:
        raise box["error"]
    return box["value"]


def process_events(until: Callable[[], bool], timeout: float = 60.0) -> None:
    """Test helper (not Nuke's): run queued main-thread work until `until()` holds and the queue is empty."""
    _main_thread_only("process_events")
    import time

    deadline = time.monotonic() + timeout
    while not (until() and _main_queue.empty()):
        if time.monotonic() > deadline:
            raise TimeoutError("the main thread waited too long")
        try:
            call, args, kwargs, box = _main_queue.get(timeout=0.05)
        except queue.Empty:
            continue
        try:
            value = call(*args, **kwargs)
        except Exception as exc:
            if box is None:
                raise
            box["error"] = exc
        else:
            if box is not None:
                box["value"] = value
        if box is not None:
            box["done"].set()


def message(text: str) -> None:
    _main_thread_only("message")
    messages.append(text)


class ProgressTask:
    """Records progress; `cancel_after` (a class attribute tests set) cancels after that many updates."""

    cancel_after: int | None = None
    tasks: list[ProgressTask] = []

    def __init__(self, title: str):
        self.title, self.progress, self.texts = title, [], []
        ProgressTask.tasks.append(self)

    def setProgress(self, percent: int) -> None:  # noqa: N802
        self.progress.append(percent)

    def setMessage(self, text: str) -> None:  # noqa: N802
        self.texts.append(text)

    def isCancelled(self) -> bool:  # noqa: N802
        return self.cancel_after is not None and len(self.progress) >= self.cancel_after


# ---- menus ---------------------------------------------------------------------------------------


class Menu:
    def __init__(self, name: str):
        self.name, self.items = name, {}

    def addMenu(self, name: str) -> Menu:  # noqa: N802
        return self.items.setdefault(name, Menu(name))

    def addCommand(self, name: str, command: Any) -> None:  # noqa: N802
        self.items[name] = command


_menus: dict[str, Menu] = {}


def menu(name: str) -> Menu:
    return _menus.setdefault(name, Menu(name))


def reset() -> None:
    """Test helper (not Nuke's): an empty script, no callbacks, menus, messages or progress tasks."""
    _root._children.clear()
    _before_frame_render.clear()
    _before_render.clear()
    _menus.clear()
    messages.clear()
    executed.clear()
    ProgressTask.tasks.clear()
    ProgressTask.cancel_after = None
    _root["name"].setValue("")


def _module() -> Any:
    import sys

    return sys.modules[__name__]
