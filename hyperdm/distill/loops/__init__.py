"""Distillation loops over the shared machinery in :mod:`hyperdm.distill.loops.base`."""

from .base import DistillLoop, NonFiniteLossError, build_matcher
from .dm import DMLoop

LOOPS = {"dm": DMLoop}


def get_loop(method: str) -> type[DistillLoop]:
    """The loop class of ``method``; IDM and Dance arrive in the next release (issue 5)."""
    if method in LOOPS:
        return LOOPS[method]
    if method in ("idm", "dance"):
        raise NotImplementedError(
            f"--method {method} is not implemented yet (planned: IDM and Dance loops on the same toolkit); use --method dm."
        )
    raise ValueError(f"unknown method {method!r}; choose one of dm, idm, dance.")


__all__ = ["DistillLoop", "DMLoop", "NonFiniteLossError", "build_matcher", "get_loop", "LOOPS"]
