r"""Matching across processes with ``torch.distributed``: the real side's class statistics of all ranks, exactly.

Each rank holds a shard of the real data and the whole synthetic set. The Law centroid is a
normalised weighted sum, so the real centroid of a class over the union of the shards is obtained
by combining per-class partial sums (:func:`reduce_centroid_sums`, which
:func:`hyperdm.lorentz.feature_centroid` applies with ``reduce=``),
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

from .lorentz import CentroidSums, Reduce

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


def reduce_centroid_sums(sums: CentroidSums, reduce: Reduce) -> CentroidSums:
    r"""The :class:`~hyperdm.lorentz.CentroidSums` of the points of every process, from each process's own.

    ``reduce(x, op)`` combines a tensor over the processes (:func:`all_reduce_fn`). Process ``r``'s
    sums are relative to its own total weight ``W_r`` and shift ``top_r``; with ``top = max_r top_r``
    and ``W = sum_r W_r`` its share is ``f_r = (W_r / W) e^{top_r - top}``, so ``X = sum_r f_r X_r``
    for ``m0``, ``ms``, ``a_minus``, ``a_plus`` and ``b``, and the point counts add up. The spread about
    the union's ``ũ = ms / B`` follows from each process's spread about its own ``ũ_r`` by the
    parallel-axis identity

    .. math::
        \sum_i b_i \|u_i - \tilde u\|^2 = \sum_r f_r \big(S_r + B_r \|\tilde u_r - \tilde u\|^2\big),

    a sum of non-negative terms (no cancellation). Three collectives: the largest shift (max), the
    first sums with ``W`` and the counts (one sum), the spread (one sum). A process without any
    point of a group (``W_r = 0``) contributes nothing to it. Only for sums without autograd history.
    """
    top = reduce(sums.top, "max")
    share = sums.weight * torch.exp(sums.top - top)  # W_r e^{top_r - top}
    d = sums.ms.shape[-1]
    firsts = (sums.ms, sums.m0, sums.a_minus, sums.a_plus, sums.b)
    total = reduce(torch.cat((*(x * share for x in firsts), sums.weight, sums.points), dim=-1), "sum")
    ms, m0, a_minus, a_plus, b, weight, points = total.split([d, 1, 1, 1, 1, 1, 1], dim=-1)
    inv = 1.0 / torch.where(weight > 0, weight, torch.ones_like(weight))
    ms, m0, a_minus, a_plus, b = (x * inv for x in (ms, m0, a_minus, a_plus, b))
    ut = ms / torch.where(b > 0, b, torch.ones_like(b))
    ut_r = sums.ms / torch.where(sums.b > 0, sums.b, torch.ones_like(sums.b))
    own = share * (sums.spread + sums.b * (ut_r - ut).square().sum(-1, keepdim=True))
    spread = reduce(own, "sum") * inv
    return CentroidSums(
        weight=weight, top=top, m0=m0, ms=ms, a_minus=a_minus, a_plus=a_plus, b=b, spread=spread, points=points
    )


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
