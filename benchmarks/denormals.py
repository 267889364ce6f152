"""A trained model's fp32 training step on the CPU, with and without flushing denormal floats, against timm.

A trained model can make denormal numbers (magnitudes under ~1.2e-38), which x86 CPUs handle in microcode,
many times slower than normal floats; `torch.set_flush_denormal(True)` treats them as zero. This script loads
the same trained weights into our model and into timm's `VisionTransformer` (the parameter names match) and
times a training step (forward, backward) of each, in interleaved rounds, with torch's default denormal
handling and with flushing on, beside the same model freshly initialised. On the Zen 3 CPU flushing made no
difference (benchmarks/LOG.md), so train.py leaves the default; rerun it for a model or CPU of your own.

    python benchmarks/denormals.py runs/tta/fashion-mnist-seed0/best.safetensors
    python benchmarks/denormals.py WEIGHTS --batch-size 128 --rounds 7

Prints a table and writes benchmarks/results/denormals-<run>.json. Figures are medians; the CPU's name and
whether it has native bf16 are recorded with them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vit  # noqa: E402
import vit.kernels  # noqa: E402
from vit.precision import cpu_has_bf16  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def timm_twin(model: vit.VisionTransformer) -> torch.nn.Module:
    """timm's VisionTransformer of the same configuration, holding the same weights."""
    c = model.config
    twin = timm.models.vision_transformer.VisionTransformer(
        img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
        embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias)
    twin.load_state_dict(model.state_dict())
    return twin


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    t = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", help="a trained model: best.safetensors of a run, or any create_model source")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per contender and setting (median)")
    p.add_argument("--out", default="", help="JSON path (default benchmarks/results/denormals-<model>.json)")
    args = p.parse_args(argv)

    ours = vit.create_model(pretrained=args.weights).train()
    torch.manual_seed(0)
    fresh = vit.kernels.use(vit.VisionTransformer(ours.config))  # the same model, untrained
    contenders = {"ours": ours, "timm": timm_twin(ours).train(), "ours (fresh init)": fresh.train()}
    c = ours.config
    size = c.img_size if isinstance(c.img_size, tuple) else (c.img_size, c.img_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, c.in_chans, *size, generator=g)
    y = torch.randint(0, c.num_classes, (args.batch_size,), generator=g)

    times = {(name, flush): [] for name in contenders for flush in (False, True)}
    for name, model in contenders.items():  # one untimed step each: allocator and caches warm
        step_seconds(model, x, y)
    for _ in range(args.rounds):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            for name, model in contenders.items():
                times[name, flush].append(step_seconds(model, x, y))
    torch.set_flush_denormal(False)

    median = {k: statistics.median(v) for k, v in times.items()}
    timm_default = median["timm", False]
    rows = [dict(model=name, flush_denormal=flush, ms=round(median[name, flush] * 1e3, 1),
                 img_per_s=round(args.batch_size / median[name, flush], 1),
                 x_timm=round(timm_default / median[name, flush], 2)) for name, flush in median]
    print(f"{cpu_name()}, native bf16: {cpu_has_bf16()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"fp32, batch {args.batch_size}, forward + backward, median of {args.rounds}")
    print(f"{'model':<18} {'flush':<6} {'ms':>8} {'img/s':>8} {'x timm':>7}")
    for r in rows:
        print(f"{r['model']:<18} {str(r['flush_denormal']):<6} {r['ms']:>8} {r['img_per_s']:>8} {r['x_timm']:>7}")
    print("x timm: against timm with torch's default denormal handling (what a timm training loop runs with)")
    out = Path(args.out) if args.out else RESULTS / f"denormals-{Path(args.weights).parent.name or 'model'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(cpu=cpu_name(), native_bf16=cpu_has_bf16(), threads=torch.get_num_threads(),
                                   torch=torch.__version__, weights=args.weights, batch_size=args.batch_size,
                                   rounds=args.rounds, rows=rows), indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
