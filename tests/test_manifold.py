r"""Tests of :class:`hyperdm.StableLorentz` (geoopt's Lorentz manifold, stable forms).

References are independent of the module: the textbook formulas written below in float64
(``acosh``, ``cosh(t) x + sinh(t)/t u``, ``v + <y,v>/(k - <x,y>) (x + y)``, ...) at radii and step
lengths where float64 holds them to better than 1e-11 relative, and 50-digit mpmath where a test
goes where float64's textbook forms fail (near-coincident points far out). Invariants are
geoopt's: points stay on the hyperboloid, tangent vectors stay tangent, ``logmap(expmap)`` round
trips, parallel transport preserves inner products; then geoopt's tensors and optimizers.
"""

from __future__ import annotations

import math
import subprocess
import sys

import mpmath
import pytest
import torch

import hyperdm
from hyperdm import StableLorentz
from hyperdm import lorentz as L

# isort: split
import geoopt  # after hyperdm, which imports it (test_import_is_silent below covers the import itself)

F64 = torch.float64
KS = [0.5, 2.0]
DIMS = [2, 16]
ALL = [(k, d) for k in KS for d in DIMS]


def gen(*parts) -> torch.Generator:
    s = 0
    for ch in repr(parts):
        s = (s * 131 + ord(ch)) % 2_147_483_647
    return torch.Generator().manual_seed(s)


# ----------------------------------------------------------------------------- float64 textbook


def mink(a, b):
    return -a[..., 0] * b[..., 0] + (a[..., 1:] * b[..., 1:]).sum(-1)


def t_point(xs, k):
    return torch.cat((torch.sqrt(k + xs.square().sum(-1, keepdim=True)), xs), -1)


def t_proju(x, v, k):
    return v + mink(x, v).unsqueeze(-1) * x / k


def t_dist(x, y, k):
    return math.sqrt(k) * torch.acosh(-mink(x, y) / k)


def t_expmap(x, u, k):
    n = mink(u, u).sqrt().unsqueeze(-1)
    t = n / math.sqrt(k)
    return torch.cosh(t) * x + math.sqrt(k) * torch.sinh(t) * u / n


def t_logmap(x, y, k):
    nomin = y + mink(x, y).unsqueeze(-1) * x / k
    return t_dist(x, y, k).unsqueeze(-1) * nomin / mink(nomin, nomin).sqrt().unsqueeze(-1)


def t_transp(x, y, v, k):
    return v + (mink(y, v) / (k - mink(x, y))).unsqueeze(-1) * (x + y)


def sample(k, d, n=200, radius=2.0, step=(0.1, 2.0), seed=0):
    """Points at radii ``0.1 .. radius`` (units of sqrt k; float64's ``acosh`` is accurate there), tangent
    vectors of lengths in ``step`` (units of sqrt k)."""
    g = gen(k, d, n, radius, step, seed)
    sk = math.sqrt(k)
    xs = torch.randn(n, d, generator=g, dtype=F64)
    xs = (
        xs
        / xs.norm(dim=-1, keepdim=True)
        * sk
        * torch.sinh(0.1 + (radius - 0.1) * torch.rand(n, 1, generator=g, dtype=F64))
    )
    x = t_point(xs, k)

    def tangent():
        u = t_proju(x, torch.randn(n, d + 1, generator=g, dtype=F64), k)
        length = step[0] + (step[1] - step[0]) * torch.rand(n, 1, generator=g, dtype=F64)
        return u / mink(u, u).sqrt().unsqueeze(-1) * length * sk

    return x, tangent(), tangent()


def close(a, b, rtol):
    """``|a - b| <= rtol * max|b|`` row-wise (ambient vectors are compared on their own scale)."""
    scale = b.abs().amax(-1, keepdim=True) if b.dim() > 1 else b.abs()
    assert bool(((a - b).abs() <= rtol * scale).all()), float(((a - b).abs() / scale).max())


# ----------------------------------------------------------------------------- the class


@pytest.mark.slow
def test_import_is_silent():
    """``import hyperdm`` imports geoopt and emits no warning, even with warnings as errors."""
    code = "import sys, hyperdm; assert 'geoopt' in sys.modules"
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stderr == "" and out.stdout == "", out.stderr


