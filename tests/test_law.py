"""hyperdm.law: the one source of the centroid and distance maths, checked piece by piece against float64 math
(mpmath where cancellation matters) and shown to be what every caller runs."""

from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch

from hyperdm import fused, law, lorentz, pruning

F64 = torch.float64


@pytest.mark.parametrize(
    "tmax,dtype,hier,expected",
    [
        (10.0, torch.float32, False, False),  # the published clamp: no shift
        (40.0, torch.float32, False, False),
        (41.0, torch.float32, False, True),
        (law.SAFE_RADIUS, torch.float32, False, True),  # the exact map in float32
        (law.SAFE_RADIUS, torch.float64, False, False),  # float64 holds every weight up to SAFE_RADIUS
        (1.0, torch.float16, False, True),  # half precision: always
        (1.0, torch.bfloat16, False, True),
        (law.SAFE_RADIUS, torch.float32, True, False),  # hierarchical weights never overflow
    ],
)
def test_the_one_shift_rule(tmax, dtype, hier, expected):
    assert law.shift_needed(tmax, dtype, hierarchical=hier) is expected


def test_point_terms_against_mpmath():
    t = torch.tensor([1e-300, 1e-8, 1e-4, 0.5, 3.0, 40.0, 299.0], dtype=F64)
    w = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.25, 1.0, 3.0], dtype=F64)
    top = t.max()
    for hier in (False, True):
        got = law.point_terms(t, top=None if hier else top, weight=w, hierarchical=hier)
        with mp.workdps(60):
            for i, (ti, wi) in enumerate(zip(t.tolist(), w.tolist(), strict=True)):
                T = mp.mpf(0) if hier else mp.mpf(float(top))
                tm = mp.mpf(ti)
                ww = mp.mpf(wi) * (tm / mp.sinh(tm) if hier else 1)
                ref_b = ww * mp.sinh(tm) * mp.exp(-T)
                ref_c = ww * mp.cosh(tm) * mp.exp(-T)
                ref_em = ww * mp.exp(-tm - T)
                h = 1 / tm - mp.coth(tm) if hier else mp.mpf(0)
                ref_cb = ref_c + h * ref_b
                for name, ref in (("b", ref_b), ("c", ref_c), ("em", ref_em), ("cb", ref_cb)):
                    val = float(getattr(got, name)[i])
                    assert abs(val - float(ref)) <= 4e-15 * abs(float(ref)) + 1e-300, (hier, i, name, val, ref)
                if hier:
                    assert got.h is not None
                    assert abs(float(got.h[i]) - float(h)) <= 1e-12 * max(1.0, abs(float(h))), (i, float(got.h[i]))
        if not hier:
            assert got.h is None and torch.equal(got.cb, got.c)


def test_coefficient_is_sinh_over_norm_and_finite_at_zero():
    sk = math.sqrt(0.7)
    n = torch.tensor([0.0, 1e-3, 1.0, 20.0], dtype=F64)
    t = (n / sk).clamp(law.TINY, 10.0)
    b = law.point_terms(t).b
    g = law.coefficient(b, law.safe_norm(n, sk))
    assert g[0] == pytest.approx(1.0 / sk, rel=1e-15)  # the limit sinh(t)/|v| -> 1/sqrt(k)
    for i in range(1, 4):
        assert float(g[i]) == pytest.approx(math.sinh(float(t[i])) / float(n[i]), rel=1e-15)


def test_law_q_is_minus_the_lorentz_norm_of_the_weighted_sum():
    """For hyperboloid points exp_o(v_i) with equal weights, ``A_- A_+ + B S`` equals ``-<m,m>_L / k`` (the sum of
    the points over sqrt(k)), computed in mpmath."""
    g = torch.Generator().manual_seed(3)
    v = torch.randn(6, 4, generator=g, dtype=F64) * 1.5
    k = 0.6
    sk = math.sqrt(k)
    n = v.norm(dim=-1)
    t = n / sk
    b, c, em, _, _ = law.point_terms(t)
    ms = (law.coefficient(b, law.safe_norm(n, sk))[:, None] * v).sum(0)
    bsum = b.sum()
    ut = ms / bsum
    spread = (b * ((v / n[:, None]) - ut).square().sum(-1)).sum()
    q = law.law_q(em.sum(), (b + c).sum(), bsum, spread)
    with mp.workdps(50):
        m0 = mp.fsum(mp.cosh(mp.mpf(float(x))) for x in t)
        msv = [
            mp.fsum(mp.sinh(mp.mpf(float(t[i]))) * mp.mpf(float(v[i, j])) / mp.mpf(float(n[i])) for i in range(6))
            for j in range(4)
        ]
        ref = m0**2 - mp.fsum(x**2 for x in msv)
    assert float(q) == pytest.approx(float(ref), rel=1e-13)
    assert float(law.normaliser(q, sk)) == pytest.approx(sk / math.sqrt(float(ref)), rel=1e-13)


def _space(v: torch.Tensor, k: float) -> torch.Tensor:
    return lorentz.expmap0(v, k=k)[..., 1:]


