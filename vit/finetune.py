"""Fine-tuning a pretrained backbone with fewer trainable parameters: freezing, and LoRA through peft.

    freeze(model, "backbone")  # a linear probe: only the head (and DeiT's distillation head) trains
    freeze(model, "4")         # the embeddings and blocks 0-3 stay as loaded, the rest trains
    add_lora(model, rank=8)    # LoRA adapters (Hu et al., 2022) on every block's attn.qkv, attn.proj, mlp.fc1
                               # and mlp.fc2, through peft; everything else frozen but the head
    plain = merge_lora(model)  # a copy with the adapters merged into plain weights (save_pretrained does this)

Frozen parameters keep requires_grad=False, so the optimizer never sees them and autograd computes no
gradient for them (nor, for a linear probe, through the backbone at all). The patch embedding, a conv stem
(`ViTConfig.stem="conv"`) included, is part of the embeddings: frozen, a conv stem also keeps its BatchNorm
statistics and normalises with them in training (`vit.model.ConvStem` stays in eval mode).
"""

from __future__ import annotations

import copy

import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError
from .model import gelu_linear

LORA_TARGETS = r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"  # peft matches the whole module name
HEADS = ("head", "head_dist")  # trained whatever is frozen: a new task's head starts fresh


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _train_heads_only(model: nn.Module) -> None:
    model.requires_grad_(False)
    for name in HEADS:
        if isinstance(getattr(model, name, None), nn.Module):
            getattr(model, name).requires_grad_(True)


def check_freeze(spec: str, depth: int | None = None) -> None:
    """--freeze's one rule, in one wording: 'backbone', or a block count from 1 to the model's depth (where it is
    not known yet, as when the flags are read, any count from 1)."""
    if spec == "backbone" or (spec.isascii() and spec.isdecimal() and len(spec) < 10 and 1 <= int(spec) <= (depth or int(spec))):
        return
    limit = depth if depth is not None else "the model's depth"
    raise ConfigError(f"--freeze {spec!r}: give 'backbone' (the head alone trains) or a block count from 1 to "
                      f"{limit} (the embeddings and that many blocks stay frozen)")


def freeze(model: nn.Module, spec: str) -> None:
    """spec "backbone": train the heads alone (a linear probe on the final features). spec N: freeze the patch
    and position embeddings, the [CLS]/distillation/register tokens and blocks 0..N-1."""
    check_freeze(spec, len(model.blocks))
    if spec == "backbone":
        _train_heads_only(model)
        return
    frozen = [model.patch_embed, *model.blocks[: int(spec)]]
    frozen += [getattr(model, n) for n in ("cls_token", "dist_token", "reg_token", "pos_embed")
               if getattr(model, n, None) is not None]
    for part in frozen:
        part.requires_grad_(False)


def add_lora(model: nn.Module, rank: int, alpha: float = 0.0) -> nn.Module:
    """Inject peft's LoRA adapters of `rank` into every block's attention and MLP linears, in place, and
    freeze everything but the adapters and the heads. Each adapted linear computes W x + (alpha / rank) B A x,
    B zero at the start (so the model starts as loaded); alpha 0 means alpha = rank. Call it after
    `vit.kernels.use` (create_model applies it), which would set the MLP's fused kernel back."""
    if rank < 1:
        raise ConfigError(f"--lora-rank must be >= 1, got {rank}")
    widest = lora_rank_limit(model)
    if rank > widest:  # checked before peft allocates (in + out) x rank values per adapted layer
        raise ConfigError(f"--lora-rank {rank} is more than the layers it adapts can use: a rank is at most the "
                          f"narrower side of each weight, here {widest} (embed_dim {model.embed_dim})")
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:
        raise ConfigError("--lora-rank needs the peft library: pip install 'vit[finetune]' (or: pip install peft)") from e
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=LORA_TARGETS), model)
    _train_heads_only(model)
    for m in model.modules():
        if _is_lora_layer(m):
            for name, p in m.named_parameters():
                p.requires_grad_("lora_" in name)
    for block in model.blocks:
        # The MLP's fused kernels read fc2's weight and bias directly, which would bypass fc2's adapter: an
        # adapted MLP computes GELU, then calls the fc2 module (`vit.kernels` documents the function's role).
        block.mlp.gelu_fc2 = _GeluThen(block.mlp.fc2)
    return model


def lora_rank_limit(model: nn.Module) -> int:
    """The largest useful LoRA rank: the narrowest side of the linears LoRA adapts (B A has at most that rank)."""
    block = model.blocks[0]
    layers = (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2)
    return min(min(m.in_features, m.out_features) for m in layers)


class _GeluThen:
    """linear(dropout(gelu(h))) through a module (here a LoRA-adapted fc2), with `gelu_fc2`'s signature."""

    def __init__(self, fc2: nn.Module):
        self.fc2 = fc2

    def __call__(self, h, weight, bias, dropout_p: float):
        a = F.gelu(h)
        return self.fc2(F.dropout(a, dropout_p) if dropout_p else a)


def _is_lora_layer(m: nn.Module) -> bool:
    return hasattr(m, "lora_A") and hasattr(m, "get_base_layer") and hasattr(m, "merge")


def has_lora(model: nn.Module) -> bool:
    return any(_is_lora_layer(m) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of `model` with every LoRA adapter merged into the weight it adapts (peft's merge) and the
    layers put back as plain nn.Linear: the names and shapes of the model without adapters."""
    merged = copy.deepcopy(model)
    for name, m in list(merged.named_modules()):
        if _is_lora_layer(m):
            m.merge()
            parent, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent), child, m.get_base_layer())
    for block in merged.blocks:
        if isinstance(block.mlp.gelu_fc2, _GeluThen):
            block.mlp.gelu_fc2 = gelu_linear  # the plain fc2 again: the reference op (vit.kernels.use sets others)
    if hasattr(merged, "peft_config"):
        del merged.peft_config
    return merged
