"""A run's length, and the planner the training loop calls: how many steps in all, and evaluate now?

A run of --epochs or --steps has a `Plan` fixed up front. A run with --budget has a `BudgetPlanner`: it times the
run's first steps and one evaluation pass, fixes the step count that ends the run inside its budget
(vit/budget.py's arithmetic), decides what the length decides (crops, flips, moved test views: `augment_for`),
and re-plans when the machine's speed changes. The loop calls both the same way, at named points:

    plan.start(step)                       once, before the first step of this process
    plan.after_step(step, batch, step_s)   after every optimizer step: True when the length changed
    plan.after_epoch(step, ...)            after an epoch's evaluation: True when the length changed
    plan.total_steps, plan.epoch_end(e), plan.evaluates_after(e), plan.patch_drop_at(step), plan.img_size_at(step)

and where the length changed rebuilds its learning-rate schedule for it (vit/train.py `use_plan`). Which model
a budget trains is chosen before the run is built: `choose_model` times a few steps of each candidate.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from . import budget as budgets
from . import data
from .budget import Budget, Clock, parse_budget
from .builders import build_model
from .distributed import Dist, rank0_value
from .errors import ConfigError
from .flops import count_flops
from .model import to_2tuple
from .optim import build_optimizer
from .precision import autocast, resolve_precision
from .recipes import Rung, TrainConfig, flag
from .registry import get_entry
from .rng import rng_state, set_rng_state
from .teacher import TeacherCost

if TYPE_CHECKING:
    from .batches import Data
    from .preprocess import Preprocess

UNPLANNED_STEPS = 10**12  # the length of a budgeted run while it times its first steps

# The part of a step's cost that its token count does not scale (optimizer, data, loss, the patch embedding of
# every patch), in tokens per token of a full image: slim's CIFAR-10 step on the Zen 3 CPU, 17 to 65 tokens,
# measured ~17.5 ms a token and ~100 ms besides (benchmarks/LOG.md).
FIXED_TOKEN_SHARE = 0.1


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> int:
    """--warmup-epochs in steps, ending a step before the plan's end at the latest (the cosine then decays)."""
    return min(round(cfg.warmup_epochs * steps_per_epoch), total_steps - 1)


@dataclass(frozen=True)
class Resolution:
    """Progressive resolution (FFCV's and fast.ai's progressive resizing): a plan's training images grow in a line
    from `start` pixels at its first step to `full` at `end_frac` of it and stay there, each size rounded down to
    whole patches, so that a run trains at a few sizes, the early ones cheap. Evaluation is at `full`."""

    start: int
    full: int
    patch: int
    end_frac: float

    def at(self, step: int, total: int) -> int:
        """The image side at `step` (0-based) of a plan `total` steps long: non-decreasing in `step`, a multiple of
        the patch, `full` from step end_frac x (total - 1) on (a plan not yet made, UNPLANNED_STEPS long: `start`)."""
        ramp = self.end_frac * (total - 1)
        if step >= ramp:
            return self.full
        return int(self.start + (self.full - self.start) * step / ramp) // self.patch * self.patch

    def steps(self, total: int) -> list[tuple[int, int]]:
        """(first step, size) of each size a plan `total` steps long trains at, in order (found with `at`)."""
        found = []
        for size in range(self.start, self.full + 1, self.patch):
            first = bisect.bisect_left(range(total), size, key=lambda s: self.at(s, total))
            if first < total and (not found or first > found[-1][0]):
                found.append((first, self.at(first, total)))
        return found

    def describe(self, total: int) -> str:
        return "; images " + ", ".join(f"{size} px from step {first + 1}" for first, size in self.steps(total))


