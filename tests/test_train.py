"""train.py end to end on small real data: outputs, resume, exact continuation, failure modes, DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vit
from vit import data as D
from vit import train as T
from vit.recipes import RECIPES, TrainConfig
from vit.runs import lock_output

from conftest import make_folder, make_idx_dir

ROOT = Path(__file__).resolve().parents[1]
# A few quick steps on digits: 1,438 train images / 64 = 22 steps an epoch.
FAST = ["--quiet", "--device", "cpu", "--precision", "fp32", "--batch-size", "64", "--warmup-epochs", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def ckpt(out: Path) -> dict:
    return torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)


def test_train_py_end_to_end_on_digits(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "train.py", *FAST, "--epochs", "3", "--output", str(out)], cwd=ROOT,
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"outputs in {out}" in p.stdout
    for name in ("last.ckpt", "best.safetensors", "metrics.jsonl", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    m = rows(out)
    assert [r["epoch"] for r in m] == [1, 2, 3]
    assert set(m[0]) >= {"train_loss", "val_loss", "val_top1", "lr", "images_per_s", "elapsed_s"}
    assert m[-1]["train_loss"] < m[0]["train_loss"] and m[-1]["val_loss"] < m[0]["val_loss"]
    c = ckpt(out)
    assert c["state"]["step"] == 66 and c["state"]["epoch"] == 3
    assert {"model", "optimizer", "scheduler", "ema", "scaler", "rng", "config"} <= set(c)
    # best.safetensors alone rebuilds the model, which scores the recorded best accuracy on the same split.
    model = vit.create_model(pretrained=str(out / "best.safetensors")).eval()
    assert model.class_names == [str(i) for i in range(10)]
    val = D.digits_split("val")
    pre = model.preprocess
    x = D.Normalize(pre.mean, pre.std, 1, (8, 8), torch.device("cpu"))(val.images)
    with torch.no_grad():
        top1 = 100.0 * (model(x).argmax(1) == val.labels).float().mean().item()
    assert top1 == pytest.approx(max(r["val_top1"] for r in m), abs=1e-3)


@pytest.mark.parametrize("opt", ["adamw", "muon"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, opt):
    args = FAST + ["--epochs", "2", "--deterministic", "--ema-decay", "0.9", "--drop-path", "0.1", "--crop-pad", "1",
                   "--reprob", "0.25", "--opt", opt]
    assert T.main(args + ["--output", str(tmp_path / "full")]) == 0
    # Stop mid-epoch 1 (step 30 of 44), then resume: the schedule still spans 2 epochs.
    assert T.main(args + ["--output", str(tmp_path / "cut"), "--max-steps", "30"]) == 0
    assert ckpt(tmp_path / "cut")["state"]["step"] == 30 and ckpt(tmp_path / "cut")["state"]["batch"] == 8
    assert T.main(["--resume", str(tmp_path / "cut"), "--max-steps", "0"]) == 0
    full, cut = ckpt(tmp_path / "full"), ckpt(tmp_path / "cut")
    assert cut["state"]["step"] == full["state"]["step"] == 44
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k]), k
    for k in full["ema"]:
        assert torch.equal(full["ema"][k], cut["ema"][k]), k
    assert rows(tmp_path / "full") == [{**r, "elapsed_s": a["elapsed_s"], "images_per_s": a["images_per_s"]}
                                       for r, a in zip(rows(tmp_path / "cut"), rows(tmp_path / "full"))]


def test_budgeted_run_ends_inside_its_budget_and_resumes_its_plan_exactly(tmp_path):
    """--budget times the first steps and fixes the step count: the run ends inside its budget (+5%). Its plan is
    saved in last.ckpt: stopped and resumed, the run ends exactly as one given that many --steps from the start
    (--no-replan: the plan alone decides; warm-up covers the timed steps, whose lr the length does not set)."""
    args = FAST + ["--deterministic", "--warmup-epochs", "1", "--ema-decay", "0.9",
                   "--randaug", "rand-m9-mstd0.5-inc1", "--repeat-aug", "2"]
    assert T.main(args + ["--budget", "6s", "--output", str(tmp_path / "whole")]) == 0
    whole = ckpt(tmp_path / "whole")
    assert whole["state"]["step"] == whole["budget"]["total_steps"] > 30
    assert 0.6 * 6 < whole["budget"]["spent_s"] <= 1.05 * 6, whole["budget"]

    cut = tmp_path / "cut"
    assert T.main(args + ["--no-replan", "--budget", "5s", "--output", str(cut), "--max-steps", "20"]) == 0
    total = ckpt(cut)["budget"]["total_steps"]
    assert total > 20 and ckpt(cut)["state"]["step"] == 20
    assert T.main(["--resume", str(cut), "--max-steps", "0"]) == 0
    resumed = ckpt(cut)
    assert resumed["state"]["step"] == resumed["budget"]["total_steps"] == total
    assert T.main(args + ["--steps", str(total), "--output", str(tmp_path / "fixed")]) == 0
    fixed = ckpt(tmp_path / "fixed")
    for k in fixed["model"]:
        assert torch.equal(fixed["model"][k], resumed["model"][k]), k
    assert T.main(FAST + ["--budget", "1m", "--epochs", "3", "--output", str(tmp_path / "both")]) == 2


@pytest.mark.parametrize("flags, says", [
    (["--workers", "2"], "--workers has no effect when the images are read in memory"),
    (["--data-mode", "loader"], "--data-mode loader reads image files from a folder"),
    (["--folder", "--crop-pad", "2"], "--crop-pad has no effect when the images are read through the DataLoader"),
    (["--folder", "--repeat-aug", "3"], "--repeat-aug has no effect"),
    (["--randaug", "augmix-m5"], "in-memory data takes RandAugment policies"),
    (["--randaug", "rand-m9-q2"], "unknown part 'q2'"),
])
def test_flags_without_effect_in_the_data_mode_are_refused(tmp_path, capsys, flags, says):
    if flags[0] == "--folder":
        make_folder(tmp_path / "imgs", per_class=2, size=16)
        flags = ["--dataset", "folder", "--data-dir", str(tmp_path / "imgs"), "--data-mode", "loader",
                 "--model", "vit_nano_patch4_32", "--workers", "0", "--batch-size", "2", *flags[1:]]
    assert T.main(FAST + ["--epochs", "1", "--output", str(tmp_path / "run"), *flags]) == 2
    assert says in capsys.readouterr().err


def test_memory_mode_random_erasing_reaches_the_batches(tmp_path):
    """--reprob in memory mode: timm's RandomErasing on the normalised batch changes what the model learns."""
    args = FAST + ["--epochs", "1", "--max-steps", "2", "--deterministic"]
    assert T.main(args + ["--output", str(tmp_path / "plain")]) == 0
    assert T.main(args + ["--reprob", "1", "--output", str(tmp_path / "erased")]) == 0
    plain, erased = ckpt(tmp_path / "plain")["model"], ckpt(tmp_path / "erased")["model"]
    assert not torch.equal(plain["patch_embed.proj.weight"], erased["patch_embed.proj.weight"])


