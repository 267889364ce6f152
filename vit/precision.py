"""Device and numeric-precision choice shared by training, evaluation and the benchmarks."""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Below this width bf16 autocast costs more in casts than it saves in matrix products on CPU
# (measured on a 2-core AVX-512-BF16 EPYC; see benchmarks/README.md).
CPU_BF16_MIN_WIDTH = 128


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from e


def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, embed_dim: int) -> str:
    """Turn 'auto' into the fastest safe precision for this device and model width."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() and embed_dim >= CPU_BF16_MIN_WIDTH else "fp32"


def autocast(precision: str, device: torch.device):
    """Autocast context for 'bf16'/'fp16', a no-op for 'fp32'."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
