"""The parts a training run is built from, each from the run's TrainConfig: the model, the learning-rate
schedule, Mixup/CutMix, the loss and the EMA copy (timm's schedulers, Mixup, SoftTargetCrossEntropy and ModelEmaV3).
The optimizer is vit/optim.py's; vit/train.py puts them together.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Collection, Iterator

import torch.nn as nn

from . import sources
from .batches import loader_workers
from .distributed import Dist
from .errors import ConfigError
from .model import to_2tuple
from .recipes import TrainConfig, flag
from .registry import create_model, get_entry, list_models, models_for_images

if TYPE_CHECKING:
    from timm.data import Mixup
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3



def fit_model_to_data(cfg: TrainConfig, recipe: str, given: Collection[str]) -> tuple[TrainConfig, str | None]:
    """The model follows the data: where the recipe's model does not take the dataset's images as they are
    stored (size and channels), the cheapest registered model that does, with the line that says which and why;
    where none does, a ConfigError listing those that can be given with --model and --img-size. Never a silent
    resize to another size or channel count.

    Left as it is: a --model or --img-size on the command line, --pretrained weights (their model is the one
    fine-tuned), and data whose images are not known before loading (hf:, wds:, a folder of several sizes).
    """
    if {"model", "img_size"} & set(given) or cfg.pretrained:
        return cfg, None
    shape = sources.image_shape(cfg.dataset, cfg.data_dir)
    model = get_entry(cfg.model).config
    takes = (model.in_chans, *to_2tuple(model.img_size))
    if shape is None or shape == takes:
        return cfg, None
    C, H, W = shape
    images, recipes = f"{H}x{W}x{C}", f"the {recipe} recipe's {cfg.model} takes {takes[1]}x{takes[2]}x{takes[0]}"
    fits = models_for_images(C, H, W)
    if not fits:
        def tiles(c) -> bool:  # takes C channels, with a patch that tiles H x W
            ph, pw = to_2tuple(c.patch_size)
            return c.in_chans == C and H % ph == 0 and W % pw == 0

        near = [n for n in list_models() if tiles(get_entry(n).config)]
        resized = "" if H == W else f" (the images are then resized to {H}x{H})"
        raise ConfigError(f"--dataset {cfg.dataset}: its images are {images} and {recipes}; no registered model "
                          f"takes {images} images. Give --model NAME --img-size {H}{resized}; these take {C} "
                          f"channel(s) with a patch that divides {H}x{W}: {', '.join(near) or 'none'}")
    line = (f"model: {fits[0]}, the cheapest registered model that takes {cfg.dataset}'s {images} images as they "
            f"are ({recipes}; --model NAME trains another)")
    return TrainConfig.from_dict({**cfg.to_dict(), "model": fits[0]}), line


def fit_to_device(cfg: TrainConfig, on_cuda: dict, given: Collection[str],
                  device_type: str) -> tuple[TrainConfig, str | None]:
    """A new run on a CUDA device takes the recipe's `on_cuda` fields (a larger batch: a small ViT's step at a CPU's
    batch leaves a GPU idle) and compiles its training step (`torch.compile`: kernels fused for the GPU; on a CPU
    it measured 1.03-1.05x, less than its minute of compiling gives back in a short run, so it stays opt-in there).
    Fields given on the command line win; a token count or image size that changes along the run (--patch-drop-end,
    --res-start) compiles again at every value, so it keeps eager. On any device, `--workers -1` becomes the count
    this machine allows, saved with the run: a streamed epoch's layout depends on it, so a resumed run keeps it.
    Returns the config and the line that says what a GPU changed, if anything."""
    machine = {}
    if cfg.workers < 0:
        machine["workers"] = loader_workers(cfg.workers, Dist(world=int(os.environ.get("WORLD_SIZE", "1"))))
    changes = {}
    if device_type == "cuda":
        changes = {k: v for k, v in on_cuda.items() if k not in given and getattr(cfg, k) != v}
        if "compile" not in given and not cfg.compile and cfg.patch_drop_end < 0 and not cfg.res_start:
            changes["compile"] = True
    if not (changes or machine):
        return cfg, None
    said = ", ".join(f"--{flag(k)}" + ("" if isinstance(v, bool) else f" {v}") for k, v in changes.items())
    return (TrainConfig.from_dict({**cfg.to_dict(), **machine, **changes}),
            f"cuda: {said} (a GPU's settings; give the flag to choose another)" if changes else None)


def scale_lr(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """The learning rate at the run's batch from --lr at --lr-base-size's: lr x (batch / base) for SGD (Goyal et
    al. 2017), lr x sqrt(batch / base) for Adam-style optimizers, AdamW and Muon (Malladi et al. 2022; timm's
    train.py picks the same way). The config returned holds the scaled lr and no base, so a resumed run does
    not scale it again; the line says what changed (None at the base's own batch)."""
    if not cfg.lr_base_size:
        return cfg, None
    rule = cfg.lr_base_scale or ("linear" if cfg.opt == "sgd" else "sqrt")
    ratio = cfg.batch_size / cfg.lr_base_size
    lr = cfg.lr * (ratio if rule == "linear" else ratio ** 0.5)
    line = None if ratio == 1 else (f"lr: {lr:.3g} at batch {cfg.batch_size}, from --lr {cfg.lr:g} at "
                                    f"--lr-base-size {cfg.lr_base_size} ({rule} rule)")
    return TrainConfig.from_dict({**cfg.to_dict(), "lr": lr, "lr_base_size": 0}), line


def build_model(cfg: TrainConfig, num_classes: int, data_channels: int):
    entry = get_entry(cfg.model)
    overrides = dict(num_classes=cfg.num_classes or num_classes)
    if cfg.img_size:
        overrides["img_size"] = cfg.img_size
    if cfg.drop_path:
        overrides["drop_path_rate"] = cfg.drop_path
    if cfg.patch_drop:
        overrides["patch_drop_rate"] = cfg.patch_drop
    if cfg.stem:
        overrides["stem"] = cfg.stem
    if cfg.distilled:
        overrides["distilled"] = True
    if cfg.res_start:  # smaller images early in the run: position embeddings resampled to their grid
        overrides["dynamic_img_size"] = True
    if not cfg.pretrained and entry.config.in_chans != data_channels:
        overrides["in_chans"] = data_channels  # e.g. a grey dataset on an RGB variant, trained from scratch
    model = create_model(cfg.model, pretrained=cfg.pretrained or False, **overrides)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    return model


def build_scheduler(cfg: TrainConfig, optimizer, total_steps: int, warmup: int) -> Scheduler:
    """A linear warm-up to lr over `warmup` steps, then per-step decay to min_lr until `total_steps`,
    cosine or linear (timm's schedulers, the linear one its poly schedule of power 1; the warm-up a prefix, so the
    learning rate peaks where warm-up ends). Step s (counted from 1) trains with the schedule's value at s
    (`step_update(s)` before it): step `warmup` at lr, step `total_steps` at min_lr. Built again whenever a
    budget's plan changes its length."""
    from timm.scheduler import CosineLRScheduler, PolyLRScheduler

    common = dict(t_initial=max(1, total_steps - warmup), lr_min=cfg.min_lr, warmup_t=warmup,
                  warmup_lr_init=cfg.warmup_lr, warmup_prefix=True, t_in_epochs=False)
    if cfg.sched == "linear":
        return PolyLRScheduler(optimizer, power=1.0, **common)
    # A decay of one step (a run, or a budget's plan, that its warm-up fills up to the last step) is a cosine of one
    # step, which timm's constructor warns "will have no effect": as meant here, so its logger is silenced for
    # that call only, on every rank.
    with _silenced("timm.scheduler.cosine_lr") if common["t_initial"] == 1 else contextlib.nullcontext():
        return CosineLRScheduler(optimizer, **common)


@contextlib.contextmanager
def _silenced(logger: str) -> Iterator[None]:
    """`logger`'s records dropped while the block runs."""
    log, drop = logging.getLogger(logger), lambda record: False
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def base_lr(group: dict) -> float:
    """A parameter group's lr without its layer-decay scale: the schedule's value."""
    return group["lr"] / group.get("lr_scale", 1.0)


def build_mixup(cfg: TrainConfig, num_classes: int):
    if not (cfg.mixup or cfg.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)


def build_criterion(cfg: TrainConfig, mixup: Mixup | None) -> nn.Module:
    if mixup is not None:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()  # Mixup already made the targets soft (and smoothed them)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def build_ema(cfg: TrainConfig, model) -> ModelEmaV3 | None:
    if not cfg.ema_decay:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
