"""`vst train keyframes`: real EXR plates, the real command, the trained file loaded by the real registry,
served by a real server (temporal too), tiled and exported.

The plates are 96x64 crops of the shipped Beachball sample (RGBA, premultiplied, scene-linear). The
"painting" of a frame is a fixed colour grade in the network's sRGB-encoded space (channels rotated,
contrast lowered, lifted), so the intended painting of the frames that were not painted is known.
Training is short (small network, 32 px patches): seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import OpenImageIO as oiio
import pytest
import torch
from safetensors import safe_open

from server.colour import ColourSpaces, srgb_decode, srgb_encode
from server.export import export
from server.models import ModelRegistry, StyleModel
from server.pipeline import stylize_planes
from server.train import painter
from server.train.keyframes import learning_rate_at
from server.train.settings import KeyframeSettings
from vst_plugin import Client
from vst_plugin.cli import main
from vst_plugin.exr import read_exr, write_exr
from vst_plugin.footage import Footage
from vst_plugin.frame import Frame, Part
from vst_plugin.schema import StylizeSettings

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

SAMPLES = Path(__file__).resolve().parents[1] / "samples/beachball"
SMALL = ["--width", "8", "--blocks", "2", "--patch", "32", "--batch", "4", "--painter-steps", "30", "--threads", "1"]


def crop(frame: Frame, height: int = 64, width: int = 96) -> dict[str, np.ndarray]:
    part = frame.parts[0]
    return {name: np.ascontiguousarray(part.channels[name][380 : 380 + height, 330 : 330 + width])
            for name in "RGBA"}


def paint(channels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The known "painting": a grade in the network's space, applied to the unpremultiplied colour."""
    alpha = np.where(channels["A"] > 0, channels["A"].astype(np.float32), 1)
    rgb = np.stack([channels[c].astype(np.float32) / alpha for c in "RGB"])
    encoded = srgb_encode(torch.from_numpy(rgb).clamp(0, 1))
    graded = (0.15 + 0.7 * encoded[[2, 0, 1]]).clamp(0, 1)
    linear = srgb_decode(graded).numpy() * alpha
    return {**{c: linear[i].astype(np.float16) for i, c in enumerate("RGB")}, "A": channels["A"]}


def write(channels: dict[str, np.ndarray], path: Path) -> None:
    height, width = channels["R"].shape
    window = (0, 0, width - 1, height - 1)
    write_exr(Frame([Part(channels, window, window)]), str(path))


@pytest.fixture(scope="module")
def shot(tmp_path_factory) -> Path:
    """plates/plate.000{1,2,3}.exr, painted/painted.0001.exr, and intended/painted.000{2,3}.exr."""
    folder = tmp_path_factory.mktemp("shot")
    for sub in ("plates", "painted", "intended"):
        (folder / sub).mkdir()
    for n in (1, 2, 3):
        plate = crop(read_exr(SAMPLES / f"beachball.{n:04d}.exr"))
        write(plate, folder / f"plates/plate.{n:04d}.exr")
        write(paint(plate), folder / ("painted" if n == 1 else "intended") / f"painted.{n:04d}.exr")
    return folder


def train(shot: Path, output: Path, *extra: str) -> int:
    return main(["train", "keyframes", str(shot / "plates/plate.####.exr"), str(shot / "painted/painted.####.exr"),
                 "--frames", "1", "-o", str(output), *SMALL, *extra])


