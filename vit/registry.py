"""Named model variants, as data: one table from names to config fields, one `create_model`.

`create_model` is the factory: name -> config -> model -> weights. `vit.weights` reads the weights (any format) with
what they say about themselves; this module decides the config and builds the model. ImageNet names are timm's,
where timm has that configuration; sizes are the ViT paper's Table 1 (Base/Large/Huge) and DeiT's Tiny/Small.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from dataclasses import dataclass, field

import torch

from . import kernels, weights
from .errors import CheckpointError, ConfigError, check_known_options
from .deit import DeiTConfig, build_from_config, with_overrides
from .flops import count_flops
from .model import ViTConfig, VisionTransformer, to_2tuple
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

# name: (embed_dim, depth, num_heads)
SIZES = {
    "nano": (64, 6, 4),
    "slim": (128, 6, 4),  # nano's depth at twice its width: Fashion-MNIST's 15 minutes on a CPU without bf16
    "micro": (192, 6, 3),  # tiny's width at half its depth: the CPU time-to-accuracy recipes
    "mini": (192, 9, 3),  # three quarters of tiny's depth: the CIFAR-size throughput benchmark's body
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}

# (size, patch, resolution, timm's default pretrained tag, classes of that checkpoint's head) wherever timm
# 1.0 registers vit_{size}_patch{patch}_{resolution}. Tags ending in "in21k" and DINO's are headless
# backbones (num_classes 0), as in timm; ask for num_classes=K to get a fresh head.
IMAGENET_VARIANTS = [
    ("tiny", 16, 224, "augreg_in21k_ft_in1k", 1000), ("tiny", 16, 384, "augreg_in21k_ft_in1k", 1000),
    ("small", 8, 224, "dino", 0),
    ("small", 16, 224, "augreg_in21k_ft_in1k", 1000), ("small", 16, 384, "augreg_in21k_ft_in1k", 1000),
    ("small", 32, 224, "augreg_in21k_ft_in1k", 1000), ("small", 32, 384, "augreg_in21k_ft_in1k", 1000),
    ("base", 8, 224, "augreg2_in21k_ft_in1k", 1000),
    ("base", 16, 224, "augreg2_in21k_ft_in1k", 1000), ("base", 16, 384, "augreg_in21k_ft_in1k", 1000),
    ("base", 32, 224, "augreg_in21k_ft_in1k", 1000), ("base", 32, 384, "augreg_in21k_ft_in1k", 1000),
    ("large", 14, 224, None, 1000),  # timm has the configuration but no weights for it
    ("large", 16, 224, "augreg_in21k_ft_in1k", 1000), ("large", 16, 384, "augreg_in21k_ft_in1k", 1000),
    ("large", 32, 224, "orig_in21k", 0), ("large", 32, 384, "orig_in21k_ft_in1k", 1000),
    ("huge", 14, 224, "orig_in21k", 0),
]

# DeiT's distilled models (Touvron et al., 2021), trained on ImageNet-1k from a RegNetY-16GF teacher: (size,
# resolution) wherever timm 1.0 registers deit_{size}_distilled_patch16_{resolution}; its tag is "fb_in1k".
DEIT_DISTILLED_VARIANTS = [("tiny", 224), ("small", 224), ("base", 224), ("base", 384)]

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
DIGITS_MEAN, DIGITS_STD = (0.3,), (0.38,)  # sklearn digits scaled from 0..16 to 0..1

# Small-image variants: (name, size, patch, img_size, in_chans, num_classes, mean, std, reason).
SMALL_IMAGE_VARIANTS = [
    ("vit_nano_patch2_8", "nano", 2, 8, 1, 10, DIGITS_MEAN, DIGITS_STD,
     "8x8 grayscale digits (sklearn): 2x2 patches give a 4x4 grid; 0.3M params train in a minute on CPU"),
    ("vit_nano_patch4_28", "nano", 4, 28, 1, 10, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
     "28x28 grayscale Fashion-MNIST/MNIST on a CPU budget: 7x7 grid, 0.3M params"),
    ("vit_slim_patch7_28", "slim", 7, 28, 1, 10, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
     "Fashion-MNIST in 15 min on 2 fp32 CPU cores: half micro's matmul cost, so twice its epochs fit"),
    ("vit_micro_patch7_28", "micro", 7, 28, 1, 10, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
     "Fashion-MNIST in 15 min on 2 CPU cores: 16 tokens cost a third of patch 4's 49 and learned faster per epoch"),
    ("vit_nano_patch4_32", "nano", 4, 32, 3, 10, CIFAR_MEAN, CIFAR_STD,
     "32x32 RGB CIFAR-10/100 on a CPU budget: 8x8 grid, 0.3M params"),
    ("vit_slim_patch4_32", "slim", 4, 32, 3, 10, CIFAR_MEAN, CIFAR_STD,
     "CIFAR-10 where an hour of micro is under 12 epochs (2 fp32 CPU cores): half its matmul cost"),
    ("vit_micro_patch4_32", "micro", 4, 32, 3, 10, CIFAR_MEAN, CIFAR_STD,
     "CIFAR-10 in an hour on 2 CPU cores: width 192 runs bf16 matmuls ~1.4x as efficiently as width 128"),
    ("vit_mini_patch4_32", "mini", 4, 32, 3, 10, CIFAR_MEAN, CIFAR_STD,
     "the CIFAR-size throughput benchmark's body; in an hour of 2 CPU cores it tied micro on CIFAR-10 (78.4%, 36 epochs)"),
    ("vit_tiny_patch4_28", "tiny", 4, 28, 1, 10, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
     "28x28 grayscale Fashion-MNIST/MNIST: 4x4 patches give a 7x7 grid"),
    ("vit_small_patch4_28", "small", 4, 28, 1, 10, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
     "28x28 grayscale Fashion-MNIST/MNIST, wider for GPUs"),
    ("vit_tiny_patch4_32", "tiny", 4, 32, 3, 10, CIFAR_MEAN, CIFAR_STD,
     "32x32 RGB CIFAR-10/100: 4x4 patches give an 8x8 grid (16x16 patches would leave 4 tokens)"),
    ("vit_small_patch4_32", "small", 4, 32, 3, 10, CIFAR_MEAN, CIFAR_STD,
     "32x32 RGB CIFAR-10/100, wider for GPUs"),
]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: ViTConfig
    preprocess: Preprocess
    description: str
    hf_hub_id: str | None = None  # where pretrained=True downloads from
    tags: tuple[str, ...] = field(default_factory=tuple)


def _imagenet_entries():
    for size, patch, res, tag, num_classes in IMAGENET_VARIANTS:
        dim, depth, heads = SIZES[size]
        name = f"vit_{size}_patch{patch}_{res}"
        # vit_small_patch8_224 is DINO's checkpoint (ImageNet mean/std); the rest are AugReg (mean/std 0.5).
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if name == "vit_small_patch8_224" else ((0.5,) * 3, (0.5,) * 3)
        yield ModelEntry(
            name=name,
            config=ViTConfig(img_size=res, patch_size=patch, num_classes=num_classes,
                             embed_dim=dim, depth=depth, num_heads=heads),
            preprocess=Preprocess((3, res, res), mean, std, "bicubic", 0.9 if res == 224 else 1.0),
            description=f"ViT-{size[0].upper()}/{patch} at {res}px"
            + (", ImageNet-1k head" if num_classes else ", headless backbone"),
            hf_hub_id=f"timm/{name}.{tag}" if tag else None,
        )


def _deit_distilled_entries():
    for size, res in DEIT_DISTILLED_VARIANTS:
        dim, depth, heads = SIZES[size]
        name = f"deit_{size}_distilled_patch16_{res}"
        yield ModelEntry(
            name=name,
            config=DeiTConfig(img_size=res, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads),
            preprocess=Preprocess((3, res, res), IMAGENET_MEAN, IMAGENET_STD, "bicubic", 0.9 if res == 224 else 1.0),
            description=f"DeiT-{size[0].upper()}/16 distilled at {res}px: [CLS] and distillation heads, ImageNet-1k",
            hf_hub_id=f"timm/{name}.fb_in1k",
        )


def _small_image_entries():
    for name, size, patch, res, chans, classes, mean, std, reason in SMALL_IMAGE_VARIANTS:
        dim, depth, heads = SIZES[size]
        yield ModelEntry(
            name=name,
            config=ViTConfig(img_size=res, patch_size=patch, in_chans=chans, num_classes=classes,
                             embed_dim=dim, depth=depth, num_heads=heads),
            preprocess=Preprocess((chans, res, res), mean, std, "bilinear", 1.0),
            description=reason,
        )


MODELS: dict[str, ModelEntry] = {e.name: e for e in [*_imagenet_entries(), *_deit_distilled_entries(),
                                                       *_small_image_entries()]}


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted; `pattern` is a shell-style wildcard such as 'vit_*_patch16_*'."""
    return sorted(n for n in MODELS if pattern is None or fnmatch.fnmatch(n, pattern))


