"""`vst install resolve|nuke`: what is copied where, --dry-run, --target."""

from __future__ import annotations

from pathlib import Path

import pytest

from vst_plugin import install
from vst_plugin.cli import main


def test_resolve_dry_run_prints_every_copy_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["install", "resolve", "--dry-run", "--target", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in (*install.RESOLVE_SOURCES, install.MACRO):
        assert name in out
    assert str(tmp_path / "Fuses" / "vst" / install.LIBZMQ_NAMES["Linux"]) in out
    assert not any(tmp_path.iterdir())


def test_resolve_target_copies_the_fuse_modules_libzmq_and_macro(tmp_path: Path) -> None:
    assert main(["install", "resolve", "--target", str(tmp_path)]) == 0
    folder = tmp_path / "Fuses" / "vst"
    for name in install.RESOLVE_SOURCES:
        assert (folder / name).read_bytes() == (install.REPOSITORY / "resolve" / name).read_bytes()
    libzmq, beside = install.bundled_libzmq()
    assert (folder / install.LIBZMQ_NAMES["Linux"]).read_bytes() == libzmq.read_bytes()
    for path in beside:  # what libzmq links against (libsodium) sits beside it
        assert (folder / path.name).is_file()
    assert (tmp_path / "Templates" / "Edit" / "Effects" / "vst" / install.MACRO).is_file()


def test_resolve_folders_follow_blackmagics_documents(tmp_path: Path) -> None:
    fuses, effects = install.resolve_folders("Darwin", tmp_path)
    assert fuses == tmp_path / "Library/Application Support/Blackmagic Design/DaVinci Resolve/Support/Fusion/Fuses"
    resolve = Path("/Library/Application Support/Blackmagic Design/DaVinci Resolve")
    assert effects == resolve / "Fusion/Templates/Edit/Effects"
    fuses, effects = install.resolve_folders("Linux", tmp_path)
    assert (fuses, effects) == (tmp_path / ".local/share/DaVinciResolve/Fusion/Fuses",
                                Path("/opt/resolve/Fusion/Templates/Edit/Effects"))
    fuses, effects = install.resolve_folders("Windows", tmp_path)
    assert fuses.parts[-4:] == ("DaVinci Resolve", "Support", "Fusion", "Fuses")
    assert effects.parts[-5:] == ("DaVinci Resolve", "Fusion", "Templates", "Edit", "Effects")


def test_nuke_adds_the_plugin_path_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "init.py").write_text("import nuke")
    assert main(["install", "nuke", "--dry-run", "--target", str(tmp_path)]) == 0
    assert (tmp_path / "init.py").read_text() == "import nuke"
    for _ in range(2):
        assert main(["install", "nuke", "--target", str(tmp_path)]) == 0
    text = (tmp_path / "init.py").read_text()
    assert text.startswith("import nuke\n") and text.count("nuke.pluginAddPath(") == 1
    assert repr(str(install.REPOSITORY / "nuke")) in text
    assert "already adds" in capsys.readouterr().out
