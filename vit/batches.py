"""The run's data as the training loop takes it: the train and validation splits (`load_data`), and where batches
come from (`Inputs`): tensors on the device, cropped, flipped, normalised and erased there, or DataLoader workers
running timm's transforms on images read from disk. Batch order and augmentation are vit/data.py's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.distributed as dist

from . import data, sources, transforms
from .augment import RandAugment
from .distributed import Dist, all_reduce_sum
from .errors import ConfigError
from .recipes import TrainConfig, flag

if TYPE_CHECKING:
    from .preprocess import Preprocess


@dataclass
class Data:
    train: data.TensorData | data.FileData
    val: data.TensorData | data.FileData
    classes: list[str]
    channels: int  # channels the images are decoded to (models with in_chans 1 read grey)


def load_data(cfg: TrainConfig, d: Dist, model_img_size: int, model_chans: int) -> Data:
    channels = 1 if model_chans == 1 else 3
    kw = dict(data_dir=cfg.data_dir, download=cfg.download, val_size=cfg.val_size, split_seed=cfg.split_seed,
              data_mode=cfg.data_mode, img_size=cfg.img_size or model_img_size, channels=channels,
              on_corrupt=cfg.on_corrupt, val_split=cfg.val_split, image_key=cfg.image_key, label_key=cfg.label_key)
    first = cfg.download and d.world > 1  # rank 0 downloads alone; the others then read its files
    if first and not d.is_main:
        dist.barrier()
    train, val = sources.load_dataset(cfg.dataset, "train", **kw), sources.load_dataset(cfg.dataset, "val", **kw)
    if first and d.is_main:
        dist.barrier()
    if train.classes != val.classes:
        raise ConfigError(f"train and val classes differ: {train.classes} vs {val.classes}")
    if isinstance(train, data.TensorData):
        channels = train.images.shape[1]
    return Data(train, val, train.classes, channels)


@dataclass
class Inputs:
    """Where batches come from: tensors on the device (cropped, flipped, resized to the step's size, normalised and
    erased there), or DataLoader workers (timm's transforms) for images read from disk."""

    data: Data
    normalize: data.Normalize
    erase: Callable[[torch.Tensor], torch.Tensor] | None = None  # in memory: timm's RandomErasing
    randaug: RandAugment | None = None  # in memory: vit.augment's, per image on the uint8 batch
    train_loader: torch.utils.data.DataLoader | None = None  # from disk
    train_sampler: data.ShardSampler | None = None  # or a stream's batches: set_epoch(epoch, start_step) either way
    val_loader: torch.utils.data.DataLoader | None = None
    cfg: TrainConfig | None = None
    dist: Dist = Dist()
    device: torch.device = torch.device("cpu")
    size_at: Callable[[int], int | None] | None = None  # in memory: a step's image side (None: the model's)
    size: int | None = None  # the side of the last batch made, to say when it changes

    def train_batches(self, epoch: int, start: int, end: int, steps_per_epoch: int, augment: dict) -> Iterator[tuple]:
        """(x, y, images skipped) for batches start..end-1 of `epoch`: this rank's share, augmented (crop padding
        and flip probability from `augment`), resized to the step's `size_at` and normalised on the device; x and y
        are None for a batch of unreadable images only."""
        cfg, d = self.cfg, self.dist
        if start >= end:
            return
        if self.train_loader is None:
            perm = data.epoch_permutation(len(self.data.train), cfg.seed, epoch)
            for b in range(start, end):
                step = epoch * steps_per_epoch + b  # every batch in memory is a step
                x, y = data.memory_batch(self.data.train, perm, b, batch_size=cfg.batch_size, rank=d.rank,
                                         world=d.world, gen=data.step_generator(cfg.seed, step),
                                         pad=augment["crop_pad"], hflip=augment["hflip"], randaug=self.randaug,
                                         repeats=cfg.repeat_aug)
                size = self.size_at(step) if self.size_at is not None else None
                if size != self.size and d.is_main:
                    print(f"images: {size}x{size} px from step {step + 1}")
                self.size = size
                x = self.normalize(x, size)
                yield (self.erase(x) if self.erase is not None else x), y, 0
            return
        self.train_sampler.set_epoch(epoch, start)
        for b, (x, y, skipped) in enumerate(self.train_loader, start):
            if x is None:
                yield None, None, skipped
            else:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), skipped
            if b + 1 >= end:
                return

    def batch_is_empty(self, x: torch.Tensor | None) -> bool:
        """Whether to skip this step: on one process, when its batch had no readable image; across ranks (the
        DataLoader path), when any rank's had none, so that every rank skips the same steps and none waits alone."""
        if self.dist.world == 1 or self.train_loader is None:
            return x is None
        flag = torch.tensor([float(x is None)], device=self.device)
        return all_reduce_sum(flag, self.dist).item() > 0