def resolution_for(cfg: TrainConfig) -> Resolution | None:
    """--res-start's schedule, from cfg.model's patch and the full size (--img-size or the model's); None without."""
    if not cfg.res_start:
        return None
    model = get_entry(cfg.model).config
    (h, w), (ph, pw) = to_2tuple(cfg.img_size or model.img_size), to_2tuple(model.patch_size)
    if h != w or ph != pw:
        raise ConfigError(f"--res-start grows square images of square patches; {cfg.model} takes {h}x{w} images in "
                          f"{ph}x{pw} patches")
    if cfg.res_start % ph or cfg.res_start >= h:
        raise ConfigError(f"--res-start {cfg.res_start} must be a multiple of {cfg.model}'s patch ({ph} px) and "
                          f"smaller than the full size ({h} px)")
    return Resolution(cfg.res_start, h, ph, cfg.res_end_frac)


@dataclass
class Plan:
    """The run's length in steps, fixed up front: the schedule spans it and the loop ends with it.

    A step is a global batch (an optimizer step, unless every image in it was unreadable). The last epoch may
    end early where total_steps is not a whole number of epochs. `warmup` is the schedule's warm-up in steps;
    `every` evaluates after every every-th epoch (and the last).
    """

    steps_per_epoch: int
    total_steps: int
    warmup: int = 0
    every: int = 1
    patch_drop: tuple[float, float] = (0.0, -1.0)  # --patch-drop, --patch-drop-end (-1: constant)
    resolution: Resolution | None = None  # --res-start's growing images (None: the full size throughout)
    ramp_steps: int = 0  # the plan length the sizes grow over (0: this plan's; a budget's shortest so far)

    @property
    def planned(self) -> bool:
        return self.total_steps < UNPLANNED_STEPS

    @property
    def epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)

    @property
    def epochs_label(self) -> str:
        return str(self.epochs) if self.planned else "?"

    def epoch_end(self, epoch: int) -> int:
        """The batch at which `epoch` ends."""
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def evaluates_after(self, epoch: int) -> bool:
        """Whether the run evaluates at the end of `epoch` (0-based): its last, and every every-th one that a
        whole epoch still follows (budget.evaluates_after, which a budget plans for)."""
        return budgets.evaluates_after(epoch + 1, self.total_steps, self.steps_per_epoch, self.every)

    def patch_drop_at(self, step: int | float, total: int | None = None) -> float:
        """The fraction of patch tokens dropped at `step` (of a plan `total` steps long, this one's by default):
        --patch-drop, or with --patch-drop-end, --patch-drop through the warm-up and then a line to --patch-drop-end
        at the plan's last step (a budget's timed steps are the warm-up's, which no length moves)."""
        start, end = self.patch_drop
        total = self.total_steps if total is None else total
        if end < 0 or total >= UNPLANNED_STEPS or step <= self.warmup:
            return start
        along = min((step - self.warmup) / max(total - 1 - self.warmup, 1), 1.0)
        return start + (end - start) * along

    def ramp(self, total: int | None = None) -> int:
        """The length --res-start's sizes grow over, for a plan `total` steps long (this one's by default): the
        plan's own, or a budget's shortest plan so far where that is shorter, so that a re-plan that lengthens the
        run leaves the sizes where they were and one that shortens it only moves them up."""
        total = self.total_steps if total is None else total
        return min(total, self.ramp_steps or total)

    def img_size_at(self, step: int) -> int | None:
        """The training images' side at `step`, from --res-start's schedule over the plan's ramp; None where every
        step trains at the full size."""
        return None if self.resolution is None else self.resolution.at(step, self.ramp())

    # The loop's calls: a fixed plan never changes.
    def start(self, step: int) -> None:
        pass

    def after_step(self, step: int, batch: int, step_s: float) -> bool:
        return False

    def after_epoch(self, step: int, epoch_steps: int, epoch_s: float, eval_s: float | None) -> bool:
        return False


