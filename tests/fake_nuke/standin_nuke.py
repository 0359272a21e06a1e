"""A stand-in for the `nuke` executable in farm job tests (Nuke cannot run here).

It takes Nuke's command line as the farm steps give it (`-x [-X WRITE] SCRIPT A-B`), refuses anything
else with Nuke's exit code 1, loads the vst glue (nuke/init.py) on the fake `nuke` module exactly as
Nuke starts up, builds the script's comp and renders it with the fake's `execute`, which runs the
glue's render callbacks. Loading a saved script does not ask the server for the node's controls, so
neither does the stand-in.

The "script" is a JSON description of one comp: {"plate": Read file pattern, "first": F, "last": L,
"comp": final Write file pattern}: Read -> vst Style Transfer -> Write.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "nuke")]

import vst_nuke.node  # noqa: E402

import nuke  # noqa: E402  (the fake)


def main(argv: list[str]) -> int:
    args = list(argv)
    if "-x" not in args:
        print("stand-in nuke: expected -x (execute the script)", file=sys.stderr)
        return 1
    args.remove("-x")
    only = None
    if "-X" in args:
        index = args.index("-X")
        only = args[index + 1]
        del args[index : index + 2]
    if len(args) != 2:
        print(f"stand-in nuke: expected SCRIPT and a frame range, got {args}", file=sys.stderr)
        return 1
    script, frames = args
    first, _, last = frames.partition("-")
    comp = json.loads(Path(script).read_text())
    nuke.reset()
    nuke.root()["name"].setValue(script)
    runpy.run_path(str(ROOT / "nuke/init.py"))
    vst_nuke.node.refresh = lambda node: None  # a loaded script keeps its saved controls
    plate = nuke.nodes.Read(file=comp["plate"], first=comp["first"], last=comp["last"])
    node = vst_nuke.node.create()
    node.setInput(0, plate)
    final = nuke.nodes.Write(file=comp["comp"])
    final.setInput(0, node)
    target = final if only is None else nuke.toNode(only)
    if target is None or target.Class() != "Write":
        print(f"stand-in nuke: -X {only}: no such Write node", file=sys.stderr)
        return 1
    try:
        nuke.execute(target, int(first), int(last or first))
    except RuntimeError as exc:
        print(f"stand-in nuke: {exc}", file=sys.stderr)
        return 1
    print(f"stand-in nuke: rendered {target.fullName()} frames {frames}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
