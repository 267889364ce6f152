"""Shared by the test files: builders of tiny data written here (IDX files, CIFAR pickles in torchvision's
layout, image folders, unreadable images), weight files good and bad, and one trained digits run.

Builders are plain functions (`from conftest import make_folder`); what costs time to make is a
session-scoped fixture, made once and only read by the tests (a test that writes into it copies it first).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vit

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`make test` runs a worker a core), each worker's torch takes its share of the cores, not
# all of them: two workers of two threads on two cores would wait on each other's spinning threads.
# The processes the tests start take the same share (OMP_NUM_THREADS), so that their sums match the test's own.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)

NANO = "vit_nano_patch2_8"  # the 8x8 grey digits model: 0.3M parameters
DIGITS = [str(i) for i in range(10)]

# --------------------------------------------------------------------------------------------------------
# Image folders and single images


def write_image(path: Path, value: int = 128, size: int = 8, mode: str = "L") -> Path:
    """A random image (seeded by `value`) of `size` x `size` pixels, grey ("L") or "RGB", in the format the
    suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def make_folder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 6, size: int = 12, mode: str = "RGB",
                suffix: str = ".jpg", seed: int = 0) -> Path:
    """An ImageFolder tree ROOT/CLASS/i.SUFFIX of random images."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}{suffix}")
    return root


def digit_folder(root: Path, classes=("0", "1"), per_class: int = 10) -> Path:
    """Grey 8x8 PNGs in class folders named as digits' classes: what the digits model reads as it is."""
    return make_folder(root, classes=classes, per_class=per_class, size=8, mode="L", suffix=".png")


def mixed_folder(root: Path) -> Path:
    """Classes "0" and "1", each with grey and RGB PNGs of 5, 8, 13 and 40 pixels: what scripts must convert."""
    for c in ("0", "1"):
        for i, (size, mode) in enumerate([(8, "L"), (13, "RGB"), (40, "RGB"), (5, "L")] * 2):
            write_image(root / c / f"{i}.png", value=i, size=size, mode=mode)
    return root


def unreadable_folder(root: Path) -> Path:
    """Classes "0" and "1", three empty .png files each: not one image can be read."""
    for c in ("0", "1"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (root / c / f"{i}.png").write_bytes(b"")
    return root


def corrupt_jpeg(path: Path) -> Path:
    """A JPEG cut off after its header: PIL opens it, decoding fails."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return path


# --------------------------------------------------------------------------------------------------------
# IDX files (the MNIST layout), written byte by byte


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_idx_dir(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> dict:
    """Fashion-MNIST's four files with random 28x28 images; returns {prefix: (images, labels)}."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[prefix] = (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", arrays[prefix][0])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", arrays[prefix][1])
    return arrays


# --------------------------------------------------------------------------------------------------------
# CIFAR-10 pickles in torchvision's layout


def make_cifar10(root: Path, n_per_batch: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        written[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return written


@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch):
    """Tiny CIFAR-10 files; torchvision's integrity check runs against their real md5 sums.
    Returns (root, {file name: (data, labels)})."""
    from torchvision.datasets import CIFAR10

    written = make_cifar10(tmp_path)
    md5 = lambda name: hashlib.md5((tmp_path / "cifar-10-batches-py" / name).read_bytes()).hexdigest()
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})
    return tmp_path, written


# --------------------------------------------------------------------------------------------------------
# Weight files, good and bad


