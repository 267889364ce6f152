"""WebDataset tar shards as training and evaluation data: `--dataset wds:PATTERN`, read with `webdataset`.

PATTERN is a brace pattern of local shard files (no URLs or `pipe:` commands), e.g. `shards/train-{0000..0127}.tar`.
A sample is the group of members sharing a key (webdataset's rule; a member whose name starts with "__" is none,
for the scan and the reader alike: `sample_part`); its image is the first member with an image
extension (or --image-key EXT), its label the integer in KEY.cls (or --label-key EXT, or json:FIELD of KEY.json).

Beside the shards, `_info.json` (timm's layout, which `python -m vit.convert` writes) gives each shard's sample
count and the class names: {"classes": [...], "splits": {"train": {"name": "train", "filenames": [...],
"shard_lengths": [...], "num_samples": N}, "val": {...}}}. Without it, or for a shard it does not list, the tar
headers are scanned for the count (and the label members for the number of classes). Splits: "val" is --val-split
(a split of _info.json, or a shard pattern), else _info.json's validation, val or valid split, else (in memory
only) a seeded carve of train as for a folder; "test" is _info.json's test split if it has one, else val.

Small images are decoded into memory: every sample of every shard, in key order (so the order, and a carve,
do not depend on how the samples were cut into shards; `vit.convert` keys samples by their index in the source).

Large ones are streamed. Epoch e puts the shards in a seeded order (seed, e) and each shard's samples through a
seeded 1,000-sample shuffle buffer (seed, e, shard): one sequence of all N samples, of which rank r trains on the
r-th contiguous 1/world of the first floor(N / B) * B (B the global batch; the rest sit this epoch out). A
DataLoader worker reads the contiguous run of batches it serves, opening only the shards that run covers.
Resumed at (epoch, step), every rank continues with exactly the batches the uninterrupted run would have trained
on next, augmentation seeded per sample: a deterministic CPU run resumes bit-identical, for the same number of
ranks and --workers (docs/troubleshooting.md says what other counts give). Validation streams every sample once,
each rank its contiguous share, in shard order.

A truncated shard is a DataError naming it under --on-corrupt error; under skip its lost samples are dropped and
counted in the log. A sample without a label, or with one that is not an integer, is a DataError naming the shard
and the key. Sizes are bounded before anything is made for them (vit/files.py): the shards a pattern names
(VIT_MAX_SHARDS, counted from the pattern), a member's bytes (VIT_MAX_MEMBER_BYTES, from its tar header), the
classes labels make where _info.json names none (VIT_MAX_CLASSES).
"""

from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

import numpy as np
import torch

from . import data, files
from .errors import ConfigError, DataError

log = logging.getLogger("vit.wds_data")

INFO_FILES = ("_info.json", "info.json")  # timm's names for the sidecar
IMAGE_MEMBERS = tuple(suffix.lstrip(".") for suffix in data.IMAGE_EXTENSIONS)  # a sample's image: the first it has
SHUFFLE_BUFFER = 1000  # samples: the in-shard shuffle of a streamed epoch; a worker holds at most this many


def require_webdataset():
    try:
        import webdataset
    except ImportError as e:
        raise ConfigError("--dataset wds:PATTERN reads WebDataset shards with the `webdataset` library: "
                          "pip install 'vit[data]' (or pip install webdataset)") from e
    return webdataset


# --------------------------------------------------------------------------------------------------------
# Shards, their counts and classes


@dataclass(frozen=True)
class Shard:
    path: str
    count: int  # samples in it (from _info.json or a scan)
    offset: int  # global index of its first sample: shard order as listed, then tar order


def expand(pattern: str) -> list[str]:
    """The shard paths of a brace pattern, each of which must exist: counted before any name is made (at most
    VIT_MAX_SHARDS, vit/files.py)."""
    require_webdataset()
    where = f"wds:{pattern}"
    files.local_path(pattern, where)
    paths = [files.local_path(p, where) for p in files.expand_braces(pattern, where)]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"wds:{pattern}: {len(missing)} of {len(paths)} shard(s) missing, e.g. {missing[0]}")
    return paths


