"""Fine-tuning a pretrained backbone on another task, as a user does it with train.py: full fine-tuning, a
linear probe and LoRA, against training from scratch, each for the same minutes.

The backbone: a `vit_micro_patch4_32` trained on CIFAR-10 (the `cifar10` recipe's best.safetensors). The task:
Fashion-MNIST, its grey 28x28 images shown to the RGB 32x32 model (train.py repeats the channel and resizes on
the device), validated on the first --val-images of its official test set (a subset: an evaluation of all
10,000 costs a minute on 2 cores). Every variant runs train.py with --budget (launch to last evaluation):
the run times its steps and fits its length to the budget, so each gets the same wall time, whatever else
the machine runs. Peak memory is the run's peak resident set (the process, data and libraries included).

    python benchmarks/finetune.py runs/cifar10/best.safetensors --minutes 2.5   # ~11 min on a 2-core CPU

Prints a Markdown table and writes JSON to benchmarks/results/<--machine>/finetune-fashion-mnist-from-cifar10.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vit  # noqa: E402
from vit import finetune  # noqa: E402
from vit.data import FASHION_MNIST_DIR, read_idx  # noqa: E402

MODEL = "vit_micro_patch4_32"
COMMON = ["--model", MODEL, "--dataset", "fashion-mnist", "--device", "cpu", "--precision", "fp32", "--quiet",
          "--batch-size", "64", "--crop-pad", "0", "--warmup-epochs", "0.02", "--min-lr", "0"]
# (name, flags with BACKBONE for the checkpoint, what it trains). AdamW for the fine-tunes, at the learning
# rates usual for each (the head alone takes a larger one); from scratch, the fashion-mnist recipe's Muon.
VARIANTS = [
    ("full fine-tune", ["--pretrained", "BACKBONE", "--lr", "5e-4"], "everything"),
    ("linear probe", ["--pretrained", "BACKBONE", "--freeze", "backbone", "--lr", "5e-3"], "the head"),
    ("LoRA r=8", ["--pretrained", "BACKBONE", "--lora-rank", "8", "--lr", "2e-3"], "adapters and head"),
    ("from scratch", ["--opt", "muon", "--lr", "2e-3"], "everything"),
]


def write_val_subset(folder: Path, n: int) -> None:
    """The training files as they are, and the first n test images and labels as IDX files."""
    src = Path(FASHION_MNIST_DIR)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (folder / name).symlink_to(src / name)
    for kind in ("images-idx3", "labels-idx1"):
        array = read_idx(src / f"t10k-{kind}-ubyte.gz")[:n]
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        (folder / f"t10k-{kind}-ubyte").write_bytes(header + array.tobytes())


def trainable(flags: list[str], backbone: str) -> tuple[int, int]:
    """(trained, total) parameters of the variant's model, built as train.py builds it."""
    model = vit.create_model(MODEL, pretrained=backbone if "--pretrained" in flags else False)
    if "--freeze" in flags:
        finetune.freeze(model, flags[flags.index("--freeze") + 1])
    if "--lora-rank" in flags:
        finetune.add_lora(model, int(flags[flags.index("--lora-rank") + 1]))
    return finetune.trainable_parameters(model), sum(p.numel() for p in model.parameters())


def run(name: str, flags: list[str], data: Path, out: Path, minutes: float, threads: int) -> dict:
    cmd = [sys.executable, str(ROOT / "train.py"), *COMMON, "--data-dir", str(data), "--budget", f"{minutes}m",
           "--threads", str(threads), "--output", str(out), *flags]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    printed = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak resident set
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed:\n{printed[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    return dict(variant=name, command=" ".join(cmd[1:]), minutes=round(wall / 60, 2), steps=last["step"],
                images_per_s=round(last["images_per_s"], 1), val_top1=round(last["val_top1"], 2),
                best_val_top1=round(max(r["val_top1"] for r in rows if "val_top1" in r), 2), peak_rss_mb=round(usage.ru_maxrss / 1024))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backbone", help="a vit_micro_patch4_32 checkpoint (the cifar10 recipe's best.safetensors)")
    p.add_argument("--minutes", type=float, default=2.5, help="each variant's budget, launch to last evaluation")
    p.add_argument("--val-images", type=int, default=2000, help="the first N images of the official test set")
    # One thread: with other jobs on the 2 cores (load 3.5), a training step of this model took 1.77 s on one
    # thread and 2.85 s on two, which wait on each other; on an idle machine give --threads 2.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--machine", default="epyc-zen3-2core", help="results folder name: the CPU it ran on")
    args = p.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fashion-mnist"
        data.mkdir()
        write_val_subset(data, args.val_images)
        for i, (name, flags, what) in enumerate(VARIANTS):
            flags = [args.backbone if f == "BACKBONE" else f for f in flags]
            trained, total = trainable(flags, args.backbone)
            r = run(name, flags, data, Path(tmp) / f"run{i}", args.minutes, args.threads)
            results.append({**r, "trains": what, "trainable_params": trained, "params": total})
            print(f"{name}: {r['val_top1']:.2f}% after {r['steps']} steps in {r['minutes']:.2f} min", flush=True)

    print(f"\nFashion-MNIST (first {args.val_images} test images), {MODEL} at 32x32x3, {args.minutes:g} min each, "
          f"{args.threads} threads, fp32; backbone {args.backbone}\n")
    print("| variant | trains | trainable params | steps of 64 | img/s | minutes | peak RSS (MB) | val top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['trains']} | {r['trainable_params']:,} of {r['params']:,} | {r['steps']} | "
              f"{r['images_per_s']:.0f} | {r['minutes']:.2f} | {r['peak_rss_mb']} | {r['val_top1']:.2f}% |")
    folder = ROOT / "benchmarks" / "results" / args.machine
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "finetune-fashion-mnist-from-cifar10.json"
    path.write_text(json.dumps(dict(backbone=args.backbone, minutes_each=args.minutes, val_images=args.val_images,
                                    threads=args.threads, date=time.strftime("%Y-%m-%d"), results=results), indent=1))
    print(f"\n{path}")


if __name__ == "__main__":
    main()
