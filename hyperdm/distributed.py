r"""Matching across processes with ``torch.distributed``: the real side's class statistics of all ranks, exactly.

Each rank holds a shard of the real data and the whole synthetic set. The Law centroid is a
normalised weighted sum, so the real centroid of a class over the union of the shards is obtained
by combining per-class partial sums (:func:`hyperdm.law.reduce_centroid_sums`, here re-exported, which
:func:`hyperdm.lorentz.feature_centroid` applies with ``reduce=``; it is arithmetic on the sums, given
the collective as a function, so it lives with them),
and the MMD line's real mean by all-reducing sums and counts. The synthetic side stays local:
its gradient is the one single-process training computes on the union of the real data, on every
rank alike. Use it as ``HyperbolicMatcher(..., process_group=torch.distributed.group.WORLD)``
(or any group) after ``torch.distributed.init_process_group``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .law import Reduce, reduce_centroid_sums

__all__ = ["all_reduce_fn", "check_process_group", "gather_strided", "gather_values", "reduce_centroid_sums"]


def check_process_group(group: Any) -> None:
    """Raise a clear error unless ``torch.distributed`` is initialised and ``group`` is a process group
    this process belongs to (an all-reduce over a group without this process would silently do nothing)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "process_group was given but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) first (torchrun sets the environment for it), "
            "or pass process_group=None for single-process matching."
        )
    if isinstance(group, dist.ProcessGroup):
        return
    if isinstance(group, int) and group == dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(
            f"process_group: rank {dist.get_rank()} is not a member of this group (torch.distributed.new_group "
            "returns this placeholder to the ranks it leaves out); pass a group that holds every rank taking "
            "part, e.g. torch.distributed.group.WORLD."
        )
    raise ValueError(
        f"process_group must be a torch.distributed process group (torch.distributed.group.WORLD, or one "
        f"made by torch.distributed.new_group); got {type(group).__name__}."
    )


def check_no_grad(real: Tensor) -> None:
    """Distributed matching reduces only the real side, which must not require grad: say so, with the fix."""
    if real.requires_grad:
        raise ValueError(
            "distributed matching reduces only the real side, which must not require grad; compute real "
            "features under torch.no_grad() (as DM does) or detach them."
        )


def all_reduce_fn(group: Any | None = None) -> Reduce:
    """``reduce(x, op)`` for :func:`hyperdm.lorentz.feature_centroid`: sum or max over the ranks of ``group``.

    Returns a new tensor (the input is not modified). Only for tensors without autograd history:
    the real side of the matching, which never needs a gradient.
    """
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}

    def reduce(x: Tensor, op: str) -> Tensor:
        check_no_grad(x)
        y = x.detach().clone().contiguous()
        dist.all_reduce(y, op=ops[op], group=group)
        return y

    return reduce


def gather_strided(local: Tensor, total: int, group: Any | None = None) -> Tensor:
    """Reassemble a tensor sharded by stride: rank ``r`` of ``W`` holds rows ``r, r+W, r+2W, ...`` of ``total``.

    Every rank gets the whole ``[total, ...]`` tensor, rows in global order (one ``all_gather``;
    shards are padded to equal length for it).
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    longest = -(-total // world)
    expect = len(range(rank, total, world))
    if local.shape[0] != expect:
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows, but rows {rank}::{world} of {total} are {expect}.")
    pad = local.new_zeros((longest, *local.shape[1:]))
    pad[:expect] = local
    parts = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(parts, pad.contiguous(), group=group)
    out = local.new_empty((total, *local.shape[1:]))
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, total, world))]
    return out


def gather_values(local: Tensor, group: Any | None = None) -> Tensor:
    """Every rank's values (any shapes, flattened), concatenated in rank order, on every rank.

    Two collectives: the counts (one ``all_gather``), then the values padded to the longest (one
    ``all_gather``). For statistics such as the median of the real features' norms over all ranks.
    """
    flat = local.detach().reshape(-1)
    world = dist.get_world_size(group)
    count = torch.tensor([flat.numel()], dtype=torch.int64, device=flat.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c) for c in counts]
    pad = flat.new_zeros(max(sizes))
    pad[: flat.numel()] = flat
    parts = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(parts, pad.contiguous(), group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])