def read_info(first_shard: str) -> dict:
    """_info.json (or info.json) beside the shards, or {}."""
    for name in INFO_FILES:
        path = Path(first_shard).parent / name
        if path.is_file():
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read {path}: {e}") from e
            classes = info.get("classes", []) if isinstance(info, dict) else None
            if not isinstance(info, dict) or not isinstance(info.get("splits", {}), dict) or \
                    not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                raise DataError(f"{path}: expected an object with 'splits' (timm's _info.json layout) and "
                                "'classes', a list of names")
            try:
                info_counts(info)
            except (AttributeError, TypeError, ValueError) as e:
                raise DataError(f"{path}: each split needs 'filenames' and 'shard_lengths' (counts): {e}") from e
            return info
    return {}


def info_counts(info: dict) -> dict[str, int]:
    """{shard file name: sample count} over every split of _info.json."""
    counts = {}
    for split in info.get("splits", {}).values():
        for name, n in zip(split.get("filenames", []), split.get("shard_lengths", [])):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"{name}: {n!r} samples")
            counts[Path(name).name] = n
    return counts


def key_of(name: str) -> tuple[str | None, str | None]:
    """webdataset's split of a member name into (key, extension): the extension starts at the first dot."""
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(name)
    return key, (ext.lower() if ext else ext)


def sample_part(member: tarfile.TarInfo, shard: str) -> tuple[str, str] | None:
    """(key, extension) if a member of a shard is part of a sample, else None: the one rule the scan and the
    reader share. A part is a regular file whose name webdataset splits into a key and an extension and does not
    start with "__" (webdataset's metadata names, __key__ and the like). Its size, from its header, is at most
    VIT_MAX_MEMBER_BYTES, else a DataError before it is read."""
    if not member.isreg() or member.name.startswith("__"):
        return None
    key, ext = key_of(member.name)
    if key is None:
        return None
    if member.size > files.limit("VIT_MAX_MEMBER_BYTES"):
        raise DataError(f"shard {shard}, member {member.name}: " +
                        files.over_limit("VIT_MAX_MEMBER_BYTES", f"{member.size:,} bytes"))
    return key, ext


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, shard: str) -> bytes:
    """A member's bytes; running out of memory is said as such (not as a truncated shard)."""
    try:
        return tar.extractfile(member).read()
    except MemoryError as e:
        raise DataError(f"shard {shard}, member {member.name}: {member.size:,} bytes do not fit in this process's "
                        "memory; lower VIT_MAX_MEMBER_BYTES to refuse such members at once") from e


def scan_shard(path: str, label_key: str) -> tuple[int, int, bool]:
    """(complete samples, largest label, truncated) from the tar headers (and label members) of one shard.

    A shard is truncated when reading it fails or it lacks tar's end-of-archive blocks; its last sample, which
    may then be cut short, is not counted."""
    keys, top, truncated, end = [], -1, False, 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                end = member.offset_data + -(-member.size // 512) * 512
                part = sample_part(member, path)
                if part is None:
                    continue
                key, ext = part
                if not keys or keys[-1] != key:
                    keys.append(key)
                if _is_label_member(ext, label_key):
                    label = _parse_label(ext, read_member(tar, member, path), label_key, shard=path, key=key)
                    top = max(top, label)
    except (tarfile.TarError, OSError, EOFError) as e:
        truncated = True
        log.debug("scan of %s stopped: %s", path, e)
    except MemoryError as e:  # tar's own headers (a pax header is read whole): not a truncated shard
        raise DataError(f"shard {path}: its tar headers do not fit in this process's memory") from e
    if not truncated and not path.endswith((".gz", ".tgz", ".bz2", ".xz")):
        with open(path, "rb") as f:  # tar ends with two zero blocks; a cut at a member boundary loses them
            f.seek(end)
            tail = f.read(1024)
        truncated = len(tail) < 1024 or tail.strip(b"\0") != b""
    count = len(keys) - (1 if truncated and keys else 0)
    return count, top, truncated


def _is_label_member(ext: str, label_key: str) -> bool:
    return ext == ("json" if label_key.startswith("json:") else label_key)


def _parse_label(ext: str, member: bytes, label_key: str, *, shard: str, key: str) -> int:
    """The label in a member: an integer (KEY.cls's text, or a JSON field holding one); 1.9 is an error, not 1."""
    try:
        if label_key.startswith("json:"):
            value = json.loads(member)[label_key[5:]]
        else:
            value = member.decode()
        return data.label_value(value)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"shard {shard}, sample {key}: no integer label in {key}.{ext} for --label-key {label_key} "
                        f"({type(e).__name__}: {e})") from e


