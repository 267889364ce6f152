"""A/B measurements of single speed levers on our model, interleaved in one process (medians).

Each lever compares runners that differ in that one setting only; ratios are relative to the first.
benchmarks/README.md gives the results; benchmarks/LOG.md the predictions made before each measurement.

    python benchmarks/levers.py attn-kernel --configs cifar --precisions bf16 --modes train
    python benchmarks/levers.py compile adamw threads --configs cifar,vit_s16
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

import throughput as tp
from vit import precision as vit_precision

# lever: list of (name, make_runner keyword overrides, threads or None)
LEVERS = {
    "attn-kernel": [("sdpa", dict(kind="ours-eager", attn_kernel="sdpa"), None),
                    ("matmul", dict(kind="ours-eager", attn_kernel="matmul"), None)],
    "attn-kernel-compiled": [("sdpa", dict(kind="ours-eager", attn_kernel="sdpa", compiled=True), None),
                             ("matmul", dict(kind="ours-eager", attn_kernel="matmul", compiled=True), None)],
    "compile": [("eager", dict(kind="ours-eager"), None), ("compiled", dict(kind="ours-eager", compiled=True), None)],
    "timm-compile": [("timm", dict(kind="timm"), None), ("timm-compiled", dict(kind="timm", compiled=True), None),
                     ("ours-compiled", dict(kind="ours-eager", compiled=True), None)],
    "compile-vs-timm": [("timm", dict(kind="timm"), None), ("ours", dict(kind="ours-eager"), None),
                        ("ours-compiled", dict(kind="ours-eager", compiled=True), None)],
    "gelu-recompute": [("saved", dict(kind="ours-eager", mlp_kernel="plain"), None),
                       ("recomputed", dict(kind="ours-eager", mlp_kernel="recompute"), None)],
    "adamw": [("for-loop", dict(kind="ours-eager", adamw="for-loop"), None),
              ("foreach", dict(kind="ours-eager", adamw="foreach"), None),
              ("fused", dict(kind="ours-eager", adamw="fused"), None)],
    # fp32 against bf16 autocast in the same group, for the --precision auto rule (ignores --precisions)
    "precision": [("fp32", dict(kind="ours-eager", precision="fp32"), None),
                  ("bf16", dict(kind="ours-eager", precision="bf16"), None)],
    "threads": [("2 threads", dict(kind="ours-eager"), 2), ("1 thread", dict(kind="ours-eager"), 1)],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("levers", nargs="+", choices=list(LEVERS))
    p.add_argument("--configs", default="cifar")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch._dynamo.config.recompile_limit = torch._dynamo.config.cache_size_limit = 64
    torch._inductor.config.freezing = True
    vit_precision.keep_freed_cpu_memory()  # as throughput.py, train.py and evaluate.py (allocator.py measures it)
    device = torch.device("cpu")
    default_threads = torch.get_num_threads()
    for lever in args.levers:
        for config in args.configs.split(","):
            fields, batch = tp.CONFIGS[config]
            batch = args.batch or batch
            for precision in ["-"] if lever == "precision" else args.precisions.split(","):
                for mode in args.modes.split(","):
                    if lever == "adamw" and mode == "infer":
                        continue
                    runners = []
                    for name, kw, threads in LEVERS[lever]:
                        kw = dict(kw)
                        prec = kw.pop("precision", precision)
                        r = tp.make_runner(kw.pop("kind"), fields, batch, prec, mode, device, name=name, **kw)
                        if threads:  # set the thread count around each step of this runner
                            def step(inner=r.step, n=threads):
                                torch.set_num_threads(n)
                                inner()
                                torch.set_num_threads(default_threads)
                            r.step = step
                        runners.append(r)
                    times = tp.time_runners(runners, args.rounds, args.warmup)
                    med = {n: statistics.median(t) for n, t in times.items()}
                    base = med[runners[0].name]
                    cells = ", ".join(f"{n} {batch / m:.1f} img/s ({base / m:.2f}x)" for n, m in med.items())
                    print(f"{lever:20s} {config:8s} {precision} {mode:5s} | {cells} | load {os.getloadavg()[0]:.1f}",
                          flush=True)
                    del runners
                    torch._dynamo.reset()


if __name__ == "__main__":
    main()
