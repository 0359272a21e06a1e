"""The device-resident pixel pipeline (server/pipeline.py) on the test device: alpha, colour, pixel types."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from server.colour import ColourSpaces
from server.models import identity, load_model
from server.pipeline import stylize_planes
from vst_plugin.schema import StylizeSettings


@pytest.fixture(scope="module")
def colours() -> ColourSpaces:
    return ColourSpaces()


def through_network(device: str) -> object:
    """The identity network run through the whole pipeline (the `identity` model itself skips it)."""
    descriptor = identity.load()
    descriptor.family = "identity_network"
    return descriptor.build("identity_network", torch.device(device), torch.float32)


def plate(dtype: type, seed: int = 0, size: tuple[int, int] = (40, 56)) -> tuple[list[np.ndarray], np.ndarray]:
    """Premultiplied scene-linear RGB with highlights, and an alpha with holes (0), edges and solid areas."""
    rng = np.random.default_rng(seed)
    alpha = rng.choice([0.0, 0.25, 0.5, 1.0], size=size).astype(dtype)
    rgb = [(rng.random(size) * 3 * alpha + (alpha == 0) * rng.random(size) * 0.2).astype(dtype) for _ in range(3)]
    return rgb, alpha  # alpha-0 pixels carry colour too (a glow): they must come back untouched


@pytest.mark.parametrize("space", ["lin_rec709", "ACEScg", "srgb_tx"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_network_returning_its_input_gives_the_plate_back(
    colours: ColourSpaces, space: str, dtype: type, device: str
) -> None:
    rgb, alpha = plate(dtype)
    if space != "lin_rec709":  # a plate as it would be in that space
        linear = np.stack(rgb, axis=-1).astype(np.float32)
        rgb = [p.astype(dtype) for p in np.moveaxis(colours.from_linear(linear, space), -1, 0)]
    out = stylize_planes(rgb, alpha, through_network(device), {}, StylizeSettings("x", colorspace=space), colours)
    for before, after in zip(rgb, out, strict=True):
        assert after.dtype == before.dtype and after.shape == before.shape
        tolerance = 2e-3 if dtype == np.float16 else 2e-4
        np.testing.assert_allclose(after.astype(np.float32), before.astype(np.float32), rtol=tolerance, atol=tolerance)


def test_alpha_zero_and_non_finite_pixels_come_back_bit_identical(colours: ColourSpaces, device: str) -> None:
    rgb, alpha = plate(np.float16, seed=3, size=(64, 64))
    rgb[0][5, 5], rgb[1][6, 6], rgb[2][7, 7] = np.nan, np.inf, -np.inf
    model = load_model("multistyle26", device)
    params = model.validate({"style": 4})
    out = stylize_planes(rgb, alpha, model, params, StylizeSettings("multistyle26", colorspace="ACEScg"), colours)
    hole = alpha == 0
    assert hole.sum() > 500
    for before, after in zip(rgb, out, strict=True):
        assert after.dtype == np.float16
        assert np.array_equal(after[hole].view(np.uint16), before[hole].view(np.uint16))
        assert not np.allclose(after[~hole & np.isfinite(before)], before[~hole & np.isfinite(before)], atol=1e-2)
    assert np.isnan(out[0][5, 5]) and out[1][6, 6] == np.inf and out[2][7, 7] == -np.inf


def test_unpremultiplied_plates_are_stylized_everywhere(colours: ColourSpaces, device: str) -> None:
    rgb, alpha = plate(np.float32, seed=5)
    model = load_model("multistyle26", device)
    options = StylizeSettings("multistyle26", premultiplied=False)
    out = stylize_planes(rgb, None, model, model.validate({}), options, colours)
    hole = alpha == 0
    assert not np.allclose(out[0][hole], rgb[0][hole], atol=1e-3)


def test_mixed_pixel_types_come_back_in_their_own(colours: ColourSpaces, device: str) -> None:
    rgb, alpha = plate(np.float32, seed=6)
    rgb[1] = rgb[1].astype(np.float16)
    out = stylize_planes(rgb, alpha, through_network(device), {}, StylizeSettings("x"), colours)
    assert [p.dtype for p in out] == [np.float32, np.float16, np.float32]
    np.testing.assert_allclose(out[1].astype(np.float32), rgb[1].astype(np.float32), rtol=2e-3, atol=2e-3)
