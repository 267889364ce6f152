"""The bad-input matrix, one module for every entry point: the model, the weight loader, train.py
and evaluate.py.

Each bad input must end in an error from `vit.errors` that names the problem and the file or argument (or a
logged skip where skipping is the documented behaviour), never a bare traceback from deep inside torch. The
README's "Troubleshooting" section lists the same matrix; keep the two in step.

train.py and evaluate.py are driven through their `main(argv)` in this process (the scripts are one-line
wrappers around it): an exception other than the documented exit would fail the test with its traceback.
`test_scripts_print_no_traceback` runs the real scripts once each as subprocesses.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vit
from vit import evaluate as vit_evaluate
from vit import train as vit_train

ROOT = Path(__file__).resolve().parent.parent
MODEL = "vit_nano_patch2_8"  # 8x8 grey digits model: 0.3M parameters
DIGITS = [str(i) for i in range(10)]
# The smallest real train.py run: one epoch of 6 steps on digits, fp32 on CPU.
TRAIN_ARGS = ["--epochs", "1", "--batch-size", "256", "--device", "cpu", "--precision", "fp32", "--quiet"]


def tiny_model(**overrides):
    return vit.create_model(MODEL, depth=1, **overrides).eval()


# --------------------------------------------------------------------------------------------------------
# Files the cases are made of


class Evil:
    """Unpickling this runs `touch MARKER`: a checkpoint carrying code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_image(path: Path, value: int = 128, size: int = 8, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def image_folder(root: Path, classes=("0", "1"), per_class: int = 10) -> Path:
    for c in classes:
        for i in range(per_class):
            write_image(root / c / f"{i}.png", value=i + 100 * int(c) if c.isdigit() else i)
    return root


def corrupt_jpeg(path: Path) -> Path:
    """A JPEG cut off after its header: PIL opens it, decoding fails."""
    write_image(path.with_suffix(".tmp.jpg"), size=32, mode="RGB")
    data = path.with_suffix(".tmp.jpg").read_bytes()
    path.with_suffix(".tmp.jpg").unlink()
    path.write_bytes(data[: len(data) // 3])
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and bad weight files next to each other."""
    d = tmp_path_factory.mktemp("weights")
    model = tiny_model()
    good = vit.save_pretrained(model, d / "good.safetensors", class_names=DIGITS)
    torch.save(model.state_dict(), d / "good.pt")
    out = {"good": good, "good_pt": d / "good.pt"}
    for name, src in (("truncated_safetensors", good), ("truncated_pt", d / "good.pt")):
        data = src.read_bytes()
        out[name] = d / f"truncated{src.suffix}"
        out[name].write_bytes(data[: len(data) // 2])
    for suffix in (".safetensors", ".pt", ".npz"):
        (d / f"zero{suffix}").write_bytes(b"")
        out[f"zero{suffix}"] = d / f"zero{suffix}"
    out["text"] = d / "notes.pt"
    out["text"].write_text("these are not the weights you are looking for\n")
    out["random"] = d / "random.bin"
    out["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["jpeg"] = write_image(d / "photo.jpg", mode="RGB").rename(d / "photo.pth")
    out["marker"] = d / "code-ran"
    with open(d / "evil.pt", "wb") as f:  # a plain pickle, as `pickle.dump` writes it
        pickle.dump({"model": Evil(out["marker"])}, f, protocol=2)
    with open(d / "evil5.pt", "wb") as f:  # protocol 5: refused before its import is even read
        pickle.dump({"model": Evil(out["marker"])}, f, protocol=5)
    torch.save({"model": model.state_dict(), "extra": Evil(out["marker"])}, d / "evil_zip.pt")  # torch's zip
    out["evil"], out["evil5"], out["evil_zip"] = d / "evil.pt", d / "evil5.pt", d / "evil_zip.pt"
    other = tiny_model(embed_dim=32, num_heads=2)  # another width
    out["other_arch"] = vit.save_pretrained(other, d / "other.safetensors")
    torch.save({**model.state_dict(), "epoch": "three"}, d / "non_tensor.pt")
    out["non_tensor"] = d / "non_tensor.pt"
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real train.py run folder (last.ckpt, best.safetensors), from the smallest run."""
    out = tmp_path_factory.mktemp("run") / "digits"
    assert vit_train.main([*TRAIN_ARGS, "--output", str(out)]) == 0
    return out


def assert_no_code_ran(files):
    assert not files["marker"].exists(), "unpickling the checkpoint ran its code"


# --------------------------------------------------------------------------------------------------------
# evaluate.py


def evaluate_fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        vit_evaluate.main([*map(str, argv), "--device", "cpu", "--no-progress", "--workers", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("case, match", [
    ("truncated_safetensors", "is not a readable safetensors file"),
    ("truncated_pt", "is not a readable PyTorch checkpoint"),
    ("zero.pt", "is not a readable PyTorch checkpoint"),
    ("text", "is not a readable PyTorch checkpoint"),
    ("evil", "never unpickles arbitrary code"),
    ("evil_zip", "never unpickles arbitrary code"),
    ("other_arch", "pos_embed: expected shape (1, 17, 64), got (1, 17, 32)"),
])
def test_evaluate_bad_checkpoints(files, capsys, case, match):
    err = evaluate_fails(capsys, files[case], "--model", MODEL, "--dataset", "digits")
    assert match in err and str(files[case]) in err
    assert_no_code_ran(files)


def test_evaluate_checkpoint_without_config_or_unknown_model(files, capsys, tmp_path):
    err = evaluate_fails(capsys, files["good_pt"], "--dataset", "digits")
    assert "carries no model config" in err and "--model" in err
    err = evaluate_fails(capsys, files["good"], "--model", "vit_nano_patch3_8", "--dataset", "digits")
    assert "unknown model 'vit_nano_patch3_8'" in err
    err = evaluate_fails(capsys, tmp_path / "missing.safetensors", "--dataset", "digits")
    assert "missing.safetensors" in err


def test_evaluate_data_classes_differ_from_the_checkpoint(files, capsys, tmp_path):
    root = image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=2)
    err = evaluate_fails(capsys, files["good"], "--data-dir", root, "--output", tmp_path / "out")
    assert "data classes ['cat', 'dog'] are not among the checkpoint's 10 classes" in err


@pytest.mark.parametrize("bad", ["corrupt.jpg", "zero.png"])
def test_evaluate_unreadable_images(files, capsys, caplog, tmp_path, bad):
    root = image_folder(tmp_path / "data", per_class=3)
    path = root / "1" / bad
    corrupt_jpeg(path) if bad.endswith(".jpg") else path.write_bytes(b"")
    # Default --on-corrupt error: the error names the file.
    err = evaluate_fails(capsys, files["good"], "--data-dir", root, "--output", tmp_path / "out")
    assert f"cannot read image {path}" in err
    # --on-corrupt skip: the documented, logged skip; the rest is evaluated.
    with caplog.at_level(logging.WARNING):
        vit_evaluate.main([str(files["good"]), "--data-dir", str(root), "--on-corrupt", "skip",
                           "--output", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    assert "skipped 1 unreadable image(s)" in caplog.text and str(path) in caplog.text


def test_scripts_take_images_of_any_size_and_mode(files, tmp_path):
    """Image size and channel count are the scripts' job, not the user's: RGB, grey and odd sizes are all
    converted to what the checkpoint expects (documented), for evaluation and training alike."""
    root = tmp_path / "data"
    for c in ("0", "1"):
        for i, (size, mode) in enumerate([(8, "L"), (13, "RGB"), (40, "RGB"), (5, "L")] * 2):
            write_image(root / c / f"{i}.png", value=i, size=size, mode=mode)
    vit_evaluate.main([str(files["good"]), "--data-dir", str(root), "--output", str(tmp_path / "eval"),
                       "--device", "cpu", "--no-progress"])
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_images"] == 16
    assert vit_train.main([*TRAIN_ARGS, *train_folder_args(root, tmp_path / "run")]) == 0


def test_evaluate_predict_corrupt_image(files, capsys, tmp_path):
    path = corrupt_jpeg(tmp_path / "photo.jpg")
    err = evaluate_fails(capsys, files["good"], "--predict", path)
    assert f"cannot read image {path}" in err


def test_evaluate_folder_layout_errors(files, capsys, caplog, tmp_path):
    root = image_folder(tmp_path / "data", per_class=2)
    (root / "1" / "README.txt").write_text("not an image")
    (root / "2").mkdir()
    err = evaluate_fails(capsys, files["good"], "--data-dir", root)
    assert f"class folder {root / '2'} holds no images" in err
    (root / "2").rmdir()
    with caplog.at_level(logging.WARNING):  # a non-image file in a class folder: ignored, with a warning
        vit_evaluate.main([str(files["good"]), "--data-dir", str(root), "--output", str(tmp_path / "out"),
                           "--device", "cpu", "--no-progress"])
    assert "ignored 1 file(s) without an image extension" in caplog.text


def test_evaluate_unwritable_output(files, capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = evaluate_fails(capsys, files["good"], "--dataset", "digits", "--output", blocker / "eval")
    assert f"cannot create output folder {blocker / 'eval'}" in err


# --------------------------------------------------------------------------------------------------------
# train.py


def train_fails(capsys, *argv, code=2) -> str:
    rc = vit_train.main([*TRAIN_ARGS, *map(str, argv)])
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    return err


def test_train_unknown_flag_model_or_value(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:  # argparse: usage and the flag, exit 2
        vit_train.main(["--epochz", "3"])
    assert e.value.code == 2 and "unrecognized arguments: --epochz" in capsys.readouterr().err
    err = train_fails(capsys, "--model", "vit_nano_patch3_8", "--output", tmp_path / "a")
    assert "unknown model 'vit_nano_patch3_8'" in err
    for i, (flag, value, match) in enumerate([
        ("--batch-size", "0", "--batch-size must be >= 1"),
        ("--lr", "nan", "--lr must be a finite number, got nan"),
        ("--beta2", "1.5", "--beta2 must be in [0, 1), got 1.5"),
        ("--img-size", "7", "img_size (7, 7) is not divisible by patch_size (2, 2)"),
        ("--batch-size", "5000", "--batch-size 5000 is larger than the training set"),  # no full batch
    ]):
        err = train_fails(capsys, flag, value, "--output", tmp_path / f"b{i}")
        assert match in err


@pytest.mark.parametrize("case, match", [
    ("truncated_pt", "is not a readable PyTorch checkpoint"),
    ("text", "is not a readable PyTorch checkpoint"),
    ("evil", "never unpickles arbitrary code"),
    ("other_arch", "pos_embed: expected shape"),
])
def test_train_bad_pretrained(files, capsys, tmp_path, case, match):
    err = train_fails(capsys, "--pretrained", files[case], "--output", tmp_path / "out")
    assert match in err and str(files[case]) in err
    assert_no_code_ran(files)


@pytest.mark.parametrize("case", ["truncated", "zero", "text", "evil", "weights-only"])
def test_train_bad_resume_checkpoint(files, run_dir, capsys, tmp_path, case):
    out = tmp_path / "run"
    out.mkdir()
    ckpt = out / "last.ckpt"
    if case == "truncated":
        data = (run_dir / "last.ckpt").read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])
    elif case == "zero":
        ckpt.write_bytes(b"")
    elif case == "text":
        ckpt.write_text("not a checkpoint")
    elif case == "evil":
        shutil.copy(files["evil_zip"], ckpt)
    else:
        shutil.copy(files["good_pt"], ckpt)
    err = train_fails(capsys, "--resume", out)
    assert f"{ckpt}" in err
    assert ("is not a train.py checkpoint" if case == "weights-only" else "cannot load") in err
    assert_no_code_ran(files)


@pytest.mark.parametrize("flag, value, match", [
    ("--model", "vit_nano_patch4_28", "shape mismatch for pos_embed"),
    ("--img-size", "16", "shape mismatch for pos_embed: the model expects (1, 65, 64)"),
    ("--layer-decay", "0.5", "different number of parameter groups"),
])
def test_train_resume_into_another_architecture(run_dir, capsys, tmp_path, flag, value, match):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    err = train_fails(capsys, "--resume", out, flag, value)
    assert f"{out / 'last.ckpt'} cannot be resumed with this run's settings" in err and match in err


def test_train_resume_without_checkpoint(capsys, tmp_path):
    err = train_fails(capsys, "--resume", tmp_path)
    assert f"no last.ckpt in {tmp_path}" in err


def train_folder_args(root: Path, out: Path, *more) -> list[str]:
    return ["--dataset", "folder", "--data-dir", str(root), "--img-size", "8", "--batch-size", "4",
            "--val-size", "4", "--max-steps", "1", "--output", str(out), *more]


@pytest.mark.parametrize("bad", ["corrupt.jpg", "zero.png"])
def test_train_unreadable_images(capsys, caplog, tmp_path, bad):
    root = image_folder(tmp_path / "data", per_class=6)
    path = root / "0" / bad
    corrupt_jpeg(path) if bad.endswith(".jpg") else path.write_bytes(b"")
    err = train_fails(capsys, *train_folder_args(root, tmp_path / "a", "--on-corrupt", "error"))
    assert f"cannot read image {path}" in err
    with caplog.at_level(logging.WARNING):  # the default: skip, with a count in the log
        assert vit_train.main([*TRAIN_ARGS, *train_folder_args(root, tmp_path / "b")]) == 0
    assert "skipped 1 unreadable image(s)" in caplog.text and str(path) in caplog.text


def test_no_readable_image_at_all(files, capsys, tmp_path):
    """Skipping every image would leave an empty dataset: an error, not an empty batch."""
    root = tmp_path / "data"
    for c in ("0", "1"):
        for i in range(3):
            (root / c).mkdir(parents=True, exist_ok=True)
            (root / c / f"{i}.png").write_bytes(b"")
    err = train_fails(capsys, *train_folder_args(root, tmp_path / "a"))
    assert "no readable images among" in err
    err = evaluate_fails(capsys, files["good"], "--data-dir", root, "--on-corrupt", "skip", "--output", tmp_path / "b")
    assert "no readable images among 6 files" in err


def test_train_folder_layout_errors(capsys, caplog, tmp_path):
    root = image_folder(tmp_path / "data", per_class=6)
    (root / "2").mkdir()
    err = train_fails(capsys, *train_folder_args(root, tmp_path / "a"))
    assert f"class folder {root / '2'} holds no images" in err
    (root / "2").rmdir()
    shutil.rmtree(root / "1")
    err = train_fails(capsys, *train_folder_args(root, tmp_path / "b"))
    assert "has 1 class folder(s) ['0']; classification needs at least 2" in err
    image_folder(root, classes=("1",), per_class=6)
    (root / "1" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        assert vit_train.main([*TRAIN_ARGS, *train_folder_args(root, tmp_path / "c")]) == 0
    assert "ignored 1 file(s) without an image extension" in caplog.text


def test_train_data_classes_differ_from_pretrained(run_dir, capsys, tmp_path):
    """Fine-tuning a 10-class checkpoint on a 2-class folder: a fresh head, documented; not an error. But a
    train/ and val/ tree whose class folders differ is."""
    root = tmp_path / "data"
    image_folder(root / "train", per_class=6)
    image_folder(root / "val", classes=("0", "7"), per_class=2)
    err = train_fails(capsys, *train_folder_args(root, tmp_path / "a"))
    assert f"{root / 'val'} has classes ['0', '7'], {root / 'train'} has ['0', '1']" in err


def test_train_non_finite_loss_keeps_last_good_checkpoint(capsys, tmp_path):
    """A learning rate of 1e30 blows the weights up after one step; the loss of step 2 is not finite."""
    out = tmp_path / "run"
    err = train_fails(capsys, "--output", out, "--lr", "1e30", "--warmup-epochs", "0", "--clip-grad", "0",
                      "--save-every", "1", code=1)
    assert "non-finite loss (nan) at step 2" in err and "lr 9.05e+29" in err
    ckpt = torch.load(out / "last.ckpt", weights_only=True)  # the last good state, loadable
    assert ckpt["state"]["step"] == 1


def test_train_unwritable_output(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = train_fails(capsys, "--output", blocker / "run")
    assert f"cannot write to the output folder {blocker / 'run'}" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders anyway")
def test_train_read_only_output(capsys, tmp_path):
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    err = train_fails(capsys, "--output", out)
    assert f"cannot write to the output folder {out}" in err


def test_train_disk_full_on_fsync(capsys, monkeypatch, tmp_path):
    """ENOSPC as fsync reports it (delayed allocation: the write succeeds, the flush fails). The previous
    last.ckpt stays, and the temporary file is removed."""
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(vit_train.os, "fsync", no_space)
    out = tmp_path / "run"
    err = train_fails(capsys, "--output", out)
    assert f"cannot write weights to {out}" in err and "No space left on device" in err
    assert not list(out.glob(".*.tmp")), "the temporary file was left behind"


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 2 MiB filesystem that fills up (needs root: mount), else the test is skipped."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_train_disk_full_tmpfs(capsys, tiny_tmpfs):
    """A real ENOSPC: last.ckpt (3.7 MB for this model) does not fit in 2 MiB."""
    out = tiny_tmpfs / "run"
    err = train_fails(capsys, "--output", out, "--save-every", "2")
    assert f"cannot write {out / 'last.ckpt'} (" in err and "MB free there): the write was cut short" in err
    assert not list(out.glob(".*.tmp"))


def test_evaluate_disk_full_tmpfs(files, capsys, tiny_tmpfs):
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 - 8192))
    err = evaluate_fails(capsys, files["good"], "--dataset", "digits", "--output", tiny_tmpfs / "eval")
    assert str(tiny_tmpfs / "eval") in err and "No space left on device" in err


# --------------------------------------------------------------------------------------------------------
# The real scripts: an error is one line, never a traceback


def test_scripts_print_no_traceback(files, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv, match in [
        (["train.py", "--pretrained", str(files["truncated_pt"]), "--output", str(tmp_path / "t")],
         "is not a readable PyTorch checkpoint"),
        (["evaluate.py", str(files["evil"]), "--model", MODEL, "--dataset", "digits"], "never unpickles"),
    ]:
        r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2, r.stderr
        assert match in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert_no_code_ran(files)
