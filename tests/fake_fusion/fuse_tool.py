"""Runs the Resolve Fuse in lupa's LuaJIT with the fake Fuse API (fusion_fake.lua): one tool instance."""

from __future__ import annotations

from pathlib import Path

import lupa.luajit21 as lupa
import numpy as np

from vst_plugin.frame import Part

FUSE = Path(__file__).resolve().parents[2] / "resolve" / "vst_style_transfer.fuse"
FAKE = Path(__file__).resolve().parent
AUX = {"Z": "Z", "forward.left.u": "VectorX", "forward.left.v": "VectorY"}
"""EXR channels given to the Fuse as Fusion auxiliary channels."""


class FuseTool:
    """One tool instance: its own LuaJIT state with the fake Fuse API, the Fuse loaded and created."""

    def __init__(self, fuse: Path = FUSE):
        self.lua = lupa.LuaRuntime(unpack_returned_tuples=True, encoding=None)
        self.lua.execute(b'package.path = "' + str(FAKE).encode() + b'/?.lua;" .. package.path')
        self.fake = self.lua.eval(b'require("fusion_fake")')
        self.lua.globals().loadfile(str(fuse).encode())()
        self.lua.globals().Create()

    def set(self, control: str, value: str | float) -> None:
        self.fake.inputs[control.encode()].value = value.encode() if isinstance(value, str) else value

    def connect(self, part: Part) -> None:
        """Give the tool a Fusion image made from an EXR part (display window at 0, 0)."""
        width, height = part.display_window[2] + 1, part.display_window[3] + 1
        x0, y0, x1, y1 = part.data_window
        names = [n for n in ("R", "G", "B", "A") if n in part.channels] + [AUX[n] for n in AUX if n in part.channels]
        exr_names = {fusion: exr for exr, fusion in AUX.items()}
        data = {n.encode(): np.flipud(part.channels[exr_names.get(n, n)]).astype(np.float32).tobytes()
                for n in names}
        image = self.fake.image(width, height, x0, height - 1 - y1, x1 + 1, height - y0,
                                self.lua.table_from([n.encode() for n in names]), self.lua.table_from(data))
        self.fake.inputs[b"Input"].image = image

    def render(self, time_: float, precalc: bool = False):
        """Run Process at `time_`; returns the output image (None when the frame failed)."""
        count = len(self.fake.outputs)
        self.lua.globals().Process(self.fake.request(time_, precalc))
        assert len(self.fake.outputs) == count + 1, "Process did not set its output"
        image = self.fake.outputs[count + 1].image
        return image if image else None

    def planes(self, image, reference: Part) -> dict[str, np.ndarray]:
        """The output image's channels as EXR-ordered float32 planes over the reference's data window."""
        x0, y0, x1, y1 = reference.data_window
        shape = (y1 - y0 + 1, x1 - x0 + 1)
        return {name.decode(): np.flipud(np.frombuffer(self.fake.plane(image, name), np.float32).reshape(shape))
                for name in image.channels.values()}

    @property
    def status(self) -> str:
        log = list(self.fake.status_log.values())
        return log[-1].decode() if log else ""

    @property
    def console(self) -> list[str]:
        return [line.decode() for line in self.fake.console.values()]
