"""Pretrained weights: every format this package reads, and the ones it writes.

One module owns weight formats: reading files (never unpickling), detecting the format from the keys, renaming
to our (timm's) parameter names and back to transformers', packing q/k/v, Flax kernel transposes, resampling
position and patch embeddings, adapting the stem to another channel count, checking key sets and shapes,
safetensors I/O, hub download and upload. It knows no registered model names: building a model from a name and
some weights (name -> config -> model -> weights) is `vit.registry.create_model`'s.

    model = vit.create_model("vit_base_patch16_224", pretrained="model.safetensors", num_classes=10, img_size=96)
    vit.save_pretrained(model, "best.safetensors", class_names=["cat", "dog", ...])
    model = vit.create_model(pretrained="best.safetensors")  # config, preprocessing, class names from the file
    vit.save_pretrained(model, "for-transformers", format="transformers")  # or "timm": a folder each loads
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .deit import DeiTConfig, config_from_dict
from .errors import CheckpointError, ConfigError, OutputError
from .model import ViTConfig, VisionTransformer, resample_grid, to_2tuple
from .preprocess import Preprocess
from .runs import atomic_write, read_trained_model

FORMAT_NAME = "vit"
FORMAT_VERSION = 1  # bump when the metadata written by save_pretrained changes meaning


def resample_pos_embed(pos_embed: torch.Tensor, new_size: Sequence[int], old_size: Sequence[int] | None = None,
                       num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resize a (1, P + h*w, C) position embedding to a new (h', w') patch grid.

    The first `num_prefix_tokens` rows ([CLS], registers) are kept as they are; the grid part is resampled
    as an image (`vit.model.resample_grid`: bicubic with antialias, as timm). A square grid is assumed when
    `old_size` is not given.
    """
    num_grid = pos_embed.shape[1] - num_prefix_tokens
    if num_grid < 1:
        raise ConfigError(f"position embedding has {pos_embed.shape[1]} rows: no grid tokens after its "
                          f"{num_prefix_tokens} prefix rows")
    if old_size is None:
        side = math.isqrt(num_grid)
        if side * side != num_grid:
            raise ConfigError(f"position embedding has {num_grid} grid tokens, which is not a square: "
                              "pass old_size=(h, w)")
        old_size = (side, side)
    old_size, new_size = tuple(old_size), tuple(new_size)
    if old_size[0] * old_size[1] != num_grid:
        raise ConfigError(f"old_size {old_size} does not match the {num_grid} grid tokens of the position embedding")
    if old_size == new_size:
        return pos_embed
    grid = resample_grid(pos_embed[:, num_prefix_tokens:], old_size, new_size)
    return torch.cat([pos_embed[:, :num_prefix_tokens], grid], dim=1)


def _summary(keys, n=5) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return f"{len(keys)}: {', '.join(keys[:n])}{more}"


# --------------------------------------------------------------------------------------------------------
# Metadata that travels with the weights


@dataclass(frozen=True)
class PretrainedInfo:
    """What a weights file says about itself; any field is None where the file does not say.

    A timm config.json names its architecture instead of spelling out a config: `architecture` is that name
    (timm's pretrained tag dropped) and `model_args` the fields it changes; the registry resolves the two.
    """

    config: ViTConfig | None = None
    preprocess: Preprocess | None = None
    class_names: list[str] | None = None
    format_version: int | None = None
    architecture: str | None = None
    model_args: dict | None = None


SAVE_FORMATS = ("vit", "timm", "transformers")


def save_pretrained(
    model: VisionTransformer,
    path: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    preprocess: Preprocess | None = None,
    format: str = "vit",
) -> Path:
    """Write the model's weights as safetensors, with its config, preprocessing and class names as metadata.

    `create_model(pretrained=path)` rebuilds the model from the file alone. A model with LoRA adapters is
    saved with them merged into the weights they adapt. The write is atomic: a temporary
    file in the same folder is fsynced and renamed over `path`, so a crash never leaves a half-written file.
    class_names / preprocess default to the model's own attributes.

    format "timm" or "transformers" writes a folder at `path` instead, laid out as that library's hub repos are,
    which it loads offline; `create_model(pretrained=path)` reads both. Returns the file or folder written.
      timm: model.safetensors (timm's names are ours; this package's metadata in it too) and config.json
        (architecture, model_args, pretrained_cfg with the preprocessing, label_names):
        `timm.create_model("local-dir:PATH", pretrained=True)`, or `timm.create_model(NAME, pretrained=True,
        pretrained_cfg_overlay=dict(file="PATH/model.safetensors"))` with NAME's arguments.
      transformers: `ViTForImageClassification`'s config.json and model.safetensors (its names, q/k/v apart) and
        `ViTImageProcessor`'s preprocessor_config.json (it resizes to the input size: no crop):
        `ViTForImageClassification.from_pretrained(PATH)`.
    """
    from safetensors.torch import save as safetensors_bytes

    from .finetune import has_lora, merge_lora

    if format not in SAVE_FORMATS:
        raise ConfigError(f"format {format!r}: one of {', '.join(SAVE_FORMATS)}")
    path = Path(path)
    if has_lora(model):  # LoRA adapters (vit.finetune) merged into plain weights: the file loads without peft
        model = merge_lora(model)
    given = class_names is not None
    class_names = list(class_names) if given else model.class_names
    preprocess = preprocess if preprocess is not None else model.preprocess
    if class_names is not None and model.num_classes and len(class_names) != model.num_classes:
        where = "given" if given else "in model.class_names"
        raise ConfigError(f"{len(class_names)} class names {where} for a model with {model.num_classes} classes")
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

    # Serialised in memory, then written by the one atomic writer: a full disk is an OutputError naming the
    # file (safetensors' own writer reports it as a SafetensorError), and no torn file is left.
    if format == "vit":
        files = {path: safetensors_bytes(tensors, metadata=metadata)}
    elif format == "timm":
        files = {path / "model.safetensors": safetensors_bytes(tensors, metadata=metadata),
                 path / "config.json": _json_bytes(timm_config(model.config, preprocess, class_names))}
    else:
        files = {path / "config.json": _json_bytes(transformers_config(model.config, class_names)),  # checks first
                 path / "model.safetensors": safetensors_bytes(to_transformers_state_dict(tensors))}
        if preprocess is not None:
            files[path / "preprocessor_config.json"] = _json_bytes(transformers_preprocessor_config(preprocess))
    try:
        (path if format != "vit" else path.parent).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write weights to {path}: {e.strerror or e}") from e
    for file, data in files.items():
        atomic_write(file, lambda f, data=data: f.write(data))
    return path


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


