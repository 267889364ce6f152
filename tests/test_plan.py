"""vit/plan.py: which rung of a recipe's ladder a budget trains, for simulated step costs on a slow laptop, this
CPU and a GPU, and the longest schedule as the budget's ceiling; progressive resolution's size schedule and the
cost a budget plans for it, on a simulated clock."""

import math
import re

import pytest

from vit import budget as budgets
from vit.distributed import Dist
from vit.errors import ConfigError
from vit.plan import (FIXED_TOKEN_SHARE, UNPLANNED_STEPS, Plan, Resolution, choose_rung, epochs_that_fit, plan_for,
                      resolution_for, rung_config, step_cost, step_work, warmup_steps)
from vit.recipes import RECIPES, TrainConfig

CIFAR = RECIPES["cifar10"]
SPE = 45000 // 128  # CIFAR-10's training steps an epoch with --val-size 5000
# slim's CIFAR-10 step on the Zen 3 CPU (fp32, half the tokens dropped): ~0.55 s; an evaluation pass ~10 s
THIS_CPU_STEP_S, THIS_CPU_PASS_S = 0.55, 10.0
SPEEDS = {"laptop": 3.0, "this CPU": 1.0, "GPU": 0.01}  # a step's cost against this CPU's


def fake_timing(speed: float, timed: list):
    """time_model for a machine `speed` times this CPU's step cost, proportional to a model's FLOPs and tokens."""
    base = step_cost(rung_config(CIFAR.config(), CIFAR.ladder[0]))

    def time_model(cfg: TrainConfig):
        timed.append(cfg.model)
        scale = step_cost(cfg) / base * speed
        return THIS_CPU_STEP_S * scale, THIS_CPU_PASS_S * scale
    return time_model


def choose(budget: str, speed: float, timed: list | None = None):
    cfg = TrainConfig.from_dict({**CIFAR.overrides, "budget": budget})
    return choose_rung(cfg, CIFAR.ladder, fake_timing(speed, [] if timed is None else timed), SPE,
                       used_s=lambda: 0.0, say=lambda *a: None)


@pytest.mark.parametrize("budget", ["15m", "1h", "4h", "12h"])
@pytest.mark.parametrize("machine", list(SPEEDS))
def test_the_largest_rung_whose_minimum_epochs_fit_is_chosen(budget, machine):
    """Against a reference that computes every rung's epochs from the same costs: the choice is the largest rung
    whose minimum fits; the smallest is timed first, and no rung below the chosen one is timed besides."""
    timed = []
    rung = choose(budget, SPEEDS[machine], timed)
    fits = []
    for r in CIFAR.ladder:
        c = rung_config(CIFAR.config(budget=budget), r)
        step_s, pass_s = fake_timing(SPEEDS[machine], [])(c)
        fits.append(epochs_that_fit(budgets.parse_budget(budget), 0.0, step_s,
                                    pass_s * (2 if c.eval_hflip else 1) * (3 if c.eval_shift else 1), SPE,
                                    c.eval_every) >= r.min_epochs)
    expected = max(i for i, ok in enumerate(fits) if ok or i == 0)
    assert rung == CIFAR.ladder[expected], (machine, budget, fits)
    order = [r.model for r in CIFAR.ladder]
    assert timed[0] == order[0] and all(order.index(m) >= expected for m in timed[1:]), timed


def test_faster_machines_and_longer_budgets_buy_larger_models():
    order = [r.model for r in CIFAR.ladder]
    for machine in SPEEDS:
        picks = [order.index(choose(b, SPEEDS[machine]).model) for b in ("15m", "1h", "4h", "12h")]
        assert picks == sorted(picks), (machine, picks)
    for budget in ("15m", "1h", "4h", "12h"):
        picks = [order.index(choose(budget, SPEEDS[m]).model) for m in ("laptop", "this CPU", "GPU")]
        assert picks == sorted(picks), (budget, picks)
    assert choose("15m", SPEEDS["laptop"]).model == "vit_slim_patch4_32"
    assert choose("12h", SPEEDS["GPU"]).model == "vit_small_patch4_32"