def test_is_a_geoopt_lorentz_with_k_like_geoopt():
    m = StableLorentz(k=2.0)
    g = geoopt.Lorentz(k=2.0)
    assert isinstance(m, geoopt.Lorentz) and hyperdm.StableLorentz is StableLorentz
    assert isinstance(m.k, torch.nn.Parameter) and not m.k.requires_grad
    assert m.k.dtype == g.k.dtype and float(m.k) == 2.0
    assert StableLorentz(k=torch.tensor(0.3, dtype=F64), learnable=True).k.requires_grad
    assert next(iter(StableLorentz(learnable=True).parameters())).requires_grad


@pytest.mark.parametrize("k", [0.0, -1.0, float("nan"), float("inf"), [1.0, 2.0]])
def test_bad_k_names_the_convention(k):
    with pytest.raises(ValueError, match="k must be one finite number > 0"):
        StableLorentz(k=torch.tensor(k) if isinstance(k, list) else k)


# ----------------------------------------------------------------------------- against textbook float64


@pytest.mark.parametrize("k,d", ALL)
def test_maps_match_textbook_float64(k, d):
    m = StableLorentz(k=torch.tensor(k, dtype=F64))
    x, u, v = sample(k, d)
    y = t_expmap(x, u, k)
    close(m.expmap(x, u), y, 1e-12)
    close(m.retr(x, u), y, 1e-12)
    close(m.logmap(x, y), t_logmap(x, y, k), 1e-10)
    close(m.dist(x, y), t_dist(x, y, k), 1e-12)
    close(m.transp(x, y, v), t_transp(x, y, v, k), 1e-10)
    close(m.proju(x, v), v, 1e-12)  # already tangent
    w = torch.randn(x.shape, generator=gen(k, d, "w"), dtype=F64)
    close(m.proju(x, w), t_proju(x, w, k), 1e-12)
    g = w.clone()
    close(m.egrad2rgrad(x, g), t_proju(x, g * torch.tensor([-1.0] + [1.0] * d, dtype=F64), k), 1e-12)
    assert torch.equal(g, w)  # geoopt's egrad2rgrad flips the sign of the gradient's time part in place; ours does not
    close(m.inner(x, u, v), mink(u, v), 1e-12)
    close(m.inner(None, w, x), mink(w, x), 1e-15)
    close(m.norm(u, x=x), mink(u, u).sqrt(), 1e-12)
    close(m.norm(u), mink(u, u).sqrt(), 1e-10)
    # origin forms
    o = torch.zeros_like(x)
    o[:, 0] = math.sqrt(k)
    u0 = torch.cat((torch.zeros_like(u[:, :1]), u[:, 1:]), -1)
    close(m.expmap0(u0), t_expmap(o, u0, k), 1e-12)
    close(m.logmap0(x), t_logmap(o, x, k), 1e-12)
    close(m.logmap0back(x), t_logmap(x, o, k), 1e-10)
    close(m.dist0(x), t_dist(o, x, k), 1e-12)
    close(m.inner0(v), mink(o, v), 1e-15)
    close(m.transp0(x, u0), t_transp(o, x, u0, k), 1e-10)
    close(m.transp0back(x, v), t_transp(x, o, v, k), 1e-10)
    yt, vt = m.retr_transp(x, u, v)
    close(yt, y, 1e-12)
    close(vt, t_transp(x, y, v, k), 1e-10)
    close(m.transp_follow_expmap(x, u, v), t_transp(x, y, v, k), 1e-10)
    close(m.transp_follow_retr(x, u, v), t_transp(x, y, v, k), 1e-10)
    unit = u / mink(u, u).sqrt().unsqueeze(-1)
    tt = torch.rand(x.shape[0], 1, generator=gen(k, d, "t"), dtype=F64) * 2
    close(
        m.geodesic_unit(tt, x, unit),
        torch.cosh(tt / math.sqrt(k)) * x + math.sqrt(k) * torch.sinh(tt / math.sqrt(k)) * unit,
        1e-12,
    )


