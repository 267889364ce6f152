"""vit.runs: the run folder's atomic writes, lock, last.ckpt schema and metrics.jsonl.

Processes killed for real where the kill is the point: a forked child of this process, SIGKILLed in the
middle of a write or while it holds the lock.
"""

import errno
import io
import json
import os
import signal
import time

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


def test_a_read_only_folder_is_an_output_error_naming_the_file(read_only_folder):
    """On a read-only filesystem even the clean-up's unlink of a file that is not there fails (EROFS): the error
    is still the OutputError naming the file, from atomic_write and from save_pretrained."""
    import vit

    path = read_only_folder / "report.json"
    with pytest.raises(OutputError, match=rf"cannot write {path} \(.* MB free there\): Read-only file system"):
        runs.atomic_write_text(path, "{}")
    weights = read_only_folder / "best.safetensors"
    with pytest.raises(OutputError, match=rf"cannot write {weights} .*Read-only file system"):
        vit.save_pretrained(vit.create_model("vit_nano_patch2_8", depth=1), weights)
    with pytest.raises(OutputError, match=f"cannot write to the output folder {read_only_folder}: Read-only"):
        with runs.output_folder(read_only_folder):
            raise AssertionError("the work began")


def test_a_failing_clean_up_does_not_hide_the_write_error(tmp_path, monkeypatch):
    """The same where no read-only filesystem can be mounted: every unlink fails as on one (the first, of a
    temporary file that is not there, before anything is written)."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(runs.Path, "unlink", read_only)
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path / 'f'} .*Read-only file system"):
        runs.atomic_write_text(tmp_path / "f", "x")


def test_an_output_folder_is_checked_before_the_work_and_left_out_on_a_refusal(tmp_path):
    """output_folder: made and found writable first; a failure in the work removes the folders it made while
    they are empty, never a folder that was there or one something was written into."""
    out = tmp_path / "a" / "b" / "eval"
    with pytest.raises(ValueError, match="refused"):
        with runs.output_folder(out):
            assert out.is_dir() and not any(out.iterdir())  # the write check leaves nothing
            raise ValueError("refused")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError):
        with runs.output_folder(out):
            (out / "report.json").write_text("{}")
            raise ValueError("refused after a write")
    assert (out / "report.json").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError):
        with runs.output_folder(tmp_path / "kept"):
            raise ValueError("refused")
    assert (tmp_path / "kept").is_dir()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match=f"cannot create output folder {blocker / 'x'}: .*Not a directory"):
        with runs.output_folder(blocker / "x"):
            raise AssertionError("the work began")


def in_child(work) -> int:
    """Fork: the child runs `work(ready)`, which calls `ready()` once it has got where it is to be killed; the
    child then waits, holding what `work` returned. Returns the child's pid once it is ready. The child never
    returns into the test runner."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            held = work(lambda: os.write(w, b"1"))  # noqa: F841 (kept open until the kill)
            time.sleep(600)
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    if got != b"1":
        os.waitpid(pid, 0)
        raise AssertionError("the child process ended before it was ready")
    return pid


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("how", ["atomic", "naive"])
def test_kill_during_a_write_leaves_the_previous_file(tmp_path, how):
    """SIGKILL half-way through writing a new last.ckpt: the atomic write leaves the old one loadable (and its
    torn temporary file, never read); the naive write in place, the control, leaves a torn file."""
    path = tmp_path / runs.LAST
    old = {"format": "test", "step": 1, "model": {"w": torch.ones(250_000)}}
    runs.atomic_torch_save(old, path)
    new = {"format": "test", "step": 2, "model": {"w": torch.full((250_000,), 2.0)}}

    def write_half(ready):
        real_save = torch.save

        def half_save(obj, f):  # the real bytes, cut off half-way: the kill lands mid-write
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            ready()
            time.sleep(600)

        torch.save = half_save  # in the child only
        if how == "atomic":
            runs.atomic_torch_save(new, path)  # how train.py writes last.ckpt
        else:
            with open(path, "wb") as f:
                torch.save(new, f)

    kill(in_child(write_half))
    if how == "naive":
        with pytest.raises(Exception):
            torch.load(path, weights_only=True)
        return
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 1 and torch.equal(ckpt["model"]["w"], old["model"]["w"])
    assert len(list(tmp_path.glob(f".{runs.LAST}.*.tmp"))) == 1



# --------------------------------------------------------------------------------------------------------
# The lock


