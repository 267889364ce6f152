"""The parts a training run is built from, each from the run's TrainConfig: the model, the learning-rate
schedule, Mixup/CutMix, the loss and the EMA copy (timm's schedulers, Mixup, SoftTargetCrossEntropy and ModelEmaV3).
The optimizer is vit/optim.py's; vit/train.py puts them together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from .errors import ConfigError
from .model import to_2tuple
from .recipes import TrainConfig
from .registry import create_model, get_entry

if TYPE_CHECKING:
    from timm.data import Mixup
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3



def check_small_model(cfg: TrainConfig) -> None:
    """--small-model must take the images --model takes: it trains on the same loaded data."""
    big, small = get_entry(cfg.model).config, get_entry(cfg.small_model).config
    size = [to_2tuple(cfg.img_size or c.img_size) for c in (big, small)]
    if size[0] != size[1] or big.in_chans != small.in_chans:
        raise ConfigError(f"--small-model {cfg.small_model} takes {size[1][0]}x{size[1][1]}x{small.in_chans} "
                          f"images, --model {cfg.model} {size[0][0]}x{size[0][1]}x{big.in_chans}: the two must "
                          "take the same input")


def build_model(cfg: TrainConfig, num_classes: int, data_channels: int):
    entry = get_entry(cfg.model)
    overrides = dict(num_classes=cfg.num_classes or num_classes)
    if cfg.img_size:
        overrides["img_size"] = cfg.img_size
    if cfg.drop_path:
        overrides["drop_path_rate"] = cfg.drop_path
    if cfg.patch_drop:
        overrides["patch_drop_rate"] = cfg.patch_drop
    if cfg.distilled:
        overrides["distilled"] = True
    if not cfg.pretrained and entry.config.in_chans != data_channels:
        overrides["in_chans"] = data_channels  # e.g. a grey dataset on an RGB variant, trained from scratch
    model = create_model(cfg.model, pretrained=cfg.pretrained or False, **overrides)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    return model


def build_scheduler(cfg: TrainConfig, optimizer, total_steps: int, warmup: int) -> Scheduler:
    """A linear warm-up to lr over `warmup` steps, then per-step decay to min_lr until `total_steps`,
    cosine or linear (timm's schedulers, the linear one its poly schedule of power 1; the warm-up a prefix, so the
    learning rate peaks where warm-up ends). Built again whenever a budget's plan changes its length."""
    from timm.scheduler import CosineLRScheduler, PolyLRScheduler

    common = dict(t_initial=max(1, total_steps - warmup), lr_min=cfg.min_lr, warmup_t=warmup,
                  warmup_lr_init=cfg.warmup_lr, warmup_prefix=True, t_in_epochs=False)
    if cfg.sched == "linear":
        return PolyLRScheduler(optimizer, power=1.0, **common)
    return CosineLRScheduler(optimizer, **common)


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