def test_resume_continues_from_the_saved_step(tmp_path, capsys):
    out = tmp_path / "run"
    assert T.main(FAST + ["--epochs", "2", "--max-steps", "5", "--output", str(out)]) == 0
    assert ckpt(out)["state"]["step"] == 5
    assert T.main(["--resume", str(out), "--max-steps", "0", "--quiet"]) == 0
    assert "resumed" in capsys.readouterr().out
    assert ckpt(out)["state"]["step"] == 44 and [r["epoch"] for r in rows(out)] == [1, 2]


def test_output_folder_lock_and_existing_run(tmp_path, capsys):
    out = tmp_path / "run"
    held = lock_output(out, resume=False)  # as a running train.py holds it
    assert T.main(FAST + ["--epochs", "1", "--output", str(out)]) == 2
    assert "in use by another train.py" in capsys.readouterr().err
    held.close()
    assert T.main(FAST + ["--epochs", "1", "--max-steps", "2", "--output", str(out)]) == 0
    assert T.main(FAST + ["--epochs", "1", "--output", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_non_finite_loss_stops_naming_step_and_lr(tmp_path, capsys):
    out = tmp_path / "run"
    rc = T.main(FAST + ["--epochs", "1", "--lr", "1e30", "--clip-grad", "0", "--save-every", "1", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite loss" in err and "lr 9.95e+29" in err  # the cosine schedule after one step
    step = int(err.split("at step ")[1].split()[0])
    good = ckpt(out)  # the last good state, untouched by the bad step
    assert good["state"]["step"] == step - 1


def test_sigterm_saves_last_ckpt_and_resumes(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "train.py", *FAST, "--epochs", "200", "--output", str(out)], cwd=ROOT,
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "--resume" in stdout
    step = ckpt(out)["state"]["step"]
    assert step >= 22
    assert T.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert ckpt(out)["state"]["step"] == max(step, 44)


def test_unknown_flag_and_value_are_named(capsys):
    with pytest.raises(SystemExit):
        T.main(["--bogus-flag", "1"])
    assert "--bogus-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main(["--precision", "fp8"])
    assert "fp8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main(["--recipe", "imagenet-full"])
    assert "imagenet-full" in capsys.readouterr().err


def test_recipes_are_valid_and_documented():
    assert {"digits", "fashion-mnist", "cifar10", "imagenet-subset-finetune"} <= set(RECIPES)
    for r in RECIPES.values():
        cfg = r.config(data_dir="x")
        vit.get_entry(cfg.model)
        assert "Command" in r.doc and "Hardware" in r.doc and "Measured" in r.doc
    flags = T.build_parser().format_help()
    for name in TrainConfig.__dataclass_fields__:  # every hyperparameter is a flag
        assert "--" + name.replace("_", "-") in flags


def test_folder_and_idx_sources_train(tmp_path):
    make_folder(tmp_path / "imgs", per_class=8, size=16)
    for mode in ("memory", "loader"):
        out = tmp_path / mode
        assert T.main(FAST + ["--dataset", "folder", "--data-dir", str(tmp_path / "imgs"), "--data-mode", mode,
                              "--model", "vit_nano_patch4_32", "--img-size", "16", "--val-size", "6",
                              "--batch-size", "6", "--epochs", "1", "--output", str(out)]
                      + (["--workers", "0"] if mode == "loader" else [])) == 0
        assert rows(out)[0]["epoch"] == 1
    (tmp_path / "idx").mkdir()
    make_idx_dir(tmp_path / "idx", n_train=40, n_test=10)
    out = tmp_path / "idx-run"
    assert T.main(FAST + ["--recipe", "fashion-mnist", "--data-dir", str(tmp_path / "idx"), "--batch-size", "8",
                          "--epochs", "1", "--output", str(out)]) == 0
    assert vit.create_model(pretrained=str(out / "best.safetensors")).class_names[0] == "T-shirt/top"


def test_loader_path_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    """DataLoader workers with timm's random transforms: each sample is seeded from (seed, epoch, index), so
    a resumed run with 2 workers reads the same augmented batches as an uninterrupted run without workers."""
    make_folder(tmp_path / "imgs", per_class=8, size=20)
    args = FAST + ["--dataset", "folder", "--data-dir", str(tmp_path / "imgs"), "--data-mode", "loader",
                   "--model", "vit_nano_patch4_32", "--img-size", "16", "--val-size", "6", "--batch-size", "6",
                   "--epochs", "2", "--deterministic", "--hflip", "0.5", "--randaug", "rand-m9-mstd0.5-inc1",
                   "--reprob", "0.25", "--patch-drop", "0.25"]
    assert T.main(args + ["--workers", "0", "--output", str(tmp_path / "full")]) == 0
    assert T.main(args + ["--workers", "2", "--max-steps", "4", "--output", str(tmp_path / "cut")]) == 0
    assert T.main(["--resume", str(tmp_path / "cut"), "--max-steps", "0"]) == 0
    full, cut = ckpt(tmp_path / "full"), ckpt(tmp_path / "cut")
    assert cut["state"]["step"] == full["state"]["step"] == 6
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k]), k


def test_finetune_recipe_from_local_weights(tmp_path):
    """The imagenet-subset-finetune recipe's whole path on a tiny tree: pretrained weights from a file, a new
    head, position embeddings resized to a new image size, DataLoader workers with RandAugment and erasing,
    Mixup/CutMix, layer-wise lr decay and EMA."""
    src = vit.create_model("vit_nano_patch4_32", num_classes=7)
    vit.save_pretrained(src, tmp_path / "pre.safetensors")
    make_folder(tmp_path / "imgs", per_class=8, size=40)
    out = tmp_path / "ft"
    assert T.main(["--recipe", "imagenet-subset-finetune", "--quiet", "--device", "cpu", "--model", "vit_nano_patch4_32",
                   "--pretrained", str(tmp_path / "pre.safetensors"), "--img-size", "48", "--data-dir",
                   str(tmp_path / "imgs"), "--val-size", "6", "--batch-size", "6", "--epochs", "1", "--workers", "0",
                   "--output", str(out)]) == 0
    model = vit.create_model(pretrained=str(out / "best.safetensors"))
    assert model.num_classes == 3 and model.pos_embed.shape[1] == 1 + 12 * 12
    assert model.class_names == ["cat", "dog", "emu"]
    trained = dict(model.named_parameters())
    assert not torch.equal(trained["head.weight"][:3], src.head.weight[:3])  # a new head, trained
    assert "ema_val_top1" in rows(out)[0]


def test_cifar_recipe_with_mixup_trains(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    out = tmp_path / "run"
    assert T.main(FAST + ["--recipe", "cifar10", "--data-dir", str(root), "--batch-size", "10", "--epochs", "1",
                          "--img-size", "16", "--output", str(out)]) == 0
    assert "ema_val_top1" in rows(out)[0]


def test_ddp_two_gloo_processes_equal_one_process(tmp_path):
    """2 ranks with per-rank batch B/2 give the same weights after a few steps as 1 process with batch B.

    DDP averages the ranks' mean gradients, another summation order than one batch's mean, so gradients
    agree to fp32 rounding; SGD keeps that rounding at rounding size (asserted: 1e-6). AdamW's first steps
    are ~lr * g / (|g| + eps): for entries with |g| near eps (e.g. the attention key bias, whose gradient
    is zero in exact arithmetic) a rounding-sized change of g moves the update by a fair fraction of lr, so
    AdamW is held to a mean difference of 1e-7 and a maximum of a tenth of the 3 steps' lr.
    """
    common = [*FAST, "--epochs", "1", "--max-steps", "3", "--deterministic", "--hflip", "0.5", "--crop-pad", "1"]
    runs = {}
    for opt in ("sgd", "adamw"):
        args = common + ["--opt", opt, "--lr", "0.05" if opt == "sgd" else "2e-3"]
        two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                              "train.py", *args, "--output", str(tmp_path / f"two-{opt}")], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
        assert two.returncode == 0, two.stderr
        assert two.stdout.count("on digits:") == 1 and two.stdout.count("Continue with") == 1  # rank 0 logs
        assert T.main(args + ["--output", str(tmp_path / f"one-{opt}")]) == 0
        runs[opt] = ckpt(tmp_path / f"one-{opt}")["model"], ckpt(tmp_path / f"two-{opt}")["model"]
    one, two = runs["sgd"]
    for k, v in one.items():
        torch.testing.assert_close(v, two[k], rtol=0, atol=1e-6, msg=k)
    one, two = runs["adamw"]
    diffs = torch.cat([(v - two[k]).abs().flatten() for k, v in one.items()])
    assert diffs.mean() < 1e-7 and diffs.max() < 0.1 * 3 * 2e-3
    # Teeth: another seed (other initial weights and batches) ends far beyond the 1e-6 tolerance.
    assert T.main(common + ["--opt", "sgd", "--lr", "0.05", "--seed", "1", "--output", str(tmp_path / "other")]) == 0
    other = ckpt(tmp_path / "other")["model"]
    assert max((v - other[k]).abs().max() for k, v in runs["sgd"][0].items()) > 1e-3


@pytest.mark.slow
def test_no_argument_default_reaches_95_percent(tmp_path):
    """`python train.py` exactly as `make train` runs it (about 2 minutes on 2 cores)."""
    p = subprocess.run([sys.executable, str(ROOT / "train.py")], cwd=tmp_path, env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    out = Path(p.stdout.split("outputs in ")[1].split(":")[0])
    out = out if out.is_absolute() else tmp_path / out
    assert rows(out)[-1]["val_top1"] >= 95.0 and (out / "best.safetensors").exists()
