"""Train a ViT: `python train.py` (sklearn digits, offline, ~1 minute on 2 CPU cores) up to ImageNet subsets
on several GPUs (`torchrun --nproc_per_node=N train.py ...`).

Reads top to bottom: command line; `set_up` builds what the loop works on once (a `Training`: data, the run's
length, model, optimizer and schedule); `restore` says where it starts (a `State`, fresh or from last.ckpt);
`train` runs epochs of `train_step`s with `finish_epoch` (evaluate, record, save) after each; `finish` reports how
it ended. The loop asks the run's plan (vit/plan.py: a fixed length, or a time budget's planner) after each
step and epoch whether the length changed, and which epochs evaluate. Its helpers live in their own modules:
the parts (vit/builders.py: model, schedule, Mixup, loss, EMA), batches (vit/batches.py), ranks (vit/distributed.py),
random streams (vit/rng.py), the run folder (vit/runs.py). Hyperparameters and recipes live in `vit/recipes.py`.

Exact resume: batch order and augmentation depend only on (seed, epoch, step) (see vit/data.py), and
last.ckpt holds every other piece of state (model, optimizer, scheduler, EMA, grad scaler, the python/
numpy/torch RNGs, the position inside the epoch), so on a deterministic CPU an interrupted and resumed run
ends with bit-identical weights, on the in-memory path and the DataLoader path alike.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from . import budget as budgets
from . import finetune, runs, tensorboard
from .batches import Inputs, build_inputs, load_data
from .budget import Budget, Clock
from .builders import (base_lr, build_criterion, build_ema, build_mixup, build_model, build_scheduler,
                       fit_model_to_data, fit_to_device, scale_lr)
from .distill import DistillationLoss, load_teacher
from .distributed import Dist, all_reduce_sum, collective, elastic_restart, rank0_value, setup_distributed, wrap_ddp
from .errors import CheckpointError, ConfigError, NonFiniteLossError, OutputError, RankLostError, VitError
from .eval_views import black, check_shift, predict_logits
from .metrics import confusion_matrix
from .model import to_2tuple
from .optim import build_optimizer
from .plan import BudgetPlanner, Plan, climb, eval_pass_s, plan_for, sample_batches, step_work
from .precision import autocast, compiled_training_settings, keep_freed_cpu_memory, resolve_device, resolve_precision
from .recipes import DEFAULT_RECIPE, RECIPES, RETIRED_FIELDS, Rung, TrainConfig, flag, get_recipe
from .registry import create_model, get_entry
from .rng import rng_state, seed_per_rank, seed_shared, torch_settings
from .stopper import Stopper
from .teacher import TeacherCost, fit_teacher
from .runs import Checkpoint, State
from .weights import check_state_dict, push_to_hub, save_pretrained

if TYPE_CHECKING:
    from timm.data import Mixup
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3

    from .model import VisionTransformer

PLOT_EVERY_S = 30.0  # redraw curves.png at most this often (matplotlib costs ~0.3 s a figure)


# --------------------------------------------------------------------------------------------------------
# Command line: one flag per TrainConfig field, plus the run's own flags


def build_parser() -> argparse.ArgumentParser:
    # Each help text states its default once: for a TrainConfig field, the value the default recipe gives it (the
    # recipe's own, else the field's); argparse leaves the flag unset, so that a recipe's value is not overridden.
    defaults = get_recipe(DEFAULT_RECIPE).config()
    p = argparse.ArgumentParser(
        prog="train.py", allow_abbrev=False,
        description=f"Train a Vision Transformer. With no arguments: the '{DEFAULT_RECIPE}' recipe (offline, CPU, "
                    f"~1 min). The defaults shown are the '{DEFAULT_RECIPE}' recipe's; --recipe NAME sets its own.",
        epilog="recipes: " + "; ".join(f"{r.name}: {r.doc.splitlines()[0]}" for r in RECIPES.values()),
    )
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES),
                   help=f"named recipe (vit/recipes.py; default: {DEFAULT_RECIPE})")
    p.add_argument("--output", default=None, help="output folder (default: runs/RECIPE-DATE-TIME)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR from its last.ckpt; with --output, in that empty folder, which "
                        "DIR's run is first copied into (DIR is then only read)")
    p.add_argument("--overwrite", action="store_true",
                   help="start the run in --output even if it holds an earlier run's files (they are deleted first)")
    p.add_argument("--plan-only", action="store_true",
                   help="with --budget: stop once the plan is made (model and steps printed; --resume continues)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars: one line per epoch (so too when stdout or stderr is not a terminal)")
    for f in TrainConfig.__dataclass_fields__.values():
        kw = dict(default=argparse.SUPPRESS, help=f.metadata["help"] + f" (default: {getattr(defaults, f.name)!r})")
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
# Model, optimizer, schedule


def use_plan(tr: Training, st: State) -> None:
    """The plan's length changed (a budget's plan or re-plan): the schedule is built for it, and the next step
    takes its learning rate from the new schedule."""
    tr.scheduler = build_scheduler(tr.cfg, tr.optimizer, tr.plan.total_steps, tr.plan.warmup)
    tr.scheduler.step_update(st.step + 1)


# --------------------------------------------------------------------------------------------------------
# What the loop works on


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
    plan: Plan  # the run's length, or a budget's planner (vit/plan.py)
    quiet: bool = False  # no progress bars
    plan_only: bool = False  # --plan-only: stop once a budget's plan is made
    board: tensorboard.Board | None = None  # rank 0's TensorBoard writer (--tensorboard, --log-dir)
    stopper: Stopper = field(default_factory=Stopper)
    plotted_at: float = 0.0  # perf_counter() of the last curves.png
    step_lr: float | None = None  # the lr the last step trained with: the console, metrics.jsonl and TensorBoard's

    def say(self, *lines) -> None:
        if self.dist.is_main:
            print(*lines)

    def max_steps_reached(self, st: State) -> bool:
        return bool(self.cfg.max_steps) and st.step >= self.cfg.max_steps

# --------------------------------------------------------------------------------------------------------
# The run: set up, restore, train, finish


def run(cfg: TrainConfig, recipe: str, output: Path | None, resume: Path | None, quiet: bool,
        ckpt: Checkpoint | None = None, given: frozenset = frozenset(), clock: Clock | None = None,
        ladder: tuple[Rung, ...] = (), plan_only: bool = False, overwrite: bool = False) -> int:
    """Train into `output` (or go on with `resume`'s run from its last.ckpt, `ckpt`: in `resume`, or in `output`
    once the run is copied there); returns the exit code. `ladder`: a budget's models to choose from; `plan_only`:
    stop once a budget's plan is made; `overwrite`: a new run deletes the run files it finds."""
    d, device = setup_distributed(cfg.device)
    out = output or resume or runs.default_folder(recipe)
    copy_from = resume if resume is not None and not runs.same_folder(out, resume) else None
    lock = board = None
    created = runs.outermost_missing(out)  # removed again if the run is refused before it writes anything
    try:
        if tensorboard.enabled(cfg):
            tensorboard.require()
        if d.is_main:
            lock = runs.lock_output(out, resume is not None and copy_from is None, overwrite, copy_from)
        tr = set_up(cfg, recipe, d, device, out, quiet, given, ladder if ckpt is None else (), clock or Clock(),
                    copy_from)
        tr.plan_only = plan_only
        st = restore(tr, ckpt, copy_from)
        tr.say(summary(tr))
        if tensorboard.enabled(cfg) and d.is_main:
            tr.board = board = tensorboard.Board(tensorboard.folder_for(cfg, out), None if ckpt is None else st.step)
            board.hparams(cfg.to_dict(), recipe)
            tr.say(f"TensorBoard events in {board.folder} (tensorboard --logdir {board.folder})")
        stopped = train(tr, st)
        if board is not None and not stopped:
            board.end(tr.model, tr.inputs.data.val, tr.inputs.data.classes, device, st.step)
        return finish(tr, st, stopped)
    except VitError as e:
        if lock is not None and not isinstance(e, NonFiniteLossError):
            runs.remove_created(out, created, keep_out=(runs.LOCK,))
        raise
    finally:
        if d.world > 1:
            dist.destroy_process_group()
        if board is not None:
            board.close()
        if lock is not None:
            runs.release_output(out, lock)


