"""`vst install resolve|nuke`: put the host plug-ins where DaVinci Resolve and Nuke look for them.

Resolve: the Fuse, its Lua modules and the libzmq shared library bundled in this environment's pyzmq
wheel (with the libraries beside it, e.g. libsodium) go into `<Fuses>/vst/`; the Edit-page macro goes
into `Templates/Edit/Effects/vst/`. Folders, from Blackmagic's documents:

* Fuses: the Fuse SDK guide ("Fusion Fuse SDK", 2022, Installation): macOS
  `~/Library/Application Support/Blackmagic Design/DaVinci Resolve/Support/Fusion/Fuses`, Windows
  `C:\\ProgramData\\Blackmagic Design\\DaVinci Resolve\\Support\\Fusion\\Fuses`, Linux
  `~/.local/share/DaVinciResolve/Fusion/Fuses` (printed as `/.local/share/...`, read here as the home
  folder's).
* Edit-page effects: the DaVinci Resolve User Manual ("Converting Fusion Compositions to Edit
  Effects"): macOS `/Library/Application Support/Blackmagic Design/DaVinci Resolve/Fusion/Templates/
  Edit/Effects`, Windows `C:\\ProgramData\\Blackmagic Design\\DaVinci Resolve\\Fusion\\Templates\\Edit\\
  Effects`, Linux `/opt/resolve/Fusion/Templates/Edit/Effects` (system folders: may need
  administrator rights).

Nuke: the plug-in path is registered in `~/.nuke/init.py` (`nuke.pluginAddPath` of this checkout's
`nuke/` folder), as nuke/README.md describes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from vst_plugin.client import VstError

REPOSITORY = Path(__file__).resolve().parents[1]
RESOLVE_SOURCES = ("vst_style_transfer.fuse", "vst_wire.lua", "vst_msgpack.lua", "vst_planes.lua")
MACRO = "vst Style Transfer.setting"
LIBZMQ_NAMES = {"Linux": "vst_libzmq.so", "Darwin": "vst_libzmq.dylib", "Windows": "vst_libzmq.dll"}
"""Name of the copied libzmq beside the Fuse; the Fuse looks for exactly these."""
APP_STORE_CONTAINER = Path("~/Library/Containers/com.blackmagic-design.DaVinciResolveAppStore").expanduser()
NUKE_LINE = "nuke.pluginAddPath({path!r})  # vst Style Transfer (vst install nuke)\n"


class InstallError(VstError):
    """The plug-in cannot be installed as asked; the message says what to do."""


@dataclass(frozen=True)
class Copy:
    """One file to copy."""

    source: Path
    target: Path


def bundled_libzmq() -> tuple[Path, list[Path]]:
    """The libzmq shared library inside this environment's pyzmq wheel, and the libraries beside it.

    Wheels keep it in `site-packages/pyzmq.libs/` (Linux, Windows) or `zmq/.dylibs/` (macOS); the
    libraries beside it (libsodium, the MSVC runtime) are what it links against.
    """
    import zmq

    package = Path(zmq.__file__).resolve().parent
    for folder in (package.parent / "pyzmq.libs", package / ".dylibs"):
        found = sorted(folder.glob("libzmq*")) if folder.is_dir() else []
        if found:
            others = sorted(p for p in folder.iterdir() if p.is_file() and p != found[0])
            return found[0], others
    raise InstallError(
        f"the pyzmq in {package} has no bundled libzmq (it was built against a system libzmq). Install pyzmq "
        "from a wheel (`pip install --force-reinstall --only-binary pyzmq pyzmq`), or set VST_LIBZMQ for "
        "Resolve to a libzmq 4 shared library."
    )


def resolve_folders(system: str | None = None, home: Path | None = None) -> tuple[Path, Path]:
    """Resolve's Fuses folder and Edit-page effects folder for `system` (platform.system() names)."""
    system = system or platform.system()
    home = home or Path.home()
    if system == "Darwin":
        return (home / "Library/Application Support/Blackmagic Design/DaVinci Resolve/Support/Fusion/Fuses",
                Path("/Library/Application Support/Blackmagic Design/DaVinci Resolve/Fusion/Templates/Edit/Effects"))
    if system == "Windows":
        data = Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "Blackmagic Design" / "DaVinci Resolve"
        return data / "Support/Fusion/Fuses", data / "Fusion/Templates/Edit/Effects"
    if system == "Linux":
        return home / ".local/share/DaVinciResolve/Fusion/Fuses", Path("/opt/resolve/Fusion/Templates/Edit/Effects")
    raise InstallError(f"DaVinci Resolve does not run on {system}; use --target DIR to copy the files somewhere")


