"""The top-level scripts as a user runs them: `python train.py`, `python evaluate.py` (and so the vit-train
and vit-eval wrappers, `raise SystemExit(main())`). Exit code 0 after work done, 2 with one line on stderr
after a bad input, never a traceback. What the scripts do is tested through their `main` in test_train.py
and test_evaluate.py.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from vit.data import digits_split

from conftest import NANO, ROOT, assert_no_code_ran

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_scripts(*argvs, cwd=ROOT, timeout=120) -> list[subprocess.CompletedProcess]:
    """Each argv as `python ARGV...`, all at once (the threads only wait on the processes)."""
    with ThreadPoolExecutor(len(argvs)) as pool:
        return list(pool.map(lambda argv: subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, env=ENV,
                                                         capture_output=True, text=True, timeout=timeout), argvs))


def test_exit_codes_and_no_traceback(trained_run, weight_files, tmp_path):
    image = tmp_path / "seven.png"
    Image.fromarray(digits_split("val").images[0, 0].numpy()).save(image)
    predicted, bad_weights, bad_checkpoint = run_scripts(
        ["evaluate.py", trained_run.out / "best.safetensors", "--predict", image],
        ["train.py", "--pretrained", weight_files["truncated_pt"], "--output", tmp_path / "t"],
        ["evaluate.py", weight_files["evil"], "--model", NANO, "--dataset", "digits"],
    )
    assert predicted.returncode == 0, predicted.stderr
    assert str(image) in predicted.stdout and "1. " in predicted.stdout
    for r, says in [(bad_weights, "is not a readable PyTorch checkpoint"), (bad_checkpoint, "never unpickles")]:
        assert r.returncode == 2, r.stderr
        assert says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert_no_code_ran(weight_files)


@pytest.mark.slow
def test_no_argument_default_reaches_95_percent(tmp_path):
    """`python train.py` exactly as `make train` runs it (about 2 minutes on 2 cores)."""
    p, = run_scripts([ROOT / "train.py"], cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    out = Path(p.stdout.split("outputs in ")[1].split(":")[0])
    out = out if out.is_absolute() else tmp_path / out
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_top1"] >= 95.0 and (out / "best.safetensors").exists()


def test_gpu_check_runs_its_steps_on_a_tiny_cpu_config(tmp_path):
    """benchmarks/gpu_check.py is run by hand on the day a GPU is lent: here its every step runs on the CPU
    with a tiny model, so that the script cannot rot unnoticed."""
    out = tmp_path / "check.json"
    (r,) = run_scripts(["benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", out], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert [s["name"] for s in report["steps"]] == ["tests that need CUDA", "throughput against timm",
                                                   "short training run"]
    assert {row["model"] for row in report["throughput"]} == {"ours-eager", "timm"}


@pytest.mark.slow
def test_loader_benchmark_runs_every_row_on_a_tiny_folder(tmp_path):
    """benchmarks/loader.py on 24 small JPEGs: each source, decoder, reader and worker count gives a figure."""
    pytest.importorskip("webdataset")
    pytest.importorskip("datasets")
    from conftest import make_folder

    make_folder(tmp_path / "jpegs", per_class=8, size=40)
    out = tmp_path / "loader.json"
    (r,) = run_scripts(["benchmarks/loader.py", "--data", tmp_path / "jpegs", "--images", "24", "--rounds", "1",
                        "--workers", "1", "--batch-size", "4", "--out", out], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert report["inputs"]["images"] == 24 and report["inputs"]["decoders_identical"] == 24
    rows = {(row["source"], row["decoder"], row["reader"]) for row in report["rows"]}
    assert rows == {("folder", "PIL", "train.py"), ("folder", "PIL", "timm")} | {
        (source, decoder, reader) for source, reader in [("folder", "Decoded"), ("WebDataset", "webdataset"),
                                                         ("parquet", "Decoded")] for decoder in ("PIL", "decode_jpeg")}
    assert all(row["median_img_per_s"] > 0 and row["median_img_per_cpu_s"] > 0 for row in report["rows"])


def test_convnet_teacher_learns_digits_and_saves_a_teacher(tmp_path):
    """benchmarks/convnet_teacher.py: a short run on digits that learns (held-out top-1 far above chance), writes
    one JSON row an epoch and a teacher file that vit.convnet loads and that scores as the run said."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("convnet_teacher", ROOT / "benchmarks" / "convnet_teacher.py")
    teacher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(teacher)
    out = tmp_path / "convnet.json"
    assert teacher.main(["--dataset", "digits", "--widths", "16,32,32", "--epochs", "8", "--batch-size", "64",
                         "--lr", "0.2", "--precision", "fp32", "--out", str(out),
                         "--save", str(tmp_path / "teacher.safetensors")]) == 0
    report = json.loads(out.read_text())
    assert [row["epoch"] for row in report["epochs"]] == list(range(1, 9))
    assert report["epochs"][-1]["val_top1"] > 80.0, report["epochs"]
    import torch

    from vit import data
    from vit.convnet import evaluate_convnet, load_convnet
    from vit.sources import load_dataset

    net = load_convnet(tmp_path / "teacher.safetensors")
    val = load_dataset("digits", "val", data_dir="", val_size=5000, data_mode="memory", img_size=32, channels=3)
    assert net.class_names == list(val.classes) and net.preprocess.input_size == tuple(val.images.shape[1:])
    p = net.preprocess
    normalize = data.Normalize(p.mean, p.std, channels=p.input_size[0], size=p.input_size[1:], device="cpu")
    assert evaluate_convnet(net, val, normalize, "fp32", torch.device("cpu")) == report["epochs"][-1]["val_top1"]


def test_plans_reads_the_model_epochs_and_teacher_of_a_plan(tmp_path):
    """benchmarks/plans.py on the digits recipe (plan-only runs of train.py): its longest schedule, 30 epochs of
    nano, ends early and trains no teacher; the same with a rung's teacher given on the command line reads the
    teacher's widths and epochs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("plans", ROOT / "benchmarks" / "plans.py")
    plans = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plans)
    row = plans.plan("digits", "10m", ["--device", "cpu"])
    assert (row["model"], row["epochs"], row["teacher"]) == ("vit_nano_patch2_8", 30.0, None)
    assert row["ends_min"] is not None and row["ends_min"] < 10
    row = plans.plan("digits", "10m", ["--device", "cpu", "--teacher-widths", "8,16", "--teacher-epochs", "2"])
    assert row["teacher"] == "convnet 8,16, 2 epochs" and row["model"] == "vit_nano_patch2_8"
