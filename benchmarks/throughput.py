"""Throughput of this package's ViT against timm (and torchvision, transformers) on the same machine.

One process, one model configuration at a time. For each (configuration, precision, mode) every contender
is built and warmed up (compiling where it compiles), then timed in interleaved rounds (A B C A B C ...,
order rotated every round) so that load from other processes hits all of them alike; a row reports the
median. Modes: "infer" is one forward pass under inference_mode; "train" is one full step: zero_grad,
forward and cross-entropy under autocast, backward, AdamW step.

The same run measures the matrix-multiply ceiling (large square GEMMs, fp32 and bf16), timed as one more
contender in every row group's rounds, and reports model FLOP utilisation: MFU = model FLOPs/s / ceiling,
with model FLOPs from `vit.count_flops` (training counts 3x the forward). Peak resident memory of a training step is measured per row in its own subprocess.

    python benchmarks/throughput.py                                  # everything (about an hour on 2 busy cores)
    python benchmarks/throughput.py --configs cifar --precisions bf16 --models ours,timm --rounds 3  # minutes
    python benchmarks/throughput.py --configs cifar --modes infer --precisions bf16 --no-memory

Results: a table on stdout and JSON in benchmarks/results/ (with the machine description).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import vit  # noqa: E402
from vit import kernels as vit_kernels  # noqa: E402
from vit import precision as vit_precision  # noqa: E402
from vit.model import ViTConfig, VisionTransformer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# name: (ViTConfig fields, batch size). Fashion-MNIST-size keeps CIFAR-size's body so the two compare.
CONFIGS = {
    "cifar": (dict(img_size=32, patch_size=4, in_chans=3, embed_dim=192, depth=9, num_heads=3, num_classes=10), 256),
    "fmnist": (dict(img_size=28, patch_size=4, in_chans=1, embed_dim=192, depth=9, num_heads=3, num_classes=10), 256),
    # the fashion-mnist recipe's model (vit_micro_patch7_28): 16 patch tokens
    "fmnist-p7": (dict(img_size=28, patch_size=7, in_chans=1, embed_dim=192, depth=6, num_heads=3, num_classes=10), 256),
    # the smaller models the budgeted recipes train where too few epochs of micro fit (vit_slim_*)
    "fmnist-slim": (dict(img_size=28, patch_size=7, in_chans=1, embed_dim=128, depth=6, num_heads=4, num_classes=10), 256),
    "cifar-slim": (dict(img_size=32, patch_size=4, in_chans=3, embed_dim=128, depth=6, num_heads=4, num_classes=10), 128),
    "vit_ti16": (dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=1000), 32),
    "vit_s16": (dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, num_classes=1000), 32),
    # a very narrow model, for the --precision auto rule (bf16 casts can cost more than they save)
    "nano": (dict(img_size=32, patch_size=4, in_chans=3, embed_dim=64, depth=6, num_heads=4, num_classes=10), 256),
}
DEFAULT_CONFIGS = ["cifar", "fmnist", "vit_ti16", "vit_s16"]
# "ours": this package's fast path (the compiled model); "ours-eager": the plain module.
# "timm-compiled" gives timm the same compilation, so the gain of the model code itself can be read off.
MODELS = ["ours", "ours-eager", "timm", "timm-compiled", "torchvision", "transformers"]
DEFAULT_MODELS = ["ours", "ours-eager", "timm", "torchvision", "transformers"]
ADAMW = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------------------
# Machine


def machine_description(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    d = {
        "cpu": cpu, "cores": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "vit": vit.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": vit_precision.cpu_has_bf16(), "load_average_start": os.getloadavg(),
    }
    for pkg in ("timm", "torchvision", "transformers"):
        try:
            d[pkg] = __import__(pkg).__version__
        except ImportError:
            d[pkg] = None
    if device.type == "cuda":
        d["gpu"] = torch.cuda.get_device_name(device)
        d["cuda"] = torch.version.cuda
    return d


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_ceiling(device: torch.device, precision: str, size: int | None = None) -> float:
    """Best GFLOP/s of large square matrix products in this precision: the practical hardware limit.
    `size`: the largest product's side (default 4096 on CPU, 8192 on a GPU)."""
    dtype = DTYPES[precision]
    best = 0.0
    size = size or (4096 if device.type == "cpu" else 8192)
    for n, repeats in ((size // 2, 5), (size, 3)) if device.type == "cpu" else ((size, 10),):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def gemm_runner(device: torch.device, precision: str, n: int = 2048, k: int = 4) -> "Runner":
    """k square GEMMs per step, timed in the contenders' rounds: the ceiling under the same load as the rows."""
    a = torch.randn(n, n, device=device).to(DTYPES[precision])
    b = torch.randn(n, n, device=device).to(DTYPES[precision])

    def step():
        for _ in range(k):
            a @ b
        sync(device)

    step()
    return Runner(f"gemm-{precision}", step, flops=2 * n**3 * k)


# --------------------------------------------------------------------------------------------------------
# Contenders: each builds a module with the identical architecture and returns logits


def build_model(kind: str, fields: dict, **kernels) -> nn.Module:
    """`kernels`: ours only, attn_kernel / mlp_kernel (vit.kernels policy names; create_model's defaults)."""
    f = fields
    if kind in ("ours", "ours-eager"):
        return vit_kernels.use(VisionTransformer(ViTConfig(**f)), attn=kernels.get("attn_kernel", "auto"),
                               mlp=kernels.get("mlp_kernel", "auto"))
    if kind in ("timm", "timm-compiled"):
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        return TimmViT(**f)
    if kind == "torchvision":
        from torchvision.models.vision_transformer import VisionTransformer as TvViT

        m = TvViT(image_size=f["img_size"], patch_size=f["patch_size"], num_layers=f["depth"],
                  num_heads=f["num_heads"], hidden_dim=f["embed_dim"], mlp_dim=4 * f["embed_dim"],
                  num_classes=f["num_classes"])
        if f.get("in_chans", 3) != 3:  # torchvision's stem is fixed to RGB
            m.conv_proj = nn.Conv2d(f["in_chans"], f["embed_dim"], f["patch_size"], f["patch_size"])
        return m
    if kind == "transformers":
        from transformers import ViTConfig as HfConfig, ViTForImageClassification

        cfg = HfConfig(image_size=f["img_size"], patch_size=f["patch_size"], num_channels=f.get("in_chans", 3),
                       hidden_size=f["embed_dim"], num_hidden_layers=f["depth"], num_attention_heads=f["num_heads"],
                       intermediate_size=4 * f["embed_dim"], num_labels=f["num_classes"], layer_norm_eps=1e-6)
        cfg._attn_implementation = "sdpa"

        class Logits(nn.Module):  # the model returns an output object; the benchmark wants the tensor
            def __init__(self):
                super().__init__()
                self.m = ViTForImageClassification(cfg)

            def forward(self, x):
                return self.m(pixel_values=x).logits

        return Logits()
    raise ValueError(f"unknown model {kind!r}; choose from {MODELS}")


def available(kind: str) -> bool:
    module = {"timm": "timm", "timm-compiled": "timm", "torchvision": "torchvision", "transformers": "transformers"}
    try:
        if kind in module:
            __import__(module[kind])
        return True
    except ImportError:
        return False


def compiles(kind: str, mode: str) -> bool:
    """Our fast path is the compiled model, for inference (weights frozen) and for training (train.py
    --compile): compiled training steps measured 1.03-1.05x eager once the allocator stopped faulting in
    fresh pages (benchmarks/README.md). timm-compiled gives timm the same compilation."""
    return kind in ("ours", "timm-compiled")


@dataclass
class Runner:
    """One contender in one (config, precision, mode): `step()` runs one timed unit of work."""

    name: str
    step: callable
    compile_s: float = 0.0
    flops: int = 0  # GEMM runners only


def make_runner(kind: str, fields: dict, batch: int, precision: str, mode: str, device: torch.device, *,
                name: str | None = None, compiled: bool | None = None, attn_kernel: str | None = None,
                mlp_kernel: str | None = None, adamw: str = "fused", grad_checkpointing: bool = False,
                zero_to_none: bool = True) -> Runner:
    """`compiled`, `attn_kernel` ("auto"/"sdpa"/"matmul", ours only), `mlp_kernel` ("recompute"/"plain", ours
    only) and `adamw` ("fused", "foreach", "for-loop") override the defaults; benchmarks/levers.py uses them
    for A/B comparisons."""
    torch.manual_seed(0)
    kernels = {k: v for k, v in dict(attn_kernel=attn_kernel, mlp_kernel=mlp_kernel).items() if v}
    model = build_model(kind, fields, **kernels).to(device)
    compiled = compiles(kind, mode) if compiled is None else compiled
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    x = torch.randn(batch, fields.get("in_chans", 3), fields["img_size"], fields["img_size"], device=device)
    y = torch.randint(0, fields["num_classes"], (batch,), device=device)
    amp = torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32")
    fn = torch.compile(model) if compiled else model
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), amp:
                fn(x)
            sync(device)
    else:
        model.train()
        # fused AdamW (one kernel over all parameters, CPU and CUDA) for every contender
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **ADAMW[adamw])
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

        # as train.py --compile runs its steps (the partitioner's activation budget), for every compiled contender
        settings = vit_precision.compiled_training_settings() if compiled else None

        def step():
            opt.zero_grad(set_to_none=zero_to_none)
            with amp, settings or contextlib.nullcontext():
                loss = F.cross_entropy(fn(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sync(device)
    t0 = time.perf_counter()
    step()  # the first call compiles
    return Runner(name or kind, step, time.perf_counter() - t0 if compiled else 0.0)


def time_runners(runners: list[Runner], rounds: int, warmup: int) -> dict[str, list[float]]:
    for r in runners:
        for _ in range(warmup):
            r.step()
    times = {r.name: [] for r in runners}
    for i in range(rounds):
        k = i % len(runners)
        for r in runners[k:] + runners[:k]:  # rotate the order so no contender always runs first
            t0 = time.perf_counter()
            r.step()
            times[r.name].append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------------------------------------
# Memory: one training step in a fresh process


def rss_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(spec: dict) -> dict:
    """Runs inside the subprocess: warm up, then measure one training step's peak memory.

    CPU: peak resident set size (VmHWM, reset just before the step via /proc/self/clear_refs), and the
    step's increase over the resident size before it ("step_mb": activations and temporaries; gradients
    are kept between steps so they are not counted again). CUDA: max_memory_allocated.
    """
    device = torch.device(spec["device"])
    fields, batch = CONFIGS[spec["config"]][0], spec.get("batch") or CONFIGS[spec["config"]][1]
    r = make_runner(spec["model"], fields, batch, spec["precision"], "train", device,
                    grad_checkpointing=spec.get("grad_checkpointing", False), zero_to_none=False,
                    attn_kernel=spec.get("attn_kernel"), compiled=spec.get("compiled"),
                    mlp_kernel=spec.get("mlp_kernel"))
    r.step()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
        r.step()
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        before = rss_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter to the current RSS
        r.step()
        peak = rss_mb("VmHWM")
    return {"peak_mb": round(peak, 1), "before_mb": round(before, 1), "step_mb": round(peak - before, 1)}


def measure_memory(spec: dict) -> dict:
    # A fixed mmap threshold makes glibc return freed large blocks at once, so RSS follows live tensors.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--memory-probe", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------
# Main


def fmt_table(rows: list[dict]) -> str:
    head = ["config", "mode", "prec", "model", "img/s", "x timm", "GFLOP/s", "MFU", "MFU(bf16)", "peak MB",
            "step MB", "compile s"]
    lines = [head]
    for r in rows:
        mem = r.get("memory", {})
        lines.append([
            r["config"], r["mode"], r["precision"], r["model"], f"{r['images_per_s']:.1f}",
            f"{r['vs_timm']:.2f}" if r.get("vs_timm") else "-", f"{r['gflops']:.0f}",
            f"{100 * r['mfu']:.0f}%", f"{100 * r['mfu_bf16']:.0f}%" if r.get("mfu_bf16") else "-",
            f"{mem['peak_mb']:.0f}" if "peak_mb" in mem else "-", f"{mem['step_mb']:.0f}" if "step_mb" in mem else "-",
            f"{r['compile_s']:.0f}" if r["compile_s"] else "-",
        ])
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(l, widths)) for l in lines)


