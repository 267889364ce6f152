"""vit/builders.py and the loader's worker count: what a run takes from its device and batch (a GPU's batch and
compiling, the learning rate's scaling rule) and how many DataLoader workers it starts."""

import math

import pytest

from vit.batches import loader_workers
from vit.builders import fit_to_device, scale_lr
from vit.distributed import Dist
from vit.recipes import RECIPES, TrainConfig


def test_a_new_cuda_run_takes_the_recipes_gpu_batch_and_compiles():
    cfg = RECIPES["cifar10"].config()
    fitted, line = fit_to_device(cfg, RECIPES["cifar10"].on_cuda, set(), "cuda")
    assert fitted.batch_size == 512 and fitted.compile
    assert "--batch-size 512" in line and "--compile" in line
    on_cpu, line = fit_to_device(cfg, RECIPES["cifar10"].on_cuda, set(), "cpu")  # a CPU keeps the recipe
    assert line is None and on_cpu.to_dict() == {**cfg.to_dict(), "workers": on_cpu.workers}


def test_flags_given_on_the_command_line_win_over_the_gpus_settings():
    cfg = RECIPES["cifar10"].config(batch_size=64, workers=2)
    fitted, line = fit_to_device(cfg, RECIPES["cifar10"].on_cuda, {"batch_size", "compile", "workers"}, "cuda")
    assert (fitted, line) == (cfg, None)  # --batch-size 64 --no-compile --workers 2
    changing = RECIPES["cifar10"].config(patch_drop_end=0.2)  # a token count that changes compiles at each
    assert not fit_to_device(changing, {}, set(), "cuda")[0].compile
    growing = RECIPES["cifar10"].config(res_start=16)  # so do growing images
    assert not fit_to_device(growing, {}, set(), "cuda")[0].compile


@pytest.mark.parametrize("opt, rule, factor", [("adamw", "", 2.0), ("muon", "", 2.0), ("sgd", "", 4.0),
                                               ("adamw", "linear", 4.0), ("sgd", "sqrt", 2.0)])
def test_the_lr_follows_the_batch_by_the_optimizers_rule(opt, rule, factor):
    cfg = TrainConfig(opt=opt, lr=1e-3, batch_size=512, lr_base_size=128, lr_base_scale=rule)
    scaled, line = scale_lr(cfg)
    assert math.isclose(scaled.lr, 1e-3 * factor)
    assert scaled.lr_base_size == 0 and scale_lr(scaled) == (scaled, None)  # a resumed run does not scale again
    assert f"at batch 512, from --lr 0.001 at --lr-base-size 128 ({rule or ('linear' if opt == 'sgd' else 'sqrt')}"\
        in line


def test_an_lr_at_its_own_batch_or_without_a_base_is_kept():
    at_base = TrainConfig(lr=1e-3, batch_size=128, lr_base_size=128)
    kept, line = scale_lr(at_base)
    assert kept.lr == 1e-3 and kept.lr_base_size == 0 and line is None
    plain = TrainConfig(lr=1e-3, batch_size=512)
    assert scale_lr(plain) == (plain, None)


@pytest.mark.parametrize("cpus, ranks, expected", [(2, 1, 1), (16, 1, 8), (16, 2, 7), (1, 1, 1), (64, 8, 7)])
def test_auto_workers_share_the_cpus_among_the_ranks_on_the_machine(monkeypatch, cpus, ranks, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    assert loader_workers(-1, Dist(rank=0, world=ranks)) == expected
    assert loader_workers(3, Dist(rank=0, world=ranks)) == 3  # a count given is kept


def test_a_new_run_saves_the_workers_this_machine_allows(monkeypatch):
    """--workers -1 is resolved once, for the run's config (a resumed run's streamed epochs keep their layout)."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(6)), raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    fitted, _ = fit_to_device(TrainConfig(), {}, set(), "cpu")
    assert fitted.workers == 2


def test_workers_below_auto_are_refused():
    with pytest.raises(Exception, match="--workers must be >= 0, or -1"):
        TrainConfig(workers=-2)
