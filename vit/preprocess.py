"""Input preprocessing that travels with a model's weights: size, normalisation, resize interpolation, crop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # AugReg / original JAX ViTs


@dataclass(frozen=True)
class Preprocess:
    """What an image must go through before the model sees it (timm's `pretrained_cfg` data fields).

    Evaluation resizes the short side to input_size / crop_pct with `interpolation`, centre-crops to
    input_size, scales to [0, 1] and normalises with mean/std.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)  # (C, H, W)
    mean: tuple[float, ...] = INCEPTION_MEAN
    std: tuple[float, ...] = INCEPTION_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.9

    def __post_init__(self):
        for name in ("input_size", "mean", "std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.input_size) != 3:
            raise ConfigError(f"input_size must be (C, H, W), got {self.input_size}")
        if not (len(self.mean) == len(self.std) == self.input_size[0]):
            raise ConfigError(f"mean {self.mean} and std {self.std} need one value per channel ({self.input_size[0]})")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
