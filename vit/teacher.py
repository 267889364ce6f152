"""A run's own teacher (--teacher-widths): a small convnet (vit/convnet.py) trained on the run's training split
before the student, kept in the run folder, and distilled from (vit/distill.py).

Its minutes count in the run's budget. A budget prices it before choosing the student (vit/plan.py choose_rung):
`TeacherCost` times a few of its steps on the run's first images and gives its epochs (at most --teacher-epochs,
as many as fit --teacher-share of the budget), their seconds, and what its forward pass adds to a student's step.
`fit_teacher` then trains it, or reads back the one an earlier process of the run trained.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.distributed as dist

from . import data, runs
from .budget import parse_budget
from .convnet import (ConvNet, TeacherSchedule, evaluate_convnet, is_convnet_file, load_convnet, parse_widths,
                      save_convnet, time_convnet, train_convnet)
from .errors import ConfigError
from .precision import resolve_precision
from .preprocess import Preprocess
from .recipes import TrainConfig
from .registry import get_entry

if TYPE_CHECKING:
    from .batches import Data
    from .distributed import Dist


def teacher_preprocess(cfg: TrainConfig, splits: Data) -> Preprocess:
    """The teacher's input: the run's images at their decoded size, normalised as the student's model is."""
    if not isinstance(splits.train, data.TensorData):
        raise ConfigError("--teacher-widths trains its convnet on images held in memory: give --data-mode memory "
                          f"(--dataset {cfg.dataset} is read from files here)")
    size = tuple(splits.train.images.shape[1:])
    norm = get_entry(cfg.model).preprocess
    mean, std = (norm.mean, norm.std) if len(norm.mean) == size[0] else ((0.5,) * size[0], (0.5,) * size[0])
    return Preprocess(size, mean, std, norm.interpolation, 1.0)


def teacher_schedule(cfg: TrainConfig, epochs: int | None = None) -> TeacherSchedule:
    return TeacherSchedule(epochs=epochs or cfg.teacher_epochs, seed=cfg.seed)


