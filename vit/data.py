"""Datasets for training and evaluation: where the images come from and how batches reach the model.

Two paths, chosen per dataset (see `load_builtin`):
- small images (digits, MNIST, Fashion-MNIST, CIFAR, small ImageFolder trees) are decoded once into a uint8
  tensor (N, C, H, W) that lives on the training device; each batch is cropped, flipped and normalised there
  in a few tensor ops (airbench's approach): no per-image Python in the hot loop. `--reprob` adds timm's
  RandomErasing on the normalised batch (in train.py), a per-image loop, off by default.
- large images stay on disk and go through DataLoader workers with timm's `create_transform` (RandAugment,
  random erasing), pinned memory and non-blocking copies.

Batch order and augmentation are pure functions of (seed, epoch, step) on both paths (DataLoader workers
seed each sample's transform from (seed, epoch, index)): a resumed run sees exactly the batches an
uninterrupted one would, and every DDP rank agrees on the global batch before taking its shard. In-memory
random erasing is the exception: it draws from the Python and torch RNGs that checkpoints save, so a resumed
run still erases the same pixels, but each rank draws its own.
Splits: "train"; "val" (digits: the fixed held-out 20%; MNIST/Fashion-MNIST/CIFAR: the official test set;
ImageFolder: val/ or a seeded carve); "test" (the official test set, or test/ or val/ for ImageFolder).

Two more sources, each in a module of its own and read through its own library (vit/sources.py says which
name goes where): `hf:NAME` (Hugging Face datasets, vit/hf_data.py) and `wds:PATTERN` (WebDataset shards,
vit/wds_data.py). They use this module's pieces: one image decoder (`load_image`, `decode_images`), the carve,
per-sample seeds, and the loaders (`train_loader`, `eval_loader`) that take rows by index as `FileData` is taken,
or a `StreamData` that makes its own.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import math
import os
import random
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import slice_draws
from .errors import ConfigError, DataError
from .files import limit, open_regular_file, over_limit

log = logging.getLogger("vit.data")

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "folder")  # the names load_builtin knows
SPLITS = ("train", "val", "test")
# What a dataset's own validation split may be called (Hugging Face's name first, then convert.py's): hf: and wds:
# validate on the first of these a dataset has where --val-split names none.
VALIDATION_SPLIT_NAMES = ("validation", "val", "valid")
DIGITS_SPLIT_SEED = 0  # evaluate.py --dataset digits reproduces the held-out split with this seed
DIGITS_VAL_FRACTION = 0.2
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package
# The files read as images: in a folder, those with these suffixes; in a WebDataset sample, its first member
# with one of these extensions, in this order.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".ppm", ".bmp", ".pgm", ".tif", ".tiff")
MEMORY_MAX_SIDE = 64  # ImageFolder images up to this size are decoded into memory in data_mode=auto
# The built-in datasets' images as stored, (channels, height, width): what a model takes without resizing them.
BUILTIN_IMAGES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                  "cifar100": (3, 32, 32)}
FOLDER_SAMPLE = 32  # images whose headers say what an ImageFolder tree holds (`folder_image_shape`)


@dataclass
class TensorData:
    """A whole split as tensors: images (N, C, H, W) uint8, labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    skipped: int = field(default=0, kw_only=True)  # unreadable images left out while decoding (--on-corrupt skip)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "TensorData":
        return TensorData(self.images.to(device), self.labels.to(device), self.classes)


@dataclass
class FileData:
    """A split as (path, label) pairs, read by DataLoader workers."""

    samples: list[tuple[str, int]]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.samples)

    def item(self, i: int) -> tuple[str, int, str]:
        """(what `load_image` opens, label, the name an error gives): the interface DataLoader workers read."""
        path, label = self.samples[i]
        return path, label, path

    def relabeled(self, index: list[int], classes: list[str]) -> "FileData":
        """Labels mapped through `index` (dataset class -> another class list's position)."""
        return FileData([(p, index[y]) for p, y in self.samples], classes)


