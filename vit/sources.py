"""Which reader a `--dataset` name goes to: the built-in names (vit.data.DATASETS) to vit.data, `hf:NAME` to
vit/hf_data.py (Hugging Face datasets), `wds:PATTERN` to vit/wds_data.py (WebDataset shards). train.py and
evaluate.py load every split through `load_dataset` here; hf: and wds: import their library only when used.
"""

from __future__ import annotations

from . import data
from .errors import ConfigError

SCHEMES = ("hf:", "wds:")  # --dataset hf:NAME, wds:PATTERN


def check_dataset(name: str) -> str:
    """`name` if load_dataset knows it (one of vit.data.DATASETS, or hf:NAME / wds:PATTERN), else a ConfigError."""
    if name in data.DATASETS or (name.startswith(SCHEMES) and name.split(":", 1)[1]):
        return name
    raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(data.DATASETS)}, hf:NAME (a Hugging Face dataset: "
                      "hub name, save_to_disk folder or parquet files), wds:PATTERN (WebDataset shards)")


def image_shape(name: str, data_dir: str = "") -> tuple[int, int, int] | None:
    """(channels, height, width) of a --dataset's images as stored, where they share one: a built-in dataset's, or
    a folder's (`vit.data.folder_image_shape`). None for hf: and wds: data, which are not read before loading."""
    if name == "folder":
        return data.folder_image_shape(data_dir) if data_dir else None
    return data.BUILTIN_IMAGES.get(name)


def is_reader_scheme(name: str | None) -> bool:
    """Whether `name` is hf:NAME or wds:PATTERN (whose flags --val-split, --image-key, --label-key apply)."""
    return bool(name) and name.startswith(SCHEMES)


def load_dataset(name: str, split: str, *, data_dir: str = "", download: bool = False, val_size: float = 0.1,
                 split_seed: int = 0, data_mode: str = "auto", img_size: int = 0, channels: int = 3,
                 on_corrupt: str = "skip", val_split: str = "", image_key: str = "", label_key: str = ""):
    """One split of any --dataset: `TensorData` (in memory), or for DataLoader workers `FileData` (or hf: rows
    with its interface) or a `StreamData` (wds:). See vit.data.load_builtin for the built-in names; hf: and wds:
    decode into memory by the same rule as a folder (data_mode auto: images of at most MEMORY_MAX_SIDE)."""
    check_dataset(name)
    if not is_reader_scheme(name):
        if image_key or label_key or val_split:
            raise ConfigError(f"--image-key, --label-key and --val-split are for hf: and wds: datasets, not {name}")
        return data.load_builtin(name, split, data_dir=data_dir, download=download, val_size=val_size,
                                 split_seed=split_seed, data_mode=data_mode, img_size=img_size, channels=channels,
                                 on_corrupt=on_corrupt)
    if split not in data.SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(data.SPLITS)}")
    if data_dir:
        raise ConfigError(f"--data-dir has no effect with --dataset {name}: the name after the colon says where "
                          "the data is")
    if download:
        raise ConfigError(f"--download is for torchvision's datasets; --dataset {name} reads what is there")
    memory = data.wants_memory(data_mode, img_size)
    if memory and img_size <= 0:
        raise ConfigError(f"decoding --dataset {name} into memory needs --img-size")
    if name.startswith("hf:"):
        from .hf_data import hf_split as read
    else:
        from .wds_data import wds_split as read
    return read(name.split(":", 1)[1], split, val_split=val_split, val_size=val_size, split_seed=split_seed,
                image_key=image_key, label_key=label_key, memory=memory, img_size=img_size, channels=channels,
                on_corrupt=on_corrupt)
