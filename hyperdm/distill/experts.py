"""Expert networks for Dance: trained on real data once, cached on disk, reused by every run.

Dance (Zhang et al., IJCAI 2024; Hansong-Zhang/DANCE ``pretrain.py``) trains ``count`` networks
from scratch on the real training set and keeps each one's *initial* and *trained* weights.
Training follows the reference: SGD (lr ``lr``, momentum 0.9, weight decay 5e-4), batch ``batch``,
``epochs`` epochs with the learning rate times ``gamma`` (0.2) from epoch ``2*epochs//3`` and
again from ``5*epochs//6``, per-image augmentation "color_crop" (DiffAug, every group applied),
and CutMix (``beta`` 1) on a batch with probability ``cutmix_prob`` (0.5).

The cache: one directory per (training data, settings) under ``root``, named
``<dataset>-<model>-<hash>``, where the hash covers the exact training tensors and every setting
of :class:`ExpertConfig`, so experts are reused only when they would be trained the same way.
``meta.json`` there says what they were trained on. Each expert is one file ``expertNNN.pt``
(``{'init', 'trained', ...}``), written atomically when it finishes; while it trains,
``expertNNN.partial.pt`` is rewritten after every epoch, so a killed run continues at the last
finished epoch. Every random draw of epoch ``e`` of expert ``i`` comes from a generator seeded by
``(seed, i, e)``: a resumed expert equals an uninterrupted one bit for bit on the same device.

Deviation from the reference, stated: a learning-rate milestone at epoch 0 (only when
``epochs < 2``) is ignored rather than applied from the start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .artifacts import CorruptFileError, PathLike, UnsafeFileError, atomic_save, load_torch_file, write_json
from .augment import DSAParams, cutmix, dsa
from .config import ExpertConfig
from .data import DatasetInfo
from .models import seeded_network
from .progress import progress_bar
from .seeding import Stream, derive_seed

__all__ = [
    "ExpertConfig",
    "Expert",
    "default_cache_root",
    "expert_dir",
    "load_or_train_experts",
    "train_expert",
    "expert_lr",
    "data_fingerprint",
    "subset_per_class",
]

log = logging.getLogger(__name__)

_FORMAT = 1


@dataclass
class Expert:
    """One expert: its weights at initialisation and after training (state dicts on the CPU)."""

    init: dict[str, Tensor]
    trained: dict[str, Tensor]
    train_acc: float


def expert_lr(cfg: ExpertConfig, epoch: int) -> float:
    """Learning rate of ``epoch``: ``lr * gamma ** (number of milestones m with 0 < m <= epoch)``."""
    return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones() if 0 < m <= epoch)


def default_cache_root() -> Path:
    """``$HYPERDM_CACHE/experts`` if set, else ``~/.cache/hyperdm/experts``."""
    base = os.environ.get("HYPERDM_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "hyperdm") / "experts"


def data_fingerprint(images: Tensor, labels: Tensor) -> str:
    """A hash of the exact training tensors (shape, dtype, values)."""
    h = hashlib.blake2b(digest_size=16)
    for t in (images, labels):
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def subset_per_class(labels: Tensor, per_class: int | None, num_classes: int, *, seed: int) -> Tensor:
    """Indices of ``per_class`` random images of every class (sorted), or of every image when None."""
    if per_class is None:
        return torch.arange(labels.numel())
    gen = torch.Generator().manual_seed(derive_seed(seed, Stream.EXPERT_DATA))
    picks = []
    for c in range(num_classes):
        idx = torch.nonzero(labels.cpu() == c).squeeze(1)
        picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def expert_dir(root: Path, info: DatasetInfo, cfg: ExpertConfig, fingerprint: str) -> Path:
    key = json.dumps({"format": _FORMAT, "data": fingerprint, "config": dataclasses.asdict(cfg)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(root) / f"{info.name}-{cfg.model}-{digest}"


def _epoch(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x_all: Tensor,
    y_all: Tensor,
    cfg: ExpertConfig,
    gen: torch.Generator,
) -> float:
    """One epoch over (x_all, y_all) in random order; returns the training accuracy."""
    params = DSAParams(aug_mode="M")
    n = x_all.shape[0]
    order = torch.randperm(n, generator=gen).to(x_all.device)
    correct = 0
    net.train()
    for i in range(0, n, cfg.batch):
        idx = order[i : i + cfg.batch]
        x, y = x_all[idx], y_all[idx]
        with torch.no_grad():
            x = dsa(x, cfg.strategy, params, generator=gen, siamese=False)
        if float(torch.rand(1, generator=gen)) < cfg.cutmix_prob:
            x, perm, ratio = cutmix(x, beta=cfg.cutmix_beta, generator=gen)
            out = net(x)
            loss = F.cross_entropy(out, y) * ratio + F.cross_entropy(out, y[perm]) * (1.0 - ratio)
        else:
            out = net(x)
            loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        correct += int((out.argmax(1) == y).sum())
    return correct / max(1, n)


def _cpu_state(net: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _load_cached(path: Path) -> dict:
    """A cached expert file, read safely (``weights_only=True``); a damaged one names the fix (delete it: it is
    retrained)."""
    try:
        state = load_torch_file(path, what="a cached Dance expert")
    except (CorruptFileError, UnsafeFileError) as e:
        raise type(e)(f"{e} Delete it (rm {path}); the expert is trained again.") from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise CorruptFileError(
            f"{path} is not a hyperdm expert file (format {_FORMAT}); delete it (rm {path}) and it is trained again."
        )
    return state


def train_expert(
    i: int,
    images: Tensor,
    labels: Tensor,
    info: DatasetInfo,
    cfg: ExpertConfig,
    directory: Path,
    *,
    device: str = "cpu",
    bar: Any = None,
) -> Expert:
    """Train expert ``i`` (continuing from its partial file if one is there) and write ``expertNNN.pt``.

    ``bar``: a progress bar from :func:`progress_bar` (advanced by one per epoch), or None."""
    final, partial = directory / f"expert{i:03d}.pt", directory / f"expert{i:03d}.partial.pt"
    net = seeded_network(
        cfg.model, info.channels, info.num_classes, info.im_size, seed=derive_seed(cfg.seed, i, Stream.EXPERT_NET)
    ).to(device)
    init = _cpu_state(net)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    start, acc = 0, 0.0
    if partial.exists():
        state = _load_cached(partial)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        init, start, acc = state["init"], int(state["epoch"]), float(state["train_acc"])
        log.info("expert %d: continuing at epoch %d of %d (%s)", i, start, cfg.epochs, partial)
        if bar is not None:
            bar.update(start)
    x_all, y_all = images.to(device), labels.to(device)
    t0 = time.perf_counter()
    for e in range(start, cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = expert_lr(cfg, e)
        acc = _epoch(
            net, opt, x_all, y_all, cfg, torch.Generator().manual_seed(derive_seed(cfg.seed, i, e, Stream.EXPERT_EPOCH))
        )
        if e + 1 < cfg.epochs:
            atomic_save(
                {
                    "format": _FORMAT,
                    "epoch": e + 1,
                    "init": init,
                    "net": _cpu_state(net),
                    "opt": opt.state_dict(),
                    "train_acc": acc,
                },
                partial,
            )
        if bar is not None:
            bar.update(1)
    expert = Expert(init=init, trained=_cpu_state(net), train_acc=acc)
    atomic_save(
        {"format": _FORMAT, "init": expert.init, "trained": expert.trained, "train_acc": acc, "epochs": cfg.epochs},
        final,
    )
    partial.unlink(missing_ok=True)
    log.info(
        "expert %d/%d trained: %d epochs, last-epoch training accuracy %.1f%% (%.1f s)",
        i + 1,
        cfg.count,
        cfg.epochs,
        100 * acc,
        time.perf_counter() - t0,
    )
    return expert


def load_or_train_experts(
    images: Tensor,
    labels: Tensor,
    info: DatasetInfo,
    cfg: ExpertConfig,
    *,
    root: PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[list[Expert], Path]:
    """The ``cfg.count`` experts for this training data: read from the cache, trained (and cached) where missing.

    Returns the experts (state dicts on the CPU) and their cache directory.
    """
    root = Path(root) if root is not None else default_cache_root()
    keep = subset_per_class(labels, cfg.per_class, info.num_classes, seed=cfg.seed)
    x, y = images[keep], labels[keep]
    directory = expert_dir(root, info, cfg, data_fingerprint(x, y))
    directory.mkdir(parents=True, exist_ok=True)
    meta = directory / "meta.json"
    if not meta.exists():
        write_json(
            meta,
            {
                "dataset": info.name,
                "train_images": int(y.numel()),
                "config": dataclasses.asdict(cfg),
                "format": _FORMAT,
                "note": "Dance experts made by hyperdm; safe to delete (they are retrained)",
            },
        )
    have = [i for i in range(cfg.count) if (directory / f"expert{i:03d}.pt").exists()]
    if have:
        log.info("experts: reusing %d of %d cached in %s", len(have), cfg.count, directory)
    todo = [i for i in range(cfg.count) if i not in have]
    experts: list[Expert | None] = [None] * cfg.count
    for i in have:
        s = _load_cached(directory / f"expert{i:03d}.pt")
        experts[i] = Expert(init=s["init"], trained=s["trained"], train_acc=float(s["train_acc"]))
    if todo:
        log.info(
            "experts: training %d %s on %d real images for %d epochs each (cache: %s)",
            len(todo),
            cfg.model,
            y.numel(),
            cfg.epochs,
            directory,
        )
        bar = progress_bar(len(todo) * cfg.epochs, "experts", progress)
        try:
            for i in todo:
                experts[i] = train_expert(i, x, y, info, cfg, directory, device=device, bar=bar)
        finally:
            if bar is not None:
                bar.close()
    return [e for e in experts if e is not None], directory
