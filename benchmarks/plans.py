"""The plan each budgeted recipe makes on this machine: which model of its ladder it trains, for how many epochs,
and when that run would end, for budgets of 15 min, 1 h, 4 h and 12 h.

Each row runs `python train.py --recipe R --budget B --plan-only --quiet` in a fresh process and a fresh run
folder: the run loads its data, times its ladder's models on real batches, builds the chosen one, times its
first steps and stops once its steps are planned (tens of seconds; minutes where the chosen model's rung trains
a teacher first, which it does before planning). The table reads the run's own lines.
Timings are this machine's at that moment: run it with nothing else going.

    python benchmarks/plans.py                                   # every budgeted recipe, four budgets
    python benchmarks/plans.py --recipes cifar10 --budgets 1h -- --dataset folder --data-dir DIR --val-size 5000
    python benchmarks/plans.py --out benchmarks/results/HW/plans-....json

Arguments after `--` go to every train.py (a recipe's data flags; run one recipe at a time with them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LINES = {  # what each row takes from train.py's output
    "model": re.compile(r"budget: training (\S+), the largest"),
    "steps": re.compile(r"here: (\d+) steps \(([\d.]+) epochs\)"),
    "step_ms": re.compile(r"budget: (\d+) ms a step and"),
    "end": re.compile(r"end at ~([\d.]+) (s|min) of"),
    "teacher": re.compile(r"teacher: training a convnet (\S+) .* for (\d+) epochs"),
}


def plan(recipe: str, budget: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "train.py", "--recipe", recipe, "--budget", budget, "--plan-only", "--quiet",
               "--output", str(Path(tmp) / "run"), *extra]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
    out = done.stdout + done.stderr
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}")
    row = dict(recipe=recipe, budget=budget, command=" ".join(cmd[1:]), wall_s=round(wall, 1),
               lines=[line for line in out.splitlines() if line.startswith(("budget:", "teacher: training"))])
    model, steps, step_ms, end, teacher = (LINES[k].search(out) for k in ("model", "steps", "step_ms", "end",
                                                                         "teacher"))
    row.update(model=model[1] if model else None, steps=int(steps[1]), epochs=float(steps[2]),
               step_ms=int(step_ms[1]),
               ends_min=(float(end[1]) / (60 if end[2] == "s" else 1)) if end else None,  # None: the whole budget
               teacher=f"convnet {teacher[1]}, {teacher[2]} epochs" if teacher else None)
    return row


def main() -> None:
    from vit.recipes import RECIPES
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(n for n, r in RECIPES.items() if r.ladder))
    p.add_argument("--budgets", default="15m,1h,4h,12h")
    p.add_argument("--out", default="")
    p.add_argument("extra", nargs="*", help="flags for train.py, after --")
    args = p.parse_args()
    load = os.getloadavg()[0]
    rows = [plan(r, b, args.extra) for r in args.recipes.split(",") for b in args.budgets.split(",")]
    print(f"{'recipe':<14} {'budget':>6}  {'model':<22} {'epochs':>7} {'ms/step':>8}  {'teacher':<28} ends")
    for r in rows:
        ends = f"~{r['ends_min']:.1f} min (longest schedule)" if r["ends_min"] is not None else "at the budget"
        print(f"{r['recipe']:<14} {r['budget']:>6}  {r['model'] or '?':<22} {r['epochs']:>7.1f} {r['step_ms']:>8}  "
              f"{r['teacher'] or '-':<28} {ends}")
    if args.out:
        import torch
        info = dict(cpu=platform.processor() or platform.machine(), torch=torch.__version__,
                    bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), load_before=load,
                    load_after=os.getloadavg()[0], rows=rows)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(info, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