# timm's VisionTransformer takes these ViTConfig fields as they are (its model_args); the rest it cannot take
# (norm_eps, pos_embed "sincos") or are training settings (dropout rates).
TIMM_MODEL_ARGS = ("img_size", "patch_size", "in_chans", "global_pool", "embed_dim", "depth", "num_heads", "mlp_ratio",
                   "qkv_bias", "qk_norm", "init_values", "class_token", "reg_tokens", "no_embed_class", "fc_norm",
                   "dynamic_img_size")
# The architecture a timm config.json names: any of timm's ViTs would do, as model_args spell out every field.
TIMM_ARCHITECTURES = {False: "vit_base_patch16_224", True: "deit_base_distilled_patch16_224"}


def timm_config(config: ViTConfig, preprocess: Preprocess | None, class_names: list[str] | None) -> dict:
    """timm's hub config.json for `config`: what timm's "local-dir:PATH" and "hf-hub:REPO" model names read."""
    unsupported = [f"{name}={getattr(config, name)!r}" for name, plain in
                   (("norm_eps", 1e-6), ("pos_embed", "learn"), ("stem", "patch")) if getattr(config, name) != plain]
    if unsupported:
        raise ConfigError(f"timm's VisionTransformer cannot be built with {', '.join(unsupported)}")
    distilled = isinstance(config, DeiTConfig)
    C, (H, W) = config.in_chans, to_2tuple(config.img_size)
    pretrained_cfg = dict(input_size=[C, H, W], num_classes=config.num_classes, first_conv="patch_embed.proj",
                          classifier=["head", "head_dist"] if distilled else "head",
                          fixed_input_size=not config.dynamic_img_size)
    if preprocess is not None:
        pretrained_cfg.update(mean=list(preprocess.mean), std=list(preprocess.std),
                              interpolation=preprocess.interpolation, crop_pct=preprocess.crop_pct, crop_mode="center")
    out = dict(architecture=TIMM_ARCHITECTURES[distilled], num_classes=config.num_classes,
               num_features=config.embed_dim, global_pool=config.global_pool,
               model_args={name: getattr(config, name) for name in TIMM_MODEL_ARGS}, pretrained_cfg=pretrained_cfg)
    if class_names is not None:
        out["label_names"] = [str(c) for c in class_names]
    return out


def transformers_config(config: ViTConfig, class_names: list[str] | None) -> dict:
    """transformers' config.json of a `ViTForImageClassification` with `config`'s architecture. It reads the
    [CLS] token after the final norm through a linear head, with a learned position table over [CLS] and the
    patches, in plain pre-norm blocks: any other config is a ConfigError naming what differs."""
    differs = {"distilled": isinstance(config, DeiTConfig), "num_classes": config.num_classes == 0,
               "global_pool": config.global_pool != "token",
               "fc_norm": config.fc_norm or (config.fc_norm is None and config.global_pool == "avg"),
               "class_token": not config.class_token, "reg_tokens": config.reg_tokens != 0,
               "no_embed_class": config.no_embed_class, "pos_embed": config.pos_embed != "learn",
               "qk_norm": config.qk_norm, "init_values": bool(config.init_values), "stem": config.stem != "patch"}
    unsupported = [f"{name}={getattr(config, name, True)!r}" for name, differ in differs.items() if differ]
    if unsupported:
        raise ConfigError(f"transformers' ViTForImageClassification cannot express {', '.join(unsupported)}")
    H, W = to_2tuple(config.img_size)
    names = [str(c) for c in class_names] if class_names is not None else \
        [f"LABEL_{i}" for i in range(config.num_classes)]  # transformers' own default labels
    return {
        "architectures": ["ViTForImageClassification"], "model_type": "vit",
        "hidden_size": config.embed_dim, "num_hidden_layers": config.depth, "num_attention_heads": config.num_heads,
        "intermediate_size": int(config.embed_dim * config.mlp_ratio), "hidden_act": "gelu",
        "layer_norm_eps": config.norm_eps, "qkv_bias": config.qkv_bias,
        "image_size": H if H == W else [H, W], "patch_size": config.patch_size, "num_channels": config.in_chans,
        "encoder_stride": config.patch_size, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
    }


# PIL's resampling filter codes (PIL.Image.Resampling), as transformers' image processors store them.
PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def transformers_preprocessor_config(preprocess: Preprocess) -> dict:
    """transformers' `ViTImageProcessor` for `preprocess`: resize to the input size, scale to [0, 1], normalise.
    It has no crop: an image is resized whole where our evaluation crops crop_pct of it."""
    _, H, W = preprocess.input_size
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": H, "width": W},
            "resample": PIL_RESAMPLE[preprocess.interpolation], "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": list(preprocess.mean), "image_std": list(preprocess.std)}


def _info_from_strings(meta: Mapping[str, object], source: Path) -> PretrainedInfo:
    """Parse and check save_pretrained's metadata (JSON strings) or a training checkpoint's entries (dicts and
    lists): each field's type and range, before anything is sized by it. Errors name `source`, the field
    and its value."""

    def parsed(key: str, kind: type, what: str):
        value = meta.get(key)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (json.JSONDecodeError, RecursionError) as e:
                raise CheckpointError(f"{source}: metadata {key!r} is not JSON ({e}): {_shown(meta.get(key))}") from e
        if value is not None and not isinstance(value, kind):
            raise CheckpointError(f"{source}: metadata {key!r} must be {what}, got {_shown(value)}")
        return value

    config = parsed("config", dict, "a JSON object of model settings")
    preprocess = parsed("preprocess", dict, "a JSON object of preprocessing settings")
    class_names = parsed("class_names", list, "a JSON list of strings")
    if class_names is not None and not all(isinstance(n, str) for n in class_names):
        raise CheckpointError(f"{source}: metadata 'class_names' must be a list of strings, got {_shown(class_names)}")
    version = meta.get("format_version")
    if isinstance(version, str) and re.fullmatch(r"\d{1,9}", version, re.ASCII):
        version = int(version)
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or
                                not 1 <= version <= FORMAT_VERSION):
        raise CheckpointError(f"{source}: metadata format_version {_shown(version)}; this vit reads versions 1 to "
                              f"{FORMAT_VERSION} (written by a newer vit?)")
    try:
        config = config_from_dict(config) if config is not None else None
    except ConfigError as e:
        raise CheckpointError(f"{source}: metadata 'config': {e}") from e
    try:
        preprocess = Preprocess.from_dict(preprocess) if preprocess is not None else None
    except ConfigError as e:
        raise CheckpointError(f"{source}: metadata 'preprocess': {e}") from e
    return PretrainedInfo(config, preprocess, class_names, version)


