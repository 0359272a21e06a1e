"""StyleGAN2 beyond the generator: NVlabs pickle conversion without running code, recipes, a real server."""

from __future__ import annotations

import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from test_stylegan import average_w, one_thread, random_generator, save_rosinality  # noqa: F401 (fixture)

from server.models import ModelRegistry, UnsafeCheckpointError, load_model
from server.stylegan.convert import convert_nvlabs
from server.stylegan.losses import VGGFeatures
from vst_plugin import Client
from vst_plugin.cli import main
from vst_plugin.exr import decode_exr, read_exr

VST = str(Path(sys.executable).parent / "vst")


# -- an NVlabs-style pickle whose loading would execute the source stored in it --------------------------------


def _reconstruct_persistent_obj(meta):
    """What torch_utils.persistence does on load: run the class source stored in the pickle."""
    exec(meta["module_src"], {})
    return meta


class PersistentStub:
    """Pickles the way an NVlabs persistent network does: a call of _reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name: str, source: str, parameters=None, buffers=None, modules=None):
        self.meta = {
            "type": "class", "version": 6, "module_src": source, "class_name": class_name,
            "state": {"training": False, "_parameters": OrderedDict(parameters or {}),
                      "_buffers": OrderedDict(buffers or {}), "_modules": OrderedDict(modules or {}),
                      "_non_persistent_buffers_set": set(), "init_kwargs": {"img_resolution": 32}},
        }

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


def nvlabs_state(generator, latent_avg) -> dict[str, torch.Tensor]:
    """The NVlabs names of a rosinality generator's tensors (the reverse of the converter's mapping)."""
    sd = generator.state_dict()
    nv = {"mapping.w_avg": latent_avg}
    for i in range(generator.config.n_mlp):
        nv[f"mapping.fc{i}.weight"], nv[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.weight"], sd[f"style.{i + 1}.bias"]
    nv["synthesis.b4.const"] = sd["input.input"][0]

    def layer(source, target, noise):
        nv[f"{target}.weight"] = sd[f"{source}.conv.weight"][0]
        nv[f"{target}.affine.weight"] = sd[f"{source}.conv.modulation.weight"]
        nv[f"{target}.affine.bias"] = sd[f"{source}.conv.modulation.bias"]
        nv[f"{target}.noise_strength"] = sd[f"{source}.noise.weight"][0]
        nv[f"{target}.bias"] = sd[f"{source}.activate.bias"]
        nv[f"{target}.noise_const"] = sd[f"noises.noise_{noise}"][0, 0]

    def torgb(source, target):
        nv[f"{target}.weight"] = sd[f"{source}.conv.weight"][0]
        nv[f"{target}.affine.weight"] = sd[f"{source}.conv.modulation.weight"]
        nv[f"{target}.affine.bias"] = sd[f"{source}.conv.modulation.bias"]
        nv[f"{target}.bias"] = sd[f"{source}.bias"].reshape(3)

    layer("conv1", "synthesis.b4.conv1", 0)
    torgb("to_rgb1", "synthesis.b4.torgb")
    for k in range(generator.config.log_size - 2):
        r = 2 ** (k + 3)
        layer(f"convs.{2 * k}", f"synthesis.b{r}.conv0", 2 * k + 1)
        layer(f"convs.{2 * k + 1}", f"synthesis.b{r}.conv1", 2 * k + 2)
        torgb(f"to_rgbs.{k}", f"synthesis.b{r}.torgb")
        nv[f"synthesis.b{r}.resample_filter"] = torch.ones(4, 4) / 16
    return nv


def nest(flat: dict[str, torch.Tensor], source: str) -> PersistentStub:
    """Persistent objects nested like NVlabs modules; leaves split into parameters and buffers."""
    tree: dict = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def build(name, node):
        parameters, buffers, modules = {}, {}, {}
        for key, value in node.items():
            if isinstance(value, dict):
                modules[key] = build(key, value)
            elif key in ("w_avg", "noise_const", "resample_filter"):
                buffers[key] = value.clone()
            else:
                parameters[key] = torch.nn.Parameter(value.clone())
        return PersistentStub(name, source, parameters, buffers, modules)

    return build("Generator", tree)


@pytest.fixture()
def fake_persistence(monkeypatch):
    """A `torch_utils.persistence` module, so plain pickle finds (and would run) the loader."""
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package.persistence = module
    monkeypatch.setitem(sys.modules, "torch_utils", package)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)


def test_nvlabs_pickle_converts_without_running_its_code(tmp_path, fake_persistence, capsys):
    marker = tmp_path / "code_ran"
    source = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    generator = random_generator(32, seed=11)
    latent_avg = average_w(generator)
    network = nest(nvlabs_state(generator, latent_avg), source)
    path = tmp_path / "network-snapshot-000100.pkl"
    path.write_bytes(pickle.dumps({"G": network, "D": network, "G_ema": network, "augment_pipe": None,
                                   "training_set_kwargs": {"resolution": 32}}, protocol=4))

    assert main(["convert-stylegan", str(path), str(tmp_path / "converted.pt")]) == 0

    assert not marker.exists()
    assert "32 px" in capsys.readouterr().out
    model = load_model(str(tmp_path / "converted.pt"))
    w = torch.randn(2, model.n_latent, 32)
    expected = generator.synthesize(w, generator.constant_noise())
    assert torch.allclose(model.synthesize(w), expected, atol=1e-6)
    assert torch.equal(model.latent_avg, latent_avg)
    pickle.loads(path.read_bytes())  # the same file through plain pickle does run the stored source
    assert marker.exists()


class SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_calls_a_function_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": SystemCall(marker)}))

    with pytest.raises(UnsafeCheckpointError, match="system"):
        convert_nvlabs(path, tmp_path / "out.pt")
    assert main(["convert-stylegan", str(path), str(tmp_path / "out.pt")]) == 1

    assert "could run code" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


# -- recipes: a perceptual loss from a local VGG file -------------------------------------------------------------


def test_recipe_with_a_local_vgg_uses_the_perceptual_loss(tmp_path):
    torch.manual_seed(12)
    vgg = {"features.0.weight": torch.randn(4, 3, 3, 3), "features.0.bias": torch.zeros(4),
           "features.2.weight": torch.randn(4, 4, 3, 3), "features.2.bias": torch.zeros(4),
           "features.5.weight": torch.randn(8, 4, 3, 3), "features.5.bias": torch.zeros(8),
           "classifier.0.weight": torch.randn(2, 8)}
    torch.save(vgg, tmp_path / "vgg.pth")
    save_rosinality(tmp_path / "base.pt", random_generator(16, seed=13))
    (tmp_path / "perceptual.json").write_text('{"family": "stylegan2", "base": "base.pt", "vgg": "vgg.pth"}')

    model = ModelRegistry([tmp_path]).get("perceptual")

    assert isinstance(model._module.vgg, VGGFeatures) and model._module.vgg.pool_after == {2}
    assert [f.shape[1] for f in model._module.vgg(torch.zeros(1, 3, 16, 16))] == [4, 8]
    result = model.stylize(torch.rand(1, 3, 20, 20), first_steps=2)
    assert result.shape == (1, 3, 20, 20) and torch.isfinite(result).all()


# -- a real server with a recipe of two generators ------------------------------------------------------------------


def bits(plane: np.ndarray) -> np.ndarray:
    return plane.view({2: np.uint16, 4: np.uint32}[plane.dtype.itemsize])


def test_stylegan_recipe_serves_through_a_real_server(tmp_path, vst_server, shared):
    save_rosinality(tmp_path / "base32.pt", random_generator(32, seed=14))
    save_rosinality(tmp_path / "toon32.pt", random_generator(32, seed=15))
    (tmp_path / "toon.json").write_text('{"family": "stylegan2", "base": "base32.pt", "style": "toon32.pt"}')
    with vst_server("--models-dir", str(tmp_path)) as address:
        file = shared / "exr/Beachball/singlepart.0001.exr"
        plate = read_exr(file)
        params = {"first_steps": 4, "steps": 2, "swap_resolution": 16, "blend_width": 0.5,
                  "region_x": 100, "region_y": 80, "region_w": 300, "region_h": 260, "smoothing": "exponential"}
        with Client(address, timeout=120) as client:
            models = {model["name"]: model for model in client.models()}
            results = [
                decode_exr(client.stylize_exr(file.read_bytes(), model="toon", params=params, sequence="s",
                                              frame_number=n))
                for n in (1, 2)
            ]

    assert models["toon"]["family"] == "stylegan2"
    assert {"swap_resolution", "blend_width", "low_layers", "smoothing", "region_w"} <= {
        p["name"] for p in models["toon"]["params"]
    }
    (original,) = plate.parts
    for result in results:
        (part,) = result.parts
        assert list(part.channels) == list(original.channels)
        for name, plane in original.channels.items():
            assert part.channels[name].shape == plane.shape and part.channels[name].dtype == plane.dtype
            same = np.array_equal(bits(part.channels[name]), bits(plane))
            assert same != (name in {"R", "G", "B", "left.R", "left.G", "left.B"}), name
        changed = part.channels["R"].astype(np.float32) != original.channels["R"].astype(np.float32)
        rows, cols = np.nonzero(changed)  # plane indices: pixels from the data window's top left, as the region
        assert cols.min() >= 100 and cols.max() < 400 and rows.min() >= 80 and rows.max() < 340
