"""train.py end to end on small real data: what a run writes, every data source and recipe path, exact
resume, faults (SIGKILL, SIGINT/SIGTERM, a busy folder, a non-finite loss, a full disk), gradient checkpointing,
pushing to a stand-in hub, the README's Python example, every bad input (docs/troubleshooting.md's table) and DDP.

train.py is driven through its `main(argv)` in this process (the script is a one-line wrapper around it);
a real process only where the process is the point: signals, SIGKILL and torchrun. Bad inputs must end in
one line on stderr and exit code 2, never a traceback.
"""

import errno
import importlib.util
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import vit
from vit import train
from vit.runs import lock_output

from conftest import (DIGITS, ROOT, assert_no_code_ran, corrupt_jpeg, digit_folder, make_folder, make_idx_dir,
                      mixed_folder, unreadable_folder)

# A few quick steps on digits: 1,438 train images / 64 = 22 steps an epoch.
FAST = ["--quiet", "--device", "cpu", "--precision", "fp32", "--batch-size", "64", "--warmup-epochs", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

# benchmarks/kill_resume.py, loaded as a module: its runs, kills and bit-for-bit comparison are the test's.
_spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "benchmarks" / "kill_resume.py")
kr = sys.modules["kill_resume"] = importlib.util.module_from_spec(_spec)  # dataclasses look themselves up there
_spec.loader.exec_module(kr)
SEED = 0  # kill point i draws its moment from random.Random(SEED + i); printed on failure


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def ckpt(out: Path) -> dict:
    return torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)


def stopped_and_resumed(args: list[str], out: Path, steps: int) -> dict:
    """last.ckpt of a run of `args` into `out` stopped after `steps` steps (--max-steps) and resumed to its end."""
    assert train.main(args + ["--output", str(out), "--max-steps", str(steps)]) == 0
    assert train.main(["--resume", str(out), "--max-steps", "0"]) == 0
    return ckpt(out)


def assert_same_weights(a: dict, b: dict, steps: int) -> None:
    """Two last.ckpt dicts end at `steps` with bit-identical weights."""
    assert a["state"]["step"] == b["state"]["step"] == steps
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def train_fails(capsys, *argv, code=2) -> str:
    """train.py with `argv` (one epoch of 6 steps unless they say otherwise) must end with exit `code`, a
    message and no traceback; returns what it printed on stderr."""
    rc = train.main([*FAST, "--epochs", "1", "--batch-size", "256", *map(str, argv)])
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    return err


def folder_args(root: Path, out: Path, *more) -> list[str]:
    """One step on an image folder of the digits model's size."""
    return ["--dataset", "folder", "--data-dir", str(root), "--img-size", "8", "--batch-size", "4",
            "--val-size", "4", "--max-steps", "1", "--output", str(out), *more]


# --------------------------------------------------------------------------------------------------------
# What a run writes