def test_lock_refuses_a_second_holder_until_released(tmp_path):
    out = tmp_path / "run"
    held = runs.lock_output(out, resume=False)
    with pytest.raises(OutputError, match=rf"in use by another train.py \(pid {os.getpid()}\)"):
        runs.lock_output(out, resume=True)
    held.close()
    runs.lock_output(out, resume=True).close()


def test_lock_of_a_live_process_refuses_and_the_kernel_drops_it_when_killed(tmp_path):
    out = tmp_path / "run"

    def hold(ready):  # as a training train.py: the lock held, a last.ckpt written
        lock = runs.lock_output(out, resume=False)
        (out / runs.LAST).write_bytes(b"")
        ready()
        return lock

    pid = in_child(hold)
    try:
        for resume in (False, True):  # even --resume: the run is alive
            with pytest.raises(OutputError, match=rf"{out} is in use by another train.py \(pid {pid}\)"):
                runs.lock_output(out, resume=resume)
    finally:
        kill(pid)
    # SIGKILL left no stale lock: only the run in the folder stands in the way of a new one ...
    with pytest.raises(OutputError, match=rf"{out} already holds a training run \(last.ckpt\): continue it "
                                          rf"with --resume {out}"):
        runs.lock_output(out, resume=False)
    runs.lock_output(out, resume=True).close()  # ... and --resume may take the folder over


def test_release_removes_the_lock_file(tmp_path):
    """A run that ends lets go of its lock and leaves no .lock behind; the next run takes a new one. A refused
    start (the folder holds a run) leaves the folder as it found it."""
    out = tmp_path / "run"
    runs.release_output(out, runs.lock_output(out, resume=False))
    assert not (out / runs.LOCK).exists()
    (out / runs.LAST).write_bytes(b"")
    with pytest.raises(OutputError, match="already holds a training run"):
        runs.lock_output(out, resume=False)
    assert not (out / runs.LOCK).exists()
    held = runs.lock_output(out, resume=True)
    with pytest.raises(OutputError, match=rf"in use by another train.py \(pid {os.getpid()}\)"):
        runs.lock_output(out, resume=True)
    runs.release_output(out, held)
    assert not (out / runs.LOCK).exists()


def test_a_lock_file_removed_while_being_taken_is_not_held(tmp_path, monkeypatch):
    """The removal's race: a second train.py opens out/.lock, the first ends (removing the file, then letting go)
    before the second's flock. The second then holds a file no longer in the folder, so it takes out/.lock anew,
    and a third is refused as the lock always refused: one holder at a time."""
    import fcntl

    out = tmp_path / "run"
    first = runs.lock_output(out, resume=False)
    flock = fcntl.flock

    def first_ends_meanwhile(fh, op):
        monkeypatch.setattr(fcntl, "flock", flock)
        runs.release_output(out, first)
        return flock(fh, op)

    monkeypatch.setattr(fcntl, "flock", first_ends_meanwhile)
    second = runs.lock_output(out, resume=False)
    assert (out / runs.LOCK).read_text() == str(os.getpid())
    with pytest.raises(OutputError, match="in use by another train.py"):
        runs.lock_output(out, resume=True)
    runs.release_output(out, second)


def test_stale_temporary_files_are_removed_by_the_next_holder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.ckpt.12345.tmp").write_bytes(b"torn")
    (out / runs.LAST).write_bytes(b"")  # so the folder counts as a run to resume
    runs.lock_output(out, resume=True).close()
    assert not (out / ".last.ckpt.12345.tmp").exists()


# --------------------------------------------------------------------------------------------------------
# Run files: a new run only in a folder without them, a resumed run in its own folder or a copy


def test_what_a_run_killed_before_its_first_checkpoint_leaves_is_no_run(tmp_path):
    """The lock, a torn temporary file and an empty metrics.jsonl: the same command starts again there (torchrun
    restarts and benchmarks/kill_resume.py do). Any run file makes the folder a run's; --overwrite deletes
    them, and only them."""
    out = tmp_path / "run"
    out.mkdir()
    (out / runs.LOCK).write_text("12345")
    (out / ".last.ckpt.12345.tmp").write_bytes(b"torn")
    (out / runs.METRICS).write_bytes(b"")
    assert runs.run_files(out) == []
    runs.lock_output(out, resume=False).close()
    assert not (out / ".last.ckpt.12345.tmp").exists()
    for name in (runs.BEST, runs.CURVES, "events.out.tfevents.1700000000.host.1.0", runs.LAST):
        (out / name).write_bytes(b"x")
        assert name in runs.run_files(out)
    (out / runs.METRICS).write_text('{"epoch": 1}\n')
    (out / "notes.txt").write_text("mine")
    assert runs.run_files(out) == [runs.LAST, runs.BEST, runs.METRICS, runs.CURVES,
                                   "events.out.tfevents.1700000000.host.1.0"]
    runs.lock_output(out, resume=False, overwrite=True).close()
    assert runs.run_files(out) == [] and (out / "notes.txt").read_text() == "mine"


