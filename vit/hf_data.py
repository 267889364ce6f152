"""Hugging Face datasets as training and evaluation data: `--dataset hf:NAME`, read with the `datasets` library.

NAME is, in this order:
- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (`datasets.load_from_disk`);
- a parquet file, or a glob of them (one split, "train");
- any other local folder `datasets.load_dataset` reads (e.g. {split}-*.parquet files naming the splits; imagefolder);
- a hub name (ORG/NAME): downloaded into, or with HF_DATASETS_OFFLINE=1 read from, the datasets cache
  (HF_DATASETS_CACHE, HF_HOME); HF_TOKEN is used for gated sets. Parquet and hub data are turned into Arrow files
  in that cache once, by `datasets` itself.

The image column is the one with an `Image` feature (or raw bytes), the label column the `ClassLabel` one (its
names are the class names) or an integer column named label/labels; --image-key and --label-key name them
instead. Splits: "train" is the split called train (or the only one); "val" is --val-split, else a split called
validation, val or valid, else a seeded carve of train by --val-size and --split-seed exactly as for a folder;
"test" is the test split if there is one, else val.

Labels: a split whose ClassLabel lists the train split's names in another order is read by name (its labels
mapped to train's order; a name train lacks is a DataError); an integer column without names gives classes 0 to
its largest label, at most VIT_MAX_CLASSES (vit/files.py).

Images are decoded by vit.data's one decoder from the cell's encoded bytes (not by `datasets`), so the same
files give the same tensors as a folder or shards of them. A cell holds at most VIT_MAX_MEMBER_BYTES (checked from
the Arrow offsets before any is read); a cell that names a file instead may name only a regular file inside the
dataset's own folder (the parquet files' folder; for a hub name, the datasets cache), never any file of the
machine. Small images are decoded into memory; large ones are read by DataLoader workers row by row from the
memory-mapped Arrow table, by index, which gives them the folder path's exact resume and the same batches for any
number of workers or ranks.
"""

from __future__ import annotations

import glob
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import data, files
from .errors import ConfigError, DataError

log = logging.getLogger("vit.hf_data")

LABEL_COLUMNS = ("label", "labels")  # integer columns taken as labels where no ClassLabel feature says so


def require_datasets():
    """The `datasets` module, or a ConfigError saying how to install it."""
    try:
        import datasets
    except ImportError as e:
        raise ConfigError("--dataset hf:NAME reads Hugging Face datasets with the `datasets` library: "
                          "pip install 'vit[data]' (or pip install datasets)") from e
    return datasets


def open_splits(name: str) -> dict:
    """{split name: datasets.Dataset} for NAME (see the module docstring for what NAME may be)."""
    datasets = require_datasets()
    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file() or glob.has_magic(name):
            files = sorted(glob.glob(str(path))) if glob.has_magic(name) else [str(path)]
            if not files or not all(f.endswith(".parquet") for f in files):
                raise DataError(f"hf:{name}: expected parquet files, found {files[:3] or 'none'}")
            loaded = datasets.load_dataset("parquet", data_files={"train": files})
        elif path.is_dir():
            loaded = datasets.load_dataset(str(path))
        elif name.count("/") <= 1 and not name.startswith((".", "/", "~")):
            with offline_unless_reachable(datasets, name):
                loaded = datasets.load_dataset(name)
        else:
            raise DataError(f"hf:{name}: no such file or folder (and not a hub name ORG/NAME)")
    except DataError:
        raise
    except ConnectionError as e:  # datasets: "Couldn't reach 'NAME' on the Hub (OfflineModeIsEnabled)"
        cache = datasets.config.HF_DATASETS_CACHE
        raise DataError(f"hf:{name}: cannot reach the Hugging Face hub and the dataset is not in the datasets cache "
                        f"{cache} ({e}); load it once online, or point HF_DATASETS_CACHE/HF_HOME at a cache that "
                        "holds it") from e
    except Exception as e:  # DatasetNotFoundError, FileNotFoundError, arrow and parquet errors
        raise DataError(f"hf:{name}: cannot load it with datasets: {type(e).__name__}: {e}") from e
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


@contextmanager
def offline_unless_reachable(datasets, name: str):
    """datasets in offline mode (its cache alone) while loading `name` if the hub gives no answer to one request
    without retries: huggingface_hub retries an unreachable hub for ~25 s (a split) before datasets falls back
    to its cache, and a user offline should hear so at once."""
    saved = datasets.config.HF_HUB_OFFLINE
    if not saved:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError

        try:
            get_hf_file_metadata(hf_hub_url(name, "README.md", repo_type="dataset"), timeout=10)
        except HfHubHTTPError:  # the hub answered (no card, no such repo, gated): datasets says what it means
            pass
        except Exception as e:  # no answer at all (no route, refused, timed out)
            log.info("the hub did not answer for %s (%s): reading the datasets cache", name, type(e).__name__)
            datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def pick_split(splits: dict, name: str, split: str, *, val_split: str) -> str | None:
    """The HF split that serves our `split`; None where "val"/"test" is a carve of train."""
    have = ", ".join(splits)
    if split == "train":
        if "train" in splits:
            return "train"
        if len(splits) == 1:
            return next(iter(splits))
        raise DataError(f"hf:{name} has no train split (splits: {have})")
    if val_split:
        if val_split not in splits:
            raise DataError(f"hf:{name} has no split {val_split!r} (--val-split); splits: {have}")
        if split == "val" or "test" not in splits:
            return val_split
    if split == "test" and "test" in splits:
        return "test"
    return next((s for s in data.VALIDATION_SPLIT_NAMES if s in splits), None)