def set_up(cfg: TrainConfig, recipe: str, d: Dist, device: torch.device, out: Path, quiet: bool,
           given: frozenset = frozenset(), ladder: tuple[Rung, ...] = (), clock: Clock | None = None,
           copy_from: Path | None = None) -> Training:
    """Data, the run's length (a budget's planner), the model (with a budget and a `ladder` of models, the
    largest whose minimum epochs fit, for at most its longest schedule), the teacher (`copy_from`: where a resumed
    run's is, before restore copies it), optimizer, schedule, EMA, Mixup and loss: each built once, the same on
    every rank."""
    seed_shared(cfg.seed)
    entry = get_entry(cfg.model)
    model_img = cfg.img_size or entry.config.img_size
    check_shift(cfg.eval_shift, to_2tuple(model_img))
    data = load_data(cfg, d, model_img if isinstance(model_img, int) else model_img[0], entry.config.in_chans)
    clock, longest = clock or Clock(), None
    teacher_cost = TeacherCost(data, device)  # a --teacher-widths convnet's minutes, priced before the model is chosen
    if ladder:
        cfg, longest = climb(cfg, recipe, ladder, data, d, device, given, clock, teacher_cost)
    teacher_source = cfg.teacher
    if cfg.teacher_widths:  # trained now: its minutes count, as the budget's clock runs from launch
        teacher_source = fit_teacher(cfg, data, d, device, out, teacher_cost, kept_in=copy_from)
        seed_shared(cfg.seed)  # the student starts as it would without the teacher's training before it
    cfg, lr_line = scale_lr(cfg)  # the chosen model's lr at the run's batch
    plan = plan_for(cfg, d, len(data.train))
    if isinstance(plan, BudgetPlanner):
        plan.clock = clock
        if longest is not None:  # the model's longest schedule: no plan goes past it
            plan.budget.max_steps = math.ceil(longest * plan.steps_per_epoch)
    model = build_model(cfg, len(data.classes), data.channels).to(device)
    model.class_names = data.classes
    if model.num_classes != len(data.classes):
        raise ConfigError(f"the model has {model.num_classes} classes but {cfg.dataset} has {len(data.classes)}")
    if cfg.freeze:  # before the optimizer: frozen parameters are left out of it
        finetune.freeze(model, cfg.freeze)
    if cfg.lora_rank:
        finetune.add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    inputs = build_inputs(cfg, data, model.preprocess, d, device, given, plan.img_size_at)
    precision = resolve_precision(cfg.precision, device, model.embed_dim, training=True)
    optimizer = build_optimizer(cfg, model, device, precision)
    scheduler = build_scheduler(cfg, optimizer, plan.total_steps, plan.warmup)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ema = build_ema(cfg, model)
    mixup = build_mixup(cfg, model.num_classes)
    criterion, distill = build_criterion(cfg, mixup), None
    if teacher_source:
        teacher, view = load_teacher(teacher_source, model, device, cfg.teacher_pretrained)
        distill = DistillationLoss(criterion, teacher, view, cfg.distill or "hard", cfg.distill_alpha, cfg.distill_tau)
        if hasattr(model, "set_distilled_training"):  # a distilled student returns (cls, dist) logits while training
            model.set_distilled_training()
    net = model
    if d.world > 1:
        net = wrap_ddp(model, device)
    if cfg.compile:
        net = torch.compile(net)
    tr = Training(cfg=cfg, recipe=recipe, dist=d, device=device, out=out, inputs=inputs, model=model, net=net,
                  optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema, mixup=mixup, criterion=criterion,
                  distill=distill, precision=precision, plan=plan, quiet=quiet)
    if lr_line:
        tr.say(lr_line)
    if isinstance(plan, BudgetPlanner):
        _, _, val = sample_batches(cfg, data, model.preprocess, d, device)
        plan.say, plan.agree = tr.say, lambda n: rank0_value(n, d, device)
        plan.eval_pass_s = lambda: eval_pass_s(model, val, len(data.val), precision, device, d)
        plan.work = step_work(cfg, plan, model.num_prefix_tokens, model.patch_embed.num_patches)
    return tr