class StreamData:
    """A split read in order rather than by index (WebDataset shards): it makes its own loaders (see
    `train_loader`, `eval_loader`). Subclasses have `__len__`, `classes` and `relabeled`."""

    classes: list[str]

    def train_loader(self, transform, *, channels: int, batch_size: int, workers: int, seed: int, rank: int,
                     world: int, pin_memory: bool):
        raise NotImplementedError

    def eval_loader(self, transform, *, channels: int, batch_size: int, workers: int, rank: int, world: int,
                    pin_memory: bool):
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------------
# Sources


def digits_split(split: str = "train") -> TensorData:
    """sklearn's 8x8 digits: a fixed, seeded 80/20 split; "val" and "test" are the same held-out 20%.

    Pixels 0..16 are scaled to uint8 0..255 so every dataset shares one uint8 path.
    """
    from sklearn.datasets import load_digits

    _check_split(split)
    d = load_digits()
    images = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8))[:, None]  # (N, 1, 8, 8)
    labels = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_val = round(len(labels) * DIGITS_VAL_FRACTION)
    idx = perm[n_val:] if split == "train" else perm[:n_val]
    return TensorData(images[idx], labels[idx], [str(i) for i in range(10)])


IDX_MAX_BYTES = 2**32  # an IDX array's size as its header states it, before anything past the header is read


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), gzipped or not: big-endian header, then the array. The header's shape
    bounds what is read, so a gzip that inflates past it (a decompression bomb) stops there."""
    path = Path(path)
    try:
        with open_regular_file(path) as raw, (gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
            dims = f.read(4 * head[3])
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(head[3]))
            if len(dims) < 4 * head[3] or math.prod(shape) > IDX_MAX_BYTES:
                raise DataError(f"{path}: its header states shape {shape}, more than an IDX file here may hold "
                                f"({IDX_MAX_BYTES} bytes)")
            data = f.read(math.prod(shape) + 1)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(data) != math.prod(shape):
        raise DataError(f"{path}: header says shape {shape} but the file holds "
                        f"{'more than ' if len(data) > math.prod(shape) else ''}{min(len(data), math.prod(shape))} "
                        "bytes")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]


def idx_split(root: str | Path, split: str, classes: list[str]) -> TensorData:
    """MNIST-layout IDX files in `root` ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz])."""
    _check_split(split)
    root = Path(root)
    prefix = "train" if split == "train" else "t10k"

    def find(kind):
        for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
            if (root / name).exists():
                return root / name
        raise DataError(f"no {prefix}-{kind}-ubyte[.gz] in {root}: pass --data-dir with the IDX files "
                        "(Fashion-MNIST: apt-get install dataset-fashion-mnist)")

    images, labels = read_idx(find("images-idx3")), read_idx(find("labels-idx1"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"IDX files in {root}: images {images.shape} and labels {labels.shape} do not match")
    if len(labels) and labels.max() >= len(classes):
        raise DataError(f"IDX labels in {root} go up to {labels.max()}, more than {len(classes)} classes")
    return TensorData(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)),
                      classes)


def cifar_split(name: str, root: str | Path, split: str, *, download: bool) -> TensorData:
    """CIFAR-10/100 through torchvision's dataset class (its download, layout and integrity check)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    _check_split(split)
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    names = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    for path in [Path(root) / cls.filename] + [Path(root) / cls.base_folder / n for n in names]:
        if path.exists() and not path.is_file():  # torchvision would open a FIFO and wait
            raise DataError(f"{path} is not a regular file (a FIFO, device or folder is not read)")
    try:
        with network_timeout(DOWNLOAD_TIMEOUT_S):
            ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise DataError(f"{name} not found or corrupted under {root}: pass --download, or --data-dir with "
                        f"torchvision's {cls.base_folder}/ inside") from e
    except OSError as e:  # --download: no network (urllib's URLError), a timeout, a full or unwritable disk
        reason = getattr(e, "reason", None) or e.strerror or e
        raise DataError(f"cannot download {name} into {root}: {reason}; without a network, put torchvision's "
                        f"{cls.base_folder}/ (or {cls.filename}) there and leave out --download") from e
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    check_labels_in_range(labels, len(ds.classes), f"{name} under {root} ({split})")
    return TensorData(images, labels, list(ds.classes))


