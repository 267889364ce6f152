"""Cost of in-memory augmentation against the training step it feeds, at CIFAR size.

Times, on uint8 batches of 32x32 RGB images: crop + flip alone, RandAugment (timm's `rand-m9-mstd0.5-inc1`,
each image its own two ops), and both with 3x repeated augmentation; and one training step (forward,
backward, optimizer) of the model that would consume the batch, at this machine's `--precision auto`.
Interleaved rounds, medians; the ratio is the share of a step that augmentation adds (target: < 10%).

    python benchmarks/augment_cost.py                    # vit_micro_patch4_32, batch 128 (the cifar10 recipe)
    python benchmarks/augment_cost.py --model vit_mini_patch4_32 --batch-size 256

Prints a table and writes benchmarks/results/augment-cost-<cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vit  # noqa: E402
from vit import augment, data, precision  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_micro_patch4_32")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--policy", default="rand-m9-mstd0.5-inc1")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    B = args.batch_size
    images = torch.randint(0, 256, (4 * B, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tensors = data.TensorData(images, torch.randint(0, 10, (4 * B,)), [str(i) for i in range(10)])
    perm = torch.randperm(4 * B, generator=torch.Generator().manual_seed(0))
    ra = augment.RandAugment.parse(args.policy)

    model = vit.create_model(args.model, num_classes=10)
    chosen = precision.resolve_precision("auto", torch.device("cpu"), model.embed_dim, training=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    norm = data.Normalize(model.preprocess.mean, model.preprocess.std, channels=3, size=(32, 32),
                          device=torch.device("cpu"))
    crit = nn.CrossEntropyLoss()
    x0, y0 = data.memory_batch(tensors, perm, 0, batch_size=B, rank=0, world=1, gen=torch.Generator().manual_seed(0),
                               pad=2, hflip=0.5)

    def step():
        opt.zero_grad(set_to_none=True)
        with precision.autocast(chosen, torch.device("cpu")):
            loss = crit(model(norm(x0)), y0)
        loss.backward()
        opt.step()

    def batch(randaug=None, repeats=1):
        return lambda: data.memory_batch(tensors, perm, 1, batch_size=B, rank=0, world=1,
                                         gen=torch.Generator().manual_seed(1), pad=2, hflip=0.5, randaug=randaug,
                                         repeats=repeats)

    contenders = {
        "crop+flip": batch(),
        f"crop+flip+{args.policy}": batch(ra),
        f"crop+flip+{args.policy}, 3 repeats": batch(ra, 3),
        f"training step ({chosen})": step,
    }
    for fn in contenders.values():  # warm up
        fn(), fn()
    times = {k: [] for k in contenders}
    for r in range(args.rounds):
        for name in list(contenders)[r % len(contenders):] + list(contenders)[:r % len(contenders)]:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    step_s = med[f"training step ({chosen})"]

    cpu = cpu_name()
    print(f"{args.model}, batch {B}, {torch.get_num_threads()} threads, {cpu}, "
          f"native bf16: {precision.cpu_has_bf16()}")
    print(f"| what | ms per batch | share of a training step |\n|---|---|---|")
    rows = []
    for name, s in med.items():
        share = s / step_s
        rows.append(dict(what=name, ms=s * 1e3, share_of_step=share))
        print(f"| {name} | {s * 1e3:.1f} | {100 * share:.1f}% |")
    RESULTS.mkdir(exist_ok=True)
    tag = "avx512bf16" if precision.cpu_has_bf16() else "no-native-bf16"
    out = RESULTS / f"augment-cost-{tag}.json"
    out.write_text(json.dumps(dict(model=args.model, batch_size=B, policy=args.policy, cpu=cpu,
                                   native_bf16=precision.cpu_has_bf16(), threads=torch.get_num_threads(),
                                   precision=chosen, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
