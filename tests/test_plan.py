"""vit/plan.py: which rung of a recipe's ladder a budget trains, for simulated step costs on a slow laptop, this
CPU and a GPU, and the longest schedule as the budget's ceiling."""

import math

import pytest

from vit import budget as budgets
from vit.plan import choose_rung, epochs_that_fit, rung_config, step_cost
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
