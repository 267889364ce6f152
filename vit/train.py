"""Train a ViT: `python train.py` (sklearn digits, offline, ~1 minute on 2 CPU cores) up to ImageNet subsets
on several GPUs (`torchrun --nproc_per_node=N train.py ...`).

Reads top to bottom: command line, distributed set-up, output folder, data, model, optimizer and schedule,
checkpoints, the loop (train_one_epoch, evaluate), then `run` which ties them together and `main`.
Optimisation reuses timm's parts: Mixup/CutMix, SoftTargetCrossEntropy, CosineLRScheduler, ModelEmaV3,
weight-decay parameter groups. Hyperparameters and recipes live in `vit/recipes.py`.

Exact resume: batch order and augmentation depend only on (seed, epoch, step) (see vit/data.py), and
last.ckpt holds every other piece of state (model, optimizer, scheduler, EMA, grad scaler, the python/
numpy/torch RNGs, the position inside the epoch), so on a deterministic CPU an interrupted and resumed run
ends with bit-identical weights, on the in-memory path and the DataLoader path alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from . import data as D
from .errors import CheckpointError, ConfigError, NonFiniteLossError, OutputError, VitError
from .precision import autocast, compiled_training_settings, keep_freed_cpu_memory, resolve_device, resolve_precision
from .recipes import RECIPES, TrainConfig, flag, get_recipe
from .registry import create_model, get_entry
from .weights import check_state_dict

CHECKPOINT_FORMAT = "vit-train-checkpoint"
CHECKPOINT_VERSION = 1
PLOT_EVERY_S = 30.0  # redraw curves.png at most this often (matplotlib costs ~0.3 s a figure)


# --------------------------------------------------------------------------------------------------------
# Command line: one flag per TrainConfig field, plus the run's own flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a Vision Transformer. With no arguments: the 'digits' recipe (offline, CPU, ~1 min).",
        epilog="recipes: " + "; ".join(f"{r.name}: {r.doc.splitlines()[0]}" for r in RECIPES.values()),
    )
    p.add_argument("--recipe", default="digits", choices=list(RECIPES), help="named recipe (vit/recipes.py)")
    p.add_argument("--output", default=None, help="output folder (default: runs/RECIPE-DATE-TIME)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last.ckpt")
    p.add_argument("--quiet", action="store_true", help="no progress bars: one line per epoch")
    for f in TrainConfig.__dataclass_fields__.values():
        kw = dict(default=argparse.SUPPRESS, help=f.metadata["help"] + f" (default: recipe, else {f.default!r})")
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = type(f.default)
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
        p.add_argument(f"--{flag(f.name)}", **kw)
    return p


def parse_args(argv=None):
    """Returns (namespace, the TrainConfig fields given explicitly on the command line)."""
    args = build_parser().parse_args(argv)
    fields = TrainConfig.__dataclass_fields__
    given = {k: v for k, v in vars(args).items() if k in fields}
    return args, given


# --------------------------------------------------------------------------------------------------------
# Distributed set-up: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is one process


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank), device


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# --------------------------------------------------------------------------------------------------------
# Output folder: a lock against a second run, atomic files


def default_output(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def lock_output(out: Path, resume: bool):
    """Create `out` and hold an exclusive lock on out/.lock for the life of the process.

    flock is released by the kernel when the process dies, even by SIGKILL, so a crash never leaves a
    stale lock behind. A folder that already holds a run is refused unless resuming.
    """
    import fcntl

    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(out / ".lock", "a+")
    except OSError as e:
        raise OutputError(f"cannot write to the output folder {out}: {e.strerror or e}") from e
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "unknown"
        fh.close()
        raise OutputError(f"{out} is in use by another train.py (pid {pid}); wait for it, or pick another --output")
    if not resume and (out / "last.ckpt").exists():
        fh.close()
        raise OutputError(f"{out} already holds a training run (last.ckpt): continue it with --resume {out}, "
                          "or pick another --output")
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    # Temporary files of writes a kill cut short (".last.ckpt.PID.tmp"): with the lock held, no writer is left.
    for stale in out.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    return fh


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`: a kill at any moment
    leaves either the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError from its zip writer
        tmp.unlink(missing_ok=True)
        free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize if path.parent.is_dir() else 0
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"the write was cut short ({e})"
        raise OutputError(f"cannot write {path} ({free / 1e6:.1f} MB free there): {reason}") from e


# --------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    train: D.TensorData | D.FileData
    val: D.TensorData | D.FileData
    classes: list[str]
    channels: int  # channels the images are decoded to (models with in_chans 1 read grey)


def load_data(cfg: TrainConfig, model_img_size: int, model_chans: int) -> Data:
    channels = 1 if model_chans == 1 else 3
    kw = dict(data_dir=cfg.data_dir, download=cfg.download, val_size=cfg.val_size, split_seed=cfg.split_seed,
              data_mode=cfg.data_mode, img_size=cfg.img_size or model_img_size, channels=channels,
              on_corrupt=cfg.on_corrupt)
    train, val = D.load_dataset(cfg.dataset, "train", **kw), D.load_dataset(cfg.dataset, "val", **kw)
    if train.classes != val.classes:
        raise ConfigError(f"train and val classes differ: {train.classes} vs {val.classes}")
    if isinstance(train, D.TensorData):
        channels = train.images.shape[1]
    return Data(train, val, train.classes, channels)


# --------------------------------------------------------------------------------------------------------
# Model, optimizer, schedule


def build_model(cfg: TrainConfig, num_classes: int, data_channels: int):
    entry = get_entry(cfg.model)
    overrides = dict(num_classes=cfg.num_classes or num_classes)
    if cfg.img_size:
        overrides["img_size"] = cfg.img_size
    if cfg.drop_path:
        overrides["drop_path_rate"] = cfg.drop_path
    if cfg.patch_drop:
        overrides["patch_drop_rate"] = cfg.patch_drop
    if not cfg.pretrained and entry.config.in_chans != data_channels:
        overrides["in_chans"] = data_channels  # e.g. a grey dataset on an RGB variant, trained from scratch
    return create_model(cfg.model, pretrained=cfg.pretrained or False, **overrides)


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise lr decay: embeddings 0, block i is i + 1, final norm/head depth + 1."""
    if name.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model, weight_decay: float, layer_decay: float) -> list[dict]:
    """No weight decay on 1-D parameters (norms, biases) and on position embeddings and CLS/register tokens.

    With layer_decay > 0 (BEiT, Bao et al., 2022), block i's lr is scaled by layer_decay ** (depth + 1 - i),
    so early layers of a pretrained model move least; timm's scheduler applies the `lr_scale` of each group.
    """
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay()
    if not layer_decay:
        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    depth = len(model.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip
        lid = layer_id(name, depth)
        g = groups.setdefault((lid, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - lid),
        })
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def muon_groups(model, groups: list[dict]) -> list[dict]:
    """Split each group for Muon (Jordan et al., 2024): the blocks' and the patch embedding's weight matrices
    get orthogonalised momentum; 1-D parameters, position embeddings, [CLS]/register tokens and the head, which
    act as tables or read-outs rather than as maps between hidden spaces, get its Nesterov AdamW fallback."""
    tables = {id(p) for n, p in model.named_parameters() if n.startswith(("pos_embed", "cls_token", "reg_token", "head."))}
    split = []
    for g in groups:
        for fallback in (False, True):
            params = [p for p in g["params"] if (p.ndim < 2 or id(p) in tables) == fallback]
            if params:
                split.append({**g, "params": params, "use_fallback": fallback})
    return split


