r"""Distribution-matching losses: the hyperbolic (HDD) line and the Euclidean (DM/MMD) line.

Both take the same inputs, so switching between them is one line:

* ``real`` ``[N, D]`` and ``syn`` ``[M, D]``: one class; returns a scalar.
* ``real`` ``[C, N, D]`` and ``syn`` ``[C, M, D]``: C classes in one batched call (no
  Python loop over classes); the per-class losses are reduced with ``reduction``
  (``"sum"``, as DM sums its per-class losses; ``"mean"``; ``"none"`` returns ``[C]``).
* ``real`` ``[N, D]`` with ``real_labels`` ``[N]`` and ``syn`` ``[M, D]`` with
  ``syn_labels`` ``[M]``: grouped by label without a loop; ``"none"`` returns one loss
  per distinct label, in ascending label order. Every label must occur on both sides.

Float16/bfloat16 features are upcast to float32. Bad input raises ``ValueError`` that
names the problem and the fix; shape checks read only metadata. With
``check_finite=True`` the (scalar) loss is tested once and, only if it is NaN/inf, the
inputs are inspected to say which side is at fault (one host sync per call on CUDA).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import fused, lorentz
from . import radius as radius_module

__all__ = [
    "hyperbolic_matching_loss",
    "mmd_matching_loss",
    "REDUCTIONS",
    "Grouped",
    "group",
    "hyperbolic_per_class",
    "mmd_per_class",
    "reduce_losses",
    "check_finite_loss",
    "calibration_alpha",
    "check_k",
    "check_scale",
    "check_max_norm",
    "check_reduction",
]

REDUCTIONS = ("sum", "mean", "none")


class Grouped(NamedTuple):
    """Features brought to ``[C, N, D]`` / ``[C, M, D]`` by :func:`group`: the classes on the first axis, masks
    ``[C, N]`` / ``[C, M]`` for padded rows (None: no padding), whether the call was one class ``[N, D]`` (its loss is
    returned as a scalar), and the all-reduce of the real side's sums over processes (None: one process)."""

    real: Tensor
    real_mask: Tensor | None
    syn: Tensor
    syn_mask: Tensor | None
    single: bool
    reduce: lorentz.Reduce | None = None