@pytest.mark.parametrize("k,d", ALL)
def test_invariants_points_tangents_round_trips_transport(k, d):
    """geoopt's invariants: valid points and tangents, log/exp round trips, transport is an isometry."""
    m = StableLorentz(k=torch.tensor(k, dtype=F64))
    x, u, v = sample(k, d, radius=3.0, step=(1e-6, 3.0))
    y = m.expmap(x, u)
    assert m.check_point_on_manifold(y, atol=0, rtol=1e-14)
    assert m.check_vector_on_tangent(x, m.logmap(x, y), atol=0, rtol=1e-13)
    close(m.logmap(x, y), u, 1e-9)
    close(m.expmap(x, m.logmap(x, y)), y, 1e-12)
    close(m.logmap0(m.expmap0(m.logmap0(y))), m.logmap0(y), 1e-13)
    for pv in (m.transp(x, y, v), m.transp(x, y, u)):
        assert m.check_vector_on_tangent(y, pv, atol=0, rtol=1e-12)
    pu, pv = m.transp(x, y, u), m.transp(x, y, v)
    close(m.inner(y, pu, pv), m.inner(x, u, v), 1e-10)
    close(m.inner(y, pv), m.inner(x, v), 1e-10)
    close(pu, -m.logmap(y, x), 1e-9)  # the geodesic's velocity is transported to its velocity
    close(m.transp(y, x, pv), v, 1e-9)  # transport back
    # the Riemannian gradient represents the differential: <grad f, w>_x = df(w) = g . w
    g = torch.randn(x.shape, generator=gen(k, d, "g"), dtype=F64)
    close(m.inner(x, m.egrad2rgrad(x, g), v), (g * v).sum(-1), 1e-11)


@pytest.mark.parametrize("a", [5.0, 9.0, 15.0])
@pytest.mark.parametrize("frac", [0.5, 1.0, 1.5, 2.0])
def test_expmap_towards_and_past_the_origin(a, frac):
    """A radial step of ``frac * a`` from radius ``a`` (units of sqrt k) on the hyperbolic line (D = 1, so
    the step has no sideways part to amplify): the point at signed radius ``a (1 - frac)``. The textbook
    ``cosh(t) x + sinh(t)/t u`` subtracts two numbers of size ``e^(a+t)`` to get one of size ``e^|a-t|``."""
    k = 2.0
    sk = math.sqrt(k)
    m = StableLorentz(k=torch.tensor(k, dtype=F64))
    x = torch.tensor([[sk * math.cosh(a), sk * math.sinh(a)]], dtype=F64)
    y = m.expmap(x, m.logmap0back(x) * frac)
    b = a * (1.0 - frac)
    eps = torch.finfo(F64).eps
    assert abs(float(y[0, 1]) - sk * math.sinh(b)) <= 4 * eps * sk * (a + a * frac) * math.cosh(b)
    assert abs(float(y[0, 0]) - sk * math.cosh(b)) <= 4 * eps * sk * (a + a * frac) * math.cosh(b)


def test_tiny_and_zero_steps_are_exact_and_finite():
    k = 2.0
    m = StableLorentz(k=torch.tensor(k, dtype=F64))
    x, u, _ = sample(k, 8, n=50, radius=3.0, step=(1.0, 1.0))
    eps = torch.finfo(F64).eps
    for s in (0.0, 1e-300, 1e-12):
        y = m.expmap(x, s * u)
        close(y, x + s * u, 2 * eps)
        # to the rounding of y's coordinates (eps |x|), which is all that is left of a step this small
        assert bool(((m.logmap(x, y) - s * u).abs() <= 4 * eps * x.abs().amax(-1, keepdim=True)).all())
    assert torch.equal(m.logmap(x, x), torch.zeros_like(x))
    assert torch.equal(m.norm(torch.zeros(5)), torch.tensor(0.0))
    u0 = torch.zeros(3, 5, dtype=F64, requires_grad=True)
    m.norm(u0).sum().backward()
    assert torch.isfinite(u0.grad).all()


# ----------------------------------------------------------------------------- float32 far out


