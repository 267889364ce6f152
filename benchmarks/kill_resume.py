"""Kill train.py with SIGKILL at random moments, resume each with --resume, and check that every resumed run
ends bit-identical to an uninterrupted one.

    python benchmarks/kill_resume.py              # K=20 kill points; about 10 minutes on 2 shared CPU cores
    python benchmarks/kill_resume.py --kills 3 --seed 7
    python benchmarks/kill_resume.py --only 12    # rerun kill point 12 of the default seed alone
    python benchmarks/kill_resume.py --kills 2 --epochs 2   # what the test suite runs
    python benchmarks/kill_resume.py --budget 20s --kills 5  # a time-budgeted run (--no-replan)
    python benchmarks/kill_resume.py --elastic --kills 5     # 2 gloo ranks under torchrun --max-restarts 2
    python benchmarks/kill_resume.py --train-args "--res-start 4" --kills 5  # more train.py flags for every run

The run (`run_args()`): the digits recipe, deterministic fp32 on CPU, 3 epochs of 11 steps with a checkpoint
after every step (--save-every 1, so kills often land in a checkpoint write), EMA, Mixup and padded-crop
augmentation (so every RNG that feeds training must come back exactly). First one uninterrupted reference
run (its checkpoint writes counted); then, for each kill point i, a fresh run is SIGKILLed at a moment drawn
from random.Random(seed + i): with probability 0.15 during start-up, otherwise just after its n-th
checkpoint write (n uniform over the reference's writes) plus a uniform fraction of the time between its
last two writes. Aiming by progress rather than by the clock keeps the kills spread over steps, writes and
evaluations however loaded the machine is. If the killed run left a last.ckpt it is resumed with
`train.py --resume DIR`; if it died before its first checkpoint, the same command is run again in the same
folder (which must not be refused). The final
last.ckpt must equal the reference's in every tensor bit and every value -- model, EMA, optimizer, scheduler,
RNG states, step counters -- except wall-clock timings; best.safetensors and the metrics.jsonl rows (less
timings) must match too. Prints a table; exits 1 on any difference.

With `--budget`, the run is time-budgeted (`--budget B --no-replan`): it times its first steps and fixes its
length, so killed runs may plan differently from the reference. Each resumed run must then end bit-identical
to an uninterrupted run given its plan's step count (`--steps T`, T read from its last.ckpt): the plan it
restored, not one made again. Only the fields that say how the length was chosen (`budget`, `steps`,
`replan`) may differ.

With `--elastic`, every run is a job of 2 gloo ranks under `torchrun --max-restarts 2` (the reference too:
2 ranks do not sum gradients in one process's order). A kill point SIGKILLs one worker process (a rank
drawn from the same generator), as a lost rank or node would die: torchrun stops the other rank, starts
both again, and train.py, seeing TORCHELASTIC_RESTART_COUNT > 0, resumes from the folder's last.ckpt by
itself. Nothing is rerun by hand; the job must end with exit 0 and bit-identical to the reference.

`tests/test_train.py::test_sigkill_then_resume_is_bit_identical` runs the same code with two kill points and
2 epochs; `test_torchrun_restarts_a_killed_worker_bit_identically` one elastic kill point.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RUN_ARGS = ["--recipe", "digits", "--batch-size", "128", "--save-every", "1",
            "--ema-decay", "0.99", "--mixup", "0.2", "--crop-pad", "1",
            "--deterministic", "--device", "cpu", "--precision", "fp32", "--quiet"]
EPOCHS = 3
# Wall-clock fields: the only values allowed to differ between an interrupted and an uninterrupted run.
TIMING_KEYS = {"elapsed_s", "train_s", "images_per_s"}
# One thread per process: bit-exactness is compared between runs with the same setting, and on a shared
# 2-core machine more threads only make the kill moments less reproducible.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# --elastic: the launcher, 2 CPU ranks that torchrun starts again (twice at most) when one dies.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "--max-restarts", "2"]


# With --budget: how the length was chosen, the only other fields a budgeted run and its fixed-length twin differ in.
LENGTH_KEYS = {"budget", "steps", "replan"}


def run_args(epochs: int = EPOCHS, budget: str = "", more: str = "") -> list[str]:
    """train.py's arguments for the run: `epochs` epochs long, or as many steps as fit in `budget`; `more`, further
    flags as a shell would split them."""
    length = ["--budget", budget, "--no-replan"] if budget else ["--epochs", str(epochs)]
    return [*RUN_ARGS, *shlex.split(more), *length]


def train_cmd(out: Path, args: list[str], resume: bool = False, elastic: bool = False) -> list[str]:
    run = ["--resume", str(out)] if resume else ["--output", str(out)]
    return [*(TORCHRUN if elastic else [sys.executable]), str(ROOT / "train.py"), *args, *run]


# --------------------------------------------------------------------------------------------------------
# Running, killing, resuming


@dataclass
class Reference:
    out: Path
    args: list[str]  # train.py's arguments: the same for every run compared with this one
    seconds: float  # wall time of the whole run
    first_ckpt_s: float  # when its first last.ckpt appeared
    saves: int  # how many times it wrote last.ckpt
    elastic: bool = False  # 2 ranks under torchrun --max-restarts (`TORCHRUN`)


class SaveWatcher:
    """Counts the writes of out/last.ckpt as they happen: each atomic write renames a new file into place,
    so (inode, mtime) changes once per write."""

    def __init__(self, out: Path):
        self.path, self.last, self.count, self.times = out / "last.ckpt", None, 0, []

    def poll(self) -> int:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.count
        if (st.st_ino, st.st_mtime_ns) != self.last:
            self.last = (st.st_ino, st.st_mtime_ns)
            self.count += 1
            self.times.append(time.perf_counter())
        return self.count

    def gap(self) -> float:
        """The time between the last two writes (a training step, or an epoch's evaluation)."""
        return self.times[-1] - self.times[-2] if len(self.times) > 1 else 0.1


def start_run(out: Path, args: list[str], elastic: bool = False) -> subprocess.Popen:
    return subprocess.Popen(train_cmd(out, args, elastic=elastic), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def reference_run(out: Path, args: list[str], elastic: bool = False) -> Reference:
    """The uninterrupted run, timed, with its checkpoint writes counted (to aim the kills)."""
    start = time.perf_counter()
    proc, watch, first = start_run(out, args, elastic), SaveWatcher(out), None
    while proc.poll() is None:
        if watch.poll() and first is None:
            first = time.perf_counter() - start
        time.sleep(0.002)
    seconds = time.perf_counter() - start
    log = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed (exit {proc.returncode}):\n{log}")
    return Reference(out, args, seconds, first if first is not None else seconds, ckpt_step(out), elastic)


def ckpt_step(out: Path) -> int | None:
    try:
        return torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["state"]["step"]
    except FileNotFoundError:
        return None


STARTUP_P = 0.15  # share of kill points aimed at start-up, before the first checkpoint


@dataclass
class Interrupted:
    exit_code: int
    at_s: float  # when the signal was sent, seconds after the start (inf: the run ended first)
    aim: str  # "startup" or "after save N" (of the reference's `saves`)
    log: str


def worker_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the train.py processes torchrun (pid `launcher`) runs now, read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0") if ppid == launcher else []
        except (ValueError, IndexError, OSError):  # not a process, or one that has just exited
            continue
        rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
        if rank is not None:
            found[rank] = int(entry.name)
    return found


def interrupt(out: Path, ref: Reference, rng: random.Random, signum: int = signal.SIGKILL,
              after_save: int | None = None) -> Interrupted:
    """Start a run into `out` and send it `signum` at a moment drawn from `rng`: with probability STARTUP_P
    during start-up (uniform over the reference's time to its first checkpoint), otherwise after its n-th
    checkpoint write (n uniform over the reference's writes) plus a uniform fraction of the time between
    its last two writes -- so kills land in steps, writes and evaluations alike, however loaded the machine.
    `after_save` picks n instead of the draw.

    An elastic run's SIGKILL goes to one worker (rank drawn from `rng`), as a lost rank dies; other signals go
    to torchrun, which passes them to every rank, as a preemption does. The run's output and exit code are
    then torchrun's, after its restarts."""
    startup, u, v = rng.random() < STARTUP_P, rng.random(), rng.random()
    victim_rank = rng.randrange(2) if ref.elastic else None
    if after_save is not None:
        startup = False
    n = after_save if after_save is not None else 1 + int(u * ref.saves)
    start = time.perf_counter()
    proc, watch = start_run(out, ref.args, ref.elastic), SaveWatcher(out)
    try:
        if startup:
            deadline = start + u * ref.first_ckpt_s
        else:
            while watch.poll() < n and proc.poll() is None:
                time.sleep(0.002)
            deadline = time.perf_counter() + v * watch.gap()
        while time.perf_counter() < deadline and proc.poll() is None:
            time.sleep(0.002)
        victim = proc.pid
        while victim_rank is not None and signum == signal.SIGKILL and victim == proc.pid and proc.poll() is None:
            victim = worker_pids(proc.pid).get(victim_rank, proc.pid)  # a start-up kill waits for the worker
        at = time.perf_counter() - start
        if proc.poll() is None:
            os.kill(victim, signum)
        else:
            at = float("inf")
        log, _ = proc.communicate(timeout=600)
    except BaseException:
        proc.kill()  # never leave a training run behind
        proc.wait()
        raise
    aim = ("startup" if startup else f"save {n}+{v:.2f}") + (f" r{victim_rank}" if victim_rank is not None else "")
    return Interrupted(proc.returncode, at, aim, log)


def finish(out: Path, args: list[str]) -> tuple[str, int | None, str]:
    """Resume the interrupted run in `out` (started with `args`) to its end, or restart it if it never saved.
    Returns (how, step resumed from, output)."""
    step = ckpt_step(out)
    cmd = train_cmd(out, args, resume=step is not None)
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    return ("resume" if step is not None else "restart"), step, r.stdout + r.stderr


# --------------------------------------------------------------------------------------------------------
# Comparing


def differences(a, b, path: str = "", skip: frozenset = frozenset()) -> list[str]:
    """Paths where two checkpoint trees differ: tensors bit for bit (dtype, shape, every bit), the rest by ==.
    Keys in TIMING_KEYS and `skip` are not compared."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k in TIMING_KEYS or k in skip:
                continue
            if k not in a or k not in b:
                out.append(f"{path}{k} (only in one)")
            else:
                out += differences(a[k], b[k], f"{path}{k}.", skip)
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path[:-1]} (length {len(a)} vs {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}{i}.", skip)]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))
        return [] if same else [path[:-1]]
    return [] if a == b else [f"{path[:-1]} ({a!r} vs {b!r})"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes: NaN == NaN and -0.0 != 0.0, as "bit-identical" means."""
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8) if t.numel() else t


def max_weight_diff(a: dict, b: dict) -> float:
    return max((x.double() - b[k].double()).abs().max().item() for k, x in a.items() if x.is_floating_point())


def metrics_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def compare_runs(ref: Path, run: Path, skip: frozenset = frozenset()) -> tuple[list[str], float]:
    """(differences, max |weight difference|) between two finished run folders."""
    from safetensors.torch import load_file

    a = torch.load(ref / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    diffs = [f"last.ckpt:{d}" for d in differences(a, b, skip=skip)]
    diffs += [f"best.safetensors:{d}" for d in differences(load_file(ref / "best.safetensors"),
                                                           load_file(run / "best.safetensors"))]
    if metrics_rows(ref) != metrics_rows(run):
        diffs.append("metrics.jsonl rows")
    return diffs, max_weight_diff(a["model"], b["model"])


# --------------------------------------------------------------------------------------------------------
# One kill point


@dataclass
class KillResult:
    index: int
    seed: int
    kill_s: float
    aim: str
    exit_code: int
    ckpt_step: int | None  # the step last.ckpt held after the kill (None: no checkpoint yet)
    torn_tmp: int  # temporary files the kill left behind (it landed in the middle of a write); -1: not known
    how: str  # "resume" or "restart" (by hand), "torchrun" (an elastic run restarted by torchrun)
    diffs: list[str]
    max_diff: float
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.diffs


def fixed_length_twin(work: Path, ref: Reference, run: Path) -> Path:
    """An uninterrupted run of the budgeted `ref.args` given the step count `run` planned, as --steps (kept
    in `work` per count: several kill points may plan alike)."""
    total = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["budget"]["total_steps"]
    out = work / f"steps{total}"
    if not (out / "last.ckpt").exists():
        args = [a for a in ref.args if a != "--no-replan"]
        i = args.index("--budget")
        reference_run(out, args[:i] + ["--steps", str(total)] + args[i + 2:])
    return out


def restarted_from(log: str) -> int | None:
    """The step an elastic run's restart resumed from (its "resumed DIR at ..., step S" line); None when
    the restart started afresh (the kill came before the first last.ckpt)."""
    found = re.findall(r"^resumed .* at epoch \d+, batch \d+, step (\d+)$", log, re.MULTILINE)
    return int(found[-1]) if found else None


def kill_point(index: int, seed: int, ref: Reference, work: Path) -> KillResult:
    out = work / f"kill{index:02d}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    killed = interrupt(out, ref, random.Random(seed + index))
    step = ckpt_step(out)  # must load: a torn last.ckpt fails here
    torn = len(list(out.glob(".*.tmp")))
    if ref.elastic:  # torchrun has restarted the job and finished it
        if killed.exit_code != 0:
            raise RuntimeError(f"the elastic run did not survive the kill (exit {killed.exit_code}):\n{killed.log}")
        how, step, torn = "torchrun", restarted_from(killed.log), -1  # the restart removed any torn file
    else:
        how, _, _ = finish(out, ref.args)
    if "--budget" in ref.args:
        diffs, max_diff = compare_runs(fixed_length_twin(work, ref, out), out, frozenset(LENGTH_KEYS))
    else:
        diffs, max_diff = compare_runs(ref.out, out)
    return KillResult(index, seed + index, killed.at_s, killed.aim, killed.exit_code, step, torn, how, diffs,
                      max_diff, time.perf_counter() - start)


def print_table(results: list[KillResult], ref: Reference) -> None:
    print(f"\nreference: {ref.seconds:.1f} s, first last.ckpt at {ref.first_ckpt_s:.1f} s; "
          f"train.py {' '.join(ref.args)}")
    print(f"{'#':>3} {'seed':>6} {'kill at':>8} {'aimed at':>16} {'exit':>5} {'ckpt step':>9} {'mid-write':>9} "
          f"{'then':>8} {'max |dw|':>9} {'result':>10} {'time':>6}")
    for r in results:
        print(f"{r.index:>3} {r.seed:>6} {r.kill_s:>7.2f}s {r.aim:>16} {r.exit_code:>5} "
              f"{'-' if r.ckpt_step is None else r.ckpt_step:>9} {'?' if r.torn_tmp < 0 else 'yes' if r.torn_tmp else 'no':>9} {r.how:>8} "
              f"{r.max_diff:>9.1e} {'identical' if r.ok else 'DIFFERENT':>10} {r.seconds:>5.0f}s")
        for d in r.diffs[:5]:
            print(f"      differs: {d}")
    n_ok = sum(r.ok for r in results)
    print(f"{n_ok}/{len(results)} resumed runs bit-identical to the uninterrupted run")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="kill points (K)")
    p.add_argument("--seed", type=int, default=0, help="kill point i draws its moment from Random(seed + i)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="length of the run (11 steps an epoch)")
    p.add_argument("--only", type=int, default=None, help="run kill point ONLY alone")
    p.add_argument("--jobs", type=int, default=1, help="kill points run at once (1 keeps timings clean)")
    p.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed)")
    p.add_argument("--budget", default="", help="a time-budgeted run instead, e.g. 20s (its plan is compared)")
    p.add_argument("--elastic", action="store_true", help="2 ranks under torchrun --max-restarts 2; SIGKILL one "
                   "worker, torchrun restarts the job, train.py resumes by itself")
    p.add_argument("--train-args", default="", help="more train.py flags for every run, e.g. '--res-start 4'")
    args = p.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kill_resume-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"kill_resume: seed {args.seed}, {args.kills} kill points, runs in {work}", flush=True)
    try:
        shutil.rmtree(work / "reference", ignore_errors=True)
        if args.elastic and args.budget:
            p.error("--elastic runs fixed-length jobs: leave out --budget")
        ref = reference_run(work / "reference", run_args(args.epochs, args.budget, args.train_args), args.elastic)
        print(f"reference run: {ref.seconds:.1f} s (first checkpoint at {ref.first_ckpt_s:.1f} s)", flush=True)
        indices = [args.only] if args.only is not None else range(args.kills)
        results = []
        with ThreadPoolExecutor(args.jobs) as pool:  # threads only wait on train.py processes
            for r in pool.map(lambda i: kill_point(i, args.seed, ref, work), indices):
                results.append(r)
                print(f"  kill {r.index}: seed {r.seed}, SIGKILL at {r.kill_s:.2f} s ({r.aim}), checkpoint "
                      f"step {r.ckpt_step}, {r.how}: {'identical' if r.ok else 'DIFFERENT'}", flush=True)
        print_table(results, ref)
        return 0 if all(r.ok for r in results) else 1
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