# Flags that act in one data mode only; given on the command line in the other, they are an error.
MEMORY_ONLY = ("crop_pad", "augment_min_epochs", "hflip_min_epochs", "repeat_aug")
LOADER_ONLY = ("workers",)


def loader_workers(workers: int, d: Dist) -> int:
    """--workers, or for -1: the CPUs this process may use, shared among the ranks on this machine, less one for
    the rank's own loop (which waits on the device or computes the step itself on a CPU), at least 1, at most 8."""
    if workers >= 0:
        return workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", d.world)))
    return max(1, min(8, cpus // ranks_here - 1))


def build_inputs(cfg: TrainConfig, splits: Data, pre: Preprocess, d: Dist, device: torch.device,
                 given: frozenset = frozenset(), size_at: Callable[[int], int | None] | None = None) -> Inputs:
    """The run's batches. `size_at(step)`: the training images' side at a step (vit/plan.py Plan.img_size_at)."""
    normalize = data.Normalize(pre.mean, pre.std, channels=pre.input_size[0], size=tuple(pre.input_size[1:]),
                               device=device)
    in_memory = isinstance(splits.train, data.TensorData)
    idle = given & set(LOADER_ONLY if in_memory else MEMORY_ONLY)
    if idle:
        mode = "in memory" if in_memory else "through the DataLoader (--data-mode loader)"
        raise ConfigError(f"{', '.join('--' + flag(n) for n in sorted(idle))} has no effect when the images are "
                          f"read {mode}; leave it out, or choose the other --data-mode")
    if cfg.res_start and not in_memory:
        raise ConfigError(f"--res-start {cfg.res_start} resizes batches held in memory; images read through the "
                          "DataLoader (--data-mode loader) train at one size: leave it out, or use --data-mode memory")
    if in_memory:
        side = min(splits.train.images.shape[-2:])
        if cfg.crop_pad > side:  # a crop shifted past the whole image: only padding left
            raise ConfigError(f"--crop-pad {cfg.crop_pad} is more than the images' side ({side} pixels)")
        splits.train, splits.val = splits.train.to(device), splits.val.to(device)
        erase = None
        if cfg.reprob > 0:  # timm's, on the normalised batch; its draws come from the saved Python/torch RNGs
            from timm.data.random_erasing import RandomErasing

            erase = RandomErasing(cfg.reprob, mode="pixel", device=device)
        randaug = RandAugment.parse(cfg.randaug) if cfg.randaug else None
        return Inputs(splits, normalize, erase, randaug, cfg=cfg, dist=d, device=device, size_at=size_at)
    pin, local, workers = device.type == "cuda", cfg.batch_size // d.world, loader_workers(cfg.workers, d)
    train_transform = transforms.file_transforms(pre, True, hflip=cfg.hflip, randaug=cfg.randaug, reprob=cfg.reprob)
    train_loader, sampler = data.train_loader(splits.train, train_transform, channels=splits.channels,
                                              on_corrupt=cfg.on_corrupt, batch_size=cfg.batch_size,
                                              workers=workers, seed=cfg.seed, rank=d.rank, world=d.world,
                                              pin_memory=pin)
    val_loader = data.eval_loader(splits.val, transforms.file_transforms(pre, False), channels=splits.channels,
                                  on_corrupt=cfg.on_corrupt, batch_size=local, workers=workers, rank=d.rank,
                                  world=d.world, pin_memory=pin)
    return Inputs(splits, normalize, None, None, train_loader, sampler, val_loader, cfg, d, device)
