"""ModelRegistry: naming, caching, LRU eviction within a memory budget, errors, schemas, devices."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from server.models import (
    ModelError,
    ModelRegistry,
    UnknownModelError,
    load_model,
    resolve_device,
)


def johnson_checkpoint(path: Path, widths: tuple = (8, 16, 32), seed: int = 0) -> int:
    """Write a small, random fast_neural_style (pytorch/examples) checkpoint with one residual block.

    Returns the bytes its weights take in float32.
    """
    generator = torch.Generator().manual_seed(seed)
    a, b, c = widths
    convs = {"conv1": (a, 3, 9), "conv2": (b, a, 3), "conv3": (c, b, 3), "res1.conv1": (c, c, 3)}
    convs.update({"res1.conv2": (c, c, 3), "deconv1": (b, c, 3), "deconv2": (a, b, 3), "deconv3": (3, a, 9)})
    norms = {"in1": a, "in2": b, "in3": c, "res1.in1": c, "res1.in2": c, "in4": b, "in5": a}
    state = {}
    for name, (cout, cin, k) in convs.items():
        state[f"{name}.conv2d.weight"] = torch.randn(cout, cin, k, k, generator=generator) * 0.1
        state[f"{name}.conv2d.bias"] = torch.randn(cout, generator=generator)
    for name, channels in norms.items():
        state[f"{name}.weight"] = torch.rand(channels, generator=generator) + 0.5
        state[f"{name}.bias"] = torch.randn(channels, generator=generator)
    torch.save(state, path)
    return sum(t.numel() * 4 for t in state.values())


@pytest.fixture()
def folders(tmp_path) -> tuple[Path, Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    johnson_checkpoint(first / "candy.pth", widths=(8, 16, 32))
    johnson_checkpoint(first / "mosaic.pt", seed=1)
    johnson_checkpoint(second / "candy.pth", widths=(4, 8, 16))
    johnson_checkpoint(second / "udnie.ckpt", seed=2)
    (second / "notes.txt").write_text("not a model")
    return first, second


def test_available_lists_identity_builtins_then_folders(folders):
    registry = ModelRegistry(folders)
    assert registry.available() == ["identity", "arbitrary", "multistyle26", "candy", "mosaic", "udnie"]
    assert registry.loaded() == []  # listing loads nothing


def test_earlier_folder_wins_a_name_clash(folders, tmp_path):
    first, second = folders
    wide = johnson_checkpoint(tmp_path / "wide.pth", widths=(8, 16, 32))
    narrow = johnson_checkpoint(tmp_path / "narrow.pth", widths=(4, 8, 16))
    assert ModelRegistry([first, second]).get("candy").memory_bytes() == wide
    assert ModelRegistry([second, first]).get("candy").memory_bytes() == narrow


def test_get_caches_by_name_and_path(folders):
    registry = ModelRegistry(folders)
    model = registry.get("mosaic")
    assert registry.get("mosaic") is model
    assert registry.get(str(folders[0] / "mosaic.pt")) is model
    assert registry.get("identity") is registry.get("identity")
    assert [entry["name"] for entry in registry.loaded()] == ["identity", "mosaic"]


def test_lru_eviction_keeps_within_the_memory_budget(tmp_path, caplog):
    sizes = {name: johnson_checkpoint(tmp_path / f"{name}.pth", seed=i) for i, name in enumerate("abc")}
    assert len(set(sizes.values())) == 1
    size = sizes["a"]
    registry = ModelRegistry([tmp_path], memory_budget=2 * size + size // 2)

    registry.get("a")
    registry.get("b")
    registry.get("a")  # now b is the least recently used
    registry.get("c")

    assert registry.loaded() == [
        {"name": "c", "family": "fast_neural_style", "bytes": size},
        {"name": "a", "family": "fast_neural_style", "bytes": size},
    ]
    assert sum(entry["bytes"] for entry in registry.loaded()) <= registry.memory_budget

    small = ModelRegistry([tmp_path], memory_budget=size // 2)
    small.get("a")
    with caplog.at_level(logging.WARNING, logger="server.models.registry"):
        small.get("b")
    assert [entry["name"] for entry in small.loaded()] == ["b"]
    assert "more than the" in caplog.text and "memory budget" in caplog.text


def test_unload_by_name_or_path(folders):
    registry = ModelRegistry(folders)
    registry.get("udnie")
    registry.get("identity")
    assert registry.unload("udnie") is True
    assert registry.unload("udnie") is False
    assert registry.unload("identity") is True
    path = folders[0] / "mosaic.pt"
    registry.get(str(path))
    path.unlink()  # a loaded model can be unloaded after its file is gone
    assert registry.unload(str(path)) is True
    assert registry.unload("no-such-model") is False
    assert registry.loaded() == []


def test_unknown_name_lists_models_and_folders(folders):
    registry = ModelRegistry(folders)
    with pytest.raises(UnknownModelError) as caught:
        registry.get("starry-night")
    message = str(caught.value)
    assert "'starry-night'" in message and "multistyle26" in message and "mosaic" in message
    assert str(folders[0]) in message and str(folders[1]) in message and "weights" in message


def test_unrecognised_checkpoint_lists_the_families(tmp_path):
    torch.save({"encoder.weight": torch.zeros(4), "decoder.weight": torch.zeros(4)}, tmp_path / "vae.pth")
    with pytest.raises(UnknownModelError) as caught:
        ModelRegistry([tmp_path]).get("vae")
    message = str(caught.value)
    assert "multistyle" in message and "fast_neural_style" in message
    assert "encoder.weight" not in message  # errors never quote what a file holds


def test_checkpoint_of_a_known_family_with_missing_weights(tmp_path):
    path = tmp_path / "cut.pth"
    johnson_checkpoint(path)
    state = torch.load(path, weights_only=True)
    del state["res1.in2.bias"]
    torch.save(state, path)
    with pytest.raises(ModelError, match="fast_neural_style checkpoint but its tensors do not fit"):
        ModelRegistry([tmp_path]).get("cut")


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        ModelRegistry([tmp_path / "nowhere"])


def test_describe_returns_the_typed_schema(folders):
    registry = ModelRegistry(folders)

    schema = registry.describe("multistyle26")
    assert schema["name"] == "multistyle26" and schema["family"] == "multistyle"
    assert schema["size_multiple"] == 4 and schema["supports_half"] is True and schema["loaded"] is False
    style, strength = schema["params"]
    assert style == {
        "name": "style",
        "type": "style_mix",
        "default": "golden_pastel",
        "choices": style["choices"],
        "help": style["help"],
    }
    assert len(set(style["choices"])) == 26 and style["choices"][19] == "night_swirl"  # named in the weights
    assert strength == {
        "name": "strength", "type": "float", "default": 1.0, "min": 0.0, "max": 1.0, "help": strength["help"],
    }
    assert registry.loaded() == []

    registry.get("multistyle26")
    assert registry.describe("multistyle26")["loaded"] is True
    assert registry.describe("identity")["family"] == "identity"
    assert [param["name"] for param in registry.describe("candy")["params"]] == ["strength"]


def test_describe_reads_a_checkpoint_once_until_it_changes(folders):
    registry = ModelRegistry(folders)
    path = folders[1] / "udnie.ckpt"
    first = registry.describe("udnie")
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)  # same size and, restored below, same time: not read again
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert registry.describe("udnie") == first

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ModelError, match="udnie.ckpt"):
        registry.describe("udnie")


def test_concurrent_gets_load_once(folders):
    registry = ModelRegistry(folders)
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(registry.get, ["candy"] * 8))
    assert all(model is models[0] for model in models)
    assert len(registry.loaded()) == 1


def test_fp32_on_cpu_unless_half_is_asked_for():
    assert ModelRegistry().get("multistyle26").dtype == torch.float32
    assert ModelRegistry(half=True).get("multistyle26").dtype == torch.float16
    assert ModelRegistry(half=True).get("identity").dtype == torch.float32  # identity stays exact


def test_load_model_shares_a_registry_per_device(folders):
    assert load_model("multistyle26") is load_model("multistyle26", device="cpu")
    assert load_model(str(folders[0] / "mosaic.pt")).name == "mosaic"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    with pytest.raises(ModelError, match="cuda:N"):
        resolve_device("cuda:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ModelError, match="no CUDA GPU.*'cpu' or 'auto'"):
            resolve_device(name)
    with pytest.raises(ModelError, match="no CUDA GPU"):
        ModelRegistry(device="cuda")


def test_paths_outside_the_folders_are_unknown_whether_or_not_they_exist(folders, tmp_path):
    registry = ModelRegistry(folders)
    outside = tmp_path / "outside.pt"
    johnson_checkpoint(outside)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"Q" * 64)
    messages = []
    names = (str(outside), str(junk), str(tmp_path / "missing.pth"), "../outside.pt", f"{folders[0]}/../outside.pt")
    for name in names:
        with pytest.raises(UnknownModelError) as raised:
            registry.get(name)
        messages.append(str(raised.value).replace(repr(name[:100]), "NAME"))
    assert len(set(messages)) == 1 and "Q" not in messages[0]
    assert registry.get(str(folders[0] / "mosaic.pt")).name == "mosaic"  # a path inside a folder is fine
    assert ModelRegistry(folders, allow_paths=True).get(str(outside)).name == "outside"
