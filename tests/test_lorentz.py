r"""Tests of :mod:`hyperdm.lorentz` against an independent high-precision reference.

Reference (section "reference" below). Written here from the textbook formulas, starting
from the *features* (tangent vectors at the origin) the module is given, after their
rounding to the dtype under test: the module is never asked for digits its input does not
hold. Scalars (radii, cosh, asinh, normalisers) are evaluated in mpmath at 50 digits (more
where a test needs it); dot products and norms of vectors are *exact*: a float is a dyadic
rational, so a vector is held as Python integers times a power of two and its dot products
are integer sums. A reference point is ``x_0`` plus its space part written as a combination
``sum_i c_i v_i`` of such exact vectors; distances come from the hyperbolic law of cosines
(radii and the angle between the space parts); the Law centroid is the plain weighted
mean, normalised by ``sqrt(m_0^2 - |m_s|^2)`` evaluated with exact Gram matrices (50
digits make that cancellation harmless). Vector outputs of element-wise maps are compared
with the correctly rounded float64 of ``factor * v`` (``factor`` from mpmath).

Tolerances. ``eps`` is the machine epsilon of the dtype under test; every tolerance is a
small multiple of it times the natural scale of the quantity:

* radii, norms, logarithms, weights, coordinates: relative, ``REL * eps`` (times ``1 + t``
  where the quantity is a function of ``t = r / sqrt(k)`` whose condition number grows like
  ``t``; times ``1/(1 - |p|)`` for ``from_poincare``, whose condition number that is);
* distances between generic points (random directions, radii 0 .. 10 sqrt(k)): relative,
  ``REL * eps``. Near-coincident points: ``REL * eps * d`` plus a floor,
  ``FLOOR * (eps sqrt(k) (t_x + t_y) + j)`` with ``j = eps sqrt(k) sqrt(sinh t_x sinh t_y)``
  (``min(j, j^2 / d)`` for a step along the ray, where ``j`` enters at second order). This is the
  accuracy of the polar form that ``dist`` evaluates (each point's radius ``~t sqrt(k)`` and
  unit direction rounded to the dtype; a direction error ``eps`` at radius ``t sqrt(k)`` is a
  sideways displacement ``eps sqrt(k) sinh t``: ``5e-4 sqrt(k)`` in float32 at ``t = 9``).
  In float32 it is not met by a flat ``1e-5`` relative tolerance when ``d`` is small
  against the radius (relative error ``~eps r / d``) or far out (``~eps sinh(t) / d``).
  The textbook ``acosh`` form is orders of magnitude worse (checked below);
* centroids: hyperbolic distance to the reference centroid ``c*`` (and radius error) below
  ``CENTROID * eps * c*_0``, the ambient size of the mean, which every rounding of the
  inputs perturbs in proportion.
"""

from __future__ import annotations

import functools
import math

import geoopt
import pytest
import torch
from geoopt.manifolds.lorentz import math as gmath
from reference import (
    Exact,
    RefPoint,
    edot,
    feature,
    gen,
    lorentz_defect,
    mp,
    ref_centroid,
    ref_dist,
    ref_point,
    scale,
)

from hyperdm import law
from hyperdm import lorentz as L

KS = [0.2, 0.5, 1.0, 2.0, 3.0]
DIMS = [2, 64, 2048]
DTYPES = [torch.float32, torch.float64]
# Radii in units of sqrt(k): exactly 0, tiny, ..., the HDD clamp radius 10.
TS = (0.0, 1e-7, 1e-4, 0.05, 0.5, 1.0, 2.0, 5.0, 9.0, 10.0)

REL = 16.0  # relative tolerance, in units of eps
FLOOR = 8.0  # accuracy floor of the polar form of dist, in units of eps (module docstring)
CENTROID = 8.0  # centroid tolerance, in units of eps * c*_0

#: The core of the grid, run by ``pytest -m "not slow"``: k below, at and above 1 (a k that is not a power of two
#: catches a k rounded to float32 or a missing sqrt(k)), the smallest D (degenerate directions) and a large one
#: (long accumulations), both dtypes. The rest of the grid (k 0.5 and 2, D 64) is marked ``slow``: it has not found
#: a bug the core missed, and the default run still runs it.
CORE_KS, CORE_DIMS = (0.2, 1.0, 3.0), (2, 2048)
ALL = [
    pytest.param(k, D, dt, marks=() if k in CORE_KS and D in CORE_DIMS else pytest.mark.slow)
    for k in KS
    for D in DIMS
    for dt in DTYPES
]


def _id(val):
    return str(val).replace("torch.", "") if isinstance(val, torch.dtype) else None