def find_columns(ds, name: str, split: str, *, image_key: str, label_key: str) -> tuple[str, str]:
    """(image column, label column) of one split: named by the flags, else found from its features."""
    datasets = require_datasets()
    features, where = ds.features, f"hf:{name} split {split}"

    def named(key, flag):
        if key not in features:
            raise DataError(f"{where} has no column {key!r} ({flag}); columns: {', '.join(features)}")
        return key

    if image_key:
        image = named(image_key, "--image-key")
    else:
        image = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
        image = image or next((c for c, f in features.items() if getattr(f, "dtype", None) == "binary"), None)
        if image is None:
            raise DataError(f"{where} has no image column (an Image feature or bytes): name it with --image-key; "
                            f"columns: {', '.join(f'{c} ({f})' for c, f in features.items())}")
    if not (isinstance(features[image], datasets.Image) or getattr(features[image], "dtype", None) == "binary"):
        raise DataError(f"{where}: column {image!r} is {features[image]}, not images (an Image feature or bytes)")
    if label_key:
        label = named(label_key, "--label-key")
    else:
        label = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        label = label or next((c for c in LABEL_COLUMNS if c in features), None)
        if label is None:
            raise DataError(f"{where} has no label column (a ClassLabel feature, or {' or '.join(LABEL_COLUMNS)}): "
                            f"name it with --label-key; columns: {', '.join(features)}")
    dtype = getattr(features[label], "dtype", None)
    if not (isinstance(features[label], datasets.ClassLabel) or (dtype or "").startswith(("int", "uint"))):
        raise DataError(f"{where}: label column {label!r} is {features[label]}, not class indices (a ClassLabel or "
                        "integer column)")
    return image, label


def check_labels(ds, label: str, where: str) -> int:
    """The largest label of the split; a DataError if a row has none (null, or -1 as hub test splits use)."""
    column = ds.data.column(label)  # the whole Arrow column, read without decoding anything else
    if len(column) == 0:
        raise DataError(f"{where} has no rows")
    values = np.asarray(column.to_numpy(zero_copy_only=False)) if column.null_count == 0 else None
    if values is None or values.min() < 0:
        bad = column.null_count if values is None else int((values < 0).sum())
        raise DataError(f"{where}: {bad} row(s) without a label in column {label!r} (null or negative); a split "
                        "without labels cannot be trained or evaluated on")
    return int(values.max())


def split_classes(feature, classes: list[str], where: str, *, train: str) -> tuple[list[int] | None, int]:
    """(for each of a split's labels, the train split's class with its name, or None where they agree; how many
    labels the split has). A split whose ClassLabel names the train split's classes in another order is read by
    name, not position (else every label would be scored as another class); a class train does not have is a
    DataError."""
    datasets = require_datasets()
    if not isinstance(feature, datasets.ClassLabel) or list(feature.names) == classes:
        return None, len(classes)
    position = {c: i for i, c in enumerate(classes)}
    missing = [c for c in feature.names if c not in position]
    if missing:
        raise DataError(f"{where}: classes {missing[:10]}{' ...' if len(missing) > 10 else ''} of its ClassLabel are "
                        f"not among split {train}'s {len(classes)} ({', '.join(classes[:10])}"
                        f"{' ...' if len(classes) > 10 else ''}); splits are matched by class name")
    log.info("%s: its ClassLabel lists the train split's classes in another order; its labels are mapped by name",
             where)
    return [position[c] for c in feature.names], len(feature.names)


def check_cell_sizes(ds, image: str, where: str) -> None:
    """Every image cell's bytes at most VIT_MAX_MEMBER_BYTES, read from the Arrow column's offsets (no cell is
    copied): a DataError naming the first row over it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    most, row = files.limit("VIT_MAX_MEMBER_BYTES"), 0
    for chunk in ds.data.column(image).chunks:
        cells = chunk.field("bytes") if pa.types.is_struct(chunk.type) else chunk
        sizes = pc.fill_null(pc.binary_length(cells), 0).to_numpy(zero_copy_only=False)
        over = np.flatnonzero(sizes > most)
        if len(over):
            raise DataError(f"{where} row {row + int(over[0])}, column {image!r}: " +
                            files.over_limit("VIT_MAX_MEMBER_BYTES", f"{int(sizes[over[0]]):,} bytes"))
        row += len(chunk)


def dataset_roots(name: str) -> list[str]:
    """The folders whose files an image cell of hf:NAME may name by path: the dataset's own folder (a save_to_disk
    or data folder; the parquet files' folders), or for a hub name the datasets cache it is read from."""
    datasets = require_datasets()
    path = Path(name).expanduser()
    if path.is_dir():
        return [str(path)]
    if path.is_file() or glob.has_magic(name):
        return sorted({str(Path(f).parent) for f in glob.glob(str(path))}) or [str(path.parent)]
    return [str(datasets.config.HF_DATASETS_CACHE)]


