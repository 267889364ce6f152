"""The run folder train.py writes, and the one module that knows its layout.

    OUT/
      .lock              held (flock) by the train.py writing OUT; holds its pid; removed when it ends (a
                         SIGKILL leaves it, no longer held)
      last.ckpt          everything needed to continue the run: `Checkpoint`, saved with torch.save and
                         read back with torch.load(weights_only=True)
      best.safetensors   the best model so far (vit.save_pretrained: weights, config, preprocessing, classes)
      teacher.safetensors  --teacher-widths: the convnet the run trained first and distils from (vit.convnet),
                         its schedule in its header; not a run file: a run killed before its first last.ckpt
                         starts again there and reuses it where the header is its own
      metrics.jsonl      one JSON object per finished epoch
      curves.png         metrics.jsonl drawn (vit.plots)
      events.out.tfevents.*  TensorBoard's event files (vit.tensorboard), where --log-dir does not move them

These are the run files (`run_files`). A new run starts only in a folder without them (or told to delete them:
train.py --overwrite); a resumed run continues in its own folder, or in an empty one that the run is first
copied into (`copy_run`). last.ckpt and curves.png are replaced through `atomic_write`, so a kill at any moment
leaves the old file or the new one; metrics.jsonl is appended to, and rewritten that way when a resumed run
drops the rows of epochs it redoes. No run file is written through a symbolic link. Readers check what they
read and name the file and the entry that is wrong (`CheckpointError`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import re
import shutil
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

import torch

from .budget import Budget
from .errors import CheckpointError, OutputError

LOCK = ".lock"
LAST = "last.ckpt"
BEST = "best.safetensors"
TEACHER = "teacher.safetensors"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
EVENTS = "events.out.tfevents.*"  # the names torch's SummaryWriter gives its files

CHECKPOINT_FORMAT = "vit-train-checkpoint"
CHECKPOINT_VERSION = 1  # bump when an entry changes meaning; readers refuse versions newer than theirs


def default_folder(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


# --------------------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(file)` on a temporary file in `path`'s folder, fsync it, rename it over `path` and fsync
    the folder: a kill at any moment leaves either the old file or the new one, never a torn one.

    On failure (a full disk, an unwritable folder) the temporary file is removed and OutputError names
    `path` and the space left there. A kill leaves its ".NAME.PID.tmp" behind; `lock_output` removes it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # created anew, never through a link planted under its name
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError from its zip writer
        with contextlib.suppress(OSError):  # on a read-only folder the clean-up fails too (EROFS): say the first
            tmp.unlink(missing_ok=True)
        raise _write_failed(path, e) from e


def _write_failed(path: Path, e: Exception) -> OutputError:
    try:
        free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize if path.parent.is_dir() else 0
    except OSError:
        free = 0
    reason = e.strerror if isinstance(e, OSError) and e.strerror else f"the write was cut short ({e})"
    return OutputError(f"cannot write {path} ({free / 1e6:.1f} MB free there): {reason}")


@contextlib.contextmanager
def staged_files(folder: Path, main: str) -> Iterator[Path]:
    """For writers that make files of their own (an exporter writes model.onnx and perhaps model.onnx.data):
    yields a fresh temporary folder inside `folder` to write them into; when the block ends without an error,
    each file is fsynced and renamed into `folder`, `main` last, so that `main` is never there without its
    companions nor torn. On an error the temporary folder is removed and the files in `folder` stay as they
    were; an OSError (a full disk) becomes OutputError naming `folder/main` and the space left.
    """
    folder = Path(folder)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{main}.", suffix=".partial", dir=folder))
    except OSError as e:
        raise _write_failed(folder / main, e) from e
    try:
        yield staging
        names = sorted((f.name for f in staging.iterdir()), key=lambda name: name == main)
        for name in names:
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        for name in names:
            os.replace(staging / name, folder / name)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OutputError:
        raise
    except OSError as e:
        raise _write_failed(folder / main, e) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def outermost_missing(path: Path) -> Path | None:
    """The outermost folder that creating `path` would create (`path` itself, or a missing parent), or None
    where `path` exists: what a refusal must remove to leave nothing behind."""
    path, top = Path(path).absolute(), None
    while not os.path.lexists(path) and path != path.parent:
        top, path = path, path.parent
    return top


def remove_created(path: Path, top: Path | None, keep_out: tuple[str, ...] = ()) -> None:
    """Remove the folder `path` and its parents up to `top` (`outermost_missing`, taken before they were made)
    where they hold nothing, or only the files named in `keep_out` (a lock): a refusal leaves no empty output
    folder behind. Folders something was written into stay."""
    if top is None:
        return
    path, top = Path(path).absolute(), Path(top).absolute()
    try:
        if {e.name for e in os.scandir(path)} <= set(keep_out):
            for name in keep_out:
                (path / name).unlink(missing_ok=True)
        while True:
            path.rmdir()  # fails, and stops here, where something is left
            if path == top or path == path.parent:
                return
            path = path.parent
    except OSError:
        return


@contextlib.contextmanager
def output_folder(path: Path) -> Iterator[Path]:
    """`path` created if need be and found writable (a temporary file made and removed there) before the work that
    writes into it: an unwritable folder is an OutputError naming it at once, not after the work. Where the block
    fails and leaves the folders it created empty, they are removed."""
    path = Path(path)
    top = outermost_missing(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_created(path, top)
        raise OutputError(f"cannot create output folder {path}: {e}") from e
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        remove_created(path, top)
        raise OutputError(f"cannot write to the output folder {path}: {e.strerror or e}") from e
    try:
        yield path
    except BaseException:
        remove_created(path, top)
        raise


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


# --------------------------------------------------------------------------------------------------------
# The lock: one train.py per folder

LOCK_TRIES = 10  # lock_output opens out/.lock again this often while finishing runs remove it


def lock_output(out: Path, resume: bool, overwrite: bool = False, source: Path | None = None) -> IO[str]:
    """Create `out` and hold an exclusive lock on out/.lock for the life of the process (`release_output` lets
    go and removes the file; closing the returned file lets go and leaves it).

    flock is released by the kernel when the process dies, even by SIGKILL, so a crash never leaves a
    stale lock behind. A folder that holds run files is refused unless resuming the run in it (`resume`), or
    told to delete them (`overwrite`). `source`: the folder of the run to be copied into `out` (`copy_run`),
    refused now if a train.py is writing it. A refusal leaves no lock file.
    """
    for _ in range(LOCK_TRIES):
        fh = _open_lock(out)
        if _holds(out, fh):
            break
        fh.close()  # a run that finished removed this .lock after it was opened: the lock is the new file's
    else:
        raise OutputError(f"{out}: {LOCK} was removed {LOCK_TRIES} times while taking it; is another program "
                          "deleting it?")
    try:
        found = run_files(out)
        if found and not resume and not overwrite:
            raise OutputError(f"{out} already holds a training run ({', '.join(found)})" + (
                f": continue it with --resume {out}, " if LAST in found else f" with no {LAST} to continue from: ")
                + "start again there with --overwrite (which deletes them), or pick another --output")
        if source is not None:
            with _reading_lock(source):
                pass
    except OutputError:
        release_output(out, fh)
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    if found and not resume:  # --overwrite: none of the earlier run's files is left to mix with the new run's
        for name in found:
            try:
                (out / name).unlink()
            except OSError as e:
                release_output(out, fh)
                raise OutputError(f"cannot delete {out / name} (--overwrite): {e.strerror or e}") from e
    # Temporary files of writes a kill cut short (".last.ckpt.PID.tmp", a copy's staging folder): with the lock
    # held, no writer is left.
    for stale in out.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    for stale in out.glob(f".{LAST}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    return fh


def release_output(out: Path, fh: IO[str]) -> None:
    """Let go of `lock_output`'s lock and remove out/.lock, so that a run leaves no lock file behind. The file is
    removed while still held: a train.py that opened it meanwhile finds, once it holds it, that it is no longer
    out/.lock, and takes a new one (`lock_output`)."""
    with contextlib.suppress(OSError):
        if _same_file(out / LOCK, fh):
            (out / LOCK).unlink()
    fh.close()


def _open_lock(out: Path) -> IO[str]:
    """out/.lock opened and locked (flock, exclusive); an OutputError where another process holds it."""
    import fcntl

    try:
        out.mkdir(parents=True, exist_ok=True)
        if (out / LOCK).is_symlink():
            raise OutputError(f"{out / LOCK} is a symbolic link: train.py writes its lock only to a plain file; "
                              "remove the link or pick another --output")
        fh = os.fdopen(os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+")
    except OSError as e:
        raise OutputError(f"cannot write to the output folder {out}: {e.strerror or e}") from e
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip()
        fh.close()
        raise OutputError(_in_use(out, pid)) from None
    return fh


def _holds(out: Path, fh: IO[str]) -> bool:
    """Whether the locked `fh` is still out/.lock (a run that finished may have removed it meanwhile)."""
    try:
        return _same_file(out / LOCK, fh)
    except FileNotFoundError:
        return False
    except OSError as e:
        fh.close()
        raise OutputError(f"cannot write to the output folder {out}: {e.strerror or e}") from e


def _same_file(path: Path, fh: IO[str]) -> bool:
    a, b = os.stat(path, follow_symlinks=False), os.fstat(fh.fileno())
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _in_use(out: Path, pid: str) -> str:
    return f"{out} is in use by another train.py (pid {pid or 'unknown'}); wait for it, or pick another --output"


@contextlib.contextmanager
def _reading_lock(out: Path) -> Iterator[None]:
    """A shared lock on `out`'s .lock while its files are read: refused while a train.py holds it to write
    there. A folder without a lock file is not written by anyone, and none is created in it."""
    import fcntl

    try:
        fd = os.open(out / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        fd = None
    except OSError as e:
        raise OutputError(f"cannot read {out / LOCK}: {e.strerror or e}") from e
    if fd is None:
        yield
        return
    with os.fdopen(fd) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(_in_use(out, fh.read().strip())) from None
        yield


def run_files(out: Path) -> list[str]:
    """The run files in `out` (last.ckpt, best.safetensors, metrics.jsonl, curves.png, TensorBoard event files):
    what makes it a run folder. The lock, temporary files of writes a kill cut short and an empty metrics.jsonl
    do not count: they are all a run killed before its first checkpoint leaves, and the same command starts again
    there. A run file that is a symbolic link is an OutputError: train.py never writes or copies through one."""
    out = Path(out)
    found = [name for name in (LAST, BEST, METRICS, CURVES) if os.path.lexists(out / name)]
    found += sorted(p.name for p in out.glob(EVENTS))
    links = [name for name in found if (out / name).is_symlink()]
    if links:
        raise OutputError(f"{out / links[0]} is a symbolic link: train.py writes its run files only as plain "
                          "files, never through a link; remove the link or pick another folder")
    if METRICS in found and (out / METRICS).is_file() and (out / METRICS).stat().st_size == 0:
        found.remove(METRICS)
    return found


def copy_run(source: Path, out: Path) -> list[str]:
    """Copy the run files of `source` into `out` (held with `lock_output`, holding none of its own) so the run
    continues in `out` and `source` is only read; returns the names copied (the run's teacher too, where it has
    one). last.ckpt is moved into place last (`staged_files`): a kill during the copy leaves `out` holding no run,
    and the same command starts again."""
    names = run_files(source) + ([TEACHER] if (source / TEACHER).is_file() else [])
    with _reading_lock(source), staged_files(out, LAST) as staging:
        for name in names:
            try:
                fd = os.open(source / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as e:
                raise OutputError(f"cannot read {source / name}: {e.strerror or e}") from e
            with os.fdopen(fd, "rb") as src:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OutputError(f"{source / name} is not a regular file: nothing to copy")
                with open(staging / name, "xb") as dst:
                    shutil.copyfileobj(src, dst)
    return names


# --------------------------------------------------------------------------------------------------------
# last.ckpt


@dataclass
class State:
    """Where training stands: last.ckpt's "state" entry."""

    epoch: int = 0  # epoch in progress (0-based)
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimizer steps taken
    elapsed_s: float = 0.0
    best_top1: float = -1.0
    loss_sum: float = 0.0  # this epoch's training loss so far, for metrics.jsonl
    loss_count: int = 0
    train_s: float = 0.0  # this epoch's training time so far
    images: int = 0  # this epoch's training images so far
    skipped: int = 0  # unreadable images skipped (DataLoader path)

    def next_epoch(self) -> None:
        """Move to the start of the next epoch; the per-epoch sums start again."""
        self.epoch, self.batch = self.epoch + 1, 0
        self.loss_sum, self.loss_count, self.train_s, self.images = 0.0, 0, 0.0, 0