@pytest.mark.parametrize("k", [0.3, 1.0, 4.0])
def test_chord_distance_against_acosh_in_mpmath(k):
    g = torch.Generator().manual_seed(int(k * 10))
    sk = math.sqrt(k)
    for scale in (1e-3, 0.5, 3.0, 9.0):
        x = torch.randn(5, 6, generator=g, dtype=F64) * scale * sk
        y = torch.randn(5, 6, generator=g, dtype=F64) * scale * sk
        xs, ys = _space(x, k), _space(y, k)
        a, b = xs.norm(dim=-1) / sk, ys.norm(dim=-1) / sk
        ux, uy = xs / xs.norm(dim=-1, keepdim=True), ys / ys.norm(dim=-1, keepdim=True)
        q = law.chord(torch.asinh(a) - torch.asinh(b), a * b, (ux - uy).square().sum(-1))
        d = law.chord_distance(q, sk)
        with mp.workdps(80):
            for i in range(5):
                px = [mp.sqrt(k + mp.fsum(mp.mpf(float(z)) ** 2 for z in xs[i]))] + [mp.mpf(float(z)) for z in xs[i]]
                py = [mp.sqrt(k + mp.fsum(mp.mpf(float(z)) ** 2 for z in ys[i]))] + [mp.mpf(float(z)) for z in ys[i]]
                inner = -px[0] * py[0] + mp.fsum(p * r for p, r in zip(px[1:], py[1:], strict=True))
                ref = mp.sqrt(k) * mp.acosh(-inner / k)
                assert float(d[i]) == pytest.approx(float(ref), rel=1e-12, abs=1e-15), (scale, i)


def test_chord_distance_is_zero_with_zero_gradient_at_coincidence():
    q = torch.zeros(3, dtype=F64, requires_grad=True)
    d = law.chord_distance(q, 1.3, 2.0)
    d.sum().backward()
    assert torch.equal(d.detach(), torch.zeros(3, dtype=F64)) and torch.equal(q.grad, torch.zeros(3, dtype=F64))


@pytest.mark.parametrize("k", [0.5, 2.0])
def test_chord_grad_is_the_gradient_of_the_distance(k):
    """chord_grad for each point of a pair equals autograd's gradient of lorentz.dist with respect to its space part."""
    g = torch.Generator().manual_seed(7)
    sk = math.sqrt(k)
    for scale in (0.2, 2.0, 8.0):
        ys = torch.stack([_space(torch.randn(4, 5, generator=g, dtype=F64) * scale * sk, k) for _ in range(2)], 1)
        ys.requires_grad_()
        x = torch.cat((torch.sqrt(k + ys.square().sum(-1, keepdim=True)), ys), -1)
        lorentz.dist(x[:, 0], x[:, 1], k=k).sum().backward()
        with torch.no_grad():
            ny = ys.norm(dim=-1)
            ab, u = ny / sk, ys / ny[..., None]
            ash = torch.asinh(ab)
            delta, diff = ash[:, 0] - ash[:, 1], u[:, 0] - u[:, 1]
            q = law.chord(delta, ab[:, 0] * ab[:, 1], diff.square().sum(-1))
            for i, factor in ((0, 1.0), (1, -1.0)):
                got = law.chord_grad(q, delta, torch.cosh(ash[:, i]), u[:, i], ab[:, 1 - i], diff, factor)
                torch.testing.assert_close(got, ys.grad[:, i], rtol=1e-10, atol=1e-12)
    q0 = torch.zeros(2, dtype=F64)
    z = torch.zeros(2, 3, dtype=F64)
    assert torch.equal(law.chord_grad(q0, q0, q0 + 1, z, q0, z, 1.0), z)  # coincident: gradient 0, not NaN


def test_every_caller_runs_the_one_source(monkeypatch):
    """The loss (PyTorch path), feature_centroid, dist and the pruning scorer each call law's point terms, Q and
    chord: a copy of the maths elsewhere would leave a counter at zero."""
    calls: dict[str, int] = {}

    def counted(name):
        orig = getattr(law, name)

        def wrapper(*a, **kw):
            calls[name] = calls.get(name, 0) + 1
            return orig(*a, **kw)

        monkeypatch.setattr(law, name, wrapper)

    for name in ("point_terms", "law_q", "chord", "chord_distance", "coefficient"):
        counted(name)
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(3, 8, 5, generator=g), torch.randn(3, 2, 5, generator=g)
    runs = {
        "loss": lambda: fused.hdd_distance(real, syn.requires_grad_(), k=1.0, fused=False).sum().backward(),
        "feature_centroid": lambda: lorentz.feature_centroid(real, k=1.0),
        "dist": lambda: lorentz.dist(lorentz.expmap0(real, k=1.0), lorentz.expmap0(real.flip(1), k=1.0), k=1.0),
        "pruning": lambda: pruning.class_centroid_distance(real.reshape(-1, 5), torch.arange(3).repeat_interleave(8)),
    }
    expected = {
        "loss": {"point_terms", "law_q", "chord", "chord_distance", "coefficient"},
        "feature_centroid": {"point_terms", "law_q", "coefficient"},
        "dist": {"chord", "chord_distance"},
        "pruning": {"point_terms", "law_q", "chord", "chord_distance", "coefficient"},
    }
    for what, run in runs.items():
        calls.clear()
        run()
        assert expected[what] <= set(calls), (what, calls)
