"""Tiled execution (server/tiling.py) against the untiled networks on real plates, and its triggers.

Measured on this project's CPU machine (float32): tiled vs untiled max abs difference about 2e-6,
mean about 1e-7 on 0..1 output for every tile size and both families — the method is exact per layer,
so what is left is float rounding. The issue's tolerance (max 2e-2, mean 2e-3) is asserted, and a
much tighter bound guards the exactness.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest
import torch
from test_models import reference_net, state_dict_for_checkpoint

from server.colour import srgb_encode
from server.models import ModelRegistry, ParamError, StyleModel
from server.tiling import device_bytes, run_plan, run_untiled
from vst_plugin import Client, Frame, Part, ServerError

MAX_DIFF, MEAN_DIFF = 2e-2, 2e-3
"""The issue's tolerance for tiled vs untiled on 0..1 output."""
EXACT = 1e-4
"""What the exact method actually stays within (float rounding only)."""


def encoded_plate(path: Path) -> torch.Tensor:
    """A real scene-linear plate at full resolution, clamped and sRGB-encoded: [1,3,H,W] 0..1."""
    pixels = oiio.ImageBuf(str(path)).get_pixels(oiio.FLOAT)[..., :3]
    linear = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
    return srgb_encode(linear.clamp(0, 1))


@pytest.fixture(scope="module")
def multistyle() -> StyleModel:
    return ModelRegistry().get("multistyle26")  # a private instance: tests below change its attributes


@pytest.fixture(scope="module")
def candy(tmp_path_factory) -> StyleModel:
    path = tmp_path_factory.mktemp("fns") / "candy.pth"
    torch.save(state_dict_for_checkpoint(reference_net(seed=4)), path)
    return ModelRegistry(allow_paths=True).get(str(path))


@pytest.fixture(scope="module")
def arbitrary() -> StyleModel:
    return ModelRegistry().get("arbitrary")


def differences(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    difference = (a - b).abs()
    return difference.max().item(), difference.mean().item()


@pytest.mark.parametrize("family", ["multistyle", "candy", "arbitrary"])
@pytest.mark.parametrize(("plate", "tile"), [("Cannon.exr", 128), ("Carrots.exr", 200)])
def test_tiled_matches_untiled_on_real_plates(request, shared, family, plate, tile):
    model = request.getfixturevalue(family)
    image = encoded_plate(shared / "exr/ScanLines" / plate)
    params = {
        "multistyle": {"style": "3:0.5,12:0.5"},
        "candy": {},
        "arbitrary": {"style_image": str(shared / "exr/ScanLines/StillLife.exr")},
    }[family]

    untiled = model.stylize(image, **params)
    tiled = model.stylize(image, tile=tile, **params)

    worst, mean = differences(tiled, untiled)
    print(f"{family} {plate} {tuple(image.shape[2:])} tile {tile}: max {worst:.2e}, mean {mean:.2e}")
    assert worst <= MAX_DIFF and mean <= MEAN_DIFF
    assert worst <= EXACT, f"{family} {plate} tile {tile}: max abs difference {worst}"
    assert untiled.std() > 0.05  # a real stylized image


def test_tiles_smaller_than_the_receptive_field_stay_exact(candy, shared):
    """Tiles of 32 px at 1/4 resolution are 16 px: far below the 9x9 convs' and the blocks' reach."""
    image = encoded_plate(shared / "exr/ScanLines/Carrots.exr")[:, :, 100:230, 50:301]  # odd sizes
    worst, mean = differences(candy.stylize(image, tile=32, strength=0.7), candy.stylize(image, strength=0.7))
    assert worst <= EXACT and mean <= EXACT / 10


def test_plans_match_the_modules_forward(multistyle, candy):
    """The step lists the tiler walks are the same network as each family's own forward()."""
    x = torch.rand(1, 3, 36, 44)
    for model, values in ((multistyle, {"style": multistyle.validate({"style": 7})["style"]}), (candy, {})):
        plan = model._plan(model._module, values)
        with torch.inference_mode():
            direct = model._run(model._module, x, values)
            assert (run_untiled(plan, x) - direct).abs().max().item() < 1e-5
            assert (run_plan(plan, x, 32, torch.device("cpu"), torch.float32) - direct).abs().max().item() < 1e-5


def test_over_budget_frames_are_tiled_automatically(multistyle, shared, caplog):
    image = encoded_plate(shared / "exr/ScanLines/Carrots.exr")
    untiled = multistyle.stylize(image, style=5)
    plan = multistyle._plan(multistyle._module, multistyle.validate({"style": 5}))
    needed = device_bytes(plan, image.shape, 4)
    assert needed > 48 << 20  # 600x400 float32: 66 MiB estimated
    multistyle.memory_budget = 16 << 20
    try:
        with caplog.at_level(logging.INFO, logger="vst.server"):
            tiled = multistyle.stylize(image, style=5)
    finally:
        multistyle.memory_budget = None
    assert "over the 16 MiB budget; tiles of" in caplog.text
    assert differences(tiled, untiled)[0] <= EXACT


def test_out_of_memory_retries_in_halving_tiles(candy, shared, caplog):
    """A real torch.OutOfMemoryError from the untiled run and from tiles over 128 px, as CUDA raises it.

    No GPU here: the error is raised by the model's own untiled and tiled entry points (instance
    attributes wrapping the real ones) for frames and tiles above a size, which is what a device
    with little memory does. What happens on catching it — the retry, the halving, the logs, the
    result — is the real code.
    """
    image = encoded_plate(shared / "exr/ScanLines/Carrots.exr")
    expected = candy.stylize(image)
    tried: list[int] = []
    run_tiled = candy._run_tiled

    def untiled_that_does_not_fit(x, values, state):
        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.numel() * 128} bytes")

    def tiles_that_fit_from_128(x, values, tile):
        tried.append(tile)
        if tile > 128:
            raise torch.OutOfMemoryError(f"CUDA out of memory (tile {tile})")
        return run_tiled(x, values, tile)

    candy._forward, candy._run_tiled = untiled_that_does_not_fit, tiles_that_fit_from_128
    try:
        with caplog.at_level(logging.WARNING, logger="vst.server"):
            result = candy.stylize(image)
        assert tried == [512, 256, 128]
        assert "out of device memory on a 600x400 frame; retrying in tiles of 512 px" in caplog.text
        assert "out of device memory in tiles of 256 px; retrying with 128 px" in caplog.text
        assert differences(result, expected)[0] <= EXACT

        candy._run_tiled = lambda x, values, tile: untiled_that_does_not_fit(x, values, None)
        with pytest.raises(torch.OutOfMemoryError):  # below 32 px it gives up: the worker reports it
            candy.stylize(image)
    finally:
        del candy._forward, candy._run_tiled