def restore(tr: Training, ckpt: Checkpoint | None, copy_from: Path | None = None) -> State:
    """Where training starts: the first step, or exactly where `ckpt` left off (weights, optimizer, schedule,
    EMA, loss scale, RNGs, position in the epoch). `copy_from`: the folder `ckpt` came from, when the run goes
    on in another (tr.out): its run files are copied there once the checkpoint has loaded."""
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
            if isinstance(tr.plan, BudgetPlanner) and ckpt.budget is not None:
                tr.plan.budget = budget = Budget.from_dict(ckpt.budget)
                if budget.total_steps:  # the saved plan; the scheduler came back with its length
                    tr.plan.total_steps, tr.plan.ramp_steps = budget.total_steps, budget.ramp_steps
                    tr.plan.augment, tr.plan.warmup = budget.decided, tr.scheduler.warmup_t
        except (VitError, RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{tr.out / runs.LAST} cannot be resumed with this run's settings (a flag that "
                                  f"changes the model or optimizer, such as --model or --img-size?): {e}") from e
        if d.is_main:
            if copy_from is not None:
                copied = runs.copy_run(copy_from, tr.out)
                print(f"resume: copied {', '.join(copied)} from {copy_from} to {tr.out}; the run continues there "
                      f"and {copy_from} is left as it was")
            runs.truncate_metrics(tr.out / runs.METRICS, st.epoch)
        tr.say(f"resumed {tr.out} at epoch {st.epoch + 1}, batch {st.batch}, step {st.step}")
    tr.scheduler.step_update(st.step + 1)  # the next step's lr: step s trains at the schedule's value at s
    return st