class Evil:
    """Unpickling this runs `touch MARKER`: a checkpoint carrying code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny_nano(**overrides):
    """The digits model cut to one block."""
    return vit.create_model(NANO, depth=1, **overrides).eval()


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    """Good and bad weight files next to each other, for the one-block digits model: "good" (safetensors with
    class names), "good_pt" (a bare state dict), truncated and empty files, text, random bytes, a JPEG named
    .pth, pickles that run code ("evil": protocol 2, "evil5": protocol 5, "evil_zip": torch.save's zip),
    another width ("other_arch") and a state dict holding a string ("non_tensor"). "marker" is the file the
    evil ones would create: `assert_no_code_ran` checks it is absent."""
    d = tmp_path_factory.mktemp("weights")
    model = tiny_nano()
    good = vit.save_pretrained(model, d / "good.safetensors", class_names=DIGITS)
    torch.save(model.state_dict(), d / "good.pt")
    out = {"good": good, "good_pt": d / "good.pt"}
    for name, src in (("truncated_safetensors", good), ("truncated_pt", d / "good.pt")):
        data = src.read_bytes()
        out[name] = d / f"truncated{src.suffix}"
        out[name].write_bytes(data[: len(data) // 2])
    for suffix in (".safetensors", ".pt", ".npz"):
        (d / f"zero{suffix}").write_bytes(b"")
        out[f"zero{suffix}"] = d / f"zero{suffix}"
    out["text"] = d / "notes.pt"
    out["text"].write_text("these are not the weights you are looking for\n")
    out["random"] = d / "random.bin"
    out["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["jpeg"] = write_image(d / "photo.jpg", mode="RGB").rename(d / "photo.pth")
    out["marker"] = d / "code-ran"
    with open(d / "evil.pt", "wb") as f:  # a plain pickle, as `pickle.dump` writes it
        pickle.dump({"model": Evil(out["marker"])}, f, protocol=2)
    with open(d / "evil5.pt", "wb") as f:  # protocol 5: refused before its import is even read
        pickle.dump({"model": Evil(out["marker"])}, f, protocol=5)
    torch.save({"model": model.state_dict(), "extra": Evil(out["marker"])}, d / "evil_zip.pt")  # torch's zip
    out["evil"], out["evil5"], out["evil_zip"] = d / "evil.pt", d / "evil5.pt", d / "evil_zip.pt"
    other = tiny_nano(embed_dim=32, num_heads=2)  # another width
    out["other_arch"] = vit.save_pretrained(other, d / "other.safetensors")
    torch.save({**model.state_dict(), "epoch": "three"}, d / "non_tensor.pt")
    out["non_tensor"] = d / "non_tensor.pt"
    return out


def assert_no_code_ran(files: dict[str, Path]) -> None:
    assert not files["marker"].exists(), "unpickling the checkpoint ran its code"


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, options: str):
    """A real tmpfs mounted at `mnt` with `options` for the block (needs root: mount), else the test is skipped."""
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip(f"cannot mount a tmpfs ({options}) here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 2 MiB filesystem that fills up (needs root: mount), else the test is skipped."""
    with mounted_tmpfs(tmp_path / "tmpfs", "size=2m") as mnt:
        yield mnt


@pytest.fixture
def read_only_folder(tmp_path):
    """A real read-only filesystem (a tmpfs mounted read-only; needs root, else the test is skipped): writes and
    even the removal of a file that is not there fail with EROFS."""
    with mounted_tmpfs(tmp_path / "read-only", "ro,size=1m") as mnt:
        yield mnt


@contextlib.contextmanager
def within(seconds: float):
    """The block must end within `seconds`: SIGALRM raises TimeoutError in it, so a read that waits (a FIFO
    opened as a file) fails the test instead of hanging the suite."""
    import signal

    def too_slow(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (waiting on a FIFO?)")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------------------------------------
# A stand-in for the Hugging Face hub


@dataclass(frozen=True)
class Hub:
    """What the stand-in hub received: each repo's files under root/ORG/NAME as the last upload left them, and
    every upload's (repo, commit message)."""

    root: Path
    commits: list


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Hub:
    """huggingface_hub's `HfApi.create_repo` and `upload_folder` answered in this process: an upload copies its
    folder into tmp_path/hub/REPO. No request leaves the machine."""
    import shutil
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    received = Hub(tmp_path / "hub", [])

    def create_repo(self, repo_id, *, exist_ok=False, **kwargs):
        (received.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return f"https://hub.test/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, **kwargs):
        shutil.copytree(folder_path, received.root / repo_id, dirs_exist_ok=True)
        received.commits.append((repo_id, commit_message))
        return SimpleNamespace(commit_url=f"https://hub.test/{repo_id}/commit/{len(received.commits)}")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return received


# --------------------------------------------------------------------------------------------------------
# One trained run

# Two epochs of 22 steps on digits; fp32 and no label smoothing, so that the validation loss train.py records
# is the plain cross-entropy evaluate.py reports.
TRAINED_RUN_ARGS = ["--epochs", "2", "--batch-size", "64", "--lr", "4e-3", "--warmup-epochs", "0",
                    "--label-smoothing", "0", "--device", "cpu", "--precision", "fp32", "--quiet"]


@dataclass(frozen=True)
class TrainedRun:
    out: Path  # the run folder: last.ckpt, best.safetensors, metrics.jsonl, curves.png
    stdout: str  # what train.py printed


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """A real train.py run on digits (`train.main`, in this process), shared by the train, evaluate and
    bad-input tests. Read it, never write into it: copy the folder first."""
    from vit.train import main

    out = tmp_path_factory.mktemp("trained") / "digits"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([*TRAINED_RUN_ARGS, "--output", str(out)])
    assert code == 0, printed.getvalue()
    return TrainedRun(out, printed.getvalue())


# --------------------------------------------------------------------------------------------------------
# The same images as a folder, WebDataset shards and Hugging Face datasets, each written by its own library


@dataclass(frozen=True)
class SameImages:
    """One ImageFolder tree and the same files as shards and HF data (keys and rows in the folder's order)."""

    folder: Path  # ROOT/CLASS/i.png: 3 classes x 8 grey 8x8 PNGs (a class's images share a mean)
    shards: str  # wds pattern: shards of 5 written by webdataset.ShardWriter in a shuffled order, with _info.json
    bare_shards: str  # the same shards without _info.json: counted and labelled by a scan
    hf_disk: Path  # Dataset.from_dict(...) with a ClassLabel, save_to_disk
    parquet: Path  # the same Dataset.to_parquet: one file
    classes: tuple[str, ...]


def folder_items(root: Path) -> list[tuple[bytes, str, int, str]]:
    """(file bytes, extension, label, relative path) of a folder's images, in vit.data's scan order."""
    from vit.data import scan_image_folder

    data = scan_image_folder(root)
    return [(Path(p).read_bytes(), Path(p).suffix.lstrip("."), y, str(Path(p).relative_to(root)))
            for p, y in data.samples]


def write_shards(out: Path, items, shard_size: int = 5, seed: int = 0, info: bool = True,
                 classes=None, prefix: str = "train") -> str:
    """`items` as WebDataset shards (webdataset.ShardWriter), keyed by their index, written in a seeded shuffled
    order; _info.json in timm's layout. Returns the brace pattern."""
    import json

    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(items)).tolist()
    with wds.ShardWriter(str(out / f"{prefix}-%04d.tar"), maxcount=shard_size, verbose=0) as sink:
        for i in order:
            data, ext, label, _ = items[i]
            sink.write({"__key__": f"{i:06d}", ext: data, "cls": label})
    n_shards = -(-len(items) // shard_size)
    if info:
        files = [f"{prefix}-{k:04d}.tar" for k in range(n_shards)]
        lengths = [min(shard_size, len(items) - k * shard_size) for k in range(n_shards)]
        (out / "_info.json").write_text(json.dumps({"classes": list(classes), "splits": {prefix: {
            "name": prefix, "filenames": files, "shard_lengths": lengths, "num_samples": len(items)}}}))
    return str(out / f"{prefix}-{{0000..{n_shards - 1:04d}}}.tar")


def hf_dataset_of(items, classes):
    """`items` as a datasets.Dataset: the files' bytes in an Image column, labels in a ClassLabel."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    return datasets.Dataset.from_dict({"image": [{"bytes": d, "path": p} for d, _, _, p in items],
                                       "label": [y for _, _, y, _ in items]}, features=features)


@pytest.fixture(scope="session")
def same_images(tmp_path_factory) -> SameImages:
    d = tmp_path_factory.mktemp("same_images")
    classes = ("cat", "dog", "emu")
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):  # learnable: each class its own mean grey
        (d / "folder" / c).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(rng.normal(60 + 70 * k, 30, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(d / "folder" / c / f"{i}.png")
    items = folder_items(d / "folder")
    shards = write_shards(d / "shards", items, classes=classes)
    bare = write_shards(d / "bare", items, info=False)
    ds = hf_dataset_of(items, classes)
    ds.save_to_disk(str(d / "hf_disk"))
    (d / "parquet").mkdir()
    ds.to_parquet(str(d / "parquet" / "train.parquet"))
    return SameImages(d / "folder", shards, bare, d / "hf_disk", d / "parquet" / "train.parquet", classes)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty datasets cache for this test, offline (as HF_DATASETS_OFFLINE=1 sets it): where parquet is
    turned into Arrow, and where a hub name is looked up."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return tmp_path / "hf-cache"
