"""Train a ViT: `python train.py` (sklearn digits, offline, ~1 minute on 2 CPU cores) up to ImageNet subsets
on several GPUs (`torchrun --nproc_per_node=N train.py ...`).

Reads top to bottom: command line, distributed set-up, randomness, data, model, optimizer and schedule, then
the run itself: `set_up` builds what the loop works on (a `Training`), `restore` says where it starts
(a `State`, fresh or from last.ckpt), `train` runs epochs of `train_step`s with `finish_epoch` after each,
and `finish` reports how it ended. The run folder's files (last.ckpt, metrics.jsonl, the lock) are
vit/runs.py's. Optimisation reuses timm's parts: Mixup/CutMix, SoftTargetCrossEntropy, the cosine and poly
schedulers, ModelEmaV3, weight-decay parameter groups. Hyperparameters and recipes live in `vit/recipes.py`.

Exact resume: batch order and augmentation depend only on (seed, epoch, step) (see vit/data.py), and
last.ckpt holds every other piece of state (model, optimizer, scheduler, EMA, grad scaler, the python/
numpy/torch RNGs, the position inside the epoch), so on a deterministic CPU an interrupted and resumed run
ends with bit-identical weights, on the in-memory path and the DataLoader path alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from . import data as D
from . import finetune as FT
from . import runs, sources
from . import tensorboard as TB
from .augment import RandAugment
from . import budget as B
from .budget import Budget, Clock, parse_budget
from .distill import DistillationLoss, load_teacher
from .errors import CheckpointError, ConfigError, NonFiniteLossError, VitError
from .eval_views import black, check_shift, predict_logits
from .metrics import confusion_matrix
from .model import to_2tuple
from .optim import build_optimizer
from .precision import autocast, compiled_training_settings, keep_freed_cpu_memory, resolve_device, resolve_precision
from .recipes import RECIPES, TrainConfig, flag, get_recipe
from .registry import create_model, get_entry
from .runs import Checkpoint, State
from .weights import check_state_dict

if TYPE_CHECKING:
    from timm.data import Mixup
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3

    from .model import VisionTransformer
    from .preprocess import Preprocess

PLOT_EVERY_S = 30.0  # redraw curves.png at most this often (matplotlib costs ~0.3 s a figure)


# --------------------------------------------------------------------------------------------------------
# Command line: one flag per TrainConfig field, plus the run's own flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a Vision Transformer. With no arguments: the 'digits' recipe (offline, CPU, ~1 min).",
        epilog="recipes: " + "; ".join(f"{r.name}: {r.doc.splitlines()[0]}" for r in RECIPES.values()),
    )
    p.add_argument("--recipe", default="digits", choices=list(RECIPES), help="named recipe (vit/recipes.py)")
    p.add_argument("--output", default=None, help="output folder (default: runs/RECIPE-DATE-TIME)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last.ckpt")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars: one line per epoch (so too when stdout or stderr is not a terminal)")
    for f in TrainConfig.__dataclass_fields__.values():
        kw = dict(default=argparse.SUPPRESS, help=f.metadata["help"] + f" (default: recipe, else {f.default!r})")
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = type(f.default)
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
        p.add_argument(f"--{flag(f.name)}", **kw)
    return p


def parse_args(argv=None):
    """Returns (namespace, the TrainConfig fields given explicitly on the command line)."""
    args = build_parser().parse_args(argv)
    fields = TrainConfig.__dataclass_fields__
    given = {k: v for k, v in vars(args).items() if k in fields}
    return args, given


# --------------------------------------------------------------------------------------------------------
# Distributed set-up: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is one process


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **restart_store(rank, world))
    return Dist(rank, world, local_rank), device


def restart_store(rank: int, world: int) -> dict:
    """init_process_group's store under a single torchrun agent: its own key prefix for each restart.

    The agent serves one store for the whole job (TORCHELASTIC_USE_AGENT_STORE), and process groups write
    the same keys in every round, so the workers of a restart would read their dead predecessors' addresses
    there (gloo: "connectFullMesh failed ... Connection refused"). With one agent every worker of a round has
    the same restart count; several agents count their restarts apart, so there the store is left as it is.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" \
            or os.environ.get("GROUP_WORLD_SIZE") != "1":
        return {}
    store, _, _ = next(dist.rendezvous("env://"))
    return dict(store=dist.PrefixStore(f"vit/restart{restart}", store), rank=rank, world_size=world)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# --------------------------------------------------------------------------------------------------------
# Randomness: every seed is set here; last.ckpt saves and restores rank 0's generators


