"""Distillation loops over the shared machinery in :mod:`hyperdm.distill.loops.base`."""

from .base import DistillLoop, NonFiniteLossError, build_matcher
from .dm import DMLoop
from .idm import IDMLoop

LOOPS = {"dm": DMLoop, "idm": IDMLoop}


def get_loop(method: str) -> type[DistillLoop]:
    """The loop class of ``method`` (dm, idm; dance is planned)."""
    if method in LOOPS:
        return LOOPS[method]
    if method == "dance":
        raise NotImplementedError("--method dance is not implemented yet (planned on the same toolkit); use --method dm or idm.")
    raise ValueError(f"unknown method {method!r}; choose one of dm, idm, dance.")


__all__ = ["DistillLoop", "DMLoop", "IDMLoop", "NonFiniteLossError", "build_matcher", "get_loop", "LOOPS"]
