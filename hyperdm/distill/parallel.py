"""Data-parallel distillation with ``torch.distributed`` (``torchrun``): which rank does what.

Every rank builds the same random network and draws the same real batch of every class from the
same seeded generator; rank ``r`` of ``W`` forwards only images ``r, r+W, r+2W, ...`` of each batch
(the way ``DistributedSampler`` strides a dataset, without its padding, which would count images
twice). The matcher all-reduces the real side's per-class sums (:mod:`hyperdm.distributed`), so
every rank gets the loss of the whole batch; the synthetic set is replicated and its gradient is
averaged over the ranks before each step. Rank 0 alone evaluates and writes artifacts and
checkpoints; a resumed run reads its checkpoint on rank 0 and broadcasts it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Parallel", "check_device", "init_from_env", "joined", "launched_rank", "shutdown"]

log = logging.getLogger(__name__)

#: how long a rank waits for the others (rank 0 evaluates while the others wait at a barrier)
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    world: int = 1
    group: Any = None

    @classmethod
    def current(cls) -> Parallel:
        """From an initialised default process group, else a single process."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(rank=dist.get_rank(), world=dist.get_world_size(), group=dist.group.WORLD)
        return cls()

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x: Tensor) -> Tensor:
        """This rank's rows of a batch: ``x[rank::world]``."""
        return x[self.rank :: self.world] if self.enabled else x

    def average_(self, t: Tensor) -> None:
        """Average ``t`` over the ranks, in place."""
        if self.enabled:
            self.sum_(t)
            t.div_(self.world)

    def sum_(self, t: Tensor) -> None:
        """Sum ``t`` over the ranks, in place."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)

    def sum_grads_(self, net: torch.nn.Module) -> None:
        """Sum the gradients of ``net``'s parameters over the ranks (one flattened all-reduce)."""
        if not self.enabled:
            return
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(part.view_as(g))

    def max_int(self, value: int) -> int:
        """The largest ``value`` over the ranks (every rank gets it)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return int(t.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.group)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def check_device(device: str) -> torch.device:
    """``torch.device(device)`` after checking that this machine has it; a ValueError names the fix otherwise.

    ``cpu`` always works; ``cuda`` / ``cuda:N`` need a CUDA build of torch and a visible GPU ``N``;
    ``mps`` needs Apple's Metal backend. Under torchrun ``cuda`` means ``cuda:LOCAL_RANK``.
    """
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"--device {device!r} is not a torch device; use cpu, cuda, cuda:N (N-th GPU) or mps."
        ) from None
    if d.type == "cpu":
        return d
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch build ({torch.__version__}) has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU is visible (torch.cuda.is_available() is False)"
            )
            raise ValueError(
                f"--device {device}: {why}; use --device cpu, or run on a machine with an NVIDIA GPU "
                "and torch's CUDA build."
            )
        n = torch.cuda.device_count()
        index = d.index if d.index is not None else int(os.environ.get("LOCAL_RANK", "0"))
        if index >= n:
            raise ValueError(
                f"--device {device}: this machine has {n} CUDA device{'s' if n != 1 else ''} "
                f"(cuda:0 to cuda:{n - 1}); pick one of them."
            )
        return d
    if d.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"--device {device}: Apple's Metal (MPS) backend is not available here; use --device cpu.")
        return d
    raise ValueError(f"--device {device}: hyperdm runs on cpu, cuda or mps; use one of them.")


def launched_rank() -> int:
    """This process's rank as torchrun's environment says (``RANK``; 0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init_from_env(device: str) -> tuple[Parallel, str]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment) and pick this rank's device.

    Backend: NCCL for CUDA, gloo for the CPU. ``cuda`` becomes ``cuda:<LOCAL_RANK>``. Without
    torchrun's environment (or with ``WORLD_SIZE=1``) nothing happens. Returns the
    :class:`Parallel` and the device string.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Parallel.current(), device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run a single process.")
    cuda = device.startswith("cuda")
    if cuda:
        if ":" in device:
            raise ValueError(f"--device {device}: under torchrun pass --device cuda; each rank uses cuda:LOCAL_RANK.")
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    par = Parallel.current()
    log.info("torch.distributed: rank %d of %d on %s (%s)", par.rank, par.world, device, dist.get_backend())
    return par, device


def shutdown(par: Parallel, *, wait: bool = True) -> None:
    """Leave the process group :func:`init_from_env` joined, after a barrier when ``wait`` (the end of a run
    on every rank; a rank that exits with the group alive can abort in gloo's destructor)."""
    if par.enabled and dist.is_initialized():
        if wait:
            dist.barrier(group=par.group)
        dist.destroy_process_group()


@contextlib.contextmanager
def joined(device: str) -> Iterator[tuple[Parallel, str]]:
    """``with joined(device) as (par, device):`` :func:`init_from_env` on entry, :func:`shutdown` on exit
    (after a barrier when the body finished; without one when it raised, since the other ranks may be
    stuck elsewhere and torchrun stops them)."""
    par, device = init_from_env(device)
    try:
        yield par, device
    except BaseException:
        shutdown(par, wait=False)
        raise
    shutdown(par)
