"""DistributedDataParallel support for :func:`elastigraph.train.train`: under torchrun
(``WORLD_SIZE > 1``) the loop joins the process group, wraps the model in DDP, takes
its share of every global batch and all-reduces the evaluation. Nothing home-made: the
gradient averaging is DDP's."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world`` processes; ``world == 1`` means
    no distribution (plain single-device training)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistContext:
    """Read torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; a single process otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return DistContext()
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as e:
        raise ConfigError(
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} asks for distributed training but RANK/LOCAL_RANK are "
            f"missing or not integers ({e}); launch with torchrun, or unset WORLD_SIZE"
        ) from e
    return DistContext(rank, world, local)


def init(ctx: DistContext, device: torch.device) -> None:
    """Join the default process group (nccl on CUDA, gloo on CPU) unless already in one.
    Needs ``MASTER_ADDR``/``MASTER_PORT`` in the environment, as torchrun sets them."""
    if not ctx.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world)


def wrap(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (rank 0's weights are broadcast)."""
    if not ctx.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # Buffers are not broadcast at every forward: the float mask buffers would double the
    # traffic, and BatchNorm statistics are synchronised from rank 0 here, before every
    # evaluation and at the end (broadcast_buffers), which gives the same end state.
    ddp = nn.parallel.DistributedDataParallel
    no_fwd_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    wrapped = ddp(model, device_ids=ids, **no_fwd_sync)
    broadcast_buffers(model, ctx)
    return wrapped


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, masks) to every rank so that
    evaluation and the returned state are identical everywhere."""
    if ctx.enabled:
        for b in model.buffers():
            dist.broadcast(b.data, src=0)


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over all ranks (in place; returned for chaining)."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Minimum of ``t`` over all ranks (in place; returned for chaining)."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


__all__ = ["DistContext", "from_env", "init", "wrap", "broadcast_buffers", "all_reduce_sum", "all_reduce_min"]
