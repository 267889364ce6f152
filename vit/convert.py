"""Write an ImageFolder tree or a torchvision dataset out as WebDataset shards or a Hugging Face dataset.

    python -m vit.convert photos/ shards/ --to wds                  # shards/train-000000.tar ... + _info.json
    python -m vit.convert photos/ hfds/ --to hf                     # a save_to_disk folder
    python -m vit.convert photos/ pq/ --to parquet                  # pq/train-00000-of-00001.parquet ...
    python -m vit.convert cifar10 shards/ --to wds --data-dir data/ # torchvision's train and test sets
    then: python train.py --dataset wds:'shards/train-{000000..000004}.tar' ...   (the command is printed)

Splits: an ImageFolder root with train/ and val/ (and test/) keeps them; a single tree is "train", or with
--val-size "train" and "val" carved exactly as train.py carves the folder (same --split-seed); a torchvision
dataset gives "train" and "test" (the official test set, train.py's validation set for these: --val-split test).

Images are stored as the files' own bytes (tensors of torchvision's sets as lossless PNG), so each format
decodes to the same pixels as the source. Each sample's key is its index in the source's order (zero-padded):
vit.wds_data orders in-memory samples by key, so the folder, its shards and its HF dataset give the same tensors
in the same order. WebDataset shards are written in a seeded shuffled order (--shuffle-seed), so that a shard,
read in streaming order, holds a mix of classes; HF datasets keep the source order (they are read by index).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from . import data
from .errors import ConfigError, OutputError, VitError

FORMATS = ("wds", "hf", "parquet")
TORCHVISION = ("mnist", "fashion-mnist", "cifar10", "cifar100")


class Split:
    """One split to write: (encoded bytes or path, label, member extension, name) per sample, by index."""

    def __init__(self, name: str, classes: list[str], n: int, get):
        self.name, self.classes, self.n, self.get = name, classes, n, get

    def sample(self, i: int) -> tuple[bytes, int, str, str]:
        encoded, label, ext, name = self.get(i)
        if not isinstance(encoded, bytes):
            try:
                encoded = Path(encoded).read_bytes()
            except OSError as e:
                raise OutputError(f"cannot read {encoded}: {e}") from e
        return encoded, label, ext, name


def folder_splits(root: Path, val_size: float, split_seed: int) -> list[Split]:
    def of(name, files: data.FileData):
        def get(i):
            path, label = files.samples[i]
            return path, label, Path(path).suffix.lower().lstrip("."), str(Path(path).relative_to(root))
        return Split(name, files.classes, len(files), get)

    if (root / "train").is_dir() and (root / "val").is_dir():
        names = ["train", "val"] + (["test"] if (root / "test").is_dir() else [])
        return [of(n, data.folder_split(root, n)) for n in names]
    if val_size:
        return [of(n, data.folder_split(root, n, val_size=val_size, seed=split_seed)) for n in ("train", "val")]
    return [of("train", data.scan_image_folder(root))]


def tensor_splits(name: str, data_dir: str, download: bool) -> list[Split]:
    def of(split_name, tensors: data.TensorData):
        mode = "L" if tensors.images.shape[1] == 1 else "RGB"

        def get(i):
            from PIL import Image

            buf = io.BytesIO()
            pixels = tensors.images[i].permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)
            Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(buf, "PNG")
            return buf.getvalue(), int(tensors.labels[i]), "png", f"{i}.png"
        return Split(split_name, tensors.classes, len(tensors), get)

    return [of(s, data.load_builtin(name, "train" if s == "train" else "test", data_dir=data_dir, download=download))
            for s in ("train", "test")]


def key_width(n: int) -> int:
    return max(6, len(str(n - 1)))


# --------------------------------------------------------------------------------------------------------
# Writers


def write_wds(splits: list[Split], out: Path, shard_size: int, shuffle_seed: int | None) -> dict:
    """{split: [shard paths]}; _info.json in timm's layout with the class names."""
    import webdataset as wds

    info = {"name": out.name, "classes": splits[0].classes, "splits": {}}
    written = {}
    for split in splits:
        order = np.arange(split.n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(split.n)
        width, counts, paths = key_width(split.n), [], []

        def finished(fname):  # ShardWriter's hook, called as each shard is closed
            paths.append(fname)
            counts.append(sink.count)

        # mtime 0: the same input gives byte-identical shards
        with wds.ShardWriter(str(out / f"{split.name}-%06d.tar"), maxcount=shard_size, maxsize=float("inf"),
                             post=finished, verbose=0, encoder=False, mtime=0) as sink:
            for i in order.tolist():
                encoded, label, ext, _ = split.sample(i)
                sink.write({"__key__": f"{i:0{width}d}", ext: encoded, "cls": str(label).encode()})
        names = [Path(p).name for p in paths]
        info["splits"][split.name] = {"name": split.name, "filenames": names, "shard_lengths": counts,
                                      "num_samples": split.n}
        written[split.name] = paths
    (out / "_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return written


def hf_dataset(split: Split, cache_dir: str):
    """The split as a datasets.Dataset (image bytes + ClassLabel), written through the Arrow cache in cache_dir."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=split.classes)})

    def rows(start, stop):
        for i in range(start, stop):
            encoded, label, _, name = split.sample(i)
            yield {"image": {"bytes": encoded, "path": name}, "label": label}

    # A fresh fingerprint: nothing to reuse in a new cache, and hashing the generator would hash the whole source.
    return datasets.Dataset.from_generator(rows, features=features, cache_dir=cache_dir, split=split.name,
                                           gen_kwargs={"start": 0, "stop": split.n}, fingerprint=uuid.uuid4().hex)


def write_hf(splits: list[Split], out: Path, fmt: str, shard_size: int) -> dict:
    import datasets

    written = {}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-cache-") as cache:
        built = {s.name: hf_dataset(s, cache) for s in splits}
        if fmt == "hf":
            datasets.DatasetDict(built).save_to_disk(str(out))
            return {name: [str(out / name)] for name in built}
        for name, ds in built.items():  # {split}-00000-of-0000N.parquet: datasets names the splits from these
            n = -(-len(ds) // shard_size)
            written[name] = []
            for k in range(n):
                path = out / f"{name}-{k:05d}-of-{n:05d}.parquet"
                ds.select(range(k * shard_size, min((k + 1) * shard_size, len(ds)))).to_parquet(str(path))
                written[name].append(str(path))
    return written


# --------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m vit.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("source", help=f"an ImageFolder root, or a torchvision dataset: {', '.join(TORCHVISION)}")
    p.add_argument("output", help="folder to create (must be empty or absent)")
    p.add_argument("--to", choices=FORMATS, required=True,
                   help="wds: WebDataset tar shards + _info.json; hf: a save_to_disk folder; parquet: parquet files")
    p.add_argument("--data-dir", default="", help="torchvision datasets: their root (as train.py's --data-dir)")
    p.add_argument("--download", action="store_true", help="torchvision datasets: download into --data-dir")
    p.add_argument("--val-size", type=float, default=0.0,
                   help="a single tree: also write a val split carved as train.py carves it (fraction or count)")
    p.add_argument("--split-seed", type=int, default=0, help="the carve's seed (train.py's --split-seed)")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per tar shard / parquet file")
    p.add_argument("--shuffle-seed", type=int, default=0, help="wds: the seed of the write order")
    p.add_argument("--no-shuffle", action="store_true", help="wds: write shards in the source order")
    args = p.parse_args(argv)
    if args.shard_size < 1 or not (math.isfinite(args.val_size) and args.val_size >= 0):
        p.error(f"--shard-size must be >= 1 and --val-size a finite number >= 0, got {args.shard_size} and "
                f"{args.val_size}")
    for name in ("split_seed", "shuffle_seed"):  # torch's and numpy's generators take seeds in [0, 2**63)
        if not 0 <= getattr(args, name) < 2**63:
            p.error(f"--{name.replace('_', '-')} must be in [0, 2**63), got {getattr(args, name)}")
    return args


def convert(args) -> dict:
    """Write the output; returns {split: [files written]}."""
    if args.source in TORCHVISION:
        splits = tensor_splits(args.source, args.data_dir, args.download)
    elif Path(args.source).is_dir():
        splits = folder_splits(Path(args.source), args.val_size, args.split_seed)
    else:
        raise ConfigError(f"source {args.source!r} is neither a folder nor one of {', '.join(TORCHVISION)}")
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out} exists and is not an empty folder: give a new one")
    if args.to == "wds":
        from .wds_data import require_webdataset

        require_webdataset()
    else:
        from .hf_data import require_datasets

        require_datasets()
    try:
        out.mkdir(parents=True, exist_ok=True)
        if args.to == "wds":
            return write_wds(splits, out, args.shard_size, None if args.no_shuffle else args.shuffle_seed)
        return write_hf(splits, out, args.to, args.shard_size)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e}") from e


def usage_hint(fmt: str, out: Path, written: dict) -> str:
    """The train.py flags that read what was written."""
    if fmt == "wds":
        files = [Path(p).name for p in written["train"]]
        pattern = out / (files[0] if len(files) == 1 else
                         f"train-{{{files[0][6:12]}..{files[-1][6:12]}}}.tar")
        flags = f"--dataset wds:'{pattern}'"
    else:
        flags = f"--dataset hf:{out}"
    if "test" in written and "val" not in written:
        flags += " --val-split test"
    return flags


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        written = convert(args)
    except VitError as e:
        print(f"error: {e}", file=sys.stderr)
        if Path(args.output).is_dir() and not any(Path(args.output).iterdir()):
            shutil.rmtree(args.output, ignore_errors=True)
        return 2
    took = time.perf_counter() - start
    for split, files in written.items():
        print(f"{split}: {len(files)} file(s) in {args.output}")
    hint = usage_hint(args.to, Path(args.output), written)
    print(f"wrote {args.to} in {took:.1f} s; train with: python train.py {hint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
