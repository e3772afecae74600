"""Seeds shared by the loops, the experts, evaluation, pruning and the plots.

Every random stream of the toolkit is derived from the run's seed with :func:`derive_seed` and a
member of :class:`Stream`, so that two streams cannot draw the same numbers: the members are
distinct by construction (``@unique``), and their values are the ones the toolkit has always
used, so results stay as they were.
"""

from __future__ import annotations

from enum import IntEnum, unique

__all__ = ["Stream", "derive_seed"]


@unique
class Stream(IntEnum):
    """Named random streams; ``derive_seed(seed, ..., Stream.X)`` keeps them apart."""

    EVAL_ORDER = 1  # evaluation: batch order of one training run
    EVAL_NET = 2  # evaluation: initial weights of one network
    DANCE_PART = 7  # Dance: the augmentation of one partition cell
    NETWORK = 101  # a freshly initialised network per iteration (DM, IDM, pruning scores)
    PRUNE_SAMPLE = 102  # pruning: the random score
    SAMPLE = 202  # real batches drawn per iteration
    INIT = 303  # the synthetic set's initial real images
    EVAL = 404  # the evaluation's base seed
    EXPERT_NET = 505  # Dance: an expert's initial weights
    POINCARE_SAMPLE = 506  # the Poincare figure: the real images shown
    EXPERT_EPOCH = 606  # Dance: an expert's batch order per epoch
    EXPERT_DATA = 707  # Dance: the subset the experts train on
    POINCARE_NET = 808  # the Poincare figure: the embedding network


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs, platforms and processes; FNV-1a over the parts)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF
