"""A small convnet to teach a ViT: trained in minutes on the student's own data, then its hard labels distilled
into the student (DeiT, Touvron et al., 2021: a convnet teacher passes on its inductive bias).

    net = ConvNet(widths=(32, 128, 128), num_classes=10)
    rows = train_convnet(net, train, val, normalize, TeacherSchedule(epochs=10), device, "bf16")
    save_convnet(net, "teacher.safetensors", preprocess=Preprocess((3, 32, 32), CIFAR_MEAN, CIFAR_STD))
    net = load_convnet("teacher.safetensors")  # or: --teacher teacher.safetensors (vit/distill.py)

The net is a plain stack in the manner of fast CIFAR-10 convnets (Jordan, 2024, "94% on CIFAR-10 in 3.29
seconds"; Page's DAWNBench ResNet): a 3x3 stem, then blocks of conv -> 2x2 max-pool -> BatchNorm -> GELU -> conv ->
BatchNorm -> GELU at each width, a global max-pool and a linear head. It trains with SGD (Nesterov momentum), a
linear warm-up and a linear decay to zero, label smoothing, and random crops and flips on the in-memory batch
(vit.data's); it is scored with the flipped view averaged in. On the AVX-512 BF16 CPU (2 cores, bf16), widths
32,128,128 reach 87.52% on CIFAR-10's 5,000 held-out training images in 10 epochs, 7.3 min
(benchmarks/convnet_teacher.py; benchmarks/LOG.md).

The file is safetensors with its widths, class names and preprocessing in the header, as save_pretrained's:
it loads from the file alone, without unpickling.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data
from .errors import CheckpointError, ConfigError
from .precision import autocast
from .preprocess import Preprocess
from .runs import atomic_write

FORMAT_NAME = "vit-convnet"  # the header's "format": what load_teacher looks for


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> list[nn.Module]:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)] + ([nn.MaxPool2d(2)] if pool else [])
    return layers + [nn.BatchNorm2d(c_out), nn.GELU()]


class ConvNet(nn.Module):
    """stem (3x3 to widths[0] // 2) -> per width: conv, pool, BN, GELU, conv, BN, GELU -> global max-pool -> linear.
    Each width halves the image side: (B, C, H, W) -> (B, widths[-1], H / 2^len(widths), W / 2^len(widths))."""

    def __init__(self, *, widths: tuple[int, ...], num_classes: int, in_chans: int = 3):
        super().__init__()
        if not widths or any(w < 2 for w in widths):
            raise ConfigError(f"convnet widths must be integers >= 2, got {widths}")
        self.widths, self.num_classes, self.in_chans = tuple(widths), num_classes, in_chans
        layers, c = conv_bn(in_chans, widths[0] // 2), widths[0] // 2
        for w in widths:
            layers += conv_bn(c, w, pool=True) + conv_bn(w, w)
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)
        self.preprocess: Preprocess | None = None
        self.class_names: list[str] | None = None
        self.schedule: TeacherSchedule | None = None  # how it was trained, where that is known

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))  # (B, C, h, w) -> (B, C) -> (B, classes)


def forward_flops(model: ConvNet, size: int) -> float:
    """Multiply-adds x 2 of the convolutions and the head for one `size` x `size` image."""
    flops, side = 0.0, size
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            flops += 2 * side * side * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.MaxPool2d):
            side //= 2
        elif isinstance(m, nn.Linear):
            flops += 2 * m.in_features * m.out_features
    return flops


# ---- training


@dataclass(frozen=True)
class TeacherSchedule:
    """How the convnet trains (units in the names): SGD with Nesterov momentum 0.9, a linear warm-up and a linear
    decay to zero; weight decay off the BatchNorm and bias parameters; random crops (zero padding) and flips."""

    epochs: int = 10
    batch_size: int = 512
    lr: float = 0.4
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    crop_pad: int = 2
    hflip: float = 0.5
    warmup_epochs: float = 1.0
    seed: int = 0


def train_convnet(model: ConvNet, train: data.TensorData, val: data.TensorData | None, normalize: data.Normalize,
                  schedule: TeacherSchedule, device: torch.device, precision: str,
                  on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train `model` in place on the in-memory `train` split; one row an epoch (train loss, val top-1 with the
    flip averaged in where `val` is given, seconds), each also passed to `on_epoch`. The data order and the
    augmentation follow (schedule.seed, step) alone, as the ViT runs' do."""
    s = schedule
    batch = min(s.batch_size, len(train.labels))  # a split smaller than a batch trains on the whole of it
    spe = len(train.labels) // batch
    total, warmup = spe * s.epochs, round(s.warmup_epochs * spe)
    decay, no_decay = ([q for q in model.parameters() if (q.ndim > 1) == wd] for wd in (True, False))
    opt = torch.optim.SGD([dict(params=decay, weight_decay=s.weight_decay), dict(params=no_decay, weight_decay=0)],
                          lr=s.lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (t + 1) / max(warmup, 1) if t < warmup else max(total - t, 0) / max(total - warmup, 1))
    model.to(device).to(memory_format=torch.channels_last).train()
    rows, step = [], 0
    for epoch in range(s.epochs):
        perm = data.epoch_permutation(len(train.labels), s.seed, epoch)
        t0, loss_sum = time.perf_counter(), 0.0
        for b in range(spe):
            x, y = data.memory_batch(train, perm, b, batch_size=batch, rank=0, world=1,
                                     gen=data.step_generator(s.seed, step), pad=s.crop_pad, hflip=s.hflip)
            x = normalize(x.to(device)).contiguous(memory_format=torch.channels_last)
            with autocast(precision, device):
                loss = F.cross_entropy(model(x).float(), y.to(device), label_smoothing=s.label_smoothing)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            loss_sum += loss.item()
            step += 1
        epoch_s = time.perf_counter() - t0
        row = dict(epoch=epoch + 1, train_loss=loss_sum / spe, epoch_s=epoch_s, img_s=spe * batch / epoch_s)
        if val is not None:
            row["val_top1"] = evaluate_convnet(model, val, normalize, precision, device)
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return rows


@torch.no_grad()
def evaluate_convnet(model: ConvNet, val: data.TensorData, normalize: data.Normalize, precision: str,
                     device: torch.device, chunk: int = 500) -> float:
    """Top-1 (%) with the flipped view's probabilities averaged in."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(val.labels), chunk):
        x = normalize(val.images[i:i + chunk].to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            p = model(x).float().softmax(-1) + model(x.flip(-1)).float().softmax(-1)
        correct += (p.argmax(-1).cpu() == val.labels[i:i + chunk]).sum().item()
    model.train(was_training)
    return 100.0 * correct / len(val.labels)


# ---- the file


def save_convnet(model: ConvNet, path: str | os.PathLike, *, preprocess: Preprocess | None = None,
                 class_names: list[str] | None = None) -> Path:
    """Write the weights as safetensors with the widths, class names, preprocessing and (where known) training
    schedule in the header, atomically: a kill never leaves a torn file. preprocess and class_names default to
    the model's own."""
    from safetensors.torch import save as safetensors_bytes

    preprocess = preprocess or model.preprocess
    class_names = class_names if class_names is not None else model.class_names
    if preprocess is None:
        raise ConfigError("a convnet teacher is saved with its preprocessing (input size, mean, std), so that a "
                          "student's inputs can be converted to it")
    if class_names is not None and len(class_names) != model.num_classes:
        raise ConfigError(f"{len(class_names)} class names for a convnet with {model.num_classes} classes")
    meta = dict(format=FORMAT_NAME, widths=json.dumps(list(model.widths)), num_classes=str(model.num_classes),
                in_chans=str(model.in_chans), preprocess=json.dumps(preprocess.to_dict()))
    if class_names is not None:
        meta["class_names"] = json.dumps([str(c) for c in class_names])
    if model.schedule is not None:
        meta["schedule"] = json.dumps(asdict(model.schedule))
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = safetensors_bytes(tensors, metadata=meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(blob))
    return path


def is_convnet_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a file save_convnet wrote (a safetensors header whose format is this module's)."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT_NAME
    except (SafetensorError, OSError):
        return False


def load_convnet(path: str | os.PathLike) -> ConvNet:
    """The convnet save_convnet wrote at `path`, with its preprocess and class_names, in evaluation mode."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a convnet teacher's file (its header's format is "
                              f"{meta.get('format')!r}, not {FORMAT_NAME!r})")
    try:
        widths = tuple(int(w) for w in json.loads(meta["widths"]))
        model = ConvNet(widths=widths, num_classes=int(meta["num_classes"]), in_chans=int(meta["in_chans"]))
        model.preprocess = Preprocess.from_dict(json.loads(meta["preprocess"]))
        model.class_names = json.loads(meta["class_names"]) if "class_names" in meta else None
        if "schedule" in meta:
            known = {f.name for f in fields(TeacherSchedule)}
            model.schedule = TeacherSchedule(**{k: v for k, v in json.loads(meta["schedule"]).items() if k in known})
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: its convnet header is incomplete or malformed ({e!r})") from e
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its tensors do not fit a convnet of widths {widths}: {e}") from e
    return model.eval()


def parse_widths(text: str, flag: str = "--teacher-widths") -> tuple[int, ...]:
    """'32,128,128' -> (32, 128, 128): block widths of at least 2, comma-separated."""
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts) or any(int(p) < 2 for p in parts):
        raise ConfigError(f"{flag} {text!r}: comma-separated block widths of at least 2, e.g. 32,128,128")
    return tuple(int(p) for p in parts)


def time_convnet(model: ConvNet, x: torch.Tensor, y: torch.Tensor, device: torch.device, precision: str,
                 steps: int = 3) -> tuple[float, float]:
    """(seconds a training step, seconds a forward pass without gradients) of a copy of `model` on the normalised
    batch `x`, after a step to warm up: what a budget needs to price a teacher before it trains one."""
    net = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last).train()
    x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)

    def step():
        with autocast(precision, device):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step().item()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()  # the device has finished
    train_s = (time.perf_counter() - t0) / steps
    net.eval()
    with torch.no_grad(), autocast(precision, device):
        net(x).float().sum().item()
        t0 = time.perf_counter()
        for _ in range(steps):
            out = net(x)
        out.float().sum().item()
    return train_s, (time.perf_counter() - t0) / steps
