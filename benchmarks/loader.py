"""Data-loader throughput at 224 px: how many images a second one CPU core prepares for training.

Sources, built by this script from one ImageFolder tree of JPEGs (a balanced subset) into --work-dir:
- folder: the subset's files (re-encoded at --resize WxH if given, e.g. 500x375 for ImageNet-sized JPEGs);
- WebDataset: the same JPEG bytes in tar shards (`webdataset.ShardWriter`), read by `webdataset.WebDataset`;
- parquet: the same bytes in a Hugging Face parquet file (`datasets`' Image feature), read by `datasets`.
Every row decodes (PIL, or `torchvision.io.decode_jpeg`) and applies train.py's training transform for
DataLoader workers (vit/data.py's `file_transforms`, timm's: RandomResizedCrop to 224, flip, RandAugment
rand-m9-mstd0.5-inc1, to tensor, normalise) with 1 and 2 workers. Two more rows on the folder: train.py's own
DataLoader (`FileDataset`, `ShardSampler`, per-sample seeds) and timm's own loader (`create_loader` over
`ImageDataset`) on the same files, in the same run.

    python benchmarks/loader.py                      # CIFAR-10 JPEGs (32x32), 2,000 images, 2 rounds
    python benchmarks/loader.py --resize 500x375     # the same images as ImageNet-sized JPEGs

Passes are interleaved (every row once a round, the order rotated each round); a row's figure is the median over
rounds; each pass times every batch after its first (the first carries worker start-up). Two figures: images a
second of wall time, and images per CPU-second of the workers and the main process (user + system time from
/proc), which is what one core delivers and moves far less than wall time when other jobs share the machine.
Prints a table; --out FILE also writes the JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vit import data, transforms  # noqa: E402
from vit.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment_cost import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POLICY = "rand-m9-mstd0.5-inc1"  # DeiT's and timm's ImageNet RandAugment
PRE = Preprocess((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, "bicubic", 0.9)
SHARDS = 8  # WebDataset shards: several per worker


# --------------------------------------------------------------------------------------------------------
# Inputs: one balanced subset, three containers


def build_inputs(source: Path, work: Path, n: int, resize: tuple[int, int] | None) -> dict:
    """The first n / classes JPEGs of each class of `source`, as a folder, WebDataset shards and parquet."""
    import datasets
    import webdataset as wds
    from PIL import Image

    datasets.disable_progress_bars()
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    per_class = n // len(classes)
    samples = []
    for label, c in enumerate(classes):
        files = sorted(p for p in (source / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:per_class]
        samples += [(p, label) for p in files]
    folder = work / "folder"
    records = []  # (key, jpeg bytes, label)
    for i, (path, label) in enumerate(samples):
        dest = folder / classes[label] / f"{i:06d}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if resize:
            with Image.open(path) as im:
                im.convert("RGB").resize(resize, Image.BICUBIC).save(dest, "JPEG", quality=90)
        else:
            shutil.copyfile(path, dest)
        records.append((f"{i:06d}", dest.read_bytes(), label))
    (work / "wds").mkdir(exist_ok=True)
    with wds.ShardWriter(str(work / "wds" / "shard-%06d.tar"), maxcount=-(-len(records) // SHARDS), verbose=0) as sink:
        for key, jpeg, label in records:
            sink.write({"__key__": key, "jpg": jpeg, "cls": str(label).encode()})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    table = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for _, b, _ in records],
                                        "label": [y for _, _, y in records]}, features=features)
    (work / "parquet").mkdir(exist_ok=True)
    table.to_parquet(str(work / "parquet" / "train.parquet"))
    differ = [int(np.abs(np.array(decode_pil(b), dtype=np.int16) - np.array(decode_tv(b), dtype=np.int16)).max())
              for _, b, _ in records]
    return {"classes": classes, "images": len(records),
            "mean_jpeg_bytes": sum(len(b) for _, b, _ in records) / len(records),
            "size": f"{resize[0]}x{resize[1]}" if resize else "as stored",
            "decoders_identical": sum(d == 0 for d in differ), "decoders_max_abs_diff": max(differ)}


# --------------------------------------------------------------------------------------------------------
# Decoders and datasets


def decode_pil(jpeg: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        return im.convert("RGB")


def decode_tv(jpeg: bytes):
    """torchvision.io.decode_jpeg, handed to timm's PIL transforms as a PIL image."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    pixels = decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), mode=ImageReadMode.RGB)  # (3, H, W)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())


DECODERS = {"PIL": decode_pil, "decode_jpeg": decode_tv}


class Decoded(torch.utils.data.Dataset):
    """(jpeg bytes, label) by index from `read`, decoded and transformed as train.py's workers do: each sample
    under its own seed (vit.data.seeded_rngs)."""

    def __init__(self, read: Callable[[int], tuple[bytes, int]], n: int, decode, transform):
        self.read, self.n, self.decode, self.transform = read, n, decode, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        jpeg, label = self.read(i)
        with data.seeded_rngs(data.sample_seed(0, 0, i)):
            return self.transform(self.decode(jpeg)), label


