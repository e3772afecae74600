r"""Functional math on the Lorentz model (hyperboloid) of hyperbolic space.

Convention (geoopt's): a point ``x = (x_0, x_s)`` in :math:`\mathbb{R}^{D+1}`, time
coordinate first, lies on

.. math:: \langle x, x\rangle_L = -x_0^2 + \|x_s\|^2 = -k,\qquad x_0 > 0,

with ``k > 0``. The sectional curvature is :math:`-1/k`. The HDD paper's tables print
this same ``k`` in a column headed "K"; it is *not* the curvature. Every function takes
``k`` keyword-only (a float or a tensor that broadcasts against the batch shape).

The coordinate axis is always the last one; any leading batch shape works.

Numerics. The textbook forms (``acosh(-<x,y>/k)``, Law's normaliser
``sqrt(|<m,m>|)``) subtract numbers of size ``k cosh(r)^2`` to get results of size
``k``: in float32 they are noise already at a radius of a few units. Every function
here uses a cancellation-free form, stated in its docstring, and guards square roots
and divisions at zero with a "double ``where``" so that gradients stay finite.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import law
from .law import SAFE_RADIUS, CentroidSums, Reduce, reduce_centroid_sums
from .numerics import Curvature, asinhc, k_like, safe_sqrt, sinhc, sqrt_k, tanhc_half

__all__ = [
    "inner",
    "expmap0",
    "logmap0",
    "dist",
    "dist0",
    "centroid",
    "project",
    "to_poincare",
    "from_poincare",
    "hierarchical_weight",
    "radius0",
    "feature_centroid",
    "feature_centroid_sums",
    "centroid_from_sums",
    "reduce_centroid_sums",
    "CentroidSums",
    "SAFE_RADIUS",
    "tangent_inner",
    "proju",
    "egrad2rgrad",
    "expmap",
    "logmap",
    "logmap0back",
    "transp",
    "transp_follow",
]


def _split(x: Tensor) -> tuple[Tensor, Tensor]:
    return x[..., :1], x[..., 1:]


def inner(x: Tensor, y: Tensor, *, keepdim: bool = False) -> Tensor:
    r"""Minkowski inner product :math:`\langle x,y\rangle_L = -x_0 y_0 + x_s \cdot y_s`."""
    out = (x[..., 1:] * y[..., 1:]).sum(-1, keepdim=True) - x[..., :1] * y[..., :1]
    return out if keepdim else out.squeeze(-1)


def expmap0(v: Tensor, *, k: Curvature, max_norm: float | None = None) -> Tensor:
    r"""Exponential map at the origin :math:`o = (\sqrt{k}, 0)` of a feature ``v`` in R^D.

    .. math::
        \exp_o(v) = \sqrt{k}\,\big(\cosh t,\ \sinh(t)\,v/\|v\|\big),
        \qquad t = \|v\|/\sqrt{k},

    so that ``dist0(expmap0(v)) == ||v||``. Returns a point in R^(D+1).

    ``max_norm`` (the official HDD code's ``EXP_MAX_NORM``, 10 there) replaces ``t`` by
    ``min(t, max_norm)``: ``v`` keeps its direction and the point stops at radius
    ``max_norm * sqrt(k)``; the radial gradient of a clamped point is zero. ``None`` is
    the exact map. Without a clamp, ``cosh(t)`` overflows float32 for t > 88 and float64
    for t > 710.

    Stable form: the space part is ``sinh(t_c)/t * v`` with ``sinh(t)/t`` evaluated by
    its series near 0, so ``v = 0`` maps to the origin with a finite gradient.
    """
    sk = sqrt_k(k, v)
    t = torch.linalg.vector_norm(v, dim=-1, keepdim=True) / sk
    if max_norm is None:
        return torch.cat((sk * torch.cosh(t), sinhc(t) * v), dim=-1)
    tc = t.clamp(max=float(max_norm))
    clamped = t > tc
    t_safe = torch.where(clamped, t, torch.ones_like(t))
    factor = torch.where(clamped, torch.sinh(tc) / t_safe, sinhc(t))
    return torch.cat((sk * torch.cosh(tc), factor * v), dim=-1)


def logmap0(x: Tensor, *, k: Curvature) -> Tensor:
    r"""Logarithmic map at the origin, the inverse of :func:`expmap0`; returns R^D.

    .. math:: \log_o(x) = \sqrt{k}\,\operatorname{asinh}(\|x_s\|/\sqrt{k})\; x_s/\|x_s\|

    Stable form: only the space part is used (``x_0`` is implied by the hyperboloid),
    written as ``asinh(s)/s * x_s`` with ``s = ||x_s||/sqrt(k)`` and a series near 0.
    """
    sk = sqrt_k(k, x)
    xs = x[..., 1:]
    s = torch.linalg.vector_norm(xs, dim=-1, keepdim=True) / sk
    return asinhc(s) * xs


def dist0(x: Tensor, *, k: Curvature, keepdim: bool = False) -> Tensor:
    r"""Geodesic distance from the origin.

    .. math:: d(o, x) = \sqrt{k}\,\operatorname{acosh}(x_0/\sqrt{k})
                     = \sqrt{k}\,\operatorname{asinh}(\|x_s\|/\sqrt{k})

    The asinh form is used: acosh near 1 loses half the digits, asinh of the space norm
    loses none.
    """
    sk = sqrt_k(k, x)
    s = torch.linalg.vector_norm(x[..., 1:], dim=-1, keepdim=True)
    out = sk * torch.asinh(s / sk)
    return out if keepdim else out.squeeze(-1)


def dist(x: Tensor, y: Tensor, *, k: Curvature, keepdim: bool = False) -> Tensor:
    r"""Geodesic distance between two points of the hyperboloid.

    .. math::
        d(x,y) = \sqrt{k}\,\operatorname{acosh}\!\big(-\langle x,y\rangle_L/k\big)
               = 2\sqrt{k}\,\operatorname{asinh}\!\Big(\frac{\|x-y\|_L}{2\sqrt{k}}\Big).

    Stable form. Writing each point by its radius ``t = asinh(|x_s|/sqrt(k))`` and
    direction ``u = x_s/|x_s|``, the chord is a sum of non-negative terms,

    .. math::
        \frac{\|x-y\|_L^2}{4k} = \sinh^2\!\frac{t_x-t_y}{2}
        + \frac{|x_s|\,|y_s|}{k}\,\frac{\|u_x-u_y\|^2}{4},

    so the radial and angular parts never cancel against each other: not near zero distance (where
    ``acosh`` loses half the digits and ``-<x,y>`` rounds below ``k``), not for far points (where
    ``|x_s-y_s|^2 - (x_0-y_0)^2`` subtracts numbers of size ``k cosh(t)^2``). Only the space parts are read (``x_0`` is
    implied by the hyperboloid). The result is exactly 0, with gradient 0, at ``x == y``.
    The difference of the two directions ``u_x - u_y`` does cancel for nearly coincident
    points, so lower-precision inputs are evaluated in float64 (then cast back): the
    result is then as accurate as the rounded input points allow.
    """
    out_dtype = torch.promote_types(x.dtype, y.dtype)
    if out_dtype != torch.float64:
        return dist(x.double(), y.double(), k=k.double() if isinstance(k, Tensor) else k, keepdim=keepdim).to(out_dtype)
    sk = sqrt_k(k, x)
    xs, ys = x[..., 1:], y[..., 1:]
    a = torch.linalg.vector_norm(xs, dim=-1, keepdim=True) / sk
    b = torch.linalg.vector_norm(ys, dim=-1, keepdim=True) / sk
    ux = xs / torch.where(a > 0, a * sk, torch.ones_like(a))
    uy = ys / torch.where(b > 0, b * sk, torch.ones_like(b))
    chord2 = (ux - uy).square().sum(-1, keepdim=True)
    out = law.chord_distance(law.chord(torch.asinh(a) - torch.asinh(b), a * b, chord2), sk)
    return out if keepdim else out.squeeze(-1)


def project(x: Tensor, *, k: Curvature) -> Tensor:
    r"""Projection onto the hyperboloid along the time axis: ``(sqrt(k + |x_s|^2), x_s)``."""
    xs = x[..., 1:]
    kk = sqrt_k(k, x).square()
    return torch.cat((torch.sqrt(kk + xs.square().sum(-1, keepdim=True)), xs), dim=-1)


def to_poincare(x: Tensor, *, k: Curvature) -> Tensor:
    r"""Map to the unit Poincaré ball: :math:`p = x_s / (x_0 + \sqrt{k})`, ``|p| = tanh(r/(2 sqrt(k)))``."""
    sk = sqrt_k(k, x)
    return x[..., 1:] / (x[..., :1] + sk)


def from_poincare(p: Tensor, *, k: Curvature) -> Tensor:
    r"""Inverse of :func:`to_poincare`.

    .. math:: x = \sqrt{k}\,\frac{(1 + |p|^2,\ 2p)}{1 - |p|^2}

    ``1 - |p|^2`` is computed as ``(1 - |p|)(1 + |p|)``; points must satisfy |p| < 1.
    """
    sk = sqrt_k(k, p)
    n = torch.linalg.vector_norm(p, dim=-1, keepdim=True)
    alpha = (1.0 - n) * (1.0 + n)
    return sk * torch.cat((1.0 + n.square(), 2.0 * p), dim=-1) / alpha


def hierarchical_weight(r: Tensor, *, k: Curvature) -> Tensor:
    r"""Weight of a point at distance ``r`` from the origin (paper Sec. 3.3):

    .. math:: w(r) = \frac{r/\sqrt{k}}{\sinh(r/\sqrt{k})},

    1 at the root, strictly decreasing: points near the root (prototypes) weigh more
    than points near the boundary. Evaluated as ``1/sinhc`` with a series near 0.
    """
    return 1.0 / sinhc(r / sqrt_k(k, r))


def radius0(v: Tensor, *, k: Curvature, max_norm: float | None = None) -> Tensor:
    r"""``dist0(expmap0(v, k=k, max_norm=max_norm), k=k)`` without forming the point.

    The exp-map at the origin is a radial isometry, so the radius is
    ``||v||``, or ``min(||v||, max_norm * sqrt(k))`` with the clamp. It never overflows.
    """
    n = torch.linalg.vector_norm(v, dim=-1)
    if max_norm is None:
        return n
    sk = sqrt_k(k, n)
    return torch.minimum(n, float(max_norm) * sk)


def _law(m0: Tensor, ms: Tensor, a_minus: Tensor, a_plus: Tensor, b_sum: Tensor, spread: Tensor, sk: Tensor) -> Tensor:
    """Assemble a Law centroid from cancellation-free pieces (see :func:`centroid`)."""
    # a division by sqrt(Q), not law.normaliser's rsqrt: its backward would form Q^{-3/2}, which overflows far out
    return sk * torch.cat((m0, ms), dim=-1) / torch.sqrt(law.law_q(a_minus, a_plus, b_sum, spread))


def _spread(u: Tensor, ms: Tensor, b_sum: Tensor) -> Tensor:
    """|u_i - ũ|^2 with ũ = ms / b_sum broadcast over the points axis (-2)."""
    pos = b_sum > 0
    ut = ms / torch.where(pos, b_sum, torch.ones_like(b_sum))
    return (u - ut.unsqueeze(-2).to(u.dtype)).square().sum(-1, keepdim=True)


def centroid(
    x: Tensor,
    *,
    k: Curvature,
    weights: Tensor | None = None,
    dim: int = -2,
    keepdim: bool = False,
) -> Tensor:
    r"""Law et al. (2019) closed-form centroid of hyperboloid points along ``dim``.

    .. math::
        m = \sum_i w_i x_i / \sum_i w_i,\qquad
        c = \sqrt{k}\, m / \sqrt{-\langle m, m\rangle_L}.

    Stable form. ``-<m,m> = m_0^2 - |m_s|^2`` cancels catastrophically (relative error
    ``eps*cosh(r)^2``). With ``a_i = |x_{s,i}|``, ``u_i = x_{s,i}/a_i`` and normalised
    weights it is computed as the sum of two non-negative terms,

    .. math::
        -\langle m,m\rangle_L
        = \Big(\sum_i w_i (x_{0,i}-a_i)\Big)\Big(\sum_i w_i (x_{0,i}+a_i)\Big)
        + S \sum_i w_i a_i \,\|u_i - \tilde u\|^2,

    where ``x_0 - a = k / (x_0 + a)`` on the hyperboloid, ``S = sum_i w_i a_i`` and
    ``ũ = m_s / S``. Weights must be non-negative and not all zero.
    """
    if dim != -2:
        x = x.movedim(dim, -2)
        if weights is not None:
            weights = weights.movedim(dim if dim >= 0 else dim + 1, -1)
    sk = sqrt_k(k, x)
    x0, xs = _split(x)
    if weights is None:
        w = torch.full_like(x0, 1.0 / x.shape[-2])
    else:
        w = weights.to(x.dtype).unsqueeze(-1)
        w = w / w.sum(-2, keepdim=True)
    a = torch.linalg.vector_norm(xs, dim=-1, keepdim=True)
    pos = a > 0
    u = xs / torch.where(pos, a, torch.ones_like(a))
    m0 = (w * x0).sum(-2)
    ms = (w * xs).sum(-2)
    a_minus = (w * sk.square() / (x0 + a)).sum(-2)
    a_plus = (w * (x0 + a)).sum(-2)
    b_sum = (w * a).sum(-2)
    spread = (w * a * _spread(u, ms, b_sum)).sum(-2)
    # One point has no spread; rounding of u and ũ would otherwise leave eps^2 there.
    spread = spread * ((w > 0).sum(-2) > 1)
    out = _law(m0, ms, a_minus, a_plus, b_sum, spread, sk)
    if keepdim:
        out = out.unsqueeze(-2)
        if dim != -2:
            out = out.movedim(-2, dim)
    return out


def feature_centroid_sums(
    v: Tensor,
    *,
    k: Curvature,
    max_norm: float | None = None,
    weights: Tensor | None = None,
    hierarchical: bool = False,
    mask: Tensor | None = None,
) -> CentroidSums:
    r"""The :class:`CentroidSums` of the features ``v`` ``[..., N, D]`` of each group (this process's points).

    Arguments as in :func:`feature_centroid`. Two passes over ``[..., N, D]`` in ``v``'s dtype (a
    batched mat-vec for ``ms``, then the spread about ``ũ``); per-point scalars and the results are
    float64. A group without any point (``mask`` all False) gets zero sums.
    """
    if v.dim() != 3:
        lead = v.shape[:-2]
        flat = lambda a: None if a is None else a.reshape(-1, a.shape[-1])  # noqa: E731
        sums = feature_centroid_sums(
            v.reshape(-1, *v.shape[-2:]),
            k=k,
            max_norm=max_norm,
            weights=flat(weights),
            hierarchical=hierarchical,
            mask=flat(mask),
        )
        return CentroidSums(*(x.reshape(*lead, x.shape[-1]) for x in sums))
    if mask is not None:
        v = torch.where(mask.unsqueeze(-1), v, torch.zeros_like(v))
    wd = torch.float64
    sk = sqrt_k(k, v.new_empty((), dtype=wd))
    tmax = float(SAFE_RADIUS if max_norm is None else min(max_norm, SAFE_RADIUS))
    n = torch.linalg.vector_norm(v, dim=-1).to(wd)
    tc = (n / sk).clamp(law.TINY, tmax)
    w = torch.ones_like(tc) if weights is None else weights.to(wd)
    if hierarchical:
        w = w / sinhc(tc)
    if mask is not None:
        w = torch.where(mask, w, torch.zeros_like(w))
        tc = torch.where(mask, tc, torch.zeros_like(tc))
    weight = w.sum(-1, keepdim=True)
    w = w / torch.where(weight > 0, weight, torch.ones_like(weight))
    shift = law.shift_needed(tmax, v.dtype, hierarchical=hierarchical)
    top = tc.amax(-1, keepdim=True).detach() if shift else torch.zeros_like(tc[..., :1])
    b, c, em, _, _ = law.point_terms(tc, top=top if shift else None, weight=w)
    nsafe = law.safe_norm(n, sk)
    gamma = law.coefficient(b, nsafe)
    ms = (gamma.to(v.dtype).unsqueeze(-2) @ v).squeeze(-2).to(wd)
    m0, a_minus, b_sum = c.sum(-1, keepdim=True), em.sum(-1, keepdim=True), b.sum(-1, keepdim=True)
    a_plus = (b + c).sum(-1, keepdim=True)
    points = (w > 0).sum(-1, keepdim=True).to(wd)
    # |u_i - ũ|^2 = |v_i - |v_i| ũ|^2 / |v_i|^2, one fused pass (no [..., N, D] copy of u). ũ = m_s / B has
    # |ũ| <= 1; dividing by max(B, |m_s|) keeps it so where a float32 norm underflowed to 0 (|v| < 1e-19: then
    # t = TINY while gamma v is not 0), and ũ rather than |v_i| / B keeps a point of weight 0 far out finite
    bm = torch.maximum(b_sum, torch.linalg.vector_norm(ms, dim=-1, keepdim=True))
    ut = (ms / torch.where(bm > 0, bm, torch.ones_like(bm))).to(v.dtype).unsqueeze(-2)
    dev = law.spread_norms(v, n.to(v.dtype).unsqueeze(-1), ut, False).to(wd)
    spread = (b * (dev / nsafe).square()).sum(-1, keepdim=True)
    return CentroidSums(weight, top, m0, ms, a_minus, a_plus, b_sum, spread, points)


def centroid_from_sums(sums: CentroidSums, *, k: Curvature) -> Tensor:
    r"""The Law centroid ``[..., D+1]`` of the points behind ``sums`` (:class:`CentroidSums`):

    .. math::
        c = \sqrt{k}\,(m_0, m_s) / \sqrt{A_- A_+ + B S},

    ``A_- A_+ + B S`` being ``-<m,m>_L`` (up to the common scale) as two non-negative terms (see
    :func:`centroid`); ``S`` is taken as 0 for a single point (rounding of ``u`` and ``ũ`` would
    otherwise leave ``eps^2`` there). Each group needs at least one point.
    """
    sk = sqrt_k(k, sums.m0.new_empty(()))
    spread = sums.spread * (sums.points > 1)
    return _law(sums.m0, sums.ms, sums.a_minus, sums.a_plus, sums.b, spread, sk)


def feature_centroid(
    v: Tensor,
    *,
    k: Curvature,
    max_norm: float | None = None,
    weights: Tensor | None = None,
    hierarchical: bool = False,
    mask: Tensor | None = None,
    reduce: Reduce | None = None,
) -> Tensor:
    r"""``centroid(expmap0(v, k=k, max_norm=max_norm), k=k)`` of features, fused.

    ``v`` is ``[..., N, D]`` (N features per group, e.g. ``[C, N, D]`` for C classes);
    returns the centroids ``[..., D+1]``. This is the HDD matching step without building
    the ``[..., N, D+1]`` points: with ``t_i = min(|v_i|/sqrt(k), max_norm)``,

    .. math::
        m_0 \propto \sum_i w_i \cosh t_i,\qquad
        m_s \propto \sum_i w_i \frac{\sinh t_i}{|v_i|} v_i,\qquad
        -\langle m,m\rangle_L \propto \Big(\sum_i w_i e^{-t_i}\Big)\Big(\sum_i w_i e^{t_i}\Big)
        + S \sum_i w_i \sinh t_i \,\|u_i - \tilde u\|^2 ,

    all scaled by ``exp(-max_i t_i)`` (the centroid is scale-invariant), so nothing
    overflows. Per-point scalars and the ``[..., D]`` results are float64 (cheap); the
    two passes over ``[..., N, D]`` (a batched mat-vec and the spread) stay in ``v``'s
    dtype. Without ``max_norm``, radii beyond :data:`SAFE_RADIUS` are saturated there.
    It is :func:`feature_centroid_sums` followed by :func:`centroid_from_sums`.

    ``weights`` ``[..., N]`` (non-negative) weight each point; ``hierarchical`` further
    multiplies them by :func:`hierarchical_weight` of the point's radius. ``mask``
    ``[..., N]`` (bool) excludes points, e.g. to put classes of different sizes in one
    padded batch; each group needs at least one point.

    ``reduce`` makes the centroid that of the points of *all* processes (each holding a shard of
    every group, same groups in the same order): each process's sums are combined exactly by
    :func:`reduce_centroid_sums` (three collectives on ``[..., D]``-sized
    tensors) before the centroid is formed. A process may hold no point of a group (``mask`` all
    False) as long as some process does.
    """
    sums = feature_centroid_sums(v, k=k, max_norm=max_norm, weights=weights, hierarchical=hierarchical, mask=mask)
    if reduce is not None:
        sums = reduce_centroid_sums(sums, reduce)
    return centroid_from_sums(sums, k=k)


# ---------------------------------------------------------------------------------------------
# Tangent vectors at a general point (used by :class:`hyperdm.StableLorentz`).
#
# A tangent vector ``u`` at ``x`` is an ambient vector of R^(D+1) with ``<x,u>_L = 0``. These
# functions read only the space parts ``x_s`` and ``u_s``: ``x_0 = sqrt(k + |x_s|^2)`` and
# ``u_0 = <x_s,u_s> / x_0`` are implied, and every tangent vector they return carries exactly
# that time part (so it is tangent to rounding, however far out ``x`` lies). With ``x̂ = x_s/|x_s|``
# the space part splits into a radial and a sideways component, ``u_s = beta x̂ + u_perp``, and
# the metric is diagonal there:
#
#     <u,v>_x = u_perp . v_perp + (k / x_0^2) beta_u beta_v .
#
# The textbook forms subtract ambient numbers of size ``x_0^2 / k = cosh(r/sqrt k)^2`` instead.
# ---------------------------------------------------------------------------------------------


def _radial(xs: Tensor) -> tuple[Tensor, Tensor]:
    """``(|x_s|, x̂)`` with ``x̂ = 0`` (finite gradient) where ``x_s = 0``."""
    r = torch.linalg.vector_norm(xs, dim=-1, keepdim=True)
    return r, xs / torch.where(r > 0, r, torch.ones_like(r))


def _with_time(xs: Tensor, us: Tensor, x0: Tensor) -> Tensor:
    """The tangent vector at ``x`` with space part ``us``: ``(<x_s,u_s>/x_0, u_s)``."""
    return torch.cat(((xs * us).sum(-1, keepdim=True) / x0, us), dim=-1)


def tangent_inner(x: Tensor, u: Tensor, v: Tensor | None = None, *, k: Curvature, keepdim: bool = False) -> Tensor:
    r"""Riemannian inner product :math:`\langle u, v\rangle_x` of tangent vectors at ``x``.

    .. math::
        \langle u,v\rangle_x = -u_0 v_0 + u_s\cdot v_s
        = u_\perp\cdot v_\perp + \frac{k}{x_0^2}\,\beta_u \beta_v ,

    with ``beta = x̂ . u_s`` and ``u_perp = u_s - beta x̂`` (``x̂ = x_s/|x_s|``). Stable form: the
    right-hand side is a sum of a sideways and a radial term, never the difference
    ``u_s.v_s - u_0 v_0`` of two numbers ``cosh(r/sqrt k)^2`` times larger than a radial
    vector's squared length. Only space parts are read (time parts are implied by tangency).
    ``v=None`` means ``v = u``.
    """
    v = u if v is None else v
    xs, us, vs = x[..., 1:], u[..., 1:], v[..., 1:]
    r, xh = _radial(xs)
    bu, bv = (xh * us).sum(-1, keepdim=True), (xh * vs).sum(-1, keepdim=True)
    kk = k_like(k, x)
    out = ((us - bu * xh) * (vs - bv * xh)).sum(-1, keepdim=True) + kk / (kk + r.square()) * bu * bv
    return out if keepdim else out.squeeze(-1)


def proju(x: Tensor, v: Tensor, *, k: Curvature) -> Tensor:
    r"""Minkowski-orthogonal projection of an ambient vector ``v`` onto the tangent space at ``x``.

    .. math:: \Pi_x(v) = v + \langle x, v\rangle_L\, x / k

    The space part is ``v_s + <x,v>_L x_s / k`` (``x_0`` implied, ``v_0`` read); the time part
    returned is the one tangency implies, ``<x_s, Pi_s>/x_0``.
    """
    xs, vs = x[..., 1:], v[..., 1:]
    kk = k_like(k, x)
    x0 = torch.sqrt(kk + xs.square().sum(-1, keepdim=True))
    xv = (xs * vs).sum(-1, keepdim=True) - x0 * v[..., :1]
    return _with_time(xs, vs + xv / kk * xs, x0)


def egrad2rgrad(x: Tensor, g: Tensor, *, k: Curvature) -> Tensor:
    r"""Riemannian gradient at ``x`` of a function whose ambient (Euclidean) gradient is ``g``.

    The function restricted to the hyperboloid, as a function of ``x_s`` alone (``x_0`` depends
    on it), has gradient ``ĝ = g_s + (g_0/x_0) x_s``; the metric in these coordinates is
    ``I - x_s x_s^T / x_0^2``, whose inverse ``I + x_s x_s^T / k`` gives

    .. math:: \operatorname{grad} f(x)_s = \hat g + \frac{\langle x_s, \hat g\rangle}{k}\, x_s ,

    a sum of ``ĝ`` and a non-negative multiple of its radial part (no cancellation). It equals
    geoopt's ``Pi_x(diag(-1, 1, ..., 1) g)``. ``g`` is not modified.
    """
    xs, gs = x[..., 1:], g[..., 1:]
    kk = k_like(k, x)
    x0 = torch.sqrt(kk + xs.square().sum(-1, keepdim=True))
    gh = gs + g[..., :1] / x0 * xs
    return _with_time(xs, gh + (xs * gh).sum(-1, keepdim=True) / kk * xs, x0)


def expmap(x: Tensor, u: Tensor, *, k: Curvature) -> Tensor:
    r"""Exponential map at a point ``x`` of a tangent vector ``u`` (both ambient, R^(D+1)).

    .. math::
        \exp_x(u) = \cosh(t)\, x + \frac{\sinh t}{t}\, u,\qquad t = \|u\|_x/\sqrt{k}.

    Stable form. With ``x = sqrt(k) (cosh a, sinh a x̂)`` and ``u_s = beta x̂ + u_perp``, the
    radial speed is ``rho = beta sqrt(k)/x_0`` and ``|u|_x^2 = rho^2 + |u_perp|^2``
    (:func:`tangent_inner`). The result's space part is

    .. math:: y_s = \sqrt{k}\,X\,\hat x + \frac{\sinh t}{t}\, u_\perp,\qquad
              X = \cosh t \sinh a + c \sinh t \cosh a,\quad c = \rho/\|u\|_x .

    Moving outwards (``c >= 0``) ``X`` is a sum of non-negative terms. Moving inwards it is
    evaluated as ``sinh(a - t) + (1 + c) sinh t cosh a`` with ``1 + c = |u_perp|^2 / (|u|(|u| - rho))``,
    so a geodesic that passes the origin does not subtract two numbers of size ``e^(a+t)``. The
    time part is ``sqrt(k + |y_s|^2)``. Only space parts are read.
    """
    sk = sqrt_k(k, x)
    xs, us = x[..., 1:], u[..., 1:]
    r, xh = _radial(xs)
    x0 = torch.sqrt(sk.square() + r.square())
    beta = (xh * us).sum(-1, keepdim=True)
    perp = us - beta * xh
    sigma2 = perp.square().sum(-1, keepdim=True)
    rho = beta * sk / x0
    n = safe_sqrt(rho.square() + sigma2)
    t = n / sk
    s = sinhc(t)
    outward = r * torch.cosh(t) + beta * s
    inward_den = torch.where(rho < 0, n - rho, torch.ones_like(n))
    inward = sk * torch.sinh(torch.asinh(r / sk) - t) + sigma2 * s * x0 / (sk * inward_den)
    ys = torch.where(rho < 0, inward, outward) * xh + s * perp
    return torch.cat((torch.sqrt(sk.square() + ys.square().sum(-1, keepdim=True)), ys), dim=-1)


def logmap(x: Tensor, y: Tensor, *, k: Curvature) -> Tensor:
    r"""Logarithmic map: the tangent vector at ``x`` whose :func:`expmap` is ``y``.

    .. math::
        \log_x(y) = \frac{t}{\sinh t}\,\big(y - \cosh(t)\, x\big),\qquad t = d(x,y)/\sqrt{k}.

    Stable form: ``t`` from :func:`dist`; the space part of ``y - cosh(t) x`` is evaluated as
    ``(y_s - x_s) - 2 sinh(t/2)^2 x_s``, the difference of the two points plus a term of second
    order, instead of ``y_s + <x,y>_L x_s / k`` (whose two terms are ``cosh(r)^2`` times larger
    than the result for nearby points). The time part is implied by tangency.
    """
    sk = sqrt_k(k, x)
    xs = x[..., 1:]
    t = dist(x, y, k=k, keepdim=True).to(x.dtype) / sk
    w = (y[..., 1:] - xs) - 2.0 * torch.sinh(t / 2.0).square() * xs
    x0 = torch.sqrt(sk.square() + xs.square().sum(-1, keepdim=True))
    return _with_time(xs, w / sinhc(t), x0)


def transp_follow(x: Tensor, u: Tensor, v: Tensor, *, k: Curvature, y: Tensor | None = None) -> Tensor:
    r"""Parallel transport of ``v`` (tangent at ``x``) along the geodesic ``exp_x(s u)``, ``s`` in [0, 1].

    .. math::
        P(v) = v + \frac{\langle y, v\rangle_L}{k - \langle x, y\rangle_L}\,(x + y)
             = v + \frac{\tanh(t/2)}{t}\,\frac{\langle u, v\rangle_x}{k}\,(x + y),
        \qquad y = \exp_x(u),\ t = \|u\|_x/\sqrt{k},

    using ``<y,v>_L = (sinh t / t) <u,v>_x`` and ``k - <x,y>_L = k (1 + cosh t)``: the
    coefficient comes from the tangent-space product (:func:`tangent_inner`) and never from the
    Minkowski product of two far-out points. ``y`` may be passed when already known. The time
    part of the result is the one tangency at ``y`` implies.
    """
    y = expmap(x, u, k=k) if y is None else y
    kk = k_like(k, x)
    uv = tangent_inner(x, u, v, k=k, keepdim=True)
    t = torch.sqrt(tangent_inner(x, u, k=k, keepdim=True).clamp_min(0.0)) / kk.sqrt()
    ps = v[..., 1:] + tanhc_half(t) * uv / kk * (x[..., 1:] + y[..., 1:])
    ys = y[..., 1:]
    return _with_time(ys, ps, torch.sqrt(kk + ys.square().sum(-1, keepdim=True)))


def transp(x: Tensor, y: Tensor, v: Tensor, *, k: Curvature) -> Tensor:
    r"""Parallel transport of ``v`` from ``x`` to ``y`` along their geodesic: :func:`transp_follow`
    with ``u = logmap(x, y)``."""
    return transp_follow(x, logmap(x, y, k=k), v, k=k, y=y)


def logmap0back(x: Tensor, *, k: Curvature) -> Tensor:
    r"""``log_x(o)``: the tangent vector at ``x`` pointing to the origin, of length ``d(o, x)``.

    .. math::
        \log_x(o) = -\sqrt{k}\,a\,(\sinh a,\ \cosh a\,\hat x),\qquad
        (\log_x o)_s = -\frac{\operatorname{asinh}(s)}{s}\,\frac{x_0}{\sqrt{k}}\, x_s,

    with ``a = asinh(s)``, ``s = |x_s|/sqrt(k)``; ``asinh(s)/s`` by its series near 0. The time
    part is implied by tangency.
    """
    sk = sqrt_k(k, x)
    xs = x[..., 1:]
    r = torch.linalg.vector_norm(xs, dim=-1, keepdim=True)
    x0 = torch.sqrt(sk.square() + r.square())
    return _with_time(xs, -asinhc(r / sk) * (x0 / sk) * xs, x0)
