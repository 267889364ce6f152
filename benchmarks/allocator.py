"""glibc's default allocator against `vit.precision.keep_freed_cpu_memory`, each in a process of its own.

The setting is process-wide and cannot be switched back to glibc's adaptive default, so unlike levers.py this
cannot interleave in one process: every (configuration, model, setting) trains in a fresh subprocess, which
reports the median step rate after a warm-up and the peak resident memory (VmHWM) of the whole process.

    python benchmarks/allocator.py --configs cifar,vit_s16 --models ours-eager,timm --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import throughput as tp
from vit import precision as vit_precision


def probe(config: str, model: str, keep: bool, steps: int) -> dict:
    """Runs in the subprocess: img/s of `steps` bf16 training steps after one warm-up step, and VmHWM."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if keep:
        vit_precision.keep_freed_cpu_memory()
    fields, batch = tp.CONFIGS[config]
    r = tp.make_runner(model, fields, batch, "bf16", "train", torch.device("cpu"))
    r.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        r.step()
        times.append(time.perf_counter() - t0)
    return {"images_per_s": batch / statistics.median(times), "peak_mb": tp.rss_mb("VmHWM")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="cifar,vit_s16")
    p.add_argument("--models", default="ours-eager,timm")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per setting")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        print(json.dumps(probe(**json.loads(args.probe))))
        return
    print(f"{'config':8s} {'model':11s} {'glibc default img/s':>20s} {'kept img/s':>11s} {'ratio':>6s} "
          f"{'peak MB default / kept':>23s}")
    for config in args.configs.split(","):
        for model in args.models.split(","):
            res = {False: [], True: []}
            for _ in range(args.repeats):
                for keep in (False, True):  # alternate, so drifting load hits both alike
                    spec = json.dumps(dict(config=config, model=model, keep=keep, steps=args.steps))
                    out = subprocess.run([sys.executable, __file__, "--probe", spec], capture_output=True,
                                         text=True, check=True).stdout
                    res[keep].append(json.loads(out.strip().splitlines()[-1]))
            rate = {k: statistics.median(r["images_per_s"] for r in v) for k, v in res.items()}
            peak = {k: max(r["peak_mb"] for r in v) for k, v in res.items()}
            print(f"{config:8s} {model:11s} {rate[False]:20.1f} {rate[True]:11.1f} {rate[True] / rate[False]:6.2f} "
                  f"{peak[False]:11.0f} / {peak[True]:.0f}", flush=True)


if __name__ == "__main__":
    main()