def test_tile_values_are_checked(candy):
    for bad in (0, 16, 2.5, True, "64"):
        with pytest.raises(ParamError, match="tile"):
            candy.stylize(torch.rand(1, 3, 40, 40), tile=bad)


def test_tile_through_a_real_server(server_address, shared):
    pixels = oiio.ImageBuf(str(shared / "exr/ScanLines/Cannon.exr")).get_pixels(oiio.FLOAT)[:300, :400]
    channels = {name: np.ascontiguousarray(pixels[..., i]).astype(np.float16) for i, name in enumerate("RGB")}
    frame = Frame([Part(channels, data_window=(0, 0, 399, 299), display_window=(0, 0, 399, 299))])
    with Client(server_address, timeout=60) as client:
        plain = client.stylize(frame, params={"style": 11})
        tiled = client.stylize(frame, params={"style": 11}, tile=64)
        with pytest.raises(ServerError) as error:
            client.stylize(frame, tile=8)
        assert error.value.code == "bad_param" and "tile" in str(error.value)
        with pytest.raises(ServerError) as error:
            client.stylize(frame, tile="big")
        assert error.value.code == "bad_request"
    for name in "RGB":
        a = plain.parts[0].channels[name].astype(np.float32)
        b = tiled.parts[0].channels[name].astype(np.float32)
        # scene-linear half planes: equal but for a rare rounding step of a half-float ulp
        assert np.abs(a - b).max() <= 2e-3 * max(1.0, float(np.abs(a).max()))


def test_render_tile_option_reaches_the_request():
    from vst_plugin.cli import build_parser
    from vst_plugin.schema import StylizeSettings

    args = build_parser().parse_args(["render", "in.####.exr", "out.####.exr", "--frames", "1", "--tile", "256"])
    assert args.tile == 256
    assert StylizeSettings(tile=args.tile).to_wire()["tile"] == 256
    assert "tile" in StylizeSettings(tile=256).canonical()
    assert "tile" not in StylizeSettings().canonical()  # cache keys written before --tile existed stay valid