def summary(rows: list[dict]) -> list[str]:
    """Per config and mode: each package at its best precision, and our ratio to timm's best."""
    out = []
    for config in dict.fromkeys(r["config"] for r in rows):
        for mode in ("infer", "train"):
            best = {}
            for r in rows:
                if r["config"] == config and r["mode"] == mode:
                    if r["model"] not in best or r["images_per_s"] > best[r["model"]]["images_per_s"]:
                        best[r["model"]] = r
            if "ours" in best and "timm" in best:
                o, t = best["ours"], best["timm"]
                line = (f"{config:9s} {mode:5s}  ours {o['images_per_s']:.1f} img/s ({o['precision']}) vs timm "
                        f"{t['images_per_s']:.1f} ({t['precision']}): {o['images_per_s'] / t['images_per_s']:.2f}x")
                if "timm-compiled" in best:
                    line += f"; vs timm compiled {o['images_per_s'] / best['timm-compiled']['images_per_s']:.2f}x"
                out.append(line)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma-separated, from {list(CONFIGS)}")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {MODELS}")
    p.add_argument("--precisions", default=None, help="comma-separated; default fp32,bf16 (CPU), +fp16 (CUDA)")
    p.add_argument("--modes", default="infer,train", help="infer, train or both")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per contender (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per contender after the first call")
    p.add_argument("--batch", type=int, default=None, help="override every configuration's batch size")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores of this process)")
    p.add_argument("--gemm-size", type=int, default=None,
                   help="side of the largest square matrix product timed for the ceiling (default 4096 CPU, 8192 GPU)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-row memory subprocesses")
    p.add_argument("--memory-models", default=None, help="measure memory for these models only (default: all)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/throughput-<time>.json)")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    torch._dynamo.config.recompile_limit = 64  # one compiled graph per model instance and grad mode
    torch._dynamo.config.cache_size_limit = 64
    # Inference graphs are compiled with weights as constants (prepacked for oneDNN on CPU); the
    # training runner uses its own model instance, so freezing never sees weights that change.
    torch._inductor.config.freezing = True
    if args.memory_probe:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
        return
    # As train.py and evaluate.py do; process-wide, so every contender runs with it. Not in the memory
    # probes, whose fixed mmap threshold makes resident memory follow the live tensors.
    vit_precision.keep_freed_cpu_memory()

    device = vit_precision.resolve_device(args.device)
    precisions = (args.precisions or ("fp32,bf16" if device.type == "cpu" else "fp32,bf16,fp16")).split(",")
    configs, models, modes = args.configs.split(","), args.models.split(","), args.modes.split(",")
    for name, valid in ((configs, CONFIGS), (models, MODELS), (precisions, DTYPES), (modes, ("infer", "train"))):
        bad = [n for n in name if n not in valid]
        if bad:
            p.error(f"unknown {bad}; valid: {list(valid)}")
    models = [m for m in models if available(m)]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; bf16/fp16 rows use the tensor cores

    machine = machine_description(device)
    print(json.dumps(machine))
    ceilings = {prec: gemm_ceiling(device, prec, args.gemm_size) for prec in precisions}
    print("GEMM ceiling GFLOP/s:", {k: round(v) for k, v in ceilings.items()}, flush=True)

    rows = []
    for config in configs:
        fields, batch = CONFIGS[config]
        batch = args.batch or batch
        flops = vit.count_flops(ViTConfig(**fields))
        for precision in precisions:
            for mode in modes:
                runners = [make_runner(m, fields, batch, precision, mode, device) for m in models]
                gemms = [gemm_runner(device, prec) for prec in dict.fromkeys([precision, "bf16"]) if prec in ceilings]
                times = time_runners(runners + gemms, args.rounds, args.warmup)
                # MFU against the GEMM rate measured in these same rounds, so other load hits both alike
                ceiling = {g.name[5:]: g.flops / statistics.median(times[g.name]) / 1e9 for g in gemms}
                group = []
                for r in runners:
                    med = statistics.median(times[r.name])
                    ips = batch / med
                    gflops = ips * flops * (3 if mode == "train" else 1) / 1e9
                    group.append({
                        "config": config, "mode": mode, "precision": precision, "model": r.name, "batch": batch,
                        "images_per_s": ips, "median_s": med, "times_s": times[r.name], "gflops": gflops,
                        "mfu": gflops / ceiling[precision], "ceiling_gflops": ceiling,
                        "mfu_bf16": gflops / ceiling["bf16"] if "bf16" in ceiling else None,
                        "compile_s": r.compile_s, "flops_per_image": flops,
                    })
                timm_ips = next((g["images_per_s"] for g in group if g["model"] == "timm"), None)
                for g in group:
                    g["vs_timm"] = g["images_per_s"] / timm_ips if timm_ips else None
                if mode == "train" and not args.no_memory:
                    for g in group:
                        if args.memory_models and g["model"] not in args.memory_models.split(","):
                            continue
                        g["memory"] = measure_memory({"config": config, "precision": precision, "model": g["model"],
                                                      "device": str(device), "batch": batch})
                rows += group
                del runners
                torch._dynamo.reset()
                gc.collect()
                print(fmt_table(group).split("\n", 1)[1], flush=True)

    ckpt = {}
    if "vit_s16" in configs and "train" in modes and not args.no_memory:
        for on in (False, True):  # eager, so that only checkpointing differs
            ckpt["on" if on else "off"] = measure_memory({"config": "vit_s16", "precision": precisions[-1],
                                                         "model": "ours-eager", "device": str(device),
                                                         "grad_checkpointing": on})
        if "step_mb" in ckpt["on"] and "step_mb" in ckpt["off"]:
            ckpt["ratio"] = ckpt["on"]["step_mb"] / ckpt["off"]["step_mb"]

    # The best seen at the start and the end; the MFU columns use the rate measured within each row group.
    ceilings = {prec: max(c, gemm_ceiling(device, prec, args.gemm_size)) for prec, c in ceilings.items()}
    machine["load_average_end"] = os.getloadavg()
    print()
    print(fmt_table(rows))
    print("\nGEMM ceiling GFLOP/s, best at start/end of the run:", {k: round(v) for k, v in ceilings.items()})
    print("MFU columns: against the GEMM rate timed in the same rounds as the row (ceiling_gflops in the JSON)")
    print("\n".join(["", "Best precision per package:"] + summary(rows)))
    if ckpt:
        print(f"\nViT-S/16 batch 32 {precisions[-1]} training step memory, gradient checkpointing off/on: "
              f"{ckpt['off'].get('step_mb')} / {ckpt['on'].get('step_mb')} MB (ratio {ckpt.get('ratio', float('nan')):.2f})")
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"throughput-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"argv": sys.argv, "machine": machine, "gemm_ceiling_gflops": ceilings, "rows": rows,
                               "grad_checkpointing_memory": ckpt, "summary": summary(rows)}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
