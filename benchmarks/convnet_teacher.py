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

Prints one line an epoch and a table of the run; --out writes it as JSON; --save writes the weights
(safetensors).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (benchmarks/: the machine's description)
from vit import data  # noqa: E402
from vit.precision import autocast, cpu_has_bf16  # noqa: E402
from vit.registry import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from vit.sources import load_dataset  # noqa: E402

def conv_bn(c_in: int, c_out: int, pool: bool = False) -> list[nn.Module]:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)] + ([nn.MaxPool2d(2)] if pool else [])
    return layers + [nn.BatchNorm2d(c_out), nn.GELU()]


class ConvNet(nn.Module):
    """stem (3x3 to widths[0] // 2) -> per width: conv, pool, BN, GELU, conv, BN, GELU -> global max-pool -> linear."""

    def __init__(self, widths: tuple[int, ...], num_classes: int, in_chans: int = 3):
        super().__init__()
        layers, c = conv_bn(in_chans, widths[0] // 2), widths[0] // 2
        for w in widths:
            layers += conv_bn(c, w, pool=True) + conv_bn(w, w)
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))


def forward_flops(model: nn.Module, size: int, in_chans: int) -> float:
    """Multiply-adds x 2 of the convolutions and the head for one image."""
    flops, side = 0.0, size
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            flops += 2 * side * side * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.MaxPool2d):
            side //= 2
        elif isinstance(m, nn.Linear):
            flops += 2 * m.in_features * m.out_features
    return flops


@torch.no_grad()
def evaluate(model: nn.Module, val: data.TensorData, normalize: data.Normalize, precision: str,
             device: torch.device, chunk: int = 500) -> float:
    """Top-1 (%) with the flipped view's logits averaged in."""
    model.eval()
    correct = 0
    for i in range(0, len(val.labels), chunk):
        x = normalize(val.images[i:i + chunk].to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            logits = model(x).float().softmax(-1) + model(x.flip(-1)).float().softmax(-1)
        correct += (logits.argmax(-1).cpu() == val.labels[i:i + chunk]).sum().item()
    model.train()
    return 100.0 * correct / len(val.labels)


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
    model = ConvNet(widths, len(train.classes), chans).to(device).to(memory_format=torch.channels_last)
    params = sum(t.numel() for t in model.parameters())
    machine = throughput.machine_description(device)
    flops = forward_flops(model, size, chans)

    spe = len(train.labels) // args.batch_size
    total, warmup = spe * args.epochs, round(args.warmup_epochs * spe)
    decay, no_decay = ([q for q in model.parameters() if (q.ndim > 1) == wd] for wd in (True, False))
    opt = torch.optim.SGD([dict(params=decay, weight_decay=args.weight_decay), dict(params=no_decay, weight_decay=0)],
                          lr=args.lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(warmup, 1) if s < warmup else max(total - s, 0) / max(total - warmup, 1))
    print(f"convnet {widths} ({params / 1e6:.2f}M params, {flops / 1e9:.3f} GFLOPs a {size}px image) on "
          f"{args.dataset}: {len(train.labels)} train / {len(val.labels)} val; {args.epochs} epochs x {spe} steps of "
          f"{args.batch_size}; {device.type} {precision}; {machine['cpu']}, {machine['cores']} cores")
    rows, train_s, step = [], 0.0, 0
    for epoch in range(args.epochs):
        perm = data.epoch_permutation(len(train.labels), args.seed, epoch)
        t0, loss_sum = time.perf_counter(), 0.0
        for b in range(spe):
            gen = data.step_generator(args.seed, step)
            x, y = data.memory_batch(train, perm, b, batch_size=args.batch_size, rank=0, world=1, gen=gen,
                                     pad=args.crop_pad, hflip=0.5)
            x = normalize(x.to(device)).contiguous(memory_format=torch.channels_last)
            with autocast(precision, device):
                loss = F.cross_entropy(model(x).float(), y.to(device), label_smoothing=args.label_smoothing)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            loss_sum += loss.item()
            step += 1
        epoch_s = time.perf_counter() - t0
        train_s += epoch_s
        top1 = evaluate(model, val, normalize, precision, device)
        rows.append(dict(epoch=epoch + 1, train_loss=loss_sum / spe, val_top1=top1, epoch_s=epoch_s,
                         img_s=spe * args.batch_size / epoch_s, elapsed_s=time.perf_counter() - t_launch))
        print(f"epoch {epoch + 1:3d}/{args.epochs}  train loss {loss_sum / spe:.4f}  val top-1 {top1:6.2f}%  "
              f"{rows[-1]['img_s']:.0f} img/s  {rows[-1]['elapsed_s'] / 60:.2f} min", flush=True)
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
    if args.save:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
