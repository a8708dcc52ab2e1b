"""DistributedDataParallel plumbing for runs started by ``torchrun`` (gloo on CPU, NCCL on CUDA).

Without ``WORLD_SIZE > 1`` in the environment everything here is a no-op on a single process, so
the trainer has one code path. Only rank 0 writes files; every rank takes the same decisions (LR,
early stopping) because the numbers they are based on are summed over all ranks first.

Only rank 0 runs a fold's final validation, which can take longer than the process group's timeout
(30 min for gloo, 10 min for NCCL by default). The other ranks therefore wait for it at the end of every
fold in :func:`sync_after_fold`, on a barrier of a second, CPU (gloo) group whose timeout is
:data:`FOLD_SYNC_TIMEOUT`; otherwise they would go on to the next fold and time out inside
DistributedDataParallel's constructor while rank 0 is still validating.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
FOLD_SYNC_TIMEOUT = datetime.timedelta(days=7)  # a bound on one final validation, not a wait anyone expects
_fold_sync_group: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (if any).

    Args:
        device: the resolved device type (``cuda`` selects NCCL and this rank's local GPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    ctx = DistContext(
        int(os.environ["RANK"]),
        world_size,
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )
    if device == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        log.info("rank %d/%d joined the process group (%s)", ctx.rank, world_size, dist.get_backend())
    global _fold_sync_group
    if _fold_sync_group is None:  # every rank gets here at the same point: the start of its first fold
        _fold_sync_group = dist.new_group(backend="gloo", timeout=FOLD_SYNC_TIMEOUT)
    return ctx


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (returns it unchanged on a single process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def sync_after_fold() -> None:
    """Wait until every rank has finished the fold, rank 0's final validation included (no-op alone)."""
    if _fold_sync_group is not None and dist.is_initialized():
        dist.barrier(group=_fold_sync_group)


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    global _fold_sync_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _fold_sync_group = None