def plan_for(cfg: TrainConfig, d: Dist, n_train: int) -> Plan:
    """The run's length: --epochs or --steps, or a budget's planner (which fixes it once its first steps are timed)."""
    local = cfg.batch_size // d.world
    if cfg.batch_size % d.world or local % cfg.accum_steps:
        raise ConfigError(f"--batch-size {cfg.batch_size} must split evenly over {d.world} rank(s) x "
                          f"{cfg.accum_steps} accumulation step(s)")
    if (cfg.mixup or cfg.cutmix) and local % 2:
        raise ConfigError(f"Mixup/CutMix need an even per-rank batch, got {local}")
    spe = n_train // cfg.batch_size
    if spe < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the training set ({n_train} images)")
    total = UNPLANNED_STEPS if cfg.budget else cfg.steps or cfg.epochs * spe
    common = dict(warmup=warmup_steps(cfg, spe, total), every=cfg.eval_every,
                  patch_drop=(cfg.patch_drop, cfg.patch_drop_end), resolution=resolution_for(cfg))
    if not cfg.budget:
        plan = Plan(spe, total, **common)
        plan.augment = augment_for(cfg, plan)
        return plan
    # a budgeted run's length is not known yet: a rule on it holds crops and flips back until then (the planner
    # times an evaluation with cfg.eval_shift's views until augment_for decides)
    return BudgetPlanner(spe, total, **common, augment=augment_for(cfg, Plan(spe, 0)), cfg=cfg,
                         budget=Budget(parse_budget(cfg.budget)))


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


def eval_passes(cfg: TrainConfig, shift: int) -> int:
    """Forward passes over the validation split an evaluation takes: model and EMA, each view."""
    return (2 if cfg.ema_decay else 1) * (2 if cfg.eval_hflip else 1) * (3 if shift else 1)


def step_tokens(prefix: int, patches: int, drop: float, area: float = 1.0) -> float:
    """What a step costs in the planner's model: its tokens (the prefix and the patches kept of an image `area`
    times the full one) and the fixed share."""
    return prefix + patches * area * (1.0 - drop) + FIXED_TOKEN_SHARE * (patches + prefix)


def mean_drop(cfg: TrainConfig) -> float:
    return (cfg.patch_drop + (cfg.patch_drop if cfg.patch_drop_end < 0 else cfg.patch_drop_end)) / 2


def step_work(cfg: TrainConfig, plan: Plan, prefix_tokens: int, patches: int) -> budgets.Work:
    """What steps [start, stop) of a plan cost, for the budget, in full-size steps at the mean token count: their
    number, or where --patch-drop-end or --res-start change the count along the plan, their tokens (and the fixed
    share; `patches`: a full-size image's)."""
    res = plan.resolution
    if cfg.patch_drop_end < 0 and res is None:
        return budgets.equal_steps
    P, N = prefix_tokens, patches

    def tokens(rate: float, size: int | None) -> float:
        return step_tokens(P, N, rate, 1.0 if size is None else size * size / (res.full * res.full))

    unit = tokens(mean_drop(cfg), None)

    def work(start: int, stop: int, total: int) -> float:
        warmup = warmup_steps(cfg, plan.steps_per_epoch, total)
        at = Plan(plan.steps_per_epoch, total, warmup, patch_drop=plan.patch_drop, resolution=res,
                  ramp_steps=plan.ramp(total))
        # pieces of one image size each, their drop rate flat (through the warm-up) or a line: the mean is the
        # middle step's
        cuts = {start, stop, min(max(warmup + 1, start), stop)}
        if res is not None:
            cuts |= {first for first, _ in res.steps(at.ramp()) if start < first < stop}
        cuts = sorted(cuts)
        return sum((b - a) * tokens(at.patch_drop_at((a + b - 1) / 2), at.img_size_at(a))
                   for a, b in zip(cuts, cuts[1:])) / unit
    return work


