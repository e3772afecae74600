"""Thin ``nn.Module`` wrappers over :mod:`hyperdm.functional`: swap one line of DM code.

.. code-block:: python

    # DM:   loss += torch.sum((output_real.mean(0) - output_syn.mean(0)) ** 2)
    matcher = HyperbolicMatcher()          # or MMDMatcher() for the DM baseline
    loss = matcher(output_real, output_syn)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from . import functional as F

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
            of 20+, so with the clamp every point sits at radius ``10 sqrt(k)`` and the
            loss matches feature directions; on Fashion-MNIST (IPC 1, short run) this
            gave about MMD + 1.5 points while ``max_norm=None`` (the exact map) gave about
            17 points *below* MMD. Keep the default unless you are studying that effect.
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
            inputs, ``hierarchical=False``, a fixed ``k``, no ``process_group``); otherwise the
            PyTorch path. ``True``: always (an error says why they cannot run); ``False``: never.
            Both compute the same loss.

    The loss is one autograd function with an analytic backward (:mod:`hyperdm.fused`): real
    features without grad keep no autograd graph and no ``[C, N, D]`` temporary.

    Sync-free: with ``[C, N, D]`` inputs the forward and backward never read a tensor value on
    the host with ``check_finite=False``, nor with the default check on CUDA tensors, where it
    stays on the device (``torch._assert_async``); a profiler test checks this. On the CPU the
    check reads one scalar. Flat features with labels need one sync (the class counts set the
    shapes). ``torch.compile(fullgraph=True)`` traces the default matcher without graph breaks.

    Call with ``real [N, D], syn [M, D]`` (one class), ``real [C, N, D], syn [C, M, D]``
    (all classes at once), or flat features with ``real_labels=``/``syn_labels=``.
    """

    chosen_scale: Tensor  # a buffer, with scale="auto": lambda once chosen (NaN before)

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
            F._check_k(manifold.k)
            k = float(manifold.k.detach())
        k = 1.0 if k is None else k
        F._check_k(k)
        if compile and process_group is not None:
            raise ValueError(
                "compile=True and process_group cannot be combined yet; drop one of them "
                "(the plain path is the reference for both)."
            )
        self.auto_scale = isinstance(scale, str) and scale == "auto"
        if not self.auto_scale:
            F._check_scale(scale)
        F._check_max_norm(max_norm)
        F._check_reduction(reduction)
        #: lambda; None until the first call when ``scale="auto"``
        self.scale: float | None = None if self.auto_scale else float(scale)
        if self.auto_scale:
            self.register_buffer("chosen_scale", torch.tensor(float("nan"), dtype=torch.float64))
            self.register_load_state_dict_post_hook(_read_chosen_scale)
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
        self._k = float(k)  # the fixed k when no manifold holds it (with one, the manifold's k is the only one)

    @property
    def k(self) -> float | Tensor:
        """Current ``k``: points satisfy ``<x,x>_L = -k``; the manifold's tensor when one holds it."""
        return self.manifold.k if self.manifold is not None else self._k

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
        return F._hyperbolic_loss(
            real,
            syn,
            k=self.k,
            scale=self._choose_scale if self.scale is None else self.scale,
            max_norm=self.max_norm,
            hierarchical=self.hierarchical,
            reduction=self.reduction,
            real_labels=real_labels,
            syn_labels=syn_labels,
            check_finite=self.check_finite,
            process_group=self.process_group,
            fused=self.fused,
            per_class=_run_compiled if self.compile_loss else None,
        )

    def _choose_scale(self, r: Tensor, rm: Tensor | None, s: Tensor, sm: Tensor | None, reduce: Any = None) -> float:
        """``scale="auto"``: lambda = total MMD / total centroid distance of this (the first) batch. One host sync."""
        with torch.no_grad():
            dist = F._hyperbolic_per_class(
                r, rm, s, sm, k=self.k, scale=1.0, max_norm=self.max_norm, hierarchical=self.hierarchical, reduce=reduce
            ).sum(dtype=torch.float64)
            mmd = F._mmd_per_class(r, rm, s, sm, reduce).sum(dtype=torch.float64)
            d, m = float(dist), float(mmd)
        if not (d > 0 and math.isfinite(d) and math.isfinite(m)):
            raise ValueError(
                f"scale='auto' picks lambda from the first batch as MMD / distance, but that batch gives MMD {m:g} and "
                f"distance {d:g}; call the matcher first with real and synthetic features that differ (or pass a "
                "number, e.g. 20)."
            )
        self.scale = m / d
        self.chosen_scale.fill_(self.scale)
        log.info(
            "HyperbolicMatcher scale='auto': lambda = %.6g (first batch: MMD %.6g / distance %.6g)", self.scale, m, d
        )
        return self.scale

    def extra_repr(self) -> str:
        k = f"{float(self.k.detach() if isinstance(self.k, Tensor) else self.k):g}" + (
            " (learned)" if self.learn_k else ""
        )
        if self.auto_scale:
            scale = "'auto'" + ("" if self.scale is None else f" (chose {self.scale:g})")
        else:
            scale = f"{self.scale:g}"
        return (
            f"k={k}, scale={scale}, max_norm={self.max_norm}, hierarchical={self.hierarchical}, "
            f"reduction={self.reduction!r}"
            + (", compile=True" if self.compile_loss else "")
            + (", process_group=set" if self.process_group is not None else "")
            + (f", fused={self.fused!r}" if self.fused != "auto" else "")
        )


_COMPILED: dict[str, Callable[..., Tensor]] = {}


def _run_compiled(*args: object, **kwargs: object) -> Tensor:
    """``F._hyperbolic_per_class`` through ``torch.compile``, built once per process and shared by all matchers."""
    fn = _COMPILED.get("hyperbolic")
    if fn is None:
        fn = _COMPILED["hyperbolic"] = torch.compile(F._hyperbolic_per_class, dynamic=False)
    from torch._dynamo.exc import BackendCompilerFailed

    try:
        return fn(*args, **kwargs)
    except BackendCompilerFailed as e:
        raise RuntimeError(
            f"torch.compile could not compile the hyperbolic matcher ({str(e).splitlines()[0]}); pass compile=False "
            "(drop --compile-matcher): the plain path computes the same loss. On CPU, Inductor needs a working C++ "
            "compiler (e.g. apt-get install g++)."
        ) from e


def _read_chosen_scale(module: nn.Module, incompatible_keys: object) -> None:
    """After ``load_state_dict``: take lambda from the loaded buffer (NaN: not chosen yet)."""
    assert isinstance(module, HyperbolicMatcher)
    value = float(module.chosen_scale)
    module.scale = value if math.isfinite(value) else None


class MMDMatcher(nn.Module):
    """DM's baseline line ``sum((mean(real) - mean(syn))**2)`` per class, same calls as HyperbolicMatcher."""

    def __init__(self, *, reduction: str = "sum", check_finite: bool = True, process_group: Any = None) -> None:
        super().__init__()
        F._check_reduction(reduction)
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
