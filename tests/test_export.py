"""`vst export`: TorchScript and ONNX files, loaded back and compared with the live server path on real plates.

The live path is the server's own: `server.pipeline.stylize_planes` in lin_rec709 (highlights `preserve`, sRGB
encoding, the model's padding and strength mix, decoding, the residual, non-finite pass-through).
Measured here (difference relative to max(1, |value|), scene-linear, plates with highlights above 1,
two frame sizes that need padding and one that does not): TorchScript within 1.7e-6 of it, onnxruntime
within 8.5e-6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import OpenImageIO as oiio
import pytest
import torch
from test_models import reference_net, state_dict_for_checkpoint

from server.colour import ColourSpaces
from server.export import export
from server.models import ModelError, ModelRegistry, StyleModel
from server.pipeline import stylize_planes
from vst_plugin.cli import main
from vst_plugin.schema import StylizeSettings

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

TORCHSCRIPT_TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4


def linear_plate(path: Path, top: int, left: int, height: int, width: int) -> np.ndarray:
    """A crop of a real scene-linear plate, (H, W, 3) float32, highlights above 1 kept."""
    pixels = oiio.ImageBuf(str(path)).get_pixels(oiio.FLOAT)[..., :3]
    return np.ascontiguousarray(pixels[top : top + height, left : left + width], dtype=np.float32)


@pytest.fixture(scope="module")
def plates(shared) -> list[np.ndarray]:
    folder = shared / "exr/ScanLines"
    still_life = linear_plate(folder / "StillLife.exr", 200, 300, 301, 427)  # lamp highlights, odd sides
    assert still_life.max() > 1.5
    still_life[5, 7, 1] = np.nan  # a bad pixel must come back as it was and spoil nothing
    carrots = linear_plate(folder / "Carrots.exr", 0, 0, 256, 384)  # a multiple of 4: no padding
    return [still_life, carrots, linear_plate(folder / "Cannon.exr", 40, 0, 203, 318)]


@pytest.fixture(scope="module")
def candy(tmp_path_factory) -> StyleModel:
    path = tmp_path_factory.mktemp("export") / "candy.pth"
    torch.save(state_dict_for_checkpoint(reference_net(seed=5)), path)
    return ModelRegistry(allow_paths=True).get(str(path))


def live(model: StyleModel, rgb: np.ndarray, params: dict) -> np.ndarray:
    planes = [rgb[..., index] for index in range(3)]
    out = stylize_planes(planes, None, model, model.validate(params), StylizeSettings(model.name), ColourSpaces())
    return np.stack(out, axis=-1)


def as_input(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])


def as_output(nchw: np.ndarray) -> np.ndarray:
    return nchw[0].transpose(1, 2, 0)


def compare(result: np.ndarray, expected: np.ndarray) -> float:
    """Max abs difference, relative above 1 (scene-linear highlights reach 10 and more)."""
    assert result.shape == expected.shape
    assert np.array_equal(np.isnan(result), np.isnan(expected))
    return float(np.nanmax(np.abs(result - expected) / np.maximum(1, np.abs(expected))))


@pytest.mark.parametrize(
    ("which", "params"),
    [("multistyle26", {"style": "3:0.5,12:0.5", "strength": 0.8}), ("candy", {})],
)
def test_exports_match_the_live_model(tmp_path, plates, candy, which, params):
    model = candy if which == "candy" else ModelRegistry().get("multistyle26")
    scripted_path = export(model, tmp_path / "model.pt", "torchscript", **params)
    onnx_path = export(model, tmp_path / "model.onnx", "onnx", **params)

    scripted = torch.jit.load(str(scripted_path))
    graph = onnx.load(str(onnx_path)).graph
    assert len(graph.input) == 1 and len(graph.output) == 1
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    for rgb in plates:
        expected = live(model, rgb, params)
        with torch.no_grad():
            from_torchscript = as_output(scripted(torch.from_numpy(as_input(rgb))).numpy())
        from_onnx = as_output(session.run(None, {"linear_rgb": as_input(rgb)})[0])
        ts_diff, onnx_diff = compare(from_torchscript, expected), compare(from_onnx, expected)
        print(f"{which} {rgb.shape[:2]}: torchscript {ts_diff:.1e}, onnxruntime {onnx_diff:.1e}")
        assert ts_diff <= TORCHSCRIPT_TOLERANCE and onnx_diff <= ONNX_TOLERANCE
        assert np.nanstd(expected) > 0.05 and np.nanmax(np.abs(expected - rgb)) > 0.1  # really stylized


def test_export_command(tmp_path, shared, capsys):
    output = tmp_path / "nuke" / "style7.pt"
    assert main(["export", "multistyle26", "--format", "torchscript", "--style", "7", "-o", str(output)]) == 0
    assert "wrote" in capsys.readouterr().out
    rgb = linear_plate(shared / "exr/ScanLines/Desk.exr", 0, 0, 130, 90)
    model = ModelRegistry().get("multistyle26")
    with torch.no_grad():
        result = as_output(torch.jit.load(str(output))(torch.from_numpy(as_input(rgb))).numpy())
    assert compare(result, live(model, rgb, {"style": 7})) <= TORCHSCRIPT_TOLERANCE

    assert main(["export", "multistyle26", "--format", "onnx", "--style", "30", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "style 30 does not exist" in capsys.readouterr().err
    assert main(["export", "identity", "--format", "onnx", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "cannot be exported" in capsys.readouterr().err


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ModelError, match="torchscript or onnx"):
        export(ModelRegistry().get("multistyle26"), tmp_path / "m.x", "coreml")
