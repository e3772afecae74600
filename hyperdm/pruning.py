"""Hierarchical pruning of real data (HDD paper, Sec. 4.3): score samples, keep the lowest.

Curvature convention: geoopt's ``k > 0`` (points satisfy ``<x,x>_L = -k``; curvature ``-1/k``).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import law, lorentz

__all__ = ["hyperbolic_radius", "class_centroid_distance", "select", "FeatureBank", "STREAM_ELEMENTS"]

log = logging.getLogger(__name__)


def hyperbolic_radius(features: Tensor, *, k: float = 1.0, max_norm: float | None = None) -> Tensor:
    """Distance from the origin of ``expmap0(features)`` (``[N, D] -> [N]``), geoopt's ``k``.

    The exp-map at the origin is radial, so this ranks samples exactly as their feature norm
    does (clamped at ``max_norm * sqrt(k)`` with a clamp, which makes every clamped sample tie).
    """
    return lorentz.radius0(torch.as_tensor(features).double(), k=k, max_norm=max_norm)


#: Elements of one chunk of rows the scorers read at a time (rows = this // D, at least 1): 2**19, so that the
#: chunk's float64 copy (4 MiB) stays in the CPU's cache while it is worked on, and each op has enough work for
#: the threads to share (measured on a 2-core AMD EPYC: 256 rows of 2,048 ran fastest of 32 to 1,024).
STREAM_ELEMENTS = 1 << 19


def _rows_per_chunk(dim: int) -> int:
    """Rows per chunk: :data:`STREAM_ELEMENTS` values (256 rows of 2,048 features)."""
    return max(1, STREAM_ELEMENTS // max(1, int(dim)))


def _float64_rows(features: Any, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of ``[N, D]`` features (a tensor, a NumPy array or a memmap) as a new float64 tensor.

    Half precision goes through float32 (exact, and vectorised, unlike a direct float16 -> float64 cast)."""
    rows = features[start:stop]
    if isinstance(rows, np.ndarray):
        with warnings.catch_warnings():  # a read-only memmap: torch warns that writes would be undefined
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            rows = torch.from_numpy(np.ascontiguousarray(rows))
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows = rows.float()
    return rows.to(torch.float64, copy=True)  # always a copy: the scorers work on it in place


