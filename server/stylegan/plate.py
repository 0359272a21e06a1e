"""The plate path: a StyleGAN2 generator served as a style model.

For each colour layer: crop the region (default the whole frame), resize it to the generator's
size, invert it into W+ of the base generator (warm-started from the previous frame's latent in a
sequence), smooth the latent over time, optionally take the fine layers from a style reference
image's latent, synthesize with the style generator (or a toonify layer-swap blend of base and
style), resize back and composite into the region with a feathered edge.

A single rosinality checkpoint is both base and style generator; a single pSp / e4e checkpoint
adds its encoder, whose latent starts each frame's inversion. A recipe (``NAME.json`` in a model
folder) combines files, paths relative to the recipe::

    {"family": "stylegan2", "base": "ffhq256.pt", "style": "toon256.pt", "encoder": "e4e_ffhq.pt",
     "vgg": "vgg16.pth"}

``style``, ``encoder`` and ``vgg`` are optional. ``base`` may be a pSp / e4e checkpoint (its decoder
is the base); ``encoder`` must be one trained for the base generator. ``vgg`` is a torchvision VGG
state dict (``features.N.weight``) for a perceptual inversion loss; without it the loss is pixel
plus multi-scale error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from server.models.base import ModelDescriptor, ModelError, Param, ParamError, StyleModel
from server.models.checkpoint import StateDict, read_state_dict
from server.models.stylegan2 import FAMILY, Generator, build_generator, detect, is_encoder_checkpoint, part

from .encoder import Encoder, build_encoder
from .losses import Loss, VGGFeatures, multiscale_loss, perceptual_loss
from .project import best_start, project
from .smoothing import SMOOTHING, LatentSmoother
from .toonify import blend_generators, mix_latents

NOISE_MODES = ("const", "random", "none")
START_CANDIDATES = 16
"""Latents a cold inversion may start from: the average and mapped z (seed 0); the closest image wins."""
RECIPE_KEYS = ("family", "base", "style", "encoder", "vgg")


class StyleGANPlate(nn.Module):
    """Base generator (inverted into), optional style generator, encoder and VGG, and the average latent."""

    def __init__(
        self, base: Generator, latent_avg: torch.Tensor, style: Generator | None = None,
        vgg: VGGFeatures | None = None, encoder: Encoder | None = None,
    ):
        super().__init__()
        self.base = base
        self.style = style
        self.vgg = vgg
        self.encoder = encoder
        self.register_buffer("latent_avg", latent_avg)
        z = torch.randn(START_CANDIDATES - 1, latent_avg.shape[0], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.register_buffer("candidates", torch.cat([latent_avg[None], base.map(z.to(latent_avg))]))
        self._blended: dict[tuple[int, float, str], Generator] = {}
        self._references: dict[tuple[str, int, bool, int, float], torch.Tensor] = {}

    def loss(self) -> Loss:
        """The inversion loss: perceptual with a VGG, else pixel plus multi-scale."""
        return multiscale_loss if self.vgg is None else perceptual_loss(self.vgg)

    def uses_encoder(self, values: dict[str, Any]) -> bool:
        """Whether inversion starts from the encoder's latent (the model has one and `encoder` is on)."""
        return self.encoder is not None and values["encoder"]

    def invert(
        self, image: torch.Tensor, values: dict[str, Any], previous: torch.Tensor | None = None
    ) -> torch.Tensor:
        """W+ of sRGB 0..1 [N, 3, H, W]: from the encoder's latent, else `previous` (a sequence's last frame),
        else the closest of the start candidates; refined by `steps` Adam steps (`first_steps` from a candidate)."""
        target = _resize(image, self.base.config.size) * 2 - 1
        loss = self.loss()
        if self.uses_encoder(values):
            with torch.no_grad():
                start, steps = self.encoder(image), values["steps"]
        elif previous is not None and previous.shape == (image.shape[0], self.base.n_latent, self.latent_avg.shape[0]):
            start, steps = previous, values["steps"]
        else:
            start, steps = best_start(self.base, target, self.candidates, loss), values["first_steps"]
        return project(self.base, target, start, steps, values["lr"], loss)

    def output_generator(self, values: dict[str, Any]) -> Generator:
        """The generator that renders the result: style, base, or their layer-swap blend (cached)."""
        if self.style is None:
            return self.base
        swap = values["swap_resolution"]
        if swap == 0:
            return self.style
        key = (swap, values["blend_width"], values["low_layers"])
        if key not in self._blended:
            low, high = (self.base, self.style) if values["low_layers"] == "base" else (self.style, self.base)
            self._blended.clear()  # one blend kept: each is a full generator's worth of memory
            self._blended[key] = blend_generators(low, high, swap, values["blend_width"])
        return self._blended[key]

    def reference_latent(self, path: str, values: dict[str, Any]) -> torch.Tensor:
        """The W+ latent of a style reference image (inverted once per file version and settings)."""
        file = Path(path)
        if not file.is_file():
            raise ParamError(f"style_image: {path} is not a file on the server machine")
        encoded = self.uses_encoder(values)
        steps = values["steps"] if encoded else values["first_steps"]
        key = (str(file.resolve()), file.stat().st_mtime_ns, encoded, steps, values["lr"])
        if key not in self._references:
            image = read_reference(file).to(device=self.latent_avg.device, dtype=self.latent_avg.dtype)
            self._references.clear()
            self._references[key] = self.invert(image, values)
        return self._references[key]