@dataclass
class Checkpoint:
    """last.ckpt: these entries, plus "format" (CHECKPOINT_FORMAT) and "version", in one torch.save dict."""

    config: dict  # the run's TrainConfig (vit.recipes) as a dict
    recipe: str | None  # the recipe it started from
    model_config: dict  # ViTConfig.to_dict(): the architecture, without the registry
    class_names: list[str]
    model: dict[str, torch.Tensor]  # the model's state dict
    optimizer: dict
    scheduler: dict
    ema: dict[str, torch.Tensor] | None  # the EMA copy's state dict
    scaler: dict | None  # the fp16 GradScaler's state
    rng: dict  # python, numpy, torch (and cuda) RNG states of rank 0
    state: State = field(default_factory=State)
    budget: dict | None = None  # a --budget run's plan (vit.budget.Budget.to_dict()); None without a budget
    # the values the run's length gave the flags with a *_min_epochs rule (crop_pad, hflip, eval_shift); None before
    # a budgeted run's plan
    augment: dict | None = None

    def to_dict(self) -> dict:
        entries = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **entries, "state": asdict(self.state)}


@dataclass(frozen=True)
class TrainedModel:
    """The model part of last.ckpt: what rebuilding and naming the model needs, nothing of the optimizer."""

    weights: dict[str, torch.Tensor]
    model_config: dict
    class_names: list[str]
    training_config: dict


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    atomic_torch_save(ckpt.to_dict(), path)


