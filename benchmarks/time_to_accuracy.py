"""Time to accuracy: run a recipe through train.py and print validation top-1 against wall-clock minutes.

The recipes with a budget (fashion-mnist 15 min, cifar10 1 h) plan their own length on this machine; pass
`-- --budget 7.5m` for another budget, or `-- --epochs N` for a fixed length. The summary names the CPU,
whether it has native bf16, and the precision train.py chose.

Wall time is measured here, from launching `python train.py` (imports and data loading included) to the
moment train.py prints each epoch's line, i.e. just after that epoch's evaluation: the clock the
recipes' stated times use. train.py's own `elapsed_s` (training and evaluation only) is shown beside it.

    python benchmarks/time_to_accuracy.py --recipe fashion-mnist --seeds 0,1 --target 92
    python benchmarks/time_to_accuracy.py --recipe cifar10 --target 80 -- --dataset folder \\
        --data-dir ../shared/data/cifar10-jpeg/train --val-size 5000
    python benchmarks/time_to_accuracy.py --report runs/tta/fashion-mnist-seed0   # an existing run folder

Each run writes runs/tta/RECIPE-seedS/ (train.py's outputs: metrics.jsonl, curves.png, best.safetensors) and
this script adds wall.json there (wall-clock minute of each epoch, CPU, load average before and after).
The load average says whether other jobs shared the machine: on a 2-core CPU, a load above ~2 means the
times are pessimistic. Arguments after `--` go to train.py unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/(\S+)")
PRECISION = re.compile(r"; (?:cpu|cuda)\S* (fp32|bf16|fp16), ")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hardware() -> dict:
    import torch

    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "native_bf16": native_bf16,
            "platform": platform.platform()}


def run_recipe(recipe: str, seed: int, out: Path, extra: list[str]) -> dict:
    """Run train.py to the end, timestamping each epoch line as it is printed. Returns wall.json's content."""
    if (out / "metrics.jsonl").exists():
        sys.exit(f"{out} already holds a run: pass --output-root elsewhere, or --report {out} to print it")
    cmd = [sys.executable, str(ROOT / "train.py"), "--recipe", recipe, "--seed", str(seed),
           "--output", str(out), "--quiet", *extra]
    print("$", " ".join(cmd), flush=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    epoch_wall, precision, budget_lines = {}, None, []
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            m = EPOCH_LINE.match(line)
            if m:
                epoch_wall[int(m.group(1))] = time.perf_counter() - start
            if precision is None and PRECISION.search(line):
                precision = PRECISION.search(line).group(1)
            if line.startswith("budget:"):
                budget_lines.append(line.strip())
            print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {line}", end="", flush=True)
    total = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"train.py exited with status {proc.returncode}")
    wall = {"command": " ".join(cmd[1:]), "recipe": recipe, "seed": seed, "hardware": hardware(),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "precision": precision, "budget": budget_lines, "epoch_wall_s": epoch_wall, "total_wall_s": total}
    (out / "wall.json").write_text(json.dumps(wall, indent=1) + "\n")
    return wall


