"""TensorBoard logging (vit/tensorboard.py), read back with tensorboard's own EventAccumulator; and train.py's
output when stdout is not a terminal (no progress bars, the summary still printed)."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vit import train

from conftest import ROOT

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData  # noqa: E402
from tensorboard.util.tensor_util import make_ndarray  # noqa: E402

# digits at batch 256: 5 steps an epoch
FAST = ["--device", "cpu", "--precision", "fp32", "--batch-size", "256", "--warmup-epochs", "0", "--deterministic"]


def events(folder: Path):
    """Everything in `folder`'s event files, as TensorBoard shows it (restart markers applied)."""
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def confusion_counts(acc) -> list[list[int]]:
    """The text table of the confusion matrix, parsed back into counts."""
    (text,) = acc.Tensors("val/confusion_matrix/text_summary")
    table = make_ndarray(text.tensor_proto).item().decode().splitlines()[2:]
    return [[int(v) for v in line.strip("|").split("|")[1:]] for line in table]


def test_a_run_logs_its_scalars_hyperparameters_confusion_matrix_and_rollouts(tmp_path, capsys):
    """Also: with its output captured (not a terminal), the run prints one line an epoch and its summary, and
    draws no progress bar."""
    out = tmp_path / "run"
    assert train.main(FAST + ["--epochs", "2", "--ema-decay", "0.9", "--tensorboard", "--output", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert printed.count("epoch   1/2  train loss") == 1 and printed.count("epoch   2/2  train loss") == 1
    assert "done in" in printed and "outputs in" in printed and "epoch 1/2:" not in err, err
    acc, m = events(out), rows(out)
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    # each step once, in order; each epoch's values as metrics.jsonl has them, at the epoch's last step
    assert [s for s, _ in scalars(acc, "loss/train_step")] == list(range(1, 11))
    for tag in ("lr", "speed/images_per_s"):
        assert [s for s, _ in scalars(acc, tag)] == list(range(1, 11)), tag
    for tag, key in [("loss/train", "train_loss"), ("loss/val", "val_loss"), ("top1/val", "val_top1"),
                     ("loss/ema_val", "ema_val_loss"), ("top1/ema_val", "ema_val_top1"), ("epoch", "epoch")]:
        assert [s for s, _ in scalars(acc, tag)] == [r["step"] for r in m], tag
        assert [v for _, v in scalars(acc, tag)] == pytest.approx([r[key] for r in m], rel=1e-6), tag
    step_losses = [v for _, v in scalars(acc, "loss/train_step")]
    assert sum(step_losses[:5]) / 5 == pytest.approx(m[0]["train_loss"], rel=1e-6)  # the epoch's mean
    assert scalars(acc, "speed/images_per_s")[-1][1] == pytest.approx(m[-1]["images_per_s"], rel=1e-6)
    epoch_s = [v for _, v in scalars(acc, "speed/epoch_s")]  # training and evaluation: elapsed_s's increments
    assert epoch_s == pytest.approx([m[0]["elapsed_s"], m[1]["elapsed_s"] - m[0]["elapsed_s"]], rel=1e-5)
    # the hyperparameters: every TrainConfig field, with its type
    (content,) = acc.PluginTagToContent("hparams").values()
    hp = HParamsPluginData.FromString(content).session_start_info.hparams
    saved = torch.load(out / "last.ckpt", weights_only=True)["config"]
    assert set(hp) == set(saved) | {"recipe"} and hp["recipe"].string_value == "digits"
    assert hp["model"].string_value == saved["model"] and hp["lr"].number_value == saved["lr"]
    assert hp["tensorboard"].bool_value is True and hp["epochs"].number_value == 2
    # the last evaluation's confusion matrix: its counts make the logged top-1, over the whole split
    counts = confusion_counts(acc)
    assert sum(map(sum, counts)) == 359 and len(counts) == 10
    assert 100 * sum(counts[i][i] for i in range(10)) / 359 == pytest.approx(m[-1]["val_top1"])
    images = {t: acc.Images(t) for t in acc.Tags()["images"]}
    assert set(images) == {"val/confusion_matrix"} | {f"attention_rollout/{i}" for i in range(4)}
    for tag, (img,) in images.items():
        assert img.step == 10
        with Image.open(io.BytesIO(img.encoded_image_string)) as im:
            assert im.format == "PNG" and (im.width, im.height) == (img.width, img.height) and im.width > 300, tag


def test_console_metrics_and_tensorboard_report_the_lr_each_step_trained_with(tmp_path, capsys, caplog):
    """A run its warm-up fills (1 epoch of 5 steps, --warmup-epochs 2: 4 warm-up steps, one of decay): step s
    trains at the schedule's value at s, the warm-up's last step at --lr and the run's last at --min-lr, and
    TensorBoard, metrics.jsonl and the epoch's printed line say so alike. timm's warning that a cosine of one
    step "will have no effect" stays out of the log."""
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert train.main(FAST + ["--epochs", "1", "--warmup-epochs", "2", "--lr", "2e-3", "--warmup-lr", "1e-6",
                                  "--min-lr", "1e-5", "--tensorboard", "--output", str(out)]) == 0
    assert "no effect" not in caplog.text, caplog.text
    lrs = scalars(events(out), "lr")
    warm = [1e-6 + (2e-3 - 1e-6) * s / 4 for s in (1, 2, 3)]
    assert lrs == [(s, pytest.approx(v, rel=1e-6)) for s, v in zip(range(1, 6), warm + [2e-3, 1e-5])]
    (row,) = rows(out)
    assert row["step"] == 5 and row["lr"] == pytest.approx(lrs[-1][1], rel=1e-6)
    assert "lr 1.00e-05" in capsys.readouterr().out


def test_a_resumed_run_shows_each_step_once(tmp_path):
    """Stopped at step 2, resumed to step 4, then that process killed before its checkpoint (last.ckpt put
    back to step 2's) and resumed to the end: TensorBoard drops the steps logged past the checkpoint, and shows
    each step once, with metrics.jsonl's values (which equal an uninterrupted run's: tests/test_train.py).
    --log-dir puts the events in LOG_DIR/<run folder name>."""
    logs, cut = tmp_path / "tb", tmp_path / "cut"
    args = FAST + ["--quiet", "--epochs", "1"]
    assert train.main(args + ["--output", str(cut), "--log-dir", str(logs), "--max-steps", "2"]) == 0
    at_step_2 = (cut / "last.ckpt").read_bytes()
    assert train.main(["--resume", str(cut), "--max-steps", "4"]) == 0
    (cut / "last.ckpt").write_bytes(at_step_2)
    assert train.main(["--resume", str(cut), "--max-steps", "0"]) == 0
    assert not list(cut.glob("events.out.tfevents.*")) and len(list((logs / "cut").glob("events.*"))) == 3
    acc, (row,) = events(logs / "cut"), rows(cut)
    for tag in ("loss/train_step", "lr", "speed/images_per_s"):
        assert [s for s, _ in scalars(acc, tag)] == [1, 2, 3, 4, 5], tag
    for tag, key in [("loss/train", "train_loss"), ("loss/val", "val_loss"), ("top1/val", "val_top1")]:
        assert scalars(acc, tag) == [(5, pytest.approx(row[key], rel=1e-6))], tag
    assert sum(v for _, v in scalars(acc, "loss/train_step")) / 5 == pytest.approx(row["train_loss"], rel=1e-6)
    assert sum(map(sum, confusion_counts(acc))) == 359


def test_tensorboard_missing_or_unwritable_is_one_line_error(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert train.main(FAST + ["--quiet", "--epochs", "1", "--log-dir", str(blocker),
                              "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write TensorBoard events in ") and str(blocker) in err
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    assert train.main(FAST + ["--epochs", "1", "--tensorboard", "--output", str(tmp_path / "b")]) == 2
    assert "--tensorboard and --log-dir need the tensorboard package: pip install" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before anything was built or written


def test_progress_bars_on_a_terminal(tmp_path, capsys, monkeypatch):
    """The other side of the first test's check: on a terminal the bar is drawn (and --quiet hides it)."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert train.main(FAST + ["--epochs", "1", "--max-steps", "2", "--output", str(tmp_path / "a")]) == 0
    assert "epoch 1/1:" in capsys.readouterr().err
    assert train.main(FAST + ["--epochs", "1", "--max-steps", "2", "--quiet", "--output", str(tmp_path / "b")]) == 0
    assert "epoch 1/1:" not in capsys.readouterr().err


@pytest.mark.slow
def test_only_rank_0_writes_and_the_confusion_matrix_sums_every_rank(tmp_path):
    out = tmp_path / "two"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                          "train.py", *FAST, "--quiet", "--epochs", "1", "--tensorboard", "--output", str(out)],
                         cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    acc = events(out)
    counts = confusion_counts(acc)
    assert sum(map(sum, counts)) == 359  # each rank evaluated half of the split
    assert 100 * sum(counts[i][i] for i in range(10)) / 359 == pytest.approx(rows(out)[-1]["val_top1"])