@dataclass
class BudgetPlanner(Plan):
    """A --budget run's plan: times the first steps of this process (after PROBE_SKIP), fixes the length, and
    re-plans at epoch ends and at a few checks inside each epoch (vit/budget.py). `budget` is what last.ckpt saves.

    Given by the loop: `eval_pass_s()` times one forward pass over this rank's validation share; `agree(n)` gives
    rank 0's n on every rank; `say` prints on rank 0."""

    cfg: TrainConfig = None
    budget: Budget = None
    clock: Clock = field(default_factory=Clock)
    eval_pass_s: Callable[[], float] = None
    agree: Callable[[int], int] = int
    say: Callable[..., None] = print
    work: budgets.Work = budgets.equal_steps
    augment: dict = field(default_factory=dict)  # augment_for's settings once planned
    _probe: list = field(default_factory=list)  # [first step timed, seconds since] while timing
    _window: list = field(default_factory=lambda: [0, 0.0])  # [steps, seconds] since the epoch's start or a cut
    _probe_start: int = 0

    def used_s(self) -> float:
        """Budget used so far: earlier processes of this run, and this one since its launch."""
        return self.budget.spent_s + self.clock.elapsed()

    def start(self, step: int) -> None:
        self._probe_start, self._probe, self._window = step + budgets.PROBE_SKIP, [], [0, 0.0]

    def after_step(self, step: int, batch: int, step_s: float) -> bool:
        if not self.planned:
            return self._time_probe(step, step_s)
        self._window[0] += 1
        self._window[1] += step_s
        if not (self.cfg.replan and step < self.total_steps and
                budgets.check_due(batch, self._window[0], self.steps_per_epoch, self.total_steps)):
            return False
        per_step = self._window[1] / self.work(step - self._window[0], step, self.total_steps)
        return self._replan(step, per_step, self.budget.eval_s, late_only=True)

    def after_epoch(self, step: int, epoch_steps: int, epoch_s: float, eval_s: float | None) -> bool:
        self._window = [0, 0.0]
        if not (self.planned and self.cfg.replan and step < self.total_steps):
            return False
        per_step = epoch_s / max(self.work(step - epoch_steps, step, self.total_steps), 1e-9)
        return self._replan(step, per_step, self.budget.eval_s if eval_s is None else eval_s)

    def _time_probe(self, step: int, step_s: float) -> bool:
        """Time PROBE_STEPS steps from the probe's start, then plan: True once planned."""
        if step <= self._probe_start:
            return False
        if not self._probe:
            self._probe = [step - 1, 0.0]
        self._probe[1] += step_s
        if step - self._probe[0] < budgets.PROBE_STEPS:
            return False
        per_step = self._probe[1] / self.work(self._probe[0], step, self.total_steps)
        cfg, pass_s = self.cfg, self.eval_pass_s()
        total = self._plan(step, per_step, pass_s * eval_passes(cfg, cfg.eval_shift))
        self.augment = self.budget.decided = augment_for(cfg, Plan(self.steps_per_epoch, total))
        shift = self.augment["eval_shift"]
        if shift != cfg.eval_shift:  # fewer views an evaluation than first planned for: the steps they leave
            total = self._plan(step, per_step, pass_s * eval_passes(cfg, shift))
        self._set_total(total, step)
        cropping = "".join(f"; no {what} (a run under --{flag} {epochs:g})" for what, flag, epochs, off in (
            ("random crops" + (" or moved test views" if shift != cfg.eval_shift else ""), "augment-min-epochs",
             cfg.augment_min_epochs, self.augment["crop_pad"] != cfg.crop_pad),
            ("flips", "hflip-min-epochs", cfg.hflip_min_epochs, self.augment["hflip"] != cfg.hflip)) if off)
        b, epochs = self.budget, total / self.steps_per_epoch
        fit = f" fit in {budgets.duration(b.budget_s)}"
        if total == b.max_steps:  # the ceiling: the rung's longest schedule ends before the budget does
            end = b.projected_s(self.used_s(), step, per_step, b.eval_s, self.steps_per_epoch, self.every, self.work)
            fit = (f", {cfg.model}'s longest schedule, end at ~{budgets.duration(end)} of "
                   f"{budgets.duration(b.budget_s)}")
        sizes = "" if self.resolution is None else self.resolution.describe(self.ramp())  # the cost: a full-size step's
        self.say(f"budget: {per_step * 1e3:.0f} ms a step and ~{b.eval_s:.1f} s an evaluation here: "
                 f"{total} steps ({epochs:.1f} epochs){fit}{cropping}{sizes}")
        return True

    def _plan(self, step: int, per_step: float, eval_s: float) -> int:
        return self.agree(self.budget.plan(self.used_s(), step, per_step, eval_s, self.steps_per_epoch, self.every,
                                           self.work))

    def _replan(self, step: int, per_step: float, eval_s: float, late_only: bool = False) -> bool:
        line = self.budget.replan(self.used_s(), step, per_step, eval_s, self.steps_per_epoch, self.every, late_only,
                                  self.work)
        total = self.agree(self.budget.total_steps)
        if total == self.total_steps:
            return False
        self._set_total(total, step)
        self._window = [0, 0.0]
        self.say(line or f"budget: re-planned to rank 0's {total} steps")
        return True

    def _set_total(self, total: int, done: int) -> None:
        """The new length after `done` steps. A plan too short for the warm-up, still under way, takes the warm-up
        a run of that length would have (from here on: the steps taken keep their learning rates). The warm-up is
        under way until its last step, the one at the peak rate (step `warmup`), has been taken."""
        self.budget.total_steps = self.total_steps = total
        self.budget.ramp_steps = self.ramp_steps = self.ramp(total)
        warmup = warmup_steps(self.cfg, self.steps_per_epoch, total)
        if done <= self.warmup and warmup != self.warmup:
            self.warmup = max(warmup, done)