def report(out: Path, target: float | None) -> dict:
    """Print accuracy against minutes for one run folder; return its summary."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    wall_path = out / "wall.json"
    wall = json.loads(wall_path.read_text()) if wall_path.exists() else {}
    epoch_wall = {int(k): v for k, v in wall.get("epoch_wall_s", {}).items()}
    has_ema = any("ema_val_top1" in r for r in rows)
    print(f"\n{out}" + (f"  (seed {wall['seed']}, {wall['hardware']['cpu']}, {wall['hardware']['cores']} cores, "
                         f"native bf16 {wall['hardware'].get('native_bf16')}, {wall.get('precision')}, "
                         f"load average {wall['load_average_before'][0]:.1f} -> {wall['load_average_after'][0]:.1f})"
                         if wall else ""))
    print(f"{'epoch':>5} {'wall min':>8} {'train min':>9} {'train loss':>10} {'val top-1':>9}"
          + (f" {'EMA top-1':>9}" if has_ema else "") + f" {'img/s':>7}")
    reached = None
    nan = float("nan")
    for r in rows:
        top1 = max(r.get("val_top1", nan), r.get("ema_val_top1", -1.0))  # nan: an epoch not evaluated
        w = epoch_wall.get(r["epoch"])
        if target is not None and reached is None and top1 >= target:
            reached = (r["epoch"], w if w is not None else r["elapsed_s"])
        print(f"{r['epoch']:5d} {w / 60 if w is not None else float('nan'):8.2f} {r['elapsed_s'] / 60:9.2f} "
              f"{r['train_loss']:10.4f} {r.get('val_top1', nan):9.2f}"
              + (f" {r.get('ema_val_top1', nan):9.2f}" if has_ema else "") + f" {r['images_per_s']:7.0f}")
    last = rows[-1]
    final_top1 = max(last["val_top1"], last.get("ema_val_top1", -1.0))
    final_min = (epoch_wall.get(last["epoch"], last["elapsed_s"])) / 60
    print(f"final top-1 {final_top1:.2f}% at {final_min:.2f} min (wall, to the last evaluation)"
          + (f"; total {wall['total_wall_s'] / 60:.2f} min with saving and exit" if wall else ""))
    if target is not None:
        print(f"target {target}%: " + (f"reached at epoch {reached[0]}, {reached[1] / 60:.2f} min" if reached
                                        else "not reached"))
    print(f"curves: {out / 'curves.png'}")
    for line in wall.get("budget", []):
        print(line)
    return {"run": str(out), "seed": wall.get("seed"), "final_top1": final_top1, "final_min": final_min,
            "cpu": wall.get("hardware", {}).get("cpu"), "native_bf16": wall.get("hardware", {}).get("native_bf16"),
            "precision": wall.get("precision"),
            "best_top1": max(max(r["val_top1"], r.get("ema_val_top1", -1.0)) for r in rows if "val_top1" in r),
            "load": (wall.get("load_average_before", [None])[0], wall.get("load_average_after", [None])[0])}


def summarise(results: list[dict]) -> None:
    print("\n| seed | top-1 (%) | minutes | CPU | native bf16 | precision | load avg before/after |\n"
          "|---|---|---|---|---|---|---|")
    for r in results:
        lb, la = r["load"]
        load = f"{lb:.1f} / {la:.1f}" if lb is not None else "n/a"
        print(f"| {r['seed']} | {r['final_top1']:.2f} | {r['final_min']:.2f} | {r['cpu']} | {r['native_bf16']} | "
              f"{r['precision']} | {load} |")
    if len(results) > 1:
        acc, mins = [r["final_top1"] for r in results], [r["final_min"] for r in results]
        print(f"mean top-1 {statistics.mean(acc):.2f}% (std {statistics.stdev(acc):.2f}, min {min(acc):.2f}, "
              f"max {max(acc):.2f}) over {len(acc)} seeds; mean {statistics.mean(mins):.1f} min "
              f"(max {max(mins):.1f})")


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="fashion-mnist")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, run one after another")
    p.add_argument("--target", type=float, default=None, help="report when val top-1 first reaches this (%%)")
    p.add_argument("--output-root", default="runs/tta")
    p.add_argument("--tag", default="", help="added to each run folder's name (e.g. budget-7.5m)")
    p.add_argument("--report", nargs="+", metavar="RUN_DIR", help="only print existing run folders")
    args = p.parse_args(argv)
    if args.report:
        summarise([report(Path(d), args.target) for d in args.report])
        return
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        out = (ROOT / args.output_root / f"{args.recipe}{'-' + args.tag if args.tag else ''}-seed{seed}").resolve()
        run_recipe(args.recipe, seed, out, extra)
        results.append(report(out, args.target))
    summarise(results)


if __name__ == "__main__":
    main()
