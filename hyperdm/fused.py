r"""The HDD loss per class as one ``torch.autograd.Function`` with an analytic backward.

``hdd_distance(real, syn, k=k, ...)`` returns, per class ``c``,
``d_L(centroid(exp_o(real_c)), centroid(exp_o(syn_c)))``: the same quantity as composing
:func:`hyperdm.lorentz.feature_centroid` and :func:`hyperdm.lorentz.dist`, with the same
cancellation-free forms, but without an autograd graph over ``[C, N, D]`` tensors.

Forward, per side (``v`` is ``[C, N, D]``; per-point scalars and ``[C, D]`` sums in float64):

1. the norms ``n_i = |v_i|`` (one pass over ``v``), then per-point scalars
   ``t_i = min(n_i/sqrt(k), max_norm)``, weights ``w_i`` (mask, hierarchical), and
   ``c_i = w_i cosh(t_i) e^{-T}``, ``b_i = w_i sinh(t_i) e^{-T}`` (``T = max_i t_i``);
2. the weighted sum ``m_s = sum_i (b_i/n_i) v_i`` (one batched mat-vec), and
   ``m_0 = sum_i c_i``; the Law centroid is ``sqrt(k) m / sqrt(Q)`` with
   ``Q = (sum_i w_i e^{-t_i-T})(sum_i w_i e^{t_i-T}) + B sum_i b_i |u_i - m_s/B|^2``,
   ``B = sum_i b_i`` (see :func:`hyperdm.lorentz.feature_centroid`);
3. the spread ``|u_i - m_s/B|^2``, evaluated exactly as ``|v_i - n_i m_s/B|^2 / n_i^2``. For
   features without grad (the real side of DM, IDM and Dance) this pass runs in chunks of
   at most :data:`CHUNK_ELEMENTS` elements, so no ``[C, N, D]`` temporary is made.

   The spread cannot come from the two sums alone without losing the method's precision:
   ``sum_i b_i |u_i - m_s/B|^2 = B - |m_s|^2/B`` subtracts two numbers that agree to
   ``1 - |u~|^2``, and when the directions nearly coincide (``1 - |u~|^2`` ~ 1e-6) a float32
   mat-vec leaves no correct digit in that difference (the centroid's radius is then off by
   ~1e-2 sqrt(k), against 1e-6 sqrt(k) here).

The distance between the centroids uses the stable chord form of :func:`hyperdm.lorentz.dist`.

Backward. The centroid is scale invariant in ``m``, so with ``y = sqrt(k) m / sqrt(Q)`` and
``e`` the unit tangent vector at ``y`` pointing to the other centroid ``x``,

.. math::
    \nabla_m d = -\frac{\sqrt{k}}{\sqrt{Q}}\, J e,\qquad
    e = \frac{x - \cosh(d/\sqrt{k})\, y}{\sqrt{k}\,\sinh(d/\sqrt{k})},\qquad J = \mathrm{diag}(-1, 1, \dots, 1),

(``e := 0`` when the centroids coincide, where the distance has gradient 0). With
``G = (G_0, G_s) = \nabla_m d``, ``u_i = v_i/n_i`` and ``s_i = u_i \cdot G_s``, the gradient of
a feature is

.. math::
    \nabla_{v_i} d = \sqrt{k}\,\frac{b_i}{n_i}\, G_s
      + \big[\mathbb{1}_{t_i < \mathrm{max\_norm}}\big(b_i G_0 + c_i s_i + h_i (c_i G_0 + b_i s_i)\big)
      - \sqrt{k}\,\frac{b_i}{n_i} s_i\big]\, u_i,

where ``h_i = w'(t_i)/w(t_i)`` is the log-derivative of the hierarchical weight (0 without
it): one mat-vec (``s``) and one fused write per side. A clamped point moves only its
direction. ``k`` (when it requires grad) gets its gradient from Euler's relation for the
loss, which is ``sqrt(k)`` times a function of ``v/sqrt(k)``:
``dd/dk = (d - sum_i v_i . grad_{v_i} d) / (2k)`` over both sides; the real side's share
is one more row of the forward mat-vec, so no extra pass.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor

from . import lorentz

__all__ = ["hdd_distance", "CHUNK_ELEMENTS"]

#: Largest ``[C, n, D]`` slice the exact spread of a no-grad side processes at once (elements).
CHUNK_ELEMENTS = 1 << 20

_F64 = torch.float64


def _where_pos(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, torch.ones_like(x))


class _Side:
    """Per-point scalars and per-class sums of one side of the loss (everything float64 except ``v``)."""

    def __init__(self, v: Tensor, mask: Optional[Tensor], sk: Tensor, tmax: float, hierarchical: bool,
                 reduce: Optional[lorentz.Reduce], rows_for_k: bool, chunked: bool) -> None:
        n = torch.linalg.vector_norm(v, dim=-1)                                    # pass 1
        n64 = n.to(_F64)
        t = n64 / sk
        tc = t.clamp(max=tmax)
        free = (t < tmax).to(_F64)                                                # radius not clamped
        w = torch.ones_like(tc) if not hierarchical else 1.0 / lorentz._sinhc(tc)
        if mask is not None:
            w = w * mask
            tc = tc * mask
        wsum = w.sum(-1, keepdim=True)
        top = tc.amax(-1, keepdim=True)
        if reduce is not None:
            wsum, top = reduce(wsum, "sum"), reduce(top, "max")
        w = w / wsum
        e_plus = w * torch.exp(tc - top)                                           # w e^{t-T}
        e_minus = w * torch.exp(-tc - top)                                         # w e^{-t-T}
        half = -torch.expm1(-2.0 * tc) / 2.0                                       # (1 - e^{-2t}) / 2
        b = e_plus * half                                                          # w sinh(t) e^{-T}
        c = (e_plus + e_minus) / 2.0                                               # w cosh(t) e^{-T}
        small = t < lorentz._small(_F64)
        one = torch.ones_like(t)
        ratio = torch.where(small, 1.0 - t + (2.0 / 3.0) * t * t, half / torch.where(small, one, t))
        gamma = e_plus * ratio / sk                                                # b / n, finite at n = 0
        h = None
        if hierarchical:  # w(t) = t / sinh(t): h = w'/w = 1/t - coth(t), -t/3 near 0
            h = torch.where(small, -t / 3.0, 1.0 / torch.where(small, one, t) - 1.0 / torch.tanh(torch.where(small, one, tc)))
        # d(b)/dt, d(e^{+-t})/dt with the weight's derivative: the radial weights of the backward
        cb = c if h is None else c + h * b
        # pass 2: one batched mat-vec; a second row gives the real side's share of the k-gradient
        coef = gamma.unsqueeze(-2)
        if rows_for_k:
            coef = torch.cat((coef, (free * cb).unsqueeze(-2)), dim=-2)
        sums = (coef.to(v.dtype) @ v).to(_F64)
        ms = sums[..., 0, :]
        scal = torch.stack((b.sum(-1), e_minus.sum(-1), e_plus.sum(-1), (w > 0).sum(-1).to(_F64)), dim=-1)
        if reduce is not None:
            d = ms.shape[-1]
            ms, scal = reduce(torch.cat((ms, scal), dim=-1), "sum").split([d, 4], dim=-1)
        bsum, a_minus, a_plus, points = scal.unbind(-1)
        multi = (points > 1).to(_F64)  # one point has no spread; rounding would leave eps^2 there
        # pass 3: the exact spread |u_i - u~|^2 about u~ = m_s / B
        ut = (ms / _where_pos(bsum).unsqueeze(-1)).to(v.dtype).unsqueeze(-2)
        ncol = n.unsqueeze(-1)
        if chunked and v.shape[-2] > 1 and v.numel() > CHUNK_ELEMENTS:
            step = max(1, CHUNK_ELEMENTS // max(1, v.shape[0] * v.shape[-1]))
            dev = torch.cat([torch.linalg.vector_norm(torch.baddbmm(vc, nc, -ut), dim=-1)
                             for vc, nc in zip(v.split(step, dim=-2), ncol.split(step, dim=-2))], dim=-1)
        else:
            dev = torch.linalg.vector_norm(torch.baddbmm(v, ncol, -ut), dim=-1)
        sp = (dev.to(_F64) / _where_pos(n64)).square() * multi.unsqueeze(-1)
        spread = (b * sp).sum(-1)
        if reduce is not None:
            spread = reduce(spread, "sum")
        q = a_minus * a_plus + bsum * spread
        self.n, self.free, self.gamma, self.cb = n64, free, gamma, cb
        self.ms, self.q, self.multi = ms, q, multi
        self.ys = sk * ms / q.sqrt().unsqueeze(-1)  # the centroid's space part (its time part is implied)
        # dQ/dt_i (through A-, A+, B and the spread), the radial part of every point's gradient
        hm = -1.0 if h is None else h - 1.0
        hp = 1.0 if h is None else h + 1.0
        self.dq = (a_plus.unsqueeze(-1) * e_minus * hm + a_minus.unsqueeze(-1) * e_plus * hp
                   + (spread.unsqueeze(-1) + bsum.unsqueeze(-1) * sp) * cb)
        self.kdot: Optional[tuple[Tensor, Tensor]] = None
        if rows_for_k:  # sum_i free_i n_i dQ_i and sum_i free_i cb_i v_i, for the k-gradient of a no-grad side
            ksum, kq = sums[..., 1, :], (free * n64 * self.dq).sum(-1, keepdim=True)
            if reduce is not None:
                d = ksum.shape[-1]
                ksum, kq = reduce(torch.cat((ksum, kq), dim=-1), "sum").split([d, 1], dim=-1)
            self.kdot = (kq.squeeze(-1), ksum)

    def weights(self, gam: Tensor, sk: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From ``Γ = dd/dy_s`` (``y_s`` this side's centroid space part): ``κ``, ``λ`` and ``H``."""
        kappa = sk / self.q.sqrt()
        lam = (gam * self.ys).sum(-1) / (2.0 * self.q)
        hvec = kappa.unsqueeze(-1) * gam + (2.0 * lam * self.multi).unsqueeze(-1) * self.ms
        return kappa, lam, hvec

    def grad_v(self, v: Tensor, gam: Tensor, sk: Tensor, go: Tensor) -> tuple[Tensor, Tensor]:
        """``go`` times the gradient of the distance with respect to ``v`` (in ``v``'s dtype), and
        ``sum_i v_i . grad_i`` of the distance itself (for ``k``)."""
        kappa, lam, hvec = self.weights(gam, sk)
        proj = (v @ torch.stack((gam, hvec), dim=-1).to(v.dtype)).to(_F64)        # v_i . Γ, v_i . H
        inv_n = 1.0 / _where_pos(self.n)
        radial = self.free * (kappa.unsqueeze(-1) * self.cb * proj[..., 0] * inv_n - lam.unsqueeze(-1) * self.dq) / sk
        coef_v = (radial - self.gamma * proj[..., 1] * inv_n) * inv_n
        g = go.unsqueeze(-1)
        dt = v.dtype
        grad = torch.baddbmm((coef_v * g).to(dt).unsqueeze(-1) * v, (self.gamma * g).to(dt).unsqueeze(-1),
                             hvec.to(dt).unsqueeze(-2))
        return grad, (self.n * radial).sum(-1)

    def vdot_no_grad(self, gam: Tensor, sk: Tensor) -> Tensor:
        """``sum_i v_i . grad_i`` of a side without grad, from the sums kept by the forward."""
        kappa, lam, _ = self.weights(gam, sk)
        kq, ksum = self.kdot
        return (kappa * (ksum * gam).sum(-1) - lam * kq) / sk