def sample_label(sample: dict, label_key: str, shard: str) -> int:
    ext = "json" if label_key.startswith("json:") else label_key
    if ext not in sample:
        raise DataError(f"shard {shard}, sample {sample['__key__']}: no label ({sample['__key__']}.{ext} for "
                        f"--label-key {label_key}); its members: {', '.join(_exts(sample))}")
    return _parse_label(ext, sample[ext], label_key, shard=shard, key=sample["__key__"])


def sample_image(sample: dict, image_key: str, shard: str) -> bytes | None:
    """The encoded image of a sample; None where it has none (a sample cut short)."""
    if image_key:
        return sample.get(image_key)
    return next((sample[e] for e in IMAGE_MEMBERS if e in sample), None)


def check_label(label: int, n_classes: int, *, shard: str, key: str) -> None:
    if not 0 <= label < n_classes:
        raise DataError(f"shard {shard}, sample {key}: label {label}, but there are {n_classes} classes "
                        "(_info.json's 'classes', else 0 to the largest label)")


def _exts(sample: dict) -> list[str]:
    return [k for k in sample if not k.startswith("__")]


@dataclass
class ShardSet:
    """The shards of one split, with what is known of them."""

    pattern: str
    shards: list[Shard]
    classes: list[str]
    _: KW_ONLY
    image_key: str
    label_key: str
    on_corrupt: str

    def __len__(self) -> int:
        return sum(s.count for s in self.shards)


def open_shards(pattern: str, *, image_key: str, label_key: str, on_corrupt: str, classes: list[str] | None = None,
                info: dict | None = None) -> ShardSet:
    """Count the shards of `pattern` (from _info.json, else by a scan) and find the class names."""
    paths = expand(pattern)
    info = read_info(paths[0]) if info is None else info
    known = info_counts(info)
    label_key = label_key or "cls"
    counts, top = [], -1
    for path in paths:
        if Path(path).name in known and (classes or info.get("classes")):
            n, size = known[Path(path).name], Path(path).stat().st_size
            if n > size // 512:  # each sample has a member, each member a 512-byte header
                raise DataError(f"{path}: _info.json says it holds {n:,} samples, but its {size:,} bytes hold at "
                                f"most {size // 512:,}")
            counts.append(n)
            continue
        n, shard_top, truncated = scan_shard(path, label_key)
        top = max(top, shard_top)
        if truncated:
            lost = known[Path(path).name] - n if Path(path).name in known else None
            what = f"{lost} of its {known[Path(path).name]} samples" if lost is not None else "the sample cut off"
            if on_corrupt == "error":
                raise DataError(f"shard {path} is truncated after {n} complete samples (--on-corrupt skip would "
                                f"train without {what})")
            log.warning("shard %s is truncated after %d complete samples: skipped %s", path, n, what)
        counts.append(n)
    if top < 0 and not (classes or info.get("classes")) and any(counts):  # no label found: say where one lacks
        first = next(Shard(p, n, 0) for p, n in zip(paths, counts) if n)
        next(read_shard(first, image_key=image_key, label_key=label_key, on_corrupt=on_corrupt))
    classes = classes or info.get("classes") or data.numbered_classes(top, f"wds:{pattern} (--label-key {label_key})")
    if len(classes) < 2:
        raise DataError(f"wds:{pattern}: {len(classes)} class(es) (labels up to {top} in {label_key}); "
                        "classification needs at least 2 (class names come from _info.json's 'classes')")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist() if counts else []
    shards = [Shard(p, n, int(o)) for p, n, o in zip(paths, counts, offsets)]
    if not sum(counts):
        raise DataError(f"wds:{pattern}: no samples in {len(paths)} shard(s)")
    return ShardSet(pattern, shards, list(classes), image_key=image_key, label_key=label_key, on_corrupt=on_corrupt)


