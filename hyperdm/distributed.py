r"""Matching across processes with ``torch.distributed``: the real side's class statistics of all ranks, exactly.

Each rank holds a shard of the real data and the whole synthetic set. The Law centroid is a
normalised weighted sum, so the real centroid of a class over the union of the shards is obtained
by all-reducing per-class partial sums (:func:`hyperdm.lorentz.feature_centroid` with ``reduce=``),
and the MMD line's real mean by all-reducing sums and counts. The synthetic side stays local:
its gradient is the one single-process training computes on the union of the real data, on every
rank alike. Use it as ``HyperbolicMatcher(..., process_group=torch.distributed.group.WORLD)``
(or any group) after ``torch.distributed.init_process_group``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch.distributed as dist
import torch
from torch import Tensor

from .lorentz import Reduce

__all__ = ["all_reduce_fn", "check_process_group", "gather_strided"]


def check_process_group(group: Any) -> None:
    """Raise a clear error unless ``torch.distributed`` is initialised (``group`` is then used as given)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "process_group was given but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) first (torchrun sets the environment for it), "
            "or pass process_group=None for single-process matching."
        )


def check_no_grad(real: Tensor) -> None:
    """Distributed matching reduces only the real side, which must not require grad: say so, with the fix."""
    if real.requires_grad:
        raise ValueError(
            "distributed matching reduces only the real side, which must not require grad; compute real "
            "features under torch.no_grad() (as DM does) or detach them."
        )


def all_reduce_fn(group: Optional[Any] = None) -> Reduce:
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


def gather_strided(local: Tensor, total: int, group: Optional[Any] = None) -> Tensor:
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