def _shown(value, limit: int = 120) -> str:
    """repr of a value read from a file, cut to `limit` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def read_stored_metadata(source: str | os.PathLike) -> PretrainedInfo:
    """The config, preprocessing and class names stored with some weights, as the files say, no model built.

    source: a file, a folder or "hf-hub:ORG/REPO". Reads save_pretrained's safetensors header (not the
    tensors), the "model_config"/"preprocess"/"class_names" entries of a training checkpoint (`last.ckpt`),
    and a timm or transformers config.json beside the weights. Fields nothing says are None; a timm
    architecture name is left unresolved (`vit.read_metadata` resolves it against the registry).
    """
    path = resolve_source(source)
    if path.suffix == ".safetensors":
        info = _info_from_strings(_safetensors_metadata(path), path)
    else:
        info = read_weights_file(path)[1]
    return _with_sidecars(path, info)


# --------------------------------------------------------------------------------------------------------
# Reading files: safetensors, torch zip/pickle (weights only), numpy .npz


def _checkpoint_info(obj: dict, path: Path) -> PretrainedInfo:
    """Metadata beside the weights in a torch checkpoint dict other than train.py's (vit.runs reads those):
    {"model": ..., "config" or "model_config": ..., "preprocess": ..., "class_names": ...}."""
    meta = {}
    config = obj.get("model_config", obj.get("config"))
    if isinstance(config, dict) and isinstance(config.get("model"), dict):  # a training config with a model part
        config = config["model"]
    if isinstance(config, dict) and set(config) <= {f.name for f in fields(DeiTConfig)}:  # a model config
        meta["config"] = config
    for key in ("preprocess", "class_names", "format_version"):
        if key in obj:
            meta[key] = obj[key]
    return _info_from_strings(meta, path)


# Wrapper keys around a state dict: DeiT and train.py ("model"), Lightning-style ("state_dict"), EMA copies.
WRAPPER_KEYS = ("model", "state_dict", "model_ema", "module")


def _unwrap(obj: dict) -> dict:
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    return obj


def read_weights_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], PretrainedInfo]:
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
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
        return state, _info_from_strings(_safetensors_metadata(path), path)
    if path.suffix == ".npz":
        return _read_npz(path), PretrainedInfo()
    try:
        with warnings.catch_warnings():  # torch's notice on checking a file's sparse tensors (refused later)
            warnings.filterwarnings("ignore", "Validating sparse tensor invariants")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler names a refused import ("... GLOBAL posix.system ..."); anything else
        # it refuses (an unknown opcode, ...) means the bytes are not a pickle of tensors at all.
        refused = re.search(r"GLOBAL (\S+)", str(e))
        if refused is None:
            reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: the unpickler refused it"
                                  + (f" ({reason.group(1)})" if reason else "")) from e
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain containers (it imports "
            f"{refused.group(1)}); vit loads checkpoints with torch.load(weights_only=True) and never unpickles "
            f"arbitrary code. Re-save the state dict alone (or as safetensors)."
        ) from e
    # A file that is no checkpoint at all makes the unpickler fail in many ways (KeyError for a text file).
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            struct.error) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {type(e).__name__}: {e}") from e
    except MemoryError as e:  # a damaged length field: the unpickler asks for more bytes than the file holds
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: a record in it claims more memory than "
                              f"this process may take ({path.stat().st_size} bytes on disk)") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    trained = read_trained_model(obj, path)  # train.py's last.ckpt: vit.runs knows its layout
    if trained is not None:
        meta = {"config": trained.model_config, "class_names": trained.class_names}
        return trained.weights, _info_from_strings(meta, path)
    info = _checkpoint_info(obj, path)
    state = _unwrap(dict(obj))
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a state dict: entries {bad[:5]} are not tensors "
                              f"(wrapper keys recognised: {', '.join(WRAPPER_KEYS)})")
    return state, info


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The header metadata save_pretrained wrote; {} for safetensors files written by anything else."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    return meta if meta.get("format") == FORMAT_NAME else {}


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    import numpy as np

    def to_tensor(a):
        # big_vision saves bfloat16 (ml_dtypes) arrays, which numpy alone reads back as 2-byte void records.
        if a.dtype.kind == "V" and a.dtype.itemsize == 2:
            return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).float()
        return torch.from_numpy(np.asarray(a, dtype=np.float32))

    try:
        _check_npz(path)
        with np.load(path, allow_pickle=False) as arrays:
            return {k: to_tensor(arrays[k]) for k in arrays.files}
    except CheckpointError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a readable .npz file of arrays: {type(e).__name__}: {e}") from e


MAX_NPZ_BYTES = 16 * 2**30  # what an .npz may unpack to (ViT-H/14 in float32: 2.5 GB)
# Weights deflate to ~0.9 of their size; a member that claims to inflate 100-fold (and past 64 MiB) is a bomb,
# refused from the zip's directory before numpy allocates the array its header claims.
MAX_NPZ_RATIO, NPZ_RATIO_FROM = 100, 2**26


def _check_npz(path: Path) -> None:
    """Refuse an .npz before numpy allocates anything for it: not a zip (an .npy renamed), more than
    MAX_NPZ_BYTES unpacked, an array header that claims more bytes than its member holds, a structured dtype."""
    import numpy as np

    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not an .npz archive (a zip of .npy arrays): an .npy file renamed?")
    with zipfile.ZipFile(path) as z:
        members = z.infolist()
        unpacked = sum(m.file_size for m in members)
        if unpacked > MAX_NPZ_BYTES:
            raise CheckpointError(f"{path} unpacks to {unpacked / 1e9:.1f} GB, over the "
                                  f"{MAX_NPZ_BYTES / 1e9:.0f} GB an .npz of ViT weights may hold")
        size = path.stat().st_size
        for m in members:
            stored = m.compress_type == zipfile.ZIP_STORED
            if m.header_offset + m.compress_size > size or (stored and m.compress_size != m.file_size):
                raise CheckpointError(f"{path}: {m.filename} claims {m.file_size:,} bytes that the file does not hold "
                                      "(truncated or damaged)")
            if not stored and m.file_size > max(NPZ_RATIO_FROM, MAX_NPZ_RATIO * m.compress_size):
                raise CheckpointError(f"{path}: {m.filename} would inflate {m.compress_size:,} bytes to "
                                      f"{m.file_size:,} ({m.file_size / max(m.compress_size, 1):.0f}-fold): a "
                                      "compression bomb, not weights (which deflate to ~0.9 of their size)")
        for m in members:
            with z.open(m) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f, max_header_size=10_000)
                except ValueError as e:
                    raise CheckpointError(f"{path}: {m.filename} is not an .npy array: {e}") from e
                if dtype.fields is not None or dtype.kind not in "fiuV" or (dtype.kind == "V" and dtype.itemsize != 2):
                    raise CheckpointError(f"{path}: {m.filename} has dtype {dtype}, not numbers")
                claimed = math.prod(shape) * dtype.itemsize
                if claimed != m.file_size - f.tell():
                    raise CheckpointError(f"{path}: {m.filename} claims shape {shape} of {dtype} ({claimed:,} bytes) "
                                          f"but holds {m.file_size - f.tell():,}")


# --------------------------------------------------------------------------------------------------------
# Formats: detection and conversion to our names


# Each format is recognised by a key only it has; `detect_format` names the formats in its error.
FORMAT_MARKERS = {
    "vit": "patch_embed.proj.weight",  # ours, timm, DeiT (after unwrapping "model")
    "torchvision": "conv_proj.weight",
    "transformers": "embeddings.patch_embeddings.projection.weight",  # with or without the "vit." prefix
    "jax": "embedding/kernel",  # google-research/vision_transformer and big_vision .npz
}


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """The format of a state dict: one of FORMAT_MARKERS' names."""
    for name, marker in FORMAT_MARKERS.items():
        if any(k == marker or k.endswith("." + marker) or k.endswith("/" + marker) for k in state):
            return name
    raise CheckpointError(
        f"unrecognised checkpoint format (keys {_summary(state, 4)}); recognised formats: "
        + "; ".join(f"{name} (a key like {marker!r})" for name, marker in FORMAT_MARKERS.items()))