def build_optimizer(cfg: TrainConfig, model, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    # The fused CUDA kernel updates every parameter in one launch; on CPU the foreach path is the fast one.
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.opt == "sgd":  # the ViT paper's fine-tuning optimizer; weight decay is coupled (L2) here
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    if cfg.opt == "muon":
        from timm.optim import Muon

        return Muon(muon_groups(model, groups), lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.95,
                    nesterov=True, adjust_lr_fn="match_rms_adamw", betas=(cfg.beta1, cfg.beta2), eps=cfg.opt_eps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.opt_eps, **fused)


def build_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    """Per-step cosine decay from lr to min_lr over all epochs, after a linear warm-up (timm's scheduler)."""
    from timm.scheduler import CosineLRScheduler

    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    return CosineLRScheduler(optimizer, t_initial=total, lr_min=cfg.min_lr, warmup_t=warmup,
                             warmup_lr_init=cfg.warmup_lr, t_in_epochs=False)


def build_mixup(cfg: TrainConfig, num_classes: int):
    if not (cfg.mixup or cfg.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)


# --------------------------------------------------------------------------------------------------------
# Checkpoints: everything needed to continue, loadable with torch.load(weights_only=True)


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    v, internal, gauss_next = state["python"]
    random.setstate((v, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise OutputError(f"--resume: no last.ckpt in {path.parent}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or carrying code: torch says which
        raise CheckpointError(f"cannot load {path}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a train.py checkpoint")
    return ckpt


# --------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class State:
    """Where training stands; saved in last.ckpt."""

    epoch: int = 0  # epoch in progress (0-based)
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimizer steps taken
    elapsed_s: float = 0.0
    best_top1: float = -1.0
    loss_sum: float = 0.0  # this epoch's training loss so far, for metrics.jsonl
    loss_count: int = 0
    train_s: float = 0.0  # this epoch's training time so far
    images: int = 0  # this epoch's training images so far
    skipped: int = 0  # unreadable images skipped (DataLoader path)


class Stopper:
    """SIGINT/SIGTERM request a stop; the loop finishes the current step and saves last.ckpt."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@torch.no_grad()
def evaluate(net, val, normalize, cfg: TrainConfig, precision: str, device, d: Dist, file_loader=None):
    """(mean cross-entropy, top-1 %) over the whole validation split; each rank takes every world-th image."""
    net.eval()
    crit = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    if isinstance(val, D.TensorData):
        idx = torch.arange(d.rank, len(val), d.world, device=val.images.device)
        chunks = ((normalize(val.images[i]), val.labels[i]) for i in idx.split(max(cfg.batch_size, 256)))
    else:
        chunks = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                  for x, y, _ in file_loader if x is not None)
    for x, y in chunks:
        with autocast(precision, device):
            logits = net(x)
        totals += torch.stack([crit(logits.float(), y).double(), (logits.argmax(1) == y).sum().double(),
                               torch.tensor(len(y), dtype=torch.float64, device=device)])
    all_reduce_sum(totals, d)
    loss, correct, n = totals.tolist()
    net.train()
    return loss / max(n, 1), 100.0 * correct / max(n, 1)


def train_one_epoch(ctx, st: State) -> bool:
    """Train from batch st.batch to the end of epoch st.epoch. Returns False if stopped early."""
    cfg, d, device = ctx.cfg, ctx.dist, ctx.device
    net, model, opt, sched, scaler = ctx.net, ctx.model, ctx.optimizer, ctx.scheduler, ctx.scaler
    spe = ctx.steps_per_epoch
    bar = tqdm(total=spe, initial=st.batch, desc=f"epoch {st.epoch + 1}/{cfg.epochs}", leave=False,
               disable=ctx.quiet or not d.main, dynamic_ncols=True)
    if isinstance(ctx.data.train, D.TensorData):
        perm = D.epoch_permutation(len(ctx.data.train), cfg.seed, st.epoch)

        def batches():
            for b in range(st.batch, spe):
                x, y = D.memory_batch(ctx.data.train, perm, b, cfg.batch_size, d.rank, d.world,
                                      D.step_generator(cfg.seed, st.epoch * spe + b), cfg.crop_pad, cfg.hflip)
                x = ctx.normalize(x)
                yield (ctx.erase(x) if ctx.erase is not None else x), y, 0
    else:
        ctx.train_sampler.set_epoch(st.epoch, st.batch)

        def batches():
            for x, y, skipped in ctx.train_loader:
                if x is None:
                    yield None, None, skipped
                else:
                    yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), skipped

    net.train()
    t0 = time.perf_counter()
    for x, y, skipped in batches():
        st.batch += 1
        st.skipped += skipped
        if x is None:
            continue
        if ctx.mixup is not None:
            x, y = ctx.mixup(x, y)
        loss_total = torch.zeros((), device=device)
        micro = -(-len(x) // cfg.accum_steps)
        for i, (xm, ym) in enumerate(zip(x.split(micro), y.split(micro))):
            last = i == cfg.accum_steps - 1 or (i + 1) * micro >= len(x)
            sync = contextlib.nullcontext() if last or d.world == 1 else net.no_sync()
            with sync:
                with autocast(ctx.precision, device):
                    loss = ctx.criterion(net(xm), ym) * (len(xm) / len(x))
                scaler.scale(loss).backward() if scaler.is_enabled() else loss.backward()
            loss_total += loss.detach()
        # One sync per step: the loss is checked before the step can spoil the weights, on every rank alike.
        flags = torch.stack([loss_total.float(), (~torch.isfinite(loss_total)).float(),
                             torch.tensor(float(ctx.stopper.signum), device=device)])
        all_reduce_sum(flags, d)
        loss_value, bad, signalled = flags[0].item() / d.world, flags[1].item(), flags[2].item()
        lr = opt.param_groups[0]["lr"] / opt.param_groups[0].get("lr_scale", 1.0)
        if bad:
            bar.close()
            raise NonFiniteLossError(
                f"non-finite loss ({loss_value}) at step {st.step + 1} (epoch {st.epoch + 1}, lr {lr:.3g}); "
                f"stopping without saving: {ctx.output / 'last.ckpt'} still holds the last good state. "
                "Try a lower --lr, --clip-grad 1, or --precision fp32."
            )
        if cfg.clip_grad:
            if scaler.is_enabled():
                scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        if scaler.is_enabled():
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        st.step += 1
        sched.step_update(st.step)
        if ctx.ema is not None:
            ctx.ema.update(model, step=st.step)
        st.loss_sum += loss_value
        st.loss_count += 1
        st.images += len(x) * d.world
        now = time.perf_counter()
        st.train_s += now - t0
        st.elapsed_s += now - t0
        t0 = now
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", ips=f"{st.images / max(st.train_s, 1e-9):.0f}")
        stop = signalled or (cfg.max_steps and st.step >= cfg.max_steps)
        if stop or (cfg.save_every and st.step % cfg.save_every == 0 and st.batch < spe):
            if st.batch < spe:  # mid-epoch: save the position; at the epoch's end run() saves after evaluating
                save_last(ctx, st)
            if stop:
                bar.close()
                return st.batch >= spe
    bar.close()
    return True


def save_last(ctx, st: State) -> None:
    if not ctx.dist.main:
        return
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "config": ctx.cfg.to_dict(), "recipe": ctx.recipe,
        "model_config": ctx.model.config.to_dict(), "class_names": ctx.data.classes,
        "model": ctx.model.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "ema": ctx.ema.module.state_dict() if ctx.ema is not None else None,
        "scaler": ctx.scaler.state_dict() if ctx.scaler.is_enabled() else None,
        "rng": rng_state(),
        "state": vars(st).copy(),
    }, ctx.output / "last.ckpt")


def write_metrics(path: Path, row: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric lines of epochs after the checkpoint (written before a kill, then redone on resume) and a
    line a crash tore; rewritten through a temporary file and a rename, so a kill here loses no line."""
    if path.exists():
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # blank, or the torn tail of a write a crash cut short
                continue
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        kept = [r for r in rows if isinstance(r, dict) and r.get("epoch", 0) <= epochs_done]
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)


def run(cfg: TrainConfig, recipe: str, output: Path | None, resume: Path | None, quiet: bool,
        ckpt: dict | None = None) -> int:
    d, device = setup_distributed(cfg.device)
    say = print if d.main else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)  # the same initial weights (and EMA copy) on every rank
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)  # timm's Mixup draws from numpy: the same on every rank

    out = output or resume or default_output(recipe)
    lock = lock_output(out, resume is not None) if d.main else None

    # ---- data and model
    entry = get_entry(cfg.model)
    model_img = cfg.img_size or entry.config.img_size
    model_img = model_img if isinstance(model_img, int) else model_img[0]
    first = cfg.download and d.world > 1  # rank 0 downloads alone; the others then read its files
    if first and not d.main:
        dist.barrier()
    data = load_data(cfg, model_img, entry.config.in_chans)
    if first and d.main:
        dist.barrier()
    model = build_model(cfg, len(data.classes), data.channels).to(device)
    model.class_names = data.classes
    if model.num_classes != len(data.classes):
        raise ConfigError(f"the model has {model.num_classes} classes but {cfg.dataset} has {len(data.classes)}")
    pre = model.preprocess
    H, W = pre.input_size[1:]
    local = cfg.batch_size // d.world
    if cfg.batch_size % d.world or local % cfg.accum_steps:
        raise ConfigError(f"--batch-size {cfg.batch_size} must split evenly over {d.world} rank(s) x "
                          f"{cfg.accum_steps} accumulation step(s)")
    if (cfg.mixup or cfg.cutmix) and local % 2:
        raise ConfigError(f"Mixup/CutMix need an even per-rank batch, got {local}")
    steps_per_epoch = len(data.train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(data.train)} images)")

    normalize = D.Normalize(pre.mean, pre.std, pre.input_size[0], (H, W), device)
    train_loader = train_sampler = val_loader = erase = None
    if isinstance(data.train, D.TensorData):
        data.train, data.val = data.train.to(device), data.val.to(device)
        if cfg.reprob > 0:  # timm's, on the normalised batch; its draws come from the saved Python/torch RNGs
            from timm.data.random_erasing import RandomErasing

            erase = RandomErasing(cfg.reprob, mode="pixel", device=device)
    else:
        pin = device.type == "cuda"
        train_sampler = D.ShardSampler(len(data.train), cfg.batch_size, cfg.seed, d.rank, d.world)
        train_loader = D.file_loader(data.train, D.file_transforms(pre, True, cfg.hflip, cfg.randaug, cfg.reprob),
                                     data.channels, cfg.on_corrupt, local, cfg.workers, train_sampler, pin)
        val_loader = D.file_loader(data.val, D.file_transforms(pre, False), data.channels, cfg.on_corrupt,
                                   local, cfg.workers, list(range(d.rank, len(data.val), d.world)), pin)

    # ---- optimisation
    precision = resolve_precision(cfg.precision, device, model.embed_dim, training=True)
    optimizer = build_optimizer(cfg, model, device)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ema = None
    if cfg.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
    mixup = build_mixup(cfg, model.num_classes)
    if mixup is not None:
        from timm.loss import SoftTargetCrossEntropy

        criterion = SoftTargetCrossEntropy()  # Mixup already made the targets soft (and smoothed them)
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    if d.rank:
        torch.manual_seed(cfg.seed + d.rank)  # from here on: each rank its own dropout / drop-path draws
    # Random erasing draws from Python's RNG, which a first import above (sklearn's, for digits) also draws from.
    random.seed(cfg.seed + d.rank)
    st = State()
    if ckpt is not None:
        try:  # flags that change the model or the parameter groups make the checkpoint unloadable
            check_state_dict(ckpt["model"], model)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ema is not None and ckpt["ema"] is not None:
                ema.module.load_state_dict(ckpt["ema"])
            if scaler.is_enabled() and ckpt["scaler"]:
                scaler.load_state_dict(ckpt["scaler"])
            st = State(**ckpt["state"])
            set_rng_state(ckpt["rng"])
        except (VitError, RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{out / 'last.ckpt'} cannot be resumed with this run's settings (a flag that "
                                  f"changes the model or optimizer, such as --model or --img-size?): {e}") from e
        if d.rank:
            torch.manual_seed(cfg.seed + d.rank + st.step)  # only rank 0's RNGs are saved
            random.seed(cfg.seed + d.rank + st.step)
        if d.main:
            truncate_metrics(out / "metrics.jsonl", st.epoch)
        say(f"resumed {out} at epoch {st.epoch + 1}, batch {st.batch}, step {st.step}")

    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    # The objects the loop works on: a plain namespace, no trainer class hierarchy.
    ctx = SimpleNamespace(
        cfg=cfg, recipe=recipe, dist=d, device=device, output=out, quiet=quiet, data=data, model=model, net=net,
        optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema, mixup=mixup, erase=erase, criterion=criterion,
        precision=precision, normalize=normalize, steps_per_epoch=steps_per_epoch, train_loader=train_loader,
        train_sampler=train_sampler, stopper=Stopper(),
    )
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{cfg.model} ({n_params / 1e6:.2f}M params) on {cfg.dataset}: {len(data.train)} train / {len(data.val)} "
        f"val images, {len(data.classes)} classes; {cfg.epochs} epochs x {steps_per_epoch} steps of "
        f"{cfg.batch_size}; {device.type} {precision}, {d.world} process(es); output {out}")

    # ---- loop
    ctx.stopper.install()
    last_plot = time.perf_counter()
    try:
        while st.epoch < cfg.epochs:
            with compiled_training_settings() if cfg.compile else contextlib.nullcontext():
                finished = train_one_epoch(ctx, st)
            if not finished:
                reason = (f"signal {signal.Signals(ctx.stopper.signum).name}" if ctx.stopper.signum
                          else f"--max-steps {cfg.max_steps}")
                say(f"stopped by {reason} at step {st.step}; last.ckpt saved. Continue with: "
                    f"python train.py --resume {out}")
                return 128 + ctx.stopper.signum if ctx.stopper.signum else 0
            t0 = time.perf_counter()
            val_loss, val_top1 = evaluate(net, data.val, normalize, cfg, precision, device, d, val_loader)
            row = dict(epoch=st.epoch + 1, step=st.step, train_loss=st.loss_sum / max(st.loss_count, 1),
                       val_loss=val_loss, val_top1=val_top1, lr=scheduler.optimizer.param_groups[-1]["lr"]
                       / scheduler.optimizer.param_groups[-1].get("lr_scale", 1.0),
                       images_per_s=st.images / max(st.train_s, 1e-9))
            best_model, top1 = model, val_top1
            if ema is not None:
                ema_loss, ema_top1 = evaluate(ema.module, data.val, normalize, cfg, precision, device, d, val_loader)
                row.update(ema_val_loss=ema_loss, ema_val_top1=ema_top1)
                if ema_top1 > top1:
                    best_model, top1 = ema.module, ema_top1
            if st.skipped:
                row["skipped_images"] = st.skipped
            st.elapsed_s += time.perf_counter() - t0
            row["elapsed_s"] = st.elapsed_s
            if d.main:
                if top1 > st.best_top1:
                    st.best_top1 = top1
                    save_best(best_model, out / "best.safetensors", data.classes)
                write_metrics(out / "metrics.jsonl", row)
                line = (f"epoch {row['epoch']:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f}  val loss "
                        f"{val_loss:.4f}  val top-1 {val_top1:6.2f}%")
                if ema is not None:
                    line += f"  ema top-1 {row['ema_val_top1']:6.2f}%"
                say(line + f"  lr {row['lr']:.2e}  {row['images_per_s']:.0f} img/s  {st.elapsed_s:.0f} s")
            stopped = ctx.stopper.signum or (cfg.max_steps and st.step >= cfg.max_steps)
            st.epoch, st.batch = st.epoch + 1, 0
            st.loss_sum, st.loss_count, st.train_s, st.images = 0.0, 0, 0.0, 0
            save_last(ctx, st)
            if d.main and (time.perf_counter() - last_plot > PLOT_EVERY_S or st.epoch == cfg.epochs or stopped):
                plot(out)
                last_plot = time.perf_counter()
            if stopped and st.epoch < cfg.epochs:
                say(f"stopped at step {st.step}; last.ckpt saved. Continue with: python train.py --resume {out}")
                return 128 + ctx.stopper.signum if ctx.stopper.signum else 0
    finally:
        ctx.stopper.restore()
        if d.world > 1:
            dist.destroy_process_group()
        if lock is not None:
            lock.close()
    say(f"done in {st.elapsed_s:.0f} s: best val top-1 {st.best_top1:.2f}%\n"
        f"outputs in {out}/: best.safetensors, last.ckpt, metrics.jsonl, curves.png\n"
        f"evaluate with: python evaluate.py {out / 'best.safetensors'} --dataset {cfg.dataset}"
        + (f" --data-dir {cfg.data_dir}" if cfg.data_dir else ""))
    return 0