def read_shard(shard: Shard, *, image_key: str, label_key: str, on_corrupt: str):
    """(tar index, key, encoded image or None, label) for each sample of a shard, in tar order: the members
    `sample_part` takes (as the scan counted them), grouped into samples by webdataset. A shard that ends before
    its count is truncated: an error, or (skip) logged, the sample cut off at the end not yielded."""
    from webdataset import tariterators

    errors = []

    def stop(e):  # webdataset's handler: note the error and end this shard
        errors.append(e)
        return False

    def parts(stream):
        """The shard's sample parts as webdataset's file samples, chosen by `sample_part` as the scan chose
        them; a read that fails ends them (a truncated shard)."""
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    part = sample_part(member, shard.path)
                    if part is not None:
                        yield {"fname": member.name, "data": read_member(tar, member, shard.path),
                               "__url__": shard.path}
                    tar.members = []  # a streamed tar keeps no headers behind
        except (tarfile.TarError, OSError, EOFError) as e:
            errors.append(e)
        except MemoryError as e:  # tar's own headers (a pax header is read whole): not a truncated shard
            raise DataError(f"shard {shard.path}: its tar headers do not fit in this process's memory") from e

    # The shard is opened here, not by webdataset's URL opener, which would run a `pipe:` name through a shell;
    # webdataset groups the parts into samples.
    with files.open_regular_file(shard.path) as stream:
        pending, n = None, 0  # one sample held back: the last one of a truncated shard may be cut short
        for sample in tariterators.group_by_keys(parts(stream), handler=stop):
            if n == shard.count:  # the count is what this split holds of the shard
                break
            if pending is not None:
                yield _complete(pending, n - 1, shard, image_key=image_key, label_key=label_key)
            pending, n = sample, n + 1
    truncated = bool(errors) or n < shard.count
    if pending is not None:
        cut = truncated and (sample_image(pending, image_key, shard.path) is None or
                             ("json" if label_key.startswith("json:") else label_key) not in pending)
        if cut:
            n -= 1
        else:
            yield _complete(pending, n - 1, shard, image_key=image_key, label_key=label_key)
    if truncated and n < shard.count:
        cause = f": {str(errors[0]).split(' @ ')[0]}" if errors else ""  # webdataset appends the stream
        if on_corrupt == "error":
            raise DataError(f"shard {shard.path} is truncated: {n} of its {shard.count} samples could be read{cause}")
        log.warning("shard %s is truncated: skipped %d of its %d samples%s", shard.path, shard.count - n,
                    shard.count, cause)


def _complete(sample: dict, index: int, shard: Shard, *, image_key: str, label_key: str):
    image = sample_image(sample, image_key, shard.path)
    if image is None:
        raise DataError(f"shard {shard.path}, sample {sample['__key__']}: no image member "
                        f"({image_key or '/'.join(IMAGE_MEMBERS)}); its members: {', '.join(_exts(sample))}")
    return index, sample["__key__"], image, sample_label(sample, label_key, shard.path)


# --------------------------------------------------------------------------------------------------------
# A split


def wds_split(pattern: str, split: str, *, val_split: str = "", val_size: float = 0.1, split_seed: int = 0,
              image_key: str = "", label_key: str = "", memory: bool = True, img_size: int = 0, channels: int = 3,
              on_corrupt: str = "skip") -> data.TensorData | "ShardStream":
    """One split of `wds:PATTERN`: decoded into memory, or as a stream for DataLoader workers."""
    paths = expand(pattern)
    info = read_info(paths[0])
    train = open_shards(pattern, image_key=image_key, label_key=label_key, on_corrupt=on_corrupt, info=info)
    val_pattern = validation_pattern(pattern, paths[0], info, val_split=val_split)
    if split == "test" and "test" in info.get("splits", {}) and val_split != "test":
        val_pattern = validation_pattern(pattern, paths[0], info, val_split="test")
    source, carved = train, not val_pattern
    if split != "train" and val_pattern:
        source = open_shards(val_pattern, image_key=image_key, label_key=label_key, on_corrupt=on_corrupt,
                             classes=train.classes, info=info)
    elif split != "train" and not memory:
        raise ConfigError(f"wds:{pattern}: streamed shards hold out no validation carve; give the validation "
                          "shards with --val-split PATTERN (python -m vit.convert --val-size writes them)")
    if not memory:
        return ShardStream(source)
    items = sorted(_all_samples(source), key=lambda s: (s[0], s[1]))  # key order: independent of the sharding
    if carved:
        keep = data.carve(len(items), split, val_size=val_size, seed=split_seed, where=f"wds:{pattern}")
        items = [items[i] for i in keep]
    for key, shard, _, label in items:
        check_label(label, len(train.classes), shard=shard, key=key)
    return data.decode_images(((image, label, f"{shard} sample {key}") for key, shard, image, label in items),
                              train.classes, size=img_size, channels=channels, on_corrupt=on_corrupt)