@pytest.mark.parametrize("radius", [3.0, 5.0, 9.0])
def test_float32_dist_of_close_points_far_out(radius):
    """Points 1e-3 sqrt(k) apart at radius ``radius sqrt(k)``, float32: against 50-digit mpmath on the
    rounded inputs (read by their space parts). The textbook acosh form is off by orders of magnitude."""
    k = 2.0
    mpmath.mp.dps = 50
    m = StableLorentz(k=k)
    x, u, _ = sample(k, 16, n=32, radius=radius, step=(1e-3, 1e-3))
    x = t_point(x[:, 1:] / x[:, 1:].norm(dim=-1, keepdim=True) * math.sqrt(k) * math.sinh(radius), k)
    y = m.expmap(x, u)
    x32, y32 = x.float(), y.float()
    d = m.dist(x32, y32)
    assert d.dtype == torch.float32
    refs = []
    for i in range(32):
        xs = [mpmath.mpf(float(a)) for a in x32[i, 1:].double()]
        ys = [mpmath.mpf(float(a)) for a in y32[i, 1:].double()]
        x0 = mpmath.sqrt(k + sum(a * a for a in xs))
        y0 = mpmath.sqrt(k + sum(a * a for a in ys))
        ref = mpmath.sqrt(k) * mpmath.acosh((x0 * y0 - sum(a * b for a, b in zip(xs, ys, strict=True))) / k)
        assert abs(float(d[i]) - ref) <= 1e-6 * ref, (i, float(d[i]), float(ref))
        refs.append(float(ref))
    # the same inputs through geoopt's textbook form (documents what StableLorentz is for)
    ref = torch.tensor(refs, dtype=F64)
    rel = ((geoopt.Lorentz(k=k).dist(x32, y32).double() - ref) / ref).abs()
    assert not bool((rel <= 1e-2).all())  # off by more than 1 % somewhere, or NaN


def test_float32_maps_far_out_stay_valid():
    """float32 at radius 5 sqrt(k): results are on the manifold and tangent to float32 rounding, and
    log/exp round trip as well as the rounded inputs allow."""
    k = 2.0
    m = StableLorentz(k=k)
    x, u, v = sample(k, 16, n=100, radius=5.0, step=(1e-3, 2.0))
    x32, u32, v32 = m.projx(x.float()), m.proju(x.float(), u.float()), m.proju(x.float(), v.float())
    eps = torch.finfo(torch.float32).eps
    y = m.expmap(x32, u32)
    assert m.check_point_on_manifold(y, atol=0, rtol=2 * eps)
    for w in (m.logmap(x32, y), m.egrad2rgrad(x32, v32), m.proju(x32, torch.randn(x32.shape, generator=gen("p")))):
        assert m.check_vector_on_tangent(x32, w, atol=0, rtol=4 * eps)
    assert m.check_vector_on_tangent(y, m.transp(x32, y, v32), atol=0, rtol=4 * eps)
    # log(exp(u)) = u to the accuracy of u's rounding (relative to its Riemannian length)
    back = m.logmap(x32, y).double() - u32.double()
    assert float((m.norm(back, x=x32.double()) / m.norm(u32.double(), x=x32.double())).max()) < 1e-4


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_float32_radial_step_far_out(sign):
    """float32, radius 10 sqrt(k) (HDD's clamp radius), on the hyperbolic line (D = 1, no sideways rounding):
    a radial tangent step of 0.01 sqrt(k) travels that distance to 1e-4, however the rounding of its
    time part fell (geoopt's expmap reads it through proju: several percent off here)."""
    k = 2.0
    sk = math.sqrt(k)
    x = torch.tensor([[sk * math.cosh(10.0), sk * math.sinh(10.0)]])
    u = sign * 0.01 * sk * torch.tensor([[math.sinh(10.0), math.cosh(10.0)]])
    d = L.dist(x.double(), StableLorentz(k=k).expmap(x, u).double(), k=k)
    assert abs(float(d) - 0.01 * sk) <= 1e-4 * 0.01 * sk, float(d)
    d = L.dist(x.double(), geoopt.Lorentz(k=k).expmap(x, u).double(), k=k)
    assert abs(float(d) - 0.01 * sk) > 1e-2 * 0.01 * sk