def test_the_longest_schedule_caps_the_plan():
    """On a GPU an hour holds far more than the chosen rung's longest schedule: the plan is those epochs, and the
    run ends early."""
    rung = choose("1h", SPEEDS["GPU"])
    cfg = rung_config(CIFAR.config(), rung)
    step_s, pass_s = fake_timing(SPEEDS["GPU"], [])(cfg)
    budget = budgets.Budget(3600.0, max_steps=math.ceil(rung.max_epochs * SPE))
    total = budget.plan(30.0, 14, step_s, pass_s * 6, SPE, cfg.eval_every)
    assert total == budget.max_steps == rung.max_epochs * SPE
    assert budget.replan(60.0, SPE, step_s, pass_s * 6, SPE, cfg.eval_every) is None  # early, yet nothing to add
    uncapped = budgets.Budget(3600.0).plan(30.0, 14, step_s, pass_s * 6, SPE, cfg.eval_every)
    assert uncapped > total


def test_a_rung_timed_slower_than_its_estimate_is_passed_over():
    """The FLOP estimate lets a rung through, its own timing does not: the next smaller rung is taken."""
    cfg = TrainConfig.from_dict({**CIFAR.overrides, "budget": "4h"})
    base = fake_timing(1.0, [])

    def slow_mini(c):
        s, p = base(c)
        return (s * 20, p * 20) if c.model == "vit_mini_patch4_32" else (s, p)
    said = []
    rung = choose_rung(cfg, CIFAR.ladder, slow_mini, SPE, used_s=lambda: 0.0, say=said.append)
    assert rung.model == "vit_micro_patch4_32"
    assert "epochs of vit_mini_patch4_32 fit in 240.0 min, under its 25: a smaller model instead" in said[0]


def test_every_recipe_ladder_takes_one_kind_of_image_and_its_ranges_are_in_order():
    from vit.plan import check_ladder

    for recipe in RECIPES.values():
        if recipe.ladder:
            check_ladder(recipe.ladder, recipe.name)
            assert [r.min_epochs for r in recipe.ladder] == sorted(r.min_epochs for r in recipe.ladder)
    assert RECIPES["digits"].ladder[0].max_epochs == RECIPES["digits"].overrides["epochs"]


# --------------------------------------------------------------------------------------------------------
# Progressive resolution (--res-start): the size schedule, and the cost a budget plans for


@pytest.mark.parametrize("start, full, patch, frac", [(4, 8, 2, 0.75), (8, 32, 4, 0.5), (112, 224, 16, 0.75),
                                                      (16, 32, 4, 1.0), (28, 32, 4, 0.1)])
@pytest.mark.parametrize("total", [1, 2, 7, 44, 1000])
def test_the_image_size_grows_in_whole_patches_to_the_full_size(start, full, patch, frac, total):
    """The line from `start` to `full` rounded down to whole patches: non-decreasing, `start` at the first step,
    the full size for the last (1 - frac) of the steps at least; `steps` finds where each size begins."""
    res = Resolution(start, full, patch, frac)
    sizes = [res.at(s, total) for s in range(total)]
    assert sizes == sorted(sizes)
    assert all(s % patch == 0 and start <= s <= full for s in sizes)
    assert sizes[0] == (start if total > 1 else full) and sizes[-1] == full
    assert sizes.count(full) >= math.floor((1 - frac) * total)
    ramp = frac * (total - 1)
    for s, size in enumerate(sizes):
        if s < ramp:
            assert size <= start + (full - start) * s / ramp < size + patch, (s, size)
    assert res.steps(total) == [(sizes.index(size), size) for size in sorted(set(sizes))]