def epochs_that_fit(budget_s: float, used_s: float, step_s: float, eval_s: float, steps_per_epoch: int,
                    every: int = 1) -> float:
    """Epochs of steps of `step_s` (and an evaluation of `eval_s` as the plan has them) that fit what is left."""
    left = budget_s - Budget(budget_s).reserve_s() - used_s
    return budgets.steps_that_fit(left, 0, step_s, eval_s, steps_per_epoch, every) / steps_per_epoch


ESTIMATE_SLACK = 3.0  # a larger rung is timed unless 1/3 of its FLOP-scaled cost still leaves its minimum out of reach


def choose_rung(cfg: TrainConfig, ladder: tuple[Rung, ...], time_model: Callable[[TrainConfig], tuple],
                steps_per_epoch: int, used_s: Callable[[], float], agree: Callable[[int], int] = int,
                say: Callable[..., None] = print,
                teacher_cost: Callable[[TrainConfig], tuple[float, float]] = lambda c: (0.0, 0.0)) -> Rung:
    """The largest rung of `ladder` (smallest first) whose min_epochs fit the budget: the smallest is timed by
    `time_model(cfg)` -> (seconds a step, seconds an evaluation pass), the larger ones estimated from it by
    their FLOPs and kept tokens, and a larger one that the estimate does not rule out is timed before it is
    chosen (rank 0's verdict on every rank). The smallest rung is the choice where no larger one fits.

    The estimate only rules out: a small model's step is not all matrix products (Muon's orthogonalisation,
    the data, the loss), so FLOPs overstate what a larger one costs against it (micro 2.2x slim's FLOPs took
    2.0x its time on the AVX-512 BF16 CPU); a rung is timed unless even a third of its estimated cost leaves
    its minimum out of reach. Where --res-start or --patch-drop-end make steps cheaper along a plan, a rung's
    timed step counts at its mean cost over a plan of its minimum epochs (mean_step_share). A rung whose fields
    train a teacher first (--teacher-widths) has `teacher_cost(config)` -> (seconds the teacher takes, seconds its
    forward pass adds to a step) taken from what is left and added to each step."""
    budget_s = budgets.parse_budget(cfg.budget)

    def epochs(rung: Rung, step_s: float, pass_s: float) -> float:  # step_s: a full-size step at --patch-drop
        c = rung_config(cfg, rung)
        teacher_s, forward_s = teacher_cost(c)
        step_s = step_s * mean_step_share(c, steps_per_epoch, max(rung.min_epochs, 1.0)) + forward_s
        return epochs_that_fit(budget_s, used_s() + teacher_s, step_s, pass_s * eval_passes(c, c.eval_shift),
                               steps_per_epoch, c.eval_every)

    if len(ladder) == 1:
        return ladder[0]
    base_s, base_pass_s = time_model(rung_config(cfg, ladder[0]))
    base_cost = step_cost(rung_config(cfg, ladder[0]))
    for rung in reversed(ladder[1:]):
        scale = step_cost(rung_config(cfg, rung)) / base_cost
        estimate = epochs(rung, base_s * scale / ESTIMATE_SLACK, base_pass_s * scale / ESTIMATE_SLACK)
        if not agree(int(estimate >= rung.min_epochs)):  # every rank takes the same branches
            continue
        step_s, pass_s = time_model(rung_config(cfg, rung))
        fit = epochs(rung, step_s, pass_s)
        if agree(int(fit >= rung.min_epochs)):
            return rung
        say(f"budget: {step_s * 1e3:.0f} ms a step here: {fit:.1f} epochs of {rung.model} fit in "
            f"{budgets.duration(budget_s)}, under its {rung.min_epochs:g}: a smaller model instead")
    return ladder[0]


