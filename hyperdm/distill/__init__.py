"""The distillation toolkit (``pip install ".[distill]"``): data, models, DSA, evaluation, loops, CLI.

One concern per module: :mod:`.data` (dataset readers), :mod:`.models` (ConvNet and the
cross-architecture zoo), :mod:`.augment` (DSA), :mod:`.evaluate` (the standard protocol),
:mod:`.presets` (paper Tables 5/6 and the cpu protocol), :mod:`.artifacts` (run directory),
:mod:`.loops` (DM; IDM and Dance plug into the same base), :mod:`.plots`, :mod:`.cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .presets import DistillConfig, resolve

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DistillConfig", "resolve", "distill"]


def distill(
    cfg: DistillConfig,
    out: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    matcher: nn.Module | None = None,
) -> dict:
    """Run one distillation as configured (load data, loop, evaluate, artifacts); returns the metrics.

    ``matcher`` replaces the matcher ``cfg`` asks for (any module ``matcher(real, syn) -> loss``
    taking ``[C, N, D]`` features). A directory ``out`` that holds a run is refused
    (FileExistsError) unless ``resume`` (continue it) or ``overwrite`` (replace its run files).
    """
    from .data import load_dataset
    from .loops import get_loop

    real = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    return get_loop(cfg.method)(cfg, real, out, matcher=matcher, progress=progress).run(
        resume=resume, overwrite=overwrite
    )
