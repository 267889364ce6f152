"""Test-time views, what a model is scored on under --eval-hflip and --eval-shift: its logits averaged over each
image, its mirror image and the image moved a pixel or two each way (`predict_logits`), the border a move uncovers
black (`black`: the training crops' zero padding). train.py and evaluate.py score through `predict_logits`;
vit.metrics counts what it predicts.
"""

from __future__ import annotations

import torch

from .errors import ConfigError


def predict_logits(net, x: torch.Tensor, hflip: bool = False, shift: int = 0, fill=0.0) -> torch.Tensor:
    """net(x), or the mean of net's logits over test-time views of x: with `shift`, x also moved by that many
    pixels down and right and up and left (`translate`, the uncovered border set to `fill`); with `hflip`,
    each of those views mirrored left to right too. Both: 6 forward passes, as airbench's CIFAR-10 evaluation.
    For data whose classes do not depend on left and right or on a small move, as flips and crops in training
    assume."""
    views = [x] + ([translate(x, shift, fill), translate(x, -shift, fill)] if shift else [])
    views += [v.flip(-1) for v in views] if hflip else []
    logits = net(views[0])
    for v in views[1:]:
        logits = logits + net(v)
    return logits if len(views) == 1 else logits / len(views)


def translate(x: torch.Tensor, d: int, fill=0.0) -> torch.Tensor:
    """(B, C, H, W) images moved d pixels down and right (d < 0: up and left); the uncovered rows and columns
    are `fill` (a number, or per channel (C, 1, 1))."""
    H, W = x.shape[-2:]
    check_shift(abs(d), (H, W))
    out = torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand_as(x).clone()
    if d >= 0:
        out[..., d:, d:] = x[..., :H - d, :W - d]
    else:
        out[..., :d, :d] = x[..., -d:, -d:]
    return out


def check_shift(shift: int, size: tuple[int, int]) -> None:
    """A ConfigError naming --eval-shift where a move of `shift` pixels leaves nothing of a `size` image."""
    if shift >= min(size):
        raise ConfigError(f"--eval-shift {shift} moves a {size[0]}x{size[1]} image out of view: give fewer pixels "
                          "than its side")


def black(preprocess) -> torch.Tensor:
    """(C, 1, 1): a black pixel once normalised by `preprocess` (the zero padding of a uint8 crop)."""
    return (-torch.tensor(preprocess.mean) / torch.tensor(preprocess.std)).view(-1, 1, 1)