class ArrowRows:
    """Rows of an HF split for DataLoader workers: `item(i)` reads row i's encoded image and label (the
    interface of `vit.data.FileData`). The Dataset pickles as a reference to its memory-mapped Arrow files."""

    def __init__(self, ds, image: str, label: str, *, classes: list[str], where: str, roots: list[str],
                 index: list[int] | None = None):
        self.ds, self.image, self.label, self.classes, self.where = ds, image, label, classes, where
        self.roots = roots  # the folders a path cell may name files in (`dataset_roots`)
        # dataset label -> our label (a split's ClassLabel in another order; evaluate.py's remapping to a
        # checkpoint's classes)
        self.index = index

    def __len__(self) -> int:
        return len(self.ds)

    def item(self, i: int) -> tuple[bytes | str, int, str]:
        row = self.ds[int(i)]
        label = row[self.label]
        return encoded(row[self.image], f"{self.where} row {i}", self.roots), \
            (label if self.index is None else self.index[label]), f"{self.where} row {i}"

    def relabeled(self, index: list[int], classes: list[str]) -> "ArrowRows":
        return ArrowRows(self.ds, self.image, self.label, classes=classes, where=self.where, roots=self.roots,
                         index=[index[j] for j in (self.index or range(len(index)))])


def encoded(cell, name: str, roots: list[str]) -> bytes | str:
    """An image cell as `load_image` takes it: its encoded bytes, or the path of the file it refers to, which must
    lie in one of `roots` (the dataset's own folder: a cell may not send the reader to any file of the machine)."""
    if isinstance(cell, dict):  # Image(decode=False): {"bytes": ..., "path": ...}
        if cell.get("bytes") is not None:
            return cell["bytes"]
        if cell.get("path"):
            return files.file_under(cell["path"], roots, name)
    elif isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    raise DataError(f"{name}: empty image cell")


def hf_split(name: str, split: str, *, val_split: str = "", val_size: float = 0.1, split_seed: int = 0,
             image_key: str = "", label_key: str = "", memory: bool = True, img_size: int = 0, channels: int = 3,
             on_corrupt: str = "skip") -> data.TensorData | ArrowRows:
    """One split of `hf:NAME`: decoded into memory, or as rows for DataLoader workers."""
    datasets = require_datasets()
    splits = open_splits(name)
    train_name = pick_split(splits, name, "train", val_split=val_split)
    if split == "train":  # all of it, or what a carve of val leaves
        source, carved = train_name, pick_split(splits, name, "val", val_split=val_split) is None
    else:
        source = pick_split(splits, name, split, val_split=val_split)
        carved = source is None
    source = source or train_name
    ds, where = splits[source], f"hf:{name} split {source}"
    image, label = find_columns(ds, name, source, image_key=image_key, label_key=label_key)
    # Class names: the ClassLabel's; else 0..max label of the train split, bounded by VIT_MAX_CLASSES.
    feature = splits[train_name].features.get(label)
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
    else:
        train_where = f"hf:{name} split {train_name}"
        classes = data.numbered_classes(check_labels(splits[train_name], label, train_where),
                                        f"{train_where}, column {label!r}")
    index, n_labels = split_classes(ds.features.get(label) if isinstance(feature, datasets.ClassLabel) else None,
                                    classes, where, train=train_name)
    top = check_labels(ds, label, where)
    if top >= n_labels:
        raise DataError(f"{where}: label {top} in column {label!r}, but {train_name} has {n_labels} classes")
    if len(classes) < 2:
        raise DataError(f"{where} has {len(classes)} class(es); classification needs at least 2")
    check_cell_sizes(ds, image, where)
    ds = ds.select_columns([image, label])
    if isinstance(ds.features[image], datasets.Image):  # the encoded bytes, for vit.data's decoder
        ds = ds.cast_column(image, datasets.Image(decode=False))
    if carved:
        ds = ds.select(data.carve(len(ds), split, val_size=val_size, seed=split_seed,
                                  where=f"hf:{name} split {train_name}"))
        where += " (carved)"
    rows = ArrowRows(ds, image, label, classes=classes, where=where, roots=dataset_roots(name), index=index)
    if not memory:
        return rows
    return data.decode_images(_read_all(rows), classes, size=img_size, channels=channels, on_corrupt=on_corrupt)


def _read_all(rows: ArrowRows, chunk: int = 1024):
    """(encoded image, label, name) for every row, read a chunk of rows at a time (`ArrowRows.item`'s values)."""
    ds, index = rows.ds, rows.index
    for start in range(0, len(ds), chunk):
        batch = ds[start:start + chunk]
        for j, (cell, y) in enumerate(zip(batch[rows.image], batch[rows.label])):
            name = f"{rows.where} row {start + j}"
            yield encoded(cell, name, rows.roots), (y if index is None else index[y]), name
