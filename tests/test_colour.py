"""Colour pipeline: OCIO conversions, the sRGB curve and the highlight policies, on real plates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from server.colour import ColourError, ColourSpaces, from_network, srgb_decode, srgb_encode, to_network
from vst_plugin.exr import read_exr


@pytest.fixture(scope="module")
def plate(shared: Path) -> torch.Tensor:
    """A real scene-linear photograph with values above 1, as [1, 3, H, W] float32."""
    part = read_exr(shared / "exr/ScanLines/StillLife.exr").parts[0]
    rgb = np.stack([part.channels[name] for name in "RGB"]).astype(np.float32)
    return torch.from_numpy(rgb)[None]


def test_srgb_curve_round_trips() -> None:
    x = torch.linspace(0, 1, 10001)
    assert torch.allclose(srgb_decode(srgb_encode(x)), x, atol=1e-6)
    assert float(srgb_encode(torch.tensor(0.18))) == pytest.approx(0.46135, abs=1e-4)


def test_srgb_curve_matches_ocio_srgb_encoding(plate: torch.Tensor) -> None:
    colours = ColourSpaces()
    linear = plate[0].permute(1, 2, 0).clamp(0, 1).numpy()
    ocio = colours.from_linear(np.ascontiguousarray(linear), "srgb_tx")
    ours = srgb_encode(torch.from_numpy(linear)).numpy()
    np.testing.assert_allclose(ours, ocio, atol=2e-4)


@pytest.mark.parametrize("policy", ["preserve", "compress", "clamp"])
def test_network_input_is_in_0_1_and_identity_output_inverts(plate: torch.Tensor, policy: str) -> None:
    assert float(plate.max()) > 1
    prepared = to_network(plate, policy)
    assert float(prepared.encoded.min()) >= 0 and float(prepared.encoded.max()) <= 1
    back = from_network(prepared.encoded, prepared)
    expected = plate if policy != "clamp" else plate.clamp(0, 1)
    # compress squeezes values up to ~500 into the last 1e-3 below 1: float32 rounding of the rolled-off
    # value costs about 0.2% of such a highlight on the way back.
    rtol = 5e-3 if policy == "compress" else 2e-4
    torch.testing.assert_close(back, expected, atol=2e-4, rtol=rtol)


def test_preserve_keeps_highlight_energy_above_the_stylized_base(plate: torch.Tensor) -> None:
    prepared = to_network(plate, "preserve")
    flat = torch.full_like(prepared.encoded, 0.5)
    back = from_network(flat, prepared)
    bright = plate > 1
    torch.testing.assert_close(back[bright], plate[bright] - 1 + srgb_decode(torch.tensor(0.5)), atol=1e-5, rtol=1e-5)


def test_compress_expansion_never_exceeds_the_brightest_input(plate: torch.Tensor) -> None:
    prepared = to_network(plate, "compress")
    back = from_network(torch.ones_like(prepared.encoded), prepared)
    assert float(back.max()) <= float(plate.max()) + 1e-4


def test_non_finite_pixels_pass_through() -> None:
    x = torch.rand(1, 3, 8, 8)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 2, 2] = float("inf")
    x[0, 2, 3, 3] = float("-inf")
    prepared = to_network(x, "preserve")
    assert torch.isfinite(prepared.encoded).all()
    back = from_network(prepared.encoded, prepared)
    assert torch.isnan(back[0, 0, 1, 1]) and back[0, 1, 2, 2] == float("inf") and back[0, 2, 3, 3] == float("-inf")


def test_ocio_round_trip_through_acescg(plate: torch.Tensor) -> None:
    colours = ColourSpaces()
    linear = np.ascontiguousarray(plate[0].permute(1, 2, 0).numpy())
    aces = colours.from_linear(linear, "ACEScg")
    assert not np.allclose(aces, linear, atol=1e-3)
    np.testing.assert_allclose(colours.to_linear(aces, "ACEScg"), linear, atol=1e-4, rtol=1e-4)


def test_roles_aliases_and_any_spelling_name_the_config_space(plate: torch.Tensor) -> None:
    colours = ColourSpaces()
    linear = np.ascontiguousarray(plate[0].permute(1, 2, 0).numpy())
    aces = colours.from_linear(linear, "ACEScg")
    for name in ("scene_linear", "acescg", "ACESCG", "lin_ap1", "ACES - ACEScg"):  # OCIO's built-in config
        assert colours.resolve(name) == "ACEScg"
        np.testing.assert_array_equal(colours.from_linear(linear, name), aces)
    assert colours.resolve("compositing_log") == "ACEScct" and colours.resolve("aces") == "ACES2065-1"
    np.testing.assert_array_equal(colours.to_linear(linear, "Lin_Rec709"), linear)
    assert {"scene_linear", "compositing_log", "lin_ap1"} <= set(colours.names())


def test_unknown_colour_space_and_policy_are_refused() -> None:
    colours = ColourSpaces()
    with pytest.raises(ColourError, match="unknown colour space 'Kodak 5219'"):
        colours.check("Kodak 5219")
    with pytest.raises(ColourError, match="preserve, compress, clamp"):
        to_network(torch.zeros(1, 3, 2, 2), "burn")


STUDIO_CONFIG = """ocio_profile_version: 2
roles:
  default: studio_linear
  scene_linear: studio_linear
displays:
  monitor:
    - !<View> {name: Raw, colorspace: studio_linear}
colorspaces:
  - !<ColorSpace>
    name: studio_linear
    encoding: scene-linear
  - !<ColorSpace>
    name: studio_log2
    encoding: log
    to_scene_reference: !<LogTransform> {base: 2, direction: inverse}
"""


def test_ocio_environment_variable_selects_the_studio_config(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    config = tmp_path / "config.ocio"
    config.write_text(STUDIO_CONFIG)
    code = (
        "import numpy as np; from server.colour import ColourSpaces; c = ColourSpaces(); "
        "print(sorted(c.names())); "
        "print(float(c.to_linear(np.full((1, 1, 3), 3.0, np.float32), 'studio_log2')[0, 0, 0]))"
    )
    env = {**os.environ, "OCIO": str(config)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    names, value = done.stdout.strip().splitlines()
    assert names == "['default', 'raw', 'scene_linear', 'studio_linear', 'studio_log2']"
    assert float(value) == pytest.approx(8.0, abs=1e-3)