def _rename(state: Mapping[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply the first matching regex rule to each key; rule targets None are dropped, unmatched keys kept
    (so check_state_dict reports them as unexpected)."""
    out = {}
    for key, value in state.items():
        for pattern, target in rules:
            if re.match(pattern, key):
                if target is not None:
                    out[re.sub(pattern, target, key)] = value
                break
        else:
            out[key] = value
    return out


def _pack_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack separate `blocks.{i}.attn.{q,k,v}.*` into our fused `attn.qkv.*` (rows q;k;v, as timm)."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"(blocks\.\d+\.attn\.)([qkv])\.(weight|bias)", key)
        if m is None:
            out[key] = value
        elif m.group(2) == "q":
            prefix, kind = m.group(1), m.group(3)
            parts = [state.get(f"{prefix}{n}.{kind}") for n in "qkv"]
            if any(p is None for p in parts):
                raise CheckpointError(f"{prefix}: query, key and value must all have a {kind}")
            out[f"{prefix}qkv.{kind}"] = torch.cat(parts, dim=0)  # (3*C, C) or (3*C,)
    return out


def _unpack_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our fused `blocks.{i}.attn.qkv.*` as separate `attn.{q,k,v}.*`: `_pack_qkv` undone."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"(blocks\.\d+\.attn\.)qkv\.(weight|bias)", key)
        if m is None:
            out[key] = value
        else:
            for name, part in zip("qkv", value.chunk(3, dim=0)):  # rows q;k;v
                out[f"{m.group(1)}{name}.{m.group(2)}"] = part.contiguous()
    return out


# torchvision.models.VisionTransformer: in_proj is already packed q;k;v like ours. Old torchvision files
# name the MLP linears linear_1/linear_2 instead of 0/3.
TORCHVISION_RULES = [
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(3|linear_2)\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
]

# transformers ViT and DeiT names as hub files hold them (v4, after the "vit." / "deit." prefix) beside ours;
# "{i}" is a block index, and a name ending in "." names a module's weight and bias. The reader renames by these
# pairs (TRANSFORMERS_RULES); the writer (`to_transformers_state_dict`) by the first pair for each of our names.
# DeiTForImageClassificationWithTeacher's two heads are cls_classifier and distillation_classifier.
TRANSFORMERS_NAMES = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.distillation_token", "dist_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.{i}.layernorm_before.", "blocks.{i}.norm1."),
    ("encoder.layer.{i}.attention.attention.query.", "blocks.{i}.attn.q."),
    ("encoder.layer.{i}.attention.attention.key.", "blocks.{i}.attn.k."),
    ("encoder.layer.{i}.attention.attention.value.", "blocks.{i}.attn.v."),
    ("encoder.layer.{i}.attention.output.dense.", "blocks.{i}.attn.proj."),
    ("encoder.layer.{i}.layernorm_after.", "blocks.{i}.norm2."),
    ("encoder.layer.{i}.intermediate.dense.", "blocks.{i}.mlp.fc1."),
    ("encoder.layer.{i}.output.dense.", "blocks.{i}.mlp.fc2."),
    ("layernorm.", "norm."),
    ("classifier.", "head."),
    ("cls_classifier.", "head."),
    ("distillation_classifier.", "head_dist."),
]
# transformers 5 names the block's modules otherwise in memory (and renames on load): read, never written.
TRANSFORMERS_5_NAMES = [
    ("layers.{i}.layernorm_before.", "blocks.{i}.norm1."),
    ("layers.{i}.attention.q_proj.", "blocks.{i}.attn.q."),
    ("layers.{i}.attention.k_proj.", "blocks.{i}.attn.k."),
    ("layers.{i}.attention.v_proj.", "blocks.{i}.attn.v."),
    ("layers.{i}.attention.o_proj.", "blocks.{i}.attn.proj."),
    ("layers.{i}.layernorm_after.", "blocks.{i}.norm2."),
    ("layers.{i}.mlp.fc1.", "blocks.{i}.mlp.fc1."),
    ("layers.{i}.mlp.fc2.", "blocks.{i}.mlp.fc2."),
]
# The pooler (tanh dense) and the mask token are not used for classification.
TRANSFORMERS_UNUSED = ["embeddings.mask_token", "pooler."]


def _name_rule(source: str, target: str | None) -> tuple[str, str | None]:
    """A `_rename` rule from a pair of names as TRANSFORMERS_NAMES writes them: "{i}" a block index, a trailing
    "." a prefix (the module's weight and bias), any other name whole."""
    pattern = "^" + r"(\d+)".join(map(re.escape, source.split("{i}"))) + ("" if source.endswith(".") else "$")
    return pattern, None if target is None else target.replace("{i}", r"\1")


TRANSFORMERS_RULES = ([_name_rule(theirs, ours) for theirs, ours in TRANSFORMERS_NAMES + TRANSFORMERS_5_NAMES]
                      + [_name_rule(theirs, None) for theirs in TRANSFORMERS_UNUSED])
# Ours -> transformers': the first pair for each of our names, so the plain classifier's "classifier." for "head.".
TRANSFORMERS_WRITE_RULES = [_name_rule(ours, theirs) for ours, theirs in
                            {ours: theirs for theirs, ours in reversed(TRANSFORMERS_NAMES)}.items()]


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def convert_jax(arrays: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flax parameter names and layouts -> ours.

    google-research/vision_transformer: `Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/...`,
    LayerNorm_2 and MlpBlock_3 in each block, `Transformer/posembed_input/pos_embedding`, optionally under
    `opt/target/`. big_vision: under `params/`, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0,
    `pos_embedding` at the top, and possibly one scanned `encoderblock` with a leading depth axis.
    Flax kernels are (in, out): Dense kernels are transposed, the conv kernel HWIO -> OIHW, attention
    kernels (C, H, D) / (H, D, C) flattened over heads.
    """
    prefix = next((p for p in ("opt/target/", "params/", "") if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise CheckpointError("a JAX checkpoint needs an 'embedding/kernel' (optionally under opt/target/ or params/)")
    w = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    big_vision = prefix == "params/" or "pos_embedding" in w or "Transformer/encoderblock/LayerNorm_0/scale" in w
    mha, ln2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else \
                    ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    out, used = {}, set()

    def take(name):
        if name not in w:
            raise CheckpointError(f"the JAX checkpoint has no {prefix}{name} (its keys: {_summary(w, 4)})")
        used.add(name)
        return w[name]

    def dense(name):  # (in, out) -> (out, in)
        return take(name).T

    out["patch_embed.proj.weight"] = take("embedding/kernel").permute(3, 2, 0, 1)  # (ph, pw, I, O) -> (O, I, ph, pw)
    out["patch_embed.proj.bias"] = take("embedding/bias")
    if "cls" in w:
        out["cls_token"] = take("cls")  # (1, 1, C)
    out["pos_embed"] = take("pos_embedding" if "pos_embedding" in w else "Transformer/posembed_input/pos_embedding")

    scanned = "Transformer/encoderblock/LayerNorm_0/scale" in w
    if scanned:  # one block with stacked (depth, ...) parameters
        depth = w["Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
        blocks = {k: v for k, v in w.items() if k.startswith("Transformer/encoderblock/")}
        used.update(blocks)
        per_block = [{k.replace("encoderblock/", f"encoderblock_{i}/"): v[i] for k, v in blocks.items()}
                     for i in range(depth)]
        w = {**w, **{k: v for b in per_block for k, v in b.items()}}
    else:
        depth = len({m.group(1) for k in w if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        for flax_ln, ours in (("LayerNorm_0", "norm1"), (ln2, "norm2")):
            out[f"{dst}{ours}.weight"] = take(f"{src}{flax_ln}/scale")
            out[f"{dst}{ours}.bias"] = take(f"{src}{flax_ln}/bias")
        a = f"{src}{mha}/"
        # query/key/value kernels (C, H, D) -> (H*D, C); biases (H, D) -> (H*D,); packed q;k;v
        out[f"{dst}attn.qkv.weight"] = torch.cat([take(f"{a}{n}/kernel").flatten(1).T for n in ("query", "key", "value")])
        if f"{a}query/bias" in w:
            out[f"{dst}attn.qkv.bias"] = torch.cat([take(f"{a}{n}/bias").flatten() for n in ("query", "key", "value")])
        out[f"{dst}attn.proj.weight"] = take(f"{a}out/kernel").flatten(0, 1).T  # (H, D, C) -> (C, H*D)
        out[f"{dst}attn.proj.bias"] = take(f"{a}out/bias")
        for r in range(2):
            out[f"{dst}mlp.fc{r + 1}.weight"] = dense(f"{src}{mlp}/Dense_{r}/kernel")
            out[f"{dst}mlp.fc{r + 1}.bias"] = take(f"{src}{mlp}/Dense_{r}/bias")
    if "Transformer/encoder_norm/scale" in w:
        out["norm.weight"] = take("Transformer/encoder_norm/scale")
        out["norm.bias"] = take("Transformer/encoder_norm/bias")
    if "head/kernel" in w:
        out["head.weight"] = dense("head/kernel")
        out["head.bias"] = take("head/bias")
    # The ImageNet-21k "pre_logits" representation layer is dropped, as timm does: the fine-tuned
    # checkpoints have none, and it only feeds the 21k head.
    used.update(k for k in w if k.startswith("pre_logits/"))
    for k in set(w) - used:  # anything else is reported as unexpected by check_state_dict
        if not (scanned and k.startswith("Transformer/encoderblock_")):
            out[k] = w[k]
    return {k: v.contiguous() for k, v in out.items()}


def to_vit_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a state dict of any recognised format (see FORMAT_MARKERS) to our parameter names."""
    # Wrappers around the module itself: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = _strip_prefix(state, prefix)
    fmt = detect_format(state)
    if fmt == "vit":
        return dict(state)
    if fmt == "torchvision":
        return _rename(state, TORCHVISION_RULES)
    if fmt == "transformers":
        state = _strip_prefix(_strip_prefix(state, "vit."), "deit.")
        return _pack_qkv(_rename(state, TRANSFORMERS_RULES))
    return convert_jax(state)


def to_transformers_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> transformers' `ViTForImageClassification` (its hub names): the reader's renaming undone, q/k/v
    apart, "vit." before all but the classifier. A name the table does not know is a ConfigError."""
    state = _unpack_qkv(dict(state))
    unknown = [k for k in state if not any(re.match(pattern, k) for pattern, _ in TRANSFORMERS_WRITE_RULES)]
    if unknown:
        raise ConfigError(f"transformers' ViT has no place for {_summary(unknown)}")
    renamed = _rename(state, TRANSFORMERS_WRITE_RULES)
    return {(k if k.startswith("classifier.") else "vit." + k): v for k, v in renamed.items()}


# --------------------------------------------------------------------------------------------------------
# Adapting a state dict (already in our names) to the target model


def adapt_input_chans(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Patch-embedding kernel (O, I, ph, pw) for another input channel count.

    To 1 channel: sum over the input channels, so a gray image gives the response the RGB model gives to
    that image replicated to RGB. To c channels: repeat the kernel cyclically and scale by I / c, keeping
    the expected activation size (timm's `adapt_input_conv` does the same).
    """
    old = weight.shape[1]
    if in_chans == old:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / old)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (old / in_chans)


def resample_patch_embed(
    weight: torch.Tensor, new_size, interpolation: str = "bicubic", antialias: bool = True
) -> torch.Tensor:
    """Patch-embedding kernel (O, I, ph, pw) -> (O, I, ph', pw') by the pseudo-inverse resize of FlexiViT.

    FlexiViT (Beyer et al., 2023, eq. 3): with A the linear map that resizes a patch x from (ph, pw) to
    (ph', pw'), choose w' so that <A x, w'> = <x, w> for every patch, i.e. A^T w' = w, so w' = pinv(A^T) w.
    A model given images resized by the same factor then sees (nearly) the same token embeddings.
    """
    old_size, new_size = tuple(weight.shape[-2:]), tuple(new_size)
    if old_size == new_size:
        return weight
    n_old = old_size[0] * old_size[1]
    basis = torch.eye(n_old, dtype=torch.float32).reshape(n_old, 1, *old_size)  # one-hot patches
    resize_t = F.interpolate(basis, size=new_size, mode=interpolation, antialias=antialias).reshape(n_old, -1)
    # resize_t is A^T: (ph*pw, ph'*pw'); solve A^T w' = w for each (O, I) kernel at once.
    kernels = weight.float().reshape(-1, n_old)  # (O*I, ph*pw)
    resampled = kernels @ torch.linalg.pinv(resize_t).T  # (O*I, ph'*pw')
    return resampled.reshape(*weight.shape[:2], *new_size).to(weight.dtype)


CONV_STEM_FIRST = "patch_embed.backbone.0.conv.weight"  # the first conv of a conv stem (ViTConfig.stem="conv")


def _stem_layout(state: Mapping[str, torch.Tensor]) -> tuple[int, tuple[int, ...] | None]:
    """A conv stem's conv count and its projection's kernel size (None without one), from a state dict in our
    names."""
    convs = {k.split(".")[2] for k in state if k.startswith("patch_embed.backbone.") and k.endswith(".conv.weight")}
    proj = state.get("patch_embed.proj.weight")
    return len(convs), tuple(proj.shape[-2:]) if proj is not None else None


def _adapt_conv_stem(state: dict[str, torch.Tensor], model: VisionTransformer) -> None:
    """Fit conv-stem weights to the model's conv stem, in place: its first conv to the model's input channels.
    Weights of the other stem are a CheckpointError; a conv stem for another patch size a ConfigError (its convs
    and strides are the patch size's, and nothing resamples them as FlexiViT resamples a patchify kernel)."""
    target = model.state_dict()
    if CONV_STEM_FIRST not in state and "patch_embed.proj.weight" not in state:
        return  # no stem at all: check_state_dict names the missing keys
    kinds = {True: "a conv stem (stem='conv')", False: "a patchify stem (stem='patch')"}
    if (CONV_STEM_FIRST in state) != (CONV_STEM_FIRST in target):
        raise CheckpointError(f"the checkpoint has {kinds[CONV_STEM_FIRST in state]} and the model "
                              f"{kinds[CONV_STEM_FIRST in target]}: build the model with the checkpoint's stem")
    (convs, kernel), (want_convs, want_kernel) = _stem_layout(state), _stem_layout(target)
    if kernel is not None and (convs, kernel) != (want_convs, want_kernel):  # without a projection: a missing key
        raise ConfigError(f"the checkpoint's conv stem ({convs} convs, a {'x'.join(map(str, kernel))} projection) is "
                          f"not the one of patch_size {model.config.patch_size} ({want_convs} convs, a "
                          f"{'x'.join(map(str, want_kernel))} projection): a conv stem is not resampled to another "
                          "patch size; build the model with the checkpoint's patch_size")
    first = state[CONV_STEM_FIRST]
    if first.ndim == 4 and first.shape[1] != target[CONV_STEM_FIRST].shape[1]:
        state[CONV_STEM_FIRST] = adapt_input_chans(first, target[CONV_STEM_FIRST].shape[1])


def adapt_state_dict(
    state: dict[str, torch.Tensor], model: VisionTransformer, source_grid: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Fit a state dict in our names to `model`: position-embedding grid, patch size, input channels, head.

    source_grid: the checkpoint's patch grid (h, w) when it is not square (from its metadata).
    """
    state = dict(state)
    target = model.state_dict()

    # Patch embedding: channel count first (RGB -> gray etc.), then kernel size (FlexiViT resampling); a conv
    # stem's first conv takes the channel count, and its kernels stay as they are.
    proj = state.get("patch_embed.proj.weight")
    want = target["patch_embed.proj.weight"].shape  # (C, in_chans, ph, pw)
    if CONV_STEM_FIRST in target or CONV_STEM_FIRST in state:
        _adapt_conv_stem(state, model)
    elif proj is not None and proj.ndim == 4 and proj.shape != want:
        proj = adapt_input_chans(proj, want[1])
        state["patch_embed.proj.weight"] = resample_patch_embed(proj, want[-2:])

    # Position embeddings: resample the grid part to the model's grid (the prefix rows stay as they are).
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != target["pos_embed"].shape:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        if pos.ndim != 3 or pos.shape[-1] != model.embed_dim:
            raise CheckpointError(
                f"pos_embed: expected shape {tuple(target['pos_embed'].shape)}, got {tuple(pos.shape)}")
        try:
            state["pos_embed"] = resample_pos_embed(pos, model.patch_embed.grid_size, source_grid, prefix)
        except ConfigError as e:  # [CLS] rows in the file but not in the model, or a non-square grid
            raise CheckpointError(
                f"pos_embed {tuple(pos.shape)} cannot be fitted to the model's {tuple(target['pos_embed'].shape)} "
                f"({prefix} prefix rows): {e}. For a non-square grid, pass load_pretrained(..., source_grid=(h, w))"
            ) from e

    # The heads: a different class count (or no head wanted) means fresh heads, not an error.
    for key in HEAD_KEYS:
        if key in state and (key not in target or state[key].shape != target[key].shape):
            del state[key]
    return state


HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")  # fresh where the file has none


def check_head(state: Mapping[str, torch.Tensor], model: VisionTransformer) -> None:
    """The model's head tensors (head, and DeiT's head_dist) in `state` (our names), each in the model's shape:
    weights whose metadata says they are a classifier of K classes must carry it, or a freshly initialised
    head would be evaluated as if trained (~1/K accuracy, and no error)."""
    target = model.state_dict()
    wanted = [key for key in HEAD_KEYS if key in target]
    missing = [key for key in wanted if key not in state]
    if missing:
        raise CheckpointError(
            f"its metadata describes a classifier of {model.num_classes} classes, but it has no {', '.join(missing)}: "
            "a fresh head would be used as if trained. To train a new head on its backbone, give the class count "
            "(create_model(..., num_classes=K))")
    for key in wanted:
        if state[key].shape != target[key].shape:
            raise CheckpointError(f"its metadata describes a classifier of {model.num_classes} classes, but its "
                                  f"{key} has shape {tuple(state[key].shape)}, not {tuple(target[key].shape)}")


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
        # Another float precision is cast on load; integers, bools or complex numbers are not weights.
        if value.is_floating_point() != target[key].is_floating_point() or value.is_complex():
            raise CheckpointError(f"{key} has dtype {value.dtype}, the model's is {target[key].dtype}")


# --------------------------------------------------------------------------------------------------------
# Hub download and config.json sidecars (timm and transformers repos)


def download_from_hub(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Fetch a hub repo's weights (and config.json, where there is one) through huggingface_hub's cache.

    Honours HF_HUB_OFFLINE (cache only), HF_HUB_CACHE / HF_HOME and HF_TOKEN, as huggingface_hub does.
    Returns the local path of the weights; config.json lies beside it in the same snapshot folder.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    def unreachable(filename, reason):
        return CheckpointError(
            f"cannot reach the Hugging Face hub for hf-hub:{repo_id} ({reason}), and {filename} is not in the "
            "local cache (offline? set HF_HUB_OFFLINE=1 to use the cache alone, or pass a local file)")

    def fetch(filename, required=True):
        if not _hub_offline():
            # One request without retries first: huggingface_hub retries an unreachable hub for ~25 s before
            # it falls back to the cache, and a user offline should hear so at once.
            try:
                get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=10)
            except EntryNotFoundError:  # the repo has no such file: try the next name
                return None
            except HfHubHTTPError as e:  # the hub answered: no such repo, gated, ...
                raise CheckpointError(f"cannot download {filename} from hf-hub:{repo_id}: {e}") from None
            except Exception as e:  # no answer at all (refused, timed out, no route): the cache may still have it
                try:
                    return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=True))
                except LocalEntryNotFoundError:
                    if not required:
                        return None
                    raise unreachable(filename, type(e).__name__) from None
        try:
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
        except LocalEntryNotFoundError:  # not in the cache, and the hub was not asked (offline) or not reached
            if _hub_offline() or not required:
                return None  # try the next file name in the cache
            raise unreachable(filename, "no answer") from None
        except EntryNotFoundError:  # the repo has no such file: try the next name
            return None
        except (HfHubHTTPError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot download {filename} from hf-hub:{repo_id}: {e}") from e

    for filename in HUB_WEIGHT_FILES:
        weights = fetch(filename)
        if weights is not None:
            for sidecar in HUB_SIDECAR_FILES:  # optional; they land beside the weights in the snapshot
                fetch(sidecar, required=False)
            return weights
    offline = " (HF_HUB_OFFLINE is set: only the local cache was searched)" if _hub_offline() else ""
    raise CheckpointError(f"hf-hub:{repo_id} has none of {', '.join(HUB_WEIGHT_FILES)}{offline}")


def push_to_hub(model: VisionTransformer, repo_id: str, *, format: str = "timm", commit_message: str = "Upload weights",
                description: str = "", private: bool = False, token: str | None = None) -> str:
    """Upload `model` to the Hugging Face hub repo `repo_id` (created where missing) as `save_pretrained`'s
    "timm" or "transformers" folder, with a model card (README.md: `description`, then how to load it). timm's
    layout, the default, is read by timm (`timm.create_model("hf-hub:REPO", pretrained=True)`) and by this package
    (`create_model(pretrained="hf-hub:REPO")`). Through huggingface_hub's `HfApi`, with its token (`token`, else
    HF_TOKEN or `hf auth login`). Returns the commit's URL."""
    import tempfile

    from huggingface_hub import HfApi

    loads = {"timm": f'timm.create_model("hf-hub:{repo_id}", pretrained=True)',
             "transformers": f'transformers.ViTForImageClassification.from_pretrained("{repo_id}")'}
    if format not in loads:
        raise ConfigError(f"push_to_hub format {format!r}: one of {', '.join(loads)} (a hub repo is a folder)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "upload", format=format)
        (folder / "README.md").write_text(f"---\nlibrary_name: {format}\ntags: [image-classification, vit]\n---\n\n"
                                          f"# {repo_id}\n\n{description}\n\n```python\nmodel = {loads[format]}\n```\n")
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
        except Exception as e:  # the hub's answer (no token, no access, a bad name) or none at all (offline)
            raise OutputError(f"cannot push to hf-hub:{repo_id}: {type(e).__name__}: {e}") from e
    return str(getattr(commit, "commit_url", commit))


HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_SIDECAR_FILES = ("config.json", "preprocessor_config.json")  # timm's / transformers' metadata


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _read_json_object(path: str | os.PathLike, what: str) -> dict:
    """A JSON file that must hold one object (a config.json or preprocessor_config.json beside weights)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a JSON {type(obj).__name__}, not an object of {what}")
    return obj


def info_from_config_json(path: str | os.PathLike) -> PretrainedInfo:
    """Config, preprocessing and class names from a timm or transformers `config.json`.

    timm: {"architecture": "vit_base_patch16_224.augreg_in21k", "num_classes", "model_args", "label_names",
    "pretrained_cfg": {"input_size", "mean", "std", "interpolation", "crop_pct"}}: the architecture and its
    model_args (with num_classes) are returned as they are, for the registry to resolve.
    transformers: {"model_type": "vit" or "deit", "hidden_size", "num_hidden_layers", ...}.
    Anything else gives an empty PretrainedInfo.
    """
    cfg = _read_json_object(path, "model settings")
    if cfg.get("model_type") in ("vit", "deit"):
        return _info_from_transformers_config(cfg)
    if "architecture" not in cfg:
        return PretrainedInfo()
    pc = cfg.get("pretrained_cfg", {})
    preprocess = None
    if {"input_size", "mean", "std"} <= set(pc):
        preprocess = Preprocess(pc["input_size"], pc["mean"], pc["std"], pc.get("interpolation", "bicubic"),
                                pc.get("crop_pct", 1.0))
    model_args = cfg.get("model_args", {})
    if not isinstance(model_args, dict):
        raise CheckpointError(f"{path}: model_args of {cfg['architecture']} is not a mapping: {model_args!r}")
    if "num_classes" in cfg:
        model_args = {**model_args, "num_classes": cfg["num_classes"]}
    labels = cfg.get("label_names")
    return PretrainedInfo(preprocess=preprocess, class_names=list(labels) if isinstance(labels, list) else None,
                          architecture=str(cfg["architecture"]).split(".")[0],  # drop timm's pretrained tag
                          model_args=model_args)


def _info_from_transformers_config(cfg: dict) -> PretrainedInfo:
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"transformers ViT with hidden_act={cfg['hidden_act']!r}: only exact 'gelu' is supported")
    headless = cfg.get("architectures") in (["ViTModel"], ["DeiTModel"])
    labels = cfg.get("id2label", {})
    names = [labels[str(i)] for i in range(len(labels))] if labels else None
    hidden = cfg.get("hidden_size", 768)
    # transformers' layer_norm_eps defaults to 1e-12 where timm's and JAX's is 1e-6: kept, for equal logits.
    config = config_from_dict(dict(
        img_size=cfg.get("image_size", 224), patch_size=cfg.get("patch_size", 16), in_chans=cfg.get("num_channels", 3),
        num_classes=0 if headless else len(labels) or 2, embed_dim=hidden, depth=cfg.get("num_hidden_layers", 12),
        num_heads=cfg.get("num_attention_heads", 12), mlp_ratio=cfg.get("intermediate_size", 4 * hidden) / hidden,
        qkv_bias=cfg.get("qkv_bias", True), norm_eps=cfg.get("layer_norm_eps", 1e-12),
        distilled=cfg.get("model_type") == "deit"))  # every DeiT model has the distillation token
    return PretrainedInfo(config, None, None if headless else names)


def _merge(first: PretrainedInfo, second: PretrainedInfo) -> PretrainedInfo:
    """Field by field, what `first` says, else what `second` says."""
    return PretrainedInfo(*(getattr(first, f.name) if getattr(first, f.name) is not None else getattr(second, f.name)
                            for f in fields(PretrainedInfo)))


def resolve_source(source: str | os.PathLike, cache_dir=None) -> Path:
    """A weights file from "hf-hub:ORG/REPO", a folder (model.safetensors or pytorch_model.bin in it), or a file."""
    if isinstance(source, str) and source.startswith("hf-hub:"):
        return download_from_hub(source[len("hf-hub:"):], cache_dir)
    path = Path(source)
    if path.is_dir():
        found = [path / f for f in HUB_WEIGHT_FILES if (path / f).is_file()]
        if not found:
            raise CheckpointError(f"folder {path} has none of {', '.join(HUB_WEIGHT_FILES)}")
        return found[0]
    return path


def _info_from_preprocessor_config(path: Path) -> PretrainedInfo:
    """transformers' preprocessor_config.json (ViTImageProcessor): resize straight to `size`, no crop."""
    cfg = _read_json_object(path, "preprocessing settings")
    if not {"image_mean", "image_std", "size"} <= set(cfg):
        return PretrainedInfo()
    size = cfg["size"]
    H, W = (size["height"], size["width"]) if isinstance(size, dict) else to_2tuple(size)
    resample = {code: name for name, code in PIL_RESAMPLE.items()}.get(cfg.get("resample"), "bilinear")
    mean = cfg["image_mean"]
    return PretrainedInfo(preprocess=Preprocess((len(mean), H, W), mean, cfg["image_std"], resample, 1.0))


def _with_sidecars(path: Path, info: PretrainedInfo) -> PretrainedInfo:
    """Fill what the weights file leaves unsaid from the config files beside it (hub snapshots, folders
    written by transformers' save_pretrained)."""
    for name, reader in (("config.json", info_from_config_json), ("preprocessor_config.json", _info_from_preprocessor_config)):
        sidecar = path.parent / name
        says_model = info.config is not None or info.architecture is not None
        if not (says_model and info.preprocess is not None and info.class_names is not None) and sidecar.is_file():
            try:
                info = _merge(info, reader(sidecar))
            except CheckpointError:
                raise
            except (ConfigError, AttributeError, KeyError, IndexError, TypeError, ValueError, OverflowError,
                    ZeroDivisionError) as e:  # a field of the wrong type or range, from a file we did not write
                raise CheckpointError(f"{sidecar} cannot be used: {type(e).__name__}: {e}") from e
    return info


def read_pretrained(source: str | os.PathLike, cache_dir=None) -> tuple[dict[str, torch.Tensor], PretrainedInfo]:
    """State dict (source names) and metadata of any source: a file, a folder or "hf-hub:ORG/REPO"."""
    path = resolve_source(source, cache_dir)
    state, info = read_weights_file(path)
    return state, _with_sidecars(path, info)


# --------------------------------------------------------------------------------------------------------
# Loading


def check_tensors(state: Mapping) -> None:
    """What every converter assumes of a state dict, checked before any of them runs: string keys, and values
    that are dense tensors on the CPU holding no more elements than their storage (a crafted file can carry
    integer keys, sparse or meta tensors, and stride-0 views of one value as 10^12 elements, which a
    conversion would materialise)."""
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"the state dict has a key {key!r} ({type(key).__name__}); weight names are strings")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{key} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided or value.device.type != "cpu":
            raise CheckpointError(f"{key} is a {value.layout} tensor on {value.device}; weights are dense CPU tensors")
        if value.numel() and value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise CheckpointError(f"{key} is a view of {value.numel():,} elements over "
                                  f"{value.untyped_storage().nbytes() // value.element_size():,} stored values "
                                  f"(shape {tuple(value.shape)}, strides {value.stride()}); save it with .contiguous()")


# A config read from a file may claim at most this many parameters beyond twice the values the file stores: a
# head, position table or norms a file leaves out are new, but a model 1000 times its file is a lie.
UNSTORED_PARAMS = 2**20


def check_config_fits(config: ViTConfig, state: Mapping, source) -> None:
    """A CheckpointError, before the model is built, where a config read from `source` claims far more parameters
    than the tensors the file holds (a 708-byte file whose config says depth 70000 would build a 5 GB model
    before its tensors were found missing): at most twice the stored values, plus UNSTORED_PARAMS."""
    stored = sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))
    claimed = config.num_params()
    if claimed > 2 * stored + UNSTORED_PARAMS:
        raise CheckpointError(f"{source}: its config describes a model of ~{claimed:.3g} parameters (depth "
                              f"{config.depth}, width {config.embed_dim}), but the file holds {stored:,} values: "
                              "it cannot be that model's weights")