DOWNLOAD_TIMEOUT_S = 60.0  # a connection that stalls this long fails the download instead of hanging it


@contextmanager
def network_timeout(seconds: float):
    """A timeout for sockets opened meanwhile (torchvision's download opens its own, with none)."""
    import socket

    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(saved)


def scan_image_folder(root: str | Path) -> FileData:
    """An ImageFolder tree (root/CLASS/*.jpg). An empty class folder or fewer than two classes is an error."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class folder(s) {classes}; classification needs at least 2 "
                        "(expected root/CLASS_NAME/image.jpg)")
    samples, ignored = [], 0
    for label, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        ignored += len(files) - len(images)
        if not images:
            raise DataError(f"class folder {root / c} holds no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        samples += [(str(p), label) for p in images]
    if ignored:
        log.warning("%s: ignored %d file(s) without an image extension", root, ignored)
    return FileData(samples, classes)


def folder_image_shape(root: str | Path) -> tuple[int, int, int] | None:
    """(channels, height, width) that the images of an ImageFolder tree (its train/ where it has one) share, from
    the headers of up to FOLDER_SAMPLE of them, the first of each of its first classes in turn: 1 channel for grey
    modes, 3 for the rest (as they are decoded). None where they differ or none can be read: the loader then says
    why."""
    from PIL import Image

    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        root = root / "train"
    try:
        classes = sorted(e.path for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        files = [sorted(e.path for e in os.scandir(c) if e.is_file() and not e.name.startswith(".")
                        and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS) for c in classes[:FOLDER_SAMPLE]]
    except OSError:
        return None
    shapes = set()
    for path in [f for row in itertools.zip_longest(*files) for f in row if f][:FOLDER_SAMPLE]:
        try:
            with warnings.catch_warnings():  # a header past PIL's pixel limit: the loader refuses it, by name
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)
            with im:
                grey = im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;")
                shapes.add((1 if grey else 3, im.height, im.width))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # an unreadable image is the loader's to report (--on-corrupt)
    return shapes.pop() if len(shapes) == 1 else None


def folder_split(root: str | Path, split: str, *, val_size: float = 0.1, seed: int = 0) -> FileData:
    """root/train + root/val (+ root/test) if present; otherwise one tree with a seeded validation carve.

    val_size: fraction of the tree (< 1) or number of images (>= 1) held out; "val" and "test" both give it.
    """
    _check_split(split)
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        sub = "train" if split == "train" else ("test" if split == "test" and (root / "test").is_dir() else "val")
        data = scan_image_folder(root / sub)
        if split != "train":
            train_classes = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
            if data.classes != train_classes:
                raise DataError(f"{root / sub} has classes {data.classes}, {root / 'train'} has {train_classes}")
        return data
    data = scan_image_folder(root)
    idx = carve(len(data.samples), split, val_size=val_size, seed=seed, where=str(root))
    return FileData([data.samples[i] for i in idx], data.classes)


# --------------------------------------------------------------------------------------------------------
# Labels: one policy for every source. A label is an integer in [0, K); K comes from the source's metadata (folder
# names, a ClassLabel, _info.json's classes, a torchvision set's classes) or, where it has none, from the largest
# label, bounded by VIT_MAX_CLASSES before a class list is built for it.

_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,19}")


def label_value(value) -> int:
    """A label read from a file (a JSON value, or the text of KEY.cls) as an int; a ValueError for anything that
    is not an integer: 1.9 is not truncated to 1, true is not 1, "1e3" is not 1000."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return int(value.strip())
    raise ValueError(f"{value!r} is not an integer")


