"""What a small convnet reaches on a recipe's data in a few minutes here: the question before distilling a ViT
from a teacher trained inside the same budget (DeiT's hard-label distillation; the teacher's minutes count).

The net is a plain stack in the manner of fast CIFAR-10 convnets (Jordan, 2024, "94% on CIFAR-10 in 3.29
seconds"; Page's DAWNBench ResNet): a 3x3 stem, then blocks of conv -> 2x2 max-pool -> BatchNorm -> GELU -> conv ->
BatchNorm -> GELU at each width, a global max-pool and a linear head. SGD with Nesterov momentum, a linear warm-up
and a linear decay to zero, label smoothing, random crops and flips on the in-memory batch (vit.data's), and the
flipped view averaged in at evaluation. It trains on the recipe's training split only; its validation split is
the one the ViT recipes hold out (the same --val-size and split seed), so the figures compare with theirs.

    python benchmarks/convnet_teacher.py --data-dir ../shared/data/cifar10-jpeg/train --val-size 5000 \\
        --widths 32,128,128 --epochs 10 --out benchmarks/results/HW/convnet-....json

Prints one line an epoch and a table of the run; --out writes it as JSON; --save writes the weights as a file
train.py's --teacher loads (vit/convnet.py). The net and its training are vit.convnet's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (benchmarks/: the machine's description)
from vit import data  # noqa: E402
from vit.convnet import ConvNet, TeacherSchedule, forward_flops, save_convnet, train_convnet  # noqa: E402
from vit.precision import cpu_has_bf16  # noqa: E402
from vit.preprocess import Preprocess  # noqa: E402
from vit.registry import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from vit.sources import load_dataset  # noqa: E402

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="folder")
    p.add_argument("--data-dir", default="")
    p.add_argument("--val-size", type=float, default=5000)
    p.add_argument("--widths", default="64,256,256", help="comma-separated block widths")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.4, help="peak SGD learning rate (Nesterov, momentum 0.9)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.2)
    p.add_argument("--crop-pad", type=int, default=2)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 where the CPU has native bf16 (or on CUDA), else fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="write the run as JSON here")
    p.add_argument("--save", default="", help="write the trained weights here (safetensors)")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    torch.manual_seed(args.seed)
    t_launch = time.perf_counter()
    kw = dict(data_dir=args.data_dir, val_size=args.val_size, data_mode="memory", img_size=32, channels=3)
    train, val = load_dataset(args.dataset, "train", **kw), load_dataset(args.dataset, "val", **kw)
    if not isinstance(train, data.TensorData):
        raise SystemExit(f"--dataset {args.dataset}: this benchmark trains on images held in memory")
    size, chans = train.images.shape[-1], train.images.shape[1]
    mean, std = (CIFAR_MEAN, CIFAR_STD) if chans == 3 else ((0.5,), (0.5,))
    normalize = data.Normalize(mean, std, channels=chans, size=(size, size), device=device)
    widths = tuple(int(w) for w in args.widths.split(","))
    model = ConvNet(widths=widths, num_classes=len(train.classes), in_chans=chans).to(device)
    params = sum(t.numel() for t in model.parameters())
    machine = throughput.machine_description(device)
    flops = forward_flops(model, size)
    schedule = TeacherSchedule(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                               crop_pad=args.crop_pad, warmup_epochs=args.warmup_epochs, seed=args.seed)
    spe = len(train.labels) // args.batch_size
    print(f"convnet {widths} ({params / 1e6:.2f}M params, {flops / 1e9:.3f} GFLOPs a {size}px image) on "
          f"{args.dataset}: {len(train.labels)} train / {len(val.labels)} val; {args.epochs} epochs x {spe} steps of "
          f"{args.batch_size}; {device.type} {precision}; {machine['cpu']}, {machine['cores']} cores")

    def on_epoch(row: dict) -> None:
        row["elapsed_s"] = time.perf_counter() - t_launch
        print(f"epoch {row['epoch']:3d}/{args.epochs}  train loss {row['train_loss']:.4f}  val top-1 "
              f"{row['val_top1']:6.2f}%  {row['img_s']:.0f} img/s  {row['elapsed_s'] / 60:.2f} min", flush=True)

    rows = train_convnet(model, train, val, normalize, schedule, device, precision, on_epoch)
    train_s = sum(r["epoch_s"] for r in rows)
    wall = time.perf_counter() - t_launch
    print("\n| widths | params (M) | GFLOPs | epochs | img/s | train min | wall min | val top-1 (flip TTA) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.widths} | {params / 1e6:.2f} | {flops / 1e9:.3f} | {args.epochs} | "
          f"{spe * args.batch_size * args.epochs / train_s:.0f} | {train_s / 60:.2f} | {wall / 60:.2f} | "
          f"{rows[-1]['val_top1']:.2f}% |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(args=vars(args), precision=precision, machine=machine,
                                                  params=params, gflops=flops / 1e9, wall_s=wall, epochs=rows),
                                             indent=1) + "\n")
    if args.save:  # a file --teacher loads (vit/convnet.py)
        save_convnet(model, args.save, preprocess=Preprocess((chans, size, size), mean, std, "bicubic", 1.0),
                     class_names=list(train.classes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
