"""Randomness and determinism for a run: every seed is set here; last.ckpt saves and restores rank 0's generators.

`seed_shared` before the model is built (the same weights on every rank), `seed_per_rank` before the first step,
`rng_state`/`set_rng_state` for last.ckpt, and `torch_settings` for threads and deterministic kernels.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .distributed import Dist
from .precision import resolve_device


def seed_shared(seed: int) -> None:
    """Before the model is built, on every rank alike: the same initial weights (and EMA copy), and the same
    numpy draws (timm's Mixup) on every rank for the whole run."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def seed_per_rank(seed: int, d: Dist, step: int = 0, saved: dict | None = None) -> None:
    """After set-up, before the first step: each rank's own torch and Python streams (dropout, drop-path,
    random erasing), or rank 0's saved ones when resuming.

    Rank 0 keeps its torch stream from the model's initialisation. Python's is seeded again because imports
    during set-up (sklearn's, for digits) draw from it. Only rank 0's generators are saved, so the others
    restart from a seed that moves with the step.
    """
    if saved is not None:
        set_rng_state(saved)
    if d.rank:
        torch.manual_seed(seed + d.rank + step)
    if d.rank or saved is None:
        random.seed(seed + d.rank + step)


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    v, internal, gauss_next = state["python"]
    random.setstate((v, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def torch_settings(device: str, threads: int, deterministic: bool):
    """Threads, determinism and CUDA matmul precision for one run, restored afterwards (train.main may run
    inside another program)."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.get_float32_matmul_precision())
    if resolve_device(device).type == "cuda" and not deterministic:
        torch.set_float32_matmul_precision("high")  # fp32 matrix products on TF32 tensor cores
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.set_float32_matmul_precision(saved[3])