def numbered_classes(top: int, where: str) -> list[str]:
    """Class names "0".."top" for labels whose source names no classes: checked against VIT_MAX_CLASSES before
    the list is made (a label of 10^12 would make it a terabyte)."""
    if top + 1 > limit("VIT_MAX_CLASSES"):
        raise DataError(f"{where}: " + over_limit("VIT_MAX_CLASSES", f"labels up to {top:,} make {top + 1:,} classes"))
    return [str(i) for i in range(top + 1)]


def check_labels_in_range(labels: torch.Tensor, n_classes: int, where: str) -> None:
    """Every label in [0, n_classes), else a DataError naming `where` and the first label outside."""
    bad = (labels < 0) | (labels >= n_classes)
    if bool(bad.any()):
        raise DataError(f"{where}: label {int(labels[bad][0])}, but there are {n_classes} classes (labels 0 to "
                        f"{n_classes - 1})")


def carve(n: int, split: str, *, val_size: float, seed: int, where: str) -> list[int]:
    """The sorted indices of `split` in a seeded train/val carve of n images (val and test: the held out).

    The same for every source of the same images in the same order (a folder, its shards, its HF dataset)."""
    if not (math.isfinite(val_size) and val_size >= 0):
        raise ConfigError(f"--val-size must be a finite number >= 0 (a fraction below 1, or a count), got {val_size}")
    n_val = int(val_size) if val_size >= 1 else round(n * val_size)
    if not 0 < n_val < n:
        raise ConfigError(f"--val-size {val_size} holds out {n_val} of {n} images in {where}; need 0 < held out < {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:] if split == "train" else perm[:n_val])


def load_image(path: str | bytes, mode: str, name: str | None = None):
    """PIL image in `mode` ("RGB"/"L"), fully decoded; a `DataError` naming the file if it cannot be read.

    `path` may also be the encoded bytes of an image (a shard member, an Arrow cell); `name` then says where they
    came from in errors. A path is opened only if it names a regular file: a FIFO would wait for a writer.

    16-bit and 32-bit integer images are scaled to 8 bits from their full range, float images from [0, 1]
    (PIL's own conversion clips them, which turns most such images white or black). An image of more pixels
    than PIL's limit (Image.MAX_IMAGE_PIXELS, ~89 million) is refused from its header, before decoding:
    PIL itself refuses only past twice that, after a warning, and decodes what lies between.
    """
    import io

    name = name or str(path)
    try:  # a path: a regular file, opened without waiting (a FIFO, a device or a folder is refused)
        source = io.BytesIO(path) if isinstance(path, bytes) else open_regular_file(path)
    except DataError as e:
        raise DataError(f"cannot read image {name}: {e}") from e
    with source:
        return _decode(source, mode, name)


def _decode(source, mode: str, name: str):
    from PIL import Image

    try:
        with warnings.catch_warnings():  # PIL's warning for what is refused here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
        with im:
            max_pixels = Image.MAX_IMAGE_PIXELS
            if max_pixels and im.width * im.height > max_pixels:
                raise DataError(f"cannot read image {name}: {im.width}x{im.height} pixels, over PIL's limit of "
                                f"{max_pixels} (a decompression bomb?)")
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                im = _to_8bit(im, name)
            return im.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL raises all of these
        raise DataError(f"cannot read image {name}: {e}") from e


def _to_8bit(im, path: str):
    """A single-channel 16/32-bit integer or float PIL image as an 8-bit grayscale one."""
    from PIL import Image

    a = np.asarray(im, dtype=np.float64)
    if not np.isfinite(a).all():
        raise DataError(f"cannot read image {path}: it holds NaN or infinite pixel values")
    if im.mode == "F":
        scale = 255.0
    else:  # 16-bit unless a value says otherwise
        scale = 255.0 / (65535.0 if a.max(initial=0) <= 65535 else 4294967295.0)
    return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L")


def decode_folder(data: FileData, *, size: int, channels: int, on_corrupt: str = "skip") -> TensorData:
    """Decode an ImageFolder split into memory, resized to size x size (bilinear, antialiased)."""
    return decode_images((data.item(i) for i in range(len(data))), data.classes, size=size, channels=channels,
                         on_corrupt=on_corrupt)


def decode_images(items, classes: list[str], *, size: int, channels: int, on_corrupt: str = "skip") -> TensorData:
    """Decode (source, label, name) items (`load_image`'s path or bytes) into memory, resized to size x size
    (bilinear, antialiased): one decoder for folders, shards and Arrow rows, so the same files give the same
    tensors from each."""
    mode = "L" if channels == 1 else "RGB"
    images, labels, skipped, n = [], [], [], 0
    for source, label, name in items:
        n += 1
        try:
            im = load_image(source, mode, name)
        except DataError:
            if on_corrupt == "error":
                raise
            skipped.append(name)
            continue
        if im.size != (size, size):
            from PIL import Image

            im = im.resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        labels.append(label)
    if skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(skipped), skipped[0])
    if not images:
        raise DataError(f"no readable images among {n} files")
    return TensorData(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), classes,
                      skipped=len(skipped))