def test_float32_inner_of_radial_vectors_far_out():
    """The metric of a radial tangent vector at radius 5 sqrt(k) is ``cosh(5)^2`` (5500) times smaller than
    its Minkowski terms: against 50-digit mpmath on the rounded space parts."""
    k = 2.0
    mpmath.mp.dps = 50
    m = StableLorentz(k=k)
    x, u, _ = sample(k, 16, n=16, radius=5.0)
    x = t_point(x[:, 1:] / x[:, 1:].norm(dim=-1, keepdim=True) * math.sqrt(k) * math.sinh(5.0), k).float()
    u = m.proju(x, m.logmap0back(x) + 1e-3 * u.float())  # nearly radial
    got = m.inner(x, u)
    for i in range(16):
        xs = [mpmath.mpf(float(a)) for a in x[i, 1:].double()]
        us = [mpmath.mpf(float(a)) for a in u[i, 1:].double()]
        x0sq = k + sum(a * a for a in xs)
        ref = sum(a * a for a in us) - sum(a * b for a, b in zip(xs, us, strict=True)) ** 2 / x0sq
        assert abs(float(got[i]) - ref) <= 1e-6 * ref, (i, float(got[i]), float(ref))


# ----------------------------------------------------------------------------- dim, keepdim, centroid


def test_dim_and_keepdim_follow_geoopt():
    k = 0.5
    m = StableLorentz(k=torch.tensor(k, dtype=F64))
    x, u, v = sample(k, 4, n=6)
    y = m.expmap(x, u)
    t = lambda a: a.T.contiguous()  # noqa: E731  coordinates on axis 0
    for name, args in [
        ("expmap", (x, u)),
        ("logmap", (x, y)),
        ("proju", (x, v)),
        ("egrad2rgrad", (x, v)),
        ("projx", (x,)),
        ("logmap0", (x,)),
        ("logmap0back", (x,)),
        ("transp0back", (x, v)),
    ]:
        close(t(getattr(m, name)(*map(t, args), dim=0)), getattr(m, name)(*args), 1e-14)
    close(t(m.transp(t(x), t(y), t(v), dim=0)), m.transp(x, y, v), 1e-14)
    for name, args in [("dist", (x, y)), ("dist0", (y,)), ("inner0", (v,)), ("norm", (u,))]:
        out = getattr(m, name)(*map(t, args), dim=0, keepdim=True)
        assert out.shape == (1, 6)
        close(out[0], getattr(m, name)(*args), 1e-14)
    assert m.inner(t(x), t(u), t(v), dim=0, keepdim=True).shape == (1, 6)
    close(m.inner(t(x), t(u), t(v), dim=0)[None], m.inner(x, u, v, keepdim=True).T, 1e-14)
    assert m.dist(x, y, keepdim=True).shape == (6, 1)


def test_centroid_matches_lorentz_and_checks_arguments():
    k = 2.0
    m = StableLorentz(k=k)
    x = L.expmap0(torch.randn(3, 5, 4, generator=gen("c"), dtype=F64) * 2, k=k)  # [3 groups, 5 points, 5]
    w = torch.rand(3, 5, generator=gen("w"), dtype=F64)
    c = m.centroid(x, weights=w)
    assert c.shape == (3, 5)
    close(c, L.centroid(x, k=k, weights=w), 0.0)
    # the weighted Law centroid from its definition
    mean = (w.unsqueeze(-1) * x).sum(1) / w.sum(1, keepdim=True)
    close(c, math.sqrt(k) * mean / (-mink(mean, mean)).sqrt().unsqueeze(-1), 1e-12)
    close(m.centroid(x.transpose(0, 1), weights=w.T, dim=0, keepdim=True)[0], c, 1e-14)
    close(m.centroid(x, dim=1), m.centroid(x), 0.0)
    assert m.check_point_on_manifold(c, atol=0, rtol=1e-14)
    with pytest.raises(ValueError, match="coordinate axis"):
        m.centroid(x, dim=-1)
    with pytest.raises(ValueError, match="weights must have"):
        m.centroid(x, weights=w.T)
    with pytest.raises(ValueError, match="points"):
        m.centroid(x[0, 0])


def test_gradcheck():
    k = 2.0
    m = StableLorentz(k=torch.tensor(k, dtype=F64))
    x, u, v = sample(k, 3, n=4, radius=1.5, step=(0.2, 1.0))

    def f(xs, us, vs):
        xp = m.projx(torch.cat((xs[..., :1] * 0, xs), -1))
        up = m.proju(xp, torch.cat((us[..., :1] * 0, us), -1))
        y = m.expmap(xp, up)
        return (
            m.dist(y, m.centroid(y[None])).sum()
            + m.transp(xp, y, m.proju(xp, vs)).sum()
            + m.logmap(y, xp).sum()
            + m.inner(xp, up, vs).sum()
            + m.egrad2rgrad(xp, vs).sum()
        )

    args = (x[:, 1:].clone().requires_grad_(), u[:, 1:].clone().requires_grad_(), v.clone().requires_grad_())
    assert torch.autograd.gradcheck(f, args)


