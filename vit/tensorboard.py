"""TensorBoard event files for a training run (`train.py --tensorboard`, or `--log-dir DIR`); rank 0 writes.

Every chart's x axis is the optimizer step:
- each step: loss/train_step, lr, speed/images_per_s (the epoch's running mean, as the progress bar shows it);
- each epoch: loss/train, loss/val, top1/val (and loss/ema_val, top1/ema_val with --ema-decay), speed/epoch_s
  (training and evaluation), epoch, data/skipped_images (where images were unreadable);
- at the start: the run's TrainConfig and recipe as hyperparameters (the HPARAMS tab);
- at the end of a run that completes: the last evaluation's confusion matrix (an image, and a table of counts
  up to TABLE_MAX_CLASSES classes) and attention-rollout overlays of ROLLOUT_IMAGES validation images.

The event files go in the run folder, or in LOG_DIR/RUN (RUN: the run folder's name), so that
`tensorboard --logdir LOG_DIR` lists several runs side by side. A resumed run starts a new event file whose first
record tells TensorBoard to drop every step after last.ckpt's: the steps an interrupted process logged past its
checkpoint are trained again, and each step is shown once.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, OutputError, VitError

log = logging.getLogger(__name__)

ROLLOUT_IMAGES = 4  # attention-rollout overlays logged at the end, spread evenly over the validation split
TABLE_MAX_CLASSES = 20  # the confusion matrix's counts as a text table up to this many classes
FLUSH_S = 30  # the writer's own flush interval; last.ckpt saves flush as well (Board.flush)
INSTALL = "pip install 'vit[tensorboard]' (or: pip install tensorboard)"


def enabled(cfg) -> bool:
    """Whether the run logs to TensorBoard: --tensorboard, or a --log-dir given."""
    return bool(cfg.tensorboard or cfg.log_dir)


def folder_for(cfg, out: Path) -> Path:
    """Where the run's event files go: the run folder, or LOG_DIR/<the run folder's name>."""
    return Path(cfg.log_dir) / Path(out).resolve().name if cfg.log_dir else Path(out)


def require() -> None:
    """A ConfigError now, before data and model are built, if the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
    except ImportError as e:
        raise ConfigError(f"--tensorboard and --log-dir need the tensorboard package: {INSTALL}") from e


class Board:
    """One run's SummaryWriter. `resume_step`: the step last.ckpt holds, for a resumed run (None: a fresh one)."""

    def __init__(self, folder: Path, resume_step: int | None = None):
        require()
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        with self._writing():
            self.folder.mkdir(parents=True, exist_ok=True)
            # purge_step: the file opens with a restart marker at that step; readers drop what earlier files
            # logged from it on.
            self.writer = SummaryWriter(str(self.folder), flush_secs=FLUSH_S,
                                        purge_step=None if resume_step is None else resume_step + 1)
        self.confusion: torch.Tensor | None = None  # the last evaluation's (K, K) counts, and its step
        self.confusion_step = 0

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except OSError as e:  # a full disk or an unwritable folder: name the folder, not the writer's internals
            raise OutputError(f"cannot write TensorBoard events in {self.folder}: {e.strerror or e}") from e

    def hparams(self, config: dict, recipe: str) -> None:
        """The run's settings, for the HPARAMS tab (its metrics are the scalars logged here)."""
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        with self._writing():
            self.writer.file_writer.add_summary(hparams_pb({"recipe": recipe or "", **config}))

    def step(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        """One event for the step's three scalars: 0.19 ms a step here, against 0.56 ms for three add_scalar."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = {"loss/train_step": loss, "lr": lr, "speed/images_per_s": images_per_s}
        with self._writing():
            self.writer.file_writer.add_summary(
                Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()]), step)

    def epoch(self, row: dict, epoch_s: float, confusion: torch.Tensor | None = None) -> None:
        """A metrics.jsonl row (vit/train.py's finish_epoch), the epoch's seconds, and its confusion matrix."""
        names = {"train_loss": "loss/train", "val_loss": "loss/val", "val_top1": "top1/val",
                 "ema_val_loss": "loss/ema_val", "ema_val_top1": "top1/ema_val", "epoch": "epoch",
                 "skipped_images": "data/skipped_images"}
        step = row["step"]
        with self._writing():
            for key, tag in names.items():
                if key in row:
                    self.writer.add_scalar(tag, row[key], step)
            self.writer.add_scalar("speed/epoch_s", epoch_s, step)
        if confusion is not None:
            self.confusion, self.confusion_step = confusion.cpu(), step

    def end(self, model, val, classes: list[str], device: torch.device, step: int) -> None:
        """The last evaluation's confusion matrix (at its step), and attention rollouts of a few validation
        images by the final weights (at `step`)."""
        from .plots import plot_confusion_matrix

        with tempfile.TemporaryDirectory() as tmp, self._writing():
            if self.confusion is not None:
                step = self.confusion_step
                png = plot_confusion_matrix(self.confusion.numpy(), classes, Path(tmp) / "confusion.png",
                                            title=f"Confusion matrix, step {step}")
                self.writer.add_image("val/confusion_matrix", read_png(png), step, dataformats="HWC")
                if len(classes) <= TABLE_MAX_CLASSES:
                    self.writer.add_text("val/confusion_matrix", confusion_table(self.confusion, classes), step)
            for i, png in enumerate(rollouts(model, val, classes, device, Path(tmp))):
                self.writer.add_image(f"attention_rollout/{i}", read_png(png), step, dataformats="HWC")

    def flush(self) -> None:
        with self._writing():
            self.writer.flush()

    def close(self) -> None:
        with self._writing():
            self.writer.close()


def confusion_table(confusion: torch.Tensor, classes: list[str]) -> str:
    """Counts as a markdown table (TensorBoard's TEXT tab renders it): rows true classes, columns predicted."""
    names = [c.replace("|", "\\|") for c in classes]
    lines = ["| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |"
              for name, row in zip(names, confusion.tolist())]
    return "\n".join(lines)


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))  # (H, W, 3) uint8


def rollouts(model, val, classes: list[str], device: torch.device, folder: Path) -> list[Path]:
    """evaluate.py's attention-rollout overlays (input | heat map, predicted and true class in the title) for
    ROLLOUT_IMAGES validation images spread evenly over the split, with the model in eval mode."""
    from . import data
    from .evaluate import write_attention_maps

    n = min(ROLLOUT_IMAGES, len(val))
    if n == 0:
        return []
    idx = sorted({round(i * (len(val) - 1) / max(n - 1, 1)) for i in range(n)})
    if isinstance(val, data.TensorData):  # on the training device maybe; the overlays are drawn from CPU copies
        chosen = torch.tensor(idx, device=val.images.device)
        val = data.TensorData(val.images[chosen].cpu(), val.labels[chosen].cpu(), classes)
    else:
        val = data.FileData([val.samples[i] for i in idx], classes)
    was_training = model.training
    model.eval()  # no dropout, drop-path or patch dropout: the rollout reads every patch
    try:
        return write_attention_maps(model, val, len(val), folder, device)
    except VitError as e:  # e.g. an unreadable image among the chosen: the run's other outputs stand
        log.warning("no attention rollouts in TensorBoard: %s", e)
        return []
    finally:
        model.train(was_training)
