"""Colour spaces by any name OCIO accepts, and the space a file declares when the user names none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vst_plugin.colour import DeclaredSpace, declared_colorspace
from vst_plugin.exr import read_exr, write_exr
from vst_plugin.frame import Frame, Part

ROOT = Path(__file__).resolve().parents[1]
VST = str(Path(sys.executable).parent / "vst")
AP0 = (0.7347, 0.2653, 0.0, 1.0, 0.0001, -0.077, 0.32168, 0.33767)
AP1 = (0.713, 0.293, 0.165, 0.83, 0.128, 0.044, 0.32168, 0.33767)


def tagged_plate(path: Path, **attributes: object) -> Path:
    """A 256x256 crop of the sample plate's RGB with the given header attributes."""
    source = read_exr(ROOT / "samples/beachball/beachball.0001.exr").parts[0]
    channels = {name: np.ascontiguousarray(source.channels[name][300:556, 300:556]) for name in "RGB"}
    write_exr(Frame([Part(channels, (0, 0, 255, 255), (0, 0, 255, 255), attributes=attributes)]), path)
    return path


def test_chromaticities_and_names_in_the_header_are_read(tmp_path: Path, shared: Path) -> None:
    assert declared_colorspace(tagged_plate(tmp_path / "ap1.exr", chromaticities=AP1)).name == "ACEScg"
    ap0 = declared_colorspace(tagged_plate(tmp_path / "ap0.exr", chromaticities=AP0))
    assert ap0.name == "ACES2065-1" and "ACES AP0" in ap0.reason
    named = tagged_plate(tmp_path / "named.exr", colorInteropID="lin_ap0_scene")
    assert declared_colorspace(named) == DeclaredSpace("lin_ap0_scene", "named in the file's header")
    assert read_exr(named).parts[0].attributes["colorInteropID"] == "lin_ap0_scene"  # outputs keep it
    odd = (0.75, 0.25, 0.25, 0.75, 0.125, 0.0625, 0.3125, 0.3125)
    assert declared_colorspace(tagged_plate(tmp_path / "odd.exr", chromaticities=odd)) is None
    assert declared_colorspace(shared / "exr/Chromaticities/Rec709.exr") is None  # says nothing: the default
    assert declared_colorspace(ROOT / "samples/beachball/beachball.0001.exr") is None


def test_integer_images_are_not_decided_here(tmp_path: Path) -> None:
    import OpenImageIO as oiio

    png = str(tmp_path / "still.png")
    assert oiio.ImageBuf(np.zeros((8, 8, 3), np.uint8)).write(png)
    assert declared_colorspace(png) is None


def test_render_uses_the_declared_space_and_role_names(server_address: str, tmp_path: Path) -> None:
    plate = tagged_plate(tmp_path / "plate.exr", chromaticities=AP1)

    def render(name: str, *space: str) -> tuple[np.ndarray, str]:
        out = tmp_path / f"{name}.exr"
        done = subprocess.run([VST, "render", str(plate), str(out), "--frames", "1", "--style", "3",
                               "--server", server_address, *space], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return read_exr(out).parts[0].channels["R"], done.stderr

    declared, said = render("declared")
    assert "input colour space ACEScg (the file's chromaticities are ACES AP1 primaries)" in said
    by_role, said = render("role", "--input-colorspace", "scene_linear")  # the built-in config's ACEScg
    assert "input colour space" not in said
    np.testing.assert_array_equal(by_role, declared)
    as_rec709, _ = render("rec709", "--input-colorspace", "lin_rec709")
    assert not np.allclose(as_rec709, declared, atol=1e-3)


@pytest.mark.parametrize("name", ["Kodak 5219"])
def test_unknown_names_are_refused_with_the_ways_to_name_one(server_address: str, tmp_path: Path, name: str) -> None:
    plate = tagged_plate(tmp_path / "plate.exr")
    done = subprocess.run([VST, "render", str(plate), str(tmp_path / "out.exr"), "--frames", "1", "--style", "3",
                           "--server", server_address, "--input-colorspace", name],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert f"unknown colour space {name!r}" in done.stderr and "roles" in done.stderr
    assert not (tmp_path / "out.exr").exists()
