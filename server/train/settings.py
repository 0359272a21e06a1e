"""What a training run depends on besides its images, with the checks on it: `vst train`'s options and
defaults come from here, and the settings are stored in the trained model's metadata. Standard library
only, so that building the `vst` command line loads no torch."""

from __future__ import annotations

from dataclasses import dataclass

FINISHING_RATE = 0.1
"""The keyframe network's finishing steps (`KeyframeSettings.finishing_steps`) run at this fraction of the rate."""


class TrainingError(ValueError):
    """Training cannot start or continue as asked."""


def check_length(steps: int, minutes: float | None) -> None:
    """Raise TrainingError unless a run may take at least one step (--steps) in a positive time (--minutes)."""
    if steps < 1:
        raise TrainingError(f"--steps {steps}: train at least one step")
    if minutes is not None and not minutes > 0:
        raise TrainingError(f"--minutes {minutes}: give a positive time")


@dataclass(frozen=True)
class KeyframeSettings:
    """What a keyframe training run depends on besides its images (stored in the model's metadata)."""

    steps: int = 1000
    minutes: float | None = None
    seed: int = 0
    patch: int = 64
    batch: int = 8
    learning_rate: float = 2e-3
    warmup: int = 100
    width: int = 16
    levels: int = 2
    blocks: int = 4
    painter_steps: int = 300
    colorspace: str = "lin_rec709"
    painted_colorspace: str = "lin_rec709"
    highlights: str = "preserve"
    preview_every: int = 100
    checkpoint_every: int = 250

    def check(self) -> None:
        """Raise TrainingError for settings that cannot train."""
        check_length(self.steps, self.minutes)
        if self.patch < 16 or self.batch < 1:
            raise TrainingError("--patch must be at least 16 pixels and --batch at least 1")
        if min(self.width, self.levels, self.blocks) < 1:
            raise TrainingError("--width, --levels and --blocks must be at least 1")
        if self.painter_steps < 0:
            raise TrainingError(f"--painter-steps {self.painter_steps}: give 0 (no painter) or more")
        if self.patch % 2**self.levels:
            raise TrainingError(f"--patch {self.patch}: use a multiple of {2**self.levels} (2 ** --levels)")

    def finishing_steps(self, painter: bool) -> int:
        """With a painter (tuned now or resumed), the keyframe network's steps on whole keyframes (held-out strips
        included) once the painter's share is chosen: a fifth of --steps, at `FINISHING_RATE` of the learning
        rate."""
        return self.steps // 5 if painter else 0

    def widths(self) -> tuple[int, ...]:
        """Channels at each level: --width at full resolution, doubling at each step down."""
        return tuple(self.width * 2**level for level in range(self.levels + 1))


@dataclass(frozen=True)
class StyleSettings:
    """What a style training run depends on besides its images (stored in the model's metadata)."""

    steps: int = 2000
    minutes: float | None = None
    seed: int = 0
    size: int = 256
    patch: int = 128
    batch: int = 4
    learning_rate: float = 1e-3
    width: int = 32
    blocks: int = 5
    content_weight: float = 1.0
    style_weight: float = 1e5
    tv_weight: float = 1e-2
    adversarial_weight: float = 0.0
    temporal_weight: float = 0.0
    colorspace: str = "lin_rec709"
    style_colorspace: str = "auto"

    def check(self) -> None:
        """Raise TrainingError for settings that cannot train."""
        check_length(self.steps, self.minutes)
        if self.batch < 1 or self.width < 1 or self.blocks < 1:
            raise TrainingError("--batch, --width and --blocks must be at least 1")
        if self.patch < 16 or self.patch % 4 or self.size < self.patch:
            raise TrainingError(f"--patch {self.patch}: a multiple of 4, at least 16 and at most --size {self.size}")
        if min(self.content_weight, self.style_weight, self.tv_weight, self.adversarial_weight,
               self.temporal_weight) < 0:
            raise TrainingError("loss weights must be >= 0")
