"""vit.budget: durations, the step plan and its re-planning, on costs given by hand."""

import pytest

from vit import budget
from vit.errors import ConfigError


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400),
                                           ("2.5h", 9000), ("45", 45), ("1m 30s", 90)])
def test_parse_budget(text, seconds):
    assert budget.parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "15x", "-5m", "0s", "99999h", "m"])
def test_parse_budget_refuses(text):
    with pytest.raises(ConfigError, match="--budget"):
        budget.parse_budget(text)


def test_evaluations_between_counts_epoch_ends_and_a_final_partial_epoch():
    assert budget.evaluations_between(0, 30, 10) == 3
    assert budget.evaluations_between(0, 35, 10) == 3  # epochs 1, 2 and the last: epoch 3 ends 5 steps before it
    assert budget.evaluations_between(12, 35, 10) == 2
    assert budget.evaluations_between(20, 20, 10) == 0
    assert budget.evaluations_between(0, 5, 10) == 1


@pytest.mark.parametrize("every", [1, 2, 3, 5])
def test_evaluations_between_with_an_evaluation_every_few_epochs(every):
    """Against the count made epoch by epoch: after each every-th epoch that a whole epoch still follows, and
    after the last; those not yet passed. evaluates_after, which the training loop asks, says the same."""
    for spe in (1, 3, 10):
        for total in range(1, 45):
            last = -(-total // spe)
            evaluated = [epoch for epoch in range(1, last + 1)
                         if epoch == last or (epoch % every == 0 and total - epoch * spe >= spe)]
            assert [e for e in range(1, last + 1) if budget.evaluates_after(e, total, spe, every)] == evaluated
            for done in range(total + 1):
                expected = sum(1 for epoch in evaluated if min(epoch * spe, total) > done)
                assert budget.evaluations_between(done, total, spe, every) == expected, (done, total, spe)


def cost(done, total, step_s, eval_s, spe, every=1):
    return (total - done) * step_s + budget.evaluations_between(done, total, spe, every) * eval_s


@pytest.mark.parametrize("remaining, done, step_s, eval_s, spe", [
    (100.0, 0, 0.1, 2.0, 50), (100.0, 7, 0.13, 0.0, 9), (3600.0, 120, 0.9, 25.0, 351), (5.0, 0, 1.0, 3.0, 10)])
def test_steps_that_fit_is_the_largest_count_that_fits(remaining, done, step_s, eval_s, spe):
    total = budget.steps_that_fit(remaining, done, step_s, eval_s, spe)
    assert cost(done, total, step_s, eval_s, spe) <= remaining or total == done + 1
    assert cost(done, total + 1, step_s, eval_s, spe) > remaining


def test_rarer_evaluations_leave_more_steps():
    every_epoch = budget.steps_that_fit(3600.0, 0, 0.8, 26.0, 351)
    every_fourth = budget.steps_that_fit(3600.0, 0, 0.8, 26.0, 351, every=4)
    assert cost(0, every_fourth, 0.8, 26.0, 351, every=4) <= 3600.0 < cost(0, every_fourth + 1, 0.8, 26.0, 351, 4)
    assert every_fourth - every_epoch > 8 * 26.0 / 0.8 * 0.9  # about the eight evaluations' worth of steps


def test_plan_keeps_a_reserve_and_replans_only_outside_the_band():
    plan = budget.Budget(budget_s=1000.0)
    total = plan.plan(used_s=20.0, done=10, step_s=1.0, eval_s=10.0, steps_per_epoch=100)
    assert cost(10, total, 1.0, 10.0, 100) <= 1000.0 - plan.reserve_s() - 20.0
    # On plan: nothing changes.
    assert plan.replan(used_s=20.0 + 90 + 10, done=100, step_s=1.0, eval_s=10.0, steps_per_epoch=100) is None
    # The machine slows down to 1.5 s a step: fewer steps, recorded, and the run ends inside the budget.
    line = plan.replan(used_s=120.0, done=100, step_s=1.5, eval_s=10.0, steps_per_epoch=100)
    assert "re-planned" in line and plan.total_steps < total and plan.replans[-1]["reason"] == "slower"
    assert 120.0 + cost(100, plan.total_steps, 1.5, 10.0, 100) <= 1000.0
    # It speeds up a lot: more steps again.
    before = plan.total_steps
    assert "faster" in plan.replan(used_s=220.0, done=200, step_s=0.5, eval_s=5.0, steps_per_epoch=100)
    assert plan.total_steps > before
    assert budget.Budget.from_dict(plan.to_dict()) == plan


def test_a_run_projected_to_leave_a_twentieth_of_its_budget_unused_replans():
    plan = budget.Budget(budget_s=900.0)
    total = plan.plan(used_s=10.0, done=14, step_s=0.6, eval_s=5.0, steps_per_epoch=234)
    # After epoch 1 the steps cost 7% less than planned: the run would end near 93% of its budget.
    used = 10.0 + (234 - 14) * 0.56 + 5.0
    projected = used + (total - 234) * 0.56 + budget.evaluations_between(234, total, 234) * 5.0
    assert projected < plan.early_s()
    assert "faster" in plan.replan(used_s=used, done=234, step_s=0.56, eval_s=5.0, steps_per_epoch=234)
    assert plan.total_steps > total


def test_the_reserve_is_a_share_of_the_budget_within_bounds_and_the_band_is_measured_from_the_aim():
    """An hour keeps 30 s back, not 2% (72 s), and re-plans a run projected to end over 36 s before its aim,
    and 3% of the time still to run (the slack); 15 minutes keeps 18 s back and re-plans below 97% of its budget
    (less the slack); a 10-s budget keeps half a second."""
    hour, quarter, short = budget.Budget(3600.0), budget.Budget(900.0), budget.Budget(10.0)
    assert (hour.reserve_s(), quarter.reserve_s(), short.reserve_s()) == (30.0, 18.0, 0.5)
    assert hour.early_s() == 3600.0 - 30.0 - 36.0 and quarter.early_s() == pytest.approx(0.97 * 900.0)
    total = hour.plan(used_s=60.0, done=14, step_s=0.5, eval_s=10.0, steps_per_epoch=351, every=4)
    assert 3600.0 - 30.0 - 0.5 < 60.0 + cost(14, total, 0.5, 10.0, 351, every=4) <= 3600.0 - 30.0
    # 3% faster steps move the end by ~105 s: inside the band and the slack (36 + 105 s), the plan holds; 5%
    # faster (~175 s) re-plans.
    for faster, holds in ((0.99, True), (0.97, True), (0.95, False)):
        plan = budget.Budget.from_dict(hour.to_dict())
        assert (plan.replan(used_s=60.0, done=14, step_s=0.5 * faster, eval_s=10.0, steps_per_epoch=351,
                            every=4) is None) == holds


def test_mid_epoch_checks_replan_only_a_run_that_would_end_late():
    plan = budget.Budget(budget_s=900.0)
    total = plan.plan(used_s=10.0, done=14, step_s=0.6, eval_s=5.0, steps_per_epoch=234)
    # A run ahead of its plan is left alone inside an epoch (its epoch's end may extend it)...
    assert plan.replan(used_s=60.0, done=114, step_s=0.3, eval_s=5.0, steps_per_epoch=234, late_only=True) is None
    assert plan.total_steps == total and not plan.replans
    # ... one that would end late is cut back at once, to end inside its budget.
    assert "slower" in plan.replan(used_s=90.0, done=114, step_s=0.9, eval_s=5.0, steps_per_epoch=234,
                                   late_only=True)
    assert 90.0 + cost(114, plan.total_steps, 0.9, 5.0, 234) <= 900.0 and plan.replans[-1]["step"] == 114


@pytest.mark.parametrize("spe, total", [(5, 100), (12, 100), (50, 1000), (234, 1400), (500, 201), (500, 20)])
def test_mid_epoch_checks_are_evenly_spaced_over_an_epoch_or_a_shorter_plan(spe, total):
    span = min(spe, total)  # a run checks only before its plan's last step
    due = [b for b in range(span + 1) if budget.check_due(b, budget.PROBE_STEPS, spe, total)]
    assert all(0 < b < spe for b in due) and len(due) <= budget.CHECKS
    if span >= 2 * budget.CHECKS * budget.PROBE_STEPS:
        assert len(set(b2 - b1 for b1, b2 in zip(due, due[1:]))) == 1 and due[0] <= span // budget.CHECKS
    assert not any(budget.check_due(b, budget.PROBE_STEPS - 1, spe, total) for b in due)  # too few steps timed


def test_clock_counts_from_the_process_start_or_from_now():
    since_start = budget.seconds_since_process_start()
    assert 0.0 < since_start < 24 * 3600
    assert budget.Clock(from_process_start=True).elapsed() >= since_start - 0.5
    assert budget.Clock().elapsed() < 0.5


def test_crops_flips_and_moved_test_views_follow_the_planned_length():
    from vit.recipes import TrainConfig
    from vit.plan import Plan, augment_for

    def settings(cfg, total):
        return augment_for(cfg, Plan(steps_per_epoch=10, total_steps=total))

    rule = TrainConfig(crop_pad=2, hflip=0.5, eval_shift=1, augment_min_epochs=3, hflip_min_epochs=3)
    assert settings(rule, 30) == {"crop_pad": 2, "hflip": 0.5, "eval_shift": 1}
    assert settings(rule, 29) == {"crop_pad": 0, "hflip": 0.0, "eval_shift": 0}  # no crops, so no moved views
    flips_first = TrainConfig(crop_pad=2, hflip=0.5, eval_shift=1, augment_min_epochs=3, hflip_min_epochs=1)
    assert settings(flips_first, 29) == {"crop_pad": 0, "hflip": 0.5, "eval_shift": 0}
    assert settings(flips_first, 9) == {"crop_pad": 0, "hflip": 0.0, "eval_shift": 0}
    always = TrainConfig(crop_pad=2, hflip=0.5, eval_shift=2)  # augment_min_epochs 0
    assert settings(always, 1) == {"crop_pad": 2, "hflip": 0.5, "eval_shift": 2}
    never_cropped = TrainConfig(crop_pad=0, eval_shift=1, augment_min_epochs=3)  # the flags' own choice
    assert settings(never_cropped, 29) == {"crop_pad": 0, "hflip": 0.0, "eval_shift": 1}


def test_steps_that_fit_weighs_steps_that_grow_dearer_along_the_plan():
    """With `work`, steps cost what it says, in steps of `step_s`: here the plan's last step costs three times
    its first (a token count growing along the plan), 0.2 to 0.6 of `step_s`. The plan is the largest whose
    summed costs fit, past the count that steps of `step_s` each would allow."""
    def step_cost(s, total):
        return 0.2 + 0.4 * s / max(total - 1, 1)

    def work(start, stop, total):
        return sum(step_cost(s, total) for s in range(start, stop))

    for done, remaining in [(0, 100.0), (0, 1000.0), (37, 400.0)]:
        total = budget.steps_that_fit(remaining, done, 0.5, 0.0, 10**6, work=work)
        assert work(done, total, total) * 0.5 <= remaining < work(done, total + 1, total + 1) * 0.5
    assert budget.steps_that_fit(100.0, 0, 0.5, 0.0, 10**6, work=work) == pytest.approx(100 / (0.5 * 0.4), abs=1)


def test_a_projection_past_the_budget_by_less_than_its_slack_holds_until_the_end_nears():
    """A run projected 60 s past its hour with 41 minutes to go is within 3% of them: the plan holds, at an
    epoch's end and inside one; the same 60 s with 5 minutes to go re-plans, to end inside the budget."""
    for late_only in (False, True):
        for used, holds in ((1200.0, True), (3360.0, False)):
            plan = budget.Budget(3600.0, total_steps=10_000)
            done = plan.total_steps - round((3600.0 + 60.0 - used) / 0.5)  # at 0.5 s a step: 60 s past
            line = plan.replan(used_s=used, done=done, step_s=0.5, eval_s=0.0, steps_per_epoch=100_000,
                               late_only=late_only)
            assert (line is None) == holds, (used, late_only, line)
            assert holds or used + (plan.total_steps - done) * 0.5 <= 3600.0 - plan.reserve_s()
