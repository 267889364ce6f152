"""Optimizers for training: parameter groups (weight decay, layer-wise lr decay) and timm's optimizers.

timm's Muon orthogonalises each update with Newton-Schulz iterations in bfloat16, whatever the model's
precision. On a CPU without native bf16 (AVX2 only, e.g. AMD Zen 3) those matrix products run ~100x slower
than fp32 (about 1 against 168 GFLOP/s on two Zen 3 cores) and a CIFAR-size step spent most of its time in
them. `Muon` here runs the iterations in `ns_dtype`, chosen by the training precision: bf16 where the model
trains in bf16 (CUDA, or a CPU with native bf16), fp32 otherwise.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from timm.optim import Muon as TimmMuon
from timm.optim import muon as timm_muon

if TYPE_CHECKING:
    from .recipes import TrainConfig


class Muon(TimmMuon):
    """timm's Muon (Jordan et al., 2024) with the Newton-Schulz computation dtype as an argument."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        # timm's update functions look the function up in their module at each call: swap it for the step.
        original = timm_muon.zeropower_via_newtonschulz
        timm_muon.zeropower_via_newtonschulz = functools.partial(original, dtype=self.ns_dtype)
        try:
            return super().step(closure)
        finally:
            timm_muon.zeropower_via_newtonschulz = original


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
        return Muon(muon_groups(model, groups), ns_dtype=newton_schulz_dtype(precision), lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.95,
                    nesterov=True, adjust_lr_fn="match_rms_adamw", betas=(cfg.beta1, cfg.beta2), eps=cfg.opt_eps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.opt_eps, **fused)