def read_checkpoint(path: Path) -> Checkpoint:
    """The whole of a last.ckpt (to resume from), every entry checked."""
    obj = _load(path, mmap=False)
    return Checkpoint(
        config=_training_config(obj, path),
        recipe=_entry(obj, path, "recipe", str, optional=True),
        model_config=_entry(obj, path, "model_config", dict),
        class_names=_class_names(obj, path),
        model=_tensors(obj, path, "model"),
        optimizer=_entry(obj, path, "optimizer", dict),
        scheduler=_entry(obj, path, "scheduler", dict),
        ema=_tensors(obj, path, "ema", optional=True),
        scaler=_entry(obj, path, "scaler", dict, optional=True),
        rng=_entry(obj, path, "rng", dict),
        state=_state(obj, path),
        budget=_budget(obj, path),
        augment=_augment(obj, path),
    )


def read_training_config(path: Path) -> dict:
    """A last.ckpt's TrainConfig dict as the run used it: its length may have turned flags off (no crops, flips
    or moved test views in a short run: the "augment" entry). Read without the model or optimizer
    tensors in memory (the file is memory-mapped and only the entries' structure is unpickled)."""
    obj = _load(path, mmap=True)
    config = _training_config(obj, path)
    config.update((k, v) for k, v in (_augment(obj, path) or {}).items() if k in config)
    return config


