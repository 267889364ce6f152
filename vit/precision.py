"""Device and numeric-precision choice shared by training, evaluation and the benchmarks."""

from __future__ import annotations

import contextlib
import ctypes
import sys

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Narrowest model width at which bf16 autocast is faster than fp32 on a CPU with native bf16, per mode.
# Measured on a 2-core AVX-512-BF16 EPYC (benchmarks/LOG.md, `levers.py precision`), eager mode:
# inference at width 64 ran 0.86x in bf16 (the casts cost more than the smaller matrix products save) and
# 1.33x at width 192; a training step ran 1.25x in bf16 already at width 64 (bf16 attention takes the
# matmul path, and the backward's matrix products dominate).
CPU_BF16_MIN_WIDTH = 128  # inference
CPU_BF16_MIN_WIDTH_TRAIN = 64


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from e
    if dev.type not in ("cpu", "cuda"):  # meta holds no data, and the rest are not supported here
        raise ConfigError(f"--device {device!r}: vit trains and evaluates on cpu or cuda (auto picks one)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, embed_dim: int, *, training: bool) -> str:
    """Turn 'auto' into the fastest safe precision for this device, model width and mode."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    min_width = CPU_BF16_MIN_WIDTH_TRAIN if training else CPU_BF16_MIN_WIDTH
    return "bf16" if cpu_has_bf16() and embed_dim >= min_width else "fp32"


def autocast(precision: str, device: torch.device):
    """Autocast context for 'bf16'/'fp16', a no-op for 'fp32'."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_cpu_memory() -> bool:
    """Have glibc keep freed blocks of up to 32 MB for reuse instead of handing them back to the kernel.

    By default glibc serves large blocks with mmap and unmaps (or trims) them when freed, so each training
    step's activations arrive in fresh pages that the kernel must fault in and zero. Keeping them measured
    1.07-1.25x the training images/s of this package's CIFAR-size and ViT-S/16 steps (timm's: 1.09-1.24x),
    one model per process (benchmarks/allocator.py). Peak resident memory stayed within 3% of glibc's
    default; the resident size just no longer shrinks between steps. Process-wide, so train.py and
    evaluate.py call it and `import vit` does not. Returns False (and changes nothing) off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1


# Share of the activations inductor's partitioner may keep for the backward of a compiled training step; below
# 1 it recomputes cheap ops instead of saving their outputs. At the default (1.0) the compiled ViT-S/16 bf16
# step kept 1236 MB against eager's 1053 (timm 1085); at 0.9 it keeps 824 MB at the same speed
# (2-core AVX-512 BF16 EPYC, benchmarks/LOG.md).
COMPILED_TRAINING_MEMORY_BUDGET = 0.9


def compiled_training_settings():
    """Context to run (and so to compile) a `torch.compile`d training step in: its activation budget."""
    import torch._functorch.config as functorch_config

    return functorch_config.patch(activation_memory_budget=COMPILED_TRAINING_MEMORY_BUDGET)
