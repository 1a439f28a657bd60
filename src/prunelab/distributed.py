"""The few collective operations pruners and tasks need under DDP, each a no-op in a single process."""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

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