def read_reference(path: Path) -> torch.Tensor:
    """A style reference image as sRGB-encoded 0..1 [1, 3, H, W]; float files (EXR) count as linear Rec.709."""
    import OpenImageIO as oiio

    from server.colour import srgb_encode

    buf = oiio.ImageBuf(str(path))
    if buf.has_error or buf.spec().nchannels < 3:
        reason = buf.geterror() or "fewer than 3 channels"
        raise ParamError(f"style_image: cannot read {path} as an RGB image ({reason})")
    spec = buf.spec()
    pixels = torch.from_numpy(buf.get_pixels(oiio.FLOAT)[..., :3].copy()).permute(2, 0, 1)[None]
    if spec.format.basetype in (oiio.HALF, oiio.FLOAT, oiio.DOUBLE):
        return srgb_encode(pixels.nan_to_num(0).clamp(0, 1))
    return pixels.clamp(0, 1)


def _resize(image: torch.Tensor, size: tuple[int, int] | int) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    return F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)


def region_of(values: dict[str, Any], height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, rows, cols) of the region within an image; a zero width or height means the whole side."""
    left, top = values["region_x"], values["region_y"]
    cols = values["region_w"] or width - left
    rows = values["region_h"] or height - top
    right, bottom = min(left + cols, width), min(top + rows, height)
    if right <= left or bottom <= top:
        raise ParamError(
            f"region x={left} y={top} w={values['region_w']} h={values['region_h']} lies outside the "
            f"{width}x{height} image; give it in pixels from the top left of the data window"
        )
    return top, left, bottom - top, right - left


def feather_mask(
    rows: int, cols: int, feather: float, on_border: tuple[bool, bool, bool, bool], like: torch.Tensor
) -> torch.Tensor:
    """[1, 1, rows, cols] weights: 1 inside, falling smoothly to 0 over `feather` px at the region's edges.

    `on_border` (top, bottom, left, right) marks sides lying on the image border: those are not feathered.
    """
    if feather <= 0:
        return torch.ones(1, 1, rows, cols, dtype=like.dtype, device=like.device)
    top, bottom, left, right = on_border
    y = torch.arange(rows, dtype=like.dtype, device=like.device) + 0.5
    x = torch.arange(cols, dtype=like.dtype, device=like.device) + 0.5
    edge_y = torch.full_like(y, feather)
    edge_x = torch.full_like(x, feather)
    for inside, edge, distance in ((not top, edge_y, y), (not bottom, edge_y, rows - y),
                                   (not left, edge_x, x), (not right, edge_x, cols - x)):
        if inside:
            torch.minimum(edge, distance, out=edge)
    t = (torch.minimum(edge_y[:, None], edge_x[None, :]) / feather).clamp(0, 1)
    return (t * t * (3 - 2 * t))[None, None]


def stylize_plate(
    plate: StyleGANPlate, x: torch.Tensor, values: dict[str, Any], state: dict[str, Any] | None = None
) -> torch.Tensor:
    """The plate path on sRGB 0..1 [N, 3, H, W]; `state` carries the latent and smoothing between frames."""
    _, _, height, width = x.shape
    top, left, rows, cols = region_of(values, height, width)
    crop = x[:, :, top : top + rows, left : left + cols]
    state = {} if state is None else state
    latent = plate.invert(crop, values, state.get("latent"))
    state["latent"] = latent
    shown = _smoothed(latent, values, state)
    if values["style_image"]:
        shown = mix_latents(shown, plate.reference_latent(values["style_image"], values), values["mix_from"])
    generator = plate.output_generator(values)
    with torch.no_grad():
        image = generator.synthesize(shown, generator.constant_noise())
        result = _resize(((image + 1) / 2).clamp(0, 1), (rows, cols))
        borders = (top == 0, top + rows == height, left == 0, left + cols == width)
        mask = feather_mask(rows, cols, values["feather"], borders, x)
        out = x.clone()
        out[:, :, top : top + rows, left : left + cols] = torch.lerp(crop, result, mask)
    return out


def _smoothed(latent: torch.Tensor, values: dict[str, Any], state: dict[str, Any]) -> torch.Tensor:
    kind = values["smoothing"]
    if kind == "off":
        state.pop("smoother", None)
        return latent
    settings = (kind, values["sigma"], values["alpha"])
    smoother = state.get("smoother")
    if smoother is None or smoother.settings != settings:
        smoother = state["smoother"] = LatentSmoother(*settings)
    return smoother.step(latent)


class StyleGANModel(StyleModel):
    """A served StyleGAN2 plate model that also offers the generator's own API.

    `mapping`, `synthesize`, `n_latent` and `latent_avg` are those of the base generator (the
    checkpoint itself when it was loaded alone).
    """

    def _forward(self, x: torch.Tensor, values: dict[str, Any], state: dict[str, Any] | None) -> torch.Tensor:
        with torch.inference_mode(False), torch.enable_grad():  # inversion needs gradients
            return self._run(self._module, x.clone(), values, state).detach()

    @property
    def generator(self) -> Generator:
        """The base generator (an ``nn.Module`` with rosinality's call signature)."""
        return self._module.base

    @property
    def n_latent(self) -> int:
        """Rows of a W+ latent: 2 * log2(size) - 2."""
        return self.generator.n_latent

    @property
    def latent_avg(self) -> torch.Tensor:
        """The average w [style_dim] (the checkpoint's ``latent_avg``), the truncation centre."""
        return self._module.latent_avg

    def mapping(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z [N, style_dim] -> w [N, style_dim], truncated towards `latent_avg` when truncation < 1."""
        w = self.generator.map(z.to(device=self.device, dtype=self.dtype))
        return w if truncation == 1.0 else torch.lerp(self.latent_avg, w, truncation)

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """sRGB 0..1 [N, 3, H, W] -> W+ [N, n_latent, style_dim] by the model's pSp / e4e encoder, one forward pass."""
        if self._module.encoder is None:
            raise ModelError(f"{self.name} has no encoder; load a pSp / e4e checkpoint, or name one in a recipe")
        with torch.no_grad():
            return self._module.encoder(rgb.to(device=self.device, dtype=self.dtype))

    def synthesize(self, wplus: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """W+ [N, n_latent, style_dim] (or w [N, style_dim]) -> image [N, 3, size, size] in -1..1.

        noise_mode: ``const`` the checkpoint's stored noise (reproducible), ``random`` fresh noise,
        ``none`` no noise.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode {noise_mode!r} is not one of {', '.join(NOISE_MODES)}")
        wplus = wplus.to(device=self.device, dtype=self.dtype)
        if wplus.ndim == 2:
            wplus = wplus[:, None].expand(-1, self.n_latent, -1)
        if wplus.ndim != 3 or wplus.shape[1:] != (self.n_latent, self.latent_avg.shape[0]):
            raise ValueError(
                f"expected W+ [N, {self.n_latent}, {self.latent_avg.shape[0]}], got {tuple(wplus.shape)}"
            )
        constant = self.generator.constant_noise()
        noise = {
            "const": constant,
            "random": [None] * len(constant),
            "none": [torch.zeros_like(c) for c in constant],
        }[noise_mode]
        return self.generator.synthesize(wplus, noise)


def plate_params(base: Generator, has_style: bool, has_encoder: bool = False) -> tuple[Param, ...]:
    """The plate path's parameters for a generator of this shape."""
    size, n_latent = base.config.size, base.n_latent
    params = []
    if has_encoder:
        params.append(Param("encoder", "bool", True,
                            help="start each frame from the encoder's latent; off: optimisation from the previous "
                                 "frame's latent or a cold start"))
    params += [
        Param("steps", "int", 0 if has_encoder else 30, 0, 5000,
              help="inversion steps per frame from the encoder's or the previous frame's latent"
                   + (" (0: the encoder alone)" if has_encoder else "")),
        Param("first_steps", "int", 150, 0, 5000,
              help="inversion steps from a cold start: the closest of 16 candidate latents (a single frame or a "
                   "sequence's first, without encoder)"),
        Param("lr", "float", 0.05, 0.0001, 1.0, help="inversion learning rate (Adam, decaying to a tenth)"),
        Param("region_x", "int", 0, 0, help="left of the region to stylize, pixels from the data window's left"),
        Param("region_y", "int", 0, 0, help="top of the region, pixels from the data window's top"),
        Param("region_w", "int", 0, 0, help="region width in pixels; 0: to the right edge"),
        Param("region_h", "int", 0, 0, help="region height in pixels; 0: to the bottom edge"),
        Param("feather", "float", 8.0, 0.0, 1000.0, help="soft edge of the composite inside the region, pixels"),
    ]
    if has_style:
        params += [
            Param("swap_resolution", "int", 0, 0, size,
                  help=f"toonify layer swap: layers from this resolution (8..{size}) up come from the other "
                       "generator; 0: style generator alone"),
            Param("blend_width", "float", 0.0, 0.0, 4.0,
                  help="width of the layer-swap blend in octaves; 0: hard switch"),
            Param("low_layers", "choice", "base", choices=("base", "style"),
                  help="generator of the layers below the swap resolution"),
        ]
    params += [
        Param("style_image", "image", "",
              help="image file on the server whose fine-layer latent is mixed in; empty: none"),
        Param("mix_from", "int", n_latent // 2, 1, n_latent - 1,
              help=f"first W+ layer (1..{n_latent - 1}) taken from the style image"),
        Param("smoothing", "choice", "off", choices=SMOOTHING,
              help="temporal smoothing of the latent over the past frames"),
        Param("sigma", "float", 1.5, 0.1, 10.0, help="gaussian smoothing width in frames"),
        Param("alpha", "float", 0.5, 0.0, 0.99, help="exponential smoothing: weight of the past"),
    ]
    return tuple(params)


def plate_descriptor(
    base: Generator, latent_avg: torch.Tensor, style: Generator | None = None, vgg: VGGFeatures | None = None,
    encoder: Encoder | None = None,
) -> ModelDescriptor:
    """The served model of a base generator, with an optional style generator, VGG and encoder."""
    return ModelDescriptor(
        module=StyleGANPlate(base, latent_avg, style, vgg, encoder),
        family=FAMILY,
        params=plate_params(base, style is not None, encoder is not None),
        size_multiple=1,
        min_size=1,
        supports_half=False,
        run=stylize_plate,
        model_type=StyleGANModel,
    )


def encoder_of(state_dict: StateDict, base: Generator) -> Encoder:
    """The encoder of a pSp / e4e checkpoint, for inverting into `base`."""
    return build_encoder(
        part(state_dict, "encoder"), state_dict.options, state_dict.get("latent_avg"),
        base.n_latent, base.config.style_dim,
    )


def recipe_descriptor(recipe: dict[str, Any], folder: Path) -> ModelDescriptor:
    """Build the model a recipe describes (see the module docstring)."""
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown or not isinstance(recipe.get("base"), str):
        raise ModelError(
            f"a stylegan2 recipe needs 'base' (a checkpoint file name) and may have 'style', 'encoder' and 'vgg'; "
            f"{'it has unknown keys ' + ', '.join(unknown) if unknown else 'it has no base'}"
        )
    if not all(isinstance(recipe[key], str) for key in RECIPE_KEYS[1:] if recipe.get(key)):
        raise ModelError("a stylegan2 recipe names its checkpoints as file names (strings)")
    files = {key: folder / recipe[key] for key in RECIPE_KEYS[1:] if recipe.get(key)}
    for key, path in files.items():
        if not path.resolve().is_relative_to(folder.resolve()) or not path.is_file():
            raise ModelError(f"the recipe's {key} is not a file in the recipe's folder (names are relative to it)")
    read = {path: read_state_dict(path) for path in set(files.values()) if path != files.get("vgg")}
    generators = {}
    for key in ("base", "style"):
        if key in files:
            if not detect(read[files[key]]):
                raise ModelError(
                    f"recipe {key} {files[key]} is not a StyleGAN2 generator in the rosinality layout "
                    "(nor a pSp / e4e checkpoint holding one)"
                )
            generators[key] = build_generator(read[files[key]])
    (base, latent_avg), style = generators["base"], generators.get("style", (None,))[0]
    if style is not None and style.config != base.config:
        raise ModelError(
            f"recipe base and style generators differ in shape ({base.config.size} px vs {style.config.size} px, "
            "or channels); both must come from the same configuration"
        )
    encoder = None
    if "encoder" in files:
        if not is_encoder_checkpoint(read[files["encoder"]]):
            raise ModelError(f"recipe encoder {files['encoder']} is not a pSp / e4e checkpoint (encoder.* keys)")
        encoder = encoder_of(read[files["encoder"]], base)
    vgg = None
    if "vgg" in files:
        try:
            vgg = VGGFeatures(read_state_dict(files["vgg"]))
        except (KeyError, RuntimeError, ValueError) as error:
            raise ModelError(f"recipe vgg {files['vgg']} is not a torchvision VGG state dict: {error}") from None
    return plate_descriptor(base, latent_avg, style, vgg, encoder)
