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


# ---- OCIO conversions as tensor operations, against OCIO's CPU processor -------------------------

EXACT_BOUND = 1e-4
"""Exact chains (matrices, exponents, log curves, ranges, 1D LUTs) in float32 torch vs OCIO's CPU processor."""
LUT_BOUND = {"to_linear": 2e-2, "from_linear": 0.3}
"""A baked 65^3 LUT behind a shaper, measured on the studio look below: decoding a graded plate to linear
stays within 1.4e-2; encoding scene-linear values (-1 .. 2^16) into it is off by up to 0.28 (0.11 below 1):
the CDL's and the 3D LUT's clamps at 0 and 1 fall between grid points of the log shaper. Conversions with
an exact form (every one of OCIO's built-in config) never take this path."""


def _against_ocio(colours: ColourSpaces, config, source: str, target: str) -> tuple[str, float]:
    """(kind, error) of one conversion on fresh wide-range probes, measured here, not at build time."""
    import PyOpenColorIO as OCIO

    from server.ocio_ops import ENCODED_DOMAIN, LINEAR_DOMAIN, error, ocio_apply, probes

    transform = colours.transform(source, target)
    linear = config.getColorSpace(source).getEncoding() in ("scene-linear", "display-linear", "")
    values = probes(LINEAR_DOMAIN if linear else ENCODED_DOMAIN, count=4000, seed=7)
    image = torch.from_numpy(values.T.reshape(1, 3, 50, -1).copy())  # a 2D image, as the pipeline sends
    ours = transform(image)[0].reshape(3, -1).T.numpy()
    theirs = ocio_apply(config.getProcessor(source, target).getDefaultCPUProcessor(), values)
    assert isinstance(OCIO.__version__, str)
    return transform.kind, error(ours, theirs)


def test_every_builtin_colour_space_matches_ocio_both_ways() -> None:
    import PyOpenColorIO as OCIO

    config = OCIO.Config.CreateFromBuiltinConfig("ocio://default")
    colours = ColourSpaces(config)
    kinds = {}
    for space in config.getColorSpaceNames():
        for source, target in ((space, "lin_rec709"), ("lin_rec709", space)):
            kind, found = _against_ocio(colours, config, source, target)
            kinds[(source, target)] = kind
            assert kind != "lut" and found <= EXACT_BOUND, (source, target, kind, found)
    # every conversion of the built-in config has an exact tensor form: no LUT approximation
    assert set(kinds.values()) == {"exact", "identity"}
    assert kinds[("ACEScg", "lin_rec709")] == "exact" and kinds[("lin_rec709", "Raw")] == "identity"


CUBE = "LUT_3D_SIZE 2\n" + "".join(
    f"{0.9 * r + 0.1 * g} {0.05 * r + 0.9 * g + 0.05 * b} {0.1 * g + 0.9 * b}\n"
    for b in (0, 1) for g in (0, 1) for r in (0, 1)
)  # a camera look: mild crosstalk between channels
STUDIO_LUTS = """  - !<ColorSpace>
    name: camera_log
    encoding: log
    to_scene_reference: !<LogCameraTransform> {base: 10, log_side_slope: 0.247, log_side_offset: 0.385,
      lin_side_slope: 5.56, lin_side_offset: 0.0529, lin_side_break: 0.011}
  - !<ColorSpace>
    name: graded_video
    encoding: sdr-video
    to_scene_reference: !<GroupTransform>
      children:
        - !<FileTransform> {src: look.cube, interpolation: linear}
        - !<CDLTransform> {slope: [1.1, 1.0, 0.9], offset: [0.01, 0, -0.01], power: [1.2, 1.0, 0.9], sat: 0.8}
        - !<ExponentWithLinearTransform> {gamma: 2.4, offset: 0.055}
"""


def test_every_studio_config_colour_space_matches_ocio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A studio config through $OCIO: a log2 space, a camera log curve, a 3D LUT file with a CDL (baked)."""
    import PyOpenColorIO as OCIO

    (tmp_path / "look.cube").write_text(CUBE)
    (tmp_path / "config.ocio").write_text(STUDIO_CONFIG.replace("displays:", "search_path: .\ndisplays:") + STUDIO_LUTS)
    monkeypatch.setenv("OCIO", str(tmp_path / "config.ocio"))
    colours = ColourSpaces()
    config = OCIO.Config.CreateFromEnv()
    found = {}
    for space in config.getColorSpaceNames():
        for source, target in ((space, "studio_linear"), ("studio_linear", space)):
            found[(source, target)] = _against_ocio(colours, config, source, target)
    for (source, target), (kind, err) in found.items():
        bound = LUT_BOUND["to_linear" if target == "studio_linear" else "from_linear"] if kind == "lut" else EXACT_BOUND
        assert err <= bound, (source, target, kind, err)
    assert found[("studio_log2", "studio_linear")][0] == "exact"
    assert found[("camera_log", "studio_linear")][0] == "exact"
    assert found[("graded_video", "studio_linear")][0] == "lut"  # a 3D LUT file and a CDL: baked
    assert colours.resolve("scene_linear") == "studio_linear"  # roles resolve through the config


def test_conversions_run_on_the_tensor_device_and_keep_its_shape() -> None:
    colours = ColourSpaces()
    x = torch.rand(2, 3, 5, 7) * 4
    for space in ("ACEScg", "srgb_tx", "ACEScct"):
        y = colours.from_linear(x, space)
        assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
        torch.testing.assert_close(colours.to_linear(y, space), x, atol=1e-4, rtol=1e-4)
