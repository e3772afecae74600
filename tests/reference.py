"""The exact reference of the tests: features read as exact dyadic rationals, scalars in 50-digit mpmath.

Written here from the textbook formulas, starting from the *features* (tangent vectors at the origin) a
function is given, after their rounding to the dtype under test. A float is a dyadic rational, so a
vector is held as Python integers times a power of two and its dot products are integer sums; a
reference point is ``x_0`` plus its space part written as a combination ``sum_i c_i v_i`` of such exact
vectors; distances come from the hyperbolic law of cosines; the Law centroid is the plain weighted mean,
normalised with exact Gram matrices (50 digits make that cancellation harmless). Used by
``test_lorentz.py``, ``test_fused.py`` and ``test_triton_kernels.py``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import mpmath
import numpy as np
import torch

mp = mpmath.mp
mp.dps = 50


def gen(*parts) -> torch.Generator:
    """A generator seeded from the test's parameters (deterministic across runs and platforms)."""
    s = 0
    for ch in repr(parts):
        s = (s * 131 + ord(ch)) % 2_147_483_647
    return torch.Generator().manual_seed(s)


class Exact:
    """A float tensor's values as exact integers times 2**-S."""

    __slots__ = ("S", "ints", "t")

    def __init__(self, t: torch.Tensor):
        self.t = t.detach().double().reshape(-1).contiguous()
        a = self.t.numpy()
        assert np.isfinite(a).all()
        m, e = np.frexp(a)  # a = m 2^e, m has at most 53 significant bits
        mant = np.ldexp(m, 53).astype(np.int64)
        ex = e.astype(np.int64) - 53
        nz = mant != 0
        self.S = int(-ex[nz].min()) if nz.any() else 0
        shift = np.where(nz, ex + self.S, 0)
        self.ints = [mi << si for mi, si in zip(mant.tolist(), shift.tolist(), strict=True)]


def edot(a: Exact, b: Exact):
    """Exact dot product (rounded once, to mp's working precision)."""
    return mp.ldexp(mp.mpf(sum(map(operator.mul, a.ints, b.ints))), -(a.S + b.S))


def _split(a: np.ndarray):
    c = 134217729.0 * a  # Dekker's split, 2^27 + 1
    hi = c - (c - a)
    return hi, a - hi


def scale(factor, x: torch.Tensor) -> torch.Tensor:
    """float64 of factor * x (factor an mp number), rounded once (double-double product)."""
    v = x.detach().double().numpy()
    fh = float(factor)
    fl = float(factor - mp.mpf(fh))
    p = fh * v
    ah, al = _split(np.full_like(v, fh))
    bh, bl = _split(v)
    err = ((ah * bh - p) + ah * bl + al * bh) + al * bl  # p + err == fh * v exactly
    return torch.from_numpy(p + (err + fl * v))


@dataclass
class Feature:
    """A feature as the module sees it (rounded to the dtype) and its exact norm."""

    v: torch.Tensor
    ex: Exact
    r: object  # mp


def feature(v: torch.Tensor) -> Feature:
    ex = Exact(v)
    return Feature(v, ex, mp.sqrt(edot(ex, ex)))


@dataclass
class RefPoint:
    """x = (x0, sum_i c_i v_i): x0 an mp number, terms a list of (mp c_i, Exact v_i)."""

    x0: object
    terms: list

    @staticmethod
    def of(x: torch.Tensor) -> RefPoint:
        """The point with the given (module-computed) coordinates, read exactly."""
        x = x.detach().double()
        return RefPoint(mp.mpf(float(x[0])), [(mp.mpf(1), Exact(x[1:]))])

    def sdot(self, other: RefPoint):
        return mp.fsum(a * b * edot(u, v) for a, u in self.terms for b, v in other.terms)

    def snorm(self):
        return mp.sqrt(max(self.sdot(self), 0))

    def radius(self, k):
        return mp.sqrt(k) * mp.asinh(self.snorm() / mp.sqrt(k))

    def tensor(self) -> torch.Tensor:
        """float64 coordinates (correctly rounded for a single term)."""
        xs = sum(scale(c, v.t) for c, v in self.terms)
        return torch.cat((torch.tensor([float(self.x0)], dtype=torch.float64), xs))


def ref_point(f: Feature, k, max_norm=None) -> RefPoint:
    """exp_o(v) = sqrt(k) (cosh t, sinh(t) v/|v|), t = |v|/sqrt(k) clamped at max_norm."""
    sk = mp.sqrt(k)
    t = f.r / sk
    if max_norm is not None:
        t = min(t, mp.mpf(max_norm))
    coef = mp.mpf(0) if f.r == 0 else sk * mp.sinh(t) / f.r
    return RefPoint(sk * mp.cosh(t), [(coef, f.ex)])


def law_of_cosines(ra, rb, one_minus_cos, k):
    """d with cosh(d/sk) = cosh(ta)cosh(tb) - sinh(ta)sinh(tb)cos(theta), rearranged exactly."""
    sk = mp.sqrt(k)
    ta, tb = ra / sk, rb / sk
    return sk * mp.acosh(mp.cosh(ta - tb) + mp.sinh(ta) * mp.sinh(tb) * one_minus_cos)


def ref_dist(a: RefPoint, b: RefPoint, k):
    """Distance of the hyperboloid points with the space parts of a and b (x_0 implied)."""
    sa, sb = a.snorm(), b.snorm()
    if sa == 0 or sb == 0:
        return abs(a.radius(k) - b.radius(k))
    omc = 1 - a.sdot(b) / (sa * sb)
    return law_of_cosines(a.radius(k), b.radius(k), omc, k)


def ref_centroid(points: list, k, weights=None) -> RefPoint:
    """sqrt(k) m / sqrt(-<m,m>_L), m the weighted mean."""
    n = len(points)
    w = [mp.mpf(1)] * n if weights is None else [mp.mpf(a) for a in weights]
    tot = mp.fsum(w)
    m0 = mp.fsum(w[i] * points[i].x0 for i in range(n)) / tot
    ms = RefPoint(0, [(w[i] * c / tot, v) for i in range(n) for c, v in points[i].terms])
    norm = mp.sqrt(m0**2 - ms.sdot(ms))
    return RefPoint(mp.sqrt(k) * m0 / norm, [(mp.sqrt(k) * c / norm, v) for c, v in ms.terms])


def lorentz_defect(x: torch.Tensor, k: float) -> float:
    """|<x,x>_L + k| / x_0^2 of the given coordinates, exactly."""
    p = RefPoint.of(x)
    return float(abs(-(p.x0**2) + p.sdot(p) + k) / p.x0**2)
