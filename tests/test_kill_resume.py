"""Fault injection on train.py: SIGKILL at random moments and resume, a kill in the middle of a
checkpoint write, two runs on one output folder, SIGINT/SIGTERM.

The kill/resume test is the short version of `benchmarks/kill_resume.py` (same code, two kill points and
2 epochs instead of 20 points and 3 epochs). train.py runs as a real subprocess, killed for real.
"""

from __future__ import annotations

import importlib.util
import json
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from vit import train as vit_train
from vit.runs import atomic_torch_save, lock_output

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "benchmarks" / "kill_resume.py")
kr = sys.modules["kill_resume"] = importlib.util.module_from_spec(_spec)  # dataclasses look themselves up there
_spec.loader.exec_module(kr)

SEED = 0  # kill point i draws its moment from random.Random(SEED + i); printed on failure


@pytest.fixture(scope="module", autouse=True)
def two_epochs():
    """The benchmark's run, shortened to 2 epochs (22 steps, a checkpoint after each)."""
    old = list(kr.RUN_ARGS)
    kr.RUN_ARGS[kr.RUN_ARGS.index("--epochs") + 1] = "2"
    yield
    kr.RUN_ARGS[:] = old


@pytest.fixture(scope="module")
def reference(tmp_path_factory, two_epochs) -> "kr.Reference":
    return kr.reference_run(tmp_path_factory.mktemp("kr") / "reference")


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"train.py ended early (exit {proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for train.py")
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------------------
# SIGKILL at random moments, then --resume: bit-identical to the uninterrupted run


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


# --------------------------------------------------------------------------------------------------------
# A kill in the middle of a checkpoint write leaves the previous last.ckpt loadable

WRITER = r"""
import io, os, sys, time
from pathlib import Path
import torch
import vit.runs

real_save = torch.save


def slow_save(obj, f):
    # The real bytes, written in two halves with a pause between them, so the kill lands mid-write.
    buf = io.BytesIO()
    real_save(obj, buf)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    print("half written", flush=True)
    time.sleep(120)
    f.write(data[len(data) // 2 :])


torch.save = slow_save
path, how = Path(sys.argv[1]), sys.argv[2]
new = {"format": "test", "step": 2, "model": {"w": torch.full((250_000,), 2.0)}}
if how == "atomic":
    vit.runs.atomic_torch_save(new, path)  # how train.py writes last.ckpt
else:
    with open(path, "wb") as f:  # the naive way, as a control
        torch.save(new, f)
"""


@pytest.mark.parametrize("how", ["atomic", "naive"])
def test_kill_during_checkpoint_write(tmp_path, how):
    path = tmp_path / "last.ckpt"
    old = {"format": "test", "step": 1, "model": {"w": torch.ones(250_000)}}
    atomic_torch_save(old, path)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), how], cwd=ROOT, env=kr.ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "half written", line + proc.stdout.read()
    proc.kill()  # SIGKILL, mid-write
    proc.wait()
    if how == "naive":  # the control: without temp file + rename the kill tears the file
        with pytest.raises(Exception):
            torch.load(path, weights_only=True)
        return
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 1 and torch.equal(ckpt["model"]["w"], old["model"]["w"])
    assert len(list(tmp_path.glob(".last.ckpt.*.tmp"))) == 1  # the torn temporary file, never read


def test_stale_temporary_files_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.ckpt.12345.tmp").write_bytes(b"torn")
    (out / "last.ckpt").write_bytes(b"")  # so the folder counts as a run to resume
    lock = lock_output(out, resume=True)
    lock.close()
    assert not (out / ".last.ckpt.12345.tmp").exists()


def test_resume_drops_a_torn_metrics_line(tmp_path):
    """A crash (or a full disk) can cut metrics.jsonl's last append short; resuming drops the torn line."""
    out = tmp_path / "run"
    args = ["--epochs", "2", "--batch-size", "256", "--device", "cpu", "--quiet"]
    assert vit_train.main([*args, "--max-steps", "7", "--output", str(out)]) == 0  # stops in epoch 2
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "step": 10, "train_lo')
    assert vit_train.main([*args, "--max-steps", "0", "--resume", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------------------
# Two train.py runs on one output folder


def test_second_run_on_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    first = kr.start_run(out)
    try:
        wait_for(lambda: (out / "last.ckpt").exists(), first)  # training, lock held
        for argv in (["--output", str(out)], ["--resume", str(out)]):  # even --resume: the run is alive
            assert vit_train.main(["--epochs", "1", "--device", "cpu", *argv]) == 2
            err = capsys.readouterr().err
            assert f"{out} is in use by another train.py (pid {first.pid})" in err, err
    finally:
        first.kill()
        first.wait()
    # The kernel drops a dead process's lock: a new run is refused only because the folder holds a run...
    assert vit_train.main(["--epochs", "1", "--device", "cpu", "--output", str(out)]) == 2
    assert f"{out} already holds a training run (last.ckpt): continue it with --resume {out}" in capsys.readouterr().err
    # ... and --resume may take the folder over.
    lock_output(out, resume=True).close()


# --------------------------------------------------------------------------------------------------------
# SIGINT / SIGTERM: save last.ckpt, exit cleanly, resume exactly


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
    how, resumed_from, _ = kr.finish(out)
    assert (how, resumed_from) == ("resume", step)
    diffs, _ = kr.compare_runs(reference.out, out)
    assert not diffs, diffs[:5]