def models_for_images(channels: int, height: int, width: int) -> list[str]:
    """Registered models that take (channels, height, width) images as they are, cheapest first (forward FLOPs)."""
    shape = (channels, height, width)
    fits = [n for n, e in MODELS.items() if (e.config.in_chans, *to_2tuple(e.config.img_size)) == shape]
    return sorted(fits, key=lambda n: (count_flops(MODELS[n].config), n))


def get_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=5, cutoff=0.6)
        hint = f"closest: {', '.join(close)}" if close else f"valid names: {', '.join(list_models())}"
        raise ConfigError(f"unknown model {name!r}; {hint}")
    return MODELS[name]


def create_model(name: str | None = None, pretrained: bool | str = False, *, attn_kernel: str = "auto",
                 mlp_kernel: str = "auto", **overrides) -> VisionTransformer:
    """Build a registered model by name, with any `ViTConfig` field as an override (distilled=True: DeiT's).

    pretrained: False for random init; True for the entry's hub weights; "hf-hub:ORG/REPO", a folder or a
    file path for other weights (read by `vit.weights`, with position embeddings and head adapted to the
    overrides). The architecture comes from the registered `name`, else from the weights' metadata
    (save_pretrained, train.py checkpoints, a timm or transformers config.json), so for such files the name
    may be left out. Weights that carry a config also give the stem (`ViTConfig.stem`), and the class count unless
    num_classes is overridden: their trained head is kept, and a CheckpointError names the head tensors they lack
    (with num_classes given, a new head is initialised instead). Preprocessing and class names come with the weights.
    attn_kernel, mlp_kernel: how the blocks compute attention and the MLP (`vit.kernels` policy names).
    """
    # Unknown keywords first (timm's create_model(model_name=...) too): before the name or the weights are looked up,
    # which would otherwise report what the misnamed keyword left unset.
    check_known_options(overrides, DeiTConfig, "config")
    entry = get_entry(name) if name is not None else None
    if pretrained:
        model = _create_pretrained(name, entry, pretrained, overrides)
    elif entry is None:
        raise ConfigError("create_model needs a model name (see vit.list_models()), or pretrained=PATH")
    else:
        config = with_overrides(entry.config, overrides)
        model = build_from_config(config)
        model.preprocess = preprocess_for(entry.preprocess, config)
    return kernels.use(model, attn=attn_kernel, mlp=mlp_kernel)