def validation_pattern(pattern: str, first_shard: str, info: dict, *, val_split: str) -> str:
    """The shard pattern of the validation split: --val-split (a split of _info.json or a pattern), else
    _info.json's validation, val or valid split (the first it has), else '' (a carve)."""
    splits = info.get("splits", {})
    name = val_split or next((s for s in data.VALIDATION_SPLIT_NAMES if s in splits), "")
    if name in splits:  # a split of _info.json: its shards lie beside the train ones
        names = splits[name].get("filenames", [])
        where = f"{Path(first_shard).parent}/_info.json, split {name!r}"
        if not names:
            raise DataError(f"{where}: lists no filenames")
        for f in names:  # names of files beside _info.json, joined into one brace pattern
            if not isinstance(f, str) or files.local_path(f, where) and (
                    Path(f).name != f or any(c in f for c in "{},")):
                raise DataError(f"{where}: {f!r} is not the name of a shard file beside it")
        return str(Path(first_shard).parent / ("{" + ",".join(names) + "}" if len(names) > 1 else names[0]))
    if val_split and not any(c in val_split for c in "/{*") and not val_split.endswith(".tar"):
        raise DataError(f"wds:{pattern}: no split {val_split!r} (--val-split) in _info.json "
                        f"(splits: {', '.join(splits) or 'none'}) and not a shard pattern")
    return val_split


def _all_samples(source: ShardSet):
    for shard in source.shards:
        for _, key, image, label in read_shard(shard, image_key=source.image_key, label_key=source.label_key,
                                               on_corrupt=source.on_corrupt):
            yield key, shard.path, image, label


# --------------------------------------------------------------------------------------------------------
# Streaming: the epoch's sequence, each rank's and worker's part of it


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n_shards, generator=torch.Generator().manual_seed(seed * 100_003 + epoch + 17)).tolist()


def buffer_order(count: int, seed: int, epoch: int, *, shard: int, size: int = SHUFFLE_BUFFER) -> np.ndarray:
    """The tar indices of a shard in the order a seeded shuffle buffer of `size` emits them (webdataset's
    shuffle, computed on indices): output k is among the first k + size samples read, so a reader holds at
    most `size` samples at a time."""
    rng = np.random.default_rng([seed, epoch, shard])
    out, buf = np.empty(count, dtype=np.int64), list(range(min(size, count)))
    draws = rng.integers(0, 2**62, max(count - len(buf), 0))
    for k, j in enumerate(range(len(buf), count)):
        i = int(draws[k] % len(buf))
        out[k], buf[i] = buf[i], j
    done = count - len(buf)
    out[done:] = np.asarray(buf, dtype=np.int64)[rng.permutation(len(buf))]
    return out


class ShardStream(data.StreamData):
    """A split of shards read in order: `train_loader` and `eval_loader` make its DataLoaders."""

    def __init__(self, shards: ShardSet, index: list[int] | None = None):
        self.set, self.classes = shards, shards.classes
        self.index = index  # label remapping (evaluate.py)

    def __len__(self) -> int:
        return len(self.set)

    def relabeled(self, index: list[int], classes: list[str]) -> "ShardStream":
        stream = ShardStream(self.set, [index[j] for j in (self.index or range(len(index)))])
        stream.classes = classes
        return stream

    def train_loader(self, transform, *, channels, batch_size, workers, seed, rank, world, pin_memory):
        batches = StreamBatches(self, transform, channels=channels, local_batch=batch_size // world, workers=workers,
                                rank=rank, world=world, seed=seed, train_batch=batch_size)
        return _loader(batches, workers, pin_memory), batches

    def eval_loader(self, transform, *, channels, batch_size, workers, rank, world, pin_memory):
        return _loader(StreamBatches(self, transform, channels=channels, local_batch=batch_size, workers=workers,
                                     rank=rank, world=world), workers, pin_memory)


def _loader(batches, workers: int, pin_memory: bool) -> "data.FileLoader":
    # Workers are not persistent: each pass starts them afresh with the epoch and start step just set.
    return data.FileLoader(batches, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                           generator=torch.Generator().manual_seed(0))