@pytest.fixture(scope="module")
def trained(shot: Path, tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    assert train(shot, models / "grade.safetensors", "--steps", "150", "--preview-every", "50") == 0
    return models / "grade.safetensors"


def rgb_of(path: Path) -> np.ndarray:
    part = read_exr(path).parts[0]
    return np.stack([part.channels[c].astype(np.float32) for c in "RGB"], axis=-1)


def test_training_writes_a_model_the_registry_loads_with_its_settings(trained: Path):
    model = ModelRegistry(allow_paths=True).get(str(trained))
    assert model.family == "keyframe" and model.size_multiple == 4
    assert model.info["trained_steps"] == "150" and model.info["keyframes"] == "1"
    assert model.info["highlights"] == "preserve" and model.info["trained_by"] == "vst train keyframes"
    with safe_open(trained, "pt") as opened:
        assert opened.metadata()["width"] == "8"
    preview = oiio.ImageInput.open(str(trained.with_name("grade.preview.png")))
    assert (preview.spec().width, preview.spec().height) == (3 * 96, 64)  # plate | painted | model
    preview.close()


def test_a_real_server_paints_the_other_frames_like_the_keyframe(shot, trained, vst_server, tmp_path, capsys):
    with vst_server("--models-dir", str(trained.parent)) as address:
        with Client(address) as client:
            listed = {entry["name"]: entry for entry in client.models()}
        assert listed["grade"]["family"] == "keyframe" and listed["grade"]["info"]["trained_steps"] == "150"
        code = main(["render", str(shot / "plates/plate.####.exr"), str(tmp_path / "out.####.exr"), "--frames", "2-3",
                     "--model", "grade", "--server", address, "--temporal"])
        assert code == 0
        assert main(["models", "--server", address]) == 0
        assert "trained_steps" in capsys.readouterr().out
    for n in (2, 3):
        out, intended = rgb_of(tmp_path / f"out.{n:04d}.exr"), rgb_of(shot / f"intended/painted.{n:04d}.exr")
        plate = rgb_of(shot / f"plates/plate.{n:04d}.exr")
        before, after = np.abs(plate - intended).mean(), np.abs(out - intended).mean()
        print(f"frame {n}: plate vs intended {before:.4f}, trained vs intended {after:.4f}")
        assert after < 0.35 * before
        assert read_exr(tmp_path / f"out.{n:04d}.exr").parts[0].channels.keys() == {"R", "G", "B", "A"}


def tiles_and_exports(model: StyleModel, shot: Path, tmp_path: Path) -> None:
    """Tiled equals untiled; the TorchScript and ONNX exports equal the server's own pipeline on a plate."""
    rgb = torch.rand(1, 3, 70, 90)
    assert (model.stylize(rgb, tile=32) - model.stylize(rgb)).abs().max() < 1e-5
    plate = rgb_of(shot / "plates/plate.0002.exr")
    planes = [np.ascontiguousarray(plate[..., channel]) for channel in range(3)]
    expected = np.stack(stylize_planes(planes, None, model, model.validate({}), StylizeSettings(model.name),
                                       ColourSpaces()), axis=-1)
    scripted = torch.jit.load(str(export(model, tmp_path / "m.pt", "torchscript")))
    session = ort.InferenceSession(str(export(model, tmp_path / "m.onnx", "onnx")),
                                   providers=["CPUExecutionProvider"])
    nchw = np.ascontiguousarray(plate.transpose(2, 0, 1)[None])
    with torch.no_grad():
        from_script = scripted(torch.from_numpy(nchw)).numpy()[0].transpose(1, 2, 0)
    from_onnx = session.run(None, {"linear_rgb": nchw})[0][0].transpose(1, 2, 0)
    assert np.abs(from_script - expected).max() < 1e-5 and np.abs(from_onnx - expected).max() < 1e-4
    assert np.abs(expected - plate).max() > 0.1  # the model really changes the plate


def test_the_trained_model_tiles_and_exports(shot, trained, tmp_path):
    tiles_and_exports(ModelRegistry(allow_paths=True).get(str(trained)), shot, tmp_path)


def test_a_painter_on_shrunk_keyframes_tiles_and_exports(shot, tmp_path, monkeypatch):
    """Keyframes above PAINTER_PIXELS: the painter tunes and runs on the frame shrunk by a whole factor."""
    monkeypatch.setattr(painter, "PAINTER_PIXELS", 40 * 40)  # the 96x64 keyframe: shrunk by 2
    output = tmp_path / "shrunk.safetensors"
    assert train(shot, output, "--steps", "20", "--preview-every", "0") == 0
    model = ModelRegistry(allow_paths=True).get(str(output))
    assert model._module.painter.reduction == 2 and model.size_multiple == 8
    model._module.share.fill_(0.5)  # whatever share the short run chose: both networks count in the checks below
    tiles_and_exports(model, shot, tmp_path)


def test_the_painter_gets_the_share_it_earns_on_the_held_out_strip(shot, trained, tmp_path):
    """A grade keeps the plate's detail, which the keyframe network keeps and the painter (a style transformer)
    does not: the painter gets little of it. A painterly look (the built-in multistyle network's strokes) goes
    mostly to the painter."""
    with safe_open(trained, "pt") as opened:
        assert float(opened.metadata()["painter_share"]) < 0.2
    painted = tmp_path / "painted.####.exr"
    assert main(["render", str(shot / "plates/plate.####.exr"), str(painted), "--frames", "1", "--model",
                 "multistyle26", "--style", "19", "--embedded"]) == 0
    output = tmp_path / "strokes.safetensors"
    assert main(["train", "keyframes", str(shot / "plates/plate.####.exr"), str(painted), "--frames", "1",
                 "-o", str(output), *SMALL, "--steps", "100", "--painter-steps", "100", "--preview-every", "0"]) == 0
    model = ModelRegistry(allow_paths=True).get(str(output))
    assert float(model.info["painter_share"]) > 0.5
    assert model._module.share == pytest.approx(float(model.info["painter_share"]), abs=1e-3)


def test_without_the_painter_the_model_is_the_keyframe_network_alone(shot, tmp_path):
    """--painter-steps 0 writes what every keyframe model from before the painter is: no painter tensors."""
    output = tmp_path / "m.safetensors"
    assert train(shot, output, "--steps", "5", "--painter-steps", "0", "--preview-every", "0") == 0
    with safe_open(output, "pt") as opened:
        assert not any(key.startswith("painter.") for key in opened.keys())  # noqa: SIM118 - not a dict
        assert "painter_share" not in opened.metadata()
    model = ModelRegistry(allow_paths=True).get(str(output))
    assert model._module.painter is None and model.supports_half and model.size_multiple == 4


def test_a_painted_frame_of_another_size_is_refused(shot, tmp_path, capsys):
    plate = crop(read_exr(SAMPLES / "beachball.0001.exr"), height=60)
    write(paint(plate), tmp_path / "painted.0001.exr")
    code = main(["train", "keyframes", str(shot / "plates/plate.####.exr"), str(tmp_path / "painted.0001.exr"),
                 "--frames", "1", "-o", str(tmp_path / "m.safetensors"), *SMALL, "--steps", "5"])
    assert code == 1
    error = capsys.readouterr().err
    assert "96x60" in error and "96x64" in error and "same data window" in error
    assert not (tmp_path / "m.safetensors").exists()


def test_a_missing_keyframe_is_named(shot, tmp_path, capsys):
    code = train(shot, tmp_path / "m.safetensors", "--frames", "7", "--steps", "5")
    assert code == 1 and "plate.0007.exr" in capsys.readouterr().err


def test_the_seed_repeats_a_run_and_resume_continues_it(shot, tmp_path):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for output in (first, second):
        assert train(shot, output, "--steps", "10", "--seed", "3", "--preview-every", "0") == 0
    a, b = ModelRegistry(allow_paths=True).get(str(first)), ModelRegistry(allow_paths=True).get(str(second))
    assert all(torch.equal(x, y) for x, y in zip(a._module.state_dict().values(), b._module.state_dict().values(),
                                                  strict=True))
    state = tmp_path / "a.safetensors.train-state"
    assert state.is_file()
    assert train(shot, first, "--steps", "25", "--seed", "3", "--resume", str(state), "--preview-every", "0") == 0
    resumed = ModelRegistry(allow_paths=True).get(str(first))
    assert resumed.info["trained_steps"] == "25"
    assert not torch.equal(resumed._module.net.tail.weight, b._module.net.tail.weight)
    painters = (resumed._module.painter.state_dict().values(), a._module.painter.state_dict().values())
    assert all(torch.equal(x, y) for x, y in zip(*painters, strict=True))  # from the state, not tuned again
    assert torch.load(state, weights_only=True)["step"] == 25


def test_resuming_a_finished_run_says_so(shot, tmp_path, capsys):
    output = tmp_path / "m.safetensors"
    assert train(shot, output, "--steps", "4", "--preview-every", "0") == 0
    capsys.readouterr()
    code = train(shot, output, "--steps", "4", "--resume", str(output.with_name("m.safetensors.train-state")))
    assert code == 1 and "already trained 4 steps" in capsys.readouterr().err


def test_default_settings_train(shot, tmp_path):
    output = tmp_path / "m.safetensors"
    code = main(["train", "keyframes", str(shot / "plates/plate.####.exr"), str(shot / "painted/painted.####.exr"),
                 "--frames", "1", "-o", str(output), "--steps", "3"])
    assert code == 0
    assert ModelRegistry(allow_paths=True).get(str(output)).info["patch"] == "64"
    assert ModelRegistry(allow_paths=True).get(str(output)).info["warmup"] == "100"


def test_the_learning_rate_warms_up_then_decays():
    """A linear ramp over the first 100 steps (a tenth of a short run), then the cosine decay to 5%."""
    rate = KeyframeSettings().learning_rate
    rates = [learning_rate_at(KeyframeSettings(steps=1000), step) for step in range(1000)]
    assert rates[0] == pytest.approx(rate / 100, rel=0.02) and rates[49] == pytest.approx(rate / 2, rel=0.02)
    assert max(rates) == rates[99] and all(a >= b for a, b in zip(rates[99:-1], rates[100:], strict=True))
    assert rates[-1] == pytest.approx(0.05 * rate, rel=0.01)
    short = [learning_rate_at(KeyframeSettings(steps=20), step) for step in range(20)]
    assert short[0] == pytest.approx(short[1] / 2, rel=0.05) and max(short) == short[1]


def tiny_vgg(path: Path) -> Path:
    """A small randomly initialised network in torchvision's VGG layout (no pretrained VGG is available here)."""
    torch.manual_seed(0)
    layout = {0: (3, 8), 2: (8, 8), 5: (8, 16), 7: (16, 16), 10: (16, 16)}  # pools where the index jumps by 3
    state = {}
    for index, (cin, cout) in layout.items():
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3) * (2 / (9 * cin)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(cout)
    torch.save(state, path)
    return path


STYLE_SMALL = ["--size", "64", "--patch", "32", "--batch", "2", "--width", "4", "--blocks", "1", "--threads", "1"]


def test_train_style_writes_a_fast_neural_style_model(shot, tmp_path):
    output = tmp_path / "painterly.safetensors"
    code = main(["train", "style", str(shot / "painted/painted.0001.exr"), "--content",
                 str(shot / "plates/plate.####.exr"), "--content-frames", "1-3", "-o", str(output),
                 "--vgg", str(tiny_vgg(tmp_path / "vgg.pth")), "--steps", "4", "--adversarial-weight", "0.1",
                 "--temporal-weight", "1", *STYLE_SMALL])
    assert code == 0
    model = ModelRegistry(allow_paths=True).get(str(output))
    assert model.family == "fast_neural_style" and model.info["trained_by"] == "vst train style"
    assert model.info["temporal_weight"] == "1.0" and model.stylize(torch.rand(1, 3, 40, 52)).shape == (1, 3, 40, 52)


def test_train_style_lowers_its_losses(shot, tmp_path):
    from server.train.settings import StyleSettings
    from server.train.style import read_content, read_vgg, train_style

    plates = Footage.open(str(shot / "plates/plate.####.exr"), "1-3")
    clips = read_content([(plates, "lin_rec709")], 64, 8)
    settings = StyleSettings(steps=60, size=64, patch=32, batch=2, width=4, blocks=1, learning_rate=1e-2,
                             temporal_weight=1.0)
    result = train_style(shot / "painted/painted.0001.exr", clips, read_vgg(tiny_vgg(tmp_path / "vgg.pth")),
                         settings, tmp_path / "s.safetensors", torch.device("cpu"))
    first, last = np.mean([row[3] for row in result.curve[:5]]), np.mean([row[3] for row in result.curve[-5:]])
    print(f"style loss {first:.3g} -> {last:.3g}")
    assert last < 0.5 * first


def test_train_style_refuses_a_file_that_is_not_a_vgg(shot, tmp_path, capsys):
    not_vgg = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, not_vgg)
    code = main(["train", "style", str(shot / "painted/painted.0001.exr"), "--content",
                 str(shot / "plates/plate.0001.exr"), "-o", str(tmp_path / "s.safetensors"), "--vgg", str(not_vgg),
                 *STYLE_SMALL])
    assert code == 1 and "not a torchvision VGG" in capsys.readouterr().err


