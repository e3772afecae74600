r"""The Law centroid of exp-mapped features and the chord distance, in small functions: the PyTorch path's
one source for this maths.

Every place that forms a centroid of features or a distance between centroids composes these:
the loss and its analytic backward (:mod:`hyperdm.fused`), :func:`hyperdm.lorentz.feature_centroid_sums` /
:func:`hyperdm.lorentz.centroid_from_sums` (and so :func:`hyperdm.lorentz.feature_centroid` and
distributed matching), :func:`hyperdm.lorentz.dist` (the chord form) and the streaming scores of
:mod:`hyperdm.pruning`. The Triton kernels (:mod:`hyperdm.triton_kernels`) implement the same forms
and are checked against this path (:mod:`hyperdm.kernel_check`).

A feature ``v_i`` sits at the clamped radius ``t_i = min(|v_i|/sqrt(k), max_norm)`` (in units of
``sqrt(k)``) in the direction ``u_i = v_i/|v_i|``. With weights ``w_i`` and a common shift ``T``
(:func:`shift_needed`), the centroid of a group needs only

* per point (:func:`point_terms`): ``b_i = w_i sinh(t_i) e^{-T}``, ``c_i = w_i cosh(t_i) e^{-T}``,
  ``e_i = w_i e^{-t_i-T}`` (and ``b_i + c_i = w_i e^{t_i-T}``);
* per group: ``m_s = sum_i (b_i/|v_i|) v_i`` (:func:`coefficient`: one mat-vec), ``m_0 = sum_i c_i``,
  ``A_- = sum_i e_i``, ``A_+ = sum_i (b_i + c_i)``, ``B = sum_i b_i`` and the spread
  ``S = sum_i b_i |u_i - m_s/B|^2`` (:func:`spread_norms`: exact differences, never ``B - |m_s|^2/B``);

and it is ``sqrt(k) (m_0, m_s) / sqrt(Q)`` with ``Q = A_- A_+ + B S`` (:func:`law_q`, two
non-negative terms for ``-<m,m>_L``; :func:`normaliser`). The distance between two points of
radii ``rho``, ``rho'`` (``a = sinh(rho)``, ``a' = sinh(rho')``) and directions ``u``, ``u'`` is
``2 sqrt(k) asinh(sqrt(q))`` with ``q = sinh^2((rho - rho')/2) + a a' |u - u'|^2 / 4``
(:func:`chord`, :func:`chord_distance`); its gradient is :func:`chord_grad`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, cast

import torch
from torch import Tensor

from .numerics import safe_sqrt, sinhc, small_argument

__all__ = [
    "SAFE_RADIUS",
    "TINY",
    "CHUNK_ELEMENTS",
    "DEVICE_CHUNK_ELEMENTS",
    "Reduce",
    "CentroidSums",
    "reduce_centroid_sums",
    "PointTerms",
    "shift_needed",
    "point_terms",
    "safe_norm",
    "coefficient",
    "law_q",
    "normaliser",
    "spread_norms",
    "class_sweep",
    "chunk_elements",
    "chord",
    "chord_distance",
    "chord_grad",
    "radial_dq",
]

#: ``reduce(tensor, op)`` with op ``"sum"`` or ``"max"``: combines per-group partial results of several
#: processes (see :mod:`hyperdm.distributed`); ``None`` means this process holds every point.
Reduce = Callable[[Tensor, str], Tensor]

#: Largest radius (in units of sqrt(k)) of a point of any centroid here: the exact map (no ``max_norm``)
#: saturates there. ``cosh(300)^2`` is about 1e260, still finite in float64, so every intermediate of the
#: centroid and its gradient is representable.
SAFE_RADIUS = 300.0

#: Radii below this (in units of sqrt(k)) are taken as this: ``sinh(t)/t`` is then exactly 1.
TINY = 1e-300

#: Largest ``[C, n, D]`` slice the exact spread of a no-grad side processes at once on CPU tensors
#: (elements): 2 MiB of float32, so a slice read by the mat-vec is still in cache for its spread.
CHUNK_ELEMENTS = 1 << 19
#: The same on other devices (CUDA): a bounded temporary in few slices, since every op is a kernel launch.
DEVICE_CHUNK_ELEMENTS = 1 << 24

# Up to these clamp radii the per-point weights need no shift for a mat-vec in the dtype: sinh(40) ~ 1e17 keeps
# every float32 sum finite, and float64 holds every weight up to SAFE_RADIUS (e^300 ~ 1e130, products ~ 1e260).
_UNSHIFTED = {torch.float32: 40.0, torch.float64: SAFE_RADIUS}
_F64 = torch.float64


def shift_needed(tmax: float, dtype: torch.dtype, *, hierarchical: bool = False) -> bool:
    """The one rescaling rule: whether a group's weights are shifted by ``e^{-T}``, ``T`` its largest radius.

    A centroid is invariant to a common scale of its weights, so the shift changes nothing but the range of
    the sums: needed when ``e^{t}`` with ``t <= tmax`` could overflow a mat-vec in ``dtype`` (float32 beyond a
    clamp of 40, float16 and bfloat16 always; float64 never, up to :data:`SAFE_RADIUS`). Never with
    hierarchical weights ``t / sinh(t)``: they make the weights ``t``, ``t coth(t)`` and
    ``t e^{-t} / sinh(t)``, which never overflow, and shifting them would underflow.
    """
    return not hierarchical and tmax > _UNSHIFTED.get(dtype, 0.0)


class PointTerms(NamedTuple):
    """Per-point scalars of a Law centroid (:func:`point_terms`), each the shape of ``t``."""

    b: Tensor  #: ``w sinh(t) e^{-T}``
    c: Tensor  #: ``w cosh(t) e^{-T}``
    em: Tensor  #: ``w e^{-t-T}``
    cb: Tensor  #: ``d(w sinh t)/dt e^{-T}`` (``c + h b``): a point's radial weight in the backward
    h: Tensor | None  #: ``w'/w`` of the hierarchical weight (``1/t - coth t``), else None


def point_terms(
    t: Tensor, *, top: Tensor | None = None, weight: Tensor | None = None, hierarchical: bool = False
) -> PointTerms:
    r"""The per-point scalars of a centroid from the clamped radii ``t`` (units of ``sqrt(k)``).

    ``b = w sinh(t) e^{-T}``, ``c = w cosh(t) e^{-T}`` (as ``sinh(t) + e^{-t}``: no cancellation),
    ``e^{-t-T}``; ``top`` is ``T`` (broadcast over the points; None: 0, see :func:`shift_needed`),
    ``weight`` the point weights (None: 1), times ``t / sinh(t)`` when ``hierarchical``.
    """
    em = torch.exp(-t)
    b = torch.sinh(t)
    c = b + em
    if top is not None:
        etop = torch.exp(-top)
        b, c, em = b * etop, c * etop, em * etop
    h = None
    w = weight
    if hierarchical:  # w(t) = t / sinh(t); h = w'/w = 1/t - coth(t) (-t/3 near 0)
        hw = 1.0 / sinhc(t)
        small = t < small_argument(t.dtype)
        safe = torch.where(small, torch.ones_like(t), t)
        h = torch.where(small, -t / 3.0, 1.0 / safe - 1.0 / torch.tanh(safe))
        w = hw if weight is None else hw * weight
    if w is not None:
        b, c, em = b * w, c * w, em * w
    return PointTerms(b, c, em, c if h is None else c + h * b, h)


def safe_norm(n: Tensor, sk: float | Tensor) -> Tensor:
    """The norms ``n`` floored at ``TINY sqrt(k)``: a zero feature counts as one at radius :data:`TINY` (where
    ``sinh(t)/|v| = 1/sqrt(k)``), so divisions by a norm stay finite."""
    return n.clamp_min(TINY * sk)


def coefficient(b: Tensor, nsafe: Tensor) -> Tensor:
    """``b_i / |v_i|``: the coefficient of ``v_i`` in ``m_s`` (``nsafe`` the norms from :func:`safe_norm`)."""
    return b / nsafe


def law_q(a_minus: Tensor, a_plus: Tensor, b: Tensor, spread: Tensor) -> Tensor:
    """``Q = A_- A_+ + B S``: ``-<m,m>_L`` of the weighted sum (up to the common scale), two non-negative terms."""
    return torch.addcmul(a_minus * a_plus, b, spread)


def normaliser(q: Tensor, sk: float | Tensor) -> Tensor:
    """``sqrt(k) / sqrt(Q)``, as ``sqrt(k) rsqrt(Q)``: the centroid is ``(m_0, m_s)`` times this. For values only:
    under autograd divide by ``sqrt(Q)`` instead (:func:`hyperdm.lorentz.centroid_from_sums`), since the backward
    of ``rsqrt`` forms ``Q^{-3/2}``, which overflows float64 for a far single point (``Q ~ e^{-2t}``)."""
    return sk * q.rsqrt()


def chunk_elements(v: Tensor) -> int:
    """The slice size, in elements, of the exact spread's reused buffer for ``v``'s device."""
    return CHUNK_ELEMENTS if v.device.type == "cpu" else DEVICE_CHUNK_ELEMENTS


def spread_norms(v: Tensor, nb: Tensor, m: Tensor, chunked: bool) -> Tensor:
    """``|v_i - nb_i m|`` per point of ``v`` ``[C, N, D]`` (``nb`` ``[C, N, 1]`` = ``|v_i| / B``, ``m``
    ``[C, 1, D]`` = ``m_s``): the spread's exact differences, ``|u_i - m_s/B|^2 = (this / |v_i|)^2``.

    ``chunked``: one reused buffer of at most :data:`CHUNK_ELEMENTS` elements holds the differences,
    whole classes (contiguous in memory) when a class fits, else row blocks of one class; so no
    ``[C, N, D]`` temporary is made and the buffer stays in cache (for features without grad).
    """
    C, N, D = v.shape
    chunk = chunk_elements(v)
    if not chunked or N < 2 or v.numel() <= chunk:
        return torch.linalg.vector_norm(torch.addcmul(v, nb, m, value=-1.0), dim=-1)
    if chunk >= N * D:
        return class_sweep(v, nb, ref=m)[1]
    step = max(1, chunk // D)
    buf = torch.empty(1, step, D, dtype=v.dtype, device=v.device)
    return torch.cat(
        [
            torch.cat(
                [
                    torch.linalg.vector_norm(
                        torch.addcmul(vc, nc, m[c : c + 1], value=-1.0, out=buf[:, : vc.shape[1]]), dim=-1
                    )
                    for vc, nc in zip(v[c : c + 1].split(step, dim=1), nb[c : c + 1].split(step, dim=1), strict=True)
                ],
                dim=-1,
            )
            for c in range(C)
        ]
    )


def class_sweep(
    v: Tensor, nb: Tensor, *, ref: Tensor | None = None, rows: Tensor | None = None
) -> tuple[Tensor | None, Tensor]:
    """The spread norms ``|v_i - nb_i m|`` of ``v`` ``[C, N, D]`` without grad (``nb`` ``[C, N, 1]`` =
    ``|v_i| / B``), a slice of whole classes at a time through one reused buffer of at most
    :data:`CHUNK_ELEMENTS` elements; returns ``(rows @ v or None, norms)``.

    ``m`` is ``ref`` ``[C, 1, D]``, or with ``rows`` ``[C, r, N]`` the first row of each slice's own
    mat-vec ``rows @ v`` (a second row, for k's gradient, is summed but is not the reference), taken
    right before the slice's differences while the slice is still in cache: one read of ``v`` from
    memory for both.
    """
    assert (ref is None) != (rows is None), "give ref or rows"
    C, N, D = v.shape
    g = max(1, chunk_elements(v) // max(1, N * D))
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


def chord(delta: Tensor, aa: Tensor, diff_sq: Tensor) -> Tensor:
    r"""The chord term ``q = sinh^2(delta/2) + a a' |u - u'|^2 / 4`` of two points: ``delta`` the difference of
    their radii (units of ``sqrt(k)``), ``aa = a a'`` the product of the sinh of the radii, ``diff_sq =
    |u - u'|^2``. Two non-negative terms: the radial and angular parts never cancel;
    ``d = 2 sqrt(k) asinh(sqrt(q))``."""
    return torch.addcmul(torch.sinh(delta * 0.5).square(), aa, diff_sq, value=0.25)


def chord_distance(q: Tensor, sk: float | Tensor, scale: float = 1.0) -> Tensor:
    """``scale * 2 sqrt(k) asinh(sqrt(q))`` of a :func:`chord` term (``q >= 0``): exactly 0 at ``q = 0``, where a
    ``q`` that requires grad gets gradient 0 (not inf)."""
    root = safe_sqrt(q) if q.requires_grad else q.sqrt()
    return (2.0 * scale * sk) * torch.asinh(root)


def chord_grad(
    q: Tensor, delta: Tensor, cosh_rho: Tensor, u: Tensor, a_other: Tensor, diff: Tensor, factor: float
) -> Tensor:
    r"""``factor * dd/dy`` ``[C, D]`` for the point ``y`` (space part) of a pair at distance ``d``; 0 where the two
    points coincide.

    .. math:: \frac{\partial d}{\partial y}
        = \frac{\sinh(\rho - \rho')\, u / \cosh\rho - a' (u' - u)}{2\sqrt{q(1 + q)}},

    with ``q`` the :func:`chord` term, ``delta = rho - rho'`` (radii over ``sqrt(k)``), ``u`` this point's
    direction, ``a' = sinh(rho')`` and ``diff = u - u'`` (the stored difference: no cancellation). For the
    other point of the pair pass ``-factor`` with the same ``delta`` and ``diff``. Where the points coincide both
    terms are exactly 0 and the factor is finite (``q`` is floored at :data:`TINY`).
    """
    f = torch.addcmul(q, q, q).clamp_min(TINY).rsqrt() * (0.5 * factor)
    radial = f * torch.sinh(delta) / cosh_rho
    return torch.addcmul(radial.unsqueeze(-1) * u, (f * a_other).unsqueeze(-1), diff)


def radial_dq(
    cb: Tensor,
    em: Tensor,
    ep: Tensor,
    sp: Tensor,
    h: Tensor | None,
    a_plus: Tensor,
    a_minus: Tensor,
    b: Tensor,
    spread: Tensor,
) -> Tensor:
    r"""``dQ/dt_i`` of one side's points ``[C, N]``: their radial weights in the backward.

    .. math:: \partial Q/\partial t_i = (S + B |u_i - \tilde u|^2)\, cb_i
        + A_-\, w_i e^{t_i - T} (1 + h_i) + A_+\, w_i e^{-t_i - T} (h_i - 1),

    ``ep = w e^{t-T}``, ``em = w e^{-t-T}``, ``sp = |u_i - ũ|^2``, ``h`` the hierarchical log-derivative
    (None: 0); the side's ``A_+``, ``A_-``, ``B``, ``S`` as ``[C, 1]``.
    """
    out = torch.addcmul(spread, b, sp) * cb
    if h is None:
        return torch.addcmul(torch.addcmul(out, a_minus, ep), a_plus, em, value=-1.0)
    return out + a_minus * ep * (h + 1.0) + a_plus * em * (h - 1.0)


class CentroidSums(NamedTuple):
    r"""Per-group sufficient statistics of a Law centroid of features (:func:`hyperdm.lorentz.feature_centroid_sums`).

    Float64, each ``[..., 1]`` except ``ms`` ``[..., D]``. With ``t_i`` the clamped radius of
    point ``i`` in units of ``sqrt(k)``, ``u_i = v_i / |v_i|``, weights ``w_i`` divided by their
    total ``W`` and every exponential shifted by ``top``:

    * ``weight``: ``W = sum_i w_i`` (before division), ``top``: ``max_i t_i`` where :func:`shift_needed`
      says so, else 0;
    * ``m0 = sum_i w_i cosh(t_i) e^{-top}``, ``ms = sum_i b_i u_i`` with ``b_i = w_i sinh(t_i) e^{-top}``;
    * ``a_minus``, ``a_plus``: ``sum_i w_i e^{-/+t_i - top}``; ``b``: ``B = sum_i b_i``;
    * ``spread``: ``sum_i b_i |u_i - ũ|^2`` about these points' own ``ũ = ms / B``;
    * ``points``: the number of points with ``w_i > 0``.

    The sums of several sets of points (shards of a group on several processes) combine exactly
    (:func:`reduce_centroid_sums`); :func:`hyperdm.lorentz.centroid_from_sums` finishes.
    """

    weight: Tensor
    top: Tensor
    m0: Tensor
    ms: Tensor
    a_minus: Tensor
    a_plus: Tensor
    b: Tensor
    spread: Tensor
    points: Tensor


def reduce_centroid_sums(sums: CentroidSums, reduce: Reduce) -> CentroidSums:
    r"""The :class:`CentroidSums` of the points of every process, from each process's own.

    ``reduce(x, op)`` combines a tensor over the processes (:func:`hyperdm.distributed.all_reduce_fn`). Process ``r``'s
    sums are relative to its own total weight ``W_r`` and shift ``top_r``; with ``top = max_r top_r``
    and ``W = sum_r W_r`` its share is ``f_r = (W_r / W) e^{top_r - top}``, so ``X = sum_r f_r X_r``
    for ``m0``, ``ms``, ``a_minus``, ``a_plus`` and ``b``, and the point counts add up. The spread about
    the union's ``ũ = ms / B`` follows from each process's spread about its own ``ũ_r`` by the
    parallel-axis identity

    .. math::
        \sum_i b_i \|u_i - \tilde u\|^2 = \sum_r f_r \big(S_r + B_r \|\tilde u_r - \tilde u\|^2\big),

    a sum of non-negative terms (no cancellation). Three collectives: the largest shift (max), the
    first sums with ``W`` and the counts (one sum), the spread (one sum). A process without any
    point of a group (``W_r = 0``) contributes nothing to it. Only for sums without autograd history.
    """
    top = reduce(sums.top, "max")
    share = sums.weight * torch.exp(sums.top - top)  # W_r e^{top_r - top}
    d = sums.ms.shape[-1]
    firsts = (sums.ms, sums.m0, sums.a_minus, sums.a_plus, sums.b)
    total = reduce(torch.cat((*(x * share for x in firsts), sums.weight, sums.points), dim=-1), "sum")
    ms, m0, a_minus, a_plus, b, weight, points = total.split([d, 1, 1, 1, 1, 1, 1], dim=-1)
    inv = 1.0 / torch.where(weight > 0, weight, torch.ones_like(weight))
    ms, m0, a_minus, a_plus, b = (x * inv for x in (ms, m0, a_minus, a_plus, b))
    ut = ms / torch.where(b > 0, b, torch.ones_like(b))
    ut_r = sums.ms / torch.where(sums.b > 0, sums.b, torch.ones_like(sums.b))
    own = share * (sums.spread + sums.b * (ut_r - ut).square().sum(-1, keepdim=True))
    spread = reduce(own, "sum") * inv
    return CentroidSums(
        weight=weight, top=top, m0=m0, ms=ms, a_minus=a_minus, a_plus=a_plus, b=b, spread=spread, points=points
    )
