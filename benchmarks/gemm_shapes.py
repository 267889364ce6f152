"""The matrix products of one ViT training step, timed one shape at a time: the ceiling a model can reach.

MFU in throughput.py divides by the rate of large square GEMMs. A ViT's own products are narrower (width 192:
K = 192 in most of them) and its attention is many tiny batched products, so even a step that did nothing but
its matrix products would fall short of that ceiling. This script times every product of a training step
(forward, grad of the input, grad of the weight, for each linear and for both attention products) at its
real shape, and prints the step's "shape ceiling": all the step's matmul FLOPs over the sum of their times.
The ratio (shape ceiling / square ceiling) is the highest MFU the step could show with free elementwise ops.

    python benchmarks/gemm_shapes.py --configs cifar,vit_s16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import CONFIGS, RESULTS, machine_description  # noqa: E402


def timed(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def step_products(fields: dict, batch: int) -> list[tuple[str, int, tuple, tuple]]:
    """(name, count per step, shape A, shape B) of every matmul in a training step; batched shapes are 3-D."""
    C, depth, H = fields["embed_dim"], fields["depth"], fields["num_heads"]
    n = (fields["img_size"] // fields["patch_size"]) ** 2 + 1
    M, D, hidden = batch * n, C // H, 4 * C
    out = []
    for name, K, N in (("qkv", C, 3 * C), ("proj", C, C), ("fc1", C, hidden), ("fc2", hidden, C)):
        out += [(f"{name} fwd", depth, (M, K), (K, N)), (f"{name} dgrad", depth, (M, N), (N, K)),
                (f"{name} wgrad", depth, (N, M), (M, K))]
    BH = batch * H
    out += [("q@k^T fwd", depth, (BH, n, D), (BH, D, n)), ("attn@v fwd", depth, (BH, n, n), (BH, n, D)),
            ("attn bwd (4 products)", 4 * depth, (BH, n, n), (BH, n, D))]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="cifar,vit_s16", help=f"comma-separated, from {list(CONFIGS)}")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    dtype = torch.bfloat16
    sq = torch.randn(2048, 2048, dtype=dtype)
    square = 2 * 2048**3 / timed(lambda: sq @ sq, args.rounds) / 1e9
    print(f"square 2048 bf16 GEMM: {square:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    report = {"machine": machine_description(torch.device("cpu")), "square_gflops": square, "configs": {}}
    for name in args.configs.split(","):
        fields, batch = CONFIGS[name]
        rows, total_flops, total_s = [], 0.0, 0.0
        for label, count, sa, sb in step_products(fields, batch):
            a, b = torch.randn(sa, dtype=dtype), torch.randn(sb, dtype=dtype)
            s = timed(lambda: a @ b, args.rounds)
            flops = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.ndim == 3 else 1)
            rows.append(dict(product=label, a=list(sa), b=list(sb), gflops=flops / s / 1e9, share_s=count * s))
            total_flops, total_s = total_flops + count * flops, total_s + count * s
        ceiling = total_flops / total_s / 1e9
        print(f"\n{name} (batch {batch}): shape ceiling {ceiling:.0f} GFLOP/s = {ceiling / square:.0%} of square")
        print(f"{'product':24} {'A':>16} {'B':>16} {'GFLOP/s':>8} {'share of matmul time':>21}")
        for r in rows:
            print(f"{r['product']:24} {str(tuple(r['a'])):>16} {str(tuple(r['b'])):>16} {r['gflops']:8.0f} "
                  f"{r['share_s'] / total_s:21.0%}")
        report["configs"][name] = dict(batch=batch, shape_ceiling_gflops=ceiling, of_square=ceiling / square,
                                       matmul_s_per_step=total_s, products=rows)
    out = Path(args.out) if args.out else RESULTS / f"gemm-shapes-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
