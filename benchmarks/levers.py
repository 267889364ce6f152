"""A/B measurements of single speed levers on our model, interleaved in one process (medians).

Each lever compares runners that differ in that one setting only; ratios are relative to the first.
See benchmarks/README.md for the predictions and the results.

    python benchmarks/levers.py attn-kernel --configs cifar --precisions bf16 --modes train
    python benchmarks/levers.py compile adamw threads --configs cifar,vit_s16
"""

from __future__ import annotations

import argparse
import ctypes
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
    "gelu-recompute": [("saved", dict(kind="ours-eager", recompute_gelu=False), None),
                       ("recomputed", dict(kind="ours-eager", recompute_gelu=True), None)],
    "adamw": [("for-loop", dict(kind="ours-eager", adamw="for-loop"), None),
              ("foreach", dict(kind="ours-eager", adamw="foreach"), None),
              ("fused", dict(kind="ours-eager", adamw="fused"), None)],
    # fp32 against bf16 autocast in the same group, for the --precision auto rule (ignores --precisions)
    "precision": [("fp32", dict(kind="ours-eager", precision="fp32"), None),
                  ("bf16", dict(kind="ours-eager", precision="bf16"), None)],
    "threads": [("2 threads", dict(kind="ours-eager"), 2), ("1 thread", dict(kind="ours-eager"), 1)],
    # glibc keeps freed blocks (vit.precision.keep_freed_cpu_memory) or returns them to the kernel; set around
    # each step of the runner, so run it in a process of its own (throughput.py keeps them for every row)
    "allocator": [("glibc default", dict(kind="ours-eager"), None), ("keep freed", dict(kind="ours-eager"), None)],
    "allocator-timm": [("glibc default", dict(kind="timm"), None), ("keep freed", dict(kind="timm"), None)],
}


def set_malloc_thresholds(keep: bool) -> None:
    """keep: vit's setting (32 MB mmap threshold, no trimming); else glibc's initial 128 KB thresholds."""
    if keep:
        vit_precision.keep_freed_cpu_memory()
    else:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD
        mallopt(-1, 128 << 10)  # M_TRIM_THRESHOLD


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
    if not any(lever.startswith("allocator") for lever in args.levers):
        vit_precision.keep_freed_cpu_memory()  # as throughput.py, train.py and evaluate.py
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
                        if lever.startswith("allocator"):  # glibc's thresholds around each step
                            def step(inner=r.step, keep=name == "keep freed"):
                                set_malloc_thresholds(keep)
                                inner()
                            r.step = step
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
