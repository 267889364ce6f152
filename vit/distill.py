"""Knowledge distillation from a teacher (DeiT, Touvron et al., 2021, section 5): the teacher and the loss.

    teacher, view = load_teacher("runs/convnet/best.safetensors", student, device)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), teacher, view, kind="hard", alpha=0.5, tau=1.0)
    student.set_distilled_training()  # a distilled student returns (cls, dist) logits while training
    loss = loss_fn(student(x), y, x)

The teacher is any model this package loads (a checkpoint, a folder, hf-hub:ORG/REPO), a small convnet trained on
the student's data (vit/convnet.py's file), or a timm model with its pretrained weights (a convnet, as DeiT's
RegNetY-16GF). It runs in evaluation mode without gradients, in the
precision of the step around it (under its autocast), on the inputs the student sees, Mixup included,
converted to the teacher's own normalisation, channel count and image size where they differ. A distilled
student (`vit.deit.VisionTransformerDistilled`: create_model(NAME, distilled=True)) learns the teacher through
its distillation head and the labels through its [CLS] head; any other student learns both through its one head.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .convnet import is_convnet_file, load_convnet
from .errors import CheckpointError, ConfigError
from .preprocess import Preprocess


class TeacherView(nn.Module):
    """The student's normalised batch (B, Cs, Hs, Ws) as the teacher wants it: back to pixels, to the
    teacher's channels (grey repeated to RGB, RGB averaged to grey), resized (bilinear, antialiased) and
    normalised with its mean and std. The identity where the two preprocessings agree."""

    def __init__(self, student: Preprocess, teacher: Preprocess):
        super().__init__()
        self.channels, self.size = teacher.input_size[0], tuple(teacher.input_size[1:])
        self.same = (student.input_size, student.mean, student.std) == (teacher.input_size, teacher.mean, teacher.std)
        as_column = lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        self.register_buffer("s_mean", as_column(student.mean), persistent=False)
        self.register_buffer("s_std", as_column(student.std), persistent=False)
        self.register_buffer("t_mean", as_column(teacher.mean), persistent=False)
        self.register_buffer("t_std", as_column(teacher.std), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            return x
        x = x * self.s_std + self.s_mean  # pixels in [0, 1]
        if x.shape[1] != self.channels:
            x = x.mean(dim=1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return (x - self.t_mean) / self.t_std


def load_teacher(source: str, student: nn.Module, device: torch.device,
                 timm_pretrained: bool = False) -> tuple[nn.Module, TeacherView]:
    """The teacher (frozen, in evaluation mode, on `device`) and the view of the student's inputs it takes.

    source: weights this package loads (a file, a folder, hf-hub:ORG/REPO; a vit.convnet file), or with
    timm_pretrained a timm model name (hf-hub: names too) created by timm with its pretrained weights. Its
    classes must be the student's: by count, and by name where both carry names (`check_same_classes`).
    """
    if timm_pretrained:
        import timm
        from timm.data import resolve_data_config

        try:
            teacher = timm.create_model(source, pretrained=True)
        except RuntimeError as e:  # timm: "Unknown model (...)"
            raise ConfigError(f"--teacher {source!r} with --teacher-pretrained: {e}") from e
        except OSError as e:  # no hub, no cache
            raise CheckpointError(f"--teacher {source!r}: timm cannot fetch its pretrained weights: {e}") from e
        cfg = resolve_data_config({}, model=teacher)
        preprocess = Preprocess(cfg["input_size"], cfg["mean"], cfg["std"], cfg["interpolation"], cfg["crop_pct"])
    elif is_convnet_file(source):  # a convnet trained on the student's data (vit/convnet.py)
        teacher = load_convnet(source)
        preprocess = teacher.preprocess
    else:
        from .registry import create_model

        if not source.startswith("hf-hub:") and not Path(source).exists():
            raise ConfigError(f"--teacher {source!r} is neither a file, a folder nor hf-hub:ORG/REPO; for a timm "
                              "model name with its pretrained weights add --teacher-pretrained")
        teacher = create_model(pretrained=source)
        preprocess = teacher.preprocess
    classes = getattr(teacher, "num_classes", None)
    if classes != student.num_classes:
        raise ConfigError(f"--teacher {source} predicts {classes} classes, the student {student.num_classes}: "
                          "distillation needs a teacher trained on the student's classes")
    check_same_classes(source, getattr(teacher, "class_names", None), getattr(student, "class_names", None))
    if preprocess is None:
        raise CheckpointError(f"--teacher {source} says nothing of its preprocessing (input size, mean, std)")
    teacher.requires_grad_(False)
    return teacher.eval().to(device), TeacherView(student.preprocess, preprocess).to(device)


def check_same_classes(source: str, teacher: list[str] | None, student: list[str] | None) -> None:
    """Where both name their classes, the teacher's output i must be the student's class i: the same names in the
    same order (a teacher for cat/dog would otherwise teach a cow/emu student). A teacher without names (timm's
    pretrained models) is taken at its count."""
    if teacher is None or student is None or list(teacher) == list(student):
        return
    if sorted(teacher) == sorted(student):
        raise ConfigError(f"--teacher {source} names the student's classes in another order ({_names(teacher)}, the "
                          f"student {_names(student)}): its outputs would teach the wrong classes")
    other = [c for c in teacher if c not in set(student)]
    raise ConfigError(f"--teacher {source} was trained on other classes than the student's: {_names(other)} are not "
                      f"among the student's ({_names(student)}); distillation needs a teacher for the same task")


def _names(names: list[str], n: int = 10) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


class DistillationLoss:
    """DeiT's loss: (1 - alpha) * base(cls, labels) + alpha * distillation(dist, teacher).

    hard: cross-entropy of the distillation logits on the teacher's argmax (DeiT's best, alpha 0.5).
    soft: tau^2 * KL(softmax(teacher / tau) || softmax(dist / tau)), summed and divided by B x classes, as
    DeiT's code does. `outputs` is (cls, dist) from a distilled student, or one tensor from any other
    (then cls = dist).
    """

    def __init__(self, base: nn.Module, teacher: nn.Module, view: nn.Module, kind: str = "hard",
                 alpha: float = 0.5, tau: float = 1.0):
        if kind not in ("hard", "soft"):
            raise ConfigError(f"--distill must be hard or soft, got {kind!r}")
        self.base, self.teacher, self.view = base, teacher, view
        self.kind, self.alpha, self.tau = kind, alpha, tau

    def __call__(self, outputs, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        cls, dist = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        base = self.base(cls, targets)
        with torch.no_grad():
            teacher = self.teacher(self.view(inputs))
        if self.kind == "hard":
            distill = F.cross_entropy(dist, teacher.argmax(dim=1))
        else:
            T = self.tau
            distill = F.kl_div(F.log_softmax(dist / T, dim=1), F.log_softmax(teacher / T, dim=1),
                               reduction="sum", log_target=True) * (T * T) / dist.numel()
        return base * (1 - self.alpha) + distill * self.alpha
