"""Time-budgeted training: how many optimizer steps fit in a wall-clock budget on this machine.

A run with `--budget 15m` trains for a few steps, measures what a step and an evaluation cost here, and fixes
the total number of steps so that the run (set-up, training, every evaluation) ends inside the budget with
its learning-rate schedule run to its end. The plan is saved in last.ckpt: `--resume` continues it. At each
epoch boundary the run compares where it is with the plan; if the machine has slowed down (or sped up) so
that the run would end past the budget or more than BAND of it before its aim, by more than SLACK of the time
still to run, it re-plans the remaining steps from the last epoch's measured cost, says so, and records it in
the plan. Inside an epoch it checks a few times (`check_due`) whether the epoch's steps so far (since its start,
or since the last cut) cost enough more to end the run past its budget, and if so re-plans at once: a machine
that slows down in a run's last epoch would otherwise overrun it. Wall time counts from the process's launch.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .errors import ConfigError

PROBE_STEPS = 12  # steps timed before planning (after PROBE_SKIP warm-up steps, whose cost is start-up's)
PROBE_SKIP = 2
RESERVE = 0.02  # share of the budget kept back for what was not measured (saving files, plotting, exit)...
RESERVE_MIN_S = 0.5  # ... at least this many seconds...
RESERVE_MAX_S = 30.0  # ... and at most this many: a CIFAR-10 hour's end (files, figures, exit) took 4 s
# A run projected to end more than this share of its budget before the plan's aim (the budget less the reserve)
# re-plans to use the rest. A 10% band ended a Fashion-MNIST run at 14.1 of its 15 minutes; the band can be
# narrow because a run projected past the budget is cut back inside the epoch (check_due).
BAND = 0.01
# A projection is as uncertain as the steps it covers: the host's step cost wanders by 5-10% for minutes at a time
# (benchmarks/LOG.md), and a band of fixed seconds cut and re-extended an hour's plan 18-31 times. So the run
# re-plans only when it is projected past either edge by more than this share of the time still to run: early
# on it waits for a lasting change, near the end the edges are almost exact (the last check in a run's final
# epoch, a few minutes from its end, tolerates seconds: the reserve covers them).
SLACK = 0.03

CHECKS = 8  # mid-epoch over-budget checks an epoch (or a plan, if shorter), on >= PROBE_STEPS timed steps

_IMPORTED_AT = time.monotonic()

# The cost of steps [start, stop) of a plan `total` steps long, in steps of the cost `step_s` is measured in:
# stop - start where every step costs the same; more where steps grow dearer along the plan (fewer tokens
# dropped as it goes).
Work = Callable[[int, int, int], float]


def equal_steps(start: int, stop: int, total: int) -> float:
    return float(stop - start)


def parse_budget(text: str, flag: str = "--budget") -> float:
    """'90s', '15m', '1h', '1h30m', '2.5h' or a plain number of seconds -> seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?[hms]?\s*)+)", text or "")
    if not parts:
        raise ConfigError(f"{flag} {text!r} is not a duration: write it as 90s, 15m, 1h or 1h30m")
    total = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms]?)", parts[1]))
    if not 1.0 <= total <= 30 * 24 * 3600:
        raise ConfigError(f"{flag} {text!r}: a budget must be between 1 second and 30 days")
    return total


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def seconds_since_process_start() -> float:
    """Wall seconds since this process started (Linux: from /proc), else since vit.budget was imported."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED_AT


class Clock:
    """Wall time of a run: from the process's launch (a command: interpreter and imports count), or from now
    (train.main called from Python, whose process may have started long before)."""

    def __init__(self, from_process_start: bool = False):
        self.start = time.monotonic() - (seconds_since_process_start() if from_process_start else 0.0)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def evaluates_after(epoch: int, total: int, steps_per_epoch: int, every: int = 1) -> bool:
    """Whether a run of `total` steps evaluates at the end of its `epoch`-th epoch (1-based): after its last
    epoch, and after every `every`-th one that a whole epoch still follows (one closer to the run's end than that
    would cost an evaluation's time to measure a few steps' change: the final evaluation follows it)."""
    return epoch >= -(-total // steps_per_epoch) or (epoch % every == 0 and (epoch + 1) * steps_per_epoch <= total)


def evaluations_between(done: int, total: int, steps_per_epoch: int, every: int = 1) -> int:
    """Evaluations still to run when `done` of `total` steps are taken (those `evaluates_after` says)."""
    past = done // steps_per_epoch  # epochs already ended
    upper = total // steps_per_epoch - 1  # the last every-th epoch evaluated is at most this one
    periodic = upper // every - min(past, upper) // every  # every-th epochs ended in (past, upper]
    return periodic + (done < total)


def check_due(batch: int, timed: int, steps_per_epoch: int, total_steps: int) -> bool:
    """Whether to check, after batch `batch` of an epoch, that the run still ends inside its budget: at CHECKS
    evenly spaced batches of an epoch or of the whole plan if it is shorter (the same batches on every rank),
    with at least PROBE_STEPS steps `timed` (since the epoch's start, or the plan or the last cut)."""
    every = max(PROBE_STEPS, min(steps_per_epoch, total_steps) // CHECKS)
    return timed >= PROBE_STEPS and batch % every == 0 and 0 < batch < steps_per_epoch


def steps_that_fit(remaining_s: float, done: int, step_s: float, eval_s: float, steps_per_epoch: int,
                   every: int = 1, work: Work = equal_steps) -> int:
    """The largest total step count whose remaining steps and evaluations take at most `remaining_s` (at
    least one more step: a run that has started ends with a step and an evaluation). `work` must not fall as
    the plan grows (a longer plan's remaining steps cost at least as much in all)."""
    if step_s <= 0:
        raise ValueError("step_s must be positive")

    def cost(total):
        return work(done, total, total) * step_s + evaluations_between(done, total, steps_per_epoch, every) * eval_s

    lo, hi = done + 1, done + 2
    while cost(hi) <= remaining_s:  # cost is non-decreasing in total
        lo, hi = hi, done + 2 * (hi - done)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= remaining_s else (lo, mid - 1)
    return lo


@dataclass
class Budget:
    """A budgeted run's plan: its measured costs, the step count they fix, and every re-plan; saved in last.ckpt."""

    budget_s: float
    total_steps: int = 0  # 0 until planned
    step_s: float = 0.0  # measured seconds per optimizer step
    eval_s: float = 0.0  # measured seconds per evaluation (model and EMA)
    spent_s: float = 0.0  # budget used by earlier processes of this run (resumed runs)
    replans: list = field(default_factory=list)  # {"step", "total_steps", "step_s", "reason"}
    decided: dict = field(default_factory=dict)  # settings fixed by the first plan's length (e.g. crop_pad)
    max_steps: int = 0  # the model's longest schedule: no plan goes past it (0 = the budget alone)
    ramp_steps: int = 0  # the shortest plan so far, over which --res-start's sizes grow (vit/plan.py Plan.ramp)

    @classmethod
    def from_dict(cls, d: dict) -> "Budget":
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def reserve_s(self) -> float:
        return min(max(RESERVE * self.budget_s, RESERVE_MIN_S), RESERVE_MAX_S)

    def early_s(self) -> float:
        """A run projected to end before this many seconds re-plans at an epoch boundary to use the rest."""
        return self.budget_s - self.reserve_s() - BAND * self.budget_s

    def plan(self, used_s: float, done: int, step_s: float, eval_s: float, steps_per_epoch: int,
             every: int = 1, work: Work = equal_steps) -> int:
        """Fix total_steps from measured costs (`step_s` a step of unit `work`), with `reserve_s` of the budget
        kept back; the run evaluates after every `every`-th epoch and its last."""
        self.step_s, self.eval_s = step_s, eval_s
        left = self.budget_s - self.reserve_s() - used_s
        self.total_steps = steps_that_fit(left, done, step_s, eval_s, steps_per_epoch, every, work)
        if self.max_steps:
            self.total_steps = max(min(self.total_steps, self.max_steps), done + 1)
        return self.total_steps

    def projected_s(self, used_s: float, done: int, step_s: float, eval_s: float, steps_per_epoch: int,
                    every: int = 1, work: Work = equal_steps) -> float:
        """Seconds of the budget used when the plan's steps and evaluations have run, at these costs."""
        return used_s + work(done, self.total_steps, self.total_steps) * step_s + \
            evaluations_between(done, self.total_steps, steps_per_epoch, every) * eval_s

    def replan(self, used_s: float, done: int, step_s: float, eval_s: float, steps_per_epoch: int,
               every: int = 1, late_only: bool = False, work: Work = equal_steps) -> str | None:
        """At an epoch boundary: re-plan if the run would end past its budget or well before it; mid-epoch
        (`late_only`): only if past it.

        Returns a line saying what changed, or None if the plan holds."""
        projected = self.projected_s(used_s, done, step_s, eval_s, steps_per_epoch, every, work)
        slack = SLACK * max(projected - used_s, 0.0)
        early = self.early_s() - slack if not late_only else 0.0
        if early <= projected <= self.budget_s + slack or done >= self.total_steps:
            return None
        old = self.total_steps
        new = self.plan(used_s, done, step_s, eval_s, steps_per_epoch, every, work)
        if new == old:
            return None
        reason = "slower" if projected > self.budget_s else "faster"
        self.replans.append(dict(step=done, total_steps=new, step_s=step_s, reason=reason))
        return (f"budget: steps cost {step_s * 1e3:.0f} ms now ({reason} than planned): the run would end at "
                f"{duration(projected)} of {duration(self.budget_s)}; re-planned from {old} to {new} steps")
