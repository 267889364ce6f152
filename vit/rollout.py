"""Attention rollout (Abnar and Zuidema, 2020, "Quantifying Attention Flow in Transformers").

Each block's attention is averaged over heads; the residual connection is accounted for by adding the
identity and renormalising rows (the paper's 0.5 * A + 0.5 * I); the per-block matrices are then multiplied
from the first block up: R = A_L @ ... @ A_2 @ A_1. Row i of R says how much of token i's final
representation flows from each input token. The [CLS] row, over the patch tokens, is the heat map.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from .errors import InputError


@torch.no_grad()
def attention_maps(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-block softmax attention weights of a `VisionTransformer`, each (B, H, N, N), for visualisation.

    Runs the blocks as they are and, next to each, recomputes its attention explicitly from the same input,
    so the model's forward keeps whatever attention kernel it uses.
    """
    x = model.embed(x)
    maps = []
    for blk in model.blocks:
        q, k, _ = blk.attn.qkv_heads(blk.norm1(x))
        maps.append(((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).float().softmax(dim=-1))
        x = blk(x)
    return maps


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-block attention weights, each (B, H, N, N) with rows summing to one -> rollout (B, N, N).

    Rows of the result sum to one (each factor is row-stochastic, and so is their product).
    """
    if not attentions:
        raise InputError("attention rollout needs the attention maps of at least one block")
    rollout = None
    for attn in attentions:
        if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
            raise InputError(f"expected attention weights of shape (B, H, N, N), got {tuple(attn.shape)}")
        a = attn.double().mean(dim=1)  # (B, N, N): average the heads
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)  # the residual path
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout  # later blocks multiply on the left
    return rollout.float()


@torch.no_grad()
def rollout_heatmap(model, images: torch.Tensor) -> torch.Tensor:
    """Rollout heat maps on the patch grid, (B, h, w), each scaled to [0, 1] for display.

    Reads the [CLS] row; a model without a class token (global_pool="avg") uses the mean of the patch rows,
    which is what its pooled feature averages. Register tokens are dropped from the columns.
    """
    rollout = attention_rollout(attention_maps(model, images))  # (B, N, N)
    P = model.num_prefix_tokens
    h, w = images.shape[-2] // model.patch_embed.patch_size[0], images.shape[-1] // model.patch_embed.patch_size[1]
    rows = rollout[:, 0] if model.config.class_token else rollout[:, P:].mean(dim=1)  # (B, N)
    grid = rearrange(rows[:, P:], "b (h w) -> b h w", h=h, w=w)
    lo = grid.flatten(1).min(dim=1).values[:, None, None]
    hi = grid.flatten(1).max(dim=1).values[:, None, None]
    return (grid - lo) / (hi - lo).clamp(min=1e-12)


def upsample_heatmap(heatmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear, for overlaying on the image."""
    return F.interpolate(heatmap[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
