r"""The HDD loss per class as one ``torch.autograd.Function`` with an analytic backward.

``hdd_distance(real, syn, k=k, ...)`` returns, per class ``c``,
``d_L(centroid(exp_o(real_c)), centroid(exp_o(syn_c)))``: the same quantity as composing
:func:`hyperdm.lorentz.feature_centroid` and :func:`hyperdm.lorentz.dist`, with the same
cancellation-free forms, but without an autograd graph over ``[C, N, D]`` tensors. Every formula below is one
of :mod:`hyperdm.law`'s functions (the one source of this maths); this module composes them and holds the
autograd Functions: :class:`_HDDDistance` (the PyTorch path) and :class:`_TritonHDD` (the kernels).

Forward, per side (``v`` is ``[C, N, D]``; per-point scalars and ``[C, D]`` sums in float64):

1. the norms ``n_i = |v_i|`` (one pass over ``v``), then per-point scalars
   ``t_i = min(n_i/sqrt(k), max_norm)``, weights ``w_i`` (mask, hierarchical), and
   ``c_i = w_i cosh(t_i) e^{-T}``, ``b_i = w_i sinh(t_i) e^{-T}``. Each side's centroid is
   invariant to a common scale of its weights, so ``T`` may be anything: 0 unless
   :func:`hyperdm.law.shift_needed` (float32 features with ``max_norm`` above 40: the default 10
   needs none), else the class's largest ``t``, so nothing overflows;
2. the weighted sum ``m_s = sum_i (b_i/n_i) v_i`` (one batched mat-vec), and
   ``m_0 = sum_i c_i``; the Law centroid is ``sqrt(k) m / sqrt(Q)`` with
   ``Q = (sum_i w_i e^{-t_i-T})(sum_i w_i e^{t_i-T}) + B sum_i b_i |u_i - m_s/B|^2``,
   ``B = sum_i b_i`` (see :func:`hyperdm.lorentz.feature_centroid`);
3. the spread ``|u_i - m_s/B|^2``, evaluated exactly as ``|v_i - (n_i/B) m_s|^2 / n_i^2``. For
   features without grad (the real side of DM, IDM and Dance) the differences go through one
   reused buffer of at most :data:`hyperdm.law.CHUNK_ELEMENTS` elements
   (:data:`~hyperdm.law.DEVICE_CHUNK_ELEMENTS` off the CPU), so no ``[C, N, D]`` temporary is made
   and the buffer stays in cache; when
   whole classes fit in it (and the sums are not all-reduced over processes), each slice's
   mat-vec (step 2) is taken right before its differences, so the slice is read from memory
   once for both.

   The spread cannot come from the two sums alone without losing the method's precision:
   ``sum_i b_i |u_i - m_s/B|^2 = B - |m_s|^2/B`` subtracts two numbers that agree to
   ``1 - |u~|^2``, and when the directions nearly coincide (``1 - |u~|^2`` ~ 1e-6) a float32
   mat-vec leaves no correct digit in that difference (on a cluster of angular spread 1e-3 at
   radius 9.5 the centroid's radius comes out 0.014 off, against 1e-15 with the exact pass).

The distance between the centroids uses the stable chord form of :func:`hyperdm.lorentz.dist`.

Backward. Each centroid is taken by its space part ``y = sqrt(k) m_s / sqrt(Q)`` (the time part
is implied), so no time coordinate, which far out cancels, enters. First the chord form gives

.. math::
    \Gamma = \frac{\partial d}{\partial y}
    = \frac{\sinh(\rho - \rho')\, u / \cosh\rho - a' (u' - u)}{2\sqrt{q(1 + q)}},

with ``ρ``, ``u`` the radius (over ``sqrt(k)``) and direction of this centroid, ``ρ'``, ``u'``,
``a' = sinh ρ'`` those of the other, ``q`` the chord term of :func:`hyperdm.lorentz.dist`
(``Γ := 0`` where the centroids coincide: the distance has gradient 0 there). Through
``y``, ``dd = κ Γ·dm_s - λ dQ`` with ``κ = sqrt(k)/sqrt(Q)`` and ``λ = Γ·y / (2Q)``. With
``u_i = v_i/n_i``, ``cb_i = c_i + h_i b_i`` (``h_i = w'(t_i)/w(t_i)``, the hierarchical weight's
log-derivative, 0 without it) and ``H = κ Γ + 2 λ m_s`` (the second term only where the side has
more than one point: a single point has no spread), a feature's gradient is

.. math::
    \nabla_{v_i} d = \frac{b_i}{n_i}\big(H - (u_i\cdot H)\, u_i\big)
      + \mathbb{1}_{t_i < \mathrm{max\_norm}}\,
        \frac{\kappa\, cb_i\, (u_i\cdot\Gamma) - \lambda\, \partial Q/\partial t_i}{\sqrt{k}}\, u_i,

    \partial Q/\partial t_i = (S + B |u_i - \tilde u|^2)\, cb_i
      + A_-\, w_i e^{t_i - T} (1 + h_i) + A_+\, w_i e^{-t_i - T} (h_i - 1),

``A_∓ = sum_j w_j e^{∓t_j - T}`` and ``S`` the spread: forward values and one mat-vec per side
(``u_i·Γ`` and ``u_i·H`` together), then one fused write. A clamped point moves only its
direction. ``k`` (when it requires grad) gets its gradient from Euler's relation for the
loss, which is ``sqrt(k)`` times a function of ``v/sqrt(k)``:
``dd/dk = (d - sum_i v_i . grad_{v_i} d) / (2k)`` over both sides; the real side's share
is one more row of the forward mat-vec, so no extra pass.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import kernel_check, law
from .radius import RadiusStats

__all__ = ["hdd_distance", "hdd_distance_with_stats"]

#: ``fused="auto"`` takes the kernels on CPU tensors too when Triton's interpreter is on (off by default: the
#: interpreter is for tests, and far slower than the PyTorch path); the self-check's tests turn it on.
AUTO_ON_INTERPRETER = False

log = logging.getLogger(__name__)

_F64 = torch.float64


def _per_side_sums(x: Tensor, N: int, M: int) -> Tensor:
    """``x`` ``[..., N + M]`` (real points, then synthetic) summed per side: ``[..., 2]``."""
    return torch.stack([part.sum(-1) for part in x.split([N, M], dim=-1)], dim=-1)


class _Saved(NamedTuple):
    """What the backward reads (float64), real side first: per side ``[C, 2, ...]``, per point ``[C, 7 or 8, N + M]``.

    Saved with ``save_for_backward``; ``ksum`` (the real side's second mat-vec row, for k) and the per-class
    ``multi`` flags (a side with one point has no spread; with masks) may be None.
    """

    d: Tensor  # scale * distance [C]
    ms: Tensor  # weighted sums m_s [C, 2, D]
    q: Tensor  # Q [C, 2]
    kappa: Tensor  # sqrt(k) / sqrt(Q) [C, 2]
    ys: Tensor  # centroids' space parts [C, 2, D]
    ab: Tensor  # sinh of the centroids' radii [C, 2]
    u: Tensor  # their directions [C, 2, D]
    diff: Tensor  # u_real - u_syn [C, D]
    delta: Tensor  # rho_real - rho_syn [C]
    qd: Tensor  # the chord term [C]
    cosh: Tensor  # cosh of the radii [C, 2]
    points: Tensor  # nsafe, gamma, t, cb, e^{-t}, e^{t}, spread [, h] per point
    sides: Tensor  # A+, A-, B, S per side [C, 2, 4]
    ksum: Tensor | None
    multi_r: Tensor | None
    multi_s: Tensor | None


class _Info(NamedTuple):
    """The forward's plain numbers the backward reads."""

    N: int
    M: int
    tmax: float
    scale: float
    multi: tuple[float | None, float | None]  # per side: 1.0 / 0.0 without masks, None where _Saved holds them


def _forward(
    real: Tensor,
    syn: Tensor,
    sk: float | Tensor,
    tmax: float,
    hierarchical: bool,
    mask: Tensor | None,
    reduce: law.Reduce | None,
    k_rows: bool,
    chunk_real: bool,
    scale: float,
) -> tuple[Tensor, Tensor, _Saved, _Info]:
    """Both sides' centroids and their distance, composed of :mod:`hyperdm.law`'s pieces: ``(scale * d [C], the
    norms [C, N + M], what the backward reads, its plain numbers)``."""
    N, M = real.shape[-2], syn.shape[-2]
    dt = real.dtype
    n_dt = torch.cat((torch.linalg.vector_norm(real, dim=-1), torch.linalg.vector_norm(syn, dim=-1)), dim=-1)  # pass 1
    n = n_dt.to(_F64)  # also an output: where the points sit (hyperdm.radius.RadiusStats)
    tc = (n / sk).clamp(law.TINY, tmax)  # t; below tmax the point moves radially
    if mask is not None:
        tc = tc * mask
    top = None
    if law.shift_needed(tmax, dt, hierarchical=hierarchical):
        if reduce is None:
            top = tc.amax(-1, keepdim=True)
        else:  # every rank shifts the real sums alike
            top = torch.maximum(reduce(tc[:, :N].amax(-1, keepdim=True), "max"), tc[:, N:].amax(-1, keepdim=True))
    b, c, em, cb, h = law.point_terms(tc, top=top, weight=mask, hierarchical=hierarchical)
    nsafe = law.safe_norm(n, sk)
    gamma = law.coefficient(b, nsafe)
    # per-side sums of b, c, e^{-t}
    sums = _per_side_sums(torch.stack((b, c, em), dim=1), N, M).transpose(1, 2)  # [C, 2, 3]
    # pass 2: the weighted sums m_s (a second real row for the k-gradient of a no-grad real side)
    g_r, g_s = gamma.to(dt).split([N, M], dim=-1)
    rows_r = g_r.unsqueeze(1)
    if k_rows:
        rows_r = torch.cat((rows_r, ((tc < tmax) * cb)[:, :N].to(dt).unsqueeze(1)), dim=1)
    # the spread's reference per point, n_i u~ = (n_i / B) m_s: known now unless the real sums change below
    nb = _nb(n, sums, N, dt) if reduce is None else None
    # the real side's mat-vec and exact spread in one sweep of whole-class slices, where nothing needs the
    # all-reduced sums first (each class's reference is then known right after its mat-vec)
    dev_r: Tensor | None = None
    if nb is not None and chunk_real and N * real.shape[-1] <= law.chunk_elements(real):
        m_r, dev_r = law.class_sweep(real, nb[:, :N], rows=rows_r)
        assert m_r is not None
    else:
        m_r = torch.bmm(rows_r, real)
    ms_dt = torch.cat((m_r[:, :1] if k_rows else m_r, torch.bmm(g_s.unsqueeze(1), syn)), dim=1)
    ms = ms_dt.to(_F64)
    ksum = m_r[:, 1].to(_F64) if k_rows else None
    if reduce is not None:
        D = ms.shape[-1]
        both = reduce(torch.cat((ms[:, 0], sums[:, 0]), dim=-1), "sum")
        ms = torch.stack((both[:, :D], ms[:, 1]), dim=1)
        sums = torch.stack((both[:, D:], sums[:, 1]), dim=1)
        if ksum is not None:
            ksum = reduce(ksum, "sum")
    bsum = sums[..., 0]
    # pass 3: the exact spread |u_i - u~|^2, u~ = m_s / B, as |v_i - (n_i / B) m_s|^2 / n_i^2
    if nb is None:
        nb, ms_dt = _nb(n, sums, N, dt), ms.to(dt)
    nb_r, nb_s = nb.split([N, M], dim=1)
    m_r_dt, m_s_dt = ms_dt.split(1, dim=1)
    if dev_r is None:
        dev_r = law.spread_norms(real, nb_r, m_r_dt, chunk_real)
    dev = torch.cat((dev_r, law.spread_norms(syn, nb_s, m_s_dt, False)), dim=-1)
    sp = (dev.to(_F64) / nsafe).square()
    # one point has no spread (rounding of u and u~ would leave eps^2 there)
    # (the backward drops the spread's derivative there too: multi, per side)
    multi: tuple[float | None, float | None] = (None, None)
    multi_t: tuple[Tensor | None, Tensor | None] = (None, None)
    if mask is not None:
        counts = _per_side_sums(mask, N, M)
        if reduce is not None:
            counts = torch.stack((reduce(counts[:, 0], "sum"), counts[:, 1]), dim=-1)
        many = (counts > 1).to(_F64)
        multi_t = (many[:, 0], many[:, 1])
        sp = sp * torch.cat((many[:, :1].expand(-1, N), many[:, 1:].expand(-1, M)), dim=-1)
    else:
        multi = (float(N > 1 or reduce is not None), float(M > 1))
        if multi != (1.0, 1.0):
            sp = sp * torch.tensor([multi[0]] * N + [multi[1]] * M, dtype=_F64, device=sp.device)
    spread = _per_side_sums(b * sp, N, M)
    if reduce is not None:
        spread = torch.stack((reduce(spread[:, 0], "sum"), spread[:, 1]), dim=-1)
    a_plus = sums[..., 1] + bsum
    q = law.law_q(sums[..., 2], a_plus, bsum, spread)  # -<m,m>_L, cancellation-free
    kappa = law.normaliser(q, sk)
    ys = ms * kappa.unsqueeze(-1)  # centroids' space parts [C, 2, D]
    # the distance, by the chord form of lorentz.dist
    ny = torch.linalg.vector_norm(ys, dim=-1)
    ab = ny / sk
    u = ys / ny.clamp_min(law.TINY).unsqueeze(-1)
    diff = u[:, 0] - u[:, 1]
    ash = torch.asinh(ab)
    delta = ash[:, 0] - ash[:, 1]
    qd = law.chord(delta, ab.prod(-1), torch.linalg.vector_norm(diff, dim=-1).square())
    d = law.chord_distance(qd, sk, scale)  # scale * d; qd >= 0 (non-negative terms)
    points = torch.stack((nsafe, gamma, tc, cb, em, b + c, sp) + (() if h is None else (h,)), dim=1)
    sides = torch.stack((a_plus, sums[..., 2], bsum, spread), dim=-1)
    saved = _Saved(d, ms, q, kappa, ys, ab, u, diff, delta, qd, torch.cosh(ash), points, sides, ksum, *multi_t)
    return d, n, saved, _Info(N, M, tmax, scale, multi)


def _nb(n: Tensor, sums: Tensor, N: int, dt: torch.dtype) -> Tensor:
    """``n_i / B`` of each point over its side's ``B`` (``sums[:, side, 0]``), ``[C, N + M, 1]`` in ``dt``."""
    return torch.cat((n[:, :N] / sums[:, 0, :1], n[:, N:] / sums[:, 1, :1]), dim=-1).to(dt).unsqueeze(-1)


def _side_grad(
    s: _Saved, info: _Info, i: int, v: Tensor | None, sk: float | Tensor, go: Tensor, need_k: bool
) -> tuple[Tensor | None, Tensor | None]:
    """``go`` times the gradient of the distance with respect to side ``i``'s features ``v`` (``v``'s dtype;
    None without ``v``), and ``sum_j v_j . grad_j`` of the distance itself when ``need_k`` (for ``k``; a
    no-grad real side reads it from the forward's second row)."""
    gam = law.chord_grad(
        s.qd, s.delta, s.cosh[:, i], s.u[:, i], s.ab[:, 1 - i], s.diff, info.scale if i == 0 else -info.scale
    )
    ys, ms, kappa = s.ys[:, i], s.ms[:, i], s.kappa[:, i]
    lam2 = torch.linalg.vecdot(gam, ys) / s.q[:, i]  # 2 lambda
    multi: float | Tensor | None = info.multi[i]
    if multi is None:
        multi = s.multi_r if i == 0 else s.multi_s
    assert multi is not None
    hvec = torch.addcmul(
        kappa.unsqueeze(-1) * gam,
        (lam2 if isinstance(multi, float) and multi == 1.0 else lam2 * multi).unsqueeze(-1),
        ms,
    )
    nsafe, gamma, tc, cb, em, ep, sp, *h = (s.points[..., : info.N] if i == 0 else s.points[..., info.N :]).unbind(1)
    free = tc < info.tmax  # radius not clamped: it moves
    a_plus, a_minus, bsum, spread = s.sides[:, i].unsqueeze(-1).unbind(1)
    dq = law.radial_dq(cb, em, ep, sp, h[0] if h else None, a_plus, a_minus, bsum, spread)
    ks, ls = (kappa / sk).unsqueeze(-1), (lam2 * (0.5 / sk)).unsqueeze(-1)
    if v is None:  # the real side without grad: only its share of the k-gradient
        assert s.ksum is not None
        kq = (free * nsafe * dq).sum(-1)
        return None, (kappa * torch.linalg.vecdot(s.ksum, gam) - 0.5 * lam2 * kq) / sk
    dt = v.dtype
    pg, ph = torch.bmm(v, torch.stack((gam, hvec), dim=-1).to(dt)).to(_F64).unbind(-1)  # v . Γ, v . H
    radial = torch.addcmul(ks * cb * pg / nsafe, ls, dq, value=-1.0) * free
    g = go.unsqueeze(-1)
    coef_v = torch.addcdiv(radial, gamma * ph, nsafe, value=-1.0) * (g / nsafe)
    grad = torch.baddbmm(coef_v.to(dt).unsqueeze(-1) * v, (gamma * g).to(dt).unsqueeze(-1), hvec.to(dt).unsqueeze(1))
    return grad, (nsafe * radial).sum(-1) if need_k else None


class _HDDDistance(torch.autograd.Function):
    """The PyTorch path: :func:`_forward` and the analytic backward of the module docstring."""

    @staticmethod
    def forward(
        ctx: Any,
        real: Tensor,
        syn: Tensor,
        k: Tensor | None,
        kf: float,
        rmask: Tensor | None,
        smask: Tensor | None,
        tmax: float,
        hierarchical: bool,
        reduce: law.Reduce | None,
        scale: float,
        out_dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        sk: float | Tensor = kf**0.5 if k is None else k.to(_F64).sqrt()
        need_r, need_s, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        ctx.set_materialize_grads(False)  # the norms output has no gradient: no zeros made for it
        mask = None
        if rmask is not None or smask is not None:
            mask = torch.cat(
                (
                    rmask if rmask is not None else real.new_ones(real.shape[:2], dtype=_F64),
                    smask if smask is not None else syn.new_ones(syn.shape[:2], dtype=_F64),
                ),
                dim=-1,
            )
        d, norms, saved, info = _forward(
            real,
            syn,
            sk,
            tmax,
            hierarchical,
            mask,
            reduce,
            k_rows=need_k and not need_r,
            chunk_real=not need_r,
            scale=scale,
        )
        if need_r or need_s or need_k:  # what the backward reads
            ctx.info, ctx.sk = info, sk
            ctx.save_for_backward(
                real if need_r else None, syn if need_s else None, None if k is None else k.to(_F64).sqrt(), *saved
            )
            if k is not None:
                ctx.k_dtype, ctx.k_shape = k.dtype, k.shape
        ctx.mark_non_differentiable(norms)
        return d.to(out_dtype), norms  # the norms cost nothing more: taken for the loss anyway

    @staticmethod
    def backward(ctx: Any, grad_d: Tensor | None, _grad_norms: Tensor | None = None) -> tuple[Tensor | None, ...]:
        if grad_d is None:  # (the gradients are not materialised: None means zero)
            return (None,) * 11
        real, syn, skt, *rest = ctx.saved_tensors
        s, info = _Saved(*rest), ctx.info
        sk: float | Tensor = skt if skt is not None else ctx.sk
        go = grad_d.to(_F64)  # the scale is in the chord gradient and in d
        need_k = ctx.needs_input_grad[2]
        out: list[Tensor | None] = [None] * 11
        vdot: Any = 0.0
        for i, v in enumerate((real, syn)):
            if v is not None or (need_k and i == 0):
                out[i], vd = _side_grad(s, info, i, v, sk, go, need_k)
                if need_k:
                    vdot = vdot + vd
        if need_k:
            dk = (go * (s.d - vdot)).sum() / (2.0 * sk * sk)
            out[2] = dk.to(ctx.k_dtype).reshape(ctx.k_shape)
        return tuple(out)


class _TritonHDD(torch.autograd.Function):
    """The Triton path (:mod:`hyperdm.triton_kernels`): the distances and, when the synthetic features need it,
    their gradient, both written in the forward's three launches; the backward scales the saved gradient by the
    upstream one. Real features without grad and a fixed ``k`` only (:func:`_kernel_choice`)."""

    @staticmethod
    def forward(
        ctx: Any, real: Tensor, syn: Tensor, sk: float, tmax: float, scale: float, out_dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        from . import triton_kernels

        ctx.set_materialize_grads(False)
        norms = torch.empty(real.shape[0], real.shape[1] + syn.shape[1], dtype=_F64, device=real.device)
        d, g = triton_kernels.hdd(real, syn, sk=sk, tmax=tmax, scale=scale, grad=ctx.needs_input_grad[1], norms=norms)
        ctx.save_for_backward(g)
        ctx.mark_non_differentiable(norms)
        return d.to(out_dtype), norms  # every point's |v|, written by the kernels as they take it

    @staticmethod
    def backward(ctx: Any, grad_d: Tensor | None, _grad_norms: Tensor | None = None) -> tuple[Tensor | None, ...]:
        (g,) = ctx.saved_tensors
        if grad_d is None or g is None:
            return (None,) * 6
        return (None, g * grad_d.to(g.dtype).view(-1, 1, 1)) + (None,) * 4


def hdd_distance(
    real: Tensor,
    syn: Tensor,
    *,
    k: float | Tensor,
    max_norm: float | None = 10.0,
    hierarchical: bool = False,
    real_mask: Tensor | None = None,
    syn_mask: Tensor | None = None,
    reduce: law.Reduce | None = None,
    fused: bool | str = "auto",
    scale: float = 1.0,
    dtype: torch.dtype = _F64,
) -> Tensor:
    r"""Per-class geodesic distance ``[C]`` between the Law centroids of ``exp_o(real)`` and ``exp_o(syn)``.

    ``real`` ``[C, N, D]``, ``syn`` ``[C, M, D]`` (same dtype); ``k`` is geoopt's curvature
    parameter (points satisfy ``<x,x>_L = -k``; curvature ``-1/k``), a float or a 0-d tensor (its
    gradient is computed when it requires grad); ``max_norm`` clamps ``|v|/sqrt(k)`` (``None``:
    the exact map, saturated at :data:`hyperdm.law.SAFE_RADIUS`); masks ``[C, N]`` /
    ``[C, M]`` exclude padded rows (which must be zero); ``reduce`` all-reduces the real side's
    sums over processes (real features without grad only). Gradients reach ``real``, ``syn``
    and ``k`` as they require; see the module docstring for the forms.

    ``fused`` selects the Triton kernels of :mod:`hyperdm.triton_kernels` (the distance and the
    synthetic features' gradient in three launches, written in the forward; the backward scales
    it): ``"auto"`` (default) uses them on CUDA tensors when
    ``triton`` is importable and the call is the DM case they cover (real features without grad,
    no masks, not hierarchical, a fixed ``k``, a single process); ``True`` requires them (an error
    says why they cannot run); ``False`` never uses them.

    ``scale`` multiplies the distances and ``dtype`` is the result's dtype (float64 by default);
    both are applied inside the function, so a loss ``scale * d`` in the features' dtype costs
    no extra autograd nodes. :func:`hdd_distance_with_stats` also returns where the points sit.
    """
    return _apply(real, syn, k, max_norm, hierarchical, real_mask, syn_mask, reduce, fused, scale, dtype)[0]


def hdd_distance_with_stats(
    real: Tensor,
    syn: Tensor,
    *,
    k: float | Tensor,
    max_norm: float | None = 10.0,
    hierarchical: bool = False,
    real_mask: Tensor | None = None,
    syn_mask: Tensor | None = None,
    reduce: law.Reduce | None = None,
    fused: bool | str = "auto",
    scale: float = 1.0,
    dtype: torch.dtype = _F64,
) -> tuple[Tensor, RadiusStats]:
    """:func:`hdd_distance` and the :class:`~hyperdm.radius.RadiusStats` of the call: the median of
    ``|v|/sqrt(k)`` and the fraction of points at the clamp, per side (0-d float64 tensors, not read on the host).

    They come from the per-point norms the loss takes anyway (the Triton kernels write them as they go), so they
    cost no pass over the features; the values are computed when first read (:class:`~hyperdm.radius.RadiusStats`).
    With ``reduce`` the real side's are this process's.
    """
    d, norms = _apply(real, syn, k, max_norm, hierarchical, real_mask, syn_mask, reduce, fused, scale, dtype)
    mask = None
    if real_mask is not None or syn_mask is not None:
        mask = torch.cat(
            (
                real_mask if real_mask is not None else real.new_ones(real.shape[:2], dtype=torch.bool),
                syn_mask if syn_mask is not None else syn.new_ones(syn.shape[:2], dtype=torch.bool),
            ),
            dim=-1,
        )
    sk = k.detach().to(_F64).sqrt() if isinstance(k, Tensor) else float(k) ** 0.5
    tmax = float(law.SAFE_RADIUS if max_norm is None else min(float(max_norm), law.SAFE_RADIUS))
    return d, RadiusStats(norms, real.shape[1], sqrt_k=sk, max_norm=tmax, mask=mask)


def _apply(
    real: Tensor,
    syn: Tensor,
    k: float | Tensor,
    max_norm: float | None,
    hierarchical: bool,
    real_mask: Tensor | None,
    syn_mask: Tensor | None,
    reduce: law.Reduce | None,
    fused: bool | str,
    scale: float,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Check the inputs, choose the path, run :class:`_HDDDistance`: ``(distances, the per-point norms [C, N + M]
    (float64))``."""
    if real.dim() != 3 or syn.dim() != 3 or real.shape[0] != syn.shape[0] or real.shape[2] != syn.shape[2]:
        raise ValueError(
            f"hdd_distance takes real [C, N, D] and syn [C, M, D] features with the same C and D; got "
            f"{tuple(real.shape)} and {tuple(syn.shape)} (HyperbolicMatcher also takes [N, D] features with labels)."
        )
    # (with reduce, this process may hold no real feature: the other processes' sums complete the class)
    if (real.shape[1] == 0 and reduce is None) or syn.shape[1] == 0 or real.shape[2] == 0:
        raise ValueError(
            f"hdd_distance needs at least one real and one synthetic feature per class and D >= 1; got real "
            f"{tuple(real.shape)} and syn {tuple(syn.shape)}."
        )
    if reduce is not None:  # the reduction happens inside the autograd function, where nothing requires grad
        from .distributed import check_no_grad

        check_no_grad(real)
    kt, kf = (k.to(real.device), 0.0) if isinstance(k, Tensor) else (None, float(k))
    tmax = float(law.SAFE_RADIUS if max_norm is None else min(float(max_norm), law.SAFE_RADIUS))
    use_kernel = _kernel_choice(fused, real, syn, k, real_mask, syn_mask, hierarchical, reduce, tmax)
    if use_kernel and _self_checked(real, syn, kf, tmax, strict=fused is True):
        try:
            return _TritonHDD.apply(real, syn, kf**0.5, tmax, float(scale), dtype)
        except Exception as e:  # a shape that compiles anew and fails: fall back (fused=True: raise)
            why = f"failed to compile or launch: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            kernel_check.fail(kernel_check.key_of(real, tmax), real, "error", why, fused is True)
    rm = None if real_mask is None else real_mask.to(_F64)
    sm = None if syn_mask is None else syn_mask.to(_F64)
    return _HDDDistance.apply(real, syn, kt, kf, rm, sm, tmax, bool(hierarchical), reduce, float(scale), dtype)


def _self_checked(real: Tensor, syn: Tensor, k: float, tmax: float, *, strict: bool) -> bool:
    """Whether the kernels may run this call: the key's verdict, from a first-call comparison with the PyTorch
    path on these inputs (:mod:`hyperdm.kernel_check`)."""
    from . import triton_kernels

    sk = k**0.5

    def kernel() -> tuple[Tensor, Tensor | None]:
        return triton_kernels.hdd(real.detach(), syn.detach(), sk=sk, tmax=tmax, scale=1.0, grad=True)

    def reference(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            s2 = syn.detach().to(dtype).requires_grad_(True)
            args = (real.detach().to(dtype), s2, None, k, None, None, tmax, False, None, 1.0, _F64)
            d = _HDDDistance.apply(*args)[0]
            (g,) = torch.autograd.grad(d.sum(), s2)
        return d.detach(), g

    refs = (lambda: reference(real.dtype),) + ((lambda: reference(_F64)),) * (real.dtype != _F64)
    return kernel_check.approve(
        kernel_check.key_of(real, tmax), real, syn, kernel=kernel, references=refs, strict=strict
    )


def _kernel_choice(
    fused: bool | str,
    real: Tensor,
    syn: Tensor,
    k: float | Tensor,
    real_mask: Tensor | None,
    syn_mask: Tensor | None,
    hierarchical: bool,
    reduce: law.Reduce | None,
    tmax: float,
) -> bool:
    """Whether this call may take the Triton kernels (before their first-call check); ``fused=True`` raises, saying
    why, where they cannot. A call within the kernels' reach but beyond their bounds is recorded in
    :func:`hyperdm.kernel_check.kernel_status` as ``unsupported``, with the reason."""
    if fused is False:
        return False
    if fused not in (True, "auto"):
        raise ValueError(f"fused must be 'auto', True or False; got {fused!r}.")
    from . import triton_kernels

    why = None
    bounded = False
    if kernel_check.disabled():
        why = f"is turned off for this program by {kernel_check.ENV}={os.environ.get(kernel_check.ENV)}"
    elif torch.compiler.is_compiling():
        why = "is not traced by torch.compile"
    elif triton_kernels.triton_module() is None:
        why = "needs triton (pip install triton)"
    elif not (real.is_cuda or ((fused is True or AUTO_ON_INTERPRETER) and triton_kernels.interpreting())):
        why = "needs CUDA tensors (CPU tensors only under Triton's interpreter, TRITON_INTERPRET=1)"
    elif real.requires_grad or (isinstance(k, Tensor) and k.requires_grad):
        why = "covers real features without grad and a fixed k"
    elif real_mask is not None or syn_mask is not None or hierarchical or reduce is not None:
        why = "covers unmasked [C, N, D] features, hierarchical=False and a single process"
    else:
        C, N, D = real.shape
        bound = kernel_check.bounds(C, N, D, triton_kernels.ROWS_PER_PROGRAM)
        if bound is not None:
            why, bounded = f"cannot take this size: {bound}", True
            kernel_check.record_unsupported(kernel_check.key_of(real, tmax), bound, real)
    if why is None:
        return True
    if fused is True:
        raise ValueError(f"fused=True: the Triton kernel {why}; pass fused='auto' or False to use the PyTorch path.")
    if bounded:
        log.debug("fused='auto': the PyTorch path (%s)", why)
    return False