def load_builtin(name: str, split: str, *, data_dir: str = "", download: bool = False, val_size: float = 0.1,
                 split_seed: int = 0, data_mode: str = "auto", img_size: int = 0, channels: int = 3,
                 on_corrupt: str = "skip") -> TensorData | FileData:
    """One split of a built-in dataset (a name in DATASETS): `TensorData` (in memory) or `FileData` (for
    DataLoader workers). Callers outside the data layer go through `vit.sources.load_dataset`, which takes every
    --dataset name (hf:NAME and wds:PATTERN too) and sends these here.

    For ImageFolder trees, data_mode "auto" decodes into memory when img_size <= MEMORY_MAX_SIDE; `img_size`
    and `channels` then say what to decode to.
    """
    if name != "folder" and data_mode == "loader":
        raise ConfigError(f"--data-mode loader reads image files from a folder; --dataset {name} is held in memory "
                          "(leave --data-mode at auto)")
    if download and name not in ("cifar10", "cifar100"):
        raise ConfigError(f"--download fetches cifar10 and cifar100 only, not --dataset {name}")
    if name == "digits":
        return digits_split(split)
    if name in ("mnist", "fashion-mnist"):
        if not data_dir and name == "mnist":
            raise ConfigError("--dataset mnist needs --data-dir with the IDX .gz files")
        classes = MNIST_CLASSES if name == "mnist" else FASHION_MNIST_CLASSES
        return idx_split(data_dir or FASHION_MNIST_DIR, split, classes)
    if name in ("cifar10", "cifar100"):
        return cifar_split(name, data_dir or "data", split, download=download)
    if name == "folder":
        files = folder_split(data_dir, split, val_size=val_size, seed=split_seed)
        if wants_memory(data_mode, img_size):
            if img_size <= 0:
                raise ConfigError("decoding an image folder into memory needs --img-size")
            return decode_folder(files, size=img_size, channels=channels, on_corrupt=on_corrupt)
        return files
    raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def wants_memory(data_mode: str, img_size: int) -> bool:
    """Whether a split from files is decoded into memory: asked for, or (auto) images of at most MEMORY_MAX_SIDE."""
    return data_mode == "memory" or (data_mode == "auto" and 0 < img_size <= MEMORY_MAX_SIDE)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------------------------