def test_a_plan_not_yet_made_trains_at_the_start_size_and_one_without_res_start_at_the_full_size():
    res = Resolution(4, 8, 2, 0.75)
    assert Plan(22, UNPLANNED_STEPS, resolution=res).img_size_at(10**6) == 4
    assert Plan(22, 44, resolution=res).img_size_at(43) == 8
    assert Plan(22, 44).img_size_at(0) is None
    assert resolution_for(TrainConfig()) is None
    assert resolution_for(TrainConfig(res_start=4, res_end_frac=0.5)) == Resolution(4, 8, 2, 0.5)
    assert resolution_for(TrainConfig(res_start=8, img_size=16)) == Resolution(8, 16, 2, 0.75)


@pytest.mark.parametrize("fields, says", [
    (dict(res_start=3), "--res-start 3 must be a multiple of vit_nano_patch2_8's patch (2 px)"),
    (dict(res_start=8), "and smaller than the full size (8 px)"),
    (dict(res_start=16, img_size=12), "smaller than the full size (12 px)"),
])
def test_a_start_size_the_model_cannot_take_is_refused(fields, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        resolution_for(TrainConfig(**fields))


DIGITS_TRAIN = 1438  # digits' training images: 22 steps of 64 an epoch
P, N = 1, 16  # vit_nano_patch2_8's [CLS] and patches at 8 px


def tokens(size: int, rate: float = 0.0) -> float:
    """The planner's cost model of a step: its tokens, and the fixed share (vit/plan.py FIXED_TOKEN_SHARE)."""
    return P + N * (size / 8) ** 2 * (1 - rate) + FIXED_TOKEN_SHARE * (N + P)


def digits_config(**fields) -> TrainConfig:
    return TrainConfig(**{"batch_size": 64, "warmup_epochs": 0.5, **fields})


@pytest.mark.parametrize("fields", [dict(res_start=4), dict(res_start=2, res_end_frac=0.4),
                                    dict(res_start=4, patch_drop=0.5, patch_drop_end=0.25)])
def test_the_work_of_a_stretch_of_steps_is_their_tokens_one_by_one(fields):
    """step_work's sum by pieces against each step's tokens (at the plan's size and drop rate), in full-size
    steps at the mean drop rate; the steps before the full size cost less than a full-size step each."""
    cfg = digits_config(**fields)
    plan = plan_for(cfg, Dist(), DIGITS_TRAIN)
    work = step_work(cfg, plan, P, N)
    end = cfg.patch_drop if cfg.patch_drop_end < 0 else cfg.patch_drop_end
    unit = tokens(8, (cfg.patch_drop + end) / 2)
    for total in (3, 44, 301):
        at = Plan(22, total, warmup_steps(cfg, 22, total), patch_drop=plan.patch_drop, resolution=plan.resolution)
        each = [tokens(at.img_size_at(s), at.patch_drop_at(s)) / unit for s in range(total)]
        for start, stop in [(0, total), (0, 1), (total // 3, total), (total // 2, total - 1), (5, 5)]:
            if start <= stop <= total:
                assert work(start, stop, total) == pytest.approx(sum(each[start:stop]), rel=1e-9), (total, start, stop)
        if cfg.patch_drop_end < 0:
            assert work(0, total, total) < total
            first_full = plan.resolution.steps(total)[-1][0]
            assert work(first_full, total, total) == pytest.approx(total - first_full)


class FakeClock:
    """The budget's clock, moved by the simulated steps and evaluations."""

    def __init__(self):
        self.t = 0.0

    def elapsed(self) -> float:
        return self.t


def simulate(cfg: TrainConfig, full_step_s: float, eval_s: float, slower_from: int = 10**9,
             factor: float = 1.5) -> tuple:
    """A budgeted run as the training loop drives its planner, on a machine whose step costs `full_step_s` at the
    full size and in proportion to its tokens at a smaller one (the planner's own cost model), 1.5x from step
    `slower_from` (`factor` times; under 1: faster). Returns (planner, seconds used, steps taken, the sizes trained at,
    the lines it said)."""
    plan = plan_for(cfg, Dist(), DIGITS_TRAIN)
    clock, said, sizes = FakeClock(), [], []
    plan.clock, plan.say, plan.eval_pass_s = clock, said.append, lambda: eval_s
    plan.work = step_work(cfg, plan, P, N)
    plan.start(0)
    step = epoch = 0
    while epoch < plan.epochs:
        batch, epoch_s = 0, 0.0
        while batch < plan.epoch_end(epoch):
            size = plan.img_size_at(step) or 8
            sizes.append(size)
            step_s = full_step_s * tokens(size) / tokens(8) * (factor if step >= slower_from else 1.0)
            clock.t += step_s
            epoch_s += step_s
            step, batch = step + 1, batch + 1
            plan.after_step(step, batch, step_s)
        evaluating = plan.evaluates_after(epoch)
        clock.t += eval_s if evaluating else 0.0
        epoch += 1
        plan.after_epoch(step, batch, epoch_s, eval_s if evaluating else None)
    return plan, clock.t, step, sizes, said


def test_a_budget_plans_more_steps_of_growing_images_and_ends_inside_it():
    """The first steps are timed at 4 px: the planner converts them to a full-size step's cost (what the run
    measures at 8 px), plans more steps than a run at the full size throughout, trains each at its plan's size,
    and ends inside its budget without a re-plan."""
    full, progressive = (simulate(digits_config(budget="60s", **fields), 0.05, 0.2)
                         for fields in ({}, dict(res_start=4)))
    plan, used, steps, sizes, said = progressive
    assert plan.budget.step_s == pytest.approx(0.05, rel=1e-9)
    first6, first8 = sizes.index(6) + 1, sizes.index(8) + 1
    assert said[0].startswith("budget: 50 ms a step") and said[0].endswith(
        f"; images 4 px from step 1, 6 px from step {first6}, 8 px from step {first8}"), said
    assert sizes[:budgets.PROBE_SKIP + budgets.PROBE_STEPS] == [4] * (budgets.PROBE_SKIP + budgets.PROBE_STEPS)
    assert sizes[-1] == 8 and sizes == sorted(sizes) and set(sizes) == {4, 6, 8}
    assert steps == plan.total_steps > full[2] * 1.3 and not plan.budget.replans
    for used_s in (used, full[1]):
        assert 0.95 * 60 <= used_s <= 60


def test_a_progressive_run_that_slows_down_replans_and_still_ends_inside_its_budget():
    """Every step 1.5x dearer from step 300: the planner cuts the plan back, the sizes follow the new length, and
    the run still ends inside its budget."""
    plan, used, steps, sizes, _ = simulate(digits_config(budget="60s", res_start=4), 0.05, 0.2, slower_from=300)
    assert plan.budget.replans and plan.budget.replans[0]["reason"] == "slower"
    assert steps == plan.total_steps and used <= 60 * 1.01
    assert sizes[-1] == 8 and sizes[plan.budget.replans[-1]["step"]:] == [
        plan.img_size_at(s) for s in range(plan.budget.replans[-1]["step"], steps)]


def test_a_progressive_run_that_speeds_up_lengthens_its_plan_without_stepping_the_size_back():
    """Every step at 0.6x from just after the switch to 4 px: re-plans lengthen the run, and the sizes keep the
    first plan's ramp, so they never go back down (laid over each new length, 4 px would turn back to 2); every
    step trains at the size its plan says, and the run ends inside its budget."""
    cfg = digits_config(budget="60s", res_start=2)
    first, *_, base_sizes, _ = simulate(cfg, 0.05, 0.2)
    plan, used, steps, sizes, _ = simulate(cfg, 0.05, 0.2, slower_from=base_sizes.index(4) + 1, factor=0.6)
    assert plan.budget.replans[0]["reason"] == "faster" and plan.total_steps > first.total_steps
    assert plan.ramp_steps == plan.budget.ramp_steps == first.total_steps
    assert sizes == sorted(sizes) and set(sizes) == {2, 4, 6, 8}
    assert sizes == [plan.img_size_at(s) for s in range(steps)]
    assert steps == plan.total_steps and 0.9 * 60 <= used <= 60


@pytest.mark.parametrize("fields", [{}, dict(res_start=4), dict(res_start=2, res_end_frac=0.4),
                                    dict(patch_drop=0.5, patch_drop_end=0.0), dict(res_start=4, patch_drop=0.25)])
def test_a_rungs_mean_step_counts_its_growing_images_and_changing_drop_rate(fields):
    """mean_step_share against the steps' tokens one by one over a plan, each against the full-size step at
    --patch-drop that a rung is timed at: 1 for a run whose steps are all alike, below it where images grow, above
    it where fewer tokens are dropped along the plan."""
    from vit.plan import mean_step_share

    cfg = digits_config(**fields)
    for epochs in (1, 3.5, 30):
        total = round(epochs * 22)
        at = Plan(22, total, warmup_steps(cfg, 22, total), patch_drop=(cfg.patch_drop, cfg.patch_drop_end),
                  resolution=resolution_for(cfg))
        each = [tokens(at.img_size_at(s) or 8, at.patch_drop_at(s)) for s in range(total)]
        share = mean_step_share(cfg, 22, epochs)
        assert share == pytest.approx(sum(each) / total / tokens(8, cfg.patch_drop), rel=1e-9)
        if not fields:
            assert share == 1.0
        elif "patch_drop_end" in fields:  # fewer tokens dropped along the plan: dearer than the timed step
            assert share > 1.0
        else:
            assert share < 1.0


def test_growing_images_let_a_budget_reach_a_larger_rung():
    """A machine where an hour holds under mini's 25 epochs at the full size throughout, and over them where the
    images grow from 16 px over the first half (the steps' tokens summed one by one): mini is chosen then."""
    speed, mini = 0.24, CIFAR.ladder[2]
    cfg = TrainConfig.from_dict({**CIFAR.overrides, "budget": "1h", "res_start": 16, "res_end_frac": 0.5})
    c = rung_config(cfg, mini)
    step_s, pass_s = fake_timing(speed, [])(c)
    total = mini.min_epochs * SPE
    at = Plan(SPE, total, warmup_steps(c, SPE, total), patch_drop=(c.patch_drop, -1.0), resolution=resolution_for(c))
    cost = [1 + 64 * (at.img_size_at(s) / 32) ** 2 * (1 - c.patch_drop) + FIXED_TOKEN_SHARE * 65 for s in range(total)]
    share = sum(cost) / total / cost[-1]

    def fit(step: float) -> float:
        return epochs_that_fit(3600.0, 0.0, step, pass_s * 6, SPE, c.eval_every)
    assert fit(step_s) < mini.min_epochs <= fit(step_s * share)
    assert choose("1h", speed).model == "vit_micro_patch4_32"
    assert choose_rung(cfg, CIFAR.ladder, fake_timing(speed, []), SPE, used_s=lambda: 0.0,
                       say=lambda *a: None) == mini


@pytest.mark.parametrize("factor", [0.6, 1.6])
def test_a_plan_shorter_than_its_warm_up_ends_the_warm_up_a_step_before_its_end_through_every_replan(factor):
    """--warmup-epochs longer than the plan: wherever the machine's speed changes, the re-planned run still ends
    its warm-up a step before its end, as a run of that many --steps does. The first plan here is 45 steps, so a
    faster machine re-plans at the second epoch's end, step 44: exactly where the warm-up's peak step is due."""
    cfg = digits_config(budget="3s", warmup_epochs=100)
    first = simulate(cfg, 0.05, 0.2)[0]
    assert (first.total_steps, first.warmup) == (45, 44)
    at_peak = 0
    for slower_from in range(budgets.PROBE_SKIP + budgets.PROBE_STEPS + 1, first.total_steps):
        plan, *_ = simulate(cfg, 0.05, 0.2, slower_from=slower_from, factor=factor)
        assert plan.warmup == plan.total_steps - 1, (slower_from, plan.budget.replans)
        at_peak += any(r["step"] == first.warmup for r in plan.budget.replans)
    assert factor > 1 or at_peak  # a faster machine re-planned at the peak step at least once