@contextlib.contextmanager
def torch_settings(cfg: TrainConfig):
    """Threads and determinism for one run, restored afterwards (train.main may run inside another program)."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.deterministic)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def save_best(model, path: Path, classes: list[str]) -> None:
    from .weights import save_pretrained

    save_pretrained(model, path, class_names=classes)


def plot(out: Path) -> None:
    from .plots import plot_curves

    plot_curves(out / "metrics.jsonl", out / "curves.png")


def main(argv=None) -> int:
    args, given = parse_args(argv)
    keep_freed_cpu_memory()  # process-wide: CPU steps stop faulting in fresh pages (vit/precision.py)
    try:
        ckpt = None
        resume = Path(args.resume) if args.resume else None
        if resume is not None:
            ckpt = load_checkpoint(resume / "last.ckpt")
            base, recipe = ckpt["config"], ckpt.get("recipe", args.recipe)
            changed = {k: v for k, v in given.items() if base.get(k) != v}
            if changed:
                print(f"resume: overriding the saved config with {changed}")
            if "epochs" in changed:  # the scheduler comes back from last.ckpt with its saved length
                print("resume: the cosine schedule keeps the saved run's length; a longer run continues at --min-lr")
        else:
            base, recipe = get_recipe(args.recipe).overrides, args.recipe
        cfg = TrainConfig.from_dict({**base, **given})
        with torch_settings(cfg):
            return run(cfg, recipe, Path(args.output) if args.output else None, resume, args.quiet, ckpt)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except VitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the loop started (loading data, building the model)
        print("interrupted before training started; nothing to resume", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    raise SystemExit(main())
