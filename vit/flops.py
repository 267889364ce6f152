"""Model FLOPs from a config, for the README's model table and the benchmarks' model FLOP utilisation."""

from __future__ import annotations

from typing import Sequence

from .model import ViTConfig, VisionTransformer, conv_stem_plan, to_2tuple


def stem_flops(config: ViTConfig, H: int, W: int) -> int:
    """The patch embedding's forward FLOPs for one H x W image (a multiply-add counts 2): the patchify conv, or
    the conv stem's 3x3 convolutions (padding 1: each output side is the input side over the stride, rounded up)
    and its projection. BatchNorm and ReLU are not counted."""
    p, C = config.patch_size, config.embed_dim
    n = (H // p) * (W // p)
    if config.stem == "patch":
        return 2 * n * C * config.in_chans * p * p
    layers, k = conv_stem_plan(p, C)
    flops, c_in = 0, config.in_chans
    for stride, width in layers:
        H, W = -(-H // stride), -(-W // stride)
        flops += 2 * H * W * width * c_in * 9
        c_in = width
    return flops + 2 * n * C * c_in * k * k


def count_flops(config: ViTConfig | VisionTransformer, img_size: int | Sequence[int] | None = None) -> int:
    """Forward FLOPs for one image (a multiply-add counts 2), matrix products and convolutions only; norms etc.
    are noise.

    config: a model's config, or the model itself. A training step costs about 3x the forward (the backward
    pass computes two products per forward one).
    """
    if isinstance(config, VisionTransformer):
        config = config.config
    if not isinstance(config, ViTConfig):
        raise TypeError(f"count_flops takes a ViTConfig or a VisionTransformer, got {type(config).__name__}")
    H, W = to_2tuple(img_size or config.img_size)
    p, C = config.patch_size, config.embed_dim
    n = (H // p) * (W // p)
    N = n + config.num_prefix_tokens
    hidden = int(C * config.mlp_ratio)
    block = 2 * N * (3 * C * C + C * C + 2 * C * hidden) + 2 * 2 * N * N * C  # linears, then q@k^T and attn@v
    head = 2 * C * config.num_classes * (1 + getattr(config, "distilled", False))  # DeiT's second head
    return stem_flops(config, H, W) + config.depth * block + head
