"""Pretrained weights: every format this package reads, and the one it writes.

One module owns weight formats: reading files (never unpickling), detecting the format from the keys,
renaming to our (timm's) parameter names, packing q/k/v, Flax kernel transposes, resampling position and
patch embeddings, adapting the stem to another channel count, checking key sets and shapes, safetensors
I/O with metadata, and hub download.

    model = vit.create_model("vit_base_patch16_224", pretrained="model.safetensors", num_classes=10, img_size=96)
    vit.save_pretrained(model, "best.safetensors", class_names=["cat", "dog", ...])
    model = vit.create_model(pretrained="best.safetensors")  # config, preprocessing, class names from the file
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

import torch

from .errors import CheckpointError, ConfigError, OutputError
from .model import ViTConfig, VisionTransformer, resample_pos_embed, to_2tuple
from .preprocess import Preprocess

FORMAT_NAME = "vit"
FORMAT_VERSION = 1  # bump when the metadata written by save_pretrained changes meaning

# --------------------------------------------------------------------------------------------------------
# Metadata that travels with the weights


@dataclass(frozen=True)
class PretrainedInfo:
    """What a weights file says about itself; any field is None where the file does not say."""

    config: ViTConfig | None = None
    preprocess: Preprocess | None = None
    class_names: list[str] | None = None
    format_version: int | None = None


def save_pretrained(
    model: VisionTransformer,
    path: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    preprocess: Preprocess | None = None,
) -> Path:
    """Write the model's weights as safetensors, with its config, preprocessing and class names as metadata.

    `create_model(pretrained=path)` rebuilds the model from the file alone. The write is atomic: a temporary
    file in the same folder is fsynced and renamed over `path`, so a crash never leaves a half-written file.
    class_names / preprocess default to the model's own attributes.
    """
    from safetensors.torch import save_file

    path = Path(path)
    class_names = list(class_names) if class_names is not None else model.class_names
    preprocess = preprocess if preprocess is not None else model.preprocess
    if class_names is not None and model.num_classes and len(class_names) != model.num_classes:
        raise ConfigError(f"{len(class_names)} class names given for a model with {model.num_classes} classes")
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
    }
    if preprocess is not None:
        metadata["preprocess"] = json.dumps(preprocess.to_dict())
    if class_names is not None:
        metadata["class_names"] = json.dumps([str(c) for c in class_names])
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write weights to {path}: {e}") from e
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write weights to {path}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _info_from_strings(meta: Mapping[str, object]) -> PretrainedInfo:
    """Parse save_pretrained's metadata (JSON strings) or a training checkpoint's entries (dicts/lists)."""

    def parsed(key):
        value = meta.get(key)
        return json.loads(value) if isinstance(value, str) else value

    try:
        config = parsed("config")
        config = ViTConfig.from_dict(config) if isinstance(config, dict) else None
        preprocess = parsed("preprocess")
        preprocess = Preprocess.from_dict(preprocess) if isinstance(preprocess, dict) else None
        class_names = parsed("class_names")
        version = meta.get("format_version")
        return PretrainedInfo(config, preprocess, list(class_names) if class_names is not None else None,
                              int(version) if version is not None else None)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's metadata cannot be read: {e}") from e


def read_metadata(path: str | os.PathLike) -> PretrainedInfo:
    """The config, preprocessing and class names a weights file carries, without building a model.

    Reads save_pretrained's safetensors header, or the "config"/"preprocess"/"class_names" entries of a
    training checkpoint (`last.ckpt`). Files from other ecosystems give an empty PretrainedInfo.
    """
    return read_checkpoint(path)[1]


# --------------------------------------------------------------------------------------------------------
# Reading files: safetensors, torch zip/pickle (weights only), numpy .npz


def _checkpoint_info(obj: dict) -> PretrainedInfo:
    """Metadata inside a torch checkpoint dict, as train.py writes it ({"model": ..., "config": ...})."""
    meta = {}
    config = obj.get("model_config", obj.get("config"))
    if isinstance(config, dict) and isinstance(config.get("model"), dict):  # a training config with a model part
        config = config["model"]
    if isinstance(config, dict) and set(config) <= {f.name for f in fields(ViTConfig)}:
        meta["config"] = config
    for key in ("preprocess", "class_names", "format_version"):
        if key in obj:
            meta[key] = obj[key]
    return _info_from_strings(meta)


# Wrapper keys around a state dict: DeiT and train.py ("model"), Lightning-style ("state_dict"), EMA copies.
WRAPPER_KEYS = ("model", "state_dict", "model_ema", "module")


def _unwrap(obj: dict) -> dict:
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    return obj


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], PretrainedInfo]:
    """Load a weights file as a flat {name: tensor} dict (source names, not yet converted) and its metadata.

    .safetensors via safetensors; .npz via numpy without pickle; anything else via
    `torch.load(weights_only=True)`, which refuses to run the code a crafted pickle carries.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
        return state, _info_from_strings(meta) if meta.get("format") == FORMAT_NAME else PretrainedInfo()
    if path.suffix == ".npz":
        return _read_npz(path), PretrainedInfo()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain containers; vit loads checkpoints "
            f"with torch.load(weights_only=True) and never unpickles arbitrary code. Re-save the state dict "
            f"alone (or as safetensors). Detail: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    info = _checkpoint_info(obj)
    state = _unwrap(dict(obj))
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a state dict: entries {bad[:5]} are not tensors "
                              f"(wrapper keys recognised: {', '.join(WRAPPER_KEYS)})")
    return state, info


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {k: torch.from_numpy(np.asarray(arrays[k], dtype=np.float32)) for k in arrays.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a readable .npz file of arrays: {e}") from e


# --------------------------------------------------------------------------------------------------------
# Adapting a state dict (already in our names) to the target model


def _summary(keys, n=5) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return f"{len(keys)}: {', '.join(keys[:n])}{more}"


def adapt_state_dict(
    state: dict[str, torch.Tensor], model: VisionTransformer, source_grid: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Fit a state dict in our names to `model`: position-embedding grid, patch size, input channels, head.

    source_grid: the checkpoint's patch grid (h, w) when it is not square (from its metadata).
    """
    state = dict(state)
    target = model.state_dict()

    # Position embeddings: resample the grid part to the model's grid (the prefix rows stay as they are).
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != target["pos_embed"].shape:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        if pos.ndim != 3 or pos.shape[-1] != model.embed_dim:
            raise CheckpointError(
                f"pos_embed: expected shape {tuple(target['pos_embed'].shape)}, got {tuple(pos.shape)}")
        state["pos_embed"] = resample_pos_embed(pos, model.patch_embed.grid_size, source_grid, prefix)

    # The head: a different class count (or no head wanted) means a fresh head, not an error.
    for key in ("head.weight", "head.bias"):
        if key in state and (key not in target or state[key].shape != target[key].shape):
            del state[key]
    return state


def check_state_dict(state: Mapping[str, torch.Tensor], model: VisionTransformer, allow_missing=()) -> None:
    """Raise a CheckpointError naming the missing, unexpected or misshapen keys."""
    target = model.state_dict()
    missing = set(target) - set(state) - set(allow_missing)
    unexpected = set(state) - set(target)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({_summary(missing)})")
        if unexpected:
            parts.append(f"unexpected keys ({_summary(unexpected)})")
        raise CheckpointError(
            f"the checkpoint does not match the model: {'; '.join(parts)}. Is it another architecture "
            f"(depth {len(model.blocks)}, width {model.embed_dim})?")
    for key, value in state.items():
        if value.shape != target[key].shape:
            raise CheckpointError(
                f"shape mismatch for {key}: the model expects {tuple(target[key].shape)}, "
                f"the checkpoint has {tuple(value.shape)}")


# --------------------------------------------------------------------------------------------------------
# Loading


def to_vit_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a state dict of any recognised format to our parameter names."""
    return dict(state)


def load_pretrained(
    model: VisionTransformer,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    source_grid: tuple[int, int] | None = None,
) -> PretrainedInfo:
    """Load weights of any recognised format into `model`, adapting them to its grid, channels and head.

    source: a file path or a state dict. Returns the file's metadata (empty for a bare state dict).
    The head is kept only where its shape matches; otherwise the model's freshly initialised head stays.
    """
    if isinstance(source, Mapping):
        state, info = dict(source), PretrainedInfo()
    else:
        state, info = read_checkpoint(source)
    state = to_vit_state_dict(state)
    if source_grid is None and info.config is not None:
        img = to_2tuple(info.config.img_size)
        source_grid = (img[0] // info.config.patch_size, img[1] // info.config.patch_size)
    state = adapt_state_dict(state, model, source_grid)
    check_state_dict(state, model, allow_missing=("head.weight", "head.bias"))
    model.load_state_dict(state, strict=False)  # strictness checked above, with clearer messages
    return info


def create_pretrained(name: str | None, source: bool | str | os.PathLike, **overrides) -> VisionTransformer:
    """Build a model and load weights into it: `create_model(name, pretrained=source, **overrides)`.

    The architecture comes from the registered `name`, else from the file's metadata. A file that carries a
    config (save_pretrained, train.py checkpoints) also gives its class count, unless num_classes is
    overridden. Preprocessing comes with the weights where they carry it.
    """
    from .registry import ModelEntry, get_entry, preprocess_for

    entry = get_entry(name) if name is not None else None
    if source is True:
        raise CheckpointError(f"model {name!r} has no hub weights registered; pass pretrained=PATH")
    path = Path(source)
    info = read_metadata(path)
    if entry is None:
        if info.config is None:
            raise ConfigError(
                f"{path} carries no model config (only files written by vit.save_pretrained or train.py do): "
                "pass the model name too, create_model(NAME, pretrained=PATH)")
        base = info.config
    else:
        base = entry.config
        if info.config is not None and "num_classes" not in overrides:
            base = base.replace(num_classes=info.config.num_classes)
    config = base.replace(**overrides)
    model = VisionTransformer(config)
    load_pretrained(model, path)

    preprocess = info.preprocess or (entry.preprocess if entry is not None else None)
    if preprocess is not None:  # adjusted to an overridden image size or channel count
        model.preprocess = preprocess_for(ModelEntry(name or path.name, base, preprocess, ""), config)
    if info.class_names is not None and len(info.class_names) == config.num_classes:
        model.class_names = list(info.class_names)
    return model