class TeacherCost:
    """What a config's teacher costs a budgeted run, timed once per width list on the run's first images:
    `cost(cfg)` -> (seconds its training takes, seconds its forward pass adds to a student step), (0, 0) for a
    config without one; `epochs(cfg)` -> the epochs it trains."""

    def __init__(self, splits: Data, device: torch.device):
        self.splits, self.device, self.timed = splits, device, {}

    def _time(self, cfg: TrainConfig) -> tuple[float, float]:
        """(seconds an epoch of training, seconds of forward pass an image)."""
        widths = parse_widths(cfg.teacher_widths)
        if widths not in self.timed:
            pre, train = teacher_preprocess(cfg, self.splits), self.splits.train
            schedule = teacher_schedule(cfg)
            batch = min(schedule.batch_size, len(train.labels))
            normalize = data.Normalize(pre.mean, pre.std, channels=pre.input_size[0], size=pre.input_size[1:],
                                       device=self.device)
            x, y = normalize(train.images[:batch].to(self.device)), train.labels[:batch]
            precision = resolve_precision(cfg.precision, self.device, widths[-1], training=True)
            rng = torch.random.get_rng_state()
            model = ConvNet(widths=widths, num_classes=len(self.splits.classes), in_chans=pre.input_size[0])
            torch.random.set_rng_state(rng)  # the run's random streams stay as they were
            step_s, forward_s = time_convnet(model, x, y, self.device, precision)
            self.timed[widths] = (step_s * (len(train.labels) // batch), forward_s / batch)
        return self.timed[widths]

    def epochs(self, cfg: TrainConfig) -> int:
        """--teacher-epochs, or with --budget as many of them as fit --teacher-share of it (at least one)."""
        if not cfg.budget:
            return cfg.teacher_epochs
        epoch_s = self._time(cfg)[0]
        return max(1, min(cfg.teacher_epochs, math.floor(cfg.teacher_share * parse_budget(cfg.budget) / epoch_s)))

    def cost(self, cfg: TrainConfig) -> tuple[float, float]:
        if not cfg.teacher_widths:
            return 0.0, 0.0
        epoch_s, forward_s = self._time(cfg)
        return self.epochs(cfg) * epoch_s, forward_s * cfg.batch_size


def kept_teacher(cfg: TrainConfig, splits: Data, out: Path) -> Path | None:
    """The run folder's teacher.safetensors where an earlier process of this run trained it (the same widths,
    classes, input, and schedule but for the epochs a budget chose), else None."""
    path = out / runs.TEACHER
    if not is_convnet_file(path):
        return None
    kept = load_convnet(path)
    wanted = teacher_schedule(cfg)
    same = kept.schedule is not None and replace(kept.schedule, epochs=wanted.epochs) == wanted
    if (kept.widths, kept.class_names, kept.preprocess) == (parse_widths(cfg.teacher_widths), list(splits.classes),
                                                           teacher_preprocess(cfg, splits)) and same:
        return path
    return None


def fit_teacher(cfg: TrainConfig, splits: Data, d: Dist, device: torch.device, out: Path, cost: TeacherCost,
                kept_in: Path | None = None, say: Callable[[str], None] = print) -> str:
    """The run's teacher file: the one the run holds (`kept_teacher`: in `kept_in`, the folder a resumed run is
    copied from, which restore copies it out of, or in the run folder `out`), else a convnet trained now for
    `cost.epochs(cfg)` epochs, scored once on the validation split and saved in `out` (rank 0 trains it; the
    others wait, then read it)."""
    widths = parse_widths(cfg.teacher_widths)
    name = ",".join(map(str, widths))
    folders = [folder for folder in (kept_in, out) if folder]
    path = None
    if d.is_main:  # rank 0 decides; the others look once it has, so every rank passes the barrier
        path = _held(cfg, splits, folders)
        if path is not None:
            say(f"teacher: the convnet {name} trained earlier in this run ({path})")
        else:
            path = out / runs.TEACHER
            _train(cfg, splits, device, path, widths, name, cost.epochs(cfg), say)
    if d.world > 1:
        dist.barrier()
    return str(path or _held(cfg, splits, folders))


def _held(cfg: TrainConfig, splits: Data, folders: list[Path]) -> Path | None:
    """The first of `folders` that holds this run's teacher (`kept_teacher`), else None."""
    return next(filter(None, (kept_teacher(cfg, splits, folder) for folder in folders)), None)


def _train(cfg: TrainConfig, splits: Data, device: torch.device, path: Path, widths: tuple[int, ...], name: str,
           epochs: int, say: Callable[[str], None]) -> None:
    pre, schedule = teacher_preprocess(cfg, splits), teacher_schedule(cfg, epochs)
    precision = resolve_precision(cfg.precision, device, widths[-1], training=True)
    torch.manual_seed(schedule.seed)
    model = ConvNet(widths=widths, num_classes=len(splits.classes), in_chans=pre.input_size[0])
    n = sum(p.numel() for p in model.parameters())
    say(f"teacher: training a convnet {name} ({n / 1e6:.2f}M params) for {epochs} epochs on the training split, "
        f"{device.type} {precision}; its minutes count")
    normalize = data.Normalize(pre.mean, pre.std, channels=pre.input_size[0], size=pre.input_size[1:], device=device)
    t0 = time.perf_counter()
    train_convnet(model, splits.train, None, normalize, schedule, device, precision, on_epoch=lambda r: say(
        f"teacher: epoch {r['epoch']}/{epochs}  train loss {r['train_loss']:.4f}  {r['img_s']:.0f} img/s"))
    top1 = evaluate_convnet(model, splits.val, normalize, precision, device)
    say(f"teacher: {top1:.2f}% val top-1 (with its mirror) after {(time.perf_counter() - t0) / 60:.1f} min; "
        f"saved to {path}")
    model.preprocess, model.class_names, model.schedule = pre, list(splits.classes), schedule
    save_convnet(model.eval(), path)