class FolderBytes:
    def __init__(self, files: data.FileData):
        self.samples = files.samples

    def __call__(self, i: int) -> tuple[bytes, int]:
        path, label = self.samples[i]
        return Path(path).read_bytes(), label


class ParquetBytes:
    def __init__(self, path: Path, cache: Path):
        import datasets

        self.table = datasets.Dataset.from_parquet(str(path), cache_dir=str(cache)).cast_column(
            "image", datasets.Image(decode=False))

    def __call__(self, i: int) -> tuple[bytes, int]:
        row = self.table[i]
        return row["image"]["bytes"], row["label"]


def webdataset_pipeline(shards: list[str], decode, transform):
    import webdataset as wds

    def sample(key_jpeg_cls):
        key, jpeg, cls = key_jpeg_cls
        with data.seeded_rngs(data.sample_seed(0, 0, int(key))):
            return transform(decode(jpeg)), int(cls)

    return wds.WebDataset(shards, shardshuffle=False, empty_check=False).to_tuple("__key__", "jpg", "cls").map(sample)


# --------------------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    source: str  # folder, WebDataset, parquet
    decoder: str
    loader: str  # what reads: this script's dataset, train.py's FileDataset, timm's loader
    workers: int
    make: Callable[[], torch.utils.data.DataLoader]
    rates: list[float] | None = None  # img/s of wall time, one a round
    per_cpu: list[float] | None = None  # img per CPU-second, one a round

    @property
    def name(self) -> str:
        return f"{self.source} / {self.decoder} / {self.loader} / {self.workers}w"


def loader_for(dataset, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                                       persistent_workers=True)  # alive after the pass: their CPU time is read


def timm_loader(folder: Path, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    from timm.data import ImageDataset, create_loader

    loader = create_loader(
        ImageDataset(str(folder)), input_size=PRE.input_size, batch_size=batch_size, is_training=True,
        use_prefetcher=False, hflip=0.5, auto_augment=POLICY, interpolation=PRE.interpolation, mean=PRE.mean,
        std=PRE.std, crop_pct=PRE.crop_pct, num_workers=workers, device=torch.device("cpu"),
    )
    transforms.posterize_any_bits(loader.dataset.transform)  # Pillow 13 refuses timm's 0-bit posterize (vit/data.py)
    return loader


def train_py_loader(files: data.FileData, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """train.py's loader path for --dataset folder, as build_inputs makes it (one rank)."""
    sampler = data.ShardSampler(len(files.samples), batch_size, seed=0, rank=0, world=1)
    transform = transforms.file_transforms(PRE, True, hflip=0.5, randaug=POLICY)
    return data.file_loader(files, transform, channels=3, on_corrupt="skip", batch_size=batch_size, workers=workers,
                            sampler=sampler, pin_memory=False)


def make_rows(work: Path, batch_size: int, workers: list[int]) -> list[Row]:
    files = data.scan_image_folder(work / "folder")
    shards = sorted(str(p) for p in (work / "wds").glob("*.tar"))
    parquet = ParquetBytes(work / "parquet" / "train.parquet", work / "hf-cache")
    folder = FolderBytes(files)
    n = len(files.samples)
    rows = []
    for w in workers:
        rows.append(Row("folder", "PIL", "train.py", w, lambda w=w: train_py_loader(files, batch_size, w)))
        rows.append(Row("folder", "PIL", "timm", w, lambda w=w: timm_loader(work / "folder", batch_size, w)))
        for dec_name, dec in DECODERS.items():
            tf = transforms.file_transforms(PRE, True, hflip=0.5, randaug=POLICY)
            rows.append(Row("folder", dec_name, "Decoded", w,
                            lambda w=w, dec=dec, tf=tf: loader_for(Decoded(folder, n, dec, tf), batch_size, w)))
            rows.append(Row("WebDataset", dec_name, "webdataset", w,
                            lambda w=w, dec=dec, tf=tf: loader_for(webdataset_pipeline(shards, dec, tf), batch_size,
                                                                   w)))
            rows.append(Row("parquet", dec_name, "Decoded", w,
                            lambda w=w, dec=dec, tf=tf: loader_for(Decoded(parquet, n, dec, tf), batch_size, w)))
    return rows


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (Linux /proc), and of this one."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def timed_pass(loader: torch.utils.data.DataLoader) -> tuple[float, float]:
    """(images a second of wall time, images a CPU-second of the workers and this process) over every batch
    after the first (which waits for the workers to start). The workers are persistent: still there to be read
    once the pass has ended."""
    batches = torch.utils.data.DataLoader.__iter__(loader)  # the workers' own iterator: FileLoader wraps it
    next(batches)
    pids = [w.pid for w in batches._workers]
    t0, cpu0, images = time.perf_counter(), cpu_seconds(pids), 0
    for batch in batches:
        x = batch[0]
        images += len(x) if x is not None else 0
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pids) - cpu0
    batches._shutdown_workers()
    if images == 0:
        raise SystemExit("error: a pass gave one batch only (nothing timed after it): use more --images or a smaller "
                         "--batch-size")
    return images / elapsed, images / cpu


# --------------------------------------------------------------------------------------------------------


def versions() -> dict:
    import PIL
    import timm
    import torchvision

    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
           "pillow": PIL.__version__, "python": platform.python_version()}
    for name in ("webdataset", "datasets", "pyarrow"):
        try:
            out[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            out[name] = None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "train"),
                   help="an ImageFolder tree of JPEGs (CLASS/*.jpg)")
    p.add_argument("--images", type=int, default=2000, help="balanced subset size")
    p.add_argument("--resize", default="", help="re-encode the subset at WxH (e.g. 500x375); default: as stored")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--sources", default="folder,WebDataset,parquet", help="which sources' rows to time")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work-dir", default="", help="where the inputs are built (default: a temporary folder)")
    p.add_argument("--out", default="", help="also write the rows, rounds and machine to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the main process only collates; the workers are the measured cores
    resize = tuple(int(v) for v in args.resize.split("x")) if args.resize else None
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="vit-loader-"))
    try:
        t0 = time.perf_counter()
        info = build_inputs(Path(args.data), work, args.images, resize)
        print(f"inputs: {info['images']} images ({info['size']}, {info['mean_jpeg_bytes']:.0f} bytes a JPEG) as a "
              f"folder, {SHARDS} WebDataset shards and parquet in {work} ({time.perf_counter() - t0:.0f} s); "
              f"decode_jpeg gives PIL's pixels exactly for {info['decoders_identical']} of them (max abs difference "
              f"{info['decoders_max_abs_diff']})")
        sources = args.sources.split(",")
        rows = [r for r in make_rows(work, args.batch_size, [int(w) for w in args.workers.split(",")])
                if r.source in sources]
        loads = [os.getloadavg()[0]]
        for r in rows:
            r.rates, r.per_cpu = [], []
        for rnd in range(args.rounds):
            order = rows[rnd % len(rows):] + rows[:rnd % len(rows)]
            for r in order:
                wall, cpu = timed_pass(r.make())
                r.rates.append(wall)
                r.per_cpu.append(cpu)
                print(f"  round {rnd + 1}: {r.name:45s} {wall:7.1f} img/s  {cpu:7.1f} img/CPU-s", flush=True)
            loads.append(os.getloadavg()[0])
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report(rows, info, args, loads)
    return 0