def climb(cfg: TrainConfig, recipe: str, ladder: tuple[Rung, ...], data: Data, d: Dist, device: torch.device,
          given: frozenset, clock: Clock, teacher: TeacherCost | None = None) -> tuple[TrainConfig, float | None]:
    """The config of the ladder's rung this run trains, with the fields that follow its model, and that rung's
    longest schedule in epochs: the rung of a --model given on the command line or of a fixed-length run's model
    (the config as it is, and None, where the ladder has no such model), else the largest whose minimum epochs
    fit the budget (vit/plan.py choose_rung, which times the models here)."""
    check_ladder(ladder, f"recipe {recipe}")
    say = print if d.is_main else (lambda *a: None)
    if "model" in given or not cfg.budget:
        rung = next((r for r in ladder if r.model == cfg.model), None)
        if rung is None:
            return cfg, None
        follow = rung_fields(rung, given)
        if follow:
            say(f"recipe {recipe}'s settings for {rung.model}: " + ", ".join(
                f"--{flag(k)} {v}" for k, v in follow.items()))
        return rung_config(cfg, rung, given), rung.max_epochs
    spe = len(data.train) // cfg.batch_size
    if spe < 1:
        return cfg, None  # plan_for says why
    rung = choose_rung(cfg, ladder, lambda c: time_model(c, data, d, device), spe, used_s=clock.elapsed,
                       agree=lambda n: rank0_value(n, d, device), say=say,
                       teacher_cost=(teacher or TeacherCost(data, device)).cost)
    say(f"budget: training {rung.model}, the largest of recipe {recipe}'s models whose {rung.min_epochs:g} "
        f"epochs fit, for at most {rung.max_epochs:g} epochs")
    return rung_config(cfg, rung, given), rung.max_epochs


def rung_config(cfg: TrainConfig, rung: Rung, given: frozenset = frozenset()) -> TrainConfig:
    """`cfg` with the rung's model and the fields that follow it, except those given on the command line."""
    return TrainConfig.from_dict({**cfg.to_dict(), **rung_fields(rung, given), "model": rung.model})


def rung_fields(rung: Rung, given: frozenset) -> dict:
    """The rung's fields but those given on the command line; a --teacher given replaces the rung's own teacher."""
    return {k: v for k, v in rung.overrides.items()
            if k not in given and not (k == "teacher_widths" and "teacher" in given)}


def mean_step_share(cfg: TrainConfig, steps_per_epoch: int, epochs: float) -> float:
    """A step's mean cost over a plan `epochs` long, against the full-size step at --patch-drop that time_model
    times: below 1 where --res-start or a lower --patch-drop-end makes steps cheaper along the plan."""
    total = max(round(epochs * steps_per_epoch), 1)
    plan = Plan(steps_per_epoch, total, warmup_steps(cfg, steps_per_epoch, total),
                patch_drop=(cfg.patch_drop, cfg.patch_drop_end), resolution=resolution_for(cfg))
    config = get_entry(cfg.model).config.replace(**({"img_size": cfg.img_size} if cfg.img_size else {}))
    P, N = config.num_prefix_tokens, math.prod(to_2tuple(config.img_size)) // math.prod(to_2tuple(config.patch_size))
    work = step_work(cfg, plan, P, N)
    return work(0, total, total) / total * step_tokens(P, N, mean_drop(cfg)) / step_tokens(P, N, cfg.patch_drop)