def test_a_folder_with_run_files_is_refused_naming_them_and_the_ways_out(tmp_path):
    """best.safetensors and metrics.jsonl without last.ckpt (a model someone kept): nothing to resume, so only
    --overwrite or another folder; with last.ckpt, --resume too."""
    out = tmp_path / "run"
    out.mkdir()
    (out / runs.BEST).write_bytes(b"a 35% model")
    (out / runs.METRICS).write_text('{"epoch": 1, "val_top1": 35.0}\n')
    with pytest.raises(OutputError) as e:
        runs.lock_output(out, resume=False)
    assert str(e.value) == (f"{out} already holds a training run (best.safetensors, metrics.jsonl) with no last.ckpt "
                            "to continue from: start again there with --overwrite (which deletes them), or pick "
                            "another --output")
    assert (out / runs.BEST).read_bytes() == b"a 35% model"
    (out / runs.LAST).write_bytes(b"")
    with pytest.raises(OutputError, match=rf"\(last.ckpt, best.safetensors, metrics.jsonl\): continue it with "
                                          rf"--resume {out}, start again there with --overwrite"):
        runs.lock_output(out, resume=False)
    runs.lock_output(out, resume=True).close()
    assert (out / runs.BEST).read_bytes() == b"a 35% model"


@pytest.mark.parametrize("name", [runs.METRICS, runs.LAST, runs.BEST, runs.CURVES])
def test_a_run_file_that_is_a_symlink_is_refused(tmp_path, name):
    target = tmp_path / "precious"
    target.write_text("keep")
    out = tmp_path / "run"
    out.mkdir()
    (out / name).symlink_to(target)
    for resume, overwrite in ((False, False), (False, True), (True, False)):
        with pytest.raises(OutputError, match=rf"{out / name} is a symbolic link: train.py writes its run files "
                                              "only as plain files"):
            runs.lock_output(out, resume=resume, overwrite=overwrite)
    assert target.read_text() == "keep" and (out / name).is_symlink()


def test_metrics_are_never_appended_through_a_link(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep\n")
    path = tmp_path / runs.METRICS
    path.symlink_to(target)
    with pytest.raises(OutputError, match=rf"cannot write {path}: it is a symbolic link"):
        runs.append_metrics(path, {"epoch": 1})
    assert target.read_text() == "keep\n"
    path.unlink()
    os.mkfifo(path)  # nor to anything but a regular file (a FIFO without a reader would block)
    with pytest.raises(OutputError, match=rf"cannot write {path}"):
        runs.append_metrics(path, {"epoch": 1})


def a_run(folder):
    """A folder holding a run's files (contents are not read by the copy)."""
    folder.mkdir()
    for name, data in ((runs.LAST, b"ckpt"), (runs.BEST, b"best"), (runs.METRICS, b'{"epoch": 1}\n'),
                       (runs.CURVES, b"png"), (runs.LOCK, b"1")):
        (folder / name).write_bytes(data)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_run_is_copied_into_an_empty_folder_and_its_source_only_read(tmp_path):
    source, out = tmp_path / "a", tmp_path / "b"
    before = a_run(source)
    lock = runs.lock_output(out, resume=False, source=source)
    assert runs.copy_run(source, out) == [runs.LAST, runs.BEST, runs.METRICS, runs.CURVES]
    lock.close()
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before  # nothing written in the source
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != runs.LOCK} == \
        {k: v for k, v in before.items() if k != runs.LOCK}


def test_a_run_being_written_is_not_copied(tmp_path):
    source, out = tmp_path / "a", tmp_path / "b"
    a_run(source)
    held = runs.lock_output(source, resume=True)  # as the train.py running there holds it
    with pytest.raises(OutputError, match=rf"{source} is in use by another train.py \(pid {os.getpid()}\)"):
        runs.lock_output(out, resume=False, source=source)
    with pytest.raises(OutputError, match=rf"{source} is in use"):
        runs.copy_run(source, out)
    held.close()
    assert runs.run_files(out) == []


