"""Built-in styles by name, `vst models` listing them, and `vst sheet` through a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import OpenImageIO as oiio

from vst_plugin.exr import read_exr, write_exr
from vst_plugin.frame import Frame, Part

ROOT = Path(__file__).resolve().parents[1]
VST = str(Path(sys.executable).parent / "vst")


def vst(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([VST, *args], capture_output=True, text=True, timeout=300)


def crop(path: Path, size: int = 128) -> Path:
    """A size x size RGBA crop of the sample plate (the ball's edge: alpha 0 and 1)."""
    source = read_exr(ROOT / "samples/beachball/beachball.0001.exr").parts[0]
    channels = {c: np.ascontiguousarray(source.channels[c][350 : 350 + size, 300 : 300 + size]) for c in "RGBA"}
    write_exr(Frame([Part(channels, (0, 0, size - 1, size - 1), (0, 0, size - 1, size - 1))]), path)
    return path


def test_models_lists_the_styles_by_index_and_name(server_address: str) -> None:
    done = vst("models", "--server", server_address)
    assert done.returncode == 0, done.stderr
    assert "styles: 0 golden_pastel, 1 yellow_outline," in done.stdout and "19 night_swirl" in done.stdout


def test_a_style_name_renders_like_its_index(server_address: str, tmp_path: Path) -> None:
    plate = str(crop(tmp_path / "plate.exr"))
    outputs = {}
    for style in ("night_swirl:0.5,3:0.5", "19:0.5,vivid_abstract:0.5"):
        out = tmp_path / f"{len(outputs)}.exr"
        done = vst("render", plate, str(out), "--frames", "1", "--style", style, "--server", server_address)
        assert done.returncode == 0, done.stderr
        outputs[style] = read_exr(out).parts[0].channels["R"]
    first, second = outputs.values()
    np.testing.assert_array_equal(first, second)
    done = vst("render", plate, str(tmp_path / "bad.exr"), "--frames", "1", "--style", "night_swril",
               "--server", server_address)
    assert done.returncode == 1 and "did you mean night_swirl" in done.stderr
    assert not (tmp_path / "bad.exr").exists()


def test_sheet_shows_the_plate_in_each_style(server_address: str, tmp_path: Path) -> None:
    plate = str(crop(tmp_path / "plate.exr"))
    sheet = tmp_path / "sheet.png"
    done = vst("sheet", plate, "-o", str(sheet), "--styles", "night_swirl", "3", "red_blocks:0.5,3:0.5",
               "--width", "64", "--server", server_address)
    assert done.returncode == 0, done.stderr
    assert "the plate and 3 styles of multistyle26" in done.stdout
    image = oiio.ImageBuf(str(sheet)).get_pixels(oiio.FLOAT)
    assert image.shape == (64 + 28, 4 * 64, 3)  # one row: the plate and three styles, each under its label
    tiles = [image[28:, i * 64 : (i + 1) * 64] for i in range(4)]
    assert all(np.abs(a - b).mean() > 0.02 for i, a in enumerate(tiles) for b in tiles[i + 1 :])
    unknown = vst("sheet", plate, "-o", str(tmp_path / "x.png"), "--styles", "sunflowers", "--server", server_address)
    assert unknown.returncode == 1 and "'sunflowers' is not a style" in unknown.stderr
    assert not (tmp_path / "x.png").exists()