def summary(tr: Training) -> str:
    cfg, data = tr.cfg, tr.inputs.data
    n_params, trainable = sum(p.numel() for p in tr.model.parameters()), finetune.trainable_parameters(tr.model)
    if isinstance(tr.plan, BudgetPlanner) and not tr.plan.planned:
        length = (f"a budget of {budgets.duration(tr.plan.budget.budget_s)} (steps planned after timing the first "
                  f"{budgets.PROBE_SKIP + budgets.PROBE_STEPS}), {tr.plan.steps_per_epoch} steps of {cfg.batch_size} "
                  "an epoch")
    else:
        length = f"{tr.plan.epochs} epochs x {tr.plan.steps_per_epoch} steps of {cfg.batch_size}"
    if trainable != n_params:
        length += f"; {trainable:,} parameters trained" + (f" (LoRA rank {cfg.lora_rank})" if cfg.lora_rank else
                                                         f" (--freeze {cfg.freeze})" if cfg.freeze else "")
    if tr.distill is not None:
        teacher = cfg.teacher or f"the convnet {cfg.teacher_widths} trained first ({tr.out / runs.TEACHER})"
        length += f"; distilling from {teacher} ({tr.distill.kind})"
    return (f"{cfg.model} ({n_params / 1e6:.2f}M params) on {cfg.dataset}: {len(data.train)} train / "
            f"{len(data.val)} val images, {len(data.classes)} classes; {length}; {tr.device.type} {tr.precision}, "
            f"{tr.dist.world} process(es); output {tr.out}")


def train(tr: Training, st: State) -> bool:
    """Epochs until the plan ends or a stop is asked for; True when stopped early (last.ckpt then holds the
    position to resume from)."""
    tr.plotted_at = time.perf_counter()
    tr.plan.start(st.step)
    with tr.stopper:
        while st.epoch < tr.plan.epochs:
            with compiled_training_settings() if tr.cfg.compile else contextlib.nullcontext():
                stop = train_one_epoch(tr, st)
            if st.batch >= tr.plan.epoch_end(st.epoch):
                stop = finish_epoch(tr, st, stop)
            if stop and st.epoch < tr.plan.epochs:
                return True
    return False