def test_a_run_writes_its_outputs(trained_run):
    """conftest's run (2 epochs on digits): the files, one metrics row an epoch with the loss going down, a
    complete last.ckpt, and a best.safetensors that rebuilds the model alone (tests/test_evaluate.py checks
    that it scores the accuracy train.py recorded)."""
    out = trained_run.out
    assert f"outputs in {out}" in trained_run.stdout
    for name in ("last.ckpt", "best.safetensors", "metrics.jsonl", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    m = rows(out)
    assert [r["epoch"] for r in m] == [1, 2]
    assert set(m[0]) >= {"train_loss", "val_loss", "val_top1", "lr", "images_per_s", "elapsed_s"}
    assert m[-1]["train_loss"] < m[0]["train_loss"] and m[-1]["val_loss"] < m[0]["val_loss"]
    c = ckpt(out)
    assert c["state"]["step"] == 44 and c["state"]["epoch"] == 2
    assert {"model", "optimizer", "scheduler", "ema", "scaler", "rng", "config"} <= set(c)
    model = vit.create_model(pretrained=str(out / "best.safetensors"))
    assert model.class_names == DIGITS and model.config.to_dict() == c["model_config"]


def test_a_finished_run_leaves_no_lock_file(trained_run):
    """The lock is held while a run writes its folder (tests/test_runs.py); it goes with the run."""
    assert not (trained_run.out / ".lock").exists()
    assert not [p for p in trained_run.out.iterdir() if p.name.startswith(".")]


def test_help_states_each_default_once_as_the_default_recipe_sets_it(monkeypatch):
    """--help's defaults are what `python train.py` trains with (the digits recipe's epochs and warm-up, not the
    field defaults it replaces), each flag's once (no second "(default: None)" for --output)."""
    monkeypatch.setenv("COLUMNS", "2000")  # one line a flag's help, where the invocation leaves room
    entries, name = {}, None
    for line in train.build_parser().format_help().split("options:")[1].splitlines():
        if line.startswith("  -"):
            name = line.split()[0].rstrip(",")
        if name:
            entries[name] = entries.get(name, "") + " " + line.strip()
    assert len(entries) > 70  # every TrainConfig field is a flag
    for flag, text in entries.items():
        assert text.count("(default") <= 1 and "None" not in text, (flag, text)
    assert entries["--epochs"].endswith("(default: 30)") and entries["--warmup-epochs"].endswith("(default: 2.0)")
    assert entries["--output"].endswith("(default: runs/RECIPE-DATE-TIME)")
    assert entries["--model"].endswith("(default: 'vit_nano_patch2_8')")


# --------------------------------------------------------------------------------------------------------
# Data sources and recipes


def test_folder_and_idx_sources_train(tmp_path):
    make_folder(tmp_path / "imgs", per_class=8, size=16)
    for mode in ("memory", "loader"):
        out = tmp_path / mode
        assert train.main(FAST + ["--dataset", "folder", "--data-dir", str(tmp_path / "imgs"), "--data-mode", mode,
                                  "--model", "vit_nano_patch4_32", "--img-size", "16", "--val-size", "6",
                                  "--batch-size", "6", "--epochs", "1", "--output", str(out)]
                          + (["--workers", "0"] if mode == "loader" else [])) == 0
        assert rows(out)[0]["epoch"] == 1
    make_idx_dir(tmp_path / "idx", n_train=40, n_test=10)
    out = tmp_path / "idx-run"
    assert train.main(FAST + ["--recipe", "fashion-mnist", "--data-dir", str(tmp_path / "idx"), "--batch-size", "8",
                              "--epochs", "1", "--output", str(out)]) == 0
    assert vit.create_model(pretrained=str(out / "best.safetensors")).class_names[0] == "T-shirt/top"


def test_the_default_model_follows_the_images(tmp_path, capsys):
    """A folder of 32x32 RGB images with the digits recipe: its 8x8 grey model would see every image shrunk and
    made grey, so the run trains the cheapest registered model that takes 32x32x3 and says so in its first line.
    A --model given is trained as given; images no registered model takes stop the run with the candidates."""
    make_folder(tmp_path / "photos", per_class=8, size=32)
    flags = ["--dataset", "folder", "--data-dir", str(tmp_path / "photos"), "--val-size", "6", "--batch-size", "6",
             "--epochs", "1", "--max-steps", "1"]
    assert train.main(FAST + flags + ["--output", str(tmp_path / "run")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("model: vit_nano_patch4_32, the cheapest registered model that takes folder's 32x32x3 images as "
                     "they are (the digits recipe's vit_nano_patch2_8 takes 8x8x1; --model NAME trains another)")
    saved = ckpt(tmp_path / "run")
    assert saved["config"]["model"] == "vit_nano_patch4_32"
    assert (saved["model_config"]["img_size"], saved["model_config"]["in_chans"]) == (32, 3)
    assert train.main(FAST + flags + ["--model", "vit_nano_patch2_8", "--output", str(tmp_path / "given")]) == 0
    assert "model:" not in capsys.readouterr().out
    assert ckpt(tmp_path / "given")["model_config"]["in_chans"] == 1
    make_folder(tmp_path / "odd", per_class=8, size=20)
    err = train_fails(capsys, "--dataset", "folder", "--data-dir", tmp_path / "odd", "--output", tmp_path / "odd-run")
    assert ("--dataset folder: its images are 20x20x3 and the digits recipe's vit_nano_patch2_8 takes 8x8x1; no "
            "registered model takes 20x20x3 images. Give --model NAME --img-size 20; these take 3 channel(s) with a "
            "patch that divides 20x20: vit_micro_patch4_32, vit_mini_patch4_32, vit_nano_patch4_32") in err, err


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_cifar10_recipe_trains_on_torchvisions_files(tiny_cifar10, tmp_path, stem):
    root, _ = tiny_cifar10
    out = tmp_path / "run"
    assert train.main(FAST + ["--recipe", "cifar10", "--data-dir", str(root), "--batch-size", "10", "--epochs", "1",
                              "--img-size", "16", "--output", str(out), "--stem", stem]) == 0
    assert "val_top1" in rows(out)[0] and (out / "best.safetensors").is_file()
    assert vit.create_model(pretrained=str(out / "best.safetensors")).config.stem == stem


def test_finetune_recipe_from_local_weights(tmp_path):
    """The imagenet-subset-finetune recipe's whole path on a tiny tree: pretrained weights from a file, a new
    head, position embeddings resized to a new image size, DataLoader workers with RandAugment and erasing,
    Mixup/CutMix, layer-wise lr decay and EMA."""
    src = vit.create_model("vit_nano_patch4_32", num_classes=7)
    vit.save_pretrained(src, tmp_path / "pre.safetensors")
    make_folder(tmp_path / "imgs", per_class=8, size=40)
    out = tmp_path / "ft"
    assert train.main(["--recipe", "imagenet-subset-finetune", "--quiet", "--device", "cpu",
                       "--model", "vit_nano_patch4_32", "--pretrained", str(tmp_path / "pre.safetensors"),
                       "--img-size", "48", "--data-dir", str(tmp_path / "imgs"), "--val-size", "6", "--batch-size", "6",
                       "--epochs", "1", "--workers", "0", "--output", str(out)]) == 0
    model = vit.create_model(pretrained=str(out / "best.safetensors"))
    assert model.num_classes == 3 and model.pos_embed.shape[1] == 1 + 12 * 12
    assert model.class_names == ["cat", "dog", "emu"]
    trained = dict(model.named_parameters())
    assert not torch.equal(trained["head.weight"][:3], src.head.weight[:3])  # a new head, trained
    assert "ema_val_top1" in rows(out)[0]


def test_a_conv_stem_run_saves_files_that_rebuild_it(tmp_path):
    """--stem conv on digits with EMA: the run trains the conv stem (its BatchNorm statistics move, and the EMA
    copy's follow), last.ckpt and best.safetensors say stem "conv", and evaluate.py's loader (a run folder, a
    last.ckpt) and create_model(NAME, pretrained=...) rebuild models with the saved logits."""
    from vit.evaluate import load_model

    out = tmp_path / "conv"
    assert train.main(FAST + ["--stem", "conv", "--epochs", "1", "--steps", "2", "--ema-decay", "0.9",
                              "--output", str(out)]) == 0
    saved, key = ckpt(out), "patch_embed.backbone.0.bn.running_mean"
    assert saved["config"]["stem"] == saved["model_config"]["stem"] == "conv"
    assert saved["model"][key].any() and saved["ema"][key].any() and not torch.equal(saved["model"][key],
                                                                                      saved["ema"][key])
    last = vit.VisionTransformer(vit.ViTConfig.from_dict(saved["model_config"]))
    last.load_state_dict(saved["model"])
    best = vit.create_model("vit_nano_patch2_8", pretrained=str(out / "best.safetensors")).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert best.config.stem == "conv" and torch.equal(load_model(str(out)).eval()(x), best(x))
        torch.testing.assert_close(load_model(str(out / "last.ckpt")).eval()(x), last.eval()(x), rtol=0, atol=1e-5)


def test_memory_mode_random_erasing_reaches_the_batches(tmp_path):
    """--reprob in memory mode: timm's RandomErasing on the normalised batch changes what the model learns."""
    args = FAST + ["--epochs", "1", "--max-steps", "2", "--deterministic"]
    assert train.main(args + ["--output", str(tmp_path / "plain")]) == 0
    assert train.main(args + ["--reprob", "1", "--output", str(tmp_path / "erased")]) == 0
    plain, erased = ckpt(tmp_path / "plain")["model"], ckpt(tmp_path / "erased")["model"]
    assert not torch.equal(plain["patch_embed.proj.weight"], erased["patch_embed.proj.weight"])


@pytest.mark.parametrize("flags, says", [
    (["--workers", "2"], "--workers has no effect when the images are read in memory"),
    (["--data-mode", "loader"], "--data-mode loader reads image files from a folder"),
    (["--folder", "--crop-pad", "2"], "--crop-pad has no effect when the images are read through the DataLoader"),
    (["--folder", "--repeat-aug", "2"], "--repeat-aug has no effect"),
    (["--folder", "--res-start", "16"], "--res-start 16 resizes batches held in memory; images read through the "
                                        "DataLoader (--data-mode loader) train at one size"),
    (["--randaug", "augmix-m5"], "in-memory data takes RandAugment policies"),
    (["--randaug", "rand-m9-q2"], "unknown part 'q2'"),
])
def test_flags_without_effect_in_the_data_mode_are_refused(tmp_path, capsys, flags, says):
    if flags[0] == "--folder":
        make_folder(tmp_path / "imgs", per_class=2, size=16)
        flags = ["--dataset", "folder", "--data-dir", str(tmp_path / "imgs"), "--data-mode", "loader",
                 "--model", "vit_nano_patch4_32", "--workers", "0", "--batch-size", "2", *flags[1:]]
    assert train.main(FAST + ["--epochs", "1", "--output", str(tmp_path / "run"), *flags]) == 2
    assert says in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# Exact resume: stopped and resumed, a run ends bit-identical to one never stopped


def test_eval_views_score_each_validation_image_mirrored_and_moved(tmp_path):
    """--eval-hflip --eval-shift 1: train.py's validation is the mean of the logits of six views of each image
    (torchvision's pad, crop and horizontal_flip here: the image and the image moved a pixel down-right and up-left
    with a black border, each mirrored too), and evaluate.py follows the run's views unless told otherwise."""
    from torchvision.transforms.v2 import functional as TF

    from vit.data import digits_split
    from vit.evaluate import load_model, parse_args, run

    out = tmp_path / "run"
    assert train.main(FAST + ["--epochs", "2", "--eval-hflip", "--eval-shift", "1", "--output", str(out)]) == 0
    model = load_model(str(out / "last.ckpt")).eval()
    val, pre = digits_split("val"), model.preprocess
    normalise = lambda u: TF.normalize(u.float() / 255, pre.mean, pre.std)  # noqa: E731
    padded = TF.pad(val.images, [1, 1, 1, 1], fill=0)
    moved = [normalise(TF.crop(padded, top, top, 8, 8)) for top in (1, 0, 2)]
    with torch.no_grad():
        plain, mirrored = model(moved[0]), model(TF.horizontal_flip(moved[0]))
        six = torch.stack([model(v) for v in moved] + [model(TF.horizontal_flip(v)) for v in moved]).mean(0)
    ce = lambda logits: float(torch.nn.functional.cross_entropy(logits, val.labels))  # noqa: E731
    last = rows(out)[-1]
    assert round(last["val_top1"] * len(val) / 100) == int((six.argmax(1) == val.labels).sum())
    assert last["val_loss"] == pytest.approx(ce(six), rel=1e-5)
    assert abs(last["val_loss"] - ce((plain + mirrored) / 2)) > 1e-4
    flags = [str(out / "last.ckpt"), "--precision", "fp32", "--no-progress", "--device", "cpu"]
    report = run(parse_args([*flags, "--output", str(tmp_path / "followed")]))
    assert (report["eval_hflip"], report["eval_shift"]) == (True, 1)
    assert 100 * report["top1"] == pytest.approx(last["val_top1"], abs=1e-9)
    mirrored_report = run(parse_args([*flags, "--eval-shift", "0", "--output", str(tmp_path / "mirrored")]))
    assert mirrored_report["loss"] == pytest.approx(ce((plain + mirrored) / 2), rel=1e-5)
    plain_report = run(parse_args([*flags, "--no-eval-hflip", "--eval-shift", "0",
                                   "--output", str(tmp_path / "plain")]))
    assert (plain_report["eval_hflip"], plain_report["eval_shift"]) == (False, 0)
    assert plain_report["loss"] == pytest.approx(ce(plain), rel=1e-5)


def test_a_run_too_short_for_crops_scores_no_moved_views(tmp_path):
    """--eval-shift 1 with --augment-min-epochs above the run's length: no crops, so validation scores the image
    and its mirror alone, and evaluate.py follows what the run used (last.ckpt's "augment" entry)."""
    from torchvision.transforms.v2 import functional as TF

    from vit.data import digits_split
    from vit.evaluate import load_model, parse_args, run

    out = tmp_path / "run"
    assert train.main(FAST + ["--epochs", "2", "--eval-hflip", "--eval-shift", "1", "--crop-pad", "1",
                              "--augment-min-epochs", "3", "--output", str(out)]) == 0
    model = load_model(str(out / "last.ckpt")).eval()
    val, pre = digits_split("val"), model.preprocess
    x = TF.normalize(val.images.float() / 255, pre.mean, pre.std)
    with torch.no_grad():
        flipped = (model(x) + model(TF.horizontal_flip(x))) / 2
    ce = float(torch.nn.functional.cross_entropy(flipped, val.labels))
    assert rows(out)[-1]["val_loss"] == pytest.approx(ce, rel=1e-5)
    report = run(parse_args([str(out / "last.ckpt"), "--precision", "fp32", "--no-progress", "--device", "cpu",
                             "--output", str(tmp_path / "followed")]))
    assert (report["eval_hflip"], report["eval_shift"]) == (True, 0)
    assert 100 * report["top1"] == pytest.approx(rows(out)[-1]["val_top1"], abs=1e-9)


def test_eval_every_evaluates_every_nth_epoch_and_the_last(tmp_path, capsys):
    """--eval-every 2 over 5 epochs: validation after epochs 2, 4 and 5; every epoch still has its row. An
    every-th epoch less than a whole epoch before the run's end is not evaluated: the last epoch is."""
    out = tmp_path / "run"
    assert train.main(FAST + ["--epochs", "5", "--eval-every", "2", "--output", str(out)]) == 0
    got = rows(out)
    assert [r["epoch"] for r in got] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in got if "val_top1" in r] == [2, 4, 5]
    assert all("val_loss" not in r for r in got if r["epoch"] in (1, 3))
    assert (out / "best.safetensors").exists() and (out / "curves.png").exists()
    # 2.6 epochs of steps (22 an epoch): epoch 2 ends 13 steps before the last, which evaluates instead
    short = tmp_path / "short"
    assert train.main(FAST + ["--steps", "57", "--eval-every", "1", "--output", str(short)]) == 0
    assert [(r["epoch"], r["step"]) for r in rows(short) if "val_top1" in r] == [(1, 22), (3, 57)]


@pytest.mark.parametrize("opt", ["adamw", "muon"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, capsys, opt):
    """Stopped mid-epoch 2 (--max-steps), with metrics.jsonl's last append torn as a crash leaves it, then
    resumed: the same weights, EMA and metrics rows as the run never stopped (the torn line dropped)."""
    args = FAST + ["--epochs", "2", "--deterministic", "--ema-decay", "0.9", "--drop-path", "0.1", "--crop-pad", "1",
                   "--reprob", "0.25", "--opt", opt]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train.main(args + ["--output", str(full)]) == 0
    assert train.main(args + ["--output", str(cut), "--max-steps", "30"]) == 0  # the schedule still spans 2 epochs
    assert ckpt(cut)["state"]["step"] == 30 and ckpt(cut)["state"]["batch"] == 8
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "step": 44, "train_lo')
    capsys.readouterr()
    assert train.main(["--resume", str(cut), "--max-steps", "0"]) == 0
    assert f"resumed {cut} at epoch 2, batch 8, step 30" in capsys.readouterr().out
    a, b = ckpt(full), ckpt(cut)
    assert b["state"]["step"] == a["state"]["step"] == 44
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert rows(full) == [{**r, "elapsed_s": s["elapsed_s"], "images_per_s": s["images_per_s"]}
                          for r, s in zip(rows(cut), rows(full))]
    assert not list(cut.glob(".*.tmp"))


@pytest.mark.parametrize("flags", [
    ["--pretrained", "TRAINED", "--lora-rank", "4", "--teacher", "TRAINED", "--distill", "soft"],  # [CLS]-head student
    ["--freeze", "3", "--distilled", "--teacher", "TRAINED"],  # a distilled student, hard distillation
], ids=["lora-soft", "freeze-distilled-hard"])
def test_finetuning_and_distillation_resume_exactly(trained_run, tmp_path, flags):
    """LoRA adapters, frozen blocks and a teacher: stopped after 2 of 5 steps and resumed, the same weights
    as never stopped."""
    flags = [str(trained_run.out / "best.safetensors") if f == "TRAINED" else f for f in flags]
    args = FAST + ["--epochs", "1", "--batch-size", "256", "--deterministic", *flags]
    assert train.main(args + ["--output", str(tmp_path / "full")]) == 0
    assert_same_weights(ckpt(tmp_path / "full"), stopped_and_resumed(args, tmp_path / "cut", 2), 5)


def test_loader_path_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    """DataLoader workers with timm's random transforms: each sample is seeded from (seed, epoch, index), so
    a resumed run with 2 workers reads the same augmented batches as an uninterrupted run without workers."""
    make_folder(tmp_path / "imgs", per_class=8, size=20)
    args = FAST + ["--dataset", "folder", "--data-dir", str(tmp_path / "imgs"), "--data-mode", "loader",
                   "--model", "vit_nano_patch4_32", "--img-size", "16", "--val-size", "6", "--batch-size", "6",
                   "--epochs", "2", "--deterministic", "--hflip", "0.5", "--randaug", "rand-m9-mstd0.5-inc1",
                   "--reprob", "0.25", "--patch-drop", "0.25"]
    assert train.main(args + ["--workers", "0", "--output", str(tmp_path / "full")]) == 0
    assert train.main(args + ["--workers", "2", "--max-steps", "4", "--output", str(tmp_path / "cut")]) == 0
    assert train.main(["--resume", str(tmp_path / "cut"), "--max-steps", "0"]) == 0
    full, cut = ckpt(tmp_path / "full"), ckpt(tmp_path / "cut")
    assert cut["state"]["step"] == full["state"]["step"] == 6
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k]), k


def test_budgeted_run_ends_inside_its_budget_and_resumes_its_plan_exactly(tmp_path):
    """--budget times the first steps and fixes the step count: the run ends inside its budget (+5%). Its plan is
    saved in last.ckpt: stopped and resumed, the run ends exactly as one given that many --steps from the start
    (--no-replan: the plan alone decides; warm-up, 15 steps, covers the 14 timed steps, whose lr the length does
    not set, and ends inside any plan longer than --max-steps 20; the token count's line, --patch-drop-end, starts
    after it too). A rule on the plan's length (--augment-min-epochs for crops) is decided with the plan and saved
    with it."""
    args = FAST + ["--deterministic", "--warmup-epochs", "0.7", "--ema-decay", "0.9", "--crop-pad", "2",
                   "--hflip", "0.5", "--augment-min-epochs", "1000", "--randaug", "rand-m9-mstd0.5-inc1",
                   "--repeat-aug", "2", "--patch-drop", "0.5", "--patch-drop-end", "0.25"]
    # Budgets of seconds, long enough that a slow first step on a busy 2-core host still plans > 30 steps. The run
    # that must end inside its budget has 20 s: with 22-step epochs its checks come every ~0.8 s, and the other
    # test worker can slow the unchecked steps of a last epoch by more than 5% of 9 s (0.45 s).
    assert train.main(args + ["--budget", "20s", "--output", str(tmp_path / "whole")]) == 0
    whole = ckpt(tmp_path / "whole")
    assert whole["state"]["step"] == whole["budget"]["total_steps"] > 30
    # far fewer than 1000 epochs fit: no crops; last.ckpt says what the run used
    assert whole["budget"]["decided"] == whole["augment"] == {"crop_pad": 0, "hflip": 0.5, "eval_shift": 0}
    assert 0.6 * 20 < whole["budget"]["spent_s"] <= 1.05 * 20, whole["budget"]

    cut = tmp_path / "cut"
    assert train.main(args + ["--no-replan", "--budget", "9s", "--output", str(cut), "--max-steps", "20"]) == 0
    total = ckpt(cut)["budget"]["total_steps"]
    assert total > 20 and ckpt(cut)["state"]["step"] == 20
    assert train.main(["--resume", str(cut), "--max-steps", "0"]) == 0
    resumed = ckpt(cut)
    assert resumed["state"]["step"] == resumed["budget"]["total_steps"] == total
    assert train.main(args + ["--steps", str(total), "--output", str(tmp_path / "fixed")]) == 0
    fixed = ckpt(tmp_path / "fixed")
    for k in fixed["model"]:
        assert torch.equal(fixed["model"][k], resumed["model"][k]), k
    assert train.main(FAST + ["--budget", "1m", "--epochs", "3", "--output", str(tmp_path / "both")]) == 2


@pytest.mark.parametrize("sched", ["cosine", "linear"])
def test_sched_decays_the_learning_rate_after_the_warm_up(tmp_path, sched):
    """--sched: after a 1-epoch warm-up to --lr, cosine or linear decay to --min-lr at the plan's last step;
    digits, 4 epochs of 22 steps: the lr logged after each epoch against the formula."""
    out = tmp_path / sched
    assert train.main(FAST + ["--epochs", "4", "--warmup-epochs", "1", "--lr", "2e-3", "--min-lr", "1e-4",
                              "--sched", sched, "--output", str(out)]) == 0
    for row in rows(out):
        along = (row["step"] - 22) / (88 - 22)
        shape = 0.5 * (1 + math.cos(math.pi * along)) if sched == "cosine" else 1 - along
        assert row["lr"] == pytest.approx(1e-4 + (2e-3 - 1e-4) * shape), row


def test_resume_keeps_the_saved_schedule(trained_run, capsys, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run.out, out)
    err = train_fails(capsys, "--resume", out, "--sched", "linear")
    assert f"--sched linear: {out / 'last.ckpt'} continues its cosine schedule" in err


def test_patch_drop_end_moves_the_kept_tokens_along_the_plan(tmp_path, monkeypatch):
    """--patch-drop-end: the fraction of patch tokens dropped moves in a line from --patch-drop at the first step
    to --patch-drop-end at the last (digits: 16 patches, 4 kept then 12, and [CLS]); evaluation sees every token."""
    seen = {True: [], False: []}  # tokens entering the first block, by training mode
    step = train.train_step

    def watching(tr, st, x, y):
        if not st.step:
            tr.model.blocks[0].register_forward_pre_hook(
                lambda m, args: seen[tr.model.training].append(args[0].shape[1]))
        return step(tr, st, x, y)

    monkeypatch.setattr(train, "train_step", watching)
    assert train.main(FAST + ["--epochs", "2", "--patch-drop", "0.75", "--patch-drop-end", "0.25",
                              "--output", str(tmp_path / "run")]) == 0
    tokens, total = seen[True], 2 * 22
    assert len(tokens) == total and tokens[0] == 1 + 4 and tokens[-1] == 1 + 12
    assert tokens == sorted(tokens)
    for s, n in enumerate(tokens):
        assert abs(n - (1 + 16 * (0.25 + 0.5 * s / (total - 1)))) <= 1, (s, n)
    assert set(seen[False]) == {17}


def test_res_start_grows_the_training_images_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    """--res-start 4 on digits (8 px, patches of 2), 2 epochs of 22 steps: the training images are 4 px for 17
    steps, 6 px for 16 and 8 px for the last 11 (a quarter), said where they change and recorded in
    metrics.jsonl; evaluation sees 8 px, and evaluate.py scores best.safetensors at 8 px as the run did. Stopped
    at step 30 and resumed, the run ends with the weights of one never stopped."""
    seen = {True: [], False: []}  # the side of the images the model takes, by training mode
    step = train.train_step

    def watching(tr, st, x, y):
        if not st.step:
            tr.model.patch_embed.register_forward_pre_hook(
                lambda m, args: seen[tr.model.training].append(args[0].shape[-1]))
        return step(tr, st, x, y)

    monkeypatch.setattr(train, "train_step", watching)
    args = FAST + ["--epochs", "2", "--deterministic", "--res-start", "4", "--crop-pad", "1", "--reprob", "0.25"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train.main(args + ["--output", str(full)]) == 0
    out = capsys.readouterr().out
    assert seen[True] == [4] * 17 + [6] * 16 + [8] * 11 and set(seen[False]) == {8}
    assert all(f"images: {n}x{n} px from step {s}" in out for n, s in ((4, 1), (6, 18), (8, 34))), out
    assert [r["img_size"] for r in rows(full)] == [6, 8]
    assert_same_weights(ckpt(full), stopped_and_resumed(args, cut, 30), 44)
    assert rows(full) == [{**r, "elapsed_s": s["elapsed_s"], "images_per_s": s["images_per_s"]}
                          for r, s in zip(rows(cut), rows(full))]

    from vit.evaluate import main as evaluate_main

    assert evaluate_main([str(full / "best.safetensors"), "--dataset", "digits", "--output", str(tmp_path / "eval"),
                          "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert 100 * report["top1"] == pytest.approx(max(r["val_top1"] for r in rows(full)), abs=1e-9)


def test_a_budgeted_run_resumes_its_sizes_over_the_saved_ramp(tmp_path, monkeypatch):
    """A budget's sizes grow over its shortest plan so far (budget.ramp_steps in last.ckpt): a run stopped after its
    plan, its saved ramp set to half the plan (as an earlier, shorter plan would have left it), resumes training
    each step at the size that ramp gives, full from mid-plan on (its own plan's ramp would reach 8 px at its end)."""
    from vit.plan import Resolution

    seen, now = [], []  # (step, the side of the images the model takes) of each training step
    step = train.train_step

    def watching(tr, st, x, y):
        if not now:
            tr.model.patch_embed.register_forward_pre_hook(
                lambda m, args: seen.append((now[-1], args[0].shape[-1])) if tr.model.training else None)
        now.append(st.step)
        return step(tr, st, x, y)

    out = tmp_path / "run"
    args = FAST + ["--budget", "6s", "--no-replan", "--res-start", "4", "--res-end-frac", "1.0", "--deterministic"]
    assert train.main(args + ["--plan-only", "--output", str(out)]) == 0
    saved = ckpt(out)
    total, done = saved["budget"]["total_steps"], saved["state"]["step"]
    assert saved["budget"]["ramp_steps"] == total
    saved["budget"]["ramp_steps"] = total // 2
    torch.save(saved, out / "last.ckpt")
    monkeypatch.setattr(train, "train_step", watching)
    assert train.main(["--resume", str(out)]) == 0
    res = Resolution(4, 8, 2, 1.0)
    assert [s for s, _ in seen] == list(range(done, total))
    assert [size for _, size in seen] == [res.at(s, total // 2) for s in range(done, total)]
    assert ckpt(out)["budget"]["ramp_steps"] == total // 2


def test_a_budget_shorter_than_the_warm_up_still_decays_the_learning_rate_to_its_end(tmp_path):
    """A plan shorter than --warmup-epochs ends its warm-up a step before the plan's end, as a run given that many
    --steps does; the cosine then runs to min_lr (without this the run would end mid-warm-up)."""
    out = tmp_path / "run"
    assert train.main(FAST + ["--warmup-epochs", "100", "--min-lr", "1e-4", "--budget", "4s",
                              "--output", str(out)]) == 0
    saved = ckpt(out)
    total = saved["budget"]["total_steps"]
    assert 14 < total < 100 * 22 and saved["scheduler"]["warmup_t"] == total - 1, saved["budget"]
    assert rows(out)[-1]["lr"] == pytest.approx(1e-4)


def test_a_run_whose_steps_slow_down_mid_epoch_replans_there_and_ends_inside_its_budget(tmp_path, capsys,
                                                                                          monkeypatch):
    """The whole plan fits inside one epoch, so no epoch's end can re-plan it: when every step costs 0.1 s more
    from step 30 on (another job starts), a mid-epoch check cuts the plan back, says so, records it in last.ckpt,
    and the run still ends inside its budget (+5%)."""
    make_idx_dir(tmp_path / "idx", n_train=4000, n_test=20)
    step, spe = train.train_step, 4000 // 8

    def slowing(tr, st, x, y):
        if st.step >= 30:
            time.sleep(0.1)
        return step(tr, st, x, y)

    monkeypatch.setattr(train, "train_step", slowing)
    out = tmp_path / "run"
    assert train.main(FAST + ["--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "idx"), "--batch-size", "8",
                              "--model", "vit_slim_patch7_28", "--budget", "8s", "--output", str(out)]) == 0
    saved = ckpt(out)
    replans = saved["budget"]["replans"]
    assert saved["budget"]["total_steps"] < spe and replans  # a plan shorter than an epoch, cut back inside it
    assert all(r["reason"] == "slower" and r["step"] % spe for r in replans), replans
    assert "slower than planned" in capsys.readouterr().out
    assert saved["state"]["step"] == saved["budget"]["total_steps"]
    assert saved["budget"]["spent_s"] <= 1.05 * 8, saved["budget"]


def ladder_recipe(monkeypatch, *rungs, budget="5s", **overrides) -> str:
    """A recipe named 'ladder' with these rungs (model, min epochs, max epochs[, fields that follow it])."""
    from vit import recipes

    ladder = tuple(recipes.Rung(*r) for r in rungs)
    fields = {**dict(model=ladder[0].model, dataset="fashion-mnist", batch_size=8, budget=budget), **overrides}
    monkeypatch.setitem(recipes.RECIPES, "ladder", recipes.Recipe("ladder", "A test's ladder.", fields, ladder))
    return "ladder"


def test_a_budget_too_short_for_the_larger_model_trains_the_smaller_one(tmp_path, capsys, monkeypatch):
    """A ladder: where fewer than a larger model's minimum epochs fit the budget, the run times the models on copies
    of them, says which it trains and why, and builds that one alone inside the same budget: last.ckpt,
    best.safetensors and metrics.jsonl are its own. Where enough epochs fit, the larger model trains, with the
    fields that follow it."""
    make_idx_dir(tmp_path / "idx", n_train=400, n_test=20)
    args = FAST + ["--data-dir", str(tmp_path / "idx"), "--batch-size", "8"]
    recipe = ladder_recipe(monkeypatch, ("vit_slim_patch7_28", 0, 1000), ("vit_micro_patch7_28", 1000, 2000))
    short = tmp_path / "short"
    assert train.main(args + ["--recipe", recipe, "--output", str(short)]) == 0
    out = capsys.readouterr().out
    assert "budget: training vit_slim_patch7_28, the largest of recipe ladder's models whose 0 epochs fit, for at " \
           "most 1000 epochs" in out
    saved = ckpt(short)
    assert saved["config"]["model"] == "vit_slim_patch7_28"
    assert saved["state"]["step"] == saved["budget"]["total_steps"] > 0
    assert saved["budget"]["spent_s"] <= 1.05 * 5, saved["budget"]
    assert vit.create_model(pretrained=str(short / "best.safetensors")).config.embed_dim == 128
    assert [r["epoch"] for r in rows(short)] == list(range(1, len(rows(short)) + 1))

    long = tmp_path / "long"
    recipe = ladder_recipe(monkeypatch, ("vit_slim_patch7_28", 0, 1000),
                           ("vit_micro_patch7_28", 0.5, 1000, dict(label_smoothing=0.2)), budget="12s")
    assert train.main(args + ["--recipe", recipe, "--output", str(long)]) == 0
    assert "training vit_micro_patch7_28" in capsys.readouterr().out
    assert ckpt(long)["config"]["model"] == "vit_micro_patch7_28"
    assert ckpt(long)["config"]["label_smoothing"] == 0.2


def test_a_budget_past_the_longest_schedule_ends_early_and_says_so(tmp_path, capsys, monkeypatch):
    """The budget is a ceiling: where the largest model's longest schedule takes less than the budget, the run
    trains those epochs and ends, saying so."""
    recipe = ladder_recipe(monkeypatch, ("vit_nano_patch2_8", 0, 2), budget="10m", dataset="digits")
    out = tmp_path / "run"
    t0 = time.monotonic()
    assert train.main(FAST + ["--recipe", recipe, "--dataset", "digits", "--batch-size", "64", "--output",
                              str(out)]) == 0
    assert time.monotonic() - t0 < 120
    saved, spe = ckpt(out), 1438 // 64
    assert saved["budget"]["max_steps"] == saved["budget"]["total_steps"] == saved["state"]["step"] == 2 * spe
    assert "of 10.0 min used, 44 steps (0 re-plan(s)): 2 epochs of vit_nano_patch2_8 is this recipe's longest " \
           "schedule" in capsys.readouterr().out
    assert [r["epoch"] for r in rows(out)] == [1, 2]


def test_a_run_that_chose_a_rung_resumes_exactly(tmp_path, capsys, monkeypatch):
    """Stopped after its plan (--plan-only) and resumed, a run that chose a rung of its ladder ends with the weights
    of a run of that model, its fields and the plan's step count given as --steps (no budget; the warm-up is
    longer than the steps timed, so the two runs' learning rates agree from the first step)."""
    recipe = ladder_recipe(monkeypatch, ("vit_nano_patch2_8", 0, 3), ("vit_nano_patch2_8", 0, 2, dict(lr=1e-3)),
                           budget="10m", dataset="digits", crop_pad=1)
    args = FAST + ["--recipe", recipe, "--dataset", "digits", "--deterministic", "--no-replan", "--warmup-epochs", "1"]
    cut = tmp_path / "cut"
    assert train.main(args + ["--plan-only", "--output", str(cut)]) == 0
    assert "stopped by --plan-only" in capsys.readouterr().out
    planned = ckpt(cut)
    assert 0 < planned["state"]["step"] < planned["budget"]["total_steps"] == planned["budget"]["max_steps"]
    assert train.main(["--resume", str(cut)]) == 0
    done = ckpt(cut)
    assert done["config"]["lr"] == 1e-3 and done["state"]["step"] == planned["budget"]["total_steps"]
    fixed = tmp_path / "fixed"
    assert train.main(FAST + ["--recipe", recipe, "--dataset", "digits", "--deterministic", "--budget", "",
                              "--warmup-epochs", "1", "--lr", "1e-3", "--steps", str(done["state"]["step"]),
                              "--output", str(fixed)]) == 0
    for k, v in ckpt(fixed)["model"].items():
        assert torch.equal(v, done["model"][k]), k


def test_a_model_given_takes_the_fields_of_its_rung_except_those_given(tmp_path, capsys, monkeypatch):
    """--model naming a rung of the recipe's ladder trains it with the fields that follow it, in a fixed-length
    run and in a budgeted one; a field given on the command line wins, and a model off the ladder takes none."""
    make_idx_dir(tmp_path / "idx", n_train=40, n_test=8)
    recipe = ladder_recipe(monkeypatch, ("vit_slim_patch7_28", 0, 10),
                           ("vit_micro_patch7_28", 10, 20, dict(label_smoothing=0.2, drop_path=0.1)))
    args = FAST + ["--recipe", recipe, "--data-dir", str(tmp_path / "idx"), "--batch-size", "8", "--drop-path", "0.05"]
    for name, more in (("fixed", ["--steps", "1"]), ("budget", ["--budget", "3s"])):
        out = tmp_path / name
        assert train.main(args + more + ["--model", "vit_micro_patch7_28", "--output", str(out)]) == 0
        assert "recipe ladder's settings for vit_micro_patch7_28: --label-smoothing 0.2\n" in capsys.readouterr().out
        saved = ckpt(out)["config"]
        assert (saved["model"], saved["label_smoothing"], saved["drop_path"]) == ("vit_micro_patch7_28", 0.2, 0.05)
    assert train.main(args + ["--steps", "1", "--model", "vit_tiny_patch4_28", "--output", str(tmp_path / "off")]) == 0
    assert "settings for" not in capsys.readouterr().out
    assert ckpt(tmp_path / "off")["config"]["label_smoothing"] == 0.1


def test_a_ladder_of_models_that_take_other_images_is_refused(capsys, tmp_path, monkeypatch):
    recipe = ladder_recipe(monkeypatch, ("vit_nano_patch2_8", 0, 2), ("vit_micro_patch7_28", 1, 2), budget="1m",
                           dataset="digits")
    rc = train.main(FAST + ["--recipe", recipe, "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "a ladder's models take the same images" in err and "Traceback" not in err, err


# --------------------------------------------------------------------------------------------------------
# SIGKILL at random moments and SIGINT/SIGTERM: the short version of benchmarks/kill_resume.py (the same
# code, two kill points and 2 epochs of 11 steps instead of 20 points and 3 epochs), train.py killed for real


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> "kr.Reference":
    """The benchmark's uninterrupted run, 2 epochs long (22 steps, a checkpoint after each)."""
    return kr.reference_run(tmp_path_factory.mktemp("kr") / "reference", kr.run_args(epochs=2))


def test_sigkill_then_resume_is_bit_identical(reference, tmp_path):
    """Two kill points at once (the threads only wait on train.py processes)."""
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda i: kr.kill_point(i, SEED, reference, tmp_path), [0, 1]))
    kr.print_table(results, reference)  # shown by pytest on failure, with the seeds
    for r in results:
        assert r.exit_code == -signal.SIGKILL, f"seed {r.seed}: the run ended before the kill"
        assert r.ok, f"seed {r.seed}: resumed run differs from the uninterrupted one: {r.diffs[:5]}"


def test_the_comparison_sees_a_single_bit(reference):
    """Guard against a vacuous check: one flipped bit of one weight, or one counter, is a difference;
    wall-clock timings are not."""
    a = torch.load(reference.out / "last.ckpt", weights_only=True)
    b = torch.load(reference.out / "last.ckpt", weights_only=True)
    assert kr.differences(a, b) == []
    b["state"]["elapsed_s"] += 1.0
    assert kr.differences(a, b) == []
    b["model"]["blocks.0.attn.qkv.weight"].view(-1).view(torch.int32)[7] ^= 1
    b["state"]["step"] += 1
    assert kr.differences(a, b) == ["model.blocks.0.attn.qkv.weight",
                                    f"state.step ({a['state']['step']} vs {a['state']['step'] + 1})"]


def signalled(signum: int, reference, out: Path) -> "kr.Interrupted":
    """A run sent `signum` soon after its first last.ckpt (mid-epoch, mid-training)."""
    return kr.interrupt(out, reference, random.Random(SEED), signum, after_save=1)


def check_clean_stop(signum: int, stopped: "kr.Interrupted", out: Path) -> int:
    name, log = signal.Signals(signum).name, stopped.log
    assert stopped.exit_code == 128 + signum, log  # a clean exit, with the shell's code for the signal
    assert "Traceback" not in log, log
    step = kr.ckpt_step(out)
    assert f"stopped by signal {name} at step {step}; last.ckpt saved. Continue with: python train.py " \
           f"--resume {out}" in log, log
    return step


def test_sigint_and_sigterm_save_and_exit_cleanly(reference, tmp_path):
    signals = [signal.SIGINT, signal.SIGTERM]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda s: signalled(s, reference, tmp_path / signal.Signals(s).name), signals))
    for signum, stopped in zip(signals, runs):
        step = check_clean_stop(signum, stopped, tmp_path / signal.Signals(signum).name)
        assert 0 < step < 22  # stopped mid-training, its position saved


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stopped_run_resumes_exactly(reference, tmp_path, signum):
    out = tmp_path / "run"
    step = check_clean_stop(signum, signalled(signum, reference, out), out)
    how, resumed_from, _ = kr.finish(out, reference.args)
    assert (how, resumed_from) == ("resume", step)
    diffs, _ = kr.compare_runs(reference.out, out)
    assert not diffs, diffs[:5]


# --------------------------------------------------------------------------------------------------------
# Other faults: a busy folder, a non-finite loss, a full or unwritable disk


def test_a_restarted_torchrun_worker_resumes_its_folder(tmp_path, capsys, monkeypatch):
    """torchrun --max-restarts starts the same command again: with TORCHELASTIC_RESTART_COUNT > 0 it resumes
    the run in --output from last.ckpt instead of refusing the folder as one already holding a run."""
    out = tmp_path / "run"
    args = FAST + ["--epochs", "2", "--deterministic", "--output", str(out)]
    assert train.main(args + ["--max-steps", "3"]) == 0
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert train.main(args + ["--max-steps", "0"]) == 0
    assert "torchrun restart 1: continuing the run in" in capsys.readouterr().out
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert train.main(args[:-2] + ["--output", str(tmp_path / "whole")]) == 0
    restarted, whole = ckpt(out), ckpt(tmp_path / "whole")
    assert restarted["state"]["step"] == whole["state"]["step"]
    for k in whole["model"]:
        assert torch.equal(restarted["model"][k], whole["model"][k]), k


def test_a_folder_in_use_or_holding_a_run_is_refused(tmp_path, capsys):
    """train.py takes the folder's lock before anything else (tests/test_runs.py: the lock across processes)."""
    out = tmp_path / "run"
    assert train.main(FAST[1:] + ["--epochs", "1", "--max-steps", "2", "--output", str(out)]) == 0
    # the command it prints runs to the end, not one step more (the saved config keeps --max-steps)
    assert f"Continue with: python train.py --resume {out} --max-steps 0" in capsys.readouterr().out
    held = lock_output(out, resume=True)  # as a running train.py holds it
    for argv in (["--output", str(out)], ["--resume", str(out)]):  # even --resume: the run is alive
        assert train.main(FAST + ["--epochs", "1", *argv]) == 2
        assert f"{out} is in use by another train.py (pid {os.getpid()})" in capsys.readouterr().err
    held.close()
    assert train.main(FAST + ["--epochs", "1", "--output", str(out)]) == 2
    assert f"{out} already holds a training run (last.ckpt): continue it with --resume {out}" \
        in capsys.readouterr().err


def test_a_folder_with_a_kept_model_is_refused_and_replaced_only_when_asked(trained_run, tmp_path, capsys):
    """best.safetensors and metrics.jsonl without last.ckpt (a model kept from a run): a new run there would
    replace it without a word. Refused, naming the folder, the files and --overwrite; with --overwrite the earlier
    files are deleted first, so no row of theirs mixes with the new run's. What a run killed before its first
    checkpoint leaves (the lock, a torn temporary file, an empty metrics.jsonl) is no run: the same command
    starts again there."""
    out = tmp_path / "killed"
    out.mkdir()
    (out / ".lock").write_text("12345")
    (out / ".last.ckpt.12345.tmp").write_bytes(b"torn")
    (out / "metrics.jsonl").write_bytes(b"")
    assert train.main(FAST + ["--epochs", "1", "--max-steps", "1", "--output", str(out)]) == 0
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in ("best.safetensors", "metrics.jsonl"):
        shutil.copy(trained_run.out / name, kept / name)
    model = (kept / "best.safetensors").read_bytes()
    capsys.readouterr()
    assert train.main(FAST + ["--epochs", "1", "--output", str(kept)]) == 2
    assert f"{kept} already holds a training run (best.safetensors, metrics.jsonl) with no last.ckpt to continue " \
           "from: start again there with --overwrite (which deletes them), or pick another --output" \
        in capsys.readouterr().err
    assert (kept / "best.safetensors").read_bytes() == model
    assert train.main(FAST + ["--epochs", "1", "--overwrite", "--output", str(kept)]) == 0
    assert [r["epoch"] for r in rows(kept)] == [1] and (kept / "best.safetensors").read_bytes() != model


def test_resume_into_another_folder_copies_the_run_there_and_leaves_the_source(tmp_path, capsys, monkeypatch):
    """--resume A --output B: B must hold no run; A's run files are copied into B (one line says so), the run
    goes on in B and nothing is written in A. A torchrun restart of the same command goes on in B. B's own run
    is never replaced by A's."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert train.main(FAST + ["--epochs", "2", "--max-steps", "30", "--output", str(a)]) == 0
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    capsys.readouterr()
    assert train.main(["--resume", str(a), "--output", str(b), "--max-steps", "35"]) == 0
    printed = capsys.readouterr().out
    assert "resume: copied last.ckpt, best.safetensors, metrics.jsonl" in printed
    assert f"from {a} to {b}; the run continues there and {a} is left as it was" in printed
    assert ckpt(b)["state"]["step"] == 35
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert train.main(["--resume", str(a), "--output", str(b), "--max-steps", "0"]) == 0
    assert f"torchrun restart 1: continuing the run in {b}" in capsys.readouterr().out
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert ckpt(b)["state"]["step"] == 44 and [r["epoch"] for r in rows(b)] == [1, 2]
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before
    own = (b / "last.ckpt").read_bytes()
    assert train.main(["--resume", str(a), "--output", str(b)]) == 2
    assert f"{b} already holds a training run (last.ckpt, best.safetensors, metrics.jsonl, curves.png): continue " \
           f"it with --resume {b}" in capsys.readouterr().err
    assert (b / "last.ckpt").read_bytes() == own
    assert train.main(["--resume", str(a), "--overwrite"]) == 2
    assert f"--overwrite starts a new run, --resume {a} continues the one there" in capsys.readouterr().err


def test_the_summary_names_only_the_files_there(trained_run, tmp_path, capsys):
    """A finished run resumed after its best.safetensors was moved away: the summary does not promise it, and
    points evaluate.py at last.ckpt."""
    out = tmp_path / "run"
    shutil.copytree(trained_run.out, out)
    (out / "best.safetensors").unlink()
    assert train.main(["--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"outputs in {out}/: last.ckpt, metrics.jsonl, curves.png\n" in printed
    assert "best.safetensors" not in printed and f"evaluate with: python evaluate.py {out / 'last.ckpt'}" in printed


def test_a_run_file_planted_as_a_link_is_refused(tmp_path, capsys):
    """A metrics.jsonl linked to another file: never appended to through the link, even with --overwrite."""
    target = tmp_path / "precious"
    target.write_text("keep\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to(target)
    for more in ([], ["--overwrite"]):
        assert train.main(FAST + ["--epochs", "1", "--max-steps", "1", "--output", str(out), *more]) == 2
        assert f"{out / 'metrics.jsonl'} is a symbolic link" in capsys.readouterr().err
    assert target.read_text() == "keep\n"


def test_non_finite_loss_keeps_last_good_checkpoint(capsys, tmp_path):
    """A learning rate of 1e30 blows the weights up after one step; the loss of step 2 is not finite."""
    out = tmp_path / "run"
    err = train_fails(capsys, "--output", out, "--lr", "1e30", "--clip-grad", "0", "--save-every", "1", code=1)
    assert "non-finite loss (nan) at step 2" in err and "lr 9.05e+29" in err  # the cosine schedule after one step
    assert ckpt(out)["state"]["step"] == 1  # the last good state, loadable


def test_unwritable_output(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = train_fails(capsys, "--output", blocker / "run")
    assert f"cannot write to the output folder {blocker / 'run'}" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders anyway")
def test_read_only_output(capsys, tmp_path):
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    err = train_fails(capsys, "--output", out)
    assert f"cannot write to the output folder {out}" in err


def test_a_read_only_output_is_refused_before_the_work(capsys, read_only_folder):
    """A real read-only filesystem (root writes through permissions, not through a read-only mount)."""
    err = train_fails(capsys, "--output", read_only_folder)
    assert f"cannot write to the output folder {read_only_folder}: Read-only file system" in err
    assert "Traceback" not in err and not list(read_only_folder.iterdir())


def test_a_refused_run_leaves_no_output_folder_behind(capsys, tmp_path):
    """A run refused after its folder was made (the data, the model's flags) removes the folders it made; a
    folder that was there stays."""
    out = tmp_path / "new" / "run"
    assert "--lora-rank 1000000 is more than" in train_fails(capsys, "--lora-rank", "1000000", "--output", out)
    assert not (tmp_path / "new").exists()
    err = train_fails(capsys, "--dataset", "folder", "--data-dir", tmp_path / "no-data", "--output", out)
    assert "does not exist" in err and not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    train_fails(capsys, "--lora-rank", "1000000", "--output", tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()


def test_flag_values_a_run_cannot_use_name_the_flag(capsys, tmp_path):
    for flag, value, match in [("--warmup-lr", "-0.05", "--warmup-lr must be >= 0, got -0.05"),
                               ("--min-lr", "-0.001", "--min-lr must be >= 0, got -0.001"),
                               ("--val-size", "-1", "--val-size must be >= 0, got -1.0"),
                               ("--val-size", "inf", "--val-size must be a finite number, got inf"),
                               ("--freeze", "²", "--freeze '²': give 'backbone' (the head alone trains) or a block count from 1"),
                               ("--freeze", "9" * 5000, "give 'backbone' (the head alone trains) or a block count from 1")]:
        assert match in train_fails(capsys, flag, value, "--output", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_disk_full_on_fsync(capsys, monkeypatch, tmp_path):
    """ENOSPC as fsync reports it (delayed allocation: the write succeeds, the flush fails). The previous
    last.ckpt stays, and the temporary file is removed."""
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(train.os, "fsync", no_space)
    out = tmp_path / "run"
    err = train_fails(capsys, "--output", out)
    assert f"cannot write {out}" in err and "No space left on device" in err
    assert not list(out.glob(".*.tmp")), "the temporary file was left behind"


def test_disk_full(capsys, tiny_tmpfs):
    """A real ENOSPC: last.ckpt (3.7 MB for this model) does not fit in 2 MiB."""
    out = tiny_tmpfs / "run"
    err = train_fails(capsys, "--output", out, "--save-every", "2")
    assert f"cannot write {out / 'last.ckpt'} (" in err and "MB free there): the write was cut short" in err
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------------------
# Gradient checkpointing, pushing to the hub, training from Python


def test_grad_checkpointing_gives_the_gradients_of_a_plain_step():
    """--grad-checkpointing reaches the model built for the run; its blocks are recomputed in the backward pass
    with the same random drop-path draws, so a step's gradients equal the plain step's (a tiny model)."""
    from vit.builders import build_model
    from vit.recipes import TrainConfig

    _, given = train.parse_args(["--grad-checkpointing", "--drop-path", "0.2"])
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        model = build_model(TrainConfig.from_dict({**given, "grad_checkpointing": on}), 10, 1)
        assert model.grad_checkpointing is on
        torch.manual_seed(1)
        model(torch.randn(4, 1, 8, 8)).logsumexp(-1).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_push_to_hub_uploads_the_best_weights_or_says_how_to_push_again(hub, tmp_path, capsys, monkeypatch):
    """--push-to-hub after a 1-epoch run: a hub that refuses the upload ends the run with exit 2 and a command
    that pushes best.safetensors again; that command, with the hub answering, uploads timm's folder."""
    from huggingface_hub import HfApi

    def unreachable(self, **kwargs):
        raise OSError("no route to host")

    upload = HfApi.upload_folder
    monkeypatch.setattr(HfApi, "upload_folder", unreachable)
    out = tmp_path / "run"
    assert train.main(FAST + ["--epochs", "1", "--push-to-hub", "me/digits", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot push to hf-hub:me/digits: OSError: no route to host" in err and "Traceback" not in err
    again = err.split("push its weights again with: python -c ")[1].strip()
    monkeypatch.setattr(HfApi, "upload_folder", upload)
    exec(again.strip('"'), {})
    repo = hub.root / "me" / "digits"
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    best = vit.create_model(pretrained=out / "best.safetensors").eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(vit.create_model(pretrained=repo).eval()(x), best(x))
    assert train.main(FAST + ["--epochs", "1", "--push-to-hub", "me/again", "--output", str(tmp_path / "b")]) == 0
    top1 = rows(tmp_path / "b")[-1]["val_top1"]
    assert hub.commits[-1] == ("me/again", f"vit_nano_patch2_8 on digits: val top-1 {top1:.2f}%")
    assert "pushed best.safetensors to hf-hub:me/again: https://hub.test/me/again/commit/2" in capsys.readouterr().out
    err = train_fails(capsys, "--push-to-hub", "me/two words", "--output", tmp_path / "c")
    assert "--push-to-hub 'me/two words': a hub repo name, ORG/NAME" in err


def readme_example(heading: str) -> str:
    """The first ```python block under README.md's `heading`."""
    section = (ROOT / "README.md").read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readmes_train_from_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(readme_example("Train from Python"), {})
    printed = capsys.readouterr().out
    assert "val top-1" in printed and (tmp_path / "runs" / "digits-1-epoch" / "best.safetensors").is_file()


# --------------------------------------------------------------------------------------------------------
# Bad inputs: flags, weights, checkpoints to resume, image folders


def test_unknown_flag_model_or_value(capsys, tmp_path):
    for argv, says in [(["--epochz", "3"], "unrecognized arguments: --epochz"),  # argparse: usage, exit 2
                       (["--precision", "fp8"], "invalid choice: 'fp8'"),
                       (["--recipe", "imagenet-full"], "invalid choice: 'imagenet-full'")]:
        with pytest.raises(SystemExit) as e:
            train.main(argv)
        assert e.value.code == 2 and says in capsys.readouterr().err
    err = train_fails(capsys, "--model", "vit_nano_patch3_8", "--output", tmp_path / "a")
    assert "unknown model 'vit_nano_patch3_8'" in err
    for i, (flag, value, match) in enumerate([
        ("--batch-size", "0", "--batch-size must be >= 1"),
        ("--lr", "nan", "--lr must be a finite number, got nan"),
        ("--beta2", "1.5", "--beta2 must be in [0, 1), got 1.5"),
        ("--img-size", "7", "img_size (7, 7) is not divisible by patch_size (2, 2)"),
        ("--batch-size", "5000", "--batch-size 5000 is larger than the training set"),  # no full batch
        ("--seed", str(2**63), "--seed must be below 2**63"),
        ("--threads", "100000", "--threads 100000: at most 4096"),
        ("--device", "meta", "--device 'meta': vit trains and evaluates on cpu or cuda"),
        ("--patch-drop-end", "1", "--patch-drop-end must be in [0, 1), or -1 for --patch-drop throughout, got 1.0"),
        ("--patch-drop-end", "0.2 --compile", "--patch-drop-end with --compile"),
        ("--eval-shift", "-1", "--eval-shift must be >= 0, got -1"),
        ("--eval-shift", "8", "--eval-shift 8 moves a 8x8 image out of view"),
    ]):
        err = train_fails(capsys, flag, *value.split(), "--output", tmp_path / f"b{i}")
        assert match in err


@pytest.mark.parametrize("case, match", [
    ("truncated_pt", "is not a readable PyTorch checkpoint"),
    ("text", "is not a readable PyTorch checkpoint"),
    ("evil", "never unpickles arbitrary code"),
    ("other_arch", "pos_embed: expected shape"),
])
def test_bad_pretrained(weight_files, capsys, tmp_path, case, match):
    err = train_fails(capsys, "--pretrained", weight_files[case], "--output", tmp_path / "out")
    assert match in err and str(weight_files[case]) in err
    assert_no_code_ran(weight_files)


@pytest.mark.parametrize("case", ["truncated", "zero", "text", "evil", "weights-only"])
def test_bad_resume_checkpoint(weight_files, trained_run, capsys, tmp_path, case):
    out = tmp_path / "run"
    out.mkdir()
    ckpt_path = out / "last.ckpt"
    if case == "truncated":
        data = (trained_run.out / "last.ckpt").read_bytes()
        ckpt_path.write_bytes(data[: len(data) // 2])
    elif case == "zero":
        ckpt_path.write_bytes(b"")
    elif case == "text":
        ckpt_path.write_text("not a checkpoint")
    elif case == "evil":
        shutil.copy(weight_files["evil_zip"], ckpt_path)
    else:
        shutil.copy(weight_files["good_pt"], ckpt_path)
    err = train_fails(capsys, "--resume", out)
    assert f"{ckpt_path}" in err
    assert ("is not a train.py checkpoint" if case == "weights-only" else "cannot load") in err
    assert "weights_only=False" not in err  # never the advice to unpickle what was refused
    if case == "evil":
        assert "never runs code from a file" in err
    assert_no_code_ran(weight_files)


@pytest.mark.parametrize("entry, value, match", [
    ("config.epochs", "3", "its saved training config: --epochs must be an int, got '3'"),
    ("config.compile", "yes", "its saved training config: --compile must be a bool, got 'yes'"),
    ("config.label_smoothing", 2.0, r"its saved training config: --label-smoothing must be in [0, 1], got 2.0"),
    ("config.bogus", 1, "its saved training config: unknown training option(s) ['bogus']"),
    ("state.batch", -1, "state.batch is -1, expected a finite number >= 0"),
])
def test_resume_from_a_crafted_checkpoint(trained_run, capsys, tmp_path, entry, value, match):
    """last.ckpt's entries are a file's values: each wrong type or range is one line naming the file."""
    out = tmp_path / "run"
    shutil.copytree(trained_run.out, out)
    saved = ckpt(out)
    part, key = entry.split(".")
    saved[part][key] = value
    torch.save(saved, out / "last.ckpt")
    err = train_fails(capsys, "--resume", out)
    assert f"{out / 'last.ckpt'}" in err and match in err, err


@pytest.mark.parametrize("flag, value, match", [
    ("--model", "vit_nano_patch4_28", "shape mismatch for pos_embed"),
    ("--img-size", "16", "shape mismatch for pos_embed: the model expects (1, 65, 64)"),
    ("--layer-decay", "0.5", "different number of parameter groups"),
])
def test_resume_into_another_architecture(trained_run, capsys, tmp_path, flag, value, match):
    out = tmp_path / "run"
    shutil.copytree(trained_run.out, out)
    err = train_fails(capsys, "--resume", out, flag, value)
    assert f"{out / 'last.ckpt'} cannot be resumed with this run's settings" in err and match in err


def test_resume_without_checkpoint(capsys, tmp_path):
    err = train_fails(capsys, "--resume", tmp_path)
    assert f"no last.ckpt in {tmp_path}" in err


@pytest.mark.parametrize("bad", ["corrupt.jpg", "zero.png"])
def test_unreadable_images(capsys, caplog, tmp_path, bad):
    root = digit_folder(tmp_path / "data", per_class=6)
    path = root / "0" / bad
    corrupt_jpeg(path) if bad.endswith(".jpg") else path.write_bytes(b"")
    err = train_fails(capsys, *folder_args(root, tmp_path / "a", "--on-corrupt", "error"))
    assert f"cannot read image {path}" in err
    with caplog.at_level(logging.WARNING):  # the default: skip, with a count in the log
        assert train.main([*FAST, "--epochs", "1", *folder_args(root, tmp_path / "b")]) == 0
    assert "skipped 1 unreadable image(s)" in caplog.text and str(path) in caplog.text


def test_unreadable_image_in_a_worker(capsys, tmp_path):
    """--on-corrupt error in a DataLoader worker: one line naming the file, not the worker's traceback."""
    root = digit_folder(tmp_path / "data", per_class=6)
    (root / "1" / "torn.png").write_bytes(b"\x89PNG\r\n")
    err = train_fails(capsys, *folder_args(root, tmp_path / "a", "--on-corrupt", "error", "--data-mode", "loader",
                                           "--workers", "1"))
    assert err.count("\n") == 1 and f"error: cannot read image {root / '1' / 'torn.png'}" in err, err


def test_no_readable_image_at_all(capsys, tmp_path):
    """Skipping every image would leave an empty dataset: an error, not an empty batch."""
    err = train_fails(capsys, *folder_args(unreadable_folder(tmp_path / "data"), tmp_path / "a"))
    assert "no readable images among" in err


def test_folder_layout_errors(capsys, caplog, tmp_path):
    root = digit_folder(tmp_path / "data", per_class=6)
    (root / "2").mkdir()
    err = train_fails(capsys, *folder_args(root, tmp_path / "a"))
    assert f"class folder {root / '2'} holds no images" in err
    (root / "2").rmdir()
    shutil.rmtree(root / "1")
    err = train_fails(capsys, *folder_args(root, tmp_path / "b"))
    assert "has 1 class folder(s) ['0']; classification needs at least 2" in err
    digit_folder(root, classes=("1",), per_class=6)
    (root / "1" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        assert train.main([*FAST, "--epochs", "1", *folder_args(root, tmp_path / "c")]) == 0
    assert "ignored 1 file(s) without an image extension" in caplog.text


def test_train_and_val_folders_with_other_classes(capsys, tmp_path):
    """A train/ and val/ tree whose class folders differ is an error (a pretrained model's other classes are
    not: it gets a fresh head, test_finetune_recipe_from_local_weights)."""
    root = tmp_path / "data"
    digit_folder(root / "train", per_class=6)
    digit_folder(root / "val", classes=("0", "7"), per_class=2)
    err = train_fails(capsys, *folder_args(root, tmp_path / "a"))
    assert f"{root / 'val'} has classes ['0', '7'], {root / 'train'} has ['0', '1']" in err


def test_images_of_any_size_and_mode(tmp_path):
    """Image size and channel count are train.py's job, not the user's: RGB, grey and odd sizes are all
    converted to what the model expects (documented)."""
    root = mixed_folder(tmp_path / "data")
    assert train.main([*FAST, "--epochs", "1", *folder_args(root, tmp_path / "run")]) == 0


# --------------------------------------------------------------------------------------------------------
# DDP


@pytest.mark.parametrize("opt", ["sgd", pytest.param("adamw", marks=pytest.mark.slow)])
def test_ddp_two_gloo_processes_equal_one_process(opt, tmp_path):
    """2 ranks with per-rank batch B/2 give the same weights after a few steps as 1 process with batch B.

    DDP averages the ranks' mean gradients, another summation order than one batch's mean, so gradients
    agree to fp32 rounding; SGD keeps that rounding at rounding size (asserted: 1e-6). AdamW's first steps
    are ~lr * g / (|g| + eps): for entries with |g| near eps (e.g. the attention key bias, whose gradient
    is zero in exact arithmetic) a rounding-sized change of g moves the update by a fair fraction of lr, so
    AdamW is held to a mean difference of 1e-7 and a maximum of a tenth of the 3 steps' lr.
    """
    common = [*FAST, "--epochs", "1", "--max-steps", "3", "--deterministic", "--hflip", "0.5", "--crop-pad", "1"]
    args = common + (["--opt", "sgd", "--lr", "0.05"] if opt == "sgd" else ["--opt", "adamw", "--lr", "2e-3"])
    with ThreadPoolExecutor(1) as pool:  # the torchrun job runs while the one-process run runs here
        two_ranks = pool.submit(subprocess.run, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                                 "--standalone", "train.py", *args, "--output", str(tmp_path / "two")],
                                cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        assert train.main(args + ["--output", str(tmp_path / "one")]) == 0
        two = two_ranks.result()
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("on digits:") == 1 and two.stdout.count("Continue with") == 1  # rank 0 logs
    one, two = ckpt(tmp_path / "one")["model"], ckpt(tmp_path / "two")["model"]
    if opt == "adamw":
        diffs = torch.cat([(v - two[k]).abs().flatten() for k, v in one.items()])
        assert diffs.mean() < 1e-7 and diffs.max() < 0.1 * 3 * 2e-3
        return
    for k, v in one.items():
        torch.testing.assert_close(v, two[k], rtol=0, atol=1e-6, msg=k)
    # Teeth: another seed (other initial weights and batches) ends far beyond the 1e-6 tolerance.
    assert train.main(args + ["--seed", "1", "--output", str(tmp_path / "other")]) == 0
    other = ckpt(tmp_path / "other")["model"]
    assert max((v - other[k]).abs().max() for k, v in one.items()) > 1e-3


def test_wrap_ddp_makes_batchnorm_sync_on_cuda_only(monkeypatch):
    """SyncBatchNorm runs on GPUs: a conv stem's BatchNorms become SyncBatchNorm for CUDA, with the same parameters
    and state-dict names; on CPU (gloo) they stay. DDP itself stands in here: it needs a process group."""
    from vit.distributed import wrap_ddp

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda module, device_ids: module)
    for device, kind in (("cpu", torch.nn.BatchNorm2d), ("cuda", torch.nn.SyncBatchNorm)):
        model = vit.create_model("vit_nano_patch4_32", stem="conv", depth=1)
        names, weight = list(model.state_dict()), model.patch_embed.backbone[0].bn.weight
        wrapped = wrap_ddp(model, torch.device(device))
        bn = wrapped.patch_embed.backbone[0].bn
        assert type(bn) is kind and bn.weight is weight and list(wrapped.state_dict()) == names


@pytest.mark.slow
def test_a_rank_that_loses_its_peer_says_so_in_one_line(tmp_path):
    """2 gloo ranks; rank 1 SIGKILLed once training runs: rank 0's collective fails, and it prints one line
    (what torchrun --max-restarts then restarts from), not gloo's traceback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *FAST, "--epochs", "100", "--save-every", "1", "--output", str(out)]
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        deadline = time.monotonic() + 300
        while not (out / "last.ckpt").exists():  # rank 0 saves after each step: both are training
            assert time.monotonic() < deadline and ranks[0].poll() is None, ranks[0].communicate()
            time.sleep(0.1)
        ranks[1].kill()
        _, err = ranks[0].communicate(timeout=120)
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
    assert ranks[0].returncode == 1, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: rank 0 lost another rank of the job (") and line.endswith(
        "); torchrun --max-restarts restarts the job from last.ckpt"), err


def test_a_failed_collective_is_a_lost_rank_told_in_one_line(tmp_path, capsys, monkeypatch):
    """In a job of several ranks, a RuntimeError where the ranks exchange data (gloo's "Connection reset by peer")
    is another rank gone: RankLostError, which train.py prints as one line, exit 1 (the real thing, two processes:
    test_a_rank_that_loses_its_peer_says_so_in_one_line). One process, out-of-memory: as they are."""
    from vit.distributed import Dist, collective
    from vit.errors import RankLostError

    with pytest.raises(RankLostError, match=r"^rank 1 lost another rank of the job \(\[pair.cc:545\] Read error: "
                                            r"Connection reset by peer\); torchrun --max-restarts restarts the job "
                                            r"from last.ckpt$"):
        with collective(Dist(rank=1, world=2)):
            raise RuntimeError("[pair.cc:545] Read error: Connection reset by peer\nmore of gloo's text")
    for d, e in [(Dist(), RuntimeError("one process")), (Dist(1, 2), torch.OutOfMemoryError("out of memory"))]:
        with pytest.raises(type(e)) as raised, collective(d):
            raise e
        assert raised.value is e

    def peer_gone(tr, st, x, y):
        with collective(Dist(0, 2)):
            raise RuntimeError("Connection reset by peer")

    monkeypatch.setattr(train, "train_step", peer_gone)
    assert train.main([*FAST, "--epochs", "1", "--output", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == ("error: rank 0 lost another rank of the job (Connection reset by peer); "
                                       "torchrun --max-restarts restarts the job from last.ckpt\n")


# --------------------------------------------------------------------------------------------------------
# torchrun: a lost rank (SIGKILL to one worker) and a preemption (SIGTERM to torchrun, which passes it to every
# rank), each against an uninterrupted 2-rank job (benchmarks/kill_resume.py --elastic's code)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> "kr.Reference":
    """The uninterrupted job: 2 gloo ranks under torchrun --max-restarts 2, 2 epochs of 11 steps, --deterministic,
    a last.ckpt after every step."""
    return kr.reference_run(tmp_path_factory.mktemp("elastic") / "reference", kr.run_args(epochs=2), elastic=True)


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_bit_identically(two_ranks, tmp_path):
    """A worker (rank drawn from the seed) SIGKILLed after the 6th of 22 checkpoints: torchrun stops the other,
    starts both again, train.py resumes from last.ckpt by itself, and the job ends bit-identical to the
    uninterrupted one, with exit 0 and nothing done by hand."""
    out = tmp_path / "run"
    killed = kr.interrupt(out, two_ranks, random.Random(SEED), after_save=6)
    assert killed.at_s < math.inf, "the job ended before the kill"
    assert killed.exit_code == 0, killed.log
    assert "torchrun restart 1: continuing the run in" in killed.log, killed.log
    assert 6 <= kr.restarted_from(killed.log) < 22, killed.log
    diffs, _ = kr.compare_runs(two_ranks.out, out)
    assert not diffs, diffs[:5]


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_on_every_rank_and_resumes_exactly(two_ranks, tmp_path):
    """A preemption: SIGTERM to torchrun reaches every rank; they stop at the same step, rank 0 saves, and the
    job resumed with --resume (under torchrun again) ends bit-identical to the uninterrupted one."""
    out = tmp_path / "run"
    stopped = kr.interrupt(out, two_ranks, random.Random(SEED), signal.SIGTERM, after_save=6)
    step = kr.ckpt_step(out)
    assert 6 <= step < 22, stopped.log
    assert f"stopped by signal SIGTERM at step {step}; last.ckpt saved. Continue with: torchrun --nproc_per_node 2 " \
           f"train.py --resume {out}" in stopped.log, stopped.log
    resumed = subprocess.run(kr.train_cmd(out, two_ranks.args, resume=True, elastic=True), cwd=ROOT, env=kr.ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed {out} at epoch {step // 11 + 1}, batch {step % 11}, step {step}" in resumed.stdout
    diffs, _ = kr.compare_runs(two_ranks.out, out)
    assert not diffs, diffs[:5]
