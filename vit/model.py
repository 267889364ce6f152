"""Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words").

Pre-norm encoder, [CLS] token, learned absolute position embeddings. Parameter names match timm's
`VisionTransformer`, so a timm state dict of the same configuration loads with `strict=True`.

Pure: no I/O, no argparse, nothing of this package but its errors. Ordered bottom-up: config, position
embeddings, patch embedding, attention, MLP, block, model. Attention and the MLP call the reference torch
ops; `vit.kernels.use` (which `create_model` applies) swaps in kernels measured faster on a device.
Shape letters: B batch, N tokens, C width, H heads, D head dim, h/w patch grid, P prefix tokens ([CLS],
registers, and any a subclass adds: DeiT's in vit/deit.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .errors import ConfigError, InputError, check_known_options

# --------------------------------------------------------------------------------------------------------
# Config


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # True is an int to Python, not a size


def to_2tuple(x: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 2:
        raise ConfigError(f"expected an int or a pair (height, width), got {x!r}")
    return x


def conv_stem_plan(patch_size: int, embed_dim: int) -> tuple[list[tuple[int, int]], int]:
    """The conv stem for a patch size (Xiao et al., 2021, "Early convolutions help transformers see better"):
    its 3x3 convolutions as (stride, output channels), and the kernel = stride of the projection after them.

    A stride-2 conv for each factor 2 of the patch size, then a stride-1 conv where a factor is left over (or where
    there is no factor 2: patch 7); the projection covers that leftover factor (1x1 where the convs reach the
    patch grid). Widths start at embed_dim / 8 (a multiple of 8) and double with each stride-2 conv, up to
    embed_dim: at width 192 and patch 16, the paper's 24, 48, 96, 192 and a 1x1 projection.
    """
    twos, rest = 0, patch_size
    while rest % 2 == 0:
        twos, rest = twos + 1, rest // 2
    start = min(embed_dim, max(8, 8 * round(embed_dim / 64)))
    layers = [(2, min(start * 2**i, embed_dim)) for i in range(twos)]
    if rest > 1 or not layers:
        layers.append((1, layers[-1][1] if layers else start))
    return layers, rest


# Configurations above this many parameters are refused before they are built (ViT-H/14 has 0.63e9, ViT-G/14
# 1.8e9): a size read from a file must not exhaust memory. The environment variable VIT_MAX_PARAMS raises it.
MAX_PARAMS = 4_000_000_000
MAX_SIZE = 2**31 - 1  # any one size (width, depth, image side, ...): torch's int32 kernels' bound


@dataclass(frozen=True)
class ViTConfig:
    """Everything that defines the architecture. Field names are timm's `VisionTransformer` arguments (and
    norm_eps, the eps of its norm_layer; stem, which patch embedding)."""

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "token"  # "token": read the [CLS] output; "avg": mean of the patch tokens
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: float | None = None  # layer scale; None disables it
    class_token: bool = True
    reg_tokens: int = 0  # register tokens (Darcet et al., 2024)
    no_embed_class: bool = False  # position embeddings cover only the patch tokens, not [CLS]/registers
    pos_embed: str = "learn"  # "learn" or "sincos" (fixed 2-D sin-cos)
    fc_norm: bool | None = None  # norm after pooling instead of before; None: on exactly for global_pool="avg"
    dynamic_img_size: bool = False  # interpolate position embeddings to the input's patch grid
    drop_rate: float = 0.0  # head dropout
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0  # attention output projection and MLP dropout
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly from 0 to this at the last block
    patch_drop_rate: float = 0.0  # training only: drop this fraction of patch tokens per image (PatchDropout)
    norm_eps: float = 1e-6  # every LayerNorm's epsilon: timm's and JAX's 1e-6; transformers' configs say 1e-12
    stem: str = "patch"  # "patch": one conv, kernel = stride = patch (the paper's); "conv": 3x3 convs first

    def __post_init__(self):
        def fail(name, rule):
            raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        if self.global_pool not in ("token", "avg"):
            fail("global_pool", "'token' or 'avg'")
        if self.global_pool == "token" and not self.class_token:
            raise ConfigError("global_pool='token' needs class_token=True; use global_pool='avg' without it")
        if self.pos_embed not in ("learn", "sincos"):
            fail("pos_embed", "'learn' or 'sincos'")
        if self.stem not in ("patch", "conv"):
            fail("stem", "'patch' (one patchify conv) or 'conv' (3x3 convolutions first, Xiao et al., 2021)")
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if not _is_int(getattr(self, name)) or not 1 <= getattr(self, name) <= MAX_SIZE:
                fail(name, f"a positive integer up to {MAX_SIZE}")
        if not _is_int(self.num_classes) or not 0 <= self.num_classes <= MAX_SIZE:
            fail("num_classes", f"an integer >= 0 (0: no head), up to {MAX_SIZE}")
        if not _is_int(self.reg_tokens) or not 0 <= self.reg_tokens <= MAX_SIZE:
            fail("reg_tokens", f"an integer >= 0, up to {MAX_SIZE}")
        for name in ("qkv_bias", "qk_norm", "class_token", "no_embed_class", "dynamic_img_size"):
            if not isinstance(getattr(self, name), bool):  # a config from a file: "no" is not False
                fail(name, "True or False")
        if self.fc_norm is not None and not isinstance(self.fc_norm, bool):
            fail("fc_norm", "True, False or None")
        if self.init_values is not None and (not isinstance(self.init_values, (int, float)) or
                                             isinstance(self.init_values, bool) or not 0 <= self.init_values < math.inf):
            fail("init_values", "None or a finite number >= 0 (0: off)")
        if not isinstance(self.mlp_ratio, (int, float)) or isinstance(self.mlp_ratio, bool) or \
                not 0 < self.mlp_ratio * self.embed_dim <= MAX_SIZE:
            fail("mlp_ratio", f"a positive finite number (MLP width embed_dim x mlp_ratio up to {MAX_SIZE})")
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise ConfigError(f"mlp_ratio {self.mlp_ratio} leaves the MLP no hidden units at embed_dim {self.embed_dim}")
        for name in ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate",
                     "patch_drop_rate"):
            if not isinstance(getattr(self, name), (int, float)) or not 0.0 <= getattr(self, name) < 1.0:
                fail(name, "in [0, 1)")
        if not isinstance(self.norm_eps, (int, float)) or isinstance(self.norm_eps, bool) or \
                not 0 < self.norm_eps < 1:
            fail("norm_eps", "a number in (0, 1)")
        if isinstance(self.img_size, list):  # from JSON
            object.__setattr__(self, "img_size", tuple(self.img_size))
        size = self.img_size if isinstance(self.img_size, tuple) else (self.img_size,)
        if not 1 <= len(size) <= 2 or not all(_is_int(s) and 1 <= s <= MAX_SIZE for s in size):
            fail("img_size", f"a positive integer or a pair (height, width), each up to {MAX_SIZE}")
        limit = int(os.environ.get("VIT_MAX_PARAMS", MAX_PARAMS))
        if self.num_params() > limit:  # checked before anything is allocated: sizes may come from a file
            raise ConfigError(f"this configuration has ~{self.num_params():.3g} parameters, over the limit of "
                              f"{limit:.3g} (embed_dim {self.embed_dim}, depth {self.depth}, mlp_ratio "
                              f"{self.mlp_ratio}, img_size {self.img_size}, patch_size {self.patch_size}); "
                              "raise it with the environment variable VIT_MAX_PARAMS")

    @property
    def num_prefix_tokens(self) -> int:
        """P, the learned tokens before the patches: [CLS] and registers (a subclass's config counts its own)."""
        return int(self.class_token) + self.reg_tokens

    def num_params(self) -> int:
        """Parameter count from the fields alone (norms and biases included), nothing allocated."""
        H, W = to_2tuple(self.img_size)
        C, p, hidden = self.embed_dim, self.patch_size, int(self.embed_dim * self.mlp_ratio)
        prefix = self.num_prefix_tokens
        tokens = (H // p) * (W // p) + (0 if self.no_embed_class else prefix) + prefix  # position rows, then tokens
        block = 4 * C * C + 2 * C * hidden + 9 * C + hidden
        head = (C + 1) * self.num_classes
        stem = (self.in_chans * p * p + 1) * C  # the patchify conv
        if self.stem == "conv":  # 3x3 convs without bias, each with a BatchNorm's weight and bias, then `proj`
            layers, k = conv_stem_plan(p, C)
            widths = [self.in_chans] + [width for _, width in layers]
            stem = sum(9 * a * b + 2 * b for a, b in zip(widths, widths[1:])) + (widths[-1] * k * k + 1) * C
        return self.depth * block + tokens * C + stem + 2 * C + head  # 2 C: the final norm

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        check_known_options(d, cls, "config")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["img_size"], tuple):
            d["img_size"] = list(d["img_size"])
        return d

    def replace(self, **overrides) -> "ViTConfig":
        check_known_options(overrides, type(self), "config")
        return replace(self, **overrides)


# --------------------------------------------------------------------------------------------------------
# Position embeddings


def resample_grid(pos: torch.Tensor, old_size: Sequence[int], new_size: Sequence[int]) -> torch.Tensor:
    """Position embeddings of a patch grid, (1, h*w, C) -> (1, h'*w', C): resampled as an image, bicubic with
    antialias, as timm does when fine-tuning at a new resolution (`vit.resample_pos_embed` adds the checks)."""
    grid = rearrange(pos.float(), "1 (h w) c -> 1 c h w", h=old_size[0], w=old_size[1])
    grid = F.interpolate(grid, size=tuple(new_size), mode="bicubic", antialias=True)
    return rearrange(grid, "1 c h w -> 1 (h w) c").to(pos.dtype)


def sincos_pos_embed_2d(grid_size: Sequence[int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (1, h*w, dim): MoCo v3 / big_vision `posemb_sincos_2d`."""
    if dim % 4 != 0:
        raise ConfigError(f"sin-cos position embeddings need embed_dim divisible by 4, got {dim}")
    h, w = grid_size
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    omega = torch.arange(dim // 4, dtype=torch.float32) / max(dim // 4 - 1, 1)
    omega = 1.0 / temperature**omega
    y = y.flatten()[:, None] * omega[None, :]  # (h*w, dim/4)
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]  # (1, h*w, dim)


# --------------------------------------------------------------------------------------------------------
# Layers


class ConvNormAct(nn.Module):
    """relu(bn(conv(x))): a 3x3 conv (no bias: the norm shifts), BatchNorm and ReLU, named as timm's `ConvNormAct`."""

    def __init__(self, *, in_chans: int, out_chans: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ConvStem(nn.Sequential):
    """The convolutions of a conv stem (`conv_stem_plan`), as timm's `ConvStem` inside its `HybridEmbed` (whose
    `backbone` it is): (B, in_chans, H, W) -> (B, width, H / s, W / s), s the product of the strides.

    A stem none of whose parameters trains (a frozen embedding, LoRA, a linear probe) stays in eval mode when the
    model trains: it normalises with the BatchNorm statistics it was loaded with and leaves them as they are.
    """

    def __init__(self, *, in_chans: int, layers: Sequence[tuple[int, int]]):
        widths = [in_chans] + [width for _, width in layers]
        super().__init__(*[ConvNormAct(in_chans=a, out_chans=b, stride=stride)
                           for (stride, _), a, b in zip(layers, widths, widths[1:])])

    def train(self, mode: bool = True) -> "ConvStem":
        return super().train(mode and any(p.requires_grad for p in self.parameters()))


class PatchEmbed(nn.Module):
    """Image to patch tokens (paper eq. 1, x_p E). stem "patch": `proj`, a conv with kernel = stride = patch size.
    stem "conv": `backbone`, 3x3 convs with BatchNorm and ReLU (`ConvStem`), then `proj`, a conv with kernel =
    stride = the factor of the patch size they leave (1x1 where they reach the patch grid). Both give the (h, w)
    grid of H / patch x W / patch tokens for every image size the patch size divides."""

    def __init__(self, *, img_size, patch_size, in_chans: int, embed_dim: int, strict_img_size: bool = True,
                 stem: str = "patch"):
        super().__init__()
        self.img_size, self.patch_size = to_2tuple(img_size), to_2tuple(patch_size)
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ConfigError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.strict_img_size = strict_img_size
        if stem == "conv":
            if self.patch_size[0] != self.patch_size[1]:
                raise ConfigError(f"stem='conv' takes a square patch, got patch_size {self.patch_size}")
            layers, k = conv_stem_plan(self.patch_size[0], embed_dim)
            self.backbone, proj_in, kernel = ConvStem(in_chans=in_chans, layers=layers), layers[-1][1], (k, k)
        else:  # no parameters: the state-dict names of the patchify stem stay timm's
            self.backbone, proj_in, kernel = nn.Identity(), in_chans, self.patch_size
        self.proj = nn.Conv2d(proj_in, embed_dim, kernel_size=kernel, stride=kernel)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise InputError(f"expected images of shape (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InputError(f"expected a floating-point image tensor, got dtype {x.dtype}: convert with x.float()")
        if x.shape[1] != self.in_chans:
            raise InputError(f"expected {self.in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
        w = self.proj.weight
        if x.device != w.device:
            raise InputError(f"the input is on {x.device} but the model is on {w.device}: move one with .to()")
        # Under autocast the conv casts its inputs itself, float64 excepted; otherwise torch would fail deep
        # inside conv2d.
        autocast = torch.is_autocast_enabled(x.device.type)
        if x.dtype != w.dtype and (not autocast or x.dtype == torch.float64):
            how = ("torch.autocast casts no float64 input: convert with x.float()" if autocast else
                   f"convert with x.to({w.dtype}), or run under torch.autocast")
            raise InputError(f"the input is {x.dtype} but the model is {w.dtype}: {how}")
        H, W = x.shape[-2:]
        if self.strict_img_size and (H, W) != self.img_size:
            raise InputError(f"expected image size {self.img_size[0]}x{self.img_size[1]}, got {H}x{W}: resize the "
                             "input, or create the model with dynamic_img_size=True")
        if H % self.patch_size[0] or W % self.patch_size[1] or not (H and W):
            raise InputError(f"image size {H}x{W} is not divisible by patch size {self.patch_size}"
                             if H and W else f"image size {H}x{W} holds no patch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.proj(self.backbone(x)).permute(0, 2, 3, 1)  # (B, in_chans, H, W) -> (B, h, w, C)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over (B, H, N, D): the reference attention (`vit.kernels` has others)."""
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def gelu_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """linear(dropout(gelu(h))): the MLP after fc1, as reference ops (`vit.kernels` has others)."""
    a = F.gelu(h)
    return F.linear(F.dropout(a, dropout_p) if dropout_p else a, weight, bias)


class Attention(nn.Module):
    """Multi-head self-attention (paper appendix A, eq. 5-8) with one fused qkv projection.

    `attend` computes softmax(q k^T / sqrt(D)) v; `vit.kernels.use` replaces it per module.
    """

    def __init__(self, *, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attend = attend

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Views into the one qkv output, no copies: (B, N, 3C) -> 3 x (B, H, N, D) with strides over 3C.
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_heads(x)
        x = self.attend(q, k, v, self.attn_drop if self.training else 0.0)  # (B, H, N, D)
        return self.proj_drop(self.proj(rearrange(x, "b h n d -> b n (h d)")))


class Mlp(nn.Module):
    """fc2(gelu(fc1(x))) (paper eq. 3). `gelu_fc2` computes everything after fc1; `vit.kernels.use` replaces it."""

    def __init__(self, *, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)  # after the GELU (inside gelu_fc2) and after fc2
        self.gelu_fc2 = gelu_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropout_p = self.drop.p if self.training else 0.0
        return self.drop(self.gelu_fc2(self.fc1(x), self.fc2.weight, self.fc2.bias, dropout_p))


class LayerScale(nn.Module):
    """Per-channel residual scale (CaiT, Touvron et al., 2021); `gamma` as timm names it."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drop the whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * mask / (1.0 - self.p)


class Block(nn.Module):
    """Pre-norm encoder block (paper eq. 2-3): x + attn(norm1(x)), then x + mlp(norm2(x)).

    Disabled options (layer scale, stochastic depth) are Identity, so `forward` has no branches.
    """

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, init_values: float | None = None, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop,
                              proj_drop=proj_drop, norm_eps=norm_eps)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


# --------------------------------------------------------------------------------------------------------
# Model


class VisionTransformer(nn.Module):
    """ViT classifier. Build from a `ViTConfig`, or from its fields as keyword arguments (timm-style).

    A subclass adds prefix tokens through `_add_prefix_tokens` and `_prefix_tokens`, with a config subclass
    that counts them (vit/deit.py: DeiT's).
    """

    config_class = ViTConfig  # the config it is built from; keyword arguments override this class's defaults
    # Set by create_model and the weight loaders, saved with the weights; data and evaluation code read them.
    preprocess = None  # a `vit.Preprocess`
    class_names: list[str] | None = None

    def __init__(self, config: ViTConfig | None = None, **overrides):
        super().__init__()
        cfg = (config or self.config_class()).replace(**overrides)
        if type(cfg) is not self.config_class:  # another config counts tokens and heads this class does not build
            raise ConfigError(f"{type(self).__name__} is built from a {self.config_class.__name__}, got a "
                              f"{type(cfg).__name__}: vit.deit.build_from_config builds the model of any config")
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.global_pool = cfg.global_pool
        self.embed_dim = self.num_features = cfg.embed_dim
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.no_embed_class = cfg.no_embed_class
        self.dynamic_img_size = cfg.dynamic_img_size
        self.grad_checkpointing = False
        self.patch_drop_rate = cfg.patch_drop_rate  # a trainer may change it between steps (a schedule)

        self.patch_embed = PatchEmbed(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                                      embed_dim=cfg.embed_dim, strict_img_size=not cfg.dynamic_img_size, stem=cfg.stem)
        D = cfg.embed_dim
        self._add_prefix_tokens(cfg)
        embed_len = self.patch_embed.num_patches + (0 if cfg.no_embed_class else self.num_prefix_tokens)
        # Fixed sin-cos embeddings stay a (frozen) parameter so state-dict names match the learned case.
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, D), requires_grad=cfg.pos_embed == "learn")
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)

        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear rule
        self.blocks = nn.Sequential(*[
            Block(dim=D, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                  qk_norm=cfg.qk_norm, init_values=cfg.init_values, proj_drop=cfg.proj_drop_rate,
                  attn_drop=cfg.attn_drop_rate, drop_path=dpr[i], norm_eps=cfg.norm_eps)
            for i in range(cfg.depth)
        ])
        use_fc_norm = cfg.global_pool == "avg" if cfg.fc_norm is None else cfg.fc_norm
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps) if not use_fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(D, eps=cfg.norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    def _add_prefix_tokens(self, cfg: ViTConfig) -> None:
        """[CLS] (paper eq. 1, x_class) and the registers; a subclass adds its own here, so that its tokens stand
        before pos_embed in the parameter order (an optimizer's saved state follows that order)."""
        D = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D)) if cfg.reg_tokens else None

    def _prefix_tokens(self) -> list[torch.Tensor]:
        """The prefix tokens in sequence order, each (1, n, C): P = config.num_prefix_tokens rows in all."""
        return [t for t in (self.cls_token, self.reg_token) if t is not None]

    # ---- initialisation and timm-style model API

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's default ViT init: trunc-normal(0.02) linears and position embeddings, tiny [CLS]. Convolutions
        keep torch's init (as timm's patchify conv); the conv stem's BatchNorms start at weight 1, bias 0."""
        if self.config.pos_embed == "sincos":
            pe = sincos_pos_embed_2d(self.patch_embed.grid_size, self.embed_dim)
            if not self.no_embed_class:
                pe = torch.cat([torch.zeros(1, self.num_prefix_tokens, self.embed_dim), pe], dim=1)
            self.pos_embed.copy_(pe)
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n in ("pos_embed", "cls_token", "reg_token") if getattr(self, n) is not None}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth, as timm's (its layer-decay helper reads them): stem, blocks, final norm."""
        return dict(stem=r"^cls_token|reg_token|pos_embed|patch_embed",
                    blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass: less memory, about a third more compute."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def _new_head(self, num_classes: int) -> nn.Module:
        """A freshly initialised linear head for `num_classes` on the model's device and dtype (0: Identity)."""
        head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        return head.to(self.pos_embed.device, self.pos_embed.dtype)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised one for `num_classes` (0: no head, features out). Class
        names for another class count are dropped: they named the old head's outputs (set `class_names` anew)."""
        global_pool = global_pool or self.global_pool
        if self.class_names is not None and len(self.class_names) != num_classes:
            self.class_names = None
        # The norms stay as built (as timm's): the config says so, so that saved weights load back alike.
        self.config = self.config.replace(num_classes=num_classes, global_pool=global_pool,
                                          fc_norm=isinstance(self.fc_norm, nn.LayerNorm))
        self.num_classes, self.global_pool = num_classes, global_pool
        self.head = self._new_head(num_classes)

    # ---- forward

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        B, h, w, C = x.shape
        pos_embed = self.pos_embed
        if (h, w) != self.patch_embed.grid_size:  # only reachable with dynamic_img_size
            prefix = 0 if self.no_embed_class else self.num_prefix_tokens
            grid = (sincos_pos_embed_2d((h, w), C).to(pos_embed) if self.config.pos_embed == "sincos" else
                    resample_grid(pos_embed[:, prefix:], self.patch_embed.grid_size, (h, w)))
            pos_embed = torch.cat([pos_embed[:, :prefix], grid], dim=1)
        x = x.reshape(B, h * w, C)
        prefix_tokens = [t.expand(B, -1, -1) for t in self._prefix_tokens()]
        if self.no_embed_class:
            x = x + pos_embed
            return torch.cat(prefix_tokens + [x], dim=1)
        return torch.cat(prefix_tokens + [x], dim=1) + pos_embed  # (B, P + h*w, C)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> tokens (B, P + h*w, C) with their positions (paper eq. 1)."""
        return self.pos_drop(self._pos_embed(self.patch_embed(x)))

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Keep a random subset of each image's patch tokens (PatchDropout, Liu et al., 2022; as timm's).

        Training only: fewer tokens make a step cheaper (attention quadratically, the rest linearly) and act
        as a regulariser; evaluation sees every token. Prefix tokens ([CLS], registers) are always kept.
        """
        P, (B, N, C) = self.num_prefix_tokens, x.shape
        keep = max(1, int((N - P) * (1.0 - self.patch_drop_rate)))
        idx = torch.randn(B, N - P, device=x.device).argsort(dim=-1)[:, :keep]
        patches = x[:, P:].gather(1, idx.unsqueeze(-1).expand(-1, -1, C))
        return torch.cat([x[:, :P], patches], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> all tokens after the final norm, (B, P + h*w, C); fewer patch tokens in
        training with patch_drop_rate."""
        x = self.embed(x)
        if self.training and self.patch_drop_rate > 0:
            x = self._drop_patches(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        return x[:, 0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, C) -> logits (B, num_classes), or the pooled, normed features with pre_logits."""
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def take_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """Block indices as timm's `feature_take_indices`: None all, an int n the last n, a sequence those
        indices (negative from the end)."""
        depth = len(self.blocks)
        if indices is None or isinstance(indices, int):
            n = depth if indices is None else indices
            if not 0 < n <= depth:
                raise ConfigError(f"indices={n}: take the last 1 to {depth} blocks")
            return list(range(depth - n, depth))
        take = [i + depth if i < 0 else i for i in indices]
        if not take or not all(0 <= i < depth for i in take):
            raise ConfigError(f"block indices {list(indices)} out of range for a model of depth {depth}")
        return take

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, output_dict: bool = False,
                              attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        """Outputs of chosen blocks, with timm's signature and results (`indices` as `take_indices`).

        output_fmt "NCHW" gives (B, C, h, w) patch maps, "NLC" (B, h*w, C). Returns the intermediates, or
        (final normed tokens, intermediates) unless intermediates_only, or with output_dict timm's dict
        ("image_intermediates", "image_intermediates_prefix", "image_features"). Attention masks are not
        supported: this model's attention is unmasked.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ConfigError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        if attn_mask is not None or is_causal:
            raise ConfigError("attn_mask / is_causal: this ViT's attention takes no mask")
        take = self.take_indices(indices)
        h, w = x.shape[-2] // self.patch_embed.patch_size[0], x.shape[-1] // self.patch_embed.patch_size[1]
        x = self.embed(x)
        intermediates = []
        for i, blk in enumerate(self.blocks[: max(take) + 1] if stop_early else self.blocks):
            x = blk(x)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        P = self.num_prefix_tokens
        prefixes = [y[:, :P] for y in intermediates] if P else None
        intermediates = [y[:, P:] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [rearrange(y, "b (h w) c -> b c h w", h=h, w=w).contiguous() for y in intermediates]
        if output_dict:
            out = {"image_intermediates": intermediates}
            if return_prefix_tokens and prefixes is not None:
                out["image_intermediates_prefix"] = prefixes
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and prefixes is not None:
            intermediates = list(zip(intermediates, prefixes))
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of `indices` (and the final norm, the head), as timm's; returns the
        indices kept."""
        take = self.take_indices(indices)
        self.blocks = self.blocks[: max(take) + 1]
        self.config = self.config.replace(depth=len(self.blocks))
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0)
        return take