def find_training_config(checkpoint: str | Path) -> dict | None:
    """The config of the train.py run a checkpoint came from: in its last.ckpt, or in the last.ckpt beside a
    best.safetensors (or in a run folder). None for checkpoints from elsewhere or an unreadable last.ckpt
    (loading its weights reports what is wrong with it)."""
    path = Path(checkpoint)
    ckpt = path if path.suffix == ".ckpt" else (path if path.is_dir() else path.parent) / LAST
    if not ckpt.is_file():
        return None
    try:
        return read_training_config(ckpt)
    except CheckpointError:
        return None


def read_trained_model(obj: Mapping, path: Path) -> TrainedModel | None:
    """The model part of a last.ckpt that torch.load has already read (`obj`); None when `obj` is no train.py
    checkpoint (another format of torch dict)."""
    if obj.get("format") != CHECKPOINT_FORMAT:
        return None
    _check_version(obj, path)
    return TrainedModel(_tensors(obj, path, "model"), _entry(obj, path, "model_config", dict),
                        _class_names(obj, path), _training_config(obj, path))


def _load(path: Path, mmap: bool) -> dict:
    path = Path(path)
    if not path.is_file():
        raise OutputError(f"no {path.name} in {path.parent}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:  # torch's weights-only unpickler refused it: it carries code, or is no pickle
        refused = re.search(r"GLOBAL (\S+)", str(e))
        raise CheckpointError(f"cannot load {path}: " + (
            f"it holds Python objects other than tensors (it imports {refused.group(1)}); train.py reads "
            "checkpoints as tensors and plain containers only and never runs code from a file" if refused else
            "the unpickler refused it: not a train.py checkpoint, or damaged")) from e
    except Exception as e:  # truncated, or not a checkpoint: torch says which
        raise CheckpointError(f"cannot load {path}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from e
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a train.py checkpoint (no format {CHECKPOINT_FORMAT!r} entry)")
    _check_version(obj, path)
    return obj


def _check_version(obj: Mapping, path: Path) -> None:
    version = obj.get("version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r}; this vit reads versions 1 to "
                              f"{CHECKPOINT_VERSION} (a newer vit wrote it?)")


def _entry(obj: Mapping, path: Path, key: str, kind: type, optional: bool = False):
    if key not in obj:
        raise CheckpointError(f"{path}: the {key!r} entry is missing")
    value = obj[key]
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: the {key!r} entry is a {type(value).__name__}, expected a {kind.__name__}")
    return value


def _tensors(obj: Mapping, path: Path, key: str, optional: bool = False) -> dict[str, torch.Tensor] | None:
    value = _entry(obj, path, key, dict, optional)
    bad = [k for k, v in (value or {}).items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the {key!r} entry is not a state dict ({key}.{bad[0]} is not a tensor)")
    return value


def _training_config(obj: Mapping, path: Path) -> dict:
    config = _entry(obj, path, "config", dict)
    for key in ("model", "dataset"):  # what readers of a run's config rely on
        if not isinstance(config.get(key), str):
            raise CheckpointError(f"{path}: config.{key} is {config.get(key)!r}, expected a str")
    return config


def _augment(obj: Mapping, path: Path) -> dict | None:
    if "augment" not in obj:  # written before the entry existed
        return None
    augment = _entry(obj, path, "augment", dict, optional=True)
    return None if augment is None else _check_augment(augment, path, "the 'augment' entry")


def _class_names(obj: Mapping, path: Path) -> list[str]:
    names = _entry(obj, path, "class_names", list)
    if not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: the 'class_names' entry holds something other than strings")
    return names


def _state(obj: Mapping, path: Path) -> State:
    saved = _entry(obj, path, "state", dict)
    known = {f.name: f for f in fields(State)}
    for key, value in saved.items():
        if key not in known:
            raise CheckpointError(f"{path}: state.{key} is not a field of this vit's training state "
                                  f"({', '.join(known)})")
        number = known[key].type == "float"
        if isinstance(value, bool) or not isinstance(value, (int, float) if number else int):
            raise CheckpointError(f"{path}: state.{key} is {value!r}, not {'a number' if number else 'an integer'}")
        if key != "best_top1" and not 0 <= value < math.inf:
            raise CheckpointError(f"{path}: state.{key} is {value!r}, expected a finite number >= 0")
    return State(**saved)  # entries an older checkpoint lacks keep their defaults


# --------------------------------------------------------------------------------------------------------
# metrics.jsonl


def append_metrics(path: Path, row: dict) -> None:
    """Append one row; never through a symbolic link (O_NOFOLLOW), nor to anything but a regular file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        with os.fdopen(fd, "a") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OutputError(f"cannot write {path}: it is not a regular file")
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        reason = "it is a symbolic link, and run files are written only as plain files" if e.errno == errno.ELOOP \
            else e.strerror or e
        raise OutputError(f"cannot write {path}: {reason}") from e


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl; a blank line, or the torn tail of a write a crash cut short, is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise OutputError(f"cannot read {path}: {e.strerror if isinstance(e, OSError) and e.strerror else e}; "
                          "move it aside to start the run's metrics afresh") from e
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop rows of epochs after the checkpoint (written before a kill, then redone on resume) and a line a
    crash tore; rewritten atomically, so a kill here loses no row."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r.get("epoch", 0) <= epochs_done]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _budget(obj: Mapping, path: Path) -> dict | None:
    """The budget plan, checked field by field (older checkpoints have none)."""
    saved = obj.get("budget")
    if saved is None:
        return None
    kinds = {"budget_s": (int, float), "total_steps": int, "step_s": (int, float), "eval_s": (int, float),
             "spent_s": (int, float), "replans": list, "decided": dict, "max_steps": int,
             "ramp_steps": int}
    if not isinstance(saved, dict) or set(saved) - set(kinds) or "budget_s" not in saved:
        raise CheckpointError(f"{path}: the 'budget' entry is not a budget plan")
    for key, kind in kinds.items():
        value = saved.get(key)
        if key in saved and (not isinstance(value, kind) or isinstance(value, bool)):
            raise CheckpointError(f"{path}: budget.{key} is {value!r}, expected a {kind}")
        if key in saved and key not in ("replans", "decided") and value < 0:
            raise CheckpointError(f"{path}: budget.{key} is {value!r}, expected >= 0")
    _check_augment(saved.get("decided", {}), path, "budget.decided")
    return Budget.from_dict(saved).to_dict()


def _check_augment(settings: dict, path: Path, name: str) -> dict:
    """Settings a run's length decided (train.augment_for): crop_pad, hflip, eval_shift, each optional."""
    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    flip = settings.get("hflip", 0.0)
    if set(settings) - {"crop_pad", "hflip", "eval_shift"} or not count(settings.get("crop_pad", 0)) \
            or not count(settings.get("eval_shift", 0)) or not isinstance(flip, (int, float)) \
            or isinstance(flip, bool) or not 0 <= flip <= 1:
        raise CheckpointError(f"{path}: {name} is {settings!r}, expected crop_pad >= 0, hflip in [0, 1] and "
                              f"eval_shift >= 0")
    return settings


def same_folder(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one folder (both exist)."""
    return a.exists() and b.exists() and os.path.samefile(a, b)
