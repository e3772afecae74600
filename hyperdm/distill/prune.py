"""Hierarchical pruning of a real training set (paper Sec. 4.3).

Shared by ``distill --prune-keep`` and ``hyperdm prune``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..pruning import FeatureBank, select
from .data import DatasetInfo
from .models import seeded_network
from .parallel import Parallel
from .progress import progress_bar
from .seeding import Stream, derive_seed

__all__ = ["prune_indices", "pruning_network_seed"]


def pruning_network_seed(seed: int, t: int) -> int:
    """Seed of the ``t``-th random scoring network of a run with ``seed``."""
    return derive_seed(seed, -1, Stream.NETWORK, t)


def prune_indices(
    images: Tensor,
    labels: Tensor,
    info: DatasetInfo,
    *,
    keep: float,
    score: str = "radius",
    nets: int = 3,
    k: float = 1.0,
    model: str = "ConvNet",
    seed: int = 0,
    device: str | torch.device | None = None,
    batch: int = 1024,
    progress: bool = False,
) -> Tensor:
    """Indices (ascending) of the ``keep`` fraction of each class closest to the root.

    Scores are averaged over ``nets`` random ``model`` networks (train mode, as during distillation).
    The radius uses the exact exp-map: with the clamp every point would sit at the same radius.
    ``score="random"`` is the baseline the paper does not show: the same number per class, drawn
    uniformly (seeded by ``seed``), without any network.

    In a data-parallel run (torchrun) each rank scores images ``rank, rank+W, ...`` and the scores are
    gathered, so every rank keeps the same images as a single process would, in ``1/W`` of the time.
    ``progress``: a bar (images per second, time left) in a terminal, else a log line every 30 s.
    """
    if score == "random":
        gen = torch.Generator().manual_seed(derive_seed(seed, -1, Stream.PRUNE_SAMPLE))
        return select(torch.rand(labels.numel(), generator=gen, dtype=torch.float64), keep=keep, labels=labels.cpu())
    extractors = []
    for t in range(nets):
        net = seeded_network(model, info.channels, info.num_classes, info.im_size, seed=pruning_network_seed(seed, t))
        extractors.append(net.to(device if device is not None else images.device).train().embed)

    par = Parallel.current()
    mine_x, mine_y = (images[par.rank :: par.world], labels[par.rank :: par.world]) if par.enabled else (images, labels)

    bar = progress_bar(int(mine_y.numel()), f"pruning: features under {nets} {model}", progress, unit="img")

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, mine_y.numel(), batch):
            yield mine_x[i : i + batch], mine_y[i : i + batch]
            bar.update(min(batch, mine_y.numel() - i))

    bank = FeatureBank.build(batches(), extractors, device=device)
    bar.close()
    if not par.enabled:
        return bank.select(keep, method=score, k=k, max_norm=None)
    return bank.select(
        keep,
        method=score,
        k=k,
        max_norm=None,
        process_group=par.group,
        num_classes=info.num_classes,
        total=int(labels.numel()),
    ).to(labels.device)
