"""Evaluate a checkpoint: metrics and report.json, pictures, single-image prediction, export.

    python evaluate.py runs/digits/best.safetensors --dataset digits --output runs/digits/eval
    python evaluate.py runs/digits                  # its best.safetensors, on the run's own validation data
    python evaluate.py last.ckpt --data-dir photos/ --attention-maps 8     # photos/CLASS/*.jpg, every image
    python evaluate.py best.safetensors --predict cat.jpg dog.png
    python evaluate.py best.safetensors --export onnx --output exported/

A checkpoint carries its model config, preprocessing and class names (`vit.save_pretrained`, last.ckpt). Other
weight files (timm, torchvision, Hugging Face, JAX .npz) need `--model NAME`; a registered name or hf-hub:ORG/REPO
downloads hub weights. Reads top to bottom: parse, load model, load data, run it over them, report, pictures.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data, sources, transforms
from .errors import CheckpointError, ConfigError, DataError, VitError
from .eval_views import black, check_shift, predict_logits
from .metrics import ClassificationMetrics
from .precision import PRECISIONS, autocast, keep_freed_cpu_memory, resolve_device, resolve_precision
from .runs import BEST, LAST, atomic_write_text, find_training_config, output_folder

log = logging.getLogger("vit.evaluate")

EXPORT_FORMATS = ("onnx", "torchscript", "exported-program")
# Train.py's run folder holds these; a folder given as CHECKPOINT is searched for them in this order.
CHECKPOINT_FILES = (BEST, LAST)
IMAGENET_CLASSES = 1000


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default where it has one worth showing (not None, '' or False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == "":  # 0 is worth showing
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="best.safetensors, last.ckpt, a run folder holding one, any weights file "
                   "vit.weights reads (with --model), a registered model name or hf-hub:ORG/REPO")
    p.add_argument("--model", default=None, help="registered architecture for weights files without a config")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help=f"named dataset (as train.py): {', '.join(data.DATASETS)}, hf:NAME or wds:PATTERN; 'folder' "
                   "is train.py's split of --data-dir")
    g.add_argument("--data-dir", default="", help="dataset root; alone, an ImageFolder tree ROOT/CLASS/*.jpg "
                   "evaluated whole (or its val/ folder where ROOT has train/ and val/)")
    g.add_argument("--split", choices=("val", "test"), default="val",
                   help="named datasets: val is digits' held-out 20%% or the official test set; test the same")
    g.add_argument("--val-size", type=float, default=None,
                   help="--dataset folder: train.py's held-out carve (default: the run's, else 0.1)")
    g.add_argument("--split-seed", type=int, default=None,
                   help="--dataset folder: train.py's seed for the carve (default: the run's, else 0)")
    g.add_argument("--val-split", default=None, help="hf:/wds: train.py's --val-split (default: the run's, else '')")
    g.add_argument("--image-key", default=None, help="hf:/wds: train.py's --image-key (default: the run's, else '')")
    g.add_argument("--label-key", default=None, help="hf:/wds: train.py's --label-key (default: the run's, else '')")
    g.add_argument("--on-corrupt", choices=("error", "skip"), default="error",
                   help="an unreadable image stops evaluation, or is skipped and counted in the report")
    g.add_argument("--workers", type=int, default=2, help="DataLoader workers for images read from disk")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--precision", choices=PRECISIONS, default="auto", help="autocast dtype (auto: per device)")
    g.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    g.add_argument("--eval-hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="score each image with its mirror image too, the two logits averaged (test-time flip; "
                        "default: as the run was trained, train.py --eval-hflip, else off)")
    g.add_argument("--eval-shift", type=int, default=None, metavar="PIXELS",
                   help="score each image moved this many pixels down-right and up-left too, the border black, the "
                        "logits averaged (with --eval-hflip each view mirrored too; default: as the run used it, "
                        "train.py --eval-shift, off where the run was too short for crops, else 0)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model with its weights frozen (inductor): 1.2-1.3x the eager model's bf16 "
                        "speed on CPU after 20-60 s of compiling, so worth it for thousands of images")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("outputs")
    g.add_argument("--output", default=None, help="output folder (default: runs/eval/CHECKPOINT_NAME)")
    g.add_argument("--attention-maps", type=int, default=0, metavar="N",
                   help="write N attention-rollout overlays to OUTPUT/attention/")
    g.add_argument("--predict", nargs="+", default=None, metavar="IMAGE", help="print top-k for image files")
    g.add_argument("--topk", type=int, default=5, help="classes printed per image by --predict")
    g.add_argument("--export", choices=EXPORT_FORMATS, default=None,
                   help="write the model in this format to OUTPUT and check it against PyTorch")
    args = p.parse_args(argv)
    if min(args.batch_size, args.topk) < 1 or min(args.attention_maps, args.workers, args.eval_shift or 0) < 0:
        p.error("--batch-size and --topk must be positive; --attention-maps, --workers and --eval-shift non-negative")
    if args.val_size is not None and not (math.isfinite(args.val_size) and args.val_size >= 0):
        p.error(f"--val-size must be a finite number >= 0 (a fraction below 1, or a count), got {args.val_size}")
    if args.split_seed is not None and not 0 <= args.split_seed < 2**63:
        p.error(f"--split-seed must be in [0, 2**63), got {args.split_seed}")
    if args.dataset == "folder" and not args.data_dir:
        p.error("--dataset folder needs --data-dir")
    if args.dataset:
        try:
            sources.check_dataset(args.dataset)
        except ConfigError as e:
            p.error(str(e))
    return args


# --------------------------------------------------------------------------------------------------------
# Model


def check_trained_head(path: Path, model) -> None:
    """Weights without a model config, named with --model, must hold the model's head in its shape: create_model
    keeps a fresh head where such a file has none (a backbone to fine-tune), and scored, it would pass for a trained
    one at ~1/K accuracy. Reads the file again: only on this path, whose files carry no metadata to ask."""
    from .weights import HEAD_KEYS, read_pretrained, to_vit_state_dict

    state, info = read_pretrained(path)
    if info.config is not None:  # create_model held the file to the head its config describes
        return
    state, target = to_vit_state_dict(state), model.state_dict()
    wrong = [f"no {k}" if k not in state else f"{k} of shape {tuple(state[k].shape)}, not {tuple(target[k].shape)}"
             for k in HEAD_KEYS if k in target and (k not in state or state[k].shape != target[k].shape)]
    if wrong:
        raise CheckpointError(f"{path} has {', '.join(wrong)} for a {model.num_classes}-class head: scored with a "
                              "freshly initialised head it would pass for a trained classifier. Evaluate a "
                              "classifier's weights, or train this backbone's head first (train.py --pretrained)")


def load_model(checkpoint: str, model_name: str | None = None):
    """A model with weights, `.preprocess` and (where the file has them) `.class_names`, from CHECKPOINT."""
    from .registry import create_model, get_entry, list_models, preprocess_for
    from .weights import read_stored_metadata

    path = Path(checkpoint)
    if path.is_dir():  # a train.py run folder; any other folder (a hub snapshot) goes to vit.weights as it is
        path = next((path / f for f in CHECKPOINT_FILES if (path / f).is_file()), path)
    if path.exists():
        try:
            model = create_model(model_name, pretrained=str(path))
        except ConfigError as e:
            # Asked only on failure (a second read of a large file costs seconds): without a name, weights that
            # say nothing of their architecture are the reason, and the command line is the way out.
            info = read_stored_metadata(path) if model_name is None else None
            if info is not None and info.config is None and info.architecture is None:
                raise CheckpointError(f"{path} carries no model config: name its architecture with --model NAME "
                                      "(see vit.list_models())") from e
            raise
    elif checkpoint.startswith("hf-hub:"):
        model = create_model(model_name, pretrained=checkpoint)
    elif checkpoint in list_models():
        model = create_model(checkpoint, pretrained=True)
    else:
        close = difflib.get_close_matches(checkpoint, list_models(), n=3, cutoff=0.8)
        raise CheckpointError(f"no checkpoint at {checkpoint!r}: not a file or folder, not a registered model name "
                              "and not hf-hub:ORG/REPO" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    if model.num_classes == 0:
        raise CheckpointError(f"{checkpoint} has no classifier head (num_classes=0): nothing to evaluate")
    if path.is_file() and model_name is not None:
        check_trained_head(path, model)
    if model.class_names is None and model.num_classes == IMAGENET_CLASSES:
        # ImageNet-1k heads (timm, torchvision, HF) come without names: use the WordNet ids that name the
        # folders of an ImageNet val tree, in the standard sorted order.
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        model.class_names = [info.index_to_label_name(i) for i in range(IMAGENET_CLASSES)]
    if model.preprocess is None:  # e.g. train.py's last.ckpt: its training config names the registered model
        name = model_name or (find_training_config(path) or {}).get("model")
        if name is None:
            raise CheckpointError(f"{checkpoint} carries no preprocessing; name the architecture with --model")
        model.preprocess = preprocess_for(get_entry(name).preprocess, model.config)
    return model


def fill_data_args(args) -> None:
    """Without --dataset/--data-dir, evaluate on the run's own validation data (train.py's config); the carve's
    --val-size/--split-seed, --eval-hflip and --eval-shift default to the run's: CHECKPOINT needs nothing else."""
    needs_data = not (args.dataset or args.data_dir or args.predict or args.export)
    carved = args.dataset == "folder" or sources.is_reader_scheme(args.dataset)
    source_args = ("val_size", "split_seed", "val_split", "image_key", "label_key")
    fills_source = needs_data or (carved and None in [getattr(args, k) for k in source_args])
    follows_run = fills_source or args.eval_hflip is None or args.eval_shift is None
    config = (find_training_config(args.checkpoint) or {}) if follows_run else {}
    if args.eval_hflip is None:
        args.eval_hflip = bool(config.get("eval_hflip", False))
    if args.eval_shift is None:
        args.eval_shift = int(config.get("eval_shift", 0))
    if fills_source:
        if needs_data:
            if not config:
                raise ConfigError(f"nothing to do: {args.checkpoint} does not name the data it was trained on; give "
                                  "--dataset NAME or --data-dir ROOT to evaluate, --predict IMAGE, or --export")
            args.dataset, args.data_dir = config["dataset"], config.get("data_dir", "")
            print(f"no --dataset given: using the run's, {args.dataset} {args.data_dir}".rstrip(), file=sys.stderr)
        args.val_size = args.val_size if args.val_size is not None else config.get("val_size", 0.1)
        args.split_seed = args.split_seed if args.split_seed is not None else config.get("split_seed", 0)
        for k in ("val_split", "image_key", "label_key"):
            setattr(args, k, getattr(args, k) if getattr(args, k) is not None else config.get(k, ""))