def test_a_copy_killed_half_way_leaves_no_run(tmp_path):
    """last.ckpt is moved into place last: a kill during the copy leaves its staging folder, which is no run;
    the next holder of the lock removes it."""
    source, out = tmp_path / "a", tmp_path / "b"
    a_run(source)

    def copy_half(ready):
        import shutil

        real, copied = shutil.copyfileobj, []

        def slow(src, dst):
            real(src, dst)
            copied.append(1)
            if len(copied) == 2:
                ready()
                time.sleep(600)

        shutil.copyfileobj = slow  # in the child only
        lock = runs.lock_output(out, resume=False, source=source)
        runs.copy_run(source, out)
        return lock

    kill(in_child(copy_half))
    assert runs.run_files(out) == [] and len(list(out.glob(".last.ckpt.*.partial"))) == 1
    runs.lock_output(out, resume=False).close()
    assert not list(out.glob(".last.ckpt.*.partial"))


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


def test_the_training_config_says_what_the_run_used(tmp_path):
    """The flags a run's length turned off (last.ckpt's "augment" entry) read as the run used them; the entry is
    saved and read back whole, and a checkpoint without it reads as its config."""
    path = tmp_path / runs.LAST
    config = {"model": "vit_nano_patch2_8", "dataset": "digits", "crop_pad": 2, "hflip": 0.5, "eval_shift": 1}
    runs.save_checkpoint(path, checkpoint(config=config, augment={"crop_pad": 0, "hflip": 0.5, "eval_shift": 0}))
    assert runs.read_training_config(path) == {**config, "crop_pad": 0, "eval_shift": 0}
    assert runs.read_checkpoint(path).augment == {"crop_pad": 0, "hflip": 0.5, "eval_shift": 0}
    assert runs.read_checkpoint(path).config == config  # resuming starts from the flags
    obj = torch.load(path, weights_only=True)
    del obj["augment"]
    torch.save(obj, path)
    assert runs.read_training_config(path) == config and runs.read_checkpoint(path).augment is None


@pytest.mark.parametrize("damage, match", [
    ("truncated", "cannot load"),
    ("not a checkpoint", "is not a train.py checkpoint"),
    ("newer version", "checkpoint version 2"),
    ("missing entry", "the 'scheduler' entry is missing"),
    ("wrong type", "the 'class_names' entry is a str, expected a list"),
    ("model not tensors", "'model' entry is not a state dict (model.w is not a tensor)"),
    ("unknown state field", "state.steps_left is not a field"),
    ("bad state value", "state.epoch is '1', not an integer"),
    ("negative position", "state.batch is -3, expected a finite number >= 0"),
    ("bad decided setting", "budget.decided is {'crop_pad': -1}"),
    ("bad augment entry", "the 'augment' entry is {'eval_shift': 1.5}"),
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
    elif damage == "negative position":
        obj["state"]["batch"] = -3
    elif damage == "bad decided setting":
        obj["budget"] = {"budget_s": 60.0, "total_steps": 10, "decided": {"crop_pad": -1}}
    elif damage == "bad augment entry":
        obj["augment"] = {"eval_shift": 1.5}
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


def test_a_planted_symlink_is_never_written_through(tmp_path):
    """The lock and the temporary file of an atomic write: a link planted under either name is refused or
    replaced, and its target stays as it was."""
    target = tmp_path / "precious"
    target.write_text("keep")
    out = tmp_path / "run"
    out.mkdir()
    (out / runs.LOCK).symlink_to(target)
    with pytest.raises(OutputError, match="is a symbolic link"):
        runs.lock_output(out, resume=False)
    (out / runs.LOCK).unlink()
    path = out / "report.json"
    (out / f".report.json.{os.getpid()}.tmp").symlink_to(target)
    runs.atomic_write_text(path, "new")
    assert path.read_text() == "new" and target.read_text() == "keep"
    path.unlink()
    path.symlink_to(target)  # the destination itself: the rename replaces the link, not its target
    runs.atomic_write_text(path, "new")
    assert not path.is_symlink() and path.read_text() == "new" and target.read_text() == "keep"


def test_unreadable_metrics_file_is_an_output_error(tmp_path):
    folder = tmp_path / "as-folder"
    folder.mkdir()
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe{")
    for path in (folder, binary):
        with pytest.raises(OutputError, match=rf"cannot read {path}"):
            runs.truncate_metrics(path, 1)


def test_budget_plan_and_its_decisions_round_trip(tmp_path):
    path = tmp_path / runs.LAST
    plan = {"budget_s": 60.0, "total_steps": 10, "decided": {"crop_pad": 0, "hflip": 0.0}}
    runs.save_checkpoint(path, checkpoint(budget=plan))
    assert runs.read_checkpoint(path).budget["decided"] == {"crop_pad": 0, "hflip": 0.0}