def seed_shared(seed: int) -> None:
    """Before the model is built, on every rank alike: the same initial weights (and EMA copy), and the same
    numpy draws (timm's Mixup) on every rank for the whole run."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def seed_per_rank(seed: int, d: Dist, step: int = 0, saved: dict | None = None) -> None:
    """After set-up, before the first step: each rank's own torch and Python streams (dropout, drop-path,
    random erasing), or rank 0's saved ones when resuming.

    Rank 0 keeps its torch stream from the model's initialisation. Python's is seeded again because imports
    during set-up (sklearn's, for digits) draw from it. Only rank 0's generators are saved, so the others
    restart from a seed that moves with the step.
    """
    if saved is not None:
        set_rng_state(saved)
    if d.rank:
        torch.manual_seed(seed + d.rank + step)
    if d.rank or saved is None:
        random.seed(seed + d.rank + step)


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    v, internal, gauss_next = state["python"]
    random.setstate((v, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------
# Data: the splits, and the batches on the device


@dataclass
class Data:
    train: D.TensorData | D.FileData
    val: D.TensorData | D.FileData
    classes: list[str]
    channels: int  # channels the images are decoded to (models with in_chans 1 read grey)


def load_data(cfg: TrainConfig, d: Dist, model_img_size: int, model_chans: int) -> Data:
    channels = 1 if model_chans == 1 else 3
    kw = dict(data_dir=cfg.data_dir, download=cfg.download, val_size=cfg.val_size, split_seed=cfg.split_seed,
              data_mode=cfg.data_mode, img_size=cfg.img_size or model_img_size, channels=channels,
              on_corrupt=cfg.on_corrupt, val_split=cfg.val_split, image_key=cfg.image_key, label_key=cfg.label_key)
    first = cfg.download and d.world > 1  # rank 0 downloads alone; the others then read its files
    if first and not d.main:
        dist.barrier()
    train, val = sources.load_dataset(cfg.dataset, "train", **kw), sources.load_dataset(cfg.dataset, "val", **kw)
    if first and d.main:
        dist.barrier()
    if train.classes != val.classes:
        raise ConfigError(f"train and val classes differ: {train.classes} vs {val.classes}")
    if isinstance(train, D.TensorData):
        channels = train.images.shape[1]
    return Data(train, val, train.classes, channels)


@dataclass
class Inputs:
    """Where batches come from: tensors on the device (cropped, flipped, normalised and erased there), or
    DataLoader workers (timm's transforms) for images read from disk."""

    data: Data
    normalize: D.Normalize
    erase: Callable[[torch.Tensor], torch.Tensor] | None = None  # in memory: timm's RandomErasing
    randaug: RandAugment | None = None  # in memory: vit.augment's, per image on the uint8 batch
    train_loader: torch.utils.data.DataLoader | None = None  # from disk
    train_sampler: D.ShardSampler | None = None  # or a stream's batches: set_epoch(epoch, start_step) either way
    val_loader: torch.utils.data.DataLoader | None = None


# Flags that act in one data mode only; given on the command line in the other, they are an error.
MEMORY_ONLY = ("crop_pad", "augment_min_epochs", "hflip_min_epochs", "repeat_aug")
LOADER_ONLY = ("workers",)


def build_inputs(cfg: TrainConfig, data: Data, pre: Preprocess, d: Dist, device: torch.device,
                 given: frozenset = frozenset()) -> Inputs:
    normalize = D.Normalize(pre.mean, pre.std, channels=pre.input_size[0], size=tuple(pre.input_size[1:]),
                            device=device)
    in_memory = isinstance(data.train, D.TensorData)
    idle = given & set(LOADER_ONLY if in_memory else MEMORY_ONLY)
    if idle:
        mode = "in memory" if in_memory else "through the DataLoader (--data-mode loader)"
        raise ConfigError(f"{', '.join('--' + flag(n) for n in sorted(idle))} has no effect when the images are "
                          f"read {mode}; leave it out, or choose the other --data-mode")
    if in_memory:
        side = min(data.train.images.shape[-2:])
        if cfg.crop_pad > side:  # a crop shifted past the whole image: only padding left
            raise ConfigError(f"--crop-pad {cfg.crop_pad} is more than the images' side ({side} pixels)")
        data.train, data.val = data.train.to(device), data.val.to(device)
        erase = None
        if cfg.reprob > 0:  # timm's, on the normalised batch; its draws come from the saved Python/torch RNGs
            from timm.data.random_erasing import RandomErasing

            erase = RandomErasing(cfg.reprob, mode="pixel", device=device)
        randaug = RandAugment.parse(cfg.randaug) if cfg.randaug else None
        return Inputs(data, normalize, erase, randaug)
    pin, local = device.type == "cuda", cfg.batch_size // d.world
    train_transform = D.file_transforms(pre, True, hflip=cfg.hflip, randaug=cfg.randaug, reprob=cfg.reprob)
    train_loader, sampler = D.train_loader(data.train, train_transform, channels=data.channels,
                                           on_corrupt=cfg.on_corrupt, batch_size=cfg.batch_size, workers=cfg.workers,
                                           seed=cfg.seed, rank=d.rank, world=d.world, pin_memory=pin)
    val_loader = D.eval_loader(data.val, D.file_transforms(pre, False), channels=data.channels,
                               on_corrupt=cfg.on_corrupt, batch_size=local, workers=cfg.workers, rank=d.rank,
                               world=d.world, pin_memory=pin)
    return Inputs(data, normalize, None, None, train_loader, sampler, val_loader)


# --------------------------------------------------------------------------------------------------------
# Model, optimizer, schedule


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
    return create_model(cfg.model, pretrained=cfg.pretrained or False, **overrides)


@dataclass
class Plan:
    """The run's length in steps, fixed up front: the schedule spans it and the loop ends with it.

    A step is a global batch (an optimizer step, unless every image in it was unreadable). The last epoch may
    end early where total_steps is not a whole number of epochs.
    """

    steps_per_epoch: int
    total_steps: int

    @property
    def epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)

    @property
    def epochs_label(self) -> str:
        return "?" if self.total_steps >= UNPLANNED_STEPS else str(self.epochs)

    def epoch_end(self, epoch: int) -> int:
        """The batch at which `epoch` ends."""
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)


def plan_steps(cfg: TrainConfig, d: Dist, n_train: int) -> Plan:
    local = cfg.batch_size // d.world
    if cfg.batch_size % d.world or local % cfg.accum_steps:
        raise ConfigError(f"--batch-size {cfg.batch_size} must split evenly over {d.world} rank(s) x "
                          f"{cfg.accum_steps} accumulation step(s)")
    if (cfg.mixup or cfg.cutmix) and local % 2:
        raise ConfigError(f"Mixup/CutMix need an even per-rank batch, got {local}")
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the training set ({n_train} images)")
    return Plan(steps_per_epoch, cfg.steps or cfg.epochs * steps_per_epoch)


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> int:
    """--warmup-epochs in steps, ending a step before the plan's end at the latest (the cosine then decays)."""
    return min(round(cfg.warmup_epochs * steps_per_epoch), total_steps - 1)


def build_scheduler(cfg: TrainConfig, optimizer, plan: Plan) -> Scheduler:
    """A linear warm-up to lr, then per-step decay to min_lr over the rest of the plan, cosine or linear (timm's
    schedulers, the linear one its poly schedule of power 1; the warm-up a prefix, so the learning rate peaks
    where warm-up ends)."""
    from timm.scheduler import CosineLRScheduler, PolyLRScheduler

    warmup = warmup_steps(cfg, plan.steps_per_epoch, plan.total_steps)
    common = dict(t_initial=plan.total_steps - warmup, lr_min=cfg.min_lr, warmup_t=warmup,
                  warmup_lr_init=cfg.warmup_lr, warmup_prefix=True, t_in_epochs=False)
    if cfg.sched == "linear":
        return PolyLRScheduler(optimizer, power=1.0, **common)
    return CosineLRScheduler(optimizer, **common)


def augment_for(cfg: TrainConfig, plan: Plan) -> dict:
    """Random-crop padding, flip probability and test-time shift for a plan of this length: no crops where it
    is shorter than cfg.augment_min_epochs, and then no moved test views either (a model the rule kept from
    moved images scores them lower: benchmarks/LOG.md); no flips where it is shorter than cfg.hflip_min_epochs. A
    budgeted run with these rules decides when its plan is made, and neither crops nor flips while its first
    steps are timed."""
    def long_enough(epochs: float) -> bool:
        return plan.total_steps >= epochs * plan.steps_per_epoch
    crops = long_enough(cfg.augment_min_epochs) or not cfg.crop_pad
    return {"crop_pad": cfg.crop_pad if crops else 0, "eval_shift": cfg.eval_shift if crops else 0,
            "hflip": cfg.hflip if long_enough(cfg.hflip_min_epochs) else 0.0}