def _as_float(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of features, got {type(x).__name__}; pass phi(images).")
    if not x.is_floating_point():
        raise ValueError(f"{name} has dtype {x.dtype}; features must be floating point (call .float() on them).")
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use one of {', '.join(map(repr, REDUCTIONS))}.")


def _check_labels(labels: object, n: int, name: str) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must be a 1-D integer tensor of class labels (e.g. torch.long).")
    if labels.numel() != n:
        raise ValueError(f"{name} has {labels.numel()} entries but the features have {n} rows; pass one label per row.")
    return labels


def _pad_by_label(x: Tensor, idx: Tensor, counts: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Scatter rows of ``x`` [N, D] into ``[C, width, D]`` by class index ``idx``, plus a mask."""
    order = torch.argsort(idx, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    cls = idx[order]
    pos = torch.arange(x.shape[0], device=x.device) - starts[cls]
    out = x.new_zeros(counts.numel(), width, x.shape[-1])
    out = out.index_put((cls, pos), x[order])
    mask = torch.zeros(counts.numel(), width, dtype=torch.bool, device=x.device)
    mask[cls, pos] = True
    return out, mask


def _group(
    real: Tensor, syn: Tensor, real_labels: Tensor | None, syn_labels: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, bool]:
    """Bring the inputs to ``[C, N, D]`` / ``[C, M, D]`` (+ masks) and validate shapes."""
    real = _as_float(real, "real")
    syn = _as_float(syn, "syn")
    if (real_labels is None) != (syn_labels is None):
        raise ValueError("pass both real_labels and syn_labels, or neither.")
    if real_labels is not None:
        if real.dim() != 2 or syn.dim() != 2:
            raise ValueError(
                f"with labels, features must be flat [N, D] and [M, D]; got real {tuple(real.shape)} "
                f"and syn {tuple(syn.shape)}. Drop the labels to pass [C, N, D] batches."
            )
    elif real.dim() not in (2, 3) or syn.dim() != real.dim():
        raise ValueError(
            f"expected real/syn of shape [N, D]/[M, D] (one class) or [C, N, D]/[C, M, D] (C classes); "
            f"got real {tuple(real.shape)} and syn {tuple(syn.shape)}. Flatten image features with "
            f".flatten(1) per class, or pass flat features with real_labels=/syn_labels=."
        )
    if real.shape[-1] != syn.shape[-1]:
        raise ValueError(
            f"feature sizes differ: real has D={real.shape[-1]}, syn has D={syn.shape[-1]}; "
            "embed both with the same network."
        )
    if real.dtype != syn.dtype:
        common = torch.promote_types(real.dtype, syn.dtype)
        real, syn = real.to(common), syn.to(common)
    if real_labels is None:
        single = real.dim() == 2
        if single:
            real, syn = real.unsqueeze(0), syn.unsqueeze(0)
        if real.shape[0] != syn.shape[0]:
            raise ValueError(
                f"real has C={real.shape[0]} classes but syn has C={syn.shape[0]}; "
                "stack the same classes in the same order on both sides."
            )
        for name, x in (("real", real), ("syn", syn)):
            if x.shape[1] == 0:
                raise ValueError(
                    f"{name} has an empty class (0 features per class); give every class at least one sample."
                )
        return real, None, syn, None, single
    rl = _check_labels(real_labels, real.shape[0], "real_labels").to(real.device)
    sl = _check_labels(syn_labels, syn.shape[0], "syn_labels").to(real.device)
    classes = torch.unique(torch.cat((rl, sl)))
    ridx = torch.searchsorted(classes, rl)
    sidx = torch.searchsorted(classes, sl)
    rc = torch.bincount(ridx, minlength=classes.numel())
    sc = torch.bincount(sidx, minlength=classes.numel())
    for name, cnt in (("real", rc), ("syn", sc)):
        missing = classes[cnt == 0]
        if missing.numel():
            raise ValueError(
                f"class(es) {missing.tolist()} have no {name} features (empty class); every label must "
                "appear in both real_labels and syn_labels."
            )
    r, rmask = _pad_by_label(real, ridx, rc, int(rc.max()))
    s, smask = _pad_by_label(syn, sidx, sc, int(sc.max()))
    return r, rmask, s, smask, False


def reduce_losses(per_class: Tensor, reduction: str, single: bool) -> Tensor:
    """The per-class losses ``[C]`` reduced as ``reduction`` asks (a one-class call returns its scalar)."""
    if single:
        return per_class.squeeze(0)
    if reduction == "sum":
        return per_class.sum()
    if reduction == "mean":
        return per_class.mean()
    return per_class


def check_finite_loss(loss: Tensor, g: Grouped, what: str) -> None:
    """Raise a ValueError naming the bad side if ``loss`` is NaN/inf (one host read).

    On CUDA tensors the check stays on the device instead (``torch._assert_async``): no host
    sync; a non-finite loss then fails the stream with a message that says what to check.
    Under ``torch.compile`` on the CPU it is left out (no graph break; Inductor's CPU code would
    abort the process on a failed device assert): a non-finite loss is then returned as is.
    """
    if not loss.is_cuda and torch.compiler.is_compiling():
        return
    if loss.is_cuda:
        torch._assert_async(
            torch.isfinite(loss).all(),
            f"hyperdm: the {what} loss is not finite: check the real and "
            "synthetic features for NaN/inf (a diverged synthetic set, or a learning rate that is too high)",
        )
        return
    if math.isfinite((loss.sum() if loss.dim() else loss).item()):  # a sum of finite values is finite
        return  # (the features are read only below, once the loss is known to be bad)
    for name, x in (("real", g.real), ("syn", g.syn)):
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            classes = torch.nonzero(bad.flatten(1).any(1)).flatten().tolist() if x.dim() == 3 else []
            where = f" in class{'es' if len(classes) > 1 else ''} {', '.join(map(str, classes[:10]))}" + (
                f" and {len(classes) - 10} more" if len(classes) > 10 else ""
            )
            raise ValueError(
                f"{name} features contain {int(bad.sum())} NaN/inf values{where if classes else ''}, so the {what} "
                "loss is not finite; check the network and the images that produced them (a diverged synthetic "
                "set, or a learning rate that is too high)."
            )
    raise FloatingPointError(
        f"the {what} loss is not finite although the features are; please report this with the inputs "
        "(torch.save them) — as a workaround cast the features to float64."
    )


def check_k(k: float | Tensor) -> None:
    kk = k.detach() if isinstance(k, Tensor) else torch.as_tensor(float(k))
    if not bool(torch.isfinite(kk).all()) or bool((kk <= 0).any()):
        raise ValueError(
            f"k must be > 0 (geoopt's convention: points satisfy <x,x>_L = -k, curvature -1/k); got {k}. "
            "The paper's table column 'K' holds this k, e.g. k=1."
        )


def check_scale(scale: object) -> None:
    if not isinstance(scale, (int, float)) or not (scale >= 0) or scale != scale or scale == float("inf"):
        raise ValueError(
            f"scale (the paper's lambda) must be a finite number >= 0; got {scale!r}. Typical: 20. "
            "(scale='auto' is chosen from the first batch and needs HyperbolicMatcher(scale='auto').)"
        )


def check_max_norm(max_norm: float | None) -> None:
    if max_norm is not None and not (float(max_norm) > 0):
        raise ValueError(
            f"max_norm must be > 0 or None; got {max_norm!r}. Use 10.0 (the official HDD clamp) or None for the "
            "exact map."
        )


def hyperbolic_per_class(
    real: Tensor,
    real_mask: Tensor | None,
    syn: Tensor,
    syn_mask: Tensor | None,
    *,
    k: float | Tensor,
    scale: float,
    max_norm: float | None,
    hierarchical: bool,
    reduce: lorentz.Reduce | None = None,
    use_fused: bool | str = "auto",
    want_stats: bool = False,
) -> tuple[Tensor, radius_module.RadiusStats | None]:
    """``scale * d_L`` of the two Law centroids per class, ``[C]`` in the features' dtype, for grouped features
    (:func:`group`; arguments already checked), and with ``want_stats`` the call's
    :class:`hyperdm.radius.RadiusStats` (else None). :func:`hyperdm.fused.hdd_distance` computes it."""
    common: dict[str, Any] = {
        "k": k,
        "max_norm": max_norm,
        "hierarchical": hierarchical,
        "real_mask": real_mask,
        "syn_mask": syn_mask,
        "reduce": reduce,
        "fused": use_fused,
        "scale": scale,
        "dtype": real.dtype,
    }
    if want_stats:
        return fused.hdd_distance_with_stats(real, syn, **common)
    return fused.hdd_distance(real, syn, **common), None


def mmd_per_class(
    real: Tensor, rmask: Tensor | None, syn: Tensor, smask: Tensor | None, reduce: lorentz.Reduce | None = None
) -> Tensor:
    """DM's line per class, ``[C]``, for grouped features (:func:`group`): ``|mean(real) - mean(syn)|^2``, the real
    mean over every rank's features with ``reduce``."""

    def mean(x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return x.mean(-2)
        m = mask.to(x.dtype).unsqueeze(-1)
        return (x * m).sum(-2) / m.sum(-2)

    if reduce is None:
        real_mean = mean(real, rmask)
    else:  # the mean over every rank's real features: all-reduce the sums and the counts
        m = torch.ones_like(real[..., :1]) if rmask is None else rmask.to(real.dtype).unsqueeze(-1)
        total = reduce(torch.cat(((real * m).sum(-2), m.sum(-2)), dim=-1), "sum")
        real_mean = total[..., :-1] / total[..., -1:]
    return (real_mean - mean(syn, smask)).square().sum(-1)


def group(
    real: Tensor,
    syn: Tensor,
    *,
    real_labels: Tensor | None = None,
    syn_labels: Tensor | None = None,
    process_group: Any = None,
) -> Grouped:
    """Check the inputs and bring them to ``[C, N, D]`` / ``[C, M, D]`` (:class:`Grouped`): one class ``[N, D]``,
    classes ``[C, N, D]``, or flat features with labels (padded per class, with masks). ``process_group``: the
    all-reduce of the real side's sums over its ranks (after checking that the call can use one)."""
    reduce = None
    if process_group is not None:
        from . import distributed

        distributed.check_process_group(process_group)
        if real_labels is not None:
            raise ValueError(
                "with process_group, pass features as [C, N, D] (every rank the same classes in the same order), "
                "not flat features with labels: a rank may not see every label."
            )
        reduce = distributed.all_reduce_fn(process_group)
    return Grouped(*_group(real, syn, real_labels, syn_labels), reduce)


def hyperbolic_matching_loss(
    real: Tensor,
    syn: Tensor,
    *,
    k: float | Tensor | None = None,
    scale: float = 20.0,
    max_norm: float | None = 10.0,
    hierarchical: bool = False,
    reduction: str = "sum",
    real_labels: Tensor | None = None,
    syn_labels: Tensor | None = None,
    check_finite: bool = True,
    process_group: Any = None,
    fused: bool | str = "auto",
    manifold: Any = None,
    radius: float | None = None,
) -> Tensor:
    r"""HDD matching loss: ``scale * d_L(centroid(exp_o(real)), centroid(exp_o(syn)))`` per class.

    Features are mapped to the hyperboloid ``<x,x>_L = -k`` (geoopt's ``k``; curvature
    ``-1/k``) by :func:`hyperdm.lorentz.expmap0`, averaged with the Law closed-form
    centroid, and the two centroids are compared by geodesic distance (see
    :func:`hyperdm.lorentz.feature_centroid` and :func:`hyperdm.lorentz.dist` for the
    cancellation-free forms used). ``scale`` is the paper's lambda.

    ``max_norm=10`` (default) clamps ``|v|/sqrt(k)`` at 10 inside the exp-map, as the
    official HDD code does. Random ConvNet features have norms of 20 to 26, so with ``k = 1``
    every point then sits at radius ``10 sqrt(k)``: only feature *directions* carry gradient
    and ``k`` only scales the loss. Measured on Fashion-MNIST (DM, 3 seeds, 2,000 iterations of
    the ``cpu`` protocol) that is level with the MMD line at IPC 1 and 10; the exact map
    (``max_norm=None``) gains 0.7 points at IPC 10 and loses far more at IPC 1. ``radius=`` puts
    the points at chosen radii instead (docs/geometry.md). See the module docstring for shapes
    and ``reduction``.

    ``process_group`` (a ``torch.distributed`` group, e.g. ``torch.distributed.group.WORLD``): the
    real centroids are those of the real features of every rank (:mod:`hyperdm.distributed`); the
    synthetic side is local. Needs ``[C, N, D]`` (or ``[N, D]``) features and real features
    without grad.

    The loss is one autograd function with an analytic backward (:mod:`hyperdm.fused`): real
    features without grad keep no autograd graph. ``fused="auto"`` (default) computes the real
    side with a Triton kernel (one pass over the real features) on CUDA tensors when ``triton``
    is importable and the call is the DM case (real features without grad, no labels/masks, not
    hierarchical, a fixed ``k``, one process); ``True`` requires the kernel, ``False`` never uses it.

    ``k`` defaults to 1; ``manifold`` (a ``geoopt.Lorentz``, e.g. :class:`hyperdm.StableLorentz`)
    supplies it instead, as ``manifold.k`` (its gradient reaches a learnable ``k``).

    ``radius=r0`` (radius calibration): both sides' features are scaled by the ``alpha`` that puts
    the median ``|alpha v|/sqrt(k)`` of *this call's* real features at ``r0``, so the points sit at
    radii of order ``r0`` instead of being clamped (``alpha`` has no gradient; the clamp, if any,
    applies to the scaled features). The loss is ``scale * d_L`` of the scaled features, computed as
    ``scale * alpha * d`` with ``k / alpha^2`` (the same number, without a pass over the features;
    :mod:`hyperdm.radius`). :class:`hyperdm.HyperbolicMatcher` fixes ``alpha`` after its first batch.
    """
    check_reduction(reduction)
    if manifold is not None:
        if k is not None:
            raise ValueError("pass the curvature once: either k= or manifold=, not both.")
        k = manifold.k
    k = 1.0 if k is None else k
    check_k(k)
    check_scale(scale)
    check_max_norm(max_norm)
    if radius is not None:
        radius_module.check_radius(radius)
    g = group(real, syn, real_labels=real_labels, syn_labels=syn_labels, process_group=process_group)
    if radius is not None:  # the loss of the scaled features, as scale * alpha * d with k / alpha^2
        alpha = calibration_alpha(g, float(radius), k=k, process_group=process_group)
        k, scale = k / alpha**2, scale * alpha
    per_class, _ = hyperbolic_per_class(
        g.real,
        g.real_mask,
        g.syn,
        g.syn_mask,
        k=k,
        scale=scale,
        max_norm=max_norm,
        hierarchical=hierarchical,
        reduce=g.reduce,
        use_fused=fused,
    )
    loss = reduce_losses(per_class, reduction, g.single)
    if check_finite:
        check_finite_loss(loss, g, "hyperbolic matching")
    return loss


def calibration_alpha(g: Grouped, r0: float, *, k: float | Tensor, process_group: Any = None) -> float:
    """The feature scale ``alpha`` that puts the median ``|alpha v| / sqrt(k)`` of the grouped real features (their
    rows, not the padding) at ``r0``; with ``process_group``, the median over every rank's features. One norm pass
    and one host read."""
    with torch.no_grad():
        norms = torch.linalg.vector_norm(g.real.detach(), dim=-1)
        valid = g.real_mask
        if process_group is not None:
            from . import distributed

            norms = distributed.gather_values(norms if valid is None else norms[valid], process_group)
            valid = None
        return float(radius_module.calibration_factor(norms, r0, k=k, valid=valid))


def mmd_matching_loss(
    real: Tensor,
    syn: Tensor,
    *,
    reduction: str = "sum",
    real_labels: Tensor | None = None,
    syn_labels: Tensor | None = None,
    check_finite: bool = True,
    process_group: Any = None,
) -> Tensor:
    r"""DM's line: ``sum((mean(real) - mean(syn))**2)`` per class (Zhao & Bilen, 2023).

    Same call signature as :func:`hyperbolic_matching_loss`, so switching is one line;
    ``process_group`` makes the real means those over every rank's real features.
    """
    check_reduction(reduction)
    g = group(real, syn, real_labels=real_labels, syn_labels=syn_labels, process_group=process_group)
    loss = reduce_losses(mmd_per_class(g.real, g.real_mask, g.syn, g.syn_mask, g.reduce), reduction, g.single)
    if check_finite:
        check_finite_loss(loss, g, "MMD")
    return loss
