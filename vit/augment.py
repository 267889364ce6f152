"""RandAugment for uint8 image batches in memory: every image draws its own ops, magnitudes and signs.

The DataLoader path gets timm's RandAugment (PIL, one image at a time, in worker processes). In-memory data
has no workers, so the same policy runs here on a whole (B, C, H, W) uint8 batch: for each of the policy's
`n` layers, each image picks one of the 15 ops uniformly, applies it with probability `p`, at magnitude `m`
(plus Gaussian noise of `mstd`, clipped to [0, mmax]), negated half the time for the signed ops. The op
parameters follow timm's level-to-argument rules exactly; each op computes what torchvision's single-image
op computes for those parameters (tests/test_augment.py checks each one image by image). Geometric ops use
torchvision's conventions: rotate and shear about the image centre, nearest-neighbour sampling, fill 128.

All draws come from one `torch.Generator` on the CPU, made for the whole global batch, so a step's
augmentation depends only on (seed, step): DDP ranks take slices of one draw, and a resumed run redraws the
same images. Shape letters: B batch, C channels, H/W height/width.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError

FILL = 128  # timm's fill for pixels that geometric ops uncover
MAX_LEVEL = 10.0  # magnitudes are on timm's 0-10 scale


# --------------------------------------------------------------------------------------------------------
# Ops on a uint8 batch with one parameter per image (a float tensor of shape (B,))


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped and truncated to uint8, as torchvision blends."""
    f32, g32 = _per_image(factor.float()), _per_image((1.0 - factor).float())
    # torchvision adds the second term with one rounding (a fused multiply-add): emulated in float64.
    out = (x.float() * f32).double().addcmul_(other.double(), g32.double()).float()
    return out.clamp_(0, 255).to(torch.uint8)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Floored ITU-R 601 luma, (B, 1, H, W) float; grey images are their own."""
    if x.shape[1] == 1:
        return x.float()
    r, g, b = x.float().unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).floor_().unsqueeze(1)


def brightness(x, factor):
    return (x.float() * _per_image(factor.float())).clamp_(0, 255).to(torch.uint8)


def color(x, factor):  # saturation: blend with the grey image
    return x if x.shape[1] == 1 else _blend(x, _grey(x), factor)


def contrast(x, factor):  # blend with the mean grey level
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def sharpness(x, factor):
    """Blend with a 3x3 smoothed image ([1 1 1; 1 5 1; 1 1 1] / 13); the one-pixel border is kept."""
    B, C, H, W = x.shape
    if H <= 2 or W <= 2:
        return x
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13.0
    out = x.float()
    blurred = F.conv2d(out, k.expand(C, 1, 3, 3), groups=C).round_()  # (B, C, H - 2, W - 2)
    inner = out[..., 1:-1, 1:-1]
    inner += (blurred - inner) * _per_image((1.0 - factor).float())
    return out.clamp_(0, 255).to(torch.uint8)


def posterize(x, bits):
    """Keep the `bits` most significant bits of each value (0-8)."""
    mask = torch.full_like(bits, 255, dtype=torch.long).bitwise_left_shift(8 - bits.long()) & 255
    return x & _per_image(mask.to(torch.uint8).to(x.device))


def solarize(x, threshold):
    """Invert every value at or above the threshold (256: nothing)."""
    return torch.where(x.short() >= _per_image(threshold.short().to(x.device)), 255 - x, x)


def solarize_add(x, add, threshold: int = 128):
    """Add `add` to every value below the threshold, saturating at 255 (timm's `solarize_add`)."""
    added = (x.short() + _per_image(add.short().to(x.device))).clamp_(max=255).to(torch.uint8)
    return torch.where(x < threshold, added, x)


def autocontrast(x, _=None):
    from torchvision.transforms.v2 import functional as TF  # here, not at the top: train.py starts without torchvision

    return TF.autocontrast(x)


def equalize(x, _=None):
    from torchvision.transforms.v2 import functional as TF

    return TF.equalize(x)


def invert(x, _=None):
    return 255 - x


def affine(x, angle=None, shear_x=None, shear_y=None, tx=None, ty=None):
    """Rotate/shear (degrees) about the centre and translate (pixels), nearest neighbour, uncovered pixels FILL.

    The inverse map of torchvision's `affine` (rotation R(a), shears tan(sx), tan(sy)), one matrix per image.
    """
    B, C, H, W = x.shape
    zero = torch.zeros(B, dtype=torch.float64)
    rot, sx, sy = (torch.deg2rad(v.double()) if v is not None else zero for v in (angle, shear_x, shear_y))
    tx, ty = (v.double() if v is not None else zero for v in (tx, ty))
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    # Inverse of [[a, b], [c, d]] (determinant 1), after undoing the translation: output -> input coordinates.
    inv = torch.stack([d, -b, -d * tx + b * ty, -c, a, c * tx - a * ty], dim=1).view(B, 2, 3)
    theta = inv.float().transpose(1, 2) / torch.tensor([0.5 * W, 0.5 * H])  # (B, 3, 2), normalised output
    xs = torch.linspace((1.0 - W) * 0.5, (W - 1.0) * 0.5, W)
    ys = torch.linspace((1.0 - H) * 0.5, (H - 1.0) * 0.5, H)
    base = torch.stack([xs.expand(H, W), ys[:, None].expand(H, W), torch.ones(H, W)], dim=-1)  # (H, W, 3)
    grid = base.view(1, H * W, 3).expand(B, -1, -1).bmm(theta).view(B, H, W, 2).to(x.device)
    # A channel of ones marks where the sample came from inside the image; outside it, FILL.
    img = torch.cat([x.float(), torch.ones(B, 1, H, W, device=x.device)], dim=1)
    img = F.grid_sample(img, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    img, inside = img[:, :C], img[:, C:]
    return torch.where(inside < 0.5, float(FILL), img).round_().to(torch.uint8)


# --------------------------------------------------------------------------------------------------------
# Magnitude (0-10) to op parameter, timm's rules; `sign` is +-1 per image for the signed ops


def _signed(scale):
    return lambda m, sign: m / MAX_LEVEL * scale * sign


def _enhance(m, sign):  # the "increasing" variant: 1 is no change, moving away either way (0.1-1.9)
    return (1.0 + m / MAX_LEVEL * 0.9 * sign).clamp(min=0.1)


# name: (op, level function or None, which geometric parameter it sets)
OPS = {
    "AutoContrast": (autocontrast, None),
    "Equalize": (equalize, None),
    "Invert": (invert, None),
    "Rotate": (lambda x, v: affine(x, angle=v), _signed(30.0)),
    "Posterize": (posterize, lambda m, s: (m / MAX_LEVEL * 4).floor()),
    "PosterizeIncreasing": (posterize, lambda m, s: 4 - (m / MAX_LEVEL * 4).floor()),
    "Solarize": (solarize, lambda m, s: (m / MAX_LEVEL * 256).floor().clamp(max=256)),
    "SolarizeIncreasing": (solarize, lambda m, s: 256 - (m / MAX_LEVEL * 256).floor().clamp(max=256)),
    "SolarizeAdd": (solarize_add, lambda m, s: (m / MAX_LEVEL * 110).floor().clamp(max=128)),
    "Color": (color, lambda m, s: m / MAX_LEVEL * 1.8 + 0.1),
    "ColorIncreasing": (color, _enhance),
    "Contrast": (contrast, lambda m, s: m / MAX_LEVEL * 1.8 + 0.1),
    "ContrastIncreasing": (contrast, _enhance),
    "Brightness": (brightness, lambda m, s: m / MAX_LEVEL * 1.8 + 0.1),
    "BrightnessIncreasing": (brightness, _enhance),
    "Sharpness": (sharpness, lambda m, s: m / MAX_LEVEL * 1.8 + 0.1),
    "SharpnessIncreasing": (sharpness, _enhance),
    # Shear factors as timm's (tan of the angle, up to 0.3); translations as a fraction of the side (0.45).
    "ShearX": (lambda x, v: affine(x, shear_x=torch.rad2deg(torch.atan(v))), _signed(0.3)),
    "ShearY": (lambda x, v: affine(x, shear_y=torch.rad2deg(torch.atan(v))), _signed(0.3)),
    "TranslateXRel": (lambda x, v: affine(x, tx=v * x.shape[-1]), _signed(0.45)),
    "TranslateYRel": (lambda x, v: affine(x, ty=v * x.shape[-2]), _signed(0.45)),
}
# timm's RandAugment op lists: "inc1" takes the variants whose strength grows with the magnitude.
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_OPS_INCREASING = tuple(n if n in ("AutoContrast", "Equalize", "Invert", "Rotate", "SolarizeAdd", "ShearX",
                                       "ShearY", "TranslateXRel", "TranslateYRel") else n + "Increasing"
                            for n in RAND_OPS)


# --------------------------------------------------------------------------------------------------------
# The policy


@dataclass(frozen=True)
class RandAugment:
    """timm's policy string `rand-m9-n2-mstd0.5-inc1` (Cubuk et al., 2020), for batches.

    m: magnitude 0-10; n: ops per image; mstd: std of the magnitude noise (> 100: uniform in [0, m]);
    mmax: the magnitude's upper clip; p: probability each drawn op is applied; inc: the increasing op set.
    """

    magnitude: float = 10.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = MAX_LEVEL
    prob: float = 0.5
    increasing: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_OPS_INCREASING if self.increasing else RAND_OPS

    @classmethod
    def parse(cls, policy: str, flag: str = "--randaug") -> "RandAugment":
        parts = policy.split("-")
        if parts[0] != "rand":
            raise ConfigError(f"{flag} {policy!r}: in-memory data takes RandAugment policies 'rand-m9-mstd0.5-inc1' "
                              "(timm's syntax); other timm policies need --data-mode loader")
        keys = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "mmax": "magnitude_max", "p": "prob",
                "inc": "increasing"}
        kw = {}
        for part in parts[1:]:
            match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", part)
            if not match or match[1] not in keys:
                raise ConfigError(f"{flag} {policy!r}: unknown part {part!r}; parts are "
                                  f"{', '.join(k + 'N' for k in keys)}")
            key, value = keys[match[1]], float(match[2])
            kw[key] = (math.inf if value > 100 else value) if key == "magnitude_std" else value
        if "num_ops" in kw:
            kw["num_ops"] = int(kw["num_ops"])
        if "increasing" in kw:
            kw["increasing"] = bool(kw["increasing"])
        spec = cls(**kw)
        if not (0 <= spec.magnitude <= 100 and 0 <= spec.num_ops <= 16 and 0 <= spec.prob <= 1
                and 0 < spec.magnitude_max <= 100):
            raise ConfigError(f"{flag} {policy!r}: need 0 <= m <= 100, 0 <= n <= 16, 0 <= p <= 1, 0 < mmax <= 100")
        return spec

    def draw(self, n: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per layer: (op index or -1 for none, magnitude, sign) for n images, from `gen` alone."""
        layers = []
        for _ in range(self.num_ops):
            op = torch.randint(len(self.ops), (n,), generator=gen)
            applied = torch.rand(n, generator=gen) < self.prob
            noise = torch.randn(n, generator=gen, dtype=torch.float64)
            uniform = torch.rand(n, generator=gen, dtype=torch.float64)
            sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
            if math.isinf(self.magnitude_std):
                m = uniform * self.magnitude
            else:
                m = self.magnitude + noise * self.magnitude_std
            m = m.clamp(0.0, self.magnitude_max)
            layers.append((torch.where(applied, op, -1), m, sign))
        return layers

    def apply(self, x: torch.Tensor, layers) -> torch.Tensor:
        """Apply drawn layers to a uint8 batch (the rows the draws were made for)."""
        x = x.clone()
        for op_idx, m, sign in layers:
            for k in op_idx.unique().tolist():
                if k < 0:
                    continue
                rows = (op_idx == k).nonzero().squeeze(1)
                fn, level = OPS[self.ops[k]]
                arg = level(m[rows], sign[rows]) if level is not None else None
                x[rows.to(x.device)] = fn(x[rows.to(x.device)], arg)
        return x

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.draw(len(x), gen))


def slice_draws(layers, start: int, stop: int):
    """The draws of rows [start, stop) of a global batch: one rank's share."""
    return [(op[start:stop], m[start:stop], s[start:stop]) for op, m, s in layers]


# timm's policy names (timm.data.auto_augment); the DataLoader path takes any of them.
TIMM_POLICIES = ("rand", "augmix", "original", "originalr", "v0", "v0r", "3a")


def check_policy(policy: str, flag: str = "--randaug") -> None:
    """A ConfigError for a policy string timm would not read (RandAugment's parts are checked in full)."""
    name = policy.split("-")[0]
    if name == "rand":
        RandAugment.parse(policy, flag)
    elif name not in TIMM_POLICIES:
        raise ConfigError(f"{flag} {policy!r}: unknown policy {name!r}; timm's are {', '.join(TIMM_POLICIES)} "
                          "(e.g. rand-m9-mstd0.5-inc1)")