# The part of a step's cost that its token count does not scale (optimizer, data, loss, the patch embedding of
# every patch), in tokens per token of a full image: slim's CIFAR-10 step on the Zen 3 CPU, 17 to 65 tokens,
# measured ~17.5 ms a token and ~100 ms besides (benchmarks/LOG.md).
FIXED_TOKEN_SHARE = 0.1


def patch_drop_at(cfg: TrainConfig, step: int | float, total: int, warmup: int) -> float:
    """The fraction of patch tokens dropped at `step` of a plan `total` steps long whose warm-up is `warmup`
    steps: --patch-drop, or with --patch-drop-end, --patch-drop through the warm-up and then a line to
    --patch-drop-end at the plan's last step (the budget's timed steps are the warm-up's, which no length moves)."""
    if cfg.patch_drop_end < 0 or total >= UNPLANNED_STEPS or step <= warmup:
        return cfg.patch_drop
    along = min((step - warmup) / max(total - 1 - warmup, 1), 1.0)
    return cfg.patch_drop + (cfg.patch_drop_end - cfg.patch_drop) * along


def step_work(cfg: TrainConfig, model: VisionTransformer, steps_per_epoch: int) -> B.Work:
    """What steps [start, stop) of a plan cost, for the budget, in steps at the mean token count: their number,
    or where --patch-drop-end moves the count along the plan, their tokens (and the fixed share)."""
    if cfg.patch_drop_end < 0:
        return B.equal_steps
    P, N = model.num_prefix_tokens, model.patch_embed.num_patches

    def tokens(rate: float) -> float:
        return P + N * (1.0 - rate) + FIXED_TOKEN_SHARE * (N + P)

    mean = tokens((cfg.patch_drop + cfg.patch_drop_end) / 2)

    def work(start: int, stop: int, total: int) -> float:
        warmup = warmup_steps(cfg, steps_per_epoch, total)
        flat = max(0, min(stop, warmup + 1) - start)  # at --patch-drop
        first = max(start, warmup + 1)  # then a line: the steps' mean is their middle one's
        line = max(0, stop - first) * tokens(patch_drop_at(cfg, (first + stop - 1) / 2, total, warmup))
        return (flat * tokens(cfg.patch_drop) + line) / mean
    return work


def use_augment(tr: Training, settings: dict) -> None:
    """Train with the crop padding and flip probability, and evaluate with the test-time shift, that
    `augment_for` decided (a plan's, or a saved one)."""
    tr.crop_pad, tr.hflip = settings.get("crop_pad", tr.crop_pad), settings.get("hflip", tr.hflip)
    tr.eval_shift = settings.get("eval_shift", tr.eval_shift)


def set_total_steps(tr: Training, total: int, done: int) -> None:
    """Change the plan's length (a budget's plan or re-plan) after `done` steps: the loop and the decay end at
    `total`. A plan too short for the warm-up, still under way, shortens it as build_scheduler does for a run
    of that length (from here on: the steps taken keep their learning rates); the decay then still runs."""
    tr.plan.total_steps = total
    s = tr.scheduler
    warmup = warmup_steps(tr.cfg, tr.plan.steps_per_epoch, total)
    if done < s.warmup_t and warmup != s.warmup_t:
        s.warmup_t = warmup = max(warmup, done)
        s.warmup_steps = [(v - s.warmup_lr_init) / warmup for v in s.base_values] if warmup else \
            [1 for _ in s.base_values]
    s.t_initial = max(1, total - s.warmup_t)


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


# --------------------------------------------------------------------------------------------------------
# What the loop works on


class Stopper:
    """While entered, SIGINT/SIGTERM ask for a stop: the loop finishes its step, saves last.ckpt and exits."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self) -> Stopper:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class Training:
    """Everything a run trains with, built once by `set_up`; the loop's changing position is a `State`."""

    cfg: TrainConfig
    recipe: str
    dist: Dist
    device: torch.device
    out: Path  # the run folder (vit/runs.py)
    inputs: Inputs
    model: VisionTransformer
    net: nn.Module  # the model as the step calls it: DistributedDataParallel and/or torch.compile around it
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    criterion: nn.Module
    distill: DistillationLoss | None  # --teacher: DeiT's loss around criterion (vit/distill.py)
    precision: str
    plan: Plan
    budget: Budget | None = None  # --budget: the plan's costs and re-plans (vit/budget.py)
    crop_pad: int = 0  # cfg.crop_pad and cfg.hflip, or 0 where the plan is shorter than their *_min_epochs
    hflip: float = 0.0
    eval_shift: int = 0  # cfg.eval_shift, or 0 where crops are off for the plan's length
    probe: tuple[int, float] | None = None  # (step, perf_counter()) where timing the steps for the budget began
    work: B.Work = B.equal_steps  # what steps cost relative to one another, for the budget (step_work)
    switch_to: str = ""  # too few epochs of cfg.model fit the budget: the run starts over with this model
    clock: Clock = field(default_factory=Clock)  # the run's wall time, for the budget
    quiet: bool = False  # no progress bars
    board: TB.Board | None = None  # rank 0's TensorBoard writer (--tensorboard, --log-dir)
    stopper: Stopper = field(default_factory=Stopper)
    plotted_at: float = 0.0  # perf_counter() of the last curves.png

    def say(self, *lines) -> None:
        if self.dist.main:
            print(*lines)

    def max_steps_reached(self, st: State) -> bool:
        return bool(self.cfg.max_steps) and st.step >= self.cfg.max_steps

    def used_s(self) -> float:
        """Budget used so far: earlier processes of this run, and this one since its launch."""
        return (self.budget.spent_s if self.budget is not None else 0.0) + self.clock.elapsed()


# --------------------------------------------------------------------------------------------------------
# The run: set up, restore, train, finish


