"""Hierarchical pruning of real data (HDD paper, Sec. 4.3): score samples, keep the lowest.

Curvature convention: geoopt's ``k > 0`` (points satisfy ``<x,x>_L = -k``; curvature ``-1/k``).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import lorentz

__all__ = ["hyperbolic_radius", "class_centroid_distance", "select", "FeatureBank"]

log = logging.getLogger(__name__)


def hyperbolic_radius(features: Tensor, *, k: float = 1.0, max_norm: float | None = None) -> Tensor:
    """Distance from the origin of ``expmap0(features)`` (``[N, D] -> [N]``), geoopt's ``k``.

    The exp-map at the origin is radial, so this ranks samples exactly as their feature norm
    does (clamped at ``max_norm * sqrt(k)`` with a clamp, which makes every clamped sample tie).
    """
    return lorentz.radius0(torch.as_tensor(features).double(), k=k, max_norm=max_norm)


def _rows_per_chunk(dim: int) -> int:
    """Rows per chunk so that one float64 work array holds 2**24 values (128 MiB)."""
    return max(1, 2**24 // max(1, int(dim)))


def class_centroid_distance(
    features: Tensor,
    labels: Tensor,
    *,
    k: float = 1.0,
    max_norm: float | None = None,
    chunk_size: int | None = None,
    process_group: Any = None,
    num_classes: int | None = None,
) -> Tensor:
    """Hyperbolic distance of each ``expmap0(f_i)`` to its class's Law centroid, ``[N]``, float64.

    Works in chunks of ``chunk_size`` rows (default: 2**24 values, 128 MiB per float64 work array), so
    memmap-backed banks stay out of RAM. Without
    ``max_norm`` radii beyond :data:`hyperdm.lorentz.SAFE_RADIUS` are saturated there.
    ``process_group``: these rows are this rank's shard; the class centroids are those of every
    rank's rows (exact, :mod:`hyperdm.distributed`). Labels are then ``0 .. num_classes-1``.
    """
    labels = torch.as_tensor(labels).long().contiguous()
    n = labels.numel()
    mn = lorentz.SAFE_RADIUS if max_norm is None else min(float(max_norm), lorentz.SAFE_RADIUS)
    reduce = None
    if process_group is not None:
        from .distributed import all_reduce_fn, check_process_group

        check_process_group(process_group)
        if num_classes is None:
            raise ValueError("with process_group pass num_classes= (a rank may not hold every class).")
        reduce = all_reduce_fn(process_group)
        classes = torch.arange(num_classes)
    else:
        classes = torch.unique(labels)
    cents = []
    for c in classes.tolist():  # one pass per class; fine for a one-off scoring
        idx = torch.nonzero(labels == c).squeeze(1)
        rows = torch.as_tensor(np.asarray(features[idx.numpy()], dtype=np.float64)).reshape(
            1, idx.numel(), features.shape[-1]
        )
        mask = None
        if idx.numel() == 0:  # no row of this class here (other ranks have some)
            rows, mask = rows.new_zeros(1, 1, features.shape[-1]), torch.zeros(1, 1, dtype=torch.bool)
        cents.append(lorentz.feature_centroid(rows, k=k, max_norm=mn, mask=mask, reduce=reduce)[0])
    cent = torch.stack(cents)
    cls = torch.searchsorted(classes, labels)
    out = torch.empty(n, dtype=torch.float64)
    chunk_size = chunk_size or _rows_per_chunk(features.shape[-1])
    for s in range(0, n, chunk_size):
        f = torch.as_tensor(np.asarray(features[s : s + chunk_size], dtype=np.float64))
        out[s : s + chunk_size] = lorentz.dist(lorentz.expmap0(f, k=k, max_norm=mn), cent[cls[s : s + chunk_size]], k=k)
    return out


def select(scores: Tensor, *, keep: float, labels: Tensor | None = None) -> Tensor:
    """Indices (ascending) of the ``keep`` fraction with the lowest scores.

    Per class when ``labels`` are given: each class keeps ``max(1, round(keep * n_c))`` samples,
    so no class with samples ends up empty. Ties are broken by index (stable sort).
    """
    scores = torch.as_tensor(scores)
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (one per sample); got shape {tuple(scores.shape)}.")
    if not (isinstance(keep, (int, float)) and 0 < keep <= 1):
        raise ValueError(f"keep must be a fraction in (0, 1]; got {keep!r} (e.g. keep=0.2 keeps 20%).")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; recompute them from finite features.")
    if labels is None:
        labels = torch.zeros_like(scores, dtype=torch.long)
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dim() != 1:
        raise ValueError("labels must be a 1-D integer tensor, one per score.")
    if labels.numel() != scores.numel():
        raise ValueError(f"{labels.numel()} labels for {scores.numel()} scores; pass one label per score.")
    kept = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        order = torch.argsort(scores[idx], stable=True)
        kept.append(idx[order[: max(1, round(keep * idx.numel()))]])
    return torch.sort(torch.cat(kept)).values


class FeatureBank:
    """Features of a dataset under one or several extractors, ``[E, N, D]``, plus labels ``[N]``.

    Built by streaming batches (images are not kept); optionally float16 and/or on a numpy
    memmap file for data that does not fit in RAM.
    """

    def __init__(self, features: np.ndarray | Tensor, labels: Tensor) -> None:
        self._features = features
        self.labels = torch.as_tensor(labels).long().contiguous()

    @property
    def features(self) -> Tensor:
        """``[E, N, D]`` features (a zero-copy view of a memmap bank: read it, do not write to it)."""
        f = self._features
        if not isinstance(f, np.ndarray):
            return f
        with warnings.catch_warnings():  # a read-only memmap: torch warns that writes would be undefined
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.asarray(f))

    @classmethod
    def build(
        cls,
        batches: Iterable,
        extractors: Sequence[Callable[[Tensor], Tensor]],
        *,
        dtype: torch.dtype = torch.float32,
        path: str | Path | None = None,
        num_samples: int | None = None,
        device: str | torch.device | None = None,
    ) -> FeatureBank:
        if path is not None and num_samples is None:
            raise ValueError("a memmap bank needs num_samples= (the dataset size) to size its file.")
        npdt = np.float16 if dtype == torch.float16 else np.float32
        chunks: list[np.ndarray] = []
        labels: list[Tensor] = []
        mm: np.memmap | None = None
        pos = 0
        with torch.no_grad():
            for b, (images, y) in enumerate(batches):
                if device is not None:
                    images = images.to(device)
                feats = [e(images) for e in extractors]
                for f in feats:
                    if f.dim() != 2:
                        raise ValueError(
                            f"extractors must return [B, D] features; got {tuple(f.shape)} (flatten them)."
                        )
                    if not torch.isfinite(f).all():
                        raise ValueError(f"batch {b}: extractor output has NaN/inf; check the images and the networks.")
                arr = torch.stack(feats).float().cpu().numpy().astype(npdt)
                if path is not None:
                    if mm is None:
                        assert num_samples is not None  # checked above, with path
                        mm = np.lib.format.open_memmap(
                            str(path), mode="w+", dtype=npdt, shape=(len(extractors), num_samples, arr.shape[-1])
                        )
                    if pos + arr.shape[1] > num_samples:
                        raise ValueError(
                            f"the stream yields more than num_samples={num_samples} samples; pass the dataset size."
                        )
                    mm[:, pos : pos + arr.shape[1]] = arr
                else:
                    chunks.append(arr)
                labels.append(torch.as_tensor(y).long().cpu())
                pos += arr.shape[1]
                log.debug("feature bank: %d samples", pos)
        if path is not None:
            if mm is None or pos != num_samples:
                raise ValueError(f"the stream yielded {pos} samples, not num_samples={num_samples}.")
            mm.flush()
            return cls(mm, torch.cat(labels))
        return cls(np.concatenate(chunks, axis=1), torch.cat(labels))

    def scores(
        self,
        method: str = "radius",
        *,
        k: float = 1.0,
        max_norm: float | None = None,
        chunk_size: int | None = None,
        process_group: Any = None,
        num_classes: int | None = None,
    ) -> Tensor:
        """Per-sample score averaged over extractors: ``"radius"`` or ``"centroid"`` (distance to class centroid).

        Reads ``chunk_size`` rows at a time (default: 2**24 values; float64 work arrays of
        ``chunk_size x D``), so a memmap bank larger than RAM is scored without loading it.
        ``process_group``: this bank holds one rank's shard of the samples; class centroids are
        taken over every rank's shard (pass ``num_classes``); the scores returned are this shard's.
        """
        if method not in ("radius", "centroid"):
            raise ValueError(f"unknown method {method!r}; use 'radius' or 'centroid'.")
        f = self._features
        n = self.labels.numel()
        total = torch.zeros(n, dtype=torch.float64)
        for e in range(f.shape[0]):
            fe = f[e]
            if method == "radius":
                step = chunk_size or _rows_per_chunk(fe.shape[-1])
                for s in range(0, n, step):
                    rows = torch.from_numpy(np.asarray(fe[s : s + step], dtype=np.float64))  # a copy of the chunk
                    total[s : s + step] += hyperbolic_radius(rows, k=k, max_norm=max_norm)
            else:
                total += class_centroid_distance(
                    fe,
                    self.labels,
                    k=k,
                    max_norm=max_norm,
                    chunk_size=chunk_size,
                    process_group=process_group,
                    num_classes=num_classes,
                )
        return total / f.shape[0]

    def select(
        self,
        keep: float,
        *,
        method: str = "radius",
        k: float = 1.0,
        max_norm: float | None = None,
        per_class: bool = True,
        chunk_size: int | None = None,
        process_group: Any = None,
        num_classes: int | None = None,
        total: int | None = None,
    ) -> Tensor:
        """Indices of the ``keep`` fraction with the lowest :meth:`scores` (per class by default).

        ``process_group``: this bank holds rows ``rank, rank+W, ...`` of a dataset of ``total``
        samples (the stride a ``DistributedSampler`` without shuffling gives); the scores of every
        rank are gathered and every rank returns the same global indices.
        """
        scores = self.scores(
            method, k=k, max_norm=max_norm, chunk_size=chunk_size, process_group=process_group, num_classes=num_classes
        )
        labels = self.labels
        if process_group is not None:
            from .distributed import gather_strided

            if total is None:
                raise ValueError("with process_group pass total= (the dataset size) to place each rank's rows.")
            scores, labels = gather_strided(scores, total, process_group), gather_strided(labels, total, process_group)
        return select(scores, keep=keep, labels=labels if per_class else None)

    @staticmethod
    def _files(path: str | Path) -> tuple[Path, Path]:
        """``<path>.npy`` and ``<path>.json``, keeping every character of ``path`` (``bank_0.5`` -> ``bank_0.5.npy``;
        a trailing ``.npy`` / ``.json`` is replaced)."""
        path = Path(path)
        name = path.name
        for ext in (".npy", ".json"):
            if name.endswith(ext) and len(name) > len(ext):
                name = name[: -len(ext)]
                break
        return path.with_name(name + ".npy"), path.with_name(name + ".json")

    def save(self, path: str | Path) -> None:
        """Write ``<path>.npy`` (the features ``[E, N, D]``, in their own dtype, which the ``.npy`` header
        records) and ``<path>.json`` (the labels). :meth:`load` reads both back unchanged."""
        npy, js = self._files(path)
        np.save(npy, np.asarray(self._features))
        js.write_text(json.dumps({"labels": self.labels.tolist()}))

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True) -> FeatureBank:
        npy, js = cls._files(path)
        feats = np.load(npy, mmap_mode="r" if mmap else None)
        labels = torch.tensor(json.loads(js.read_text())["labels"], dtype=torch.long)
        return cls(feats, labels)