def _create_pretrained(name: str | None, entry: ModelEntry | None, source: bool | str | os.PathLike,
                       overrides: dict) -> VisionTransformer:
    if source is True:
        if entry is None:
            raise ConfigError("pretrained=True downloads a registered model's hub weights: give its name, "
                              "create_model(NAME, pretrained=True), or pass pretrained=PATH or 'hf-hub:ORG/REPO'")
        if entry.hf_hub_id is None:
            raise ConfigError(f"model {name!r} has no hub weights registered; pass pretrained=PATH or 'hf-hub:ORG/REPO'")
        source = f"hf-hub:{entry.hf_hub_id}"
    state, info = weights.read_pretrained(source)
    # The file's own metadata (not the registry's default) gives a class count: it is that classifier, head included.
    says_classes = info.config is not None or "num_classes" in (info.model_args or {})
    info = resolve_architecture(info, source)
    if entry is None:
        if info.config is None:
            raise ConfigError(
                f"{source} carries no model config (files from vit.save_pretrained and train.py do, and hub "
                "repos with a timm or transformers config.json): pass the name, create_model(NAME, pretrained=...)")
        base = info.config
        weights.check_config_fits(base, state, source)  # the file's own config: bounded by what the file holds
    else:
        base = entry.config
        if info.config is not None and "num_classes" not in overrides:
            base = base.replace(num_classes=info.config.num_classes)
        if info.config is not None:  # weights of one stem do not convert to the other: the file's is built
            base = base.replace(stem=info.config.stem)
    config = with_overrides(base, overrides)
    try:
        model = build_from_config(config)
    except ConfigError as e:
        if entry is not None or overrides:
            raise
        raise CheckpointError(f"{source} carries a model config that cannot be built: {e}") from e
    source_grid = weights.patch_grid(info.config) if info.config is not None else None
    try:
        weights.load_pretrained(model, state, source_grid=source_grid,
                                require_head=says_classes and "num_classes" not in overrides and config.num_classes > 0)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from e  # name the file

    preprocess = info.preprocess or (entry.preprocess if entry is not None else None)
    if preprocess is not None:
        model.preprocess = preprocess_for(preprocess, config)
    if info.class_names is not None and len(info.class_names) == config.num_classes:
        model.class_names = list(info.class_names)
    return model


