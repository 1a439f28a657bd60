"""The few collective operations pruners and tasks need under DDP, each a no-op in a single process, and the views of
FSDP2-sharded tensors (DTensors) that the mask pruners apply their masks through."""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) of the DDP process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_ranks(*tensors: Tensor) -> None:
    """In place: every tensor becomes its sum over the ranks."""
    if world()[1] > 1:
        for t in tensors:
            dist.all_reduce(t)


def average_over_ranks(tensors: list[Tensor]) -> None:
    """In place: every tensor becomes its mean over the ranks (one all-reduce of a flat copy)."""
    n = world()[1]
    if n == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= n
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def rows_differing_across_ranks(values: Tensor) -> list[int] | None:
    """Which rows of `values` (the same shape on every rank) differ on some rank, by one all-gather; None
    when there is nothing to compare (one process)."""
    n = world()[1]
    if n == 1:
        return None
    gathered = [torch.empty_like(values) for _ in range(n)]
    dist.all_gather(gathered, values)
    return [i for i in range(values.size(0)) if any(not torch.equal(g[i], gathered[0][i]) for g in gathered[1:])]


def from_rank_zero(obj: T) -> T:
    """Rank 0's `obj` on every rank (e.g. a choice of heads or components every rank must act on)."""
    if world()[1] == 1:
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order."""
    n = world()[1]
    if n == 1:
        return [obj]
    gathered: list[Any] = [None] * n
    dist.all_gather_object(gathered, obj)
    return gathered


# --- FSDP2 (hardware=fsdp): parameters and their gradients are DTensors, each rank holding a block of rows ---------
def is_sharded(t: Tensor) -> bool:
    """Whether `t` is a DTensor (hardware=fsdp's parameters and gradients)."""
    return isinstance(t, DTensor)


def local_part(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor (an FSDP2-sharded parameter or gradient: the storage the optimizer updates);
    any other tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


def local_rows(full: Tensor, like: Tensor) -> Tensor:
    """The part of `full` (a whole tensor of `like`'s global shape, e.g. a weight's mask, the same on every rank)
    that this rank holds of `like` when `like` is a DTensor (FSDP2 shards dim 0: a block of rows); `full` itself
    otherwise. A view: nothing is copied."""
    if not isinstance(like, DTensor):
        return full
    shape, offset = compute_local_shape_and_global_offset(like.shape, like.device_mesh, like.placements)
    for dim, (size, start) in enumerate(zip(shape, offset, strict=True)):
        if size != full.shape[dim]:
            full = full.narrow(dim, start, size)
    return full


def gathered(t: Tensor) -> Tensor:
    """The whole tensor of a DTensor (one all-gather: every rank must call it at the same point); any other tensor
    as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t
