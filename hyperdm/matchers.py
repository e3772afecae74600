"""Thin ``nn.Module`` wrappers over :mod:`hyperdm.functional`: swap one line of DM code.

.. code-block:: python

    # DM:   loss += torch.sum((output_real.mean(0) - output_syn.mean(0)) ** 2)
    matcher = HyperbolicMatcher()          # or MMDMatcher() for the DM baseline
    loss = matcher(output_real, output_syn)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from . import functional as F
from .radius import RadiusStats, check_radius

__all__ = ["HyperbolicMatcher", "MMDMatcher"]

log = logging.getLogger(__name__)


class HyperbolicMatcher(nn.Module):
    r"""HDD's matching term: ``scale * d_L(centroid(exp_o(real)), centroid(exp_o(syn)))``.

    Args:
        k: geoopt's curvature parameter, ``k > 0``: points satisfy ``<x,x>_L = -k``, the
            curvature is ``-1/k``. The paper's tables print this value in a column
            headed "K". Default 1 (official DM-HDD).
        scale: the paper's lambda ("gradient scaling factor"), ``>= 0``. Default 20
            (official DM-HDD, which hard-codes it). ``"auto"``: chosen once, on the first
            call, as ``MMD / distance`` of that batch (totals over its classes), so the
            hyperbolic loss starts at the magnitude of the MMD line it replaces (the paper's
            rule for picking lambda). The chosen value is then fixed: it is ``self.scale``,
            a buffer in the state dict (a resumed run keeps it), and it is logged.
        max_norm: clamp of ``|v|/sqrt(k)`` inside the exp-map, keeping the direction of
            ``v``; default 10 as in the official code. Random ConvNet features have norms
            of 20-26, so with ``k = 1`` every point is clamped to radius ``10 sqrt(k)``: the
            loss then matches feature directions only, and ``k`` merely scales it (measured
            on Fashion-MNIST over 3 seeds: level with the MMD line at IPC 1 and IPC 10).
            ``max_norm=None`` is the exact map: there radii of 20-26 give weights ``cosh(t)``
            that differ by ``e^6`` within a class, so each centroid follows its outermost
            points, and a class's Law centroid sits near radius 1.6, far inside its points
            (+0.7 points over the MMD line at IPC 10, but far below it at IPC 1, where the one
            synthetic point per class is pulled to that radius).
            :attr:`last_stats` shows where a batch sits; ``radius`` moves it.
        radius: radius calibration, ``r0 > 0``: on the first call both sides' features are scaled
            by the ``alpha`` that puts the median ``|alpha v|/sqrt(k)`` of that real batch at ``r0``
            (geodesic radius ``r0 sqrt(k)``); ``alpha`` is then fixed (``self.alpha``, the buffer
            ``feature_scale`` in the state dict, so a resumed run keeps it) and logged. The loss
            is ``scale * d_L`` of the scaled features; it is computed with ``k / alpha^2`` and
            ``scale * alpha``, the same number without a pass over the features
            (:mod:`hyperdm.radius`). The clamp, if any, applies to the scaled features
            (``max_norm=None`` for the exact map). Default None: no calibration (HDD as published).
            Measured on Fashion-MNIST (DM, seed 0, 1,000 iterations): radii 1 and 2 stay near the MMD
            line at IPC 1 and fall behind at IPC 10, radii 4 and 8 the reverse (8 is 20 points below at
            IPC 1); none beat the MMD line at both (docs/results.md, "Radius calibration").
        stats: record :attr:`last_stats` on every call (default True): from the per-point norms
            the loss takes anyway, so no extra pass and no host sync on the PyTorch path (the
            Triton kernels keep no per-point norms: there it costs one norm pass per side). The
            first call reads one value on the host, to warn once, in one line, when more than
            90 % of the real points sit at the clamp. Not recorded under ``torch.compile`` nor
            with ``compile=True``.
        hierarchical: weight each point's contribution to its centroid by
            :func:`hyperdm.lorentz.hierarchical_weight` of its radius (points near the
            root count more; with the clamp, every clamped point gets the same weight).
        reduction: ``"sum"`` over classes (DM sums per-class losses), ``"mean"`` or
            ``"none"`` (returns ``[C]``).
        learn_k: make ``k`` a parameter: geoopt's learnable ``k`` of a
            :class:`hyperdm.StableLorentz` the matcher creates (``self.manifold.k``); its gradient
            is computed analytically. A step that makes it ``<= 0`` is refused with an error.
        manifold: take ``k`` from a geoopt Lorentz manifold instead, e.g.
            ``HyperbolicMatcher(manifold=hyperdm.StableLorentz(k, learnable=True))`` (one source of
            truth: the matcher reads ``manifold.k`` on every call, and its gradient reaches it).
            Give either ``manifold`` or ``k``/``learn_k``.
        check_finite: raise a clear error instead of returning a NaN/inf loss (one
            scalar test per call: the only host-device sync of the ``[C, N, D]`` path;
            the toolkit's loops pass ``False`` and check the loss they read anyway).
        compile: run the per-class maths through ``torch.compile`` (Inductor), which fuses
            its ~100 small element-wise kernels into a few; the loss and gradient are the
            plain path's (tested to float64 round-off). Meant for GPUs, where the plain path
            is launch-bound; on CPUs it is slower than the plain path (measured 2.7-3.2x in
            float32 on a 2-core CPU), so leave it off there. The first call
            compiles (tens of seconds; again for each new shape, dtype or ``k``/``scale``).
        process_group: a ``torch.distributed`` group (e.g. ``torch.distributed.group.WORLD``):
            each rank passes its shard of the real features and the whole synthetic set; the real
            centroids are computed exactly over every rank's features (all-reduced partial sums,
            :mod:`hyperdm.distributed`), the synthetic side stays local, so the loss and the
            synthetic gradient equal single-process ones on the union of the real data, on every
            rank. ``scale="auto"`` then picks the same lambda on every rank.
        fused: the Triton kernels (:mod:`hyperdm.triton_kernels`): the whole loss and the
            synthetic features' gradient in three launches (one pass over the real features with
            no temporaries, one program per class for the synthetic side and the distance, one per
            synthetic row for the gradient), with no other work on the host.
            ``"auto"`` (default): used on CUDA tensors when ``triton`` is importable and the call
            is the DM case they cover (real features without grad, ``[C, N, D]`` or ``[N, D]``
            inputs, ``hierarchical=False``, a fixed ``k``, no ``process_group``, ``D <= 8192``);
            otherwise the PyTorch path. The first call of each setting (device, dtype, ``D``,
            clamp) checks the kernels against the PyTorch path and falls back to it, with one
            warning, if they disagree or fail (:mod:`hyperdm.kernel_check`; ``HYPERDM_TRITON=0``
            turns them off). ``True``: always (an error says why they cannot run, or that they
            failed the check); ``False``: never. Both compute the same loss.

    The loss is one autograd function with an analytic backward (:mod:`hyperdm.fused`): real
    features without grad keep no autograd graph and no ``[C, N, D]`` temporary.

    Sync-free: with ``[C, N, D]`` inputs the forward and backward never read a tensor value on
    the host with ``check_finite=False``, nor with the default check on CUDA tensors, where it
    stays on the device (``torch._assert_async``); a profiler test checks this. On the CPU the
    check reads one scalar. Flat features with labels need one sync (the class counts set the
    shapes). ``torch.compile(fullgraph=True)`` traces the default matcher without graph breaks.

    Call with ``real [N, D], syn [M, D]`` (one class), ``real [C, N, D], syn [C, M, D]``
    (all classes at once), or flat features with ``real_labels=``/``syn_labels=``.

    ``last_stats`` (:class:`hyperdm.radius.RadiusStats`): the latest call's median of ``|v|/sqrt(k)``
    (after the calibration, before the clamp) and fraction of points at the clamp, real and synthetic,
    as 0-d tensors that are read only when you read them (``matcher.last_stats.as_dict()``).
    """

    chosen_scale: Tensor  # a buffer, with scale="auto": lambda once chosen (NaN before)
    feature_scale: Tensor  # a buffer, with radius=: the calibration's alpha once chosen (NaN before)

    #: more than this fraction of the real points at the clamp (first call) triggers the saturation warning
    SATURATED = 0.9

    def __init__(
        self,
        k: float | None = None,
        scale: float | str = 20.0,
        *,
        max_norm: float | None = 10.0,
        hierarchical: bool = False,
        reduction: str = "sum",
        learn_k: bool = False,
        check_finite: bool = True,
        compile: bool = False,
        process_group: Any = None,
        fused: bool | str = "auto",
        manifold: nn.Module | None = None,
        radius: float | None = None,
        stats: bool = True,
    ) -> None:
        super().__init__()
        if manifold is not None:
            if k is not None or learn_k:
                raise ValueError(
                    "pass the curvature once: either manifold=StableLorentz(k, learnable=...) or k= / learn_k=, "
                    "not both."
                )
            from .manifold import geoopt

            if not isinstance(manifold, geoopt.Lorentz):
                raise ValueError(
                    f"manifold must be a geoopt.Lorentz (e.g. hyperdm.StableLorentz(k)); got {type(manifold).__name__}."
                )
            F.check_k(manifold.k)
            k = float(manifold.k.detach())
        k = 1.0 if k is None else k
        F.check_k(k)
        if compile and process_group is not None:
            raise ValueError(
                "compile=True and process_group cannot be combined yet; drop one of them "
                "(the plain path is the reference for both)."
            )
        self.auto_scale = isinstance(scale, str) and scale == "auto"
        if not self.auto_scale:
            F.check_scale(scale)
        F.check_max_norm(max_norm)
        F.check_reduction(reduction)
        #: lambda; None until the first call when ``scale="auto"``
        self.scale: float | None = None if self.auto_scale else float(scale)
        if self.auto_scale:
            self.register_buffer("chosen_scale", torch.tensor(float("nan"), dtype=torch.float64))
        self.max_norm = None if max_norm is None else float(max_norm)
        self.hierarchical = bool(hierarchical)
        self.reduction = reduction
        if learn_k and manifold is None:  # geoopt's learnable k, on a StableLorentz the matcher owns
            from .manifold import StableLorentz

            manifold = StableLorentz(torch.tensor(float(k), dtype=torch.float64), learnable=True)
        #: the Lorentz manifold that holds k, when given or learned (one source of truth for k)
        self.manifold = manifold
        self.learn_k = manifold is not None and bool(manifold.k.requires_grad)
        self.check_finite = bool(check_finite)
        #: run the per-class loss through torch.compile (``compile=True``; ``nn.Module.compile`` stays usable)
        self.compile_loss = bool(compile)
        self.process_group = process_group
        if fused not in ("auto", True, False):
            raise ValueError(f"fused must be 'auto', True or False; got {fused!r}.")
        self.fused = fused
        # the fixed k when no manifold holds it (with one, the manifold's k is the only one)
        self._k: float | None = None if manifold is not None else float(k)
        if radius is not None:
            check_radius(radius)
        #: the radius calibration's target median radius r0 (in units of sqrt(k)); None: no calibration
        self.radius = None if radius is None else float(radius)
        #: the calibration's feature scale alpha; None until the first call (or without calibration)
        self.alpha: float | None = None
        if self.radius is not None:
            self.register_buffer("feature_scale", torch.tensor(float("nan"), dtype=torch.float64))
        if self.auto_scale or self.radius is not None:
            self.register_load_state_dict_post_hook(_read_chosen)
        self.track_stats = bool(stats)
        #: :class:`hyperdm.radius.RadiusStats` of the latest call (0-d tensors, read on demand); None before one
        self.last_stats: RadiusStats | None = None
        self._checked = False  # the saturation check runs on the first call with statistics

    @property
    def k(self) -> float | Tensor:
        """Current ``k``: points satisfy ``<x,x>_L = -k``; the manifold's tensor when one holds it."""
        if self.manifold is not None:
            return self.manifold.k
        assert self._k is not None
        return self._k

    @property
    def calibrated_k(self) -> float | Tensor:
        """``k / alpha^2``: the ``k`` that gives the calibrated loss on the unscaled features, up to lambda
        (:mod:`hyperdm.radius`); ``k`` itself without calibration or before the first call."""
        return self.k if self.alpha is None else self.k / self.alpha**2

    def forward(
        self,
        real: Tensor,
        syn: Tensor,
        *,
        real_labels: Tensor | None = None,
        syn_labels: Tensor | None = None,
    ) -> Tensor:
        m = self.manifold
        on_cpu = self.learn_k and m is not None and not m.k.is_cuda and not torch.compiler.is_compiling()
        if on_cpu and m is not None and not bool(m.k.detach() > 0):  # a CPU scalar: no device sync
            raise ValueError(
                f"the learned k went to {float(m.k.detach()):g}; k must stay > 0 (geoopt's "
                "curvature parameter): lower the learning rate of k or bound it after each step."
            )
        g = F.group(real, syn, real_labels=real_labels, syn_labels=syn_labels, process_group=self.process_group)
        if self.radius is not None and self.alpha is None:
            self._calibrate(g)
        # the calibration as k / alpha^2 and lambda * alpha: the loss of the scaled features (hyperdm.radius)
        alpha = 1.0 if self.alpha is None else self.alpha
        k = self.k if self.alpha is None else self.k / alpha**2
        if self.scale is None:
            self._choose_scale(g, k)
        assert self.scale is not None
        want_stats = self.track_stats and not torch.compiler.is_compiling() and not self.compile_loss
        per_class, st = (_run_compiled if self.compile_loss else F.hyperbolic_per_class)(
            g.real,
            g.real_mask,
            g.syn,
            g.syn_mask,
            k=k,
            scale=self.scale * alpha,
            max_norm=self.max_norm,
            hierarchical=self.hierarchical,
            reduce=g.reduce,
            use_fused=self.fused,
            want_stats=want_stats,
        )
        loss = F.reduce_losses(per_class, self.reduction, g.single)
        if self.check_finite:
            F.check_finite_loss(loss, g, "hyperbolic matching")
        if st is not None:
            self.last_stats = st
            if not self._checked:
                self._checked = True
                self._warn_if_saturated(st)
        return loss

    def _calibrate(self, g: F.Grouped) -> None:
        """``radius=r0``: alpha from the first real batch (median over every rank's features). One host read."""
        assert self.radius is not None
        alpha = F.calibration_alpha(g, self.radius, k=self.k, process_group=self.process_group)
        self.alpha = alpha
        self.feature_scale.fill_(alpha)
        log.info(
            "HyperbolicMatcher radius=%g: features scaled by alpha = %.6g, so the median radius of the first real "
            "batch is %g sqrt(k) (equivalently k = %.6g with lambda x %.6g)",
            self.radius,
            alpha,
            self.radius,
            float(self.k.detach() if isinstance(self.k, Tensor) else self.k) / alpha**2,
            alpha,
        )

    def _warn_if_saturated(self, stats: RadiusStats) -> None:
        """Warn once when most real points sit at the clamp: then only directions are matched. One host read (two
        when it warns)."""
        clamped = float(stats.real_clamped)
        if not clamped > self.SATURATED:
            return
        med = float(stats.real_median)
        what = f"the clamp |v|/sqrt(k) <= {self.max_norm:g}" if self.max_norm is not None else "the exp-map's limit"
        msg = (
            f"HyperbolicMatcher: {100 * clamped:.0f}% of the real features are at {what} (median |v|/sqrt(k) "
            f"{med:.3g}), so every point sits at one radius: only feature directions are matched and k only scales "
            "the loss. This is HDD as published; radius=r0 puts the features at radii of order r0 instead "
            "(docs/geometry.md: what it changes, and what it measured)."
        )
        warnings.warn(msg, UserWarning, stacklevel=5)

    def _choose_scale(self, g: F.Grouped, k: float | Tensor) -> None:
        """``scale="auto"``: lambda = total MMD / total centroid distance of this (the first) batch, with the
        (calibrated) ``k``, stated for the scaled features (the loss multiplies the distance by ``lambda * alpha``).
        One host sync."""
        with torch.no_grad():
            dist = F.hyperbolic_per_class(
                g.real,
                g.real_mask,
                g.syn,
                g.syn_mask,
                k=k,
                scale=1.0,
                max_norm=self.max_norm,
                hierarchical=self.hierarchical,
                reduce=g.reduce,
                use_fused=False,
            )[0].sum(dtype=torch.float64)
            mmd = F.mmd_per_class(g.real, g.real_mask, g.syn, g.syn_mask, g.reduce).sum(dtype=torch.float64)
            d, m = float(dist), float(mmd)
        if not (d > 0 and math.isfinite(d) and math.isfinite(m)):
            raise ValueError(
                f"scale='auto' picks lambda from the first batch as MMD / distance, but that batch gives MMD {m:g} and "
                f"distance {d:g}; call the matcher first with real and synthetic features that differ (or pass a "
                "number, e.g. 20)."
            )
        alpha = 1.0 if self.alpha is None else self.alpha
        self.scale = m / d / alpha  # the loss scale * d_k(alpha v) = (m / d) * d_{k / alpha^2}(v)
        self.chosen_scale.fill_(self.scale)
        log.info(
            "HyperbolicMatcher scale='auto': lambda = %.6g (first batch: MMD %.6g / distance %.6g)", self.scale, m, d
        )

    def extra_repr(self) -> str:
        k = f"{float(self.k.detach() if isinstance(self.k, Tensor) else self.k):g}" + (
            " (learned)" if self.learn_k else ""
        )
        if self.auto_scale:
            scale = "'auto'" + ("" if self.scale is None else f" (chose {self.scale:g})")
        else:
            scale = f"{self.scale:g}"
        if self.radius is not None:
            k += f", radius={self.radius:g}" + ("" if self.alpha is None else f" (alpha {self.alpha:.6g})")
        return (
            f"k={k}, scale={scale}, max_norm={self.max_norm}, hierarchical={self.hierarchical}, "
            f"reduction={self.reduction!r}"
            + (", compile=True" if self.compile_loss else "")
            + (", process_group=set" if self.process_group is not None else "")
            + (f", fused={self.fused!r}" if self.fused != "auto" else "")
        )


