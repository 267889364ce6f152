"""vit.runs: the run folder's atomic writes, lock, last.ckpt schema and metrics.jsonl."""

import errno
import json
import os

import pytest
import torch

from vit import runs
from vit.errors import CheckpointError, OutputError


def checkpoint(**changes) -> runs.Checkpoint:
    """A small last.ckpt with every entry of the schema."""
    fields = dict(
        config={"model": "vit_nano_patch2_8", "dataset": "digits", "lr": 1e-3}, recipe="digits",
        model_config={"embed_dim": 8}, class_names=["a", "b"], model={"w": torch.ones(4)},
        optimizer={"state": {0: {"exp_avg": torch.ones(4)}}, "param_groups": [{"lr": 1e-3}]},
        scheduler={"t_initial": 10}, ema=None, scaler=None, rng={"torch": torch.get_rng_state()},
        state=runs.State(epoch=1, step=7, loss_sum=1.5),
    )
    return runs.Checkpoint(**{**fields, **changes})


# --------------------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_failure_leaves_the_old_file(tmp_path):
    path = tmp_path / "file.txt"
    runs.atomic_write_text(path, "old")

    def half_then_disk_full(f):
        f.write(b"ne")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError, match=rf"cannot write {path} \(.* MB free there\): No space left on device"):
        runs.atomic_write(path, half_then_disk_full)
    assert path.read_text() == "old"
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file is gone
    runs.atomic_torch_save({"new": torch.ones(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["new"], torch.ones(2))


# --------------------------------------------------------------------------------------------------------
# The lock


def test_lock_refuses_a_second_holder_until_released(tmp_path):
    out = tmp_path / "run"
    held = runs.lock_output(out, resume=False)
    with pytest.raises(OutputError, match=rf"in use by another train.py \(pid {os.getpid()}\)"):
        runs.lock_output(out, resume=True)
    held.close()
    runs.lock_output(out, resume=True).close()


def test_lock_refuses_a_folder_holding_a_run_unless_resuming(tmp_path):
    (tmp_path / runs.LAST).write_bytes(b"")
    with pytest.raises(OutputError, match="already holds a training run"):
        runs.lock_output(tmp_path, resume=False)
    runs.lock_output(tmp_path, resume=True).close()


# --------------------------------------------------------------------------------------------------------
# last.ckpt


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / runs.LAST
    saved = checkpoint()
    runs.save_checkpoint(path, saved)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == runs.CHECKPOINT_FORMAT and raw["version"] == runs.CHECKPOINT_VERSION
    assert raw["state"]["step"] == 7  # a plain dict in the file
    read = runs.read_checkpoint(path)
    assert read.state == saved.state and read.config == saved.config and read.class_names == ["a", "b"]
    assert torch.equal(read.optimizer["state"][0]["exp_avg"], saved.optimizer["state"][0]["exp_avg"])
    trained = runs.read_trained_model(raw, path)
    assert torch.equal(trained.weights["w"], torch.ones(4)) and trained.model_config == {"embed_dim": 8}
    assert runs.read_trained_model({"model": {"w": torch.ones(1)}}, path) is None  # another format of dict


def bytes_read() -> int:
    """Bytes this process has asked the kernel for through read() and its kin (Linux's /proc/self/io)."""
    return int(dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())["rchar"])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's per-process I/O counters")
def test_training_config_is_read_without_the_optimizer_state(tmp_path):
    """A 16 MB optimizer state beside a few bytes of config: the config reader reads a few kB of the file
    (the tensors are memory-mapped, never touched); loading the file whole, the control, reads all of it."""
    path = tmp_path / runs.LAST
    big = {"state": {0: {"exp_avg": torch.zeros(4_000_000)}}, "param_groups": [{"lr": 1e-3}]}
    runs.save_checkpoint(path, checkpoint(optimizer=big))
    before = bytes_read()
    assert runs.read_training_config(path)["dataset"] == "digits"
    assert bytes_read() - before < 1_000_000
    before = bytes_read()
    torch.load(path, weights_only=True)
    assert bytes_read() - before > 16_000_000
    assert runs.find_training_config(tmp_path / runs.BEST) == checkpoint().config  # beside a best.safetensors
    assert runs.find_training_config(tmp_path / "elsewhere" / "model.pth") is None


@pytest.mark.parametrize("damage, match", [
    ("truncated", "cannot load"),
    ("not a checkpoint", "is not a train.py checkpoint"),
    ("newer version", "checkpoint version 2"),
    ("missing entry", "the 'scheduler' entry is missing"),
    ("wrong type", "the 'class_names' entry is a str, expected a list"),
    ("model not tensors", "'model' entry is not a state dict (model.w is not a tensor)"),
    ("unknown state field", "state.steps_left is not a field"),
    ("bad state value", "state.epoch is '1', not an integer"),
])
def test_damaged_checkpoint_names_the_file_and_the_entry(tmp_path, damage, match):
    path = tmp_path / runs.LAST
    obj = checkpoint().to_dict()
    if damage == "not a checkpoint":
        obj = {"model": obj["model"]}
    elif damage == "newer version":
        obj["version"] = 2
    elif damage == "missing entry":
        del obj["scheduler"]
    elif damage == "wrong type":
        obj["class_names"] = "ab"
    elif damage == "model not tensors":
        obj["model"] = {"w": [1.0]}
    elif damage == "unknown state field":
        obj["state"]["steps_left"] = 3
    elif damage == "bad state value":
        obj["state"]["epoch"] = "1"
    torch.save(obj, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as e:
        runs.read_checkpoint(path)
    assert str(path) in str(e.value) and match in str(e.value)


def test_missing_state_fields_keep_their_defaults(tmp_path):
    """A checkpoint written before a State field existed still resumes."""
    path = tmp_path / runs.LAST
    obj = checkpoint().to_dict()
    del obj["state"]["skipped"]
    torch.save(obj, path)
    assert runs.read_checkpoint(path).state.skipped == 0


# --------------------------------------------------------------------------------------------------------
# metrics.jsonl


def test_metrics_truncated_to_the_checkpoint_and_a_torn_line_dropped(tmp_path):
    path = tmp_path / runs.METRICS
    for epoch in (1, 2, 3):
        runs.append_metrics(path, {"epoch": epoch, "val_top1": 10.0 * epoch})
    with open(path, "a") as f:
        f.write('{"epoch": 4, "val_to')  # a write a kill cut short
    assert [r["epoch"] for r in runs.read_metrics(path)] == [1, 2, 3]
    runs.truncate_metrics(path, epochs_done=2)
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2]
