"""Distillation loops over the shared machinery in :mod:`hyperdm.distill.loops.base`."""

from .base import DistillLoop, NonFiniteLossError, build_matcher
from .dance import DanceLoop
from .dm import DMLoop
from .idm import IDMLoop

LOOPS = {"dm": DMLoop, "idm": IDMLoop, "dance": DanceLoop}


def get_loop(method: str) -> type[DistillLoop]:
    """The loop class of ``method`` (dm, idm, dance)."""
    if method in LOOPS:
        return LOOPS[method]
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(LOOPS)}.")


__all__ = ["DistillLoop", "DMLoop", "IDMLoop", "DanceLoop", "NonFiniteLossError", "build_matcher", "get_loop", "LOOPS"]