def checkpoint_name(checkpoint: str) -> str:
    """A folder name for the default output: the run's name for train.py's files, else the file's stem."""
    path = Path(checkpoint)
    stem = path.name if path.is_dir() else path.parent.name if path.name in CHECKPOINT_FILES else path.stem
    return re.sub(r"[^\w.-]+", "_", stem or "model")


# --------------------------------------------------------------------------------------------------------
# Data


@dataclass
class EvalData:
    """What to evaluate: in-memory uint8 tensors or image files, with labels in the model's class indices."""

    source: data.TensorData | data.FileData | data.StreamData  # or hf: rows (FileData's interface)
    description: str
    skipped: int = 0  # unreadable images dropped while decoding into memory (--on-corrupt skip)


def load_eval_data(args, model) -> EvalData:
    """The split named by --dataset/--data-dir, labels remapped from folder/dataset names to the model's."""
    C, H, W = model.preprocess.input_size
    skipped = 0
    if sources.is_reader_scheme(args.dataset):  # small images decoded as train.py does
        source = sources.load_dataset(args.dataset, args.split, val_size=args.val_size, split_seed=args.split_seed,
                                    img_size=H if H == W else 0, channels=C, on_corrupt=args.on_corrupt,
                                    val_split=args.val_split or "", image_key=args.image_key or "",
                                    label_key=args.label_key or "")
        description = f"{args.dataset} ({args.split})"
        skipped = getattr(source, "skipped", 0)
    elif args.dataset == "folder":  # its files: decoded below if the model's images are small
        source = sources.load_dataset("folder", args.split, data_dir=args.data_dir, val_size=args.val_size,
                                      split_seed=args.split_seed, data_mode="loader")
        description = f"{args.data_dir} ({args.split}, train.py's split)"
    elif args.dataset:
        source = sources.load_dataset(args.dataset, args.split, data_dir=args.data_dir)
        description = f"{args.dataset} ({args.split})"
    else:
        root = Path(args.data_dir)
        if (root / "train").is_dir() and (root / "val").is_dir():
            source = data.folder_split(root, args.split)
            description = f"{root} ({'test' if args.split == 'test' and (root / 'test').is_dir() else 'val'}/)"
        else:  # a single tree: every image in it
            source = data.scan_image_folder(root)
            description = f"{root} (every image)"
    # Small images are decoded as train.py decodes them (resized to a square, no crop); large ones go through
    # the checkpoint's own preprocessing (resize by crop_pct, centre crop, its interpolation and mean/std).
    if isinstance(source, data.FileData) and max(H, W) <= data.MEMORY_MAX_SIDE:
        decoded = data.decode_folder(source, size=H, channels=C, on_corrupt=args.on_corrupt)
        source, skipped = decoded, len(source) - len(decoded)
    source = remap_labels(source, model)
    return EvalData(source, f"{description}, {len(source)} images", skipped)