def patch_grid(config: ViTConfig) -> tuple[int, int]:
    """The (h, w) patch grid of a config: what `load_pretrained(..., source_grid=)` needs for weights of it."""
    H, W = to_2tuple(config.img_size)
    return H // config.patch_size, W // config.patch_size


def load_pretrained(
    model: VisionTransformer,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    source_grid: tuple[int, int] | None = None,
    require_head: bool = False,
) -> PretrainedInfo:
    """Load weights of any recognised format into `model`, adapting them to its grid, channels and head.

    source: a file, a folder, "hf-hub:ORG/REPO", or a state dict. Returns the source's metadata (empty for a
    state dict). The head is kept only where its shape matches; otherwise the model's own freshly
    initialised head stays. source_grid: the checkpoint's patch grid, for non-square grids the file's
    metadata does not give. require_head: the weights are the model's classifier (their metadata gave its
    class count), so its head tensors must be among them, in the model's shapes: a CheckpointError otherwise.
    """
    if isinstance(source, Mapping):
        state, info = dict(source), PretrainedInfo()
    else:
        state, info = read_pretrained(source)
    try:
        check_tensors(state)
    except CheckpointError as e:
        raise e if isinstance(source, Mapping) else CheckpointError(f"{source}: {e}") from e
    if source_grid is None and info.config is not None:
        source_grid = patch_grid(info.config)
    try:
        converted = to_vit_state_dict(state)
        state = adapt_state_dict(converted, model, source_grid)
        # A headless checkpoint (transformers ViTModel, big_vision without head) leaves the model's new head.
        check_state_dict(state, model, allow_missing=HEAD_KEYS)
        if require_head:  # after the checks above: another architecture is named as such, not by its head
            check_head(converted, model)
    except CheckpointError as e:
        if isinstance(source, Mapping):
            raise
        raise CheckpointError(f"{source}: {e}") from e  # name the file
    except (RuntimeError, IndexError, TypeError) as e:  # tensors too malformed for the converters' reshapes
        where = "" if isinstance(source, Mapping) else f"{source}: "
        raise CheckpointError(f"{where}the {detect_format(state)} checkpoint's tensors cannot be converted to "
                              f"this model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    model.load_state_dict(state, strict=False)  # strictness checked above, with clearer messages
    return info

