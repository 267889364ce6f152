"""Distributed training: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them a run is one process.

`Dist` says which rank this process is; `setup_distributed` joins the process group (NCCL on CUDA, gloo on CPU),
`wrap_ddp` wraps the model in DistributedDataParallel (SyncBatchNorm on CUDA), `all_reduce_sum` adds a tensor over
ranks, and `rank0_value` gives every rank rank 0's number (timings differ between ranks; a plan made from them must
not). `elastic_restart` lets a worker that torchrun restarted continue its run from last.ckpt.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from . import runs
from .errors import RankLostError, VitError
from .precision import resolve_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder and prints."""
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **restart_store(rank, world))
    return Dist(rank, world, local_rank), device


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel. On CUDA its BatchNorm layers (a conv stem's) become SyncBatchNorm first, in
    place and on the same parameters and buffers (the optimizer and EMA copy built before stay valid, the state
    dict's names too): each normalises with the global batch's statistics, as one process would. SyncBatchNorm
    runs on GPUs only: on CPU (gloo) each rank normalises with its own share of the batch, and DDP's buffer
    broadcast gives every rank rank 0's running statistics at each forward."""
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def restart_store(rank: int, world: int) -> dict:
    """init_process_group's store under a single torchrun agent: its own key prefix for each restart.

    The agent serves one store for the whole job (TORCHELASTIC_USE_AGENT_STORE), and process groups write
    the same keys in every round, so the workers of a restart would read their dead predecessors' addresses
    there (gloo: "connectFullMesh failed ... Connection refused"). With one agent every worker of a round has
    the same restart count; several agents count their restarts apart, so there the store is left as it is.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" \
            or os.environ.get("GROUP_WORLD_SIZE") != "1":
        return {}
    store, _, _ = next(dist.rendezvous("env://"))
    return dict(store=dist.PrefixStore(f"vit/restart{restart}", store), rank=rank, world_size=world)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        with collective(d):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def rank0_value(value: int, d: Dist, device: torch.device) -> int:
    """Rank 0's `value` on every rank."""
    if d.world == 1:
        return value
    t = torch.tensor([value if d.is_main else 0], dtype=torch.int64, device=device)
    return int(all_reduce_sum(t, d).item())


@contextlib.contextmanager
def collective(d: Dist) -> Iterator[None]:
    """Around a step where the ranks exchange data (DDP's gradient all-reduce in backward, `all_reduce_sum`): in a
    job of several ranks, a failure there is another rank gone (its sockets close: gloo raises a RuntimeError,
    NCCL a DistBackendError), raised as a RankLostError; train.py prints it as one line. Out-of-memory and this
    package's own errors pass as they are."""
    try:
        yield
    except RuntimeError as e:
        if d.world == 1 or isinstance(e, (VitError, torch.OutOfMemoryError)):
            raise
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RankLostError(f"rank {d.rank} lost another rank of the job ({cause}); torchrun --max-restarts "
                            f"restarts the job from {runs.LAST}") from e


def elastic_restart(output: str | None) -> Path | None:
    """Under torchrun with --max-restarts, a restarted worker (TORCHELASTIC_RESTART_COUNT > 0) continues the
    run its command names with --output from the last.ckpt there, instead of refusing the folder (so too after
    `--resume A --output B`, whose run went on in B). Without a last.ckpt there, the command starts again."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts and output and (Path(output) / runs.LAST).is_file():
        if os.environ.get("RANK", "0") == "0":
            print(f"resume: torchrun restart {restarts}: continuing the run in {output} from its {runs.LAST}")
        return Path(output)
    return None