def _chunks(features: Any, step: int) -> Iterator[tuple[int, int, Tensor]]:
    n = features.shape[0]
    for s in range(0, n, step):
        e = min(n, s + step)
        yield s, e, _float64_rows(features, s, e)


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
    r"""Hyperbolic distance of each ``expmap0(f_i)`` to its class's Law centroid, ``[N]``, float64.

    Two streaming passes over the rows in file order, ``chunk_size`` rows at a time (default
    :data:`STREAM_ELEMENTS` values: 256 rows of 2,048), so a memmap-backed bank is read sequentially
    and never held in RAM. Memory besides the chunk: per class the weighted sum ``[D]`` and a few
    scalars, per row three float64 scalars (``|v_i|``, its clamped radius, its angle to the class
    direction): ``8 (C D + 3 N)`` bytes, 40 MiB for ImageNet (``C = 1000``, ``D = 2048``,
    ``N = 1.28M``).

    1. per row ``|v_i|`` and ``t_i = min(|v_i|/sqrt(k), max_norm)``; per class the sums of the Law
       centroid (:mod:`hyperdm.law`: ``sum sinh(t_i) u_i``, ``sum e^{-t_i}``, ``sum e^{t_i}``, ``B``), in
       float64 without a shift (:func:`hyperdm.law.shift_needed`): ``t <= SAFE_RADIUS = 300`` keeps every sum
       and product inside float64's range;
    2. per row ``e_i = |u_i - \hat u_c|^2`` exactly, as ``|v_i - |v_i| \hat u_c|^2 / |v_i|^2`` with
       ``\hat u_c`` the unit direction of the class sum; from it the spread about ``\tilde u = a \hat u``
       (``a = |m_s| / B``) as ``|u_i - \tilde u|^2 = (1 - a)^2 + a e_i``, two non-negative terms;

    then the centroids (:func:`hyperdm.law.law_q`), and each row's distance by the chord form
    (:func:`hyperdm.law.chord`),
    ``2 sqrt(k) asinh(sqrt(sinh^2((t_i - rho)/2) + sinh(t_i) sinh(rho) e_i / 4))``, ``rho`` the
    centroid's radius. Without ``max_norm`` radii beyond :data:`hyperdm.law.SAFE_RADIUS` are
    saturated there. ``process_group``: these rows are this rank's shard; the class centroids are
    those of every rank's rows (exact: the class sums are all-reduced after each pass); labels are
    then ``0 .. num_classes-1``.
    """
    labels = torch.as_tensor(labels).long().contiguous()
    n = labels.numel()
    if features.shape[0] != n:
        raise ValueError(f"{features.shape[0]} feature rows for {n} labels; pass one label per row.")
    mn = law.SAFE_RADIUS if max_norm is None else min(float(max_norm), law.SAFE_RADIUS)
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
    cls = torch.searchsorted(classes, labels)
    K, D = classes.numel(), int(features.shape[-1])
    sk = math.sqrt(float(k))
    f64 = torch.float64
    step = chunk_size or _rows_per_chunk(D)
    norm, t = torch.empty(n, dtype=f64), torch.empty(n, dtype=f64)
    # pass 1: per-row norms and radii; per class sum e^{t}, sum e^{-t}, B and sum b u (law.point_terms). No shift
    # (law.shift_needed: float64 up to SAFE_RADIUS): e^{t} <= 2e130 and every sum and product below stays inside
    # float64's range for up to 1e9 rows
    a_plus, a_minus, b_sum = torch.zeros(K, dtype=f64), torch.zeros(K, dtype=f64), torch.zeros(K, dtype=f64)
    ms = torch.zeros(K, D, dtype=f64)
    for s, e, x in _chunks(features, step):
        c = cls[s:e]
        nv = torch.linalg.vector_norm(x, dim=-1)
        tc = (nv / sk).clamp(law.TINY, mn)
        norm[s:e], t[s:e] = nv, tc
        b, cosh, em, _, _ = law.point_terms(tc)
        a_plus.index_add_(0, c, b + cosh)
        a_minus.index_add_(0, c, em)
        b_sum.index_add_(0, c, b)
        ms.index_add_(0, c, x.mul_(law.coefficient(b, law.safe_norm(nv, sk)).unsqueeze(-1)))  # the chunk's own copy
    points = torch.bincount(cls, minlength=K).to(f64)
    if reduce is not None:  # every rank's sums
        both = reduce(torch.cat((ms, a_plus[:, None], a_minus[:, None], b_sum[:, None], points[:, None]), 1), "sum")
        ms, a_plus, a_minus, b_sum, points = both[:, :D], both[:, D], both[:, D + 1], both[:, D + 2], both[:, D + 3]
    ms_norm = torch.linalg.vector_norm(ms, dim=-1)
    uh = ms / torch.where(ms_norm > 0, ms_norm, torch.ones_like(ms_norm)).unsqueeze(-1)
    # pass 2: e_i = |u_i - u^_c|^2 per row (the angle the distance needs), and per class the spread's sum b_i e_i
    ang = torch.zeros(n, dtype=f64)
    b_e = torch.zeros(K, dtype=f64)
    for s, e, x in _chunks(features, step):
        c = cls[s:e]
        nv, tc = norm[s:e], t[s:e]
        diff = x.addcmul_(nv.unsqueeze(-1), uh.index_select(0, c), value=-1.0)  # v_i - |v_i| u^_c, in place
        ei = torch.linalg.vector_norm(diff, dim=-1).div_(law.safe_norm(nv, sk)).square_()
        ang[s:e] = ei
        b_e.index_add_(0, c, torch.sinh(tc) * ei)
    if reduce is not None:
        b_e = reduce(b_e, "sum")
    a = ms_norm / torch.where(b_sum > 0, b_sum, torch.ones_like(b_sum))  # |u~| = |m_s| / B
    spread = b_sum * (1.0 - a).square() + a * b_e  # sum_i b_i |u_i - u~|^2 = sum_i b_i ((1 - a)^2 + a e_i)
    spread = spread * (points > 1)  # one point has no spread (rounding would leave eps^2)
    q = law.law_q(a_minus, a_plus, b_sum, spread)  # -<m,m>_L on the common scale
    sinh_rho = ms_norm * law.normaliser(q, 1.0)  # the centroid's radius rho, as sinh(rho) = |y_s| / sqrt(k)
    rc, sc = torch.asinh(sinh_rho)[cls], sinh_rho[cls]
    return law.chord_distance(law.chord(t - rc, torch.sinh(t) * sc, ang), sk)


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
    # by score (ties by index), then grouped by class keeping that order: each class's lowest come first
    order = torch.argsort(scores, stable=True)
    by_class = torch.argsort(labels[order], stable=True)
    perm = order[by_class]
    _, counts = torch.unique_consecutive(labels[perm], return_counts=True)
    quota = torch.round(keep * counts.double()).long().clamp_min(1)  # round half to even, as Python's round
    starts = torch.cumsum(counts, 0) - counts
    group = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    rank = torch.arange(perm.numel()) - starts[group]
    return torch.sort(perm[rank < quota[group]]).values


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

        Reads the rows in file order, ``chunk_size`` at a time (default :data:`STREAM_ELEMENTS` values),
        so a memmap bank larger than RAM is scored without loading it: one pass for ``"radius"``, two for
        ``"centroid"`` (:func:`class_centroid_distance`, which states its memory).
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
                for s, e, rows in _chunks(fe, chunk_size or _rows_per_chunk(fe.shape[-1])):
                    total[s:e] += hyperbolic_radius(rows, k=k, max_norm=max_norm)
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