def resolve_architecture(info: weights.PretrainedInfo, source: object = "") -> weights.PretrainedInfo:
    """`info` with a config where it names a registered architecture (a timm config.json) instead of giving
    one; unchanged where it has a config already or names an architecture we do not register."""
    if info.config is not None or info.architecture not in MODELS:
        return info
    try:  # an architecture argument we do not have is an error, not something to ignore
        config = with_overrides(MODELS[info.architecture].config, info.model_args or {})
    except ConfigError as e:
        raise CheckpointError(f"{source}: model_args of {info.architecture}: {e}") from e
    return dataclasses.replace(info, config=config)


def read_metadata(source: str | os.PathLike) -> weights.PretrainedInfo:
    """The config, preprocessing and class names that come with some weights, without building a model.

    source: a file, a folder or "hf-hub:ORG/REPO" (see `vit.weights.read_stored_metadata`); a timm config.json's
    architecture name is resolved to its registered config.
    """
    return resolve_architecture(weights.read_stored_metadata(source), source)


def preprocess_for(preprocess: Preprocess, config: ViTConfig) -> Preprocess:
    """`preprocess` adjusted to the config's image size and channel count (an override of either)."""
    H, W = to_2tuple(config.img_size)
    mean, std = preprocess.mean, preprocess.std
    if config.in_chans != len(mean):  # e.g. an RGB model made grayscale: average the statistics
        mean = (sum(mean) / len(mean),) * config.in_chans
        std = (sum(std) / len(std),) * config.in_chans
    return Preprocess((config.in_chans, H, W), mean, std, preprocess.interpolation, preprocess.crop_pct)


def model_table() -> str:
    """The README's model table (Markdown), from the registry. A test keeps README.md equal to it."""
    rows = ["| name | input | width/depth/heads | params (M) | GFLOPs | why |", "|---|---|---|---|---|---|"]
    for name in list_models():
        entry = MODELS[name]
        c = entry.config
        with torch.device("meta"):  # count parameters without allocating them
            params = sum(p.numel() for p in build_from_config(c).parameters())
        H, W = (c.img_size,) * 2 if isinstance(c.img_size, int) else c.img_size
        rows.append(f"| `{name}` | {H}x{W}x{c.in_chans} | {c.embed_dim}/{c.depth}/{c.num_heads} | "
                    f"{params / 1e6:.2f} | {count_flops(c) / 1e9:.3g} | {entry.description} |")
    return "\n".join(rows)
