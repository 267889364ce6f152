"""Input preprocessing that travels with a model's weights: size, normalisation, resize interpolation, crop."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # AugReg / original JAX ViTs
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # PIL's resize filters, by timm's names


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
        # Values may come from a file beside the weights: every field is type- and range-checked here.
        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("input_size", "mean", "std"):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise ConfigError(f"preprocessing {name} must be a list, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.input_size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65536
                                                  for v in self.input_size):
            raise ConfigError(f"preprocessing input_size must be (C, H, W), positive integers, got {self.input_size}")
        if not (len(self.mean) == len(self.std) == self.input_size[0]):
            raise ConfigError(f"mean {self.mean} and std {self.std} need one value per channel ({self.input_size[0]})")
        if not all(number(m) for m in self.mean) or not all(number(s) and s > 0 for s in self.std):
            raise ConfigError(f"preprocessing mean must be finite numbers and std positive ones, got mean "
                              f"{self.mean}, std {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"preprocessing interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                              f"{self.interpolation!r}")
        if not number(self.crop_pct) or not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        if not isinstance(d, dict):
            raise ConfigError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
