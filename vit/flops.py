"""Model FLOPs from a config, for the README's model table and the benchmarks' model FLOP utilisation."""

from __future__ import annotations

from typing import Sequence

from .model import ViTConfig, VisionTransformer, to_2tuple


def count_flops(config: ViTConfig | VisionTransformer, img_size: int | Sequence[int] | None = None) -> int:
    """Forward FLOPs for one image (a multiply-add counts 2), matrix products only; norms etc. are noise.

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
    stem = 2 * n * C * config.in_chans * p * p
    block = 2 * N * (3 * C * C + C * C + 2 * C * hidden) + 2 * 2 * N * N * C  # linears, then q@k^T and attn@v
    head = 2 * C * config.num_classes * (1 + getattr(config, "distilled", False))  # DeiT's second head
    return stem + config.depth * block + head
