"""Optimizers for training: parameter groups (weight decay, layer-wise lr decay) and timm's optimizers.

Muon's Newton-Schulz iterations run in the training precision: bf16 where the model trains in bf16 (CUDA, or a
CPU with native bf16), fp32 otherwise (vit/muon.py says why). timm is imported where an optimizer is built, so
that `import vit.train` (and `train.py --help`) starts without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .recipes import TrainConfig


def newton_schulz_dtype(precision: str) -> torch.dtype:
    """bf16 where the training step itself runs in bf16 (its matrix units are there), else fp32."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise lr decay: embeddings 0, block i is i + 1, final norm/head depth + 1."""
    if name.startswith(("cls_token", "dist_token", "reg_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model, weight_decay: float, layer_decay: float) -> list[dict]:
    """No weight decay on 1-D parameters (norms, biases) and on position embeddings and CLS/register tokens.

    With layer_decay > 0 (BEiT, Bao et al., 2022), block i's lr is scaled by layer_decay ** (depth + 1 - i),
    so early layers of a pretrained model move least; timm's scheduler applies the `lr_scale` of each group.
    """
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay()
    if not layer_decay:
        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    depth = len(model.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip
        lid = layer_id(name, depth)
        g = groups.setdefault((lid, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - lid),
        })
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def muon_groups(model, groups: list[dict]) -> list[dict]:
    """Split each group for Muon (Jordan et al., 2024): the blocks' and the patch embedding's weight matrices
    get orthogonalised momentum; 1-D parameters, position embeddings, [CLS]/register tokens and the head, which
    act as tables or read-outs rather than as maps between hidden spaces, get its Nesterov AdamW fallback."""
    tables = {id(p) for n, p in model.named_parameters()
              if n.startswith(("pos_embed", "cls_token", "dist_token", "reg_token", "head.", "head_dist."))}
    split = []
    for g in groups:
        for fallback in (False, True):
            params = [p for p in g["params"] if (p.ndim < 2 or id(p) in tables) == fallback]
            if params:
                split.append({**g, "params": params, "use_fallback": fallback})
    return split


def build_optimizer(cfg: TrainConfig, model, device: torch.device, precision: str) -> torch.optim.Optimizer:
    """AdamW, SGD or Muon over `param_groups`, as cfg.opt says; Muon orthogonalises in the training precision."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    # The fused CUDA kernel updates every parameter in one launch; on CPU the foreach path is the fast one.
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.opt == "sgd":  # the ViT paper's fine-tuning optimizer; weight decay is coupled (L2) here
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    if cfg.opt == "muon":
        from .muon import Muon

        return Muon(muon_groups(model, groups), ns_dtype=newton_schulz_dtype(precision), lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.95,
                    nesterov=True, adjust_lr_fn="match_rms_adamw", betas=(cfg.beta1, cfg.beta2), eps=cfg.opt_eps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.opt_eps, **fused)