def eps_of(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


@functools.cache
def sweep(k: float, D: int, dtype: torch.dtype) -> tuple[torch.Tensor, tuple]:
    """One feature per radius in TS (units of sqrt(k)), random directions, rounded to dtype."""
    g = gen("sweep", k, D)
    u = torch.randn(len(TS), D, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    v = (u * torch.tensor(TS, dtype=torch.float64)[:, None] * math.sqrt(k)).to(dtype)
    return v, tuple(feature(row) for row in v)


def f64(xs) -> torch.Tensor:
    """A float64 tensor of mp / Python numbers (never the float32 default dtype)."""
    if isinstance(xs, (list, tuple)):
        return torch.tensor([float(a) for a in xs], dtype=torch.float64)
    return torch.tensor(float(xs), dtype=torch.float64)


def dist_tol(d: float, ta: float, tb: float, k: float, dtype, radial: bool = False) -> float:
    """REL*eps*d plus the floor of the polar form at radii ta, tb (units of sqrt k).

    The floor: radii held to ~eps*t*sqrt(k), positions across the ray to j = eps*sqrt(k)*sinh(t).
    For a step along the ray (radial=True) the sideways error j only enters at second order,
    sqrt(d^2 + j^2) - d <= j^2 / (2d).
    """
    e = eps_of(dtype)
    sk = math.sqrt(k)
    jitter = e * sk * math.sqrt(math.sinh(ta) * math.sinh(tb))
    if radial and d > 0:
        jitter = min(jitter, jitter * jitter / d)
    return REL * e * d + FLOOR * (e * sk * (ta + tb) + jitter)


def assert_rel(actual: torch.Tensor, ref: torch.Tensor, rtol, what: str) -> None:
    """Element-wise |actual - ref| <= rtol * |ref| (rtol may broadcast); reports the worst offender."""
    actual = actual.detach().double()
    ref = ref.double().expand_as(actual)
    err = (actual - ref).abs()
    bound = (torch.as_tensor(rtol, dtype=torch.float64) * ref.abs()).expand_as(actual)
    bad = err > bound
    if bad.any():
        i = int(torch.argmax((err - bound).reshape(-1)))
        raise AssertionError(
            f"{what}: {int(bad.sum())} element(s) off; worst at flat index {i}: "
            f"got {actual.reshape(-1)[i].item()!r}, want {ref.reshape(-1)[i].item()!r}, "
            f"err {err.reshape(-1)[i].item():.3e} > bound {bound.reshape(-1)[i].item():.3e}"
        )


def check_centroid(c: torch.Tensor, ref: RefPoint, k: float, dtype, what: str) -> float:
    """Module centroid c against the reference; returns the distance."""
    assert torch.isfinite(c).all(), f"{what}: non-finite centroid {c}"
    d = float(ref_dist(RefPoint.of(c), ref, k))
    tol = CENTROID * eps_of(dtype) * float(ref.x0)
    assert d <= tol, f"{what}: distance to reference centroid {d:.3e} > {tol:.3e} (c*_0 = {float(ref.x0):.4g})"
    r_ref = float(ref.radius(k))
    r = float(L.dist0(c.double(), k=k))
    assert abs(r - r_ref) <= tol, f"{what}: radius {r!r} vs reference {r_ref!r} (tol {tol:.3e})"
    return d


def naive_dist(x: torch.Tensor, y: torch.Tensor, k: float) -> torch.Tensor:
    """Textbook sqrt(k) acosh(-<x,y>/k) in the inputs' dtype (documents why it is not used)."""
    ip = -x[..., 0] * y[..., 0] + (x[..., 1:] * y[..., 1:]).sum(-1)
    return math.sqrt(k) * torch.acosh((-ip / k).clamp_min(1.0))


def naive_law(x: torch.Tensor, k: float) -> torch.Tensor:
    """Textbook Law centroid sqrt(k) m / sqrt(|<m,m>_L|) in the inputs' dtype."""
    m = x.mean(-2)
    mm = -(m[..., 0] ** 2) + (m[..., 1:] ** 2).sum(-1)
    return math.sqrt(k) * m / mm.abs().sqrt().unsqueeze(-1)


def test_reference_self_consistency():
    """The reference agrees with the chord form and the textbook formulas evaluated directly in mpmath."""
    g = gen("selfcheck")
    for k in KS:
        sk = mp.sqrt(k)
        for _ in range(3):
            a, b = torch.randn(2, 4, generator=g, dtype=torch.float64) * 3
            fa, fb = feature(a), feature(b)
            x, y = ref_point(fa, k), ref_point(fb, k)
            xs = [mp.mpf(float(c)) * x.terms[0][0] for c in a]
            ys = [mp.mpf(float(c)) * y.terms[0][0] for c in b]
            diff = [p - q for p, q in zip(xs, ys, strict=True)]
            chord = mp.sqrt(-((x.x0 - y.x0) ** 2) + mp.fdot(diff, diff))
            d1 = 2 * sk * mp.asinh(chord / (2 * sk))
            d2 = ref_dist(x, y, k)
            d3 = sk * mp.acosh((x.x0 * y.x0 - mp.fdot(xs, ys)) / k)
            assert abs(d1 - d2) < mp.mpf(10) ** -35 * (1 + d1) and abs(d3 - d2) < mp.mpf(10) ** -30
            assert abs(-(x.x0**2) + mp.fdot(xs, xs) + k) < mp.mpf(10) ** -35 * x.x0**2
            assert abs(x.radius(k) - fa.r) < mp.mpf(10) ** -35 * (1 + fa.r)
            m = [(x.x0 + y.x0) / 2] + [(p + q) / 2 for p, q in zip(xs, ys, strict=True)]
            c = ref_centroid([x, y], k)
            nn = mp.sqrt(m[0] ** 2 - mp.fdot(m[1:], m[1:]))
            assert abs(c.x0 - sk * m[0] / nn) < mp.mpf(10) ** -35 * c.x0
            t = c.tensor()
            assert torch.allclose(t, f64([sk * q / nn for q in m]), rtol=1e-15, atol=0)
    # exact dot products and the once-rounded scaling
    v = torch.randn(2048, generator=g, dtype=torch.float64)
    v[3], v[5], v[7] = 1e-30, 1e4, 0.0
    ev = Exact(v)
    assert edot(ev, ev) == mp.fsum(mp.mpf(float(q)) ** 2 for q in v)
    third = mp.mpf(1) / 3
    assert torch.equal(scale(third, v), f64([third * mp.mpf(float(q)) for q in v]))


# ----------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("max_norm", [None, 2.5, 10.0])
@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_expmap0_matches_reference(k, D, dtype, max_norm):
    v, feats = sweep(k, D, dtype)
    x = L.expmap0(v, k=k, max_norm=max_norm)
    assert x.shape == (len(TS), D + 1) and x.dtype == dtype
    e = eps_of(dtype)
    for i, f in enumerate(feats):
        ref = ref_point(f, k, max_norm).tensor()
        t = min(float(f.r) / math.sqrt(k), max_norm or math.inf)
        # every coordinate is sqrt(k) cosh(t) or sinh(t)/t * v_j: relative error ~ eps (1 + t)
        assert_rel(x[i], ref, 4 * e * (1 + t), f"expmap0 row {i} (t={TS[i]})")
        assert lorentz_defect(x[i], k) <= 8 * e, f"<x,x>_L != -k for expmap0 row {i}"
    # the radius is |v|, or max_norm*sqrt(k) when clamped; radius0 gives it without forming the point
    r_ref = f64([min(f.r, (max_norm or math.inf) * math.sqrt(k)) for f in feats])
    assert_rel(L.dist0(x, k=k), r_ref, REL * e, "dist0(expmap0(v))")
    assert_rel(L.radius0(v, k=k, max_norm=max_norm), r_ref, REL * e, "radius0(v)")


@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_logmap0_dist0_match_reference(k, D, dtype):
    v, feats = sweep(k, D, dtype)
    e = eps_of(dtype)
    sk = mp.sqrt(k)
    # module round trips
    assert_rel(L.logmap0(L.expmap0(v, k=k), k=k), v, REL * e, "logmap0(expmap0(v))")
    assert_rel(L.dist0(L.expmap0(v, k=k), k=k), f64([f.r for f in feats]), REL * e, "dist0(expmap0(v))")
    # on reference points rounded to dtype, against the exact values for those rounded points
    for i, f in enumerate(feats):
        x = ref_point(f, k).tensor().to(dtype)
        xs = Exact(x[1:])
        a = mp.sqrt(edot(xs, xs))
        r = sk * mp.asinh(a / sk)
        log_ref = scale(0 if a == 0 else r / a, x[1:])
        assert_rel(L.logmap0(x, k=k), log_ref, REL * e, f"logmap0 row {i}")
        assert_rel(L.dist0(x, k=k), f64(r), REL * e, f"dist0 row {i}")
        assert_rel(L.dist0(x, k=k, keepdim=True), f64([r]), REL * e, "dist0 keepdim")


@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_dist_matches_reference_generic_pairs(k, D, dtype):
    """All pairs of the sweep (radii 0 .. 10 sqrt(k), random directions)."""
    v, feats = sweep(k, D, dtype)
    x = L.expmap0(v, k=k)
    d = L.dist(x[:, None, :], x[None, :, :], k=k)
    assert d.shape == (len(TS), len(TS)) and d.dtype == dtype
    assert (torch.diagonal(d) == 0).all(), "dist(x, x) must be exactly 0"
    pts = [ref_point(f, k) for f in feats]
    n = len(TS)
    ref = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            ref[i, j] = ref[j, i] = float(ref_dist(pts[i], pts[j], k))
    assert_rel(d, ref, REL * eps_of(dtype), "dist of generic pairs")
    assert torch.equal(d, d.T), "dist must be symmetric"
    dk = L.dist(x[:3], x[3:6], k=k, keepdim=True)
    assert dk.shape == (3, 1)
    assert torch.allclose(dk[:, 0], d[torch.arange(3), torch.arange(3, 6)], rtol=4 * eps_of(dtype), atol=0)


@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_dist_near_zero_distance(k, D, dtype):
    """Pairs a small step apart (along the ray and across it) at every radius of the sweep."""
    v, feats = sweep(k, D, dtype)
    sk = math.sqrt(k)
    g = gen("near", k, D)
    w = torch.randn(len(TS), D, generator=g, dtype=torch.float64)
    u = v.double() / v.double().norm(dim=-1, keepdim=True).clamp_min(1e-300)
    w = w - (w * u).sum(-1, keepdim=True) * u
    w = w / w.norm(dim=-1, keepdim=True)
    for i, t in enumerate(TS):
        if t == 0:
            continue
        for kind, step in [("radial", 1e-2), ("radial", 1e-4), ("across", 1e-3), ("across", 1e-5)]:
            # radial: shrink; across: a step of relative size `step` of the radius, across the ray
            b = v[i].double() * (1.0 - step) if kind == "radial" else v[i].double() + step * t * sk * w[i]
            b = b.to(dtype)
            fb = feature(b)
            ref = float(ref_dist(ref_point(feats[i], k), ref_point(fb, k), k))
            got = float(L.dist(L.expmap0(v[i], k=k), L.expmap0(b, k=k), k=k))
            tol = dist_tol(ref, t, float(fb.r) / sk, k, dtype, radial=kind == "radial")
            assert abs(got - ref) <= tol, f"t={t} {kind} step={step}: got {got!r}, ref {ref!r}, tol {tol:.3e}"
            if dtype == torch.float64 and t <= 1.0:
                # float64 and t <= 1: the floor is below 1e-13 relative, so a plain relative check
                assert abs(got - ref) <= 1e-10 * ref, (t, kind, step, got, ref)


@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_inner_and_project_match_reference(k, D, dtype):
    _v, feats = sweep(k, D, dtype)
    e = eps_of(dtype)
    g = gen("inner", k, D)
    pts = torch.stack([ref_point(f, k).tensor() for f in feats]).to(dtype)
    perm = torch.randperm(len(TS), generator=g)
    got = L.inner(pts, pts[perm])
    gotk = L.inner(pts, pts[perm], keepdim=True)
    assert got.shape == (len(TS),) and gotk.shape == (len(TS), 1) and got.dtype == dtype
    for i in range(len(TS)):
        x, y = RefPoint.of(pts[i]), RefPoint.of(pts[perm[i]])
        ref = -x.x0 * y.x0 + x.sdot(y)
        size = abs(x.x0 * y.x0) + x.snorm() * y.snorm()  # the terms that are summed
        tol = 4 * e * math.log2(2 * D) * float(size)
        assert abs(float(got[i]) - float(ref)) <= tol, f"inner row {i}: {float(got[i])!r} vs {float(ref)!r}"
        assert float(gotk[i, 0]) == float(got[i])
    # <x,x>_L = -k for points on the hyperboloid (to the rounding of the points: eps * x_0^2)
    self_ip = L.inner(pts, pts)
    assert ((self_ip.double() + k).abs() <= 8 * e * math.log2(2 * D) * pts[:, 0].double() ** 2).all()
    # project: time coordinate replaced by sqrt(k + |x_s|^2), space part kept
    junk = (torch.randn(len(TS), 1, generator=g, dtype=torch.float64) * 5).to(dtype)
    raw = torch.cat((junk, pts[:, 1:]), dim=-1)
    p = L.project(raw, k=k)
    assert p.dtype == dtype and torch.equal(p[:, 1:], pts[:, 1:])
    x0_ref = []
    for i in range(len(TS)):
        xs = Exact(pts[i, 1:])
        x0_ref.append(mp.sqrt(k + edot(xs, xs)))
        assert lorentz_defect(p[i], k) <= 8 * e, f"<x,x>_L != -k for project row {i}"
    assert_rel(p[:, 0], f64(x0_ref), 4 * e, "project x_0")


@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_poincare_maps_match_reference(k, D, dtype):
    v, feats = sweep(k, D, dtype)
    e = eps_of(dtype)
    sk = mp.sqrt(k)
    x = L.expmap0(v, k=k)
    p = L.to_poincare(x, k=k)
    assert p.shape == v.shape and p.dtype == dtype
    # |p| = tanh(r / (2 sqrt k))
    assert_rel(p.norm(dim=-1), f64([mp.tanh(f.r / (2 * sk)) for f in feats]), REL * e, "|to_poincare(expmap0(v))|")
    for i, f in enumerate(feats):
        t = float(f.r / sk)
        # to_poincare of a reference point rounded to dtype: p = x_s / (x_0 + sqrt k)
        xr = ref_point(f, k).tensor().to(dtype)
        p_ref = scale(1 / (mp.mpf(float(xr[0])) + sk), xr[1:])
        assert_rel(L.to_poincare(xr, k=k), p_ref, 4 * e, f"to_poincare row {i}")
        # from_poincare of an exact ball point rounded to dtype; condition number ~ 1/(1-|p|)
        pb = scale(0 if f.r == 0 else mp.tanh(f.r / (2 * sk)) / f.r, f.v).to(dtype)
        pe = Exact(pb)
        n2 = edot(pe, pe)
        x_ref = torch.cat((f64([sk * (1 + n2) / (1 - n2)]), scale(2 * sk / (1 - n2), pb)))
        cond = float(1 / (1 - mp.sqrt(n2)))
        xb = L.from_poincare(pb, k=k)
        assert xb.dtype == dtype
        assert_rel(xb, x_ref, 4 * e * (1 + cond), f"from_poincare row {i} (t={t})")
        assert lorentz_defect(xb, k) <= 8 * e * (1 + cond), f"<x,x>_L != -k for from_poincare row {i}"
    # round trip; from_poincare amplifies the rounding of p by 1/(1-|p|) ~ cosh(t)
    back = L.from_poincare(p, k=k)
    cond = f64([mp.cosh(f.r / sk) for f in feats])[:, None]
    assert_rel(back, x, 8 * e * (1 + cond), "from_poincare(to_poincare(x))")
    assert_rel(L.to_poincare(back, k=k), p, 8 * e, "to_poincare(from_poincare(p))")


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("k", KS)
def test_hierarchical_weight_matches_reference(k, dtype):
    sk = math.sqrt(k)
    ts = [*list(TS), 20.0, 50.0]
    r = (torch.tensor(ts, dtype=torch.float64) * sk).to(dtype)
    w = L.hierarchical_weight(r, k=k)
    assert w.dtype == dtype and w.shape == r.shape
    e = eps_of(dtype)
    for i, t in enumerate(ts):
        tt = mp.mpf(float(r[i])) / mp.sqrt(k)
        ref = mp.mpf(1) if tt == 0 else tt / mp.sinh(tt)
        assert abs(float(w[i]) - float(ref)) <= 4 * e * (1 + t) * float(ref), (t, float(w[i]), float(ref))
    assert float(w[0]) == 1.0
    assert (w[1:] <= w[:-1]).all() and (w[3:] < w[2:-1]).all(), "the weight must decrease with the radius"
    assert torch.allclose(L.hierarchical_weight(r, k=torch.tensor(k, dtype=torch.float64)), w, rtol=4 * e, atol=0)


def _centroid_features(k: float, D: int, dtype, tag: str = "centroid"):
    """Six features at radii 0, 1e-7, 0.5, 3, 9, 10 (units of sqrt k), random directions, and weights."""
    g = gen(tag, k, D)
    ts = torch.tensor([0.0, 1e-7, 0.5, 3.0, 9.0, 10.0], dtype=torch.float64)
    u = torch.randn(len(ts), D, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    v = (u * ts[:, None] * math.sqrt(k)).to(dtype)
    wts = (torch.rand(len(ts), generator=g, dtype=torch.float64) + 0.1).to(dtype)
    return v, [feature(row) for row in v], wts


@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_centroid_matches_reference(k, D, dtype):
    v, feats, wts = _centroid_features(k, D, dtype)
    pts = [ref_point(f, k) for f in feats]
    x = L.expmap0(v, k=k)
    for weights in (None, wts):
        ref = ref_centroid(pts, k, None if weights is None else weights.tolist())
        c = L.centroid(x, k=k, weights=weights)
        assert c.shape == (D + 1,) and c.dtype == dtype
        check_centroid(c, ref, k, dtype, f"centroid weighted={weights is not None}")
        assert lorentz_defect(c, k) <= 8 * eps_of(dtype), "<c,c>_L != -k for centroid"
        ck = L.centroid(x, k=k, weights=weights, keepdim=True)
        assert ck.shape == (1, D + 1) and torch.equal(ck[0], c)


@pytest.mark.parametrize("mode", ["plain", "max_norm", "weights", "hierarchical", "all"])
@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_feature_centroid_matches_reference(k, D, dtype, mode):
    v, feats, wts = _centroid_features(k, D, dtype)
    max_norm = 2.5 if mode in ("max_norm", "all") else None
    weights = wts if mode in ("weights", "all") else None
    hier = mode in ("hierarchical", "all")
    sk = mp.sqrt(k)
    w = [mp.mpf(1)] * len(feats) if weights is None else [mp.mpf(float(a)) for a in weights]
    if hier:  # hierarchical_weight of each point's radius (after the clamp)
        for i, f in enumerate(feats):
            t = f.r / sk if max_norm is None else min(f.r / sk, mp.mpf(max_norm))
            w[i] *= 1 if t == 0 else t / mp.sinh(t)
    ref = ref_centroid([ref_point(f, k, max_norm) for f in feats], k, w)
    c = L.feature_centroid(
        v[None], k=k, max_norm=max_norm, weights=None if weights is None else weights[None], hierarchical=hier
    )
    assert c.shape == (1, D + 1)
    check_centroid(c[0], ref, k, dtype, f"feature_centroid {mode}")
    # the output is float64, but its space part carries the input dtype's precision
    assert lorentz_defect(c[0], k) <= 8 * eps_of(dtype), "<c,c>_L != -k for feature_centroid"


def _ref_sums(feats, k, max_norm, weights, hier, dtype):
    """mpmath CentroidSums of the features: W, top, m0, ms (float64 vector), a_-, a_+, B, spread; shifted by the
    largest radius where hyperdm.law.shift_needed says so for features of ``dtype`` (the sums scale, the centroid
    does not)."""
    sk = mp.sqrt(k)
    ts = [f.r / sk if max_norm is None else min(f.r / sk, mp.mpf(max_norm)) for f in feats]
    w = [mp.mpf(1)] * len(feats) if weights is None else [mp.mpf(float(a)) for a in weights]
    if hier:
        w = [wi * (1 if t == 0 else t / mp.sinh(t)) for wi, t in zip(w, ts, strict=True)]
    total = mp.fsum(w)
    wn = [wi / total for wi in w]
    tmax = law.SAFE_RADIUS if max_norm is None else min(max_norm, law.SAFE_RADIUS)
    top = max(ts) if law.shift_needed(tmax, dtype, hierarchical=hier) else mp.mpf(0)
    b = [wi * mp.sinh(t) * mp.exp(-top) for wi, t in zip(wn, ts, strict=True)]
    B = mp.fsum(b)
    ms = RefPoint(0, [(bi / f.r, f.ex) for bi, f in zip(b, feats, strict=True) if f.r != 0])  # sum_i b_i u_i
    ut_dot = [ms.sdot(RefPoint(0, [(1 / f.r, f.ex)])) / B if f.r != 0 else 0 for f in feats]  # u_i . ũ
    spread = mp.fsum(
        bi * (1 - 2 * d + ms.sdot(ms) / B**2) for bi, d, f in zip(b, ut_dot, feats, strict=True) if f.r != 0
    )
    return {
        "weight": total,
        "top": top,
        "m0": mp.fsum(wi * mp.cosh(t) * mp.exp(-top) for wi, t in zip(wn, ts, strict=True)),
        "ms": ms.tensor()[1:],
        "a_minus": mp.fsum(wi * mp.exp(-t - top) for wi, t in zip(wn, ts, strict=True)),
        "a_plus": mp.fsum(wi * mp.exp(t - top) for wi, t in zip(wn, ts, strict=True)),
        "b": B,
        "spread": spread,
    }


@pytest.mark.parametrize("mode", ["plain", "all"])
@pytest.mark.parametrize("k,D,dtype", [(k, D, dt) for k in (0.5, 2.0) for D in (2, 64) for dt in DTYPES], ids=_id)
def test_feature_centroid_sums_and_finalise(k, D, dtype, mode):
    """feature_centroid_sums against mpmath, field by field; centroid_from_sums of them is feature_centroid
    (bit for bit) and the reference centroid."""
    v, feats, wts = _centroid_features(k, D, dtype, tag="sums")
    max_norm = 2.5 if mode == "all" else None
    weights = wts if mode == "all" else None
    hier = mode == "all"
    sums = L.feature_centroid_sums(
        v[None], k=k, max_norm=max_norm, weights=None if weights is None else weights[None], hierarchical=hier
    )
    assert all(
        x.dtype == torch.float64 and x.shape == (1, D if name == "ms" else 1) for name, x in sums._asdict().items()
    )
    ref = _ref_sums(feats, k, max_norm, weights, hier, dtype)
    e = eps_of(dtype)
    assert float(sums.points) == len(feats)
    for name in ("weight", "top", "m0", "a_minus", "a_plus", "b"):
        assert abs(float(getattr(sums, name)) - float(ref[name])) <= 16 * e * abs(float(ref[name])), name
    B = float(ref["b"])
    assert (sums.ms[0] - ref["ms"]).norm() <= 16 * e * B, "ms"  # |ms| <= B: the b_i-weighted sum of unit vectors
    assert abs(float(sums.spread) - float(ref["spread"])) <= 64 * e * B, (
        "spread",
        float(sums.spread),
        float(ref["spread"]),
    )
    c = L.centroid_from_sums(sums, k=k)
    fc = L.feature_centroid(
        v[None], k=k, max_norm=max_norm, weights=None if weights is None else weights[None], hierarchical=hier
    )
    assert torch.equal(c, fc)
    w = [mp.mpf(1)] * len(feats) if weights is None else [mp.mpf(float(a)) for a in weights]
    if hier:
        w = [
            wi * (lambda t: 1 if t == 0 else t / mp.sinh(t))(min(f.r / mp.sqrt(k), mp.mpf(max_norm)))
            for wi, f in zip(w, feats, strict=True)
        ]
    check_centroid(
        c[0], ref_centroid([ref_point(f, k, max_norm) for f in feats], k, w), k, dtype, f"centroid_from_sums {mode}"
    )


def _stacked_reduce(ranks: int):
    """An all-reduce over ranks held as the leading axis (of ``ranks`` equal blocks, however flattened)."""

    def reduce(x: torch.Tensor, op: str) -> torch.Tensor:
        y = x.reshape(ranks, -1, x.shape[-1])
        y = y.sum(0, keepdim=True) if op == "sum" else y.amax(0, keepdim=True)
        return y.expand(ranks, *y.shape[1:]).reshape(x.shape)

    return reduce


@pytest.mark.parametrize("max_norm", [None, 2.0])
@pytest.mark.parametrize("hier", [False, True])
def test_reduced_centroid_sums_are_the_union(hier, max_norm):
    """Three ranks with unequal shards (one holds no point of class 1): reduce_centroid_sums of their sums
    gives every rank the sums and the centroid of the union of the points."""
    from hyperdm.distributed import reduce_centroid_sums

    g = gen("reduce", hier, max_norm)
    C, N, D, R, k = 3, 9, 6, 3, 1.5
    v = (
        torch.randn(C, N, D, generator=g, dtype=torch.float64)
        * torch.rand(C, N, 1, generator=g, dtype=torch.float64)
        * 6
    )
    wts = torch.rand(C, N, generator=g, dtype=torch.float64) + 0.1
    owner = torch.randint(0, R, (C, N), generator=g)
    owner[1][owner[1] == 2] = 0  # rank 2 holds no point of class 1
    owner[0, :4] = 1  # unequal shards
    masks = torch.stack([owner == r for r in range(R)])  # [R, C, N]: each rank a padded copy of its points
    shards = torch.where(masks[..., None], v, torch.zeros_like(v))
    kw = {"k": k, "max_norm": max_norm, "hierarchical": hier}
    local = L.feature_centroid_sums(shards, weights=wts.expand(R, C, N), mask=masks, **kw)
    assert torch.equal(local.weight[2, 1], torch.zeros(1, dtype=torch.float64))
    union = L.feature_centroid_sums(v, weights=wts, **kw)
    reduced = reduce_centroid_sums(local, _stacked_reduce(R))
    for name, x in reduced._asdict().items():
        want = getattr(union, name).expand_as(x)
        if name == "spread":  # absolute: the spread is summed against B (see centroid_from_sums)
            assert ((x - want).abs() <= 64 * eps_of(torch.float64) * union.b).all(), name
        else:
            torch.testing.assert_close(x, want, rtol=1e-13, atol=0, msg=name)
    want = L.feature_centroid(v, weights=wts, **kw)
    for c in (
        L.centroid_from_sums(reduced, k=k),
        L.feature_centroid(shards, weights=wts.expand(R, C, N), mask=masks, reduce=_stacked_reduce(R), **kw),
    ):
        torch.testing.assert_close(c, want.expand_as(c), rtol=1e-12, atol=0)
    # a shard alone is not the union (the check above can fail)
    alone = L.centroid_from_sums(local, k=k)
    assert not torch.allclose(alone[0], want, rtol=1e-6)


# ----------------------------------------------------------------------------- known values


@pytest.mark.parametrize("direction", ["axis", "random"])
@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_dist_same_ray_is_radius_difference(k, D, dtype, direction):
    """Two points on one ray at radii 9 sqrt(k) and 9 sqrt(k) - 1e-2: d = |r1 - r2| = 1e-2."""
    sk = math.sqrt(k)
    if direction == "axis":
        u = torch.zeros(D, dtype=torch.float64)
        u[D // 2] = -1.0
    else:
        u = torch.randn(D, generator=gen("ray", k, D), dtype=torch.float64)
        u = u / u.norm()
    r1, r2 = 9.0 * sk, 9.0 * sk - 1e-2
    a, b = (r1 * u).to(dtype), (r2 * u).to(dtype)
    x, y = L.expmap0(a, k=k), L.expmap0(b, k=k)
    got = float(L.dist(x, y, k=k))
    e = eps_of(dtype)
    # the known value, for the inputs as rounded to dtype
    fa, fb = feature(a), feature(b)
    ref = float(ref_dist(ref_point(fa, k), ref_point(fb, k), k))
    assert abs(ref - 1e-2) <= 4 * e * r1 + (0 if direction == "axis" else 4 * e * sk * math.sinh(9.0)), (ref, dtype)
    if direction == "axis":
        # directions exact: only the radial floor (the radii ~9 sqrt(k) are held to ~eps * 9 sqrt(k))
        tol = REL * e * ref + FLOOR * e * (r1 + r2)
    else:
        tol = dist_tol(ref, r1 / sk, r2 / sk, k, dtype, radial=True)
    assert abs(got - ref) <= tol, f"same ray: got {got!r}, ref {ref!r} (|r1-r2| = 1e-2), tol {tol:.3e}"
    assert float(L.dist(y, x, k=k)) == got
    if dtype == torch.float64:
        assert abs(got - 1e-2) <= 1e-9 * 1e-2
    else:
        # the textbook acosh form has no digit left here
        naive = float(naive_dist(x, y, k))
        assert abs(naive - ref) > 100 * abs(got - ref) and abs(naive - ref) > 1e-3, (naive, got, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("k", KS)
def test_dist_same_radius_known_value(k, dtype):
    """Points at one radius rho, angle theta apart: d = 2 sqrt(k) asinh(sinh(rho/sqrt k) sin(theta/2))."""
    sk = math.sqrt(k)
    D = 5
    for t in [1e-6, 1e-3, 1.0, 5.0, 9.0, 10.0]:
        for theta in [1e-3, 0.1, 1.0, math.pi / 2, 3.0, math.pi]:
            a = torch.zeros(D, dtype=torch.float64)
            b = torch.zeros(D, dtype=torch.float64)
            a[1] = t * sk
            b[1], b[3] = t * sk * math.cos(theta), t * sk * math.sin(theta)
            got = float(L.dist(L.expmap0(a.to(dtype), k=k), L.expmap0(b.to(dtype), k=k), k=k))
            rho, th = mp.mpf(t) * mp.sqrt(k), mp.mpf(theta)
            ref = float(2 * mp.sqrt(k) * mp.asinh(mp.sinh(rho / mp.sqrt(k)) * mp.sin(th / 2)))
            # nominal (unrounded) rho and theta: the rounding of the inputs is the representation floor
            tol = dist_tol(ref, t, t, k, dtype)
            assert abs(got - ref) <= tol, f"t={t} theta={theta}: got {got!r}, want {ref!r}, tol {tol:.3e}"


# ----------------------------------------------------------------------------- centroid properties


@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_centroid_of_identical_and_single_points(k, D, dtype):
    sk = math.sqrt(k)
    e = eps_of(dtype)
    u = torch.randn(D, generator=gen("ident", k, D), dtype=torch.float64)
    u = u / u.norm()
    for t in [0.0, 1e-7, 1.0, 9.0, 10.0]:
        v = (u * t * sk).to(dtype)
        x = L.expmap0(v, k=k)
        ref = ref_point(feature(v), k).tensor()
        x0 = float(ref[0])
        # a single point (even far out) is its own centroid; so are five copies of it
        for c, name in [(L.centroid(x[None], k=k), "single"), (L.centroid(x.expand(5, D + 1), k=k), "identical")]:
            assert ((c.double() - x.double()).abs() <= 4 * e * x0).all(), (
                f"centroid of {name} point(s), t={t}: {c} vs {x}"
            )
        # the fused version, against the exact point of v
        for f, name in [
            (L.feature_centroid(v[None, None], k=k)[0], "single"),
            (L.feature_centroid(v.expand(1, 5, D), k=k)[0], "identical"),
        ]:
            assert ((f.double() - ref).abs() <= 4 * e * (1 + t) * x0).all(), (
                f"feature_centroid of {name} point(s), t={t}"
            )


@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_centroid_symmetric_configuration_is_origin(k, D, dtype):
    sk = math.sqrt(k)
    e = eps_of(dtype)
    u = torch.randn(3, D, generator=gen("sym", k, D), dtype=torch.float64)
    ts = torch.tensor([0.5, 9.0, 10.0], dtype=torch.float64)
    v = (u / u.norm(dim=-1, keepdim=True) * ts[:, None] * sk).to(dtype)
    v = torch.cat((v, -v))
    x = L.expmap0(v, k=k)
    tol = 4 * e * sk * math.cosh(10.0)  # ambient size of the farthest point
    for c in (L.centroid(x, k=k), L.feature_centroid(v[None], k=k)[0]):
        assert float(L.dist0(c.double(), k=k)) <= tol, f"symmetric centroid not at the origin: {c}"
        assert abs(float(c[0]) - sk) <= tol


@pytest.mark.parametrize("k,D,dtype", ALL, ids=_id)
def test_centroid_weights_one_hot_and_scale_invariant(k, D, dtype):
    v, feats, wts = _centroid_features(k, D, dtype, tag="weights")
    e = eps_of(dtype)
    x = L.expmap0(v, k=k)
    for j, f in enumerate(feats):
        oh = torch.zeros(len(feats), dtype=dtype)
        oh[j] = 1.0
        ref = ref_point(f, k).tensor()
        t = float(f.r) / math.sqrt(k)
        c = L.centroid(x, k=k, weights=oh)
        assert ((c.double() - x[j].double()).abs() <= 4 * e * float(ref[0])).all(), f"one-hot {j}: {c} vs {x[j]}"
        fc = L.feature_centroid(v[None], k=k, weights=oh[None])[0]
        assert ((fc.double() - ref).abs() <= 4 * e * (1 + t) * float(ref[0])).all(), f"feature_centroid one-hot {j}"
    # weights w and 3w give the same centroid (and it differs from the unweighted one)
    c1, c3, c0 = (L.centroid(x, k=k, weights=w) for w in (wts, 3 * wts, None))
    size = float(c1[0])
    assert ((c1.double() - c3.double()).abs() <= 8 * e * size).all()
    assert (c1.double() - c0.double()).abs().max() > 1e3 * e * size
    f1, f3 = (L.feature_centroid(v[None], k=k, weights=w[None]) for w in (wts, 3 * wts))
    assert ((f1 - f3).abs() <= 8 * e * float(f1[0, 0])).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("k", KS)
def test_feature_centroid_equals_centroid_of_expmap0(k, dtype):
    """feature_centroid == centroid(expmap0(v, max_norm), weights * hierarchical_weight); batched == per class."""
    g = gen("fused", k)
    e = eps_of(dtype)
    C, N, D = 3, 7, 16
    spread = torch.tensor([0.2, 2.0, 6.0], dtype=torch.float64)[:, None, None]
    v = (torch.randn(C, N, D, generator=g, dtype=torch.float64) * math.sqrt(k) * spread).to(dtype)
    wts = (torch.rand(C, N, generator=g, dtype=torch.float64) + 0.1).to(dtype)
    vd = v.double()
    for max_norm in (None, 10.0, 1.5):
        x = L.expmap0(vd, k=k, max_norm=max_norm)
        for weights in (None, wts):
            for hier in (False, True):
                fc = L.feature_centroid(v, k=k, max_norm=max_norm, weights=weights, hierarchical=hier)
                assert fc.shape == (C, D + 1)
                w = torch.ones(C, N, dtype=torch.float64) if weights is None else weights.double()
                if hier:
                    w = w * L.hierarchical_weight(L.radius0(vd, k=k, max_norm=max_norm), k=k)
                c = L.centroid(x, k=k, weights=w)
                d = L.dist(fc.double(), c, k=k)
                tol = CENTROID * e * c[:, 0]
                assert (d <= tol).all(), f"max_norm={max_norm} weighted={weights is not None} hier={hier}: {d} > {tol}"
                for i in range(C):
                    one = L.feature_centroid(
                        v[i : i + 1],
                        k=k,
                        max_norm=max_norm,
                        weights=None if weights is None else weights[i : i + 1],
                        hierarchical=hier,
                    )
                    assert torch.allclose(one[0], fc[i], rtol=1e-12, atol=0), "batched feature_centroid != per class"
                    assert torch.allclose(L.centroid(x[i], k=k, weights=w[i]), c[i], rtol=1e-12, atol=0), (
                        "batched centroid != per class"
                    )


@pytest.mark.parametrize("max_norm", [None, 10.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("k", [0.5, 2.0])
def test_feature_centroid_mask_excludes_points(k, dtype, max_norm):
    g = gen("mask", k)
    C, N, D = 3, 6, 8
    v = (torch.randn(C, N, D, generator=g, dtype=torch.float64) * 3 * math.sqrt(k)).to(dtype)
    wts = (torch.rand(C, N, generator=g, dtype=torch.float64) + 0.1).to(dtype)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 0]], dtype=torch.bool)
    junk = (torch.randn(C, N, D, generator=g, dtype=torch.float64) * 1e4).to(dtype)
    padded = torch.where(mask[..., None], v, junk).requires_grad_()
    for weights in (None, wts):
        for hier in (False, True):
            padded.grad = None
            fc = L.feature_centroid(padded, k=k, max_norm=max_norm, weights=weights, mask=mask, hierarchical=hier)
            for i in range(C):
                sub = v[i][mask[i]][None]
                ws = None if weights is None else weights[i][mask[i]][None]
                ref = L.feature_centroid(sub, k=k, max_norm=max_norm, weights=ws, hierarchical=hier)[0]
                # normwise: summation order differs between the padded and the compacted batch (CPU-dependent)
                tol = 64 * eps_of(torch.float64) * ref.abs().max().item()
                assert torch.allclose(fc[i], ref, rtol=64 * eps_of(torch.float64), atol=tol), (
                    i,
                    (fc[i] - ref).abs().max(),
                )
            fc.sum().backward()
            assert torch.isfinite(padded.grad).all()
            assert (padded.grad[~mask] == 0).all(), "masked points must get zero gradient"


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_feature_centroid_mask_ignores_any_finite_padding(dtype):
    """Masked slots may hold anything finite (e.g. uninitialised memory); it must not leak in."""
    g = gen("pad")
    C, N, D = 2, 5, 4
    v = torch.randn(C, N, D, generator=g, dtype=dtype)
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)
    big = torch.finfo(dtype).max / 16
    padded = torch.where(mask[..., None], v, torch.full_like(v, big))
    fc = L.feature_centroid(padded, k=1.0, mask=mask)
    for i in range(C):
        ref = L.feature_centroid(v[i][mask[i]][None], k=1.0)[0]
        assert torch.allclose(fc[i], ref, rtol=1e-12, atol=0), (
            f"padding {big:.3g} leaked into class {i}: {fc[i]} vs {ref}"
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_feature_centroid_any_batch_shape(dtype):
    """v is [..., N, D] (docstring): an unbatched [N, D] and a [B, C, N, D] batch work like [C, N, D]."""
    g = gen("shape")
    v = torch.randn(2, 3, 5, 4, generator=g, dtype=dtype)
    ref = torch.stack([L.feature_centroid(v[b], k=1.0) for b in range(2)])
    assert ref.shape == (2, 3, 5)
    one = L.feature_centroid(v[0, 0], k=1.0)
    assert one.shape == (5,) and torch.allclose(one, ref[0, 0], rtol=1e-12, atol=0)
    four = L.feature_centroid(v, k=1.0)
    assert four.shape == (2, 3, 5) and torch.allclose(four, ref, rtol=1e-12, atol=0)


def test_centroid_dim_and_weights_layout():
    """dim selects the points axis; weights are laid out like the points (x.shape[:-1])."""
    g = gen("dim")
    x = L.expmap0(torch.randn(4, 3, 5, generator=g, dtype=torch.float64), k=2.0)  # N=4 points, B=3 groups
    w = torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.1
    ref_u = L.centroid(x.transpose(0, 1), k=2.0)  # [B, D+1]
    assert torch.allclose(L.centroid(x, k=2.0, dim=0), ref_u, rtol=1e-13, atol=0)
    assert torch.allclose(L.centroid(x, k=2.0, dim=-3, keepdim=True), ref_u[None], rtol=1e-13, atol=0)
    assert L.centroid(x, k=2.0, dim=1, keepdim=True).shape == (4, 1, 6)
    ref_w = L.centroid(x.transpose(0, 1), k=2.0, weights=w.T)
    assert torch.allclose(L.centroid(x, k=2.0, dim=0, weights=w), ref_w, rtol=1e-13, atol=0)
    # square layout: the weights must not silently be read transposed
    xs, ws = x[:3], w[:3]
    assert torch.allclose(
        L.centroid(xs, k=2.0, dim=0, weights=ws),
        L.centroid(xs.transpose(0, 1), k=2.0, weights=ws.T),
        rtol=1e-13,
        atol=0,
    )


# ----------------------------------------------------------------------------- precision far out


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("k", KS)
def test_tight_cluster_far_out(k, D, dtype):
    """8 points at radius ~9.5 sqrt(k), angular spread ~1e-3: the textbook Law normaliser cancels."""
    sk = math.sqrt(k)
    g = gen("cluster", k, D)
    N = 8
    u = torch.randn(D, generator=g, dtype=torch.float64)
    u = u / u.norm()
    dirs = u + 1e-3 * torch.randn(N, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    radii = 9.5 * sk * (1 + 1e-3 * torch.randn(N, 1, generator=g, dtype=torch.float64))
    v = (dirs * radii).to(dtype)
    ref = ref_centroid([ref_point(feature(row), k) for row in v], k)
    r_ref = float(ref.radius(k))
    x = L.expmap0(v, k=k)
    errs = {}
    for name, c in {"centroid": L.centroid(x, k=k), "feature_centroid": L.feature_centroid(v[None], k=k)[0]}.items():
        r = float(L.dist0(c.double(), k=k))
        assert abs(r - r_ref) <= 1e-4 * r_ref, f"{name}: radius {r!r} vs {r_ref!r}"
        errs[name] = check_centroid(c, ref, k, dtype, name)
        assert errs[name] <= 1e-3 * sk, f"{name}: distance to the reference centroid {errs[name]:.3e}"
    if dtype == torch.float32:
        naive = naive_law(x, k)
        d_naive = float(ref_dist(RefPoint.of(naive), ref, k))
        r_naive = float(L.dist0(naive.double(), k=k))
        # it fails both bounds the stable forms meet, by a wide margin
        assert d_naive > 1e-3 * sk and d_naive > 10 * max(errs.values()), (d_naive, errs)
        assert not abs(r_naive - r_ref) <= 1e-4 * r_ref, (r_naive, r_ref)


# ----------------------------------------------------------------------------- gradcheck (float64)


def _gc(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("k", [0.5, 2.0])
def test_gradcheck_maps(k):
    g = gen("gc", k)
    sk = math.sqrt(k)
    kk = torch.tensor(k, dtype=torch.float64, requires_grad=True)
    v = (torch.randn(4, 3, generator=g, dtype=torch.float64) * sk).requires_grad_()
    _gc(lambda a: L.expmap0(a, k=k), v)
    _gc(lambda a, kt: L.expmap0(a, k=kt), v, kk)
    # clamp at 1.5: rows clearly inside and clearly outside the clamp, none on it
    vc = torch.randn(4, 3, generator=g, dtype=torch.float64)
    vc = vc / vc.norm(dim=-1, keepdim=True) * torch.tensor([[0.4], [1.2], [2.5], [4.0]], dtype=torch.float64) * sk
    vc.requires_grad_()
    _gc(lambda a: L.expmap0(a, k=k, max_norm=1.5), vc)
    _gc(lambda a, kt: L.expmap0(a, k=kt, max_norm=1.5), vc, kk)
    _gc(lambda a: L.radius0(a, k=k, max_norm=1.5), vc)
    x = L.expmap0(v.detach(), k=k).requires_grad_()
    y = L.expmap0(torch.randn(4, 3, generator=g, dtype=torch.float64) * sk, k=k).requires_grad_()
    _gc(lambda a: L.logmap0(a, k=k), x)
    _gc(lambda a: L.dist0(a, k=k), x)
    _gc(lambda a, b: L.dist(a, b, k=k), x, y)
    _gc(lambda a, b, kt: L.dist(a, b, k=kt), x, y, kk)
    _gc(lambda a, b: L.inner(a, b), x, y)
    _gc(lambda a: L.project(a, k=k), x)
    _gc(lambda a: L.to_poincare(a, k=k), x)
    p = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    _gc(lambda a: L.from_poincare(a, k=k), p)
    r = (torch.tensor([0.3, 1.0, 2.5, 6.0], dtype=torch.float64) * sk).requires_grad_()
    _gc(lambda a: L.hierarchical_weight(a, k=k), r)
    _gc(lambda a, kt: L.hierarchical_weight(a, k=kt), r, kk)


@pytest.mark.parametrize("k", [0.5, 2.0])
def test_gradcheck_centroids(k):
    g = gen("gcc", k)
    sk = math.sqrt(k)
    kk = torch.tensor(k, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * sk * 1.5
    x = L.expmap0(v, k=k).requires_grad_()
    w = (torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    _gc(lambda a: L.centroid(a, k=k), x)
    _gc(lambda a, b: L.centroid(a, k=k, weights=b), x, w)
    _gc(lambda a, kt: L.centroid(a, k=kt), x, kk)
    v.requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    _gc(lambda a: L.feature_centroid(a, k=k), v)
    _gc(lambda a, kt: L.feature_centroid(a, k=kt), v, kk)
    _gc(lambda a, b, kt: L.feature_centroid(a, k=kt, weights=b, hierarchical=True, mask=mask), v, w, kk)
    # clamp at 2.0 with no row on the boundary
    vd = v.detach()
    radii = torch.tensor([[0.5, 1.0, 3.0], [2.5, 1.5, 4.0]], dtype=torch.float64)[..., None] * sk
    vc = (vd / vd.norm(dim=-1, keepdim=True) * radii).requires_grad_()
    _gc(lambda a, kt: L.feature_centroid(a, k=kt, max_norm=2.0, hierarchical=True), vc, kk)
    # the HDD loss: distance of two feature centroids, k learnable
    s = (torch.randn(2, 2, 4, generator=g, dtype=torch.float64) * sk).requires_grad_()
    _gc(lambda a, b, kt: L.dist(L.feature_centroid(a, k=kt), L.feature_centroid(b, k=kt), k=kt), v, s, kk)


# ----------------------------------------------------------------------------- finite gradients


def _hdd(real, syn, k, max_norm):
    return L.dist(
        L.feature_centroid(real, k=k, max_norm=max_norm), L.feature_centroid(syn, k=k, max_norm=max_norm), k=k
    )


@pytest.mark.parametrize("max_norm", [None, 10.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("k", [0.2, 1.0, 3.0])
def test_gradients_finite_at_extremes(k, dtype, max_norm):
    """Synthetic feature norms from 0 (and 1e-30) to 1e4, one or four per class: finite, correct loss and gradient."""
    sk = math.sqrt(k)
    C, D = 3, 8
    e = eps_of(dtype)
    real = (torch.randn(C, 16, D, generator=gen("real", k), dtype=torch.float64) * 2 * sk).to(dtype)
    ref_real = [ref_centroid([ref_point(feature(row), k, max_norm) for row in real[c]], k) for c in range(C)]
    cap = max_norm if max_norm is not None else L.SAFE_RADIUS
    for N in (1, 4):
        for size in (0.0, 1e-30, 1e-3, 1.0, 1e2, 1e4):
            s0 = torch.randn(C, N, D, generator=gen("syn", k, N), dtype=torch.float64)
            syn = (s0 / s0.norm(dim=-1, keepdim=True) * size).to(dtype).requires_grad_()
            loss = _hdd(real, syn, k, max_norm)
            loss.sum().backward()
            loss = loss.detach()
            where = f"N={N} |s|={size}"
            assert torch.isfinite(loss).all(), f"{where}: loss {loss}"
            assert torch.isfinite(syn.grad).all(), f"{where}: grad {syn.grad}"
            for c in range(C):
                # the distance of the two exact centroids; points out to radius 300 sqrt(k) make the
                # reference mean cancel ~2 * 300 / ln(10) = 260 digits, so it works with 400
                with mp.workdps(400):
                    ref_syn = ref_centroid([ref_point(feature(row), k, cap) for row in syn[c].detach()], k)
                    ref = float(ref_dist(ref_real[c], ref_syn, k))
                    r_c = float(ref_real[c].radius(k))
                tol = REL * e * ref + CENTROID * e * float(ref_real[c].x0)
                assert abs(float(loss[c]) - ref) <= tol, f"{where} class {c}: loss {float(loss[c])!r} vs {ref!r}"
                if N == 1 and size >= 1e4:
                    # a single far point at radius R = min(|s|, cap sqrt k): R - r_c <= d <= R + r_c
                    big_r = min(size, cap * sk)
                    assert big_r - r_c - 1e-9 * big_r <= float(loss[c]) <= big_r + r_c + 1e-9 * big_r
            if size > cap * sk:
                # saturated: only directions carry gradient, so the gradient is orthogonal to s
                sd, gd = syn.detach().double(), syn.grad.double()
                radial = (gd * sd).sum(-1) / size
                assert (radial.abs() <= 1e-6 * gd.norm(dim=-1)).all(), f"{where}: radial gradient {radial}"


@pytest.mark.parametrize("max_norm", [None, 10.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("k", [0.2, 1.0, 3.0])
def test_gradient_zero_when_centroids_coincide(k, dtype, max_norm):
    for N in (1, 5):
        for size in (0.0, 1e-30, 1.0, 30.0, 1e4):
            s0 = torch.randn(2, N, 6, generator=gen("coincide", k, N), dtype=torch.float64)
            s = (s0 / s0.norm(dim=-1, keepdim=True) * size * math.sqrt(k)).to(dtype).requires_grad_()
            d = _hdd(s, s.detach(), k, max_norm)
            assert (d == 0).all(), f"N={N} |s|={size}: d = {d}"
            d.sum().backward()
            assert torch.isfinite(s.grad).all() and (s.grad == 0).all(), f"N={N} |s|={size}: grad {s.grad}"
            # plain dist of a point with itself (clamped: unclamped expmap0 overflows float32 beyond t = 88)
            x = L.expmap0(s.detach()[0], k=k, max_norm=10.0 if max_norm is None else max_norm).requires_grad_()
            dd = L.dist(x, x.detach(), k=k)
            dd.sum().backward()
            assert (dd == 0).all() and torch.isfinite(x.grad).all() and (x.grad == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_gradients_finite_at_origin(dtype):
    for k in KS:
        sk = math.sqrt(k)
        v = torch.zeros(3, 4, dtype=dtype, requires_grad=True)
        x = L.expmap0(v, k=k)
        assert torch.equal(x[:, 1:], torch.zeros(3, 4, dtype=dtype))
        assert torch.allclose(x[:, 0], torch.full((3,), sk, dtype=dtype))
        r = L.dist0(x, k=k)
        out = r.sum() + L.logmap0(x, k=k).sum() + L.to_poincare(x, k=k).sum() + L.hierarchical_weight(r, k=k).sum()
        out.backward()
        assert torch.isfinite(v.grad).all()
        # d/dv logmap0(expmap0(v)) is the identity, also at v = 0
        v3 = torch.zeros(4, dtype=dtype, requires_grad=True)
        L.logmap0(L.expmap0(v3, k=k), k=k).sum().backward()
        assert torch.allclose(v3.grad, torch.ones(4, dtype=dtype))
        v2 = torch.zeros(1, 3, 4, dtype=dtype, requires_grad=True)
        c = L.feature_centroid(v2, k=k)
        assert torch.allclose(c.double(), torch.tensor([[sk, 0, 0, 0, 0]], dtype=torch.float64))
        (L.dist0(c, k=k).sum() + c.sum()).backward()
        assert torch.isfinite(v2.grad).all()
        # the centroid of zero features moves like their mean: d(sum c_s)/dv = 1/N
        assert torch.allclose(v2.grad.double(), torch.full((1, 3, 4), 1 / 3, dtype=torch.float64), rtol=1e-6)


# ----------------------------------------------------------------------------- geoopt agreement


@pytest.mark.parametrize("D", [2, 64])
@pytest.mark.parametrize("k", KS)
def test_agrees_with_geoopt(k, D):
    """float64, radii up to 3 sqrt(k) (where geoopt's textbook forms are accurate)."""
    kt = torch.tensor(k, dtype=torch.float64)  # a float64 k, or geoopt silently computes in float32
    man = geoopt.Lorentz(k=kt)
    g = gen("geoopt", k, D)
    sk = math.sqrt(k)
    u = torch.randn(6, D, generator=g, dtype=torch.float64)
    radii = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 3.0], dtype=torch.float64)[:, None] * sk
    v = (u / u.norm(dim=-1, keepdim=True) * radii)[torch.randperm(6, generator=g)]
    xg = man.expmap0(torch.cat((torch.zeros(6, 1, dtype=torch.float64), v), dim=-1))
    x = L.expmap0(v, k=k)
    assert torch.allclose(x, xg, rtol=1e-12, atol=1e-12 * sk)
    y = x.roll(1, 0)
    assert torch.allclose(L.inner(x, y), man.inner(x, x, y), rtol=1e-12, atol=1e-12 * k)
    lg = man.logmap0(x)
    assert torch.allclose(lg[:, 0], torch.zeros(6, dtype=torch.float64), atol=1e-9 * sk)
    assert torch.allclose(L.logmap0(x, k=k), lg[:, 1:], rtol=1e-9, atol=1e-12 * sk)
    assert torch.allclose(L.dist(x, y, k=k), man.dist(x, y), rtol=1e-9, atol=0)
    assert torch.allclose(L.dist0(x, k=k), man.dist0(x), rtol=1e-9, atol=0)
    raw = x.clone()
    raw[:, 0] = torch.rand(6, generator=g, dtype=torch.float64)
    assert torch.allclose(L.project(raw, k=k), man.projx(raw), rtol=1e-13, atol=0)
    p = L.to_poincare(x, k=k)
    assert torch.allclose(p, gmath.lorentz_to_poincare(x, kt), rtol=1e-13, atol=0)
    assert torch.allclose(L.from_poincare(p, k=k), gmath.poincare_to_lorentz(p, kt, eps=0.0), rtol=1e-12, atol=0)
    # geoopt's default eps=1e-6 in the denominator: loose agreement only
    assert torch.allclose(L.from_poincare(p, k=k), gmath.poincare_to_lorentz(p, kt), rtol=1e-3, atol=0)
    # Law centroid vs the naive composition the official HDD code uses
    for w in (None, torch.rand(6, generator=g, dtype=torch.float64) + 0.1):
        m = xg.mean(-2) if w is None else (w[:, None] * xg).sum(-2) / w.sum()
        cg = sk * m / man.inner(m, m, m).abs().sqrt()
        assert torch.allclose(L.centroid(x, k=k, weights=w), cg, rtol=1e-10, atol=0)
        fw = None if w is None else w[None]
        assert torch.allclose(L.feature_centroid(v[None], k=k, weights=fw)[0], cg, rtol=1e-10, atol=0)


def test_feature_centroid_hierarchical_far_out_in_float32():
    """Hierarchical weights t / sinh(t), no clamp, a point near the origin beside points at radius 95-105:
    float32 features give the float64 centroid (to float32 rounding) and finite gradients. Rescaling the
    weights by the largest e^{-t} made them underflow float32 (zero centroid space part, NaN gradients)."""
    g = torch.Generator().manual_seed(41)
    x = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    v = x / x.norm(dim=-1, keepdim=True) * (95.0 + 10.0 * torch.rand(2, 7, 1, generator=g, dtype=torch.float64))
    v[:, 0] *= 1e-10  # one point at |v| ~ 1e-8
    w = torch.rand(2, 7, generator=g, dtype=torch.float64) + 0.1
    v32 = v.float().requires_grad_()
    got = L.feature_centroid(v32, k=1.0, hierarchical=True, weights=w.float())
    want = L.feature_centroid(v32.detach().double(), k=1.0, hierarchical=True, weights=w.float().double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(got[..., 1:].sum(), v32)
    assert torch.isfinite(grad).all()