def test_learnable_k_gets_its_gradient():
    """d/dk of a loss through every kind of method, against a central difference in k."""
    x, u, v = sample(2.0, 3, n=4, radius=1.5, step=(0.2, 1.0))

    def loss(m):
        xp = m.projx(x)  # the same space parts, on this k's hyperboloid
        y = m.expmap(xp, m.proju(xp, u))
        return (
            m.dist(y, m.centroid(y[None])).sum()
            + m.dist0(y).sum()
            + m.transp(xp, y, m.proju(xp, v)).sum()
            + m.logmap(y, xp).sum()
            + m.logmap0(y).sum()
        )

    m = StableLorentz(k=torch.tensor(2.0, dtype=F64), learnable=True)
    loss(m).backward()
    h = 1e-6
    fd = (
        loss(StableLorentz(k=torch.tensor(2.0 + h, dtype=F64)))
        - loss(StableLorentz(k=torch.tensor(2.0 - h, dtype=F64)))
    ) / (2 * h)
    assert abs(float(m.k.grad) - float(fd)) <= 1e-7 * max(1.0, abs(float(fd))), (float(m.k.grad), float(fd))


# ----------------------------------------------------------------------------- geoopt tensors and optimizers


def test_manifold_tensors_and_parameters():
    m = StableLorentz(k=2.0)
    p = m.random_normal(7, 5, std=0.5)
    assert isinstance(p, geoopt.ManifoldTensor) and p.manifold is m and m.check_point_on_manifold(p)
    o = m.origin(3, 5)
    assert torch.equal(o[:, 0], torch.full((3,), math.sqrt(2.0))) and p.dtype == m.k.dtype
    q = geoopt.ManifoldParameter(p.data, manifold=m)
    close(q.dist(o[:1], p="g"), m.dist0(p), 1e-6)
    close(q.logmap(o[:1]), m.logmap(p, o[:1]), 0.0)
    assert m.check_point_on_manifold(q.expmap(q.proju(torch.randn(7, 5, generator=gen("q")))))


@pytest.mark.parametrize(
    "opt_cls,lr,power", [(geoopt.optim.RiemannianAdam, 0.05, 1), (geoopt.optim.RiemannianSGD, 0.2, 2)]
)
def test_optimizers_float32_far_out(opt_cls, lr, power):
    """float32 points at radius 3 sqrt(k) pulled to targets at that radius by a distance loss: they
    stay on the hyperboloid to float32 rounding, the optimizer state stays tangent, the loss drops."""
    k = 2.0
    m = StableLorentz(k=k)
    x0, _, _ = sample(k, 16, n=32, radius=3.0)
    x0 = t_point(x0[:, 1:] / x0[:, 1:].norm(dim=-1, keepdim=True) * math.sqrt(k) * math.sinh(3.0), k)
    tgt, _, _ = sample(k, 16, n=32, radius=3.0, seed=1)
    tgt = t_point(tgt[:, 1:] / tgt[:, 1:].norm(dim=-1, keepdim=True) * math.sqrt(k) * math.sinh(3.0), k)
    p = geoopt.ManifoldParameter(x0.float().clone(), manifold=m)
    opt = opt_cls([p], lr=lr)
    start = float(t_dist(x0, tgt, k).sum())
    for _ in range(150):
        opt.zero_grad()
        m.dist(p, tgt.float()).pow(power).sum().backward()
        opt.step()
    xd = p.detach().double()
    eps = torch.finfo(torch.float32).eps
    assert float(((xd[:, 0] - torch.sqrt(k + xd[:, 1:].square().sum(-1))) / xd[:, 0]).abs().max()) <= 4 * eps
    end = float(L.dist(xd, tgt, k=k).sum())
    assert end < 0.05 * start, (start, end)
    if opt_cls is geoopt.optim.RiemannianAdam:
        assert m.check_vector_on_tangent(p.detach(), opt.state[p]["exp_avg"], atol=1e-6, rtol=8 * eps)