def _chord(xs: Tensor, ys: Tensor, sk: Tensor) -> tuple[Tensor, ...]:
    """Pieces of :func:`hyperdm.lorentz.dist`'s stable form for two points given by their space parts."""
    a = torch.linalg.vector_norm(xs, dim=-1) / sk
    b = torch.linalg.vector_norm(ys, dim=-1) / sk
    ux = xs / _where_pos(a * sk).unsqueeze(-1)
    uy = ys / _where_pos(b * sk).unsqueeze(-1)
    diff = ux - uy
    chord2 = diff.square().sum(-1)
    delta = torch.asinh(a) - torch.asinh(b)
    q = torch.sinh(delta / 2.0).square() + a * b * chord2 / 4.0
    return a, b, ux, uy, diff, chord2, delta, q


def _chord_grads(xs: Tensor, ys: Tensor, sk: Tensor) -> tuple[Tensor, Tensor]:
    """``(dd/dx_s, dd/dy_s)`` of ``d = 2 sqrt(k) asinh(sqrt(q))``; 0 where the points coincide."""
    a, b, ux, uy, diff, chord2, delta, q = _chord(xs, ys, sk)
    pos = q > 0
    f = torch.where(pos, 1.0 / torch.sqrt(torch.where(pos, q * (1.0 + q), torch.ones_like(q))), torch.zeros_like(q))
    sd = torch.sinh(delta) / 2.0
    dqa = sd / torch.sqrt(1.0 + a * a) + b * chord2 / 4.0
    dqb = -sd / torch.sqrt(1.0 + b * b) + a * chord2 / 4.0
    # tangential parts of dq/du: -(b/2)(u_y - (u_y.u_x)u_x) for x, from the difference (no cancellation)
    perp_x = -diff - (-(diff * ux).sum(-1, keepdim=True)) * ux          # u_y - u_x minus its u_x component
    perp_y = diff - (diff * uy).sum(-1, keepdim=True) * uy              # u_x - u_y minus its u_y component
    gx = f.unsqueeze(-1) * (dqa.unsqueeze(-1) * ux - (b / 2.0).unsqueeze(-1) * perp_x)
    gy = f.unsqueeze(-1) * (dqb.unsqueeze(-1) * uy - (a / 2.0).unsqueeze(-1) * perp_y)
    return gx, gy