def step_cost(cfg: TrainConfig) -> float:
    """A training step's cost relative to other models', for an estimate: forward FLOPs at the tokens kept."""
    config = get_entry(cfg.model).config
    return count_flops(config.replace(stem=cfg.stem or config.stem)) * (1.0 - cfg.patch_drop)


def check_ladder(ladder: tuple[Rung, ...], where: str) -> None:
    """Every rung takes the same images (one data set is loaded for the run) and ranges are in order."""
    first = get_entry(ladder[0].model).config
    for rung in ladder:
        c = get_entry(rung.model).config
        if (c.img_size, c.in_chans) != (first.img_size, first.in_chans):
            raise ConfigError(f"{where}: {rung.model} takes {c.img_size} px x {c.in_chans}, {ladder[0].model} "
                              f"{first.img_size} px x {first.in_chans}: a ladder's models take the same images")
        if not 0 <= rung.min_epochs < rung.max_epochs:
            raise ConfigError(f"{where}: {rung.model}'s epochs {rung.min_epochs:g}-{rung.max_epochs:g} are no range")


@torch.no_grad()
def forward_s(model: nn.Module, x: torch.Tensor, precision: str, device: torch.device) -> float:
    """Seconds one inference forward pass over the batch `x` takes."""
    model.eval()
    t0 = time.perf_counter()
    with autocast(precision, device):
        model(x).float().sum().item()  # .item(): the device has finished
    model.train()
    return time.perf_counter() - t0


def eval_pass_s(model: nn.Module, val: torch.Tensor, n_val: int, precision: str, device: torch.device,
                d: Dist) -> float:
    """Seconds one forward pass over this rank's share of a validation split of `n_val` images takes: the chunk
    `val` timed, scaled (the first real evaluation corrects it)."""
    return forward_s(model, val, precision, device) / len(val) * -(-n_val // d.world)


def time_model(cfg: TrainConfig, splits: Data, d: Dist, device: torch.device) -> tuple[float, float]:
    """(seconds a training step, seconds an evaluation pass) of cfg.model here: a copy built for the timing
    alone, PROBE_SKIP steps to warm up and PROBE_STEPS timed (forward, loss, backward, optimizer) on the run's
    first images (random ones of their shape where they are read from disk); the random streams are left as
    they were."""
    saved = rng_state()
    model = build_model(cfg, len(splits.classes), splits.channels).to(device)
    precision = resolve_precision(cfg.precision, device, model.embed_dim, training=True)
    optimizer = build_optimizer(cfg, model, device, precision)
    x, y, val = sample_batches(cfg, splits, model.preprocess, d, device)
    for i in range(budgets.PROBE_SKIP + budgets.PROBE_STEPS):
        if i == budgets.PROBE_SKIP:
            t0 = time.perf_counter()
        with autocast(precision, device):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    loss.item()  # the device has finished
    step_s = (time.perf_counter() - t0) / budgets.PROBE_STEPS
    pass_s = eval_pass_s(model, val, len(splits.val), precision, device, d)
    set_rng_state(saved)
    return step_s, pass_s


def sample_batches(cfg: TrainConfig, splits: Data, pre: Preprocess, d: Dist, device: torch.device) -> tuple:
    """(x, y) of a training batch and a validation chunk, as the loop and evaluate() feed them: the first images
    of each split, normalised, or random pixels of their shape where the images are read from disk."""
    local, chunk = cfg.batch_size // d.world, max(cfg.batch_size, 256)
    if isinstance(splits.train, data.TensorData):
        normalize = data.Normalize(pre.mean, pre.std, channels=pre.input_size[0], size=tuple(pre.input_size[1:]),
                                       device=device)
        return (normalize(splits.train.images[:local].to(device)), splits.train.labels[:local].to(device),
                normalize(splits.val.images[:min(chunk, len(splits.val))].to(device)))
    x = torch.randn(local, *pre.input_size, device=device)
    return x, torch.randint(len(splits.classes), (local,), device=device), x[:min(local, len(splits.val))]