@pytest.mark.parametrize("length", [["--steps", "0"], ["--minutes", "0"], ["--minutes", "-1"]])
@pytest.mark.parametrize("command", ["keyframes", "style"])
def test_a_run_that_could_not_train_is_refused(shot, tmp_path, capsys, command, length):
    output = tmp_path / "m.safetensors"
    if command == "keyframes":
        code = train(shot, output, *length)
    else:
        code = main(["train", "style", str(shot / "painted/painted.0001.exr"), "--content",
                     str(shot / "plates/plate.0001.exr"), "-o", str(output),
                     "--vgg", str(tiny_vgg(tmp_path / "vgg.pth")), *STYLE_SMALL, *length])
    assert code == 1 and f"{length[0]} {length[1]}" in capsys.readouterr().err
    assert not output.exists()


# Keyframes from footage that is not EXR: a PNG sequence and a movie, read by `vst render`'s own readers.

def grade_codes(codes: np.ndarray) -> np.ndarray:
    """The known "painting" of display-referred footage: a grade of its code values (channels rotated)."""
    return (0.15 + 0.7 * codes[..., [2, 0, 1]]).clip(0, 1)


def write_png(codes: np.ndarray, path: Path) -> None:
    output = oiio.ImageOutput.create(str(path))
    assert output.open(str(path), oiio.ImageSpec(codes.shape[1], codes.shape[0], 3, "uint8"))
    assert output.write_image(np.ascontiguousarray(codes, dtype=np.float32)) and output.close()


