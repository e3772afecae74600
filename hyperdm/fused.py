r"""The HDD loss per class as one ``torch.autograd.Function`` with an analytic backward.

``hdd_distance(real, syn, k=k, ...)`` returns, per class ``c``,
``d_L(centroid(exp_o(real_c)), centroid(exp_o(syn_c)))``: the same quantity as composing
:func:`hyperdm.lorentz.feature_centroid` and :func:`hyperdm.lorentz.dist`, with the same
cancellation-free forms, but without an autograd graph over ``[C, N, D]`` tensors.

Forward, per side (``v`` is ``[C, N, D]``; per-point scalars and ``[C, D]`` sums in float64):

1. the norms ``n_i = |v_i|`` (one pass over ``v``), then per-point scalars
   ``t_i = min(n_i/sqrt(k), max_norm)``, weights ``w_i`` (mask, hierarchical), and
   ``c_i = w_i cosh(t_i) e^{-T}``, ``b_i = w_i sinh(t_i) e^{-T}``. Each side's centroid is
   invariant to a common scale of its weights, so ``T`` may be anything: 0 while ``max_norm`` is
   at most 40 (the default 10 included), else the class's largest ``t``, so nothing overflows;
2. the weighted sum ``m_s = sum_i (b_i/n_i) v_i`` (one batched mat-vec), and
   ``m_0 = sum_i c_i``; the Law centroid is ``sqrt(k) m / sqrt(Q)`` with
   ``Q = (sum_i w_i e^{-t_i-T})(sum_i w_i e^{t_i-T}) + B sum_i b_i |u_i - m_s/B|^2``,
   ``B = sum_i b_i`` (see :func:`hyperdm.lorentz.feature_centroid`);
3. the spread ``|u_i - m_s/B|^2``, evaluated exactly as ``|v_i - (n_i/B) m_s|^2 / n_i^2``. For
   features without grad (the real side of DM, IDM and Dance) the differences go through one
   reused buffer of at most :data:`CHUNK_ELEMENTS` elements (:data:`DEVICE_CHUNK_ELEMENTS`
   off the CPU), so no ``[C, N, D]`` temporary is made and the buffer stays in cache; when
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
from typing import Any, cast

import torch
from torch import Tensor

from . import kernel_check, lorentz
from .numerics import sinhc, small_argument
from .radius import RadiusStats

__all__ = ["hdd_distance", "hdd_distance_with_stats", "CHUNK_ELEMENTS", "DEVICE_CHUNK_ELEMENTS"]

#: Largest ``[C, n, D]`` slice the exact spread of a no-grad side processes at once on CPU tensors
#: (elements): 2 MiB of float32, so a slice read by the mat-vec is still in cache for its spread.
CHUNK_ELEMENTS = 1 << 19
#: The same on other devices (CUDA): a bounded temporary in few slices, since every op is a kernel launch.
DEVICE_CHUNK_ELEMENTS = 1 << 24


#: ``fused="auto"`` takes the kernels on CPU tensors too when Triton's interpreter is on (off by default: the
#: interpreter is for tests, and far slower than the PyTorch path); the self-check's tests turn it on.
AUTO_ON_INTERPRETER = False


def _chunk_elements(v: Tensor) -> int:
    return CHUNK_ELEMENTS if v.device.type == "cpu" else DEVICE_CHUNK_ELEMENTS


log = logging.getLogger(__name__)

_F64 = torch.float64
_TINY = 1e-300  # radii below this (in units of sqrt(k)) are this: sinh(t)/t is then exactly 1
# Up to this clamp radius (in units of sqrt(k)) the per-point weights need no rescaling: sinh(40) ~ 1e17
# keeps every float32 mat-vec sum finite, and the float64 scalars have room to e^{600} (half-precision
# features are always rescaled).
_UNSCALED_RADIUS = 40.0


def _spread_norms(v: Tensor, n: Tensor, ut: Tensor, chunked: bool) -> Tensor:
    """``|v_i - n_i ut|`` per point of ``v`` ``[C, N, D]`` (``n`` ``[C, N, 1]``, ``ut`` ``[C, 1, D]``): the
    spread's differences with ``n_i / B`` and ``m_s`` for ``n`` and ``ut``.

    ``chunked``: one reused buffer of at most :data:`CHUNK_ELEMENTS` elements holds the differences,
    whole classes (contiguous in memory) when a class fits, else row blocks of one class; so no
    ``[C, N, D]`` temporary is made and the buffer stays in cache.
    """
    C, N, D = v.shape
    chunk = _chunk_elements(v)
    if not chunked or N < 2 or v.numel() <= chunk:
        return torch.linalg.vector_norm(torch.addcmul(v, n, ut, value=-1.0), dim=-1)
    if chunk >= N * D:
        return _class_sweep(v, n, ref=ut)[1]
    step = max(1, chunk // D)
    buf = torch.empty(1, step, D, dtype=v.dtype, device=v.device)
    return torch.cat(
        [
            torch.cat(
                [
                    torch.linalg.vector_norm(
                        torch.addcmul(vc, nc, ut[c : c + 1], value=-1.0, out=buf[:, : vc.shape[1]]), dim=-1
                    )
                    for vc, nc in zip(v[c : c + 1].split(step, dim=1), n[c : c + 1].split(step, dim=1), strict=True)
                ],
                dim=-1,
            )
            for c in range(C)
        ]
    )


def _class_sweep(
    v: Tensor, nb: Tensor, *, ref: Tensor | None = None, rows: Tensor | None = None
) -> tuple[Tensor | None, Tensor]:
    """The spread norms ``|v_i - nb_i m|`` of ``v`` ``[C, N, D]`` without grad (``nb`` ``[C, N, 1]`` =
    ``n_i / B``), a slice of whole classes at a time through one reused buffer of at most
    :data:`CHUNK_ELEMENTS` elements; returns ``(rows @ v or None, norms)``.

    ``m`` is ``ref`` ``[C, 1, D]``, or with ``rows`` ``[C, r, N]`` the first row of each slice's own
    mat-vec ``rows @ v`` (a second row, for k's gradient, is summed but is not the reference), taken
    right before the slice's differences while the slice is still in cache: one read of ``v`` from
    memory for both.
    """
    assert (ref is None) != (rows is None), "give ref or rows"
    C, N, D = v.shape
    g = max(1, _chunk_elements(v) // max(1, N * D))
    first = rows is not None and rows.shape[1] > 1
    buf = torch.empty(g, N, D, dtype=v.dtype, device=v.device) if g < C else None
    sums, devs = [], []
    src = rows if rows is not None else cast(Tensor, ref)
    for vc, nc, sc in zip(v.split(g), nb.split(g), src.split(g), strict=True):
        m = torch.bmm(sc, vc) if rows is not None else sc
        sums.append(m)
        out = None if buf is None else buf if vc.shape[0] == g else buf[: vc.shape[0]]
        diff = torch.addcmul(vc, nc, m[:, :1] if first else m, value=-1.0, out=out)
        devs.append(torch.linalg.vector_norm(diff, dim=-1))
    if len(devs) == 1:
        return (None if rows is None else sums[0]), devs[0]
    return (None if rows is None else torch.cat(sums)), torch.cat(devs)


def _per_side_sums(x: Tensor, N: int, M: int) -> Tensor:
    """``x`` ``[..., N + M]`` (real points, then synthetic) summed per side: ``[..., 2]``."""
    return torch.stack([part.sum(-1) for part in x.split([N, M], dim=-1)], dim=-1)


class _Pair:
    """Forward quantities of both sides, real first: per-point ``[C, N + M]``, per side ``[C, 2, ...]`` (float64)."""

    def __init__(
        self,
        real: Tensor,
        syn: Tensor,
        sk: float | Tensor,
        tmax: float,
        hierarchical: bool,
        mask: Tensor | None,
        reduce: lorentz.Reduce | None,
        k_rows: bool,
        chunk_real: bool,
        keep: bool = True,
        scale: float = 1.0,
    ) -> None:
        N, M = real.shape[-2], syn.shape[-2]
        dt = real.dtype
        n_dt = torch.cat(
            (torch.linalg.vector_norm(real, dim=-1), torch.linalg.vector_norm(syn, dim=-1)), dim=-1
        )  # pass 1
        self.norms = n = n_dt.to(_F64)  # also an output: where the points sit (hyperdm.radius.RadiusStats)
        tc = (n / sk).clamp(_TINY, tmax)  # t; below tmax the point moves radially
        if mask is not None:
            tc = tc * mask
        em = torch.exp(-tc)
        b = torch.sinh(tc)
        c = b + em  # cosh(t), without cancellation
        # scale each class by e^{-T}, T its largest t, where e^{t} could overflow a float32 sum; not with
        # hierarchical weights w = t / sinh(t): they make the weights t, t coth(t), t e^{-t} / sinh(t), which
        # never overflow, and rescaling them would underflow (radius 100: e^{-100} is below float32's range)
        if not hierarchical and (tmax > _UNSCALED_RADIUS or dt not in (torch.float32, _F64)):
            if reduce is None:
                top = tc.amax(-1, keepdim=True)
            else:  # every rank scales the real sums alike
                top = torch.maximum(reduce(tc[:, :N].amax(-1, keepdim=True), "max"), tc[:, N:].amax(-1, keepdim=True))
            etop = torch.exp(-top)
            b, c, em = b * etop, c * etop, em * etop  # w sinh(t) e^{-T}, w cosh(t) e^{-T}, w e^{-t-T}
        h = None
        w: Tensor | None = None
        if hierarchical:  # w(t) = t / sinh(t); h = w'/w = 1/t - coth(t) (-t/3 near 0), for the backward
            w = 1.0 / sinhc(tc)
            small = tc < small_argument(_F64)
            safe = torch.where(small, torch.ones_like(tc), tc)
            h = torch.where(small, -tc / 3.0, 1.0 / safe - 1.0 / torch.tanh(safe))
            w = w if mask is None else w * mask
        else:
            w = mask
        if w is not None:
            b, c, em = b * w, c * w, em * w
        nsafe = n.clamp_min(_TINY * sk)
        gamma = b / nsafe  # coefficient of v_i in m_s
        cb = c if h is None else c + h * b  # d(w sinh t)/dt e^{-T}
        # per-side sums of b, c, e^{-t}
        sums = _per_side_sums(torch.stack((b, c, em), dim=1), N, M).transpose(1, 2)  # [C, 2, 3]
        # pass 2: the weighted sums m_s (a second real row for the k-gradient of a no-grad real side)
        g_r, g_s = gamma.to(dt).split([N, M], dim=-1)
        rows_r = g_r.unsqueeze(1)
        if k_rows:
            rows_r = torch.cat((rows_r, ((tc < tmax) * cb)[:, :N].to(dt).unsqueeze(1)), dim=1)
        # the spread's reference per point, n_i u~ = (n_i / B) m_s: known now unless the real sums change below
        final = reduce is None
        nb = self._nb(n, sums, N, dt) if final else None
        # the real side's mat-vec and exact spread in one sweep of whole-class slices, where nothing needs the
        # all-reduced sums first (each class's reference is then known right after its mat-vec)
        dev_r: Tensor | None = None
        if nb is not None and chunk_real and N * real.shape[-1] <= _chunk_elements(real):
            m_r, dev_r = _class_sweep(real, nb[:, :N], rows=rows_r)
            assert m_r is not None
        else:
            m_r = torch.bmm(rows_r, real)
        ms_dt = torch.cat((m_r[:, :1] if k_rows else m_r, torch.bmm(g_s.unsqueeze(1), syn)), dim=1)
        ms = ms_dt.to(_F64)
        self.ksum = m_r[:, 1].to(_F64) if k_rows else None
        if reduce is not None:
            D = ms.shape[-1]
            both = reduce(torch.cat((ms[:, 0], sums[:, 0]), dim=-1), "sum")
            ms = torch.stack((both[:, :D], ms[:, 1]), dim=1)
            sums = torch.stack((both[:, D:], sums[:, 1]), dim=1)
            if self.ksum is not None:
                self.ksum = reduce(self.ksum, "sum")
        bsum = sums[..., 0]
        # pass 3: the exact spread |u_i - u~|^2, u~ = m_s / B, as |v_i - (n_i / B) m_s|^2 / n_i^2
        if nb is None:
            nb, ms_dt = self._nb(n, sums, N, dt), ms.to(dt)
        nb_r, nb_s = nb.split([N, M], dim=1)
        m_r_dt, m_s_dt = ms_dt.split(1, dim=1)
        if dev_r is None:
            dev_r = _spread_norms(real, nb_r, m_r_dt, chunk_real)
        dev = torch.cat((dev_r, _spread_norms(syn, nb_s, m_s_dt, False)), dim=-1)
        sp = (dev.to(_F64) / nsafe).square()
        # one point has no spread (rounding of u and u~ would leave eps^2 there)
        # (the backward drops the spread's derivative there too: self.multi, per side)
        self.multi: tuple[float | Tensor, float | Tensor]
        if mask is not None:
            counts = _per_side_sums(mask, N, M)
            if reduce is not None:
                counts = torch.stack((reduce(counts[:, 0], "sum"), counts[:, 1]), dim=-1)
            many = (counts > 1).to(_F64)
            self.multi = (many[:, 0], many[:, 1])
            sp = sp * torch.cat((many[:, :1].expand(-1, N), many[:, 1:].expand(-1, M)), dim=-1)
        else:
            self.multi = (float(N > 1 or reduce is not None), float(M > 1))
            if self.multi != (1.0, 1.0):
                sp = sp * torch.tensor([self.multi[0]] * N + [self.multi[1]] * M, dtype=_F64, device=sp.device)
        spread = _per_side_sums(b * sp, N, M)
        if reduce is not None:
            spread = torch.stack((reduce(spread[:, 0], "sum"), spread[:, 1]), dim=-1)
        a_plus = sums[..., 1] + bsum
        q = torch.addcmul(sums[..., 2] * a_plus, bsum, spread)  # -<m,m>_L, cancellation-free
        self.kappa = sk * q.rsqrt()  # sqrt(k) / sqrt(Q)
        self.ys = ms * self.kappa.unsqueeze(-1)  # centroids' space parts [C, 2, D]
        # the distance, by the chord form of lorentz.dist
        ny = torch.linalg.vector_norm(self.ys, dim=-1)
        self.ab = ny / sk
        self.u = self.ys / ny.clamp_min(_TINY).unsqueeze(-1)
        self.diff = self.u[:, 0] - self.u[:, 1]
        ash = torch.asinh(self.ab)
        self.delta = ash[:, 0] - ash[:, 1]
        self.qd = torch.addcmul(
            torch.sinh(self.delta * 0.5).square(),
            self.ab.prod(-1),
            torch.linalg.vector_norm(self.diff, dim=-1).square(),
            value=0.25,
        )
        self.scale = scale
        self.d = (2.0 * scale * sk) * torch.asinh(self.qd.sqrt())  # scale * d; qd >= 0 (non-negative terms)
        if keep:  # what the backward reads
            self.N, self.M, self.tmax = N, M, tmax
            self.ms, self.q = ms, q
            self.cosh = torch.cosh(ash)
            # per point, stacked once: [C, 7 or 8, N + M]
            self.points = torch.stack((nsafe, gamma, tc, cb, em, b + c, sp) + (() if h is None else (h,)), dim=1)
            self.sides = torch.stack((a_plus, sums[..., 2], bsum, spread), dim=-1)  # [C, 2, 4]

    @staticmethod
    def _nb(n: Tensor, sums: Tensor, N: int, dt: torch.dtype) -> Tensor:
        """``n_i / B`` of each point over its side's ``B`` (``sums[:, side, 0]``), ``[C, N + M, 1]`` in ``dt``."""
        return torch.cat((n[:, :N] / sums[:, 0, :1], n[:, N:] / sums[:, 1, :1]), dim=-1).to(dt).unsqueeze(-1)

    def side_points(self, i: int) -> tuple[Tensor, ...]:
        """Side ``i``'s per-point rows: nsafe, gamma, t, cb, e^{-t}, e^{t}, spread [, h] (each ``[C, N or M]``)."""
        return (self.points[..., : self.N] if i == 0 else self.points[..., self.N :]).unbind(1)

    @staticmethod
    def dq(pts: tuple[Tensor, ...], sides: Tensor) -> Tensor:
        """dQ/dt_j of one side's points (through A-, A+, B and the spread): their radial weights in the backward."""
        _, _, _, cb, em, bc, sp, *h = pts
        a_plus, a_minus, bsum, spread = sides.unsqueeze(-1).unbind(1)
        out = torch.addcmul(spread, bsum, sp) * cb
        if not h:
            return torch.addcmul(torch.addcmul(out, a_minus, bc), a_plus, em, value=-1.0)
        return out + a_minus * bc * (h[0] + 1.0) + a_plus * em * (h[0] - 1.0)

    def chord_grad(self, i: int) -> Tensor:
        r"""``scale * dd/dy_s`` of side ``i`` (0 real, 1 syn), ``[C, D]``; 0 where the centroids coincide.

        With ``q`` the chord term of :func:`hyperdm.lorentz.dist`, ``a``/``b`` the radii
        (``sinh`` of them over ``sqrt(k)``) and ``u`` the directions of this side and the other,
        ``dd/dy = (sinh(ρ - ρ_other) u / cosh(ρ) - a_other (u_other - u)) / (2 sqrt(q (1 + q)))``;
        ``u_other - u`` is read from the stored difference (no cancellation). Where the centroids
        coincide both terms are exactly 0 and the factor is finite (``q`` is floored at a tiny
        number), so the gradient is 0 there.
        """
        q = self.qd
        # the sign folds side 1's (rho' - rho) and (u - u') into the factor
        f = torch.addcmul(q, q, q).clamp_min(_TINY).rsqrt() * (0.5 * self.scale if i == 0 else -0.5 * self.scale)
        radial = f * torch.sinh(self.delta) / self.cosh[:, i]
        return torch.addcmul(radial.unsqueeze(-1) * self.u[:, i], (f * self.ab[:, 1 - i]).unsqueeze(-1), self.diff)

    def grad_v(
        self, i: int, v: Tensor | None, gam: Tensor, sk: float | Tensor, go: Tensor, need_k: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """``go`` times the gradient of the distance with respect to side ``i``'s features ``v`` (``v``'s dtype;
        None without ``v``), and ``sum_j v_j . grad_j`` of the distance itself when ``need_k`` (for ``k``; a
        no-grad real side reads it from the forward's second row)."""
        ys, ms, kappa = self.ys[:, i], self.ms[:, i], self.kappa[:, i]
        lam2 = torch.linalg.vecdot(gam, ys) / self.q[:, i]  # 2 lambda
        multi = self.multi[i]
        hvec = torch.addcmul(
            kappa.unsqueeze(-1) * gam,
            (lam2 if isinstance(multi, float) and multi == 1.0 else lam2 * multi).unsqueeze(-1),
            ms,
        )
        pts = self.side_points(i)
        nsafe, gamma, tc, cb = pts[:4]
        free = tc < self.tmax  # radius not clamped: it moves
        dq = self.dq(pts, self.sides[:, i])
        ks, ls = (kappa / sk).unsqueeze(-1), (lam2 * (0.5 / sk)).unsqueeze(-1)
        if v is None:  # the real side without grad: only its share of the k-gradient
            assert self.ksum is not None
            kq = (free * nsafe * dq).sum(-1)
            return None, (kappa * torch.linalg.vecdot(self.ksum, gam) - 0.5 * lam2 * kq) / sk
        dt = v.dtype
        pg, ph = torch.bmm(v, torch.stack((gam, hvec), dim=-1).to(dt)).to(_F64).unbind(-1)  # v . Γ, v . H
        radial = torch.addcmul(ks * cb * pg / nsafe, ls, dq, value=-1.0) * free
        g = go.unsqueeze(-1)
        coef_v = torch.addcdiv(radial, gamma * ph, nsafe, value=-1.0) * (g / nsafe)
        grad = torch.baddbmm(
            coef_v.to(dt).unsqueeze(-1) * v, (gamma * g).to(dt).unsqueeze(-1), hvec.to(dt).unsqueeze(1)
        )
        return grad, (nsafe * radial).sum(-1) if need_k else None


class _HDDDistance(torch.autograd.Function):
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
        reduce: lorentz.Reduce | None,
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
        p = _Pair(
            real,
            syn,
            sk,
            tmax,
            hierarchical,
            mask,
            reduce,
            k_rows=need_k and not need_r,
            chunk_real=not need_r,
            keep=need_r or need_s or need_k,
            scale=scale,
        )
        ctx.pair, ctx.sk = p, sk
        if k is not None:
            ctx.k_dtype, ctx.k_shape = k.dtype, k.shape
        ctx.save_for_backward(real if need_r else None, syn if need_s else None)
        ctx.mark_non_differentiable(p.norms)
        return p.d.to(out_dtype), p.norms  # the norms cost nothing more: taken for the loss anyway

    @staticmethod
    def backward(ctx: Any, grad_d: Tensor | None, _grad_norms: Tensor | None = None) -> tuple[Tensor | None, ...]:
        if grad_d is None:  # (the gradients are not materialised: None means zero)
            return (None,) * 11
        real, syn = ctx.saved_tensors
        p, sk = ctx.pair, ctx.sk
        go = grad_d.to(_F64)  # the scale is in the chord gradient and in p.d
        need_k = ctx.needs_input_grad[2]
        out: list[Tensor | None] = [None] * 11
        vdot: Any = 0.0
        for i, v in enumerate((real, syn)):
            if v is not None or (need_k and i == 0):
                out[i], vd = p.grad_v(i, v, p.chord_grad(i), sk, go, need_k)
                if need_k:
                    vdot = vdot + vd
        if need_k:
            dk = (go * (p.d - vdot)).sum() / (2.0 * sk * sk)
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
    reduce: lorentz.Reduce | None = None,
    fused: bool | str = "auto",
    scale: float = 1.0,
    dtype: torch.dtype = _F64,
) -> Tensor:
    r"""Per-class geodesic distance ``[C]`` between the Law centroids of ``exp_o(real)`` and ``exp_o(syn)``.

    ``real`` ``[C, N, D]``, ``syn`` ``[C, M, D]`` (same dtype); ``k`` is geoopt's curvature
    parameter (points satisfy ``<x,x>_L = -k``; curvature ``-1/k``), a float or a 0-d tensor (its
    gradient is computed when it requires grad); ``max_norm`` clamps ``|v|/sqrt(k)`` (``None``:
    the exact map, saturated at :data:`hyperdm.lorentz.SAFE_RADIUS`); masks ``[C, N]`` /
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
    reduce: lorentz.Reduce | None = None,
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
    tmax = float(lorentz.SAFE_RADIUS if max_norm is None else min(float(max_norm), lorentz.SAFE_RADIUS))
    return d, RadiusStats(norms, real.shape[1], sqrt_k=sk, max_norm=tmax, mask=mask)


def _apply(
    real: Tensor,
    syn: Tensor,
    k: float | Tensor,
    max_norm: float | None,
    hierarchical: bool,
    real_mask: Tensor | None,
    syn_mask: Tensor | None,
    reduce: lorentz.Reduce | None,
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
    tmax = float(lorentz.SAFE_RADIUS if max_norm is None else min(float(max_norm), lorentz.SAFE_RADIUS))
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
    reduce: lorentz.Reduce | None,
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