def run(cfg: TrainConfig, recipe: str, output: Path | None, resume: Path | None, quiet: bool,
        ckpt: Checkpoint | None = None, given: frozenset = frozenset(), clock: Clock | None = None) -> int:
    """Train into `output` (or go on with `resume`'s run from its last.ckpt, `ckpt`); returns the exit code."""
    d, device = setup_distributed(cfg.device)
    out = output or resume or runs.default_folder(recipe)
    lock = board = None
    try:
        if TB.enabled(cfg):
            TB.require()
        lock = runs.lock_output(out, resume is not None) if d.main else None
        tr = set_up(cfg, recipe, d, device, out, quiet, given)
        tr.clock = clock or Clock()
        st = restore(tr, ckpt)
        tr.say(describe(tr))
        if TB.enabled(cfg) and d.main:
            tr.board = board = TB.Board(TB.folder_for(cfg, out), st.step if ckpt is not None else None)
            board.hparams(cfg.to_dict(), recipe)
            tr.say(f"TensorBoard events in {board.folder} (tensorboard --logdir {board.folder})")
        stopped = train(tr, st)
        if tr.switch_to:  # too few epochs of cfg.model fit the budget
            tr, st = start_over(tr, quiet, given)
            board = tr.board
            stopped = train(tr, st)
        if board is not None and not stopped:
            board.end(tr.model, tr.inputs.data.val, tr.inputs.data.classes, device, st.step)
        return finish(tr, st, stopped)
    finally:
        if d.world > 1:
            dist.destroy_process_group()
        if board is not None:
            board.close()
        if lock is not None:
            lock.close()


def start_over(tr: Training, quiet: bool, given: frozenset) -> tuple[Training, State]:
    """A run with tr.switch_to, the smaller model, from its first step: the same data, folder, TensorBoard folder
    and clock (the budget still counts from the launch); nothing of the first model is kept."""
    if tr.dist.main:  # rows of epochs the first model ended while its steps were timed (a tiny dataset)
        runs.truncate_metrics(tr.out / runs.METRICS, 0)
    cfg = TrainConfig.from_dict({**tr.cfg.to_dict(), "model": tr.switch_to})
    new = set_up(cfg, tr.recipe, tr.dist, tr.device, tr.out, quiet, given, tr.inputs.data)
    new.clock = tr.clock
    st = restore(new, None)
    new.say(describe(new))
    if tr.board is not None:  # a new writer, whose readers drop the first model's steps (purge from step 0)
        tr.board.close()
        new.board = TB.Board(tr.board.folder, resume_step=-1)
        new.board.hparams(cfg.to_dict(), tr.recipe)
    return new, st


def set_up(cfg: TrainConfig, recipe: str, d: Dist, device: torch.device, out: Path, quiet: bool,
           given: frozenset = frozenset(), data: Data | None = None) -> Training:
    """Data (unless given: loaded already), model, optimizer, schedule, EMA, Mixup and loss: the same on every
    rank."""
    seed_shared(cfg.seed)
    entry = get_entry(cfg.model)
    model_img = cfg.img_size or entry.config.img_size
    check_shift(cfg.eval_shift, to_2tuple(model_img))
    if cfg.small_model:
        check_small_model(cfg)
    if data is None:
        data = load_data(cfg, d, model_img if isinstance(model_img, int) else model_img[0], entry.config.in_chans)
    model = build_model(cfg, len(data.classes), data.channels).to(device)
    model.class_names = data.classes
    if model.num_classes != len(data.classes):
        raise ConfigError(f"the model has {model.num_classes} classes but {cfg.dataset} has {len(data.classes)}")
    if cfg.freeze:  # before the optimizer: frozen parameters are left out of it
        FT.freeze(model, cfg.freeze)
    if cfg.lora_rank:
        FT.add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    plan = plan_steps(cfg, d, len(data.train))
    inputs = build_inputs(cfg, data, model.preprocess, d, device, given)
    budget = Budget(parse_budget(cfg.budget)) if cfg.budget else None
    if budget is not None:  # a placeholder length until the first steps are timed (warm-up does not depend on it)
        plan.total_steps = max(plan.total_steps, UNPLANNED_STEPS)
    precision = resolve_precision(cfg.precision, device, model.embed_dim, training=True)
    optimizer = build_optimizer(cfg, model, device, precision)
    scheduler = build_scheduler(cfg, optimizer, plan)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ema = build_ema(cfg, model)
    mixup = build_mixup(cfg, model.num_classes)
    criterion, distill = build_criterion(cfg, mixup), None
    if cfg.teacher:
        teacher, view = load_teacher(cfg.teacher, model, device, cfg.teacher_pretrained)
        distill = DistillationLoss(criterion, teacher, view, cfg.distill or "hard", cfg.distill_alpha, cfg.distill_tau)
        model.set_distilled_training()  # a distilled student returns (cls, dist) logits while training
    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    return Training(cfg=cfg, recipe=recipe, dist=d, device=device, out=out, inputs=inputs, model=model, net=net,
                    optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema, mixup=mixup,
                    criterion=criterion, distill=distill, precision=precision, plan=plan, budget=budget, quiet=quiet,
                    work=step_work(cfg, model, plan.steps_per_epoch),
                    # a budgeted run's length is not known yet: a rule on it holds crops and flips back until then
                    # (time_evaluation plans for cfg.eval_shift's views until augment_for decides)
                    **augment_for(cfg, plan if budget is None else Plan(plan.steps_per_epoch, 0)))


def restore(tr: Training, ckpt: Checkpoint | None) -> State:
    """Where training starts: the first step, or exactly where `ckpt` left off (weights, optimizer, schedule,
    EMA, loss scale, RNGs, position in the epoch)."""
    cfg, d = tr.cfg, tr.dist
    if ckpt is None:
        st = State()
        seed_per_rank(cfg.seed, d)
    else:
        try:  # flags that change the model or the parameter groups make the checkpoint unloadable
            check_state_dict(ckpt.model, tr.model)
            tr.model.load_state_dict(ckpt.model)
            tr.optimizer.load_state_dict(ckpt.optimizer)
            tr.scheduler.load_state_dict(ckpt.scheduler)
            if tr.ema is not None and ckpt.ema is not None:
                tr.ema.module.load_state_dict(ckpt.ema)
            if tr.scaler.is_enabled() and ckpt.scaler:
                tr.scaler.load_state_dict(ckpt.scaler)
            st = ckpt.state
            seed_per_rank(cfg.seed, d, st.step, ckpt.rng)
            if tr.budget is not None and ckpt.budget is not None:
                tr.budget = Budget.from_dict(ckpt.budget)
                if tr.budget.total_steps:  # the saved plan; the scheduler came back with its length
                    tr.plan.total_steps = tr.budget.total_steps
                    use_augment(tr, tr.budget.decided)
        except (VitError, RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{tr.out / runs.LAST} cannot be resumed with this run's settings (a flag that "
                                  f"changes the model or optimizer, such as --model or --img-size?): {e}") from e
        if d.main:
            runs.truncate_metrics(tr.out / runs.METRICS, st.epoch)
        tr.say(f"resumed {tr.out} at epoch {st.epoch + 1}, batch {st.batch}, step {st.step}")
    return st