class _HDDDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, real: Tensor, syn: Tensor, k: Tensor, rmask: Optional[Tensor], smask: Optional[Tensor],
                tmax: float, hierarchical: bool, reduce: Optional[lorentz.Reduce]) -> Tensor:
        sk = k.to(_F64).sqrt()
        need_k = ctx.needs_input_grad[2]
        r = _Side(real, rmask, sk, tmax, hierarchical, reduce, rows_for_k=need_k and not ctx.needs_input_grad[0],
                  chunked=not ctx.needs_input_grad[0])
        s = _Side(syn, smask, sk, tmax, hierarchical, None, rows_for_k=need_k and not ctx.needs_input_grad[1],
                  chunked=not ctx.needs_input_grad[1])
        *_, q = _chord(r.ys, s.ys, sk)
        d = 2.0 * sk * torch.asinh(lorentz._safe_sqrt(q))
        ctx.sides = (r, s)
        ctx.sk = sk
        ctx.k_dtype, ctx.k_shape = k.dtype, k.shape
        ctx.save_for_backward(real if ctx.needs_input_grad[0] else None, syn if ctx.needs_input_grad[1] else None, d)
        return d

    @staticmethod
    def backward(ctx: Any, grad_d: Tensor) -> tuple[Optional[Tensor], ...]:
        real, syn, d = ctx.saved_tensors
        r, s = ctx.sides
        sk = ctx.sk
        go = grad_d.to(_F64)
        out: list[Optional[Tensor]] = [None] * 8
        need_k = ctx.needs_input_grad[2]
        gam_r, gam_s = _chord_grads(r.ys, s.ys, sk)
        vdot = torch.zeros_like(d)
        for i, (side, gam, v) in enumerate(((r, gam_r, real), (s, gam_s, syn))):
            if v is not None:
                out[i], vd = side.grad_v(v, gam, sk, go)
                vdot = vdot + vd
            elif need_k:
                vdot = vdot + side.vdot_no_grad(gam, sk)
        if need_k:
            dk = (go * (d - vdot)).sum() / (2.0 * sk * sk)
            out[2] = dk.to(ctx.k_dtype).reshape(ctx.k_shape)
        return tuple(out)