def train_one_epoch(tr: Training, st: State) -> bool:
    """Train from batch st.batch to the end of epoch st.epoch. True when a signal (on any rank) or --max-steps
    asks to stop; last.ckpt is then saved here if the epoch is not over (at its end finish_epoch saves)."""
    cfg, plan, end = tr.cfg, tr.plan, tr.plan.epoch_end(st.epoch)
    tr.net.train()
    with tqdm(total=end, initial=st.batch, desc=f"epoch {st.epoch + 1}/{plan.epochs_label}", leave=False,
              disable=tr.quiet or not tr.dist.is_main, dynamic_ncols=True) as bar:
        t0 = time.perf_counter()
        for x, y, skipped in tr.inputs.train_batches(st.epoch, st.batch, end, plan.steps_per_epoch, plan.augment):
            st.batch += 1
            st.skipped += skipped
            if tr.inputs.batch_is_empty(x):  # every image of this batch was unreadable on some rank (--on-corrupt skip)
                continue
            loss, lr, signalled = train_step(tr, st, x, y)
            tr.step_lr = lr
            st.loss_sum += loss
            st.loss_count += 1
            st.images += len(x) * tr.dist.world
            now = time.perf_counter()
            st.train_s += now - t0
            st.elapsed_s += now - t0
            step_s, t0 = now - t0, now
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", ips=f"{st.images / max(st.train_s, 1e-9):.0f}")
            if tr.board is not None:
                tr.board.step(st.step, loss, lr, st.images / max(st.train_s, 1e-9))
            stop = signalled or tr.max_steps_reached(st)
            if plan.after_step(st.step, st.batch, step_s):  # a budget planned or re-planned the run's length
                use_plan(tr, st)
                stop = stop or tr.plan_only
                end = plan.epoch_end(st.epoch)  # past st.batch: a plan keeps a step to take
                save_last(tr, st)  # the plan is recorded before the next step
            elif st.batch < end and (stop or (cfg.save_every and st.step % cfg.save_every == 0)):
                save_last(tr, st)
            if stop:
                return True
            if st.batch >= end:
                break
    return False