def describe(tr: Training) -> str:
    cfg, data = tr.cfg, tr.inputs.data
    n_params, trainable = sum(p.numel() for p in tr.model.parameters()), FT.trainable_parameters(tr.model)
    if tr.budget is not None and not tr.budget.total_steps:
        length = (f"a budget of {B.duration(tr.budget.budget_s)} (steps planned after timing the first "
                  f"{B.PROBE_SKIP + B.PROBE_STEPS}), {tr.plan.steps_per_epoch} steps of {cfg.batch_size} an epoch")
    else:
        length = f"{tr.plan.epochs} epochs x {tr.plan.steps_per_epoch} steps of {cfg.batch_size}"
    if trainable != n_params:
        length += f"; {trainable:,} parameters trained" + (f" (LoRA rank {cfg.lora_rank})" if cfg.lora_rank else
                                                         f" (--freeze {cfg.freeze})" if cfg.freeze else "")
    if tr.distill is not None:
        length += f"; distilling from {cfg.teacher} ({tr.distill.kind})"
    return (f"{cfg.model} ({n_params / 1e6:.2f}M params) on {cfg.dataset}: {len(data.train)} train / "
            f"{len(data.val)} val images, {len(data.classes)} classes; {length}; {tr.device.type} {tr.precision}, "
            f"{tr.dist.world} process(es); output {tr.out}")


def train(tr: Training, st: State) -> bool:
    """Epochs until the plan ends or a stop is asked for; True when stopped early (last.ckpt then holds the
    position to resume from)."""
    tr.plotted_at = time.perf_counter()
    tr.probe = None
    probe_start = st.step + B.PROBE_SKIP  # the first steps of a process carry its start-up costs
    with tr.stopper:
        while st.epoch < tr.plan.epochs:
            with compiled_training_settings() if tr.cfg.compile else contextlib.nullcontext():
                stop = train_one_epoch(tr, st, probe_start)
            if tr.switch_to:
                return True
            if st.batch >= tr.plan.epoch_end(st.epoch):
                stop = finish_epoch(tr, st, stop)
            if stop and st.epoch < tr.plan.epochs:
                return True
    return False


def train_one_epoch(tr: Training, st: State, probe_start: int = 0) -> bool:
    """Train from batch st.batch to the end of epoch st.epoch. True when a signal (on any rank) or --max-steps
    asks to stop; last.ckpt is then saved here if the epoch is not over (at its end finish_epoch saves)."""
    cfg, end = tr.cfg, tr.plan.epoch_end(st.epoch)
    tr.net.train()
    with tqdm(total=end, initial=st.batch, desc=f"epoch {st.epoch + 1}/{tr.plan.epochs_label}", leave=False,
              disable=tr.quiet or not tr.dist.main, dynamic_ncols=True) as bar:
        t0 = time.perf_counter()
        since = (st.step, t0)  # where the steps timed for the budget's mid-epoch checks began: the epoch, plan or cut
        for x, y, skipped in train_batches(tr, st.epoch, st.batch, end):
            st.batch += 1
            st.skipped += skipped
            if batch_is_empty(tr, x):  # every image of this batch was unreadable on some rank (--on-corrupt skip)
                continue
            loss, lr, signalled = train_step(tr, st, x, y)
            st.loss_sum += loss
            st.loss_count += 1
            st.images += len(x) * tr.dist.world
            now = time.perf_counter()
            st.train_s += now - t0
            st.elapsed_s += now - t0
            t0 = now
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", ips=f"{st.images / max(st.train_s, 1e-9):.0f}")
            if tr.board is not None:
                tr.board.step(st.step, loss, lr, st.images / max(st.train_s, 1e-9))
            stop = signalled or tr.max_steps_reached(st)
            if tr.budget is not None and not tr.budget.total_steps:
                probe_budget(tr, st, probe_start)
                if tr.switch_to:  # nothing of this model is kept: no last.ckpt
                    return True
                end = tr.plan.epoch_end(st.epoch)
                since = (st.step, time.perf_counter())
            elif tr.budget is not None and cfg.replan and st.step < tr.plan.total_steps and \
                    B.check_due(st.batch, st.step - since[0], tr.plan.steps_per_epoch, tr.plan.total_steps):
                step_s = (time.perf_counter() - since[1]) / tr.work(since[0], st.step, tr.plan.total_steps)
                if replan_budget(tr, st, step_s, tr.budget.eval_s, late_only=True):
                    end = tr.plan.epoch_end(st.epoch)  # past st.batch: a plan keeps a step to take
                    save_last(tr, st)  # the re-plan is recorded before the next step
                    since = (st.step, time.perf_counter())
            if st.batch < end and (stop or (cfg.save_every and st.step % cfg.save_every == 0)):
                save_last(tr, st)
            if stop:
                return True
            if st.batch >= end:
                break
    return False


def batch_is_empty(tr: Training, x: torch.Tensor | None) -> bool:
    """Whether to skip this step: on one process, when its batch had no readable image; across ranks (the
    DataLoader path), when any rank's had none, so that every rank skips the same steps and none waits alone."""
    if tr.dist.world == 1 or tr.inputs.train_loader is None:
        return x is None
    flag = torch.tensor([float(x is None)], device=tr.device)
    return all_reduce_sum(flag, tr.dist).item() > 0


def train_batches(tr: Training, epoch: int, start: int, end: int) -> Iterator[tuple]:
    """(x, y, images skipped) for batches start..end-1 of `epoch`: this rank's share, augmented and normalised
    on the device; x and y are None for a batch of unreadable images only."""
    cfg, d, inputs, spe = tr.cfg, tr.dist, tr.inputs, tr.plan.steps_per_epoch
    if start >= end:
        return
    if inputs.train_loader is None:
        perm = D.epoch_permutation(len(inputs.data.train), cfg.seed, epoch)
        for b in range(start, end):
            x, y = D.memory_batch(inputs.data.train, perm, b, batch_size=cfg.batch_size, rank=d.rank, world=d.world,
                                  gen=D.step_generator(cfg.seed, epoch * spe + b), pad=tr.crop_pad, hflip=tr.hflip,
                                  randaug=inputs.randaug, repeats=cfg.repeat_aug)
            x = inputs.normalize(x)
            yield (inputs.erase(x) if inputs.erase is not None else x), y, 0
        return
    inputs.train_sampler.set_epoch(epoch, start)
    for b, (x, y, skipped) in enumerate(inputs.train_loader, start):
        if x is None:
            yield None, None, skipped
        else:
            yield x.to(tr.device, non_blocking=True), y.to(tr.device, non_blocking=True), skipped
        if b + 1 >= end:
            return