def read_codes(path: Path) -> np.ndarray:
    return oiio.ImageBuf(str(path)).get_pixels(oiio.FLOAT)[..., :3]


@pytest.fixture(scope="module")
def distinct_frames(bbb_frames) -> list[np.ndarray]:
    """Three 8-bit crops of Big Buck Bunny with different content (frames 0, 39, 130: grass, then the bunny)."""
    frames = bbb_frames(131)
    return [frames[0], frames[39], frames[130]]


def trained_and_rendered(plates: str, painted: str, keyframe: str, rendered: str, out: Path, frames: str,
                         capsys) -> str:
    """Train with the checked command line (small network) and render with `vst render ... --embedded`."""
    model = out / "model.safetensors"
    assert main(["train", "keyframes", plates, painted, "--frames", keyframe, "-o", str(model), *SMALL,
                 "--steps", "300", "--preview-every", "0"]) == 0
    said = capsys.readouterr().err
    assert main(["render", plates, rendered, "--frames", frames, "--model", str(model), "--embedded"]) == 0
    return said


def test_keyframes_from_a_png_sequence(distinct_frames, tmp_path, capsys):
    for number, codes in enumerate(distinct_frames, start=1):
        write_png(codes / 255, tmp_path / f"plate.{number:04d}.png")
    write_png(grade_codes(distinct_frames[1] / 255), tmp_path / "painted.0002.png")
    said = trained_and_rendered(str(tmp_path / "plate.####.png"), str(tmp_path / "painted.####.png"), "2",
                                str(tmp_path / "out.####.png"), tmp_path, "1-3", capsys)
    assert "PLATES" in said and "PNG sequence, 8-bit (display-referred); colour space srgb_tx" in said
    for number in (1, 2, 3):
        plate = read_codes(tmp_path / f"plate.{number:04d}.png")
        out, intended = read_codes(tmp_path / f"out.{number:04d}.png"), grade_codes(plate)
        before, after = np.abs(plate - intended).mean(), np.abs(out - intended).mean()
        print(f"PNG frame {number}: plate vs intended {before:.4f}, trained vs intended {after:.4f}")
        assert after < (0.3 if number == 2 else 0.7) * before  # few steps of a tiny network