def class_index(data_classes: list[str], model) -> list[int]:
    """For each dataset class, the model's class index with that name."""
    names = model.class_names
    if names is None:
        if len(data_classes) != model.num_classes:
            raise DataError(f"the data has {len(data_classes)} classes {data_classes[:10]}, the model "
                            f"{model.num_classes} outputs, and the checkpoint carries no class names to match them by")
        log.warning("the checkpoint carries no class names: assuming the data's classes in sorted order")
        model.class_names = list(data_classes)
        return list(range(len(data_classes)))
    position = {n: i for i, n in enumerate(names)}
    unknown = [c for c in data_classes if c not in position]
    if unknown:
        raise DataError(f"data classes {unknown[:10]}{' ...' if len(unknown) > 10 else ''} are not among the "
                        f"checkpoint's {len(names)} classes ({', '.join(names[:10])}{' ...' if len(names) > 10 else ''})")
    return [position[c] for c in data_classes]


def remap_labels(source, model):
    index = class_index(source.classes, model)
    if index == list(range(len(index))):
        return source
    if isinstance(source, data.TensorData):
        return data.TensorData(source.images, torch.tensor(index)[source.labels], list(model.class_names))
    return source.relabeled(index, list(model.class_names))


def batches(source, model, args, device: torch.device):
    """Yield normalised (x, y, skipped) batches on `device`."""
    pre = model.preprocess
    if isinstance(source, data.TensorData):
        normalize = data.Normalize(pre.mean, pre.std, channels=pre.input_size[0], size=pre.input_size[1:],
                                   device=device)
        for i in range(0, len(source), args.batch_size):
            x = source.images[i:i + args.batch_size].to(device, non_blocking=True)
            yield normalize(x), source.labels[i:i + args.batch_size].to(device), 0
        return
    transform = transforms.file_transforms(pre, train=False)
    loader = data.eval_loader(source, transform, channels=pre.input_size[0], on_corrupt=args.on_corrupt,
                              batch_size=args.batch_size, workers=args.workers, rank=0, world=1,
                              pin_memory=device.type == "cuda")
    for x, y, skipped in loader:
        if x is not None:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), skipped
        else:
            yield None, None, skipped