def train_step(tr: Training, st: State, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, bool]:
    """One optimizer step on this rank's share of a global batch, in cfg.accum_steps micro-batches.

    Returns (the loss averaged over ranks, the step's lr, whether any rank was signalled). A non-finite loss
    raises NonFiniteLossError before the step can spoil the weights, on every rank alike.
    """
    cfg, d, scaler, opt = tr.cfg, tr.dist, tr.scaler, tr.optimizer
    if cfg.patch_drop_end >= 0:
        tr.model.patch_drop_rate = patch_drop_at(cfg, st.step, tr.plan.total_steps, tr.scheduler.warmup_t)
    if tr.mixup is not None:
        x, y = tr.mixup(x, y)
    loss_total = torch.zeros((), device=tr.device)
    micro = -(-len(x) // cfg.accum_steps)
    for i, (xm, ym) in enumerate(zip(x.split(micro), y.split(micro))):
        last = i == cfg.accum_steps - 1 or (i + 1) * micro >= len(x)
        with contextlib.nullcontext() if last or d.world == 1 else tr.net.no_sync():
            with autocast(tr.precision, tr.device):  # the teacher, too, runs in the training precision
                out = tr.net(xm)
                loss = (tr.criterion(out, ym) if tr.distill is None else tr.distill(out, ym, xm)) * (len(xm) / len(x))
            scaler.scale(loss).backward() if scaler.is_enabled() else loss.backward()
        loss_total += loss.detach()
    # One sync per step: the loss is checked before the step can spoil the weights, on every rank alike.
    flags = torch.stack([loss_total.float(), (~torch.isfinite(loss_total)).float(),
                         torch.tensor(float(tr.stopper.signum), device=tr.device)])
    all_reduce_sum(flags, d)
    loss_value, bad, signalled = flags.tolist()  # the step's one host sync
    loss_value /= d.world
    lr = base_lr(opt.param_groups[0])
    if bad:
        raise NonFiniteLossError(
            f"non-finite loss ({loss_value}) at step {st.step + 1} (epoch {st.epoch + 1}, lr {lr:.3g}); "
            f"stopping without saving: {tr.out / runs.LAST} still holds the last good state. "
            "Try a lower --lr, --clip-grad 1, or --precision fp32."
        )
    if cfg.clip_grad:
        if scaler.is_enabled():
            scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(tr.model.parameters(), cfg.clip_grad)
    if scaler.is_enabled():
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    st.step += 1
    tr.scheduler.step_update(st.step)
    if tr.ema is not None:
        tr.ema.update(tr.model, step=st.step)
    return loss_value, lr, bool(signalled)


@torch.no_grad()
def evaluate(tr: Training, net: nn.Module, confusion: torch.Tensor | None = None) -> tuple[float, float]:
    """(mean cross-entropy, top-1 %) over the whole validation split; each rank takes every world-th image.
    `confusion`, a (K, K) int64 tensor on the device, receives the counts (rows: true class) of every rank."""
    d, device, inputs = tr.dist, tr.device, tr.inputs
    net.eval()
    crit = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    val, fill = inputs.data.val, black(tr.model.preprocess).to(device)
    if inputs.val_loader is None:
        idx = torch.arange(d.rank, len(val), d.world, device=val.images.device)
        chunks = ((inputs.normalize(val.images[i]), val.labels[i]) for i in idx.split(max(tr.cfg.batch_size, 256)))
    else:
        chunks = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                  for x, y, _ in inputs.val_loader if x is not None)
    for x, y in chunks:
        with autocast(tr.precision, device):
            logits = predict_logits(net, x, tr.cfg.eval_hflip, tr.eval_shift, fill)
        totals += torch.stack([crit(logits.float(), y).double(), (logits.argmax(1) == y).sum().double(),
                               torch.tensor(len(y), dtype=torch.float64, device=device)])
        if confusion is not None:
            confusion += confusion_matrix(logits.argmax(1), y, len(confusion))
    all_reduce_sum(totals, d)
    if confusion is not None:
        all_reduce_sum(confusion, d)
    loss, correct, n = totals.tolist()
    net.train()
    return loss / max(n, 1), 100.0 * correct / max(n, 1)


def evaluates_after(cfg: TrainConfig, plan: Plan, epoch: int) -> bool:
    """Whether the run evaluates at the end of `epoch` (0-based): its last, and every cfg.eval_every-th one
    that a whole epoch still follows (budget.evaluates_after, which the budget plans for)."""
    return B.evaluates_after(epoch + 1, plan.total_steps, plan.steps_per_epoch, cfg.eval_every)


def finish_epoch(tr: Training, st: State, stop: bool) -> bool:
    """Evaluate where one is due (the model, and its EMA copy), record the epoch (metrics.jsonl, best.safetensors,
    one printed line), move to the next epoch and save last.ckpt there; redraw curves.png now and then. Returns whether
    to stop: asked for during the epoch (`stop`), or by a signal while evaluating."""
    cfg, d = tr.cfg, tr.dist
    t0 = time.perf_counter()
    row = dict(epoch=st.epoch + 1, step=st.step, train_loss=st.loss_sum / max(st.loss_count, 1),
               lr=base_lr(tr.optimizer.param_groups[-1]), images_per_s=st.images / max(st.train_s, 1e-9))
    evaluating = evaluates_after(cfg, tr.plan, st.epoch)
    confusion = best_model = None
    if evaluating:
        K = len(tr.inputs.data.classes)
        confusion = torch.zeros(K, K, dtype=torch.int64, device=tr.device) if TB.enabled(cfg) else None
        row["val_loss"], row["val_top1"] = evaluate(tr, tr.net, confusion)
        best_model, top1 = tr.model, row["val_top1"]
        if tr.ema is not None:
            row["ema_val_loss"], row["ema_val_top1"] = evaluate(tr, tr.ema.module)
            if row["ema_val_top1"] > top1:
                best_model, top1 = tr.ema.module, row["ema_val_top1"]
    if st.skipped:
        row["skipped_images"] = st.skipped
    eval_s = time.perf_counter() - t0
    st.elapsed_s += eval_s
    row["elapsed_s"] = st.elapsed_s
    if d.main:
        if best_model is not None and top1 > st.best_top1:
            st.best_top1 = top1
            save_best(best_model, tr.out / runs.BEST, tr.inputs.data.classes)
        runs.append_metrics(tr.out / runs.METRICS, row)
        if tr.board is not None:
            tr.board.epoch(row, st.train_s + eval_s, confusion)
        line = f"epoch {row['epoch']:3d}/{tr.plan.epochs_label}  train loss {row['train_loss']:.4f}"
        if evaluating:
            line += f"  val loss {row['val_loss']:.4f}  val top-1 {row['val_top1']:6.2f}%"
        if evaluating and tr.ema is not None:
            line += f"  ema top-1 {row['ema_val_top1']:6.2f}%"
        print(line + f"  lr {row['lr']:.2e}  {row['images_per_s']:.0f} img/s  {st.elapsed_s:.0f} s")
    stop = stop or bool(tr.stopper.signum) or tr.max_steps_reached(st)
    step_s = st.train_s / max(tr.work(st.step - st.loss_count, st.step, tr.plan.total_steps), 1e-9)
    st.next_epoch()
    if tr.budget is not None and tr.budget.total_steps and tr.cfg.replan and st.step < tr.plan.total_steps:
        replan_budget(tr, st, step_s, eval_s if evaluating else tr.budget.eval_s)
    save_last(tr, st)
    if d.main and (time.perf_counter() - tr.plotted_at > PLOT_EVERY_S or st.epoch == tr.plan.epochs or stop):
        plot(tr.out)
        tr.plotted_at = time.perf_counter()
    return stop