_COMPILED: dict[str, Callable[..., tuple[Tensor, Any]]] = {}


def _run_compiled(*args: object, **kwargs: object) -> tuple[Tensor, Any]:
    """``F.hyperbolic_per_class`` through ``torch.compile``, built once per process and shared by all matchers."""
    fn = _COMPILED.get("hyperbolic")
    if fn is None:
        fn = _COMPILED["hyperbolic"] = torch.compile(F.hyperbolic_per_class, dynamic=False)
    from torch._dynamo.exc import BackendCompilerFailed

    try:
        return fn(*args, **kwargs)
    except BackendCompilerFailed as e:
        raise RuntimeError(
            f"torch.compile could not compile the hyperbolic matcher ({str(e).splitlines()[0]}); pass compile=False "
            "(drop --compile-matcher): the plain path computes the same loss. On CPU, Inductor needs a working C++ "
            "compiler (e.g. apt-get install g++)."
        ) from e


def _read_chosen(module: nn.Module, incompatible_keys: object) -> None:
    """After ``load_state_dict``: take lambda (``scale="auto"``) and alpha (``radius=``) from the loaded buffers
    (NaN: not chosen yet)."""
    assert isinstance(module, HyperbolicMatcher)
    if module.auto_scale:
        value = float(module.chosen_scale)
        module.scale = value if math.isfinite(value) else None
    if module.radius is not None:
        alpha = float(module.feature_scale)
        module.alpha = alpha if math.isfinite(alpha) else None


class MMDMatcher(nn.Module):
    """DM's baseline line ``sum((mean(real) - mean(syn))**2)`` per class, same calls as HyperbolicMatcher."""

    def __init__(self, *, reduction: str = "sum", check_finite: bool = True, process_group: Any = None) -> None:
        super().__init__()
        F.check_reduction(reduction)
        self.reduction = reduction
        self.check_finite = bool(check_finite)
        self.process_group = process_group

    def forward(
        self,
        real: Tensor,
        syn: Tensor,
        *,
        real_labels: Tensor | None = None,
        syn_labels: Tensor | None = None,
    ) -> Tensor:
        return F.mmd_matching_loss(
            real,
            syn,
            reduction=self.reduction,
            real_labels=real_labels,
            syn_labels=syn_labels,
            check_finite=self.check_finite,
            process_group=self.process_group,
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
