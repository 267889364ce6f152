"""Start-up time: `python train.py --help`, `python evaluate.py --help`, `import vit` against `import torch`, and
`import timm` beside `import vit`.

Each command is a fresh process, timed from outside (wall clock from its start to its exit), in rounds that run
every command once in turn (after one round not counted), so that load from other processes hits them alike;
the table gives min, median and max seconds over the rounds. `--before DIR` times another checkout too (for
example `git worktree add /tmp/before COMMIT`), interleaved with this one, for a before/after table. Derived:
`import vit` over `import torch` (medians) and `import timm` / `import vit` (the median of the rounds' ratios).

    python benchmarks/startup.py                               # this checkout, 7 rounds (about a minute)
    python benchmarks/startup.py --before /tmp/before --rounds 9 --out benchmarks/results/HW/startup-....json

Results: the table on stdout and JSON (every time, the CPU, the load average before and after, torch's version).
Byte-code caches count: with PYTHONDONTWRITEBYTECODE set, every run compiles this package's modules again (a
user's runs do not), so the JSON records it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

# name: argv after the interpreter; "checkout" rows run in each checkout, the others (no vit in them) once a round.
COMMANDS = {
    "import torch": (["-c", "import torch"], False),
    "import timm": (["-c", "import timm"], False),
    "import vit": (["-c", "import vit"], True),
    "train.py --help": (["train.py", "--help"], True),
    "evaluate.py --help": (["evaluate.py", "--help"], True),
}


def run_once(argv: list[str], root: Path) -> float:
    """Seconds from starting `python ARGV` in `root` (its vit first on the path) to its exit."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, *argv], cwd=root, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"python {' '.join(argv)} in {root} failed: {p.stderr.strip().splitlines()[-1:]}")
    return elapsed


def cpu_description() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return {"model": model, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "avx2": "avx2" in flags}


def torch_version() -> str:
    return subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                          text=True).stdout.strip()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (the median is reported)")
    p.add_argument("--before", default=None, metavar="DIR", help="another checkout to time beside this one")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/startup-<time>.json)")
    args = p.parse_args(argv)

    checkouts = {"after": ROOT} if args.before is None else {"before": Path(args.before).resolve(), "after": ROOT}
    jobs = [(name, label, root) for name, (_, per_checkout) in COMMANDS.items()
            for label, root in (checkouts.items() if per_checkout else [("-", ROOT)])]
    machine = {"cpu": cpu_description(), "python": platform.python_version(), "torch": torch_version(),
               "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
               "load_average_start": os.getloadavg()}
    times: dict[tuple[str, str], list[float]] = {(name, label): [] for name, label, _ in jobs}
    for r in range(args.rounds + 1):  # round 0 warms the file cache and the bytecode caches
        for name, label, root in jobs:
            t = run_once(COMMANDS[name][0], root)
            if r:
                times[name, label].append(t)
    machine["load_average_end"] = os.getloadavg()

    rows = [{"command": f"python {' '.join(COMMANDS[name][0])}" if name.endswith("--help") else f"python -c '{name}'",
             "checkout": label, "times_s": [round(t, 3) for t in ts], "min_s": round(min(ts), 3),
             "median_s": round(statistics.median(ts), 3), "max_s": round(max(ts), 3)}
            for (name, label), ts in times.items()]
    median = {(name, label): statistics.median(ts) for (name, label), ts in times.items()}
    derived = {}
    for label in checkouts:
        derived[label] = {
            "import_vit_over_import_torch_s": round(median["import vit", label] - median["import torch", "-"], 3),
            "import_timm_over_import_vit_ratio": round(statistics.median(
                t / v for t, v in zip(times["import timm", "-"], times["import vit", label])), 2),
        }

    width = max(len(r["command"]) for r in rows)
    print(f"{machine['cpu']['model']}, {machine['cpu']['cores']} cores, python {machine['python']}, torch "
          f"{machine['torch']}; load average {machine['load_average_start'][0]:.2f} at the start, "
          f"{machine['load_average_end'][0]:.2f} at the end; {args.rounds} rounds, seconds")
    print(f"{'command':<{width}}  {'checkout':>8}  {'min':>6}  {'median':>6}  {'max':>6}")
    for r in rows:
        print(f"{r['command']:<{width}}  {r['checkout']:>8}  {r['min_s']:6.2f}  {r['median_s']:6.2f}  {r['max_s']:6.2f}")
    for label, d in derived.items():
        print(f"{label}: import vit - import torch = {d['import_vit_over_import_torch_s']:.2f} s; import timm / "
              f"import vit = {d['import_timm_over_import_vit_ratio']:.2f}x")

    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"startup-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"argv": sys.argv, "machine": machine, "rounds": args.rounds,
                               "checkouts": {k: str(v) for k, v in checkouts.items()}, "rows": rows,
                               "derived": derived}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