# --------------------------------------------------------------------------------------------------------
# A time budget (vit/budget.py): time the first steps, fix the step count, re-plan at epoch ends

UNPLANNED_STEPS = 10**12  # the plan's length while a budgeted run times its first steps


def probe_budget(tr: Training, st: State, probe_start: int) -> None:
    """After each step of a budgeted run not yet planned: start timing at `probe_start`, and once
    PROBE_STEPS are timed, estimate an evaluation and fix the step count (rank 0's, on every rank)."""
    if st.step < probe_start:
        return
    if tr.probe is None:
        tr.probe = (st.step, time.perf_counter())
        return
    first, t0 = tr.probe
    if st.step - first < B.PROBE_STEPS:
        return
    step_s = (time.perf_counter() - t0) / tr.work(first, st.step, tr.plan.total_steps)
    cfg, spe = tr.cfg, tr.plan.steps_per_epoch
    eval_s = time_evaluation(tr, cfg.eval_shift)
    total = tr.budget.plan(tr.used_s(), st.step, step_s, eval_s, spe, cfg.eval_every, tr.work)
    tr.budget.total_steps = total = agree(tr, total)
    epochs = total / spe
    if cfg.small_model and cfg.model != cfg.small_model and epochs < cfg.model_min_epochs:
        tr.switch_to = cfg.small_model
        tr.say(f"budget: {step_s * 1e3:.0f} ms a step here: {epochs:.1f} epochs of {cfg.model} fit in "
               f"{B.duration(tr.budget.budget_s)}, under --model-min-epochs {cfg.model_min_epochs:g}: starting over "
               f"with --small-model {cfg.small_model}")
        return
    tr.budget.decided = augment_for(cfg, Plan(spe, total))
    use_augment(tr, tr.budget.decided)
    if tr.eval_shift != cfg.eval_shift:  # fewer views an evaluation than timed: the steps they leave
        eval_s *= eval_passes(tr, tr.eval_shift) / eval_passes(tr, cfg.eval_shift)
        total = agree(tr, tr.budget.plan(tr.used_s(), st.step, step_s, eval_s, spe, cfg.eval_every, tr.work))
    set_total_steps(tr, total, st.step)
    cropping = "".join(f"; no {what} (a run under --{flag} {epochs:g})" for what, flag, epochs, off in (
        ("random crops" + (" or moved test views" if tr.eval_shift != cfg.eval_shift else ""), "augment-min-epochs",
         cfg.augment_min_epochs, tr.crop_pad != cfg.crop_pad),
        ("flips", "hflip-min-epochs", cfg.hflip_min_epochs, tr.hflip != cfg.hflip)) if off)
    tr.say(f"budget: {step_s * 1e3:.0f} ms a step and ~{eval_s:.1f} s an evaluation here: {total} steps "
           f"({total / tr.plan.steps_per_epoch:.1f} epochs) fit in {B.duration(tr.budget.budget_s)}{cropping}")


def replan_budget(tr: Training, st: State, step_s: float, eval_s: float, late_only: bool = False) -> bool:
    """At an epoch's end: if the last epoch's costs would take the run outside its budget, re-plan; mid-epoch
    (`late_only`, step_s from the epoch's steps since its start or the last cut): if they would take it past.
    Returns whether it did."""
    line = tr.budget.replan(tr.used_s(), st.step, step_s, eval_s, tr.plan.steps_per_epoch, tr.cfg.eval_every,
                            late_only, tr.work)
    total = agree(tr, tr.budget.total_steps)
    tr.budget.total_steps = total
    if total == tr.plan.total_steps:
        return False
    set_total_steps(tr, total, st.step)
    tr.say(line or f"budget: re-planned to rank 0's {total} steps")
    return True