def hdd_distance(
    real: Tensor,
    syn: Tensor,
    *,
    k: Union[float, Tensor],
    max_norm: Optional[float] = 10.0,
    hierarchical: bool = False,
    real_mask: Optional[Tensor] = None,
    syn_mask: Optional[Tensor] = None,
    reduce: Optional[lorentz.Reduce] = None,
) -> Tensor:
    r"""Per-class geodesic distance ``[C]`` (float64) between the Law centroids of ``exp_o(real)`` and ``exp_o(syn)``.

    ``real`` ``[C, N, D]``, ``syn`` ``[C, M, D]`` (same dtype); ``k`` is geoopt's curvature
    parameter (points satisfy ``<x,x>_L = -k``; curvature ``-1/k``), a float or a 0-d tensor (its
    gradient is computed when it requires grad); ``max_norm`` clamps ``|v|/sqrt(k)`` (``None``:
    the exact map, saturated at :data:`hyperdm.lorentz.SAFE_RADIUS`); masks ``[C, N]`` /
    ``[C, M]`` exclude padded rows (which must be zero); ``reduce`` all-reduces the real side's
    sums over processes (real features without grad only). Gradients reach ``real``, ``syn``
    and ``k`` as they require; see the module docstring for the forms.
    """
    if reduce is not None and real.requires_grad:
        raise ValueError(
            "distributed matching reduces only the real side, which must not require grad; compute real "
            "features under torch.no_grad() (as DM does) or detach them."
        )
    kt = k.to(real.device) if isinstance(k, Tensor) else torch.tensor(float(k), dtype=_F64, device=real.device)
    tmax = float(lorentz.SAFE_RADIUS if max_norm is None else min(float(max_norm), lorentz.SAFE_RADIUS))
    rm = None if real_mask is None else real_mask.to(_F64)
    sm = None if syn_mask is None else syn_mask.to(_F64)
    return _HDDDistance.apply(real, syn, kt, rm, sm, tmax, bool(hierarchical), reduce)
