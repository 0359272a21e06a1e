"""pSp / e4e encoders: against an independent forward written from the published code, checkpoints, serving."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_stylegan import average_w, one_thread, random_generator, save_rosinality  # noqa: F401 (fixture)

from server.models import ModelError, ModelRegistry, load_model
from server.stylegan.encoder import EncoderError, build_encoder
from vst_plugin import Client
from vst_plugin.exr import decode_exr, read_exr

STAGES = (3, 4, 14, 3)
"""Units per stage of the IR-50 body every released pSp / e4e encoder uses."""


# -- checkpoints in the pSp / e4e key layout, with random weights -------------------------------------------------


def psp_encoder_state(
    kind: str, widths=(8, 16, 24, 32), stem: int = 8, style: int = 32, rows: int = 8, se: bool = True,
    input_nc: int = 3, seed: int = 0, empty: bool = False, se_reduction: int = 4,
) -> dict[str, torch.Tensor]:
    """An ``encoder.*`` state dict as pSp's / e4e's modules name it (widths scaled down by default).

    `kind` is "pyramid" (GradualStyleEncoder / Encoder4Editing share keys), "w" or "wplus".
    With `empty`, tensors live on the meta device (full-size layouts without the memory).
    """
    g = torch.Generator().manual_seed(seed)

    def t(*shape, scale=1.0, offset=0.0):
        if empty:
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=g) * scale + offset

    def conv(name, out_c, in_c, k, bias=False):
        sd[f"{name}.weight"] = t(out_c, in_c, k, k, scale=1 / math.sqrt(in_c * k * k))
        if bias:
            sd[f"{name}.bias"] = t(out_c, scale=0.1)

    def bn(name, c):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = t(c, scale=0.1, offset=1.0), t(c, scale=0.1)
        sd[f"{name}.running_mean"] = t(c, scale=0.1)
        sd[f"{name}.running_var"] = t(c, scale=0.1).abs() + 0.5 if not empty else t(c)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(100) if not empty else torch.empty((), device="meta")

    sd: dict[str, torch.Tensor] = {}
    conv("input_layer.0", stem, input_nc, 3)
    bn("input_layer.1", stem)
    sd["input_layer.2.weight"] = t(stem, scale=0.05, offset=0.25)
    index, previous = 0, stem
    for units, depth in zip(STAGES, widths, strict=True):
        for _ in range(units):
            unit = f"body.{index}"
            if previous != depth:
                conv(f"{unit}.shortcut_layer.0", depth, previous, 1)
                bn(f"{unit}.shortcut_layer.1", depth)
            bn(f"{unit}.res_layer.0", previous)
            conv(f"{unit}.res_layer.1", depth, previous, 3)
            sd[f"{unit}.res_layer.2.weight"] = t(depth, scale=0.05, offset=0.25)
            conv(f"{unit}.res_layer.3", depth, depth, 3)
            bn(f"{unit}.res_layer.4", depth)
            if se:
                conv(f"{unit}.res_layer.5.fc1", max(1, depth // se_reduction), depth, 1)
                conv(f"{unit}.res_layer.5.fc2", depth, max(1, depth // se_reduction), 1)
            index, previous = index + 1, depth
    if kind == "pyramid":
        for i in range(rows):
            convs = 4 if i < 3 else 5 if i < 7 else 6  # down to 1x1 from 16, 32 and 64 px
            for j in range(convs):
                conv(f"styles.{i}.convs.{2 * j}", style, widths[3] if j == 0 else style, 3, bias=True)
            sd[f"styles.{i}.linear.weight"], sd[f"styles.{i}.linear.bias"] = t(style, style), t(style, scale=0.1)
        conv("latlayer1", style, widths[2], 1, bias=True)
        conv("latlayer2", style, widths[1], 1, bias=True)
    elif kind == "w":
        sd["linear.weight"], sd["linear.bias"] = t(style, widths[3]), t(style, scale=0.1)
    else:
        bn("output_layer_2.0", widths[3])
        sd["output_layer_2.3.weight"] = t(style, widths[3] * 49, scale=1 / math.sqrt(widths[3] * 49))
        sd["output_layer_2.3.bias"] = t(style, scale=0.1)
        sd["linear.weight"], sd["linear.bias"] = t(style * rows, style), t(style * rows, scale=0.1)
    return sd


def save_psp(path: Path, encoder: dict, generator, latent_avg: torch.Tensor | None, encoder_type: str) -> Path:
    """A checkpoint as pSp's and e4e's training coaches save it."""
    state = {**{f"encoder.{k}": v for k, v in encoder.items()},
             **{f"decoder.{k}": v for k, v in generator.state_dict().items()}}
    payload = {"state_dict": state, "opts": {"encoder_type": encoder_type, "output_size": generator.config.size,
                                             "start_from_latent_avg": latent_avg is not None, "lr": 0.0001,
                                             "exp_dir": "/tmp/exp", "checkpoint_path": None}}
    if latent_avg is not None:
        payload["latent_avg"] = latent_avg.repeat(generator.n_latent, 1)  # pSp stores one row per W+ row
    torch.save(payload, path)
    return path


# -- the forward pass, written from pSp's / e4e's published modules on the raw state dict -------------------------


def ref_bn(x, sd, name):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], training=False, eps=1e-5)


def ref_prelu(x, weight):
    return torch.where(x >= 0, x, x * weight.view(1, -1, 1, 1))


def ref_unit(x, sd, name, stride):
    if f"{name}.shortcut_layer.0.weight" in sd:
        shortcut = ref_bn(F.conv2d(x, sd[f"{name}.shortcut_layer.0.weight"], stride=stride), sd,
                          f"{name}.shortcut_layer.1")
    else:
        shortcut = F.max_pool2d(x, 1, stride)
    r = ref_bn(x, sd, f"{name}.res_layer.0")
    r = ref_prelu(F.conv2d(r, sd[f"{name}.res_layer.1.weight"], padding=1), sd[f"{name}.res_layer.2.weight"])
    r = ref_bn(F.conv2d(r, sd[f"{name}.res_layer.3.weight"], stride=stride, padding=1), sd, f"{name}.res_layer.4")
    if f"{name}.res_layer.5.fc1.weight" in sd:
        pooled = F.adaptive_avg_pool2d(r, 1)
        gate = F.conv2d(F.relu(F.conv2d(pooled, sd[f"{name}.res_layer.5.fc1.weight"])),
                        sd[f"{name}.res_layer.5.fc2.weight"])
        r = r * torch.sigmoid(gate)
    return r + shortcut


def ref_equal_linear(x, sd, name):
    weight = sd[f"{name}.weight"]
    return F.linear(x, weight / math.sqrt(weight.shape[1]), sd[f"{name}.bias"])


def ref_style(x, sd, i):
    j = 0
    while f"styles.{i}.convs.{j}.weight" in sd:
        x = F.leaky_relu(F.conv2d(x, sd[f"styles.{i}.convs.{j}.weight"], sd[f"styles.{i}.convs.{j}.bias"],
                                  stride=2, padding=1), 0.01)
        j += 2
    return ref_equal_linear(x.view(x.shape[0], -1), sd, f"styles.{i}.linear")


def ref_encode(image_256, sd, encoder_type, latent_avg_rows):
    """pSp's forward: normalise to -1..1, encoder, + latent_avg (as pSp's `forward` does with start_from_latent_avg)."""
    x = image_256 * 2 - 1
    x = ref_prelu(ref_bn(F.conv2d(x, sd["input_layer.0.weight"], padding=1), sd, "input_layer.1"),
                  sd["input_layer.2.weight"])
    i, c = 0, {}
    for units in STAGES:
        for u in range(units):
            x = ref_unit(x, sd, f"body.{i}", 2 if u == 0 else 1)
            if i in (6, 20, 23):  # the indices pSp and e4e hard-code for IR-50
                c[i] = x
            i += 1
    if encoder_type == "BackboneEncoderUsingLastLayerIntoW":
        codes = ref_equal_linear(F.adaptive_avg_pool2d(x, 1).view(x.shape[0], -1), sd, "linear")
        return codes + latent_avg_rows[0]
    if encoder_type == "BackboneEncoderUsingLastLayerIntoWPlus":
        pooled = F.adaptive_avg_pool2d(ref_bn(x, sd, "output_layer_2.0"), (7, 7)).flatten(1)
        hidden = F.linear(pooled, sd["output_layer_2.3.weight"], sd["output_layer_2.3.bias"])
        codes = ref_equal_linear(hidden, sd, "linear").view(x.shape[0], len(latent_avg_rows), -1)
        return codes + latent_avg_rows

    def up_add(a, b):
        return F.interpolate(a, size=b.shape[2:], mode="bilinear", align_corners=True) + b

    c1, c2, c3 = c[6], c[20], c[23]
    p2 = up_add(c3, F.conv2d(c2, sd["latlayer1.weight"], sd["latlayer1.bias"]))
    p1 = up_add(p2, F.conv2d(c1, sd["latlayer2.weight"], sd["latlayer2.bias"]))
    rows = len(latent_avg_rows)
    if encoder_type == "GradualStyleEncoder":
        codes = torch.stack([ref_style(c3 if j < 3 else p2 if j < 7 else p1, sd, j) for j in range(rows)], 1)
    else:  # Encoder4Editing: w0 repeated, then w[:, i] += delta_i
        w0 = ref_style(c3, sd, 0)
        codes = w0.repeat(rows, 1, 1).permute(1, 0, 2).clone()
        features = c3
        for j in range(1, rows):
            features = p2 if j == 3 else p1 if j == 7 else features
            codes[:, j] += ref_style(features, sd, j)
    return codes + latent_avg_rows


CASES = [
    ("pyramid", "GradualStyleEncoder", True),
    ("pyramid", "Encoder4Editing", True),
    ("pyramid", "GradualStyleEncoder", False),
    ("w", "BackboneEncoderUsingLastLayerIntoW", True),
    ("wplus", "BackboneEncoderUsingLastLayerIntoWPlus", False),
]


@pytest.mark.parametrize(("kind", "encoder_type", "se"), CASES)
def test_encoders_match_the_published_forward(kind, encoder_type, se):
    sd = psp_encoder_state(kind, se=se, seed=1)
    rows = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    encoder = build_encoder(sd, {"encoder_type": encoder_type}, rows, n_latent=8, style_dim=32).double()
    image = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    with torch.no_grad():
        ours = encoder(image)
        expected = ref_encode(image, {k: v.double() for k, v in sd.items()}, encoder_type, rows.double())
    expected = expected[:, None].expand(-1, 8, -1) if expected.ndim == 2 else expected

    assert ours.shape == (2, 8, 32)
    assert (ours - expected).abs().max() < 1e-9 * expected.abs().max()
    assert (ours[0] - ours[1]).abs().max() > 1e-3  # the image matters
    if encoder_type == "BackboneEncoderUsingLastLayerIntoW":
        assert torch.equal(ours[:, 0], ours[:, 7])


def test_e4e_and_psp_differ_only_by_the_stored_encoder_type():
    sd = psp_encoder_state("pyramid", seed=4)
    image = torch.rand(1, 3, 64, 80)
    psp = build_encoder(sd, {"encoder_type": "GradualStyleEncoder"}, None, 8, 32)(image)
    e4e = build_encoder(sd, {"encoder_type": "Encoder4Editing"}, None, 8, 32)(image)

    assert torch.allclose(e4e[:, 0], psp[:, 0]) and torch.allclose(e4e[:, 1:], psp[:, 1:] + psp[:, :1], atol=1e-5)
    with pytest.raises(EncoderError, match="encoder_type"):
        build_encoder(sd, {}, None, 8, 32)


def test_the_full_size_e4e_layout_builds():
    """IR-SE-50 with reduction 16 and 512 widths, 18 rows for a 1024 px generator: keys and shapes only."""
    sd = psp_encoder_state("pyramid", widths=(64, 128, 256, 512), stem=64, style=512, rows=18, empty=True,
                           se_reduction=16)
    with torch.device("meta"):
        encoder = build_encoder(sd, {"encoder_type": "Encoder4Editing"}, None, 18, 512)
    assert encoder.n_latent == 18 and len(encoder.network.styles) == 18
    assert encoder.network.body[23].res_layer[5].fc1.out_channels == 32
    too_many = "gives 18 x 512 latents; the generator takes 14 x 512"
    with pytest.raises(EncoderError, match=too_many), torch.device("meta"):
        build_encoder(sd, {"encoder_type": "Encoder4Editing"}, None, 14, 512)  # a 256 px generator


def test_sketch_and_restyle_encoders_are_refused_with_the_reason():
    with pytest.raises(EncoderError, match="1-channel input"):
        build_encoder(psp_encoder_state("pyramid", input_nc=1), {"encoder_type": "GradualStyleEncoder"}, None, 8, 32)
    with pytest.raises(EncoderError, match="6-channel input"):
        build_encoder(psp_encoder_state("pyramid", input_nc=6), {"encoder_type": "GradualStyleEncoder"}, None, 8, 32)


# -- a checkpoint as a served model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e4e_file(tmp_path_factory):
    generator = random_generator(32, seed=5)
    path = tmp_path_factory.mktemp("e4e") / "e4e32.pt"
    save_rosinality(path.with_name("plain32.pt"), generator)
    return save_psp(path, psp_encoder_state("pyramid", seed=6), generator, average_w(generator), "Encoder4Editing")


def test_an_e4e_checkpoint_alone_is_a_model_whose_encoder_starts_inversion(e4e_file):
    model = load_model(str(e4e_file))
    params = {p["name"]: p for p in model.schema()["params"]}
    plate = model._module
    image = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(7))

    encoded = model.encode(image)
    with torch.no_grad():
        synthesized = ((plate.base.synthesize(encoded, plate.base.constant_noise()) + 1) / 2).clamp(0, 1)
        expected = F.interpolate(synthesized, size=(48, 40), mode="bilinear", antialias=True)
    alone = model.stylize(image, feather=0)
    refined = plate.invert(image, {**model.validate({}), "steps": 3})
    averaged = plate.invert(image, {**model.validate({}), "encoder": False, "first_steps": 0})

    assert params["encoder"]["default"] is True and params["steps"]["default"] == 0
    assert torch.allclose(alone, expected, atol=1e-5)
    assert torch.allclose(encoded, build_encoder_output(e4e_file, image), atol=1e-5)
    assert 1e-4 < (refined - encoded).abs().max() < 1  # refinement starts at the encoder's latent
    assert any(torch.equal(averaged[0], c.expand(8, -1)) for c in plate.candidates)  # a cold start, no steps
    assert torch.allclose(model.latent_avg, average_w(random_generator(32, seed=5)), atol=1e-6)
    with pytest.raises(ModelError, match="has no encoder"):
        load_model(str(e4e_file.with_name("plain32.pt"))).encode(image)


def build_encoder_output(path: Path, image: torch.Tensor) -> torch.Tensor:
    """The encoder rebuilt from the raw file: same weights, offset and type as the checkpoint says."""
    data = torch.load(path, weights_only=True)
    encoder_sd = {k.removeprefix("encoder."): v for k, v in data["state_dict"].items() if k.startswith("encoder.")}
    encoder = build_encoder(encoder_sd, data["opts"], data["latent_avg"], 8, 32)
    return encoder(image)


def test_recipe_combines_an_encoder_with_base_and_style(tmp_path, e4e_file):
    save_rosinality(tmp_path / "toon32.pt", random_generator(32, seed=8))
    save_rosinality(tmp_path / "base16.pt", random_generator(16, seed=9))
    (tmp_path / "e4e32.pt").write_bytes(e4e_file.read_bytes())
    (tmp_path / "toon.json").write_text(
        '{"family": "stylegan2", "base": "e4e32.pt", "style": "toon32.pt", "encoder": "e4e32.pt"}')
    (tmp_path / "wrong.json").write_text('{"family": "stylegan2", "base": "base16.pt", "encoder": "e4e32.pt"}')
    (tmp_path / "notenc.json").write_text('{"family": "stylegan2", "base": "toon32.pt", "encoder": "toon32.pt"}')
    registry = ModelRegistry([tmp_path])
    image = torch.rand(1, 3, 32, 32)

    toon = registry.get("toon")
    out = toon.stylize(image, feather=0)

    assert toon._module.encoder is not None and toon._module.style is not None
    assert not torch.allclose(out, registry.get("e4e32").stylize(image, feather=0), atol=1e-3)
    with pytest.raises(EncoderError, match="generator takes 6 x 32"):
        registry.get("wrong")
    with pytest.raises(ModelError, match="not a pSp / e4e checkpoint"):
        registry.get("notenc")


def test_an_e4e_checkpoint_serves_through_a_real_server(tmp_path, vst_server, shared, e4e_file):
    (tmp_path / "e4e32.pt").write_bytes(e4e_file.read_bytes())
    file = shared / "exr/Beachball/singlepart.0001.exr"
    plate = read_exr(file)
    params = {"region_x": 200, "region_y": 100, "region_w": 256, "region_h": 256, "smoothing": "gaussian"}
    with vst_server("--models-dir", str(tmp_path)) as address, Client(address, timeout=120) as client:
        schema = {model["name"]: model for model in client.models()}["e4e32"]
        results = [
            decode_exr(client.stylize_exr(file.read_bytes(), model="e4e32", params=params, sequence="s",
                                          frame_number=n)).parts[0]
            for n in (1, 2)
        ]
        refined = decode_exr(client.stylize_exr(file.read_bytes(), model="e4e32", params={**params, "steps": 2}))

    (original,) = plate.parts
    assert {"encoder", "steps", "first_steps"} <= {p["name"] for p in schema["params"]}
    for name, plane in original.channels.items():
        changed = not np.array_equal(results[0].channels[name], plane)
        assert changed == (name in {"R", "G", "B", "left.R", "left.G", "left.B"}), name
    # the encoder is deterministic and the same frame twice smooths to itself (up to rounding to half)
    assert np.allclose(results[0].channels["R"], results[1].channels["R"], atol=2e-3)
    assert not np.array_equal(refined.parts[0].channels["R"], results[0].channels["R"])
    rows, cols = np.nonzero(results[0].channels["G"] != original.channels["G"])
    assert cols.min() >= 200 and cols.max() < 456 and rows.min() >= 100 and rows.max() < 356