class StreamBatches(torch.utils.data.IterableDataset):
    """Collated (x, y, skipped) batches of a ShardStream for one rank: training (seed given; `set_epoch` says
    the epoch and the step to start at) or validation (every sample once)."""

    def __init__(self, stream: ShardStream, transform, *, channels: int, local_batch: int, workers: int, rank: int,
                 world: int, seed: int | None = None, train_batch: int = 0):
        self.stream, self.transform, self.mode = stream, transform, "L" if channels == 1 else "RGB"
        self.local, self.workers, self.rank, self.world = local_batch, max(workers, 1), rank, world
        self.seed, self.train_batch = seed, train_batch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        try:
            yield from self._eval_batches(worker) if self.seed is None else self._train_batches(worker)
        except DataError as e:
            yield data.Unreadable(str(e))  # raised by FileLoader, in the main process, as one line

    # ---- training: the epoch's sequence and this worker's steps of it

    def _train_batches(self, worker: int):
        shards, W, L = self.stream.set.shards, self.workers, self.local
        steps = len(self.stream) // self.train_batch
        order = shard_order(len(shards), self.seed, self.epoch)
        # The DataLoader takes batch i from worker i % W: this worker serves steps start + worker, + W, ...
        first = self.start + worker
        if first >= steps:
            return
        lane = first % W  # the lane of steps (those = lane mod W) whose samples lie together in the sequence
        lane_steps = [len(range(l, steps, W)) for l in range(W)]
        base = self.rank * steps * L + sum(lane_steps[:lane]) * L  # where the lane's samples begin
        begin = base + (first // W) * L
        end = base + lane_steps[lane] * L
        yield from self._collate(self._sequence(order, begin, end))

    def _sequence(self, order: list[int], begin: int, end: int):
        """(shard, tar index) for positions begin..end-1 of the epoch's sequence, with the samples read (or None
        where a truncated shard lost them), reading only the shards those positions lie in."""
        shards, pos = self.stream.set.shards, 0
        for s in order:
            shard = shards[s]
            lo, hi = max(begin - pos, 0), min(end - pos, shard.count)
            if lo < hi:
                wanted = buffer_order(shard.count, self.seed, self.epoch, shard=s)[lo:hi]
                yield from self._read(shard, wanted)
            pos += shard.count
            if pos >= end:
                return

    def _read(self, shard: Shard, wanted: np.ndarray):
        """(shard, tar index, sample or None) for the tar indices `wanted`, in that order, holding only the
        samples read ahead of their turn."""
        s = self.stream.set
        held, need, k = {}, set(wanted.tolist()), 0
        for j, key, image, label in read_shard(shard, image_key=s.image_key, label_key=s.label_key,
                                               on_corrupt=s.on_corrupt):
            if j in need:
                held[j] = (key, image, label)
            while k < len(wanted) and int(wanted[k]) in held:
                yield shard, int(wanted[k]), held.pop(int(wanted[k]))
                k += 1
            if k == len(wanted):
                return
        for j in wanted[k:]:  # lost to a truncation (read_shard has logged or raised)
            yield shard, int(j), held.pop(int(j), None)

    def _collate(self, samples):
        """Batches of `local` positions (the last one of a validation share may be smaller); unreadable or lost
        samples are left out of their batch and counted."""
        batch, skipped = [], 0
        for shard, j, sample in samples:
            item = self._transform(shard, j, sample)
            if item is None:
                skipped += 1
            else:
                batch.append(item)
            if len(batch) + skipped == self.local:
                yield self._emit(batch, skipped)
                batch, skipped = [], 0
        if batch or skipped:
            yield self._emit(batch, skipped)

    def _emit(self, batch, skipped):
        if not batch:
            return None, None, skipped
        x, y = torch.utils.data.default_collate(batch)
        return x, y, skipped

    def _transform(self, shard: Shard, j: int, sample):
        if sample is None:
            return None
        key, image, label = sample
        name = f"{shard.path} sample {key}"
        check_label(label, len(self.stream.set.classes), shard=shard.path, key=key)
        try:
            im = data.load_image(image, self.mode, name)
        except DataError:
            if self.stream.set.on_corrupt == "error":
                raise
            log.warning("skipping unreadable image %s", name)
            return None
        label = label if self.stream.index is None else self.stream.index[label]
        if self.seed is None:
            return self.transform(im), label
        with data.seeded_rngs(data.sample_seed(self.seed, self.epoch, shard.offset + j)):
            return self.transform(im), label

    # ---- validation: every sample once, each rank and worker a contiguous share in shard order

    def _eval_batches(self, worker: int):
        n, parts = len(self.stream), self.world * self.workers
        part = self.rank * self.workers + worker
        begin, end = n * part // parts, n * (part + 1) // parts
        shards, pos, samples = self.stream.set.shards, 0, []

        def chain():
            nonlocal pos
            for shard in shards:
                lo, hi = max(begin - pos, 0), min(end - pos, shard.count)
                if lo < hi:
                    yield from self._read(shard, np.arange(lo, hi))
                pos += shard.count
                if pos >= end:
                    return

        yield from self._collate(chain())
