"""The distillation toolkit (``pip install ".[distill]"``): data, models, DSA, evaluation, loops, CLI.

One concern per module: :mod:`.data` (dataset readers), :mod:`.models` (ConvNet and the
cross-architecture zoo), :mod:`.augment` (DSA), :mod:`.evaluate` (the standard protocol),
:mod:`.config` (the settings, nested by concern), :mod:`.presets` (paper Tables 5/6 and the cpu
protocol), :mod:`.artifacts` (run directory),
:mod:`.loops` (DM; IDM and Dance plug into the same base), :mod:`.plots`, :mod:`.cli`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from .config import DanceConfig, DistillConfig, EvalConfig, IDMConfig, MatcherConfig, validate
from .presets import resolve
from .settings import NOT_GIVEN

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DistillConfig",
    "MatcherConfig",
    "EvalConfig",
    "IDMConfig",
    "DanceConfig",
    "NOT_GIVEN",
    "resolve",
    "distill",
]


def distill(
    cfg: DistillConfig,
    out: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    matcher: nn.Module | None = None,
    stop_at: int | None = None,
) -> dict:
    """Run one distillation as configured (load data, loop, evaluate, artifacts); returns the metrics.

    Checks first, writing nothing when one fails: the settings, the device, that ``out`` may receive the
    run (a directory that holds one is refused, FileExistsError, unless ``resume``: continue it, or
    ``overwrite``: replace its run files), that it is writable, and a checkpoint to resume. Under torchrun
    it joins the process group (``cuda`` becomes ``cuda:LOCAL_RANK``; rank 0 writes and logs); ``cfg``
    itself is not changed. ``matcher`` replaces the matcher ``cfg`` asks for (any module
    ``matcher(real, syn) -> loss`` taking ``[C, N, D]`` features). ``stop_at``: pause the run at that iteration
    (checkpoint and metrics written, no artifacts), to be continued with ``resume=True``.
    """
    from .artifacts import RunDir, check_writable
    from .data import load_dataset
    from .loops import get_loop
    from .parallel import check_device, joined

    validate(cfg)
    if stop_at is not None and not (isinstance(stop_at, int) and stop_at >= 1):
        raise ValueError(f"stop_at must be an iteration >= 1 (or None: run to the end); got {stop_at!r}.")
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it; pass one of them.")
    check_device(cfg.device)
    loop_cls = get_loop(cfg.method)
    rd = RunDir(out)
    why = rd.refusal(resume=resume, overwrite=overwrite)
    if why:
        raise FileExistsError(why)
    check_writable(rd.path)
    if resume and not rd.existing():
        raise FileNotFoundError(
            f"--resume: {rd.path} holds no run to continue (no checkpoint.pt, no run files); check --out for a typo, "
            "or start the run without --resume."
        )
    if resume and rd.checkpoint.exists():
        rd.check_checkpoint()  # container and CRC checks now; the loop reads it (weights_only) before distilling
    with joined(cfg.device) as (par, device):  # under torchrun: join the process group, cuda -> cuda:LOCAL_RANK
        if not par.is_main:  # rank 0 speaks for the run
            logging.getLogger("hyperdm").setLevel(logging.WARNING)
        cfg = dataclasses.replace(cfg, device=device)
        real = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
        loop = loop_cls(cfg, real, out, matcher=matcher, progress=progress)
        return loop.run(resume=resume, overwrite=overwrite, stop_at=stop_at)