def train_step(tr: Training, st: State, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, bool]:
    """One optimizer step on this rank's share of a global batch, in cfg.accum_steps micro-batches.

    Returns (the loss averaged over ranks, the step's lr, whether any rank was signalled). A non-finite loss
    raises NonFiniteLossError before the step can spoil the weights, on every rank alike.
    """
    cfg, d, scaler, opt = tr.cfg, tr.dist, tr.scaler, tr.optimizer
    if cfg.patch_drop_end >= 0:
        tr.model.patch_drop_rate = tr.plan.patch_drop_at(st.step)
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
            with collective(d):  # DDP all-reduces the gradients in backward: where a lost rank surfaces
                scaler.scale(loss).backward() if scaler.is_enabled() else loss.backward()
        loss_total += loss.detach()
    # One sync per step: the loss is checked before the step can spoil the weights, on every rank alike.
    flags = torch.stack([loss_total.float(), (~torch.isfinite(loss_total)).float(),
                         torch.tensor(float(tr.stopper.signum), device=tr.device)])
    all_reduce_sum(flags, d)
    loss_value, bad, signalled = flags.tolist()  # the step's one host sync
    loss_value /= d.world
    lr = base_lr(opt.param_groups[0])
    if bad:  # the weights this loss came from are the last step's: its lr is the one to blame
        made_by = f"lr {lr:.3g}" if tr.step_lr is None else f"after a step at lr {tr.step_lr:.3g}"
        raise NonFiniteLossError(
            f"non-finite loss ({loss_value}) at step {st.step + 1} (epoch {st.epoch + 1}, {made_by}); "
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
    tr.scheduler.step_update(st.step + 1)  # the next step's lr (step s trains at the schedule's value at s)
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
            logits = predict_logits(net, x, tr.cfg.eval_hflip, tr.plan.augment["eval_shift"], fill)
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


def finish_epoch(tr: Training, st: State, stop: bool) -> bool:
    """Evaluate where one is due (the model, and its EMA copy), record the epoch (metrics.jsonl, best.safetensors,
    one printed line), move to the next epoch and save last.ckpt there; redraw curves.png now and then. Returns whether
    to stop: asked for during the epoch (`stop`), or by a signal while evaluating."""
    cfg, d = tr.cfg, tr.dist
    t0 = time.perf_counter()
    lr = tr.step_lr if tr.step_lr is not None else base_lr(tr.optimizer.param_groups[-1])  # the last step's lr
    row = dict(epoch=st.epoch + 1, step=st.step, train_loss=st.loss_sum / max(st.loss_count, 1),
               lr=lr, images_per_s=st.images / max(st.train_s, 1e-9))
    evaluating = tr.plan.evaluates_after(st.epoch)
    confusion = best_model = None
    if evaluating:
        K = len(tr.inputs.data.classes)
        confusion = torch.zeros(K, K, dtype=torch.int64, device=tr.device) if tensorboard.enabled(cfg) else None
        row["val_loss"], row["val_top1"] = evaluate(tr, tr.net, confusion)
        best_model, top1 = tr.model, row["val_top1"]
        if tr.ema is not None:
            row["ema_val_loss"], row["ema_val_top1"] = evaluate(tr, tr.ema.module)
            if row["ema_val_top1"] > top1:
                best_model, top1 = tr.ema.module, row["ema_val_top1"]
    if st.skipped:
        row["skipped_images"] = st.skipped
    if tr.inputs.size is not None:  # --res-start: the side of the epoch's last images
        row["img_size"] = tr.inputs.size
    eval_s = time.perf_counter() - t0
    st.elapsed_s += eval_s
    row["elapsed_s"] = st.elapsed_s
    if d.is_main:
        if best_model is not None and top1 > st.best_top1:
            st.best_top1 = top1
            save_pretrained(best_model, tr.out / runs.BEST, class_names=tr.inputs.data.classes)
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
    epoch_steps, epoch_s = st.loss_count, st.train_s
    st.next_epoch()
    if tr.plan.after_epoch(st.step, epoch_steps, epoch_s, eval_s if evaluating else None):
        use_plan(tr, st)
    save_last(tr, st)
    if d.is_main and (time.perf_counter() - tr.plotted_at > PLOT_EVERY_S or st.epoch == tr.plan.epochs or stop):
        from .plots import plot_curves  # matplotlib only once a run draws

        plot_curves(tr.out / runs.METRICS, tr.out / runs.CURVES)
        tr.plotted_at = time.perf_counter()
    return stop


def save_last(tr: Training, st: State) -> None:
    if not tr.dist.is_main:
        return
    if tr.board is not None:  # what a resume keeps (steps up to last.ckpt's) is on disk before last.ckpt is
        tr.board.flush()
    runs.save_checkpoint(tr.out / runs.LAST, Checkpoint(
        config=tr.cfg.to_dict(), recipe=tr.recipe, model_config=tr.model.config.to_dict(),
        class_names=tr.inputs.data.classes, model=tr.model.state_dict(), optimizer=tr.optimizer.state_dict(),
        scheduler=tr.scheduler.state_dict(), ema=tr.ema.module.state_dict() if tr.ema is not None else None,
        scaler=tr.scaler.state_dict() if tr.scaler.is_enabled() else None, rng=rng_state(), state=st,
        budget=({**tr.plan.budget.to_dict(), "spent_s": tr.plan.used_s()} if isinstance(tr.plan, BudgetPlanner)
                else None),
        augment=dict(tr.plan.augment) if tr.plan.planned else None,
    ))


def finish(tr: Training, st: State, stopped: bool) -> int:
    """Say how the run ended and return the exit code: 0, or 128 + N after signal N (as a shell reports it)."""
    signum = tr.stopper.signum
    if stopped:
        reason = (f"signal {signal.Signals(signum).name}" if signum else
                  f"--max-steps {tr.cfg.max_steps}" if tr.max_steps_reached(st) else
                  "--plan-only, once the plan was made" if tr.plan_only else "a signal to another rank")
        more = " --max-steps 0" if reason.startswith("--max-steps") else ""  # the saved config still has it
        launcher = "python" if tr.dist.world == 1 else \
            f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', tr.dist.world)}"
        tr.say(f"stopped by {reason} at step {st.step}; last.ckpt saved. Continue with: "
               f"{launcher} train.py --resume {tr.out}{more}")
        return 128 + signum if signum else 0
    cfg = tr.cfg
    if isinstance(tr.plan, BudgetPlanner):
        budget = tr.plan.budget
        tr.say(f"budget: {budgets.duration(tr.plan.used_s())} of {budgets.duration(budget.budget_s)} used, "
               f"{st.step} steps ({len(budget.replans)} re-plan(s))" +
               (f": {budget.max_steps / tr.plan.steps_per_epoch:g} epochs of {cfg.model} is this recipe's longest "
                "schedule" if budget.max_steps and st.step >= budget.max_steps else ""))
    files = [name for name in (runs.BEST, runs.LAST, runs.METRICS, runs.CURVES) if (tr.out / name).is_file()]
    weights = next((name for name in files if name in (runs.BEST, runs.LAST)), None)
    tr.say(f"done in {st.elapsed_s:.0f} s: best val top-1 {st.best_top1:.2f}%\n"
           f"outputs in {tr.out}/: {', '.join(files)}")
    if weights is not None:
        tr.say(f"evaluate with: python evaluate.py {tr.out / weights} --dataset {shlex.quote(cfg.dataset)}"
               + (f" --data-dir {cfg.data_dir}" if cfg.data_dir else ""))
    if cfg.push_to_hub and tr.dist.is_main:
        push(tr, st)
    return 0


def push(tr: Training, st: State) -> None:
    """--push-to-hub: best.safetensors to the hub, in timm's layout, which timm and vit load (vit.weights)."""
    cfg, best = tr.cfg, tr.out / runs.BEST
    try:
        url = push_to_hub(create_model(pretrained=best), cfg.push_to_hub,
                          commit_message=f"{cfg.model} on {cfg.dataset}: val top-1 {st.best_top1:.2f}%",
                          description=f"`{cfg.model}` trained on `{cfg.dataset}` by vit's train.py (recipe "
                                      f"{tr.recipe}): best val top-1 {st.best_top1:.2f}%.")
    except VitError as e:
        again = f"python -c \"import vit; vit.push_to_hub(vit.create_model(pretrained='{best}'), '{cfg.push_to_hub}')\""
        raise OutputError(f"{e}. The run itself finished in {tr.out}; push its weights again with: {again}") from e
    tr.say(f"pushed {runs.BEST} to hf-hub:{cfg.push_to_hub}: {url}")


def on_terminal() -> bool:
    """Progress bars only on a terminal: in a log file (stdout or stderr redirected) each redraw is a line."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def main(argv=None) -> int:
    # A budget counts from the launch of a command; called from Python with arguments, from this call.
    clock = Clock(from_process_start=argv is None)
    args, given = parse_args(argv)
    try:
        ckpt = None
        restarted = elastic_restart(args.output)  # first: a restart of --resume A --output B goes on in B
        resume = restarted or (Path(args.resume) if args.resume else None)
        in_place = resume is not None and (args.output is None or runs.same_folder(Path(args.output), resume))
        if args.overwrite and in_place and restarted is None:
            raise ConfigError(f"--overwrite starts a new run, --resume {resume} continues the one there: give one "
                              "of them (or --output NEW to continue that run in a copy)")
        if resume is not None:
            ckpt = runs.read_checkpoint(resume / runs.LAST)
            base = {k: v for k, v in ckpt.config.items() if k not in RETIRED_FIELDS}
            recipe, ladder = ckpt.recipe or args.recipe, ()  # a resumed run trains the model it chose
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
            chosen = get_recipe(args.recipe)
            base, recipe, ladder = chosen.overrides, args.recipe, () if given.get("pretrained") else chosen.ladder
            fixed = [n for n in ("epochs", "steps") if n in given]
            if fixed and given.get("budget"):
                raise ConfigError(f"--budget sets the run's length itself: give it or --{fixed[0]}, not both")
            if fixed:  # a length given on the command line replaces the recipe's budget, and its model choice
                base = {**base, "budget": ""}
        cfg = TrainConfig.from_dict({**base, **given})
        device_type = resolve_device(cfg.device).type
        if resume is None:  # the model follows the data where the recipe's does not take its images as they are...
            cfg, why = fit_model_to_data(cfg, recipe, given)
            cfg, how = fit_to_device(cfg, chosen.on_cuda, given, device_type)  # ... and a GPU's batch, the device
            for line in filter(None, (why, how) if os.environ.get("RANK", "0") == "0" else ()):
                print(line)
            ladder = () if why else ladder  # the recipe's models do not take these images either
        if device_type == "cpu":
            keep_freed_cpu_memory()  # process-wide: CPU steps stop faulting in fresh pages (vit/precision.py)
        with torch_settings(cfg.device, cfg.threads, cfg.deterministic):
            return run(cfg, recipe, Path(args.output) if args.output else None, resume,
                       args.quiet or not on_terminal(), ckpt, frozenset(given), clock, ladder, args.plan_only,
                       args.overwrite)
    except (NonFiniteLossError, RankLostError) as e:  # not a bad input: the run failed (a lost rank: torchrun restarts)
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