def example_images(source, model, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen images, normalised as for evaluation (CPU), with their labels."""
    pre = model.preprocess
    if isinstance(source, data.TensorData):
        normalize = data.Normalize(pre.mean, pre.std, channels=pre.input_size[0], size=pre.input_size[1:],
                                   device=torch.device("cpu"))
        idx = torch.tensor(indices)
        return normalize(source.images[idx]), source.labels[idx]
    if isinstance(source, data.StreamData):
        raise ConfigError("--attention-maps picks images by index, which streamed wds: shards do not offer; "
                          "evaluate a model of at most 64 px (decoded into memory), or the same images as hf: or a "
                          "folder")
    transform = transforms.file_transforms(pre, train=False)
    mode = "L" if pre.input_size[0] == 1 else "RGB"
    items = [source.item(i) for i in indices]
    images = [transform(data.load_image(src, mode, name)) for src, _, name in items]
    return torch.stack(images), torch.tensor([label for _, label, _ in items])


# --------------------------------------------------------------------------------------------------------
# Running the model


@torch.no_grad()
def run_evaluation(model, source, args, device, precision) -> dict:
    from tqdm import tqdm

    metrics = ClassificationMetrics(model.num_classes, model.class_names)
    skipped = 0
    n_batches = math.ceil(len(source) / args.batch_size)
    progress = tqdm(total=len(source), unit="img", desc="evaluating", disable=args.no_progress or None,
                    file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # Frozen weights become constants that inductor prepacks for oneDNN; the last, smaller batch compiles
    # once more (dynamic=False: a graph per shape, no slower dynamic-shape kernels).
    forward, frozen = model, contextlib.nullcontext()
    if args.compile:
        import torch._inductor.config as inductor_config

        forward, frozen = torch.compile(model, dynamic=False), inductor_config.patch(freezing=True)
    fill = black(model.preprocess).to(device)
    start = time.perf_counter()
    for x, y, dropped in batches(source, model, args, device):
        skipped += dropped
        if x is not None:
            with autocast(precision, device), frozen:
                logits = predict_logits(forward, x, args.eval_hflip, args.eval_shift, fill)
            metrics.update(logits.float(), y)
            progress.update(len(y) + dropped)
        else:
            progress.update(dropped)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    progress.close()
    if metrics.num_images == 0:
        raise DataError(f"no images were evaluated ({skipped} unreadable)")
    report = metrics.compute()
    report.update(
        images_per_second=metrics.num_images / seconds,  # end to end: reading, preprocessing and the model
        seconds=seconds,
        skipped_images=skipped,
        batches=n_batches,
        reliability=metrics.reliability(),
    )
    return report


def print_summary(report: dict, header: list[tuple[str, str]], max_classes: int = 20) -> None:
    rows = header + [
        ("top-1", f"{100 * report['top1']:.2f} %"),
        ("top-5", f"{100 * report['top5']:.2f} %"),
        ("loss", f"{report['loss']:.4f}"),
        ("ECE (15 bins)", f"{report['ece']:.4f}"),
        ("images", f"{report['num_images']}" + (f" ({report['skipped_images']} unreadable, skipped)"
                                                 if report["skipped_images"] else "")),
        ("images/s", f"{report['images_per_second']:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    per_class = [(n, r) for n, r in report["per_class"].items() if r["support"] > 0]
    title = "per class"
    if len(per_class) > max_classes:  # e.g. ImageNet: show the classes that need attention
        per_class = sorted(per_class, key=lambda nr: nr[1]["recall"])[:max_classes]
        title = f"per class (the {max_classes} with the lowest recall)"
    name_w = max([len("class")] + [len(n) for n, _ in per_class])
    print(f"\n{title}:\n{'class':<{name_w}}  precision  recall  support")
    for name, r in per_class:
        print(f"{name:<{name_w}}  {r['precision']:9.3f}  {r['recall']:6.3f}  {r['support']:7d}")


@torch.no_grad()
def write_attention_maps(model, source, n: int, out_dir: Path, device, chunk: int = 32) -> list[Path]:
    """N overlays of attention rollout, for images spread evenly over the evaluation set."""
    from .plots import plot_attention_overlay
    from .rollout import rollout_heatmap

    n = min(n, len(source))
    indices = sorted({round(i * (len(source) - 1) / max(n - 1, 1)) for i in range(n)})
    pre = model.preprocess
    mean, std = torch.tensor(pre.mean).view(-1, 1, 1), torch.tensor(pre.std).view(-1, 1, 1)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    paths = []
    for start in range(0, len(indices), chunk):  # explicit attention matrices are big: a few images at a time
        x, y = example_images(source, model, indices[start:start + chunk])
        probs = model(x.to(device)).float().softmax(dim=1).cpu()
        heat = rollout_heatmap(model, x.to(device)).cpu()
        pictures = (x * std + mean).permute(0, 2, 3, 1)  # back to [0, 1] pixels, (B, H, W, C)
        for i, label in enumerate(y.tolist()):
            conf, pred = probs[i].max(dim=0)
            pred, true = names[int(pred)], names[label]
            title = f"predicted: {class_description(pred)} ({100 * float(conf):.0f}%)   true: {class_description(true)}"
            path = out_dir / f"{start + i:03d}_{safe_name(true)}_as_{safe_name(pred)}.png"
            plot_attention_overlay(pictures[i].numpy(), heat[i].numpy(), title, path, correct=pred == true)
            paths.append(path)
    return paths


def safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name)


@torch.no_grad()
def predict(model, paths: list[str], k: int, device, precision, hflip: bool = False, shift: int = 0) -> list[dict]:
    """Top-k classes with probabilities for image files, preprocessed as the checkpoint says."""
    pre = model.preprocess
    transform = transforms.file_transforms(pre, train=False)
    mode = "L" if pre.input_size[0] == 1 else "RGB"
    x = torch.stack([transform(data.load_image(p, mode)) for p in paths]).to(device)
    with autocast(precision, device):
        probs = predict_logits(model, x, hflip, shift, black(pre).to(device)).float().softmax(dim=1).cpu()
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    results = []
    for path, p, i in zip(paths, top.values.tolist(), top.indices.tolist()):
        results.append({"image": path, "top": [{"class": names[c], "probability": q} for c, q in zip(i, p)]})
        print(path)
        for rank, (c, q) in enumerate(zip(i, p), 1):
            print(f"  {rank}. {class_description(names[c]):<40} {100 * q:6.2f} %")
    return results


def class_description(name: str) -> str:
    """A WordNet id (ImageNet folder name) with its words, e.g. 'n02123045 (tabby, tabby cat)'; else the name."""
    if re.fullmatch(r"n\d{8}", name):
        from timm.data import ImageNetInfo

        return f"{name} ({ImageNetInfo().label_name_to_description(name)})"
    return name


# --------------------------------------------------------------------------------------------------------
# Entry point


def views_said(hflip: bool, shift: int) -> str:
    """How each image is scored, for the printed summary."""
    views = (["its mirror image"] if hflip else []) + ([f"itself moved {shift} px both ways"] if shift else [])
    return f", each image averaged with {' and '.join(views)}" if views else ""


def evaluate_dataset(model, args, out: Path, device, precision) -> dict:
    """Metrics over --dataset/--data-dir, report.json, the pictures and the printed summary, in `out` (made and
    checked by `run`)."""
    from .plots import plot_confusion_matrix, plot_reliability

    evaluated = load_eval_data(args, model)
    print(f"evaluating {args.checkpoint} on {evaluated.description} ({device}, {precision})", file=sys.stderr)
    report = run_evaluation(model, evaluated.source, args, device, precision)
    report["skipped_images"] += evaluated.skipped
    report.update(checkpoint=str(args.checkpoint), data=evaluated.description, device=str(device), precision=precision,
                  batch_size=args.batch_size, eval_hflip=args.eval_hflip, eval_shift=args.eval_shift,
                  model_config=model.config.to_dict())
    write_json(out / "report.json", report)
    plot_confusion_matrix(report["confusion_matrix"], report["class_names"], out / "confusion.png")
    plot_reliability(report["reliability"], report["ece"], out / "reliability.png")
    if args.attention_maps:
        write_attention_maps(model, evaluated.source, args.attention_maps, out / "attention", device)
    print_summary(report, [("checkpoint", str(args.checkpoint)), ("data", evaluated.description),
                           ("device", f"{device}, {precision}, batch {args.batch_size}"
                                      + views_said(args.eval_hflip, args.eval_shift))])
    print(f"\nwrote {out / 'report.json'}, confusion.png, reliability.png"
          + (f", attention/ ({args.attention_maps} overlays)" if args.attention_maps else ""))
    return report


def run(args: argparse.Namespace) -> dict:
    """Everything main() does, raising VitError subclasses instead of exiting; returns the report."""
    fill_data_args(args)
    device = resolve_device(args.device)
    out = Path(args.output or Path("runs") / "eval" / checkpoint_name(args.checkpoint))
    # The output folder is checked before the model is loaded and the data read (and removed again if it was
    # made here and a failure leaves it empty); --predict alone writes nothing.
    writes = bool(args.dataset or args.data_dir or args.export)
    with output_folder(out) if writes else contextlib.nullcontext():
        model = load_model(args.checkpoint, args.model).to(device).eval()
        check_shift(args.eval_shift, tuple(model.preprocess.input_size[1:]))
        precision = resolve_precision(args.precision, device, model.embed_dim, training=False)
        report: dict = {}
        if args.predict:
            report["predictions"] = predict(model, args.predict, args.topk, device, precision, args.eval_hflip,
                                            args.eval_shift)
        if args.dataset or args.data_dir:
            report |= evaluate_dataset(model, args, out, device, precision)
        if args.export:
            from .export import TOLERANCE, export_model

            path, diff = export_model(model, args.export, out)  # fp32 copy on the CPU
            print(f"{args.export}: wrote {path}; max abs difference vs PyTorch on random input {diff:.2e} "
                  f"(tolerance {TOLERANCE:.0e})")
            report["export"] = {"format": args.export, "path": str(path), "max_abs_diff": diff}
    return report


def write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def main(argv=None) -> int:
    """`vit-eval`, `python evaluate.py`: 0, or a VitError's message and exit 2 (the report: run(parse_args(argv)))."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vit").setLevel(logging.INFO)  # ours, not the exporters' chatter
    args = parse_args(argv)
    keep_freed_cpu_memory()  # process-wide: no fresh pages faulted in per batch (vit/precision.py)
    try:
        run(args)
    except VitError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