@pytest.fixture(scope="module")
def movie(distinct_frames, tmp_path_factory) -> Path:
    """A 3-frame ProRes movie of the distinct frames, written by vst's own movie writer."""
    from fractions import Fraction

    from vst_plugin.media import MovieWriter

    path = tmp_path_factory.mktemp("movie") / "shot.mov"
    writer = MovieWriter(str(path), None, Fraction(25), None)
    for codes in distinct_frames:
        height, width = codes.shape[:2]
        window = (0, 0, width - 1, height - 1)
        writer.write(Frame([Part({c: (codes[..., i] / 255).astype(np.float32) for i, c in enumerate("RGB")},
                                 window, window)]))
    writer.close()
    return path


def test_keyframes_from_a_movie_count_frames_from_one_and_keep_its_code_values(movie, tmp_path, capsys):
    """Movie frame 2 (numbered as vst render numbers it) painted as a PNG over the movie's own code values: the
    render of frames 1 and 3 gives the painting's code values back (the painted PNG is read in the movie's space)."""
    from vst_plugin.media import MovieReader

    reader = MovieReader(str(movie))
    decoded = {n: np.stack([reader.read(n).parts[0].channels[c].astype(np.float32) for c in "RGB"], axis=-1)
               for n in (1, 2, 3)}
    reader.close()
    write_png(grade_codes(decoded[2]), tmp_path / "painted.png")
    said = trained_and_rendered(str(movie), str(tmp_path / "painted.png"), "2", str(tmp_path / "out.####.png"),
                                tmp_path, "1-3", capsys)
    assert "movie" in said and "PAINTED" in said and said.count("colour space g24_rec709_tx") == 2
    for number in (1, 2, 3):
        out, intended = read_codes(tmp_path / f"out.{number:04d}.png"), grade_codes(decoded[number])
        before, after = np.abs(decoded[number] - intended).mean(), np.abs(out - intended).mean()
        print(f"movie frame {number}: plate vs intended {before:.4f}, trained vs intended {after:.4f}")
        assert after < (0.3 if number == 2 else 0.7) * before  # few steps of a tiny network


@pytest.mark.parametrize(("painted", "extra", "message"), [
    ("small.png", [], "is 40x30 but its plate"),
    ("painted.png", ["--frames", "1,2"], "several keyframes need a frame token"),
    ("painted.png", ["--frames", "4"], "has frames 1-3"),
    ("painted.png", ["--input-colorspace", "raw", "--painted-colorspace", "srgb_tx"], "raw for both or for neither"),
])
def test_keyframes_that_cannot_be_paired_are_refused(movie, tmp_path, capsys, painted, extra, message):
    write_png(np.full((30, 40, 3), 0.5), tmp_path / "small.png")
    write_png(np.full((72, 128, 3), 0.5), tmp_path / "painted.png")
    output = tmp_path / "m.safetensors"
    code = main(["train", "keyframes", str(movie), str(tmp_path / painted), "--frames", "2", "-o", str(output),
                 *SMALL, "--steps", "5", *extra])
    assert code == 1 and message in capsys.readouterr().err
    assert not output.exists()
