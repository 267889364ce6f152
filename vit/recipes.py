"""Training hyperparameters in one place, and named recipes as data.

`TrainConfig` lists every hyperparameter with its unit; each field is also a `train.py` flag (`batch_size`
is `--batch-size`). A recipe is a docstring (command, hardware, time, accuracy measured) plus the fields it
changes from the defaults. Unknown fields are an error, in recipes as on the command line.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields

from .augment import check_policy
from .budget import parse_budget
from .convnet import parse_widths
from .data import DATASETS
from .errors import ConfigError, check_known_options
from .finetune import check_freeze
from .sources import check_dataset


FLOAT32_MAX = 3.4028234663852886e38


def _f(default, help: str, choices: tuple | None = None):
    """A config field with its flag's help text (and allowed values) stored as metadata."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    # ---- model
    model: str = _f("vit_nano_patch2_8", "registered model name (python -c 'import vit; print(vit.list_models())')")
    pretrained: str = _f("", "weights to start from: a .safetensors/.pth path or hf-hub:ORG/REPO ('' = random init)")
    img_size: int = _f(0, "input size in pixels (0 = the model's own)")
    num_classes: int = _f(0, "classifier classes (0 = the dataset's)")
    drop_path: float = _f(0.0, "stochastic depth rate at the last block (linear from 0)")
    patch_drop: float = _f(0.0, "fraction of patch tokens dropped per training image (PatchDropout; 0 = off)")
    patch_drop_end: float = _f(-1.0, "the fraction dropped at the plan's last step, moving linearly from "
                               "--patch-drop at its first: cheap steps early, the evaluated token count nearer "
                               "at the end (-1 = --patch-drop throughout)")
    res_start: int = _f(0, "training image size in pixels at the first step, growing in a line to the full size "
                        "(--img-size or the model's) by --res-end-frac of the steps, rounded down to whole patches: "
                        "cheap steps early (progressive resizing; memory mode; evaluation at the full size; "
                        "0 = the full size throughout)")
    res_end_frac: float = _f(0.75, "the share of the planned steps after which --res-start's run trains at the full "
                             "size")
    stem: str = _f("", "patch embedding: patch (one patchify conv) or conv (3x3 convolutions with BatchNorm and ReLU "
                   "first, Xiao et al., 2021), the same token grid ('' = the model's own)", ("", "patch", "conv"))
    distilled: bool = _f(False, "give the model DeiT's distillation token and second head, a student for --teacher "
                         "(the deit_*_distilled models have them)")
    # ---- fine-tuning and distillation (vit/finetune.py, vit/distill.py)
    freeze: str = _f("", "'backbone': train the head alone (linear probe); N: freeze the embeddings and blocks "
                     "0..N-1 ('' = train everything)")
    lora_rank: int = _f(0, "LoRA adapters of this rank (peft) on every block's attn.qkv, attn.proj, mlp.fc1, mlp.fc2; "
                        "all else frozen but the head; best.safetensors holds the merged weights (0 = off)")
    lora_alpha: float = _f(0.0, "LoRA scale numerator: adapters add (alpha / rank) B A x (0 = the rank, a scale of 1)")
    teacher: str = _f("", "distil from this teacher (DeiT): weights this package loads (file, folder, hf-hub:ORG/REPO), "
                      "or a timm model name with --teacher-pretrained ('' = none)")
    teacher_pretrained: bool = _f(False, "--teacher is a timm model name, built by timm with its pretrained weights")
    teacher_widths: str = _f("", "train a small convnet of these block widths (e.g. 32,128,128: vit/convnet.py) on the "
                             "training split first, for --teacher-epochs, and distil from it as from --teacher: its "
                             "minutes count in --budget; kept in the run folder as teacher.safetensors (memory mode; "
                             "'' = none)")
    teacher_epochs: int = _f(10, "epochs of --teacher-widths' convnet (SGD with its own schedule: vit.convnet); with "
                             "--budget at most this many")
    teacher_share: float = _f(0.15, "with --budget: the share of it --teacher-widths' convnet may take: as many of its "
                              "--teacher-epochs as fit, timed on its first steps before the model is chosen")
    distill: str = _f("", "DeiT's distillation loss: hard (cross-entropy on the teacher's argmax) or soft (KL at "
                      "--distill-tau); '' = hard when --teacher is given", ("", "hard", "soft"))
    distill_alpha: float = _f(0.5, "weight of the distillation term against the label term (DeiT: 0.5)")
    distill_tau: float = _f(1.0, "soft distillation's temperature (DeiT: 1.0)")
    # ---- data
    dataset: str = _f("digits", f"dataset: {', '.join(DATASETS)} ('folder' reads an ImageFolder tree at --data-dir); "
                      "hf:NAME, a Hugging Face dataset (hub name, save_to_disk folder, parquet files); "
                      "wds:PATTERN, WebDataset shards such as shards/train-{000000..000127}.tar")
    data_dir: str = _f("", "dataset root ('' = the dataset's default; required for folder)")
    val_split: str = _f("", "hf: the split to validate on; wds: a split of the shards' _info.json or a shard pattern "
                        "('' = a split named validation/val, else a carve by --val-size)")
    image_key: str = _f("", "hf: the image column; wds: the image member's extension ('' = found from the data)")
    label_key: str = _f("", "hf: the label column ('' = the ClassLabel one); wds: the label member's extension, or "
                        "json:FIELD for a field of KEY.json ('' = cls)")
    download: bool = _f(False, "let torchvision download cifar10/cifar100 into --data-dir")
    val_size: float = _f(0.1, "validation split carved from a single ImageFolder tree: fraction (<1) or count")
    split_seed: int = _f(0, "seed of that carve, apart from --seed: every run holds out the same images")
    data_mode: str = _f("auto", "memory: decoded uint8 tensors on the device, augmented in batches; "
                        "loader: DataLoader workers with timm transforms; auto: memory for small images",
                        ("auto", "memory", "loader"))
    on_corrupt: str = _f("skip", "unreadable images: skip them (counted in the log) or stop with an error",
                         ("skip", "error"))
    workers: int = _f(-1, "DataLoader worker processes per rank (loader mode; -1 = the CPUs this process may use, "
                      "shared among the ranks on this machine, less one for the training loop, at most 8)")
    # ---- augmentation
    crop_pad: int = _f(1, "random-crop padding in pixels (memory mode; 0 = off)")
    augment_min_epochs: float = _f(0.0, "random crops only in a run of at least this many epochs (a short run "
                                   "underfits, and they only cost it); with --budget, decided when the steps are "
                                   "planned (0 = always)")
    hflip: float = _f(0.0, "horizontal flip probability (0 for digits and text-like data)")
    hflip_min_epochs: float = _f(0.0, "flips only in a run of at least this many epochs, as --augment-min-epochs "
                                 "for crops (0 = always)")
    randaug: str = _f("", "RandAugment policy in timm's syntax, e.g. rand-m9-mstd0.5-inc1 (memory mode: vit.augment, per "
                      "image on the batch; loader mode: timm's, which also takes its other policies; '' = off)")
    repeat_aug: int = _f(1, "repeated augmentation: each image this many times per batch, augmented apart (memory mode; "
                         "DeiT uses 3; 1 = off)")
    reprob: float = _f(0.0, "random-erasing probability per training image (timm's, per-pixel noise)")
    mixup: float = _f(0.0, "Mixup alpha (0 = off)")
    cutmix: float = _f(0.0, "CutMix alpha (0 = off)")
    mixup_prob: float = _f(1.0, "probability of applying Mixup/CutMix to a batch")
    mixup_switch_prob: float = _f(0.5, "probability of CutMix instead of Mixup when both are on")
    label_smoothing: float = _f(0.1, "label smoothing (Szegedy et al., 2016)")
    # ---- optimisation
    epochs: int = _f(60, "training epochs")
    budget: str = _f("", "wall-clock budget from launch to the last evaluation, e.g. 15m or 1h: the run times its "
                     "first steps and fixes its step count to end inside it, schedules complete ('' = use --epochs)")
    eval_hflip: bool = _f(False, "score each validation image with its mirror image too, the two logits averaged "
                          "(test-time flip: a second forward pass per evaluation, planned for by --budget)")
    eval_shift: int = _f(0, "score each validation image moved this many pixels down-right and up-left too (the "
                         "uncovered border black, as the crops' zero padding), each view mirrored too with "
                         "--eval-hflip: 3 or 6 forward passes averaged, planned for by --budget; for a model "
                         "trained on random crops, it lowers one trained without: off where --augment-min-epochs "
                         "turns crops off (0 = off)")
    eval_every: int = _f(1, "evaluate after the last epoch and every N-th one that a whole epoch still follows "
                         "(best.safetensors is chosen among these; with --budget, only these are planned for)")
    steps: int = _f(0, "total optimizer steps, over which the schedules run (0 = epochs x steps per epoch; "
                    "--budget sets it)")
    replan: bool = _f(True, "with --budget: re-plan the remaining steps at an epoch boundary when the machine has "
                      "slowed down or sped up")
    batch_size: int = _f(128, "global batch per optimizer step, summed over ranks and accumulation steps")
    accum_steps: int = _f(1, "gradient accumulation: micro-batches per optimizer step")
    opt: str = _f("adamw", "optimizer: AdamW; SGD with momentum (the ViT paper's fine-tuning); Muon for the "
                  "network's weight matrices with AdamW for the rest (timm's, lr matched to AdamW's)",
                  ("adamw", "sgd", "muon"))
    lr: float = _f(2e-3, "peak learning rate (at --lr-base-size's batch where that is given)")
    lr_base_size: int = _f(0, "the global batch --lr is meant for: a run at another --batch-size scales the lr by "
                           "--lr-base-scale (timm's rule; 0 = --lr as given)")
    lr_base_scale: str = _f("", "how the lr follows the batch: sqrt (Adam-style optimizers: AdamW, Muon) or linear "
                            "(SGD), '' = by --opt", ("", "sqrt", "linear"))
    min_lr: float = _f(1e-5, "learning rate at the end of the schedule")
    sched: str = _f("cosine", "decay after the warm-up: cosine, or linear to --min-lr (timm's schedulers)",
                    ("cosine", "linear"))
    warmup_epochs: float = _f(5.0, "linear warm-up length in epochs (fractions allowed)")
    warmup_lr: float = _f(1e-6, "learning rate at the start of warm-up")
    weight_decay: float = _f(0.05, "weight decay (never on norms, biases, position embeddings, tokens)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.999, "AdamW beta2")
    opt_eps: float = _f(1e-8, "AdamW epsilon: gradient entries much smaller than it get proportionally small updates")
    momentum: float = _f(0.9, "SGD momentum (Muon uses its own 0.95, Nesterov)")
    layer_decay: float = _f(0.0, "layer-wise lr decay for fine-tuning (BEiT), e.g. 0.65 (0 = off)")
    clip_grad: float = _f(1.0, "clip the gradient's global L2 norm to this (0 = off)")
    ema_decay: float = _f(0.0, "EMA of weights decay per step, e.g. 0.999 (0 = off)")
    # ---- running
    precision: str = _f("auto", "auto picks the fastest safe precision for device and model width",
                        ("auto", "fp32", "bf16", "fp16"))
    compile: bool = _f(False, "torch.compile the training step (1.03-1.05x on CPU bf16, less memory than eager; "
                       "30-60 s of compiling, and once more for evaluation); a new run on CUDA compiles unless "
                       "given --no-compile, where the token count stays fixed")
    grad_checkpointing: bool = _f(False, "recompute each block's activations in the backward pass instead of keeping "
                                  "them (timm's set_grad_checkpointing): a third more compute; a ViT-S/16 fp32 run "
                                  "at batch 32 peaked at 2.1 instead of 3.3 GiB on a CPU")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    threads: int = _f(0, "CPU threads for torch (0 = torch's default, one per core)")
    seed: int = _f(0, "seed for initialisation, data order and augmentation")
    deterministic: bool = _f(False, "deterministic kernels (bit-exact resume on CPU; slower on GPU)")
    max_steps: int = _f(0, "stop after this many optimizer steps, saving last.ckpt (0 = run all epochs); "
                        "the schedule still spans --epochs")
    save_every: int = _f(0, "also write last.ckpt every N optimizer steps (0 = once per epoch)")
    tensorboard: bool = _f(False, "also write TensorBoard event files (losses, accuracy, lr, images/s, hyperparameters; "
                           "confusion matrix and attention rollouts at the end) in the run folder; needs tensorboard")
    log_dir: str = _f("", "TensorBoard event files in LOG_DIR/RUN instead, RUN the run folder's name (turns "
                      "--tensorboard on; one LOG_DIR holds many runs)")
    push_to_hub: str = _f("", "at the end, upload best.safetensors to this Hugging Face hub repo (ORG/NAME, created "
                          "where missing; HF_TOKEN or `hf auth login`) in timm's layout, which timm and vit load "
                          "('' = off)")

    def __post_init__(self):
        for f in fields(self):  # a config read back from last.ckpt is a file's dict: every field's type first
            value, kind = getattr(self, f.name), type(f.default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"--{flag(f.name)} must be {'an' if kind is int else 'a'} {kind.__name__}, "
                                  f"got {value!r}")
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"--{flag(f.name)} {getattr(self, f.name)!r} is not one of {', '.join(choices)}")
            # float32's range: the optimizer holds these in float32 tensors
            if isinstance(getattr(self, f.name), float) and not abs(getattr(self, f.name)) <= FLOAT32_MAX:
                raise ConfigError(f"--{flag(f.name)} must be a finite number, got {getattr(self, f.name)}")
        for name in ("beta1", "beta2", "momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        for name in ("epochs", "eval_every", "batch_size", "accum_steps", "repeat_aug", "teacher_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("lora_rank", "lora_alpha", "lr", "warmup_lr", "min_lr", "val_size", "warmup_epochs",
                     "augment_min_epochs", "hflip_min_epochs", "weight_decay", "clip_grad", "mixup",
                     "cutmix", "crop_pad", "eval_shift", "opt_eps", "max_steps", "save_every", "threads", "lr_base_size",
                     "img_size", "num_classes", "seed", "split_seed", "steps", "res_start"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("hflip", "reprob", "mixup_prob", "mixup_switch_prob", "ema_decay", "layer_decay", "drop_path",
                     "label_smoothing", "distill_alpha", "teacher_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--{flag(name)} must be in [0, 1], got {getattr(self, name)}")
        for name in ("seed", "split_seed"):  # torch's generators take 64-bit seeds
            if getattr(self, name) >= 2**63:
                raise ConfigError(f"--{flag(name)} must be below 2**63, got {getattr(self, name)}")
        if self.workers < -1:
            raise ConfigError(f"--workers must be >= 0, or -1 for as many as the CPUs allow, got {self.workers}")
        if self.threads > 4096:
            raise ConfigError(f"--threads {self.threads}: at most 4096 (this machine has {os.cpu_count()} CPUs)")
        if self.repeat_aug > self.batch_size:
            raise ConfigError(f"--repeat-aug {self.repeat_aug} is more than --batch-size {self.batch_size}: a batch "
                              "holds at least one image")
        if not 0.0 <= self.patch_drop < 1.0:
            raise ConfigError(f"--patch-drop must be in [0, 1), got {self.patch_drop}")
        if not (0.0 <= self.patch_drop_end < 1.0 or self.patch_drop_end == -1.0):
            raise ConfigError(f"--patch-drop-end must be in [0, 1), or -1 for --patch-drop throughout, got "
                              f"{self.patch_drop_end}")
        if self.patch_drop_end >= 0 and self.compile:
            raise ConfigError("--patch-drop-end with --compile: the token count changes along the run, and a "
                              "compiled step compiles again for each count; give one of them")
        if not 0.0 < self.res_end_frac <= 1.0:
            raise ConfigError(f"--res-end-frac must be in (0, 1], got {self.res_end_frac}")
        if self.res_start and self.compile:
            raise ConfigError("--res-start with --compile: the image size changes along the run, and a compiled "
                              "step compiles again for each size; give one of them")
        if self.budget:
            parse_budget(self.budget)
        if self.randaug:
            check_policy(self.randaug)
        self._check_finetuning()
        check_dataset(self.dataset)
        if self.push_to_hub and not re.fullmatch(r"(?:[\w.-]+/)?[\w.-]+", self.push_to_hub, re.ASCII):
            raise ConfigError(f"--push-to-hub {self.push_to_hub!r}: a hub repo name, ORG/NAME (letters, digits, '-', "
                              "'_' and '.')")
        if self.push_to_hub and self.stem == "conv":
            raise ConfigError("--push-to-hub uploads timm's layout, and timm's VisionTransformer has no conv stem: "
                              "give one of --push-to-hub and --stem conv")
        if self.dataset == "folder" and not self.data_dir:
            raise ConfigError("--dataset folder needs --data-dir ROOT (an ImageFolder tree)")

    def _check_finetuning(self) -> None:
        """Freezing, LoRA and distillation flags that contradict or need each other."""
        if self.freeze:
            check_freeze(self.freeze)
        if self.lora_rank and self.freeze:
            raise ConfigError("--lora-rank with --freeze: LoRA already freezes every weight but its adapters and "
                              "the head; give one of them")
        if self.lora_alpha and not self.lora_rank:
            raise ConfigError("--lora-alpha needs --lora-rank R (LoRA is off without a rank)")
        if self.teacher_widths:
            parse_widths(self.teacher_widths)
            if self.teacher:
                raise ConfigError(f"--teacher-widths with --teacher {self.teacher}: a run distils from one teacher, "
                                  "one it trains first or one it loads; give one of them")
        if self.teacher_pretrained and not self.teacher:
            raise ConfigError("--teacher-pretrained needs --teacher SOURCE (the model to distil from)")
        if self.distill and not (self.teacher or self.teacher_widths):
            raise ConfigError("--distill needs --teacher SOURCE or --teacher-widths W1,W2,... (the model to distil "
                              "from)")
        if not self.distill_tau > 0:
            raise ConfigError(f"--distill-tau must be > 0, got {self.distill_tau}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        check_known_options(d, cls, "training")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def flag(name: str) -> str:
    return name.replace("_", "-")


# Fields a last.ckpt's saved config may hold that no longer change a run: dropped when it is read.
RETIRED_FIELDS = ("small_model", "model_min_epochs")


@dataclass(frozen=True)
class Rung:
    """One model of a budgeted recipe's ladder: trained where at least `min_epochs` of it fit the budget, for at
    most `max_epochs` (past which it stops gaining: the run ends early); `overrides` are the fields that follow
    the model (learning rate, augmentation, token dropping, drop path)."""

    model: str
    min_epochs: float
    max_epochs: float
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    name: str
    doc: str  # command, hardware, time, accuracy measured
    overrides: dict
    # A budgeted run's models, smallest first: it trains the largest whose min_epochs fit (vit/plan.py choose_rung)
    ladder: tuple[Rung, ...] = ()
    # Fields a new run on a CUDA device takes unless given on the command line (a GPU's larger batch; with
    # lr_base_size set, the lr follows it by the recipe's rule: vit/builders.py scale_lr)
    on_cuda: dict = field(default_factory=dict)

    def config(self, **more) -> TrainConfig:
        return TrainConfig.from_dict({**self.overrides, **more})


RECIPES = {r.name: r for r in [
    Recipe(
        "digits",
        """The offline default: sklearn's 8x8 digits (1,438 train / 359 held-out, split seed 0).

        Command: python train.py   (or: make train)
        Hardware: 2-core AMD EPYC CPUs, one thread, torch 2.14.1: one with AVX-512 BF16 (Zen 4, native bf16), and a
            Zen 3 (AVX2, no native bf16, so --precision auto is fp32 there). Each kind's kernels round apart, and
            its runs part after the first steps: each CPU's figure is its own.
        Measured: AVX-512 BF16, --precision auto (bf16): 2 min 14 s from the prompt (52 s CPU time, shared: load
            7.7-8.9), held-out top-1 96.66% at epoch 30 and at the best epoch (best.safetensors). At commit
            2e924d2 (each step at the previous step's lr): the same CPU with --precision fp32, 1 min 21 s and
            1 min 57 s in two runs, 97.77% at epoch 30, 98.05% best (`evaluate.py --dataset digits` reproduces
            98.05%); Zen 3 (fp32), 95.82%, three runs agreed.
        """,
        # No crop: a 1-pixel shift of an 8x8 digit moves every 2x2 patch's content and slowed learning
        # 3x here (89.7% vs 97.8%); one thread: a 64-wide model's matrices are too small to split.
        dict(model="vit_nano_patch2_8", dataset="digits", epochs=30, batch_size=32, lr=2e-3, warmup_epochs=2,
             weight_decay=0.05, label_smoothing=0.1, crop_pad=0, hflip=0.0, threads=1),
        # With --budget: the recipe's 30 epochs are its longest schedule.
        ladder=(Rung("vit_nano_patch2_8", 0, 30),),
    ),
    Recipe(
        "fashion-mnist",
        """Fashion-MNIST from the Debian package's IDX files, validated on the official 10,000-image test set.

        Command: python train.py --recipe fashion-mnist   (a 15-minute budget; --budget 7.5m for half)
        Hardware: 2-core AMD EPYC Zen 3, AVX2, no native bf16 (fp32), two threads: fewer than 12 epochs of micro
            fit, so the run trains vit_slim_patch7_28 (5.9-6.7 epochs), without crops or flips.
        Measured: 90.57% test top-1 in 14.5-14.7 min, mean of seeds 0-2 (90.47 / 90.53 / 90.70%, std 0.12);
            with --budget 7.5m 89.17% in 7.27 min (seed 0). Minutes from launch to the last evaluation.
        Hardware: 2-core AMD EPYC with AVX-512 BF16 (bf16): slim again (micro fits 10.8-11.8 epochs), 17.4-18.2
            epochs with crops and flips.
        Measured: 91.89% test top-1 in 14.7 min, mean of seeds 0-2 (91.79 / 91.73 / 92.14%, std 0.22); with
            --budget 7.5m (slim, 8.5-8.9 epochs, no crops or flips) 90.44% in 7.3-7.4 min, mean of seeds 0-2
            (90.40 / 90.20 / 90.73%, std 0.27).
        """,
        # Patch 7 (16 tokens) costs a third of patch 4 and learns faster per epoch. Muon: 3 epochs of it reach what
        # 18 of AdamW do; batch 256 learns as fast per epoch as 128 and halves the share of Muon's fixed per-step
        # cost. A budgeted run trains micro (192 wide) where 12 of its epochs fit, else slim (128 wide) at twice
        # the epochs, ~0.6 points better where micro fits 3-4. Crops (2 px) add 0.9 points at 19 epochs, but at 4
        # epochs crops and flips cost an underfitting model 1.6, so both only from 12 planned epochs. Warm-up 0.3
        # epoch and an evaluation every 3rd epoch: a 3-7 epoch run spends its steps training (+0.2 points against
        # 1 epoch and every epoch). Every run behind these figures: benchmarks/LOG.md.
        dict(model="vit_micro_patch7_28", dataset="fashion-mnist", epochs=19, budget="15m", batch_size=256, opt="muon",
             lr=2e-3, lr_base_size=256, min_lr=0.0, warmup_epochs=0.3, eval_every=3, weight_decay=0.05,
             label_smoothing=0.1, crop_pad=2, augment_min_epochs=12, hflip=0.5, hflip_min_epochs=12),
        # micro from 12 epochs (measured: slim at twice the epochs is ~0.6 points better where micro fits 3-4);
        # up to 40 measured: 40 epochs add a point to 19 and still gain at the end. tiny (192x12, patch 4, 49
        # tokens) needs more than 20 epochs: at 20 it stayed under micro's 40, at 1.3x their minutes. Its 40-100
        # follow Lee et al. 2021's 100-epoch small-ViT schedules, with their stochastic depth 0.1.
        ladder=(Rung("vit_slim_patch7_28", 0, 30), Rung("vit_micro_patch7_28", 12, 40),
                Rung("vit_tiny_patch4_28", 40, 100, dict(drop_path=0.1, patch_drop=0.5))),
        on_cuda=dict(batch_size=1024),  # lr x2 by the square-root rule; not yet run on a GPU
    ),
    Recipe(
        "cifar10",
        """CIFAR-10 at 32x32, in memory, half the tokens dropped, Muon, each image scored on six views.

        Command: python train.py --recipe cifar10 --dataset folder --data-dir cifar10-jpeg/train --val-size 5000
            (a 1-hour budget, --budget 30m for half; 5,000 of the 50,000 training images, a tree of JPEGs, held
            out by --split-seed 0. For torchvision's files: python train.py --recipe cifar10 --data-dir DIR
            --download)
        Hardware: 2-core AMD EPYC Zen 3, AVX2, no native bf16 (fp32), two threads: fewer than 12 epochs of micro
            fit, so the run trains vit_slim_patch4_32 (15.7-17.1 epochs, crops and flips).
        Measured: 81.19% val top-1 in 59.5-59.6 min, mean of seeds 0-2 (81.24 / 81.38 / 80.96%, std 0.21);
            with --budget 30m 77.10% in 29.27 min (seed 0; too short for crops, so scored on the image and its
            mirror). Minutes from launch to the last evaluation.
        Hardware: 2-core AMD EPYC with AVX-512 BF16 (bf16): mini fits 14-17 of its 25 epochs, so micro, distilled
            from a 0.5M-parameter convnet the run trains first (10 epochs, 86.8-87.1%, 5.4-5.5 min): 20.4-21.1 epochs.
        Measured: 82.96% val top-1 in 59.0-59.6 min, mean of seeds 1-3 (82.76 / 83.18 / 82.94%, std 0.21); seed 0,
            the teacher trained apart: 82.94% in 59.7 min. Without a teacher (--teacher-widths '' --no-distilled:
            micro for its longest schedule, 25 epochs, ending early): 81.93% in 55.6-57.3 min, mean of seeds 0-2
            (81.22 / 82.70 / 81.88%, std 0.74). mini for its 25 epochs (--model vit_mini_patch4_32 --epochs 25, no
            budget, no teacher): 82.48% in 86.7 min (seed 0).
        """,
        # Token dropping (PatchDropout, half the patches) halves a step's cost; at equal wall time it beat all
        # tokens by 3.9 points, and dropping 75% lost. Muon: timm's, on the weight matrices; lr 2e-3 (3e-3 lost
        # 0.5 points on slim); batch 256 is no faster per image. 25 epochs for a run given no budget: a 44-epoch
        # schedule overfit from epoch ~26. A budgeted run trains micro where 12 of its epochs fit, else slim at
        # twice the epochs. Warm-up half an epoch, short against the 8-17 epochs a budget fits. Flips in any run
        # (+0.26 points even at 11.5 epochs); crops from 12 planned epochs: at 16 they add 0.6 points, at 8 they
        # cost 1.2. Six views (eval_hflip, eval_shift: the image and its mirror, each also moved a pixel
        # down-right and up-left) add 1.1-1.6 points to the two unmoved ones at ~70 s an evaluation, so one every
        # 8th epoch; a model trained without crops loses 2.6 points on moved views, so a run too short for crops
        # scores on two. No EMA: its second evaluation an epoch cost a sixth of an fp32 hour for +0.06 points. No
        # Mixup/CutMix. Every run behind these figures: benchmarks/LOG.md.
        dict(model="vit_micro_patch4_32", dataset="cifar10", epochs=25, budget="1h", batch_size=128, opt="muon",
             lr=2e-3, lr_base_size=128, min_lr=0.0, warmup_epochs=0.5, eval_every=8, eval_hflip=True, eval_shift=1,
             weight_decay=0.05, label_smoothing=0.1, crop_pad=2, augment_min_epochs=12, hflip=0.5, patch_drop=0.5),
        # slim and micro as measured: micro from 12 epochs, and its 25-epoch schedule (44 overfit from epoch ~26).
        # mini (192 wide, 9 deep) from 25 epochs, measured: with drop path 0.1 and the recipe's other fields its 25
        # epochs reach 82.48% (one seed) against micro's longest schedule's 81.93% (AVX-512 BF16 CPU, mean of three
        # seeds, std 0.74: one seed of mini is not separated from them); its 100 from Lee et al. 2021 (93.6% in 100
        # epochs). small (384x12: DeiT's 300-epoch schedule, drop path 0.1, Mixup/CutMix) from 100 epochs: from the
        # literature, not measured here. The conv stem (--stem conv) gave micro's hour 82.50 and 81.00% (seeds 0, 1)
        # against the patchify stem's 81.22 and 82.70% at the same seeds, its step ~1.2x: no gain. micro distils
        # (DeiT's token and hard labels) from a 0.5M-parameter convnet the run trains first (10 epochs, 86.8-87.5%,
        # 5.4-7.7 min here: --teacher-share caps it at 15% of the budget): 82.96% over seeds 1-3 against 81.93%
        # without (seed by seed +1.72, +0.06, +1.30 at seeds 0-2), though the teacher's minutes and its forward pass
        # leave ~21 epochs of the 25. The other rungs were measured without a teacher and keep none.
        ladder=(Rung("vit_slim_patch4_32", 0, 30),
                Rung("vit_micro_patch4_32", 12, 25, dict(teacher_widths="32,128,128", distilled=True)),
                Rung("vit_mini_patch4_32", 25, 100, dict(drop_path=0.1)),
                Rung("vit_small_patch4_32", 100, 300, dict(drop_path=0.1, mixup=0.8, cutmix=1.0, patch_drop=0.0))),
        # A GPU's batch: 4x, the lr 2x by the square-root rule (Muon and AdamW); not yet run on a GPU
        on_cuda=dict(batch_size=512),
    ),
    Recipe(
        "imagenet-subset-finetune",
        """Fine-tune an ImageNet-21k/1k ViT-S/16 on an ImageFolder subset (e.g. Imagenette) at 224 px.

        DeiT/BEiT fine-tuning practice: RandAugment, random erasing, Mixup/CutMix, layer-wise lr decay 0.65,
        EMA, DataLoader workers. Starts from timm's AugReg ViT-S/16 on the hub (needs internet or the HF cache;
        --pretrained PATH for a local file).
        Command: python train.py --recipe imagenet-subset-finetune --data-dir imagenette2-320
        Hardware: one GPU (on 2 quiet CPU cores a ViT-S/16 training step runs at ~22 img/s: ~7 min an
        Imagenette epoch).
        Measured: no accuracy; measuring needs the hub's weights, an ImageNet subset and a GPU. Its whole path
        (weights from a file, a new head, resized position embeddings, DataLoader workers with RandAugment and
        erasing, Mixup/CutMix, layer decay, EMA) runs in
        tests/test_train.py::test_finetune_recipe_from_local_weights on a tiny tree.
        """,
        dict(model="vit_small_patch16_224", pretrained="hf-hub:timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
             dataset="folder", data_mode="loader", epochs=10, batch_size=128,
             lr=5e-4, min_lr=1e-6, warmup_epochs=1, weight_decay=0.05, layer_decay=0.65, drop_path=0.1,
             label_smoothing=0.1, hflip=0.5, randaug="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8,
             cutmix=1.0, ema_decay=0.9998),
    ),
]}


DEFAULT_RECIPE = "digits"  # what `python train.py` trains; `--help` shows its values as the defaults


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