def report(rows: list[Row], info: dict, args, loads: list[float]) -> None:
    wall = {r.name: statistics.median(r.rates) for r in rows}
    core = {r.name: statistics.median(r.per_cpu) for r in rows}
    ref = {r.workers: core[r.name] for r in rows if r.loader == "train.py"}
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, 1-minute load average {min(loads):.1f}-{max(loads):.1f} "
          f"(other jobs share this machine: read img/CPU-s, wall img/s moves with them); {info['images']} JPEGs "
          f"{info['size']} -> RandomResizedCrop 224 + flip + RandAugment {POLICY}; median of {args.rounds} "
          f"round(s)\n")
    print("| source | decode | reader | workers | img/s (wall) | img per CPU-second | x train.py's |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{core[r.name] / ref[r.workers]:.2f}x" if r.workers in ref else "-"
        print(f"| {r.source} | {r.decoder} | {r.loader} | {r.workers} | {wall[r.name]:.0f} | {core[r.name]:.0f} | "
              f"{ratio} |")
    print()
    for w in sorted({r.workers for r in rows}):
        line = []
        for source, loader in (("folder", "Decoded"), ("WebDataset", "webdataset"), ("parquet", "Decoded")):
            if source not in args.sources.split(","):
                continue
            pil, tv = core[f"{source} / PIL / {loader} / {w}w"], core[f"{source} / decode_jpeg / {loader} / {w}w"]
            line.append(f"{source} {tv / pil:.2f}x")
        if line:
            print(f"decode_jpeg against PIL, img per CPU-second, {w} worker(s): " + ", ".join(line))
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "cpu": cpu_name(), "cores": os.cpu_count(), "load_average_1min": loads, "versions": versions(),
            "args": vars(args), "inputs": {k: v for k, v in info.items() if k != "classes"}, "policy": POLICY,
            "rows": [{"source": r.source, "decoder": r.decoder, "reader": r.loader, "workers": r.workers,
                      "img_per_s": r.rates, "img_per_cpu_s": r.per_cpu, "median_img_per_s": wall[r.name],
                      "median_img_per_cpu_s": core[r.name]} for r in rows],
        }, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