@torch.no_grad()
def time_evaluation(tr: Training, shift: int) -> float:
    """Seconds one evaluation (model and EMA, each view of eval_hflip and a test-time `shift`) will take: one
    timed forward pass of a validation chunk, scaled to this rank's share of the split and the passes. The first
    real evaluation corrects it (replan_budget)."""
    val, d = tr.inputs.data.val, tr.dist
    chunk = max(tr.cfg.batch_size, 256) if tr.inputs.val_loader is None else tr.cfg.batch_size // d.world
    n = min(chunk, len(val))
    if isinstance(val, D.TensorData):
        x = tr.inputs.normalize(val.images[:n])
    else:
        x = torch.randn(n, *tr.model.preprocess.input_size, device=tr.device)
    tr.model.eval()
    t0 = time.perf_counter()
    with autocast(tr.precision, tr.device):
        tr.model(x)
    forward_s = time.perf_counter() - t0
    tr.model.train()
    return forward_s / n * -(-len(val) // d.world) * eval_passes(tr, shift)


def eval_passes(tr: Training, shift: int) -> int:
    """Forward passes over the validation split an evaluation takes: model and EMA, each view."""
    return (2 if tr.ema is not None else 1) * (2 if tr.cfg.eval_hflip else 1) * (3 if shift else 1)


def agree(tr: Training, value: int) -> int:
    """Rank 0's value on every rank (timings differ between ranks; the plan must not)."""
    if tr.dist.world == 1:
        return value
    t = torch.tensor([value if tr.dist.main else 0], dtype=torch.int64, device=tr.device)
    return int(all_reduce_sum(t, tr.dist).item())


def save_last(tr: Training, st: State) -> None:
    if not tr.dist.main:
        return
    if tr.board is not None:  # what a resume keeps (steps up to last.ckpt's) is on disk before last.ckpt is
        tr.board.flush()
    runs.save_checkpoint(tr.out / runs.LAST, Checkpoint(
        config=tr.cfg.to_dict(), recipe=tr.recipe, model_config=tr.model.config.to_dict(),
        class_names=tr.inputs.data.classes, model=tr.model.state_dict(), optimizer=tr.optimizer.state_dict(),
        scheduler=tr.scheduler.state_dict(), ema=tr.ema.module.state_dict() if tr.ema is not None else None,
        scaler=tr.scaler.state_dict() if tr.scaler.is_enabled() else None, rng=rng_state(), state=st,
        budget=({**tr.budget.to_dict(), "spent_s": tr.used_s()} if tr.budget is not None else None),
        augment=(None if tr.plan.total_steps >= UNPLANNED_STEPS else
                 dict(crop_pad=tr.crop_pad, hflip=tr.hflip, eval_shift=tr.eval_shift)),
    ))


def finish(tr: Training, st: State, stopped: bool) -> int:
    """Say how the run ended and return the exit code: 0, or 128 + N after signal N (as a shell reports it)."""
    signum = tr.stopper.signum
    if stopped:
        if signum:
            reason = f"signal {signal.Signals(signum).name}"
        elif tr.max_steps_reached(st):
            reason = f"--max-steps {tr.cfg.max_steps}"
        else:
            reason = "a signal to another rank"
        more = " --max-steps 0" if reason.startswith("--max-steps") else ""  # the saved config still has it
        launcher = "python" if tr.dist.world == 1 else \
            f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', tr.dist.world)}"
        tr.say(f"stopped by {reason} at step {st.step}; last.ckpt saved. Continue with: "
               f"{launcher} train.py --resume {tr.out}{more}")
        return 128 + signum if signum else 0
    cfg = tr.cfg
    if tr.budget is not None:
        tr.say(f"budget: {B.duration(tr.used_s())} of {B.duration(tr.budget.budget_s)} used, {st.step} steps "
               f"({len(tr.budget.replans)} re-plan(s))")
    tr.say(f"done in {st.elapsed_s:.0f} s: best val top-1 {st.best_top1:.2f}%\n"
           f"outputs in {tr.out}/: {runs.BEST}, {runs.LAST}, {runs.METRICS}, {runs.CURVES}\n"
           f"evaluate with: python evaluate.py {tr.out / runs.BEST} --dataset {shlex.quote(cfg.dataset)}"
           + (f" --data-dir {cfg.data_dir}" if cfg.data_dir else ""))
    return 0


@contextlib.contextmanager
def torch_settings(cfg: TrainConfig):
    """Threads, determinism and CUDA matmul precision for one run, restored afterwards (train.main may run
    inside another program)."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.get_float32_matmul_precision())
    if resolve_device(cfg.device).type == "cuda" and not cfg.deterministic:
        torch.set_float32_matmul_precision("high")  # fp32 matrix products on TF32 tensor cores
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.deterministic)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.set_float32_matmul_precision(saved[3])


def save_best(model, path: Path, classes: list[str]) -> None:
    from .weights import save_pretrained

    save_pretrained(model, path, class_names=classes)


def plot(out: Path) -> None:
    from .plots import plot_curves

    plot_curves(out / runs.METRICS, out / runs.CURVES)


def on_terminal() -> bool:
    """Progress bars only on a terminal: in a log file (stdout or stderr redirected) each redraw is a line."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def elastic_restart(output: str | None) -> Path | None:
    """Under torchrun with --max-restarts, a restarted worker (TORCHELASTIC_RESTART_COUNT > 0) continues the
    run its command names with --output from the last.ckpt there, instead of refusing the folder."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts and output and (Path(output) / runs.LAST).is_file():
        if os.environ.get("RANK", "0") == "0":
            print(f"resume: torchrun restart {restarts}: continuing the run in {output} from its {runs.LAST}")
        return Path(output)
    return None


def main(argv=None) -> int:
    # A budget counts from the launch of a command; called from Python with arguments, from this call.
    clock = Clock(from_process_start=argv is None)
    args, given = parse_args(argv)
    try:
        ckpt = None
        resume = Path(args.resume) if args.resume else elastic_restart(args.output)
        if resume is not None:
            ckpt = runs.read_checkpoint(resume / runs.LAST)
            base, recipe = ckpt.config, ckpt.recipe or args.recipe
            try:  # the saved config is a file's dict: checked as such, before the command line's flags join it
                TrainConfig.from_dict(base)
            except ConfigError as e:
                raise CheckpointError(f"{resume / runs.LAST}: its saved training config: {e}") from e
            changed = {k: v for k, v in given.items() if base.get(k) != v}
            if changed:
                print(f"resume: overriding the saved config with {changed}")
            saved_sched = base.get("sched", "cosine")
            if given.get("sched", saved_sched) != saved_sched:
                raise ConfigError(f"--sched {given['sched']}: {resume / runs.LAST} continues its {saved_sched} "
                                  "schedule; start a new run for another")
            if "epochs" in changed:  # the scheduler comes back from last.ckpt with its saved length
                print("resume: the schedule keeps the saved run's length; a longer run continues at --min-lr")
        else:
            base, recipe = get_recipe(args.recipe).overrides, args.recipe
            fixed = [n for n in ("epochs", "steps") if n in given]
            if fixed and given.get("budget"):
                raise ConfigError(f"--budget sets the run's length itself: give it or --{fixed[0]}, not both")
            if fixed:  # a length given on the command line replaces the recipe's budget, and its model choice
                base = {**base, "budget": "", "small_model": "", "model_min_epochs": 0.0}
            if "model" in given and "small_model" not in given:  # a model named on the command line is trained
                base = {**base, "small_model": "", "model_min_epochs": 0.0}
        cfg = TrainConfig.from_dict({**base, **given})
        if resolve_device(cfg.device).type == "cpu":
            keep_freed_cpu_memory()  # process-wide: CPU steps stop faulting in fresh pages (vit/precision.py)
        with torch_settings(cfg):
            return run(cfg, recipe, Path(args.output) if args.output else None, resume,
                       args.quiet or not on_terminal(), ckpt, frozenset(given), clock)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except VitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the loop started (loading data, building the model)
        print("interrupted before training started; nothing to resume", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    raise SystemExit(main())