# In-memory batches, augmented on the device


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training set in `epoch`: the same on every rank and after any resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def step_generator(seed: int, step: int) -> torch.Generator:
    """Augmentation randomness for one optimizer step, derived from (seed, step) alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 7)


def augment_batch(x: torch.Tensor, gen: torch.Generator, *, pad: int, hflip: float) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, for a uint8 batch (B, C, H, W).

    The random draws are made for the whole batch on the CPU (so DDP ranks can take slices of one global
    draw) and applied on x's device with one gather.
    """
    B, C, H, W = x.shape
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen).to(x.device)
        xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        b = torch.arange(B, device=x.device)[:, None, None, None]
        c = torch.arange(C, device=x.device)[None, :, None, None]
        x = xp[b, c, rows, cols]  # (B, C, H, W)
    if hflip > 0:
        flip = (torch.rand(B, generator=gen) < hflip).to(x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
    return x


class Normalize:
    """uint8 (B, C, H, W) -> float, scaled to [0, 1], grey expanded to the model's channels, resized (to the model's
    size, or a training step's `size` x `size`: --res-start), normalised."""

    def __init__(self, mean, std, *, channels: int, size: tuple[int, int], device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.channels, self.size = channels, tuple(size)

    def __call__(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        x = x.float().div_(255.0)
        if x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise DataError(f"images have {x.shape[1]} channels but the model takes {self.channels}")
            x = x.expand(-1, self.channels, -1, -1)
        target = self.size if size is None else (size, size)
        if tuple(x.shape[-2:]) != target:
            x = F.interpolate(x, size=target, mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std


def memory_batch(data: TensorData, perm: torch.Tensor, step: int, *, batch_size: int, rank: int, world: int,
                 gen: torch.Generator, pad: int, hflip: float, randaug=None,
                 repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of global batch `step` of an epoch, augmented (still uint8).

    randaug: a `vit.augment.RandAugment` applied after crop and flip. repeats: repeated augmentation (Hoffer
    et al., 2020; DeiT's 3): the batch holds batch_size / repeats images (rounded up), each `repeats` times,
    augmented independently, so an epoch of the same length shows 1 / repeats of the images.
    """
    unique = -(-batch_size // repeats)
    idx = perm[step * unique:(step + 1) * unique].repeat_interleave(repeats)[:batch_size].to(data.images.device)
    x = augment_batch(data.images[idx], gen, pad=pad, hflip=hflip)  # draws for the whole global batch
    local = batch_size // world
    rows = slice(rank * local, (rank + 1) * local)
    x, y = x[rows], data.labels[idx][rows]
    if randaug is not None:
        x = randaug.apply(x, slice_draws(randaug.draw(batch_size, gen), rows.start, rows.stop))
    return x, y


# --------------------------------------------------------------------------------------------------------
# DataLoader path


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of image `index` in `epoch`: the same whichever worker, rank or resume draws it."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextmanager
def seeded_rngs(seed: int):
    """Seed python's, numpy's and torch's CPU global RNGs (timm's transforms draw from all three) for one
    sample. In the main process (a DataLoader without workers) the states they had are put back after, so the
    model's draws stay its own; a worker's RNGs serve its samples only, and saving them would cost 0.16 ms.

    torch's CPU generator is seeded directly: torch.manual_seed would also queue a seed for every CUDA device,
    formatting a stack trace each time (0.4 ms here, a tenth of a 224-px RandAugment sample; benchmarks/loader.py).
    """
    main = torch.utils.data.get_worker_info() is None
    states = (random.getstate(), np.random.get_state(), torch.default_generator.get_state()) if main else None
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if states is not None:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.default_generator.set_state(states[2])


class FileDataset(torch.utils.data.Dataset):
    """Samples (`FileData`, or anything with its `item(i)`) through a torchvision/timm transform. Unreadable
    images give None in "skip" mode.

    Keys are indices, or (index, seed) pairs from `ShardSampler` that make the random transform of each
    sample a pure function of the seed (exact resume and the same batches for any number of workers).
    """

    def __init__(self, data: FileData, transform, *, channels: int, on_corrupt: str):
        self.data, self.transform = data, transform
        self.mode, self.on_corrupt = ("L" if channels == 1 else "RGB"), on_corrupt

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]):
        i, seed = key if isinstance(key, tuple) else (key, None)
        source, label, name = self.data.item(i)
        try:
            im = load_image(source, self.mode, name)
        except DataError as e:
            if self.on_corrupt == "error":
                return Unreadable(str(e))  # raised by FileLoader, in the main process
            log.warning("skipping unreadable image %s", name)
            return None
        if seed is None:
            return self.transform(im), label
        with seeded_rngs(seed):
            return self.transform(im), label


@dataclass(frozen=True)
class Unreadable:
    """An image that could not be read under --on-corrupt error: the DataError's message, carried out of the
    DataLoader worker as a value. Raised there, it would reach the main process re-raised with the worker's
    whole traceback inside its message."""

    message: str


def collate_skipping(batch):
    """Default collation without the unreadable samples; also returns how many were dropped (or the first
    `Unreadable`, for FileLoader to raise)."""
    failed = next((b for b in batch if isinstance(b, Unreadable)), None)
    if failed is not None:
        return failed
    kept = [b for b in batch if b is not None]
    if not kept:
        return None, None, len(batch)
    x, y = torch.utils.data.default_collate(kept)
    return x, y, len(batch) - len(kept)


class ShardSampler(torch.utils.data.Sampler):
    """This rank's (index, augmentation seed) pairs of `epoch_permutation`, from global batch `start_step` on
    (for mid-epoch resume)."""

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int, world: int):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        perm = epoch_permutation(self.n, self.seed, self.epoch)
        local = self.batch_size // self.world
        for step in range(self.start_step, self.n // self.batch_size):
            batch = perm[step * self.batch_size:(step + 1) * self.batch_size]
            for i in batch[self.rank * local:(self.rank + 1) * local].tolist():
                yield i, sample_seed(self.seed, self.epoch, i)

    def __len__(self) -> int:
        return (self.n // self.batch_size - self.start_step) * (self.batch_size // self.world)


class FileLoader(torch.utils.data.DataLoader):
    """A DataLoader that raises a worker's `Unreadable` (an image or a shard) as its one-line DataError."""

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, Unreadable):
                raise DataError(batch.message)
            yield batch


def file_loader(data: FileData, transform, *, channels: int, on_corrupt: str, batch_size: int, workers: int,
                sampler, pin_memory: bool) -> FileLoader:
    return FileLoader(
        FileDataset(data, transform, channels=channels, on_corrupt=on_corrupt), batch_size=batch_size, sampler=sampler,
        num_workers=workers, pin_memory=pin_memory, drop_last=False, collate_fn=collate_skipping,
        persistent_workers=workers > 0,
        # Workers' base seeds come from this generator, not the global RNG, which then holds only the
        # model's draws (dropout, patch dropout), the same with or without workers and across resumes.
        generator=torch.Generator().manual_seed(0),
    )


def train_loader(data: FileData | StreamData, transform, *, channels: int, on_corrupt: str, batch_size: int,
                 workers: int, seed: int, rank: int, world: int, pin_memory: bool):
    """(loader, positioner): this rank's share of each global batch of `batch_size` as (x, y, skipped), and the
    object whose `set_epoch(epoch, start_step)` says where the next pass over the loader begins."""
    if isinstance(data, StreamData):
        return data.train_loader(transform, channels=channels, batch_size=batch_size, workers=workers, seed=seed,
                                 rank=rank, world=world, pin_memory=pin_memory)
    sampler = ShardSampler(len(data), batch_size, seed=seed, rank=rank, world=world)
    loader = file_loader(data, transform, channels=channels, on_corrupt=on_corrupt, batch_size=batch_size // world,
                         workers=workers, sampler=sampler, pin_memory=pin_memory)
    return loader, sampler


def eval_loader(data: FileData | StreamData, transform, *, channels: int, on_corrupt: str, batch_size: int,
                workers: int, rank: int, world: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """Every world-th share of the split on this rank, in batches of `batch_size` (x, y, skipped)."""
    if isinstance(data, StreamData):
        return data.eval_loader(transform, channels=channels, batch_size=batch_size, workers=workers, rank=rank,
                                world=world, pin_memory=pin_memory)
    return file_loader(data, transform, channels=channels, on_corrupt=on_corrupt, batch_size=batch_size,
                       workers=workers, sampler=list(range(rank, len(data), world)), pin_memory=pin_memory)