def resolve_plan(target: Path | None = None, system: str | None = None) -> list[Copy]:
    """The copies `vst install resolve` makes; with `target`, everything goes under that folder."""
    system = system or platform.system()
    if target is not None:
        fuses, effects = target / "Fuses", target / "Templates/Edit/Effects"
    else:
        fuses, effects = resolve_folders(system)
    folder = fuses / "vst"
    plan = [Copy(REPOSITORY / "resolve" / name, folder / name) for name in RESOLVE_SOURCES]
    libzmq, beside = bundled_libzmq()
    plan.append(Copy(libzmq, folder / LIBZMQ_NAMES.get(system, libzmq.name)))
    plan.extend(Copy(path, folder / path.name) for path in beside)
    plan.append(Copy(REPOSITORY / "resolve" / MACRO, effects / "vst" / MACRO))
    return plan


def copy_all(plan: list[Copy], dry_run: bool) -> None:
    """Copy each file (creating folders), or only print what would be copied."""
    for item in plan:
        print(f"{'would copy' if dry_run else 'copy'} {item.source} -> {item.target}")
        if dry_run:
            continue
        try:
            item.target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item.source, item.target)
        except PermissionError:
            raise InstallError(
                f"no permission to write {item.target}: run the command as an administrator (sudo on Linux and "
                "macOS), or use --target DIR and copy the folders yourself"
            ) from None


def install_resolve(target: Path | None, dry_run: bool) -> None:
    """Install the Fuse, its modules, libzmq and the Edit-page macro."""
    plan = resolve_plan(target)
    copy_all(plan, dry_run)
    if target is None and platform.system() == "Darwin" and APP_STORE_CONTAINER.exists():
        print(f"note: the Mac App Store build of Resolve is sandboxed ({APP_STORE_CONTAINER}); it may not read "
              "these folders nor load libzmq. Use the Blackmagic download of Resolve.", file=sys.stderr)
    print("Restart DaVinci Resolve: the effect is `vst Style Transfer` (Fusion page: Add Tool > vst; Edit page: "
          "Effects > Fusion Effects). Start `vst serve` first.")


def install_nuke(target: Path | None, dry_run: bool) -> None:
    """Register this checkout's nuke/ folder in the user's init.py (`target` is the .nuke folder)."""
    folder = target if target is not None else Path.home() / ".nuke"
    init = folder / "init.py"
    line = NUKE_LINE.format(path=str(REPOSITORY / "nuke"))
    existing = init.read_text(encoding="utf-8") if init.is_file() else ""
    if line in existing:
        print(f"{init} already adds {REPOSITORY / 'nuke'} to Nuke's plug-in path")
    elif dry_run:
        print(f"would add to {init}: {line.strip()}")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        with init.open("a", encoding="utf-8") as stream:
            stream.write(("\n" if existing and not existing.endswith("\n") else "") + line)
        print(f"added to {init}: {line.strip()}")
    print(f"Then, with Nuke's own Python: python -m pip install --target {REPOSITORY / 'nuke' / 'site-packages'} "
          "pyzmq msgpack (numpy too if Nuke lacks it), and restart Nuke.")


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `install` subcommand to `vst`."""
    parser = commands.add_parser("install", help="install the Resolve effect or the Nuke node")
    parser.add_argument("host", choices=("resolve", "nuke"))
    parser.add_argument("--dry-run", action="store_true", help="print what would be copied or changed")
    parser.add_argument("--target", type=Path, default=None, metavar="DIR",
                        help="install under DIR instead of the host's folders (resolve: DIR/Fuses and "
                        "DIR/Templates/Edit/Effects; nuke: DIR is the .nuke folder)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run `vst install`."""
    (install_resolve if args.host == "resolve" else install_nuke)(args.target, args.dry_run)
    return 0
