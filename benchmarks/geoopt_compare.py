"""Accuracy of ``hyperdm.StableLorentz`` against ``geoopt.Lorentz``, side by side, against mpmath.

Every case draws a batch of random inputs (fixed seed), rounds them to the dtype under test, and
compares both manifolds' outputs with a 50-digit mpmath evaluation of the textbook formula on
*those rounded inputs*: a point is read by its space part (``x_0 = sqrt(k + |x_s|^2)`` in mpmath),
a tangent vector by its space part (time part from tangency), so neither manifold is asked for
digits its input does not hold. Reported: the largest error over the batch (what is measured is
stated per case). A last case runs ``geoopt.optim.RiemannianAdam`` in float32 with each manifold.

    python benchmarks/geoopt_compare.py            # writes benchmarks/results/geoopt_compare.json
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import mpmath
import torch

import hyperdm  # noqa: F401  (imports geoopt without its torch.jit.script warnings)

# isort: split
import geoopt

from _results import machine, save
from hyperdm import StableLorentz
from hyperdm import lorentz as L

mp = mpmath.mp
mp.dps = 50
F64 = torch.float64


# -- mpmath reference (textbook forms at 50 digits, inputs read by their space parts) -------------


def _vec(t: torch.Tensor) -> list:
    return [mp.mpf(float(a)) for a in t.double().tolist()]


def _point(xs: list, k) -> list:
    return [mp.sqrt(k + sum(a * a for a in xs)), *xs]


def _tangent(x: list, us: list) -> list:
    return [sum(a * b for a, b in zip(x[1:], us, strict=True)) / x[0], *us]


def _mink(a: list, b: list):
    return -a[0] * b[0] + sum(p * q for p, q in zip(a[1:], b[1:], strict=True))


def ref_dist(x: list, y: list, k):
    return mp.sqrt(k) * mp.acosh(-_mink(x, y) / k)


def ref_expmap(x: list, u: list, k) -> list:
    n = mp.sqrt(_mink(u, u))
    t = n / mp.sqrt(k)
    return [mp.cosh(t) * a + mp.sinh(t) / t * b for a, b in zip(x, u, strict=True)]


def ref_logmap(x: list, y: list, k) -> list:
    t = ref_dist(x, y, k) / mp.sqrt(k)
    return [t / mp.sinh(t) * (b - mp.cosh(t) * a) for a, b in zip(x, y, strict=True)]


def ref_transp(x: list, y: list, v: list, k) -> list:
    c = _mink(y, v) / (k - _mink(x, y))
    return [a + c * (p + q) for a, p, q in zip(v, x, y, strict=True)]


def _rel(out: torch.Tensor, ref: list) -> float:
    """max |out - ref| / max |ref| (ambient components)."""
    r = torch.tensor([float(a) for a in ref], dtype=F64)
    return float((out.double() - r).abs().max() / r.abs().max())


# -- inputs ----------------------------------------------------------------------------------


def points(n: int, d: int, radius: float, k: float, gen: torch.Generator) -> torch.Tensor:
    """float64 points at distance ``radius * sqrt(k)`` from the origin, random directions."""
    v = torch.randn(n, d, generator=gen, dtype=F64)
    return L.expmap0(v / v.norm(dim=-1, keepdim=True) * radius * math.sqrt(k), k=k)


def tangents(x: torch.Tensor, length: float, k: float, gen: torch.Generator) -> torch.Tensor:
    """float64 tangent vectors at ``x`` of Riemannian length ``length * sqrt(k)``, random directions."""
    u = L.proju(x, torch.randn(x.shape, generator=gen, dtype=F64), k=k)
    return u / L.tangent_inner(x, u, k=k, keepdim=True).sqrt() * length * math.sqrt(k)


def manifolds(k: float) -> dict[str, Any]:
    return {
        "geoopt.Lorentz": geoopt.Lorentz(k=k),
        "geoopt.Lorentz(k float64)": geoopt.Lorentz(k=torch.tensor(k, dtype=F64)),
        "StableLorentz": StableLorentz(k=k),
    }


def worst(fn: Callable[[int], float], n: int) -> float:
    return max(fn(i) for i in range(n))


# -- cases -----------------------------------------------------------------------------------


def case_expmap0(n: int, seed: int, k: float = 2.0, radius: float = 4.0, dtype=F64) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 8, generator=gen, dtype=F64)
    v = (v / v.norm(dim=-1, keepdim=True) * radius * math.sqrt(k)).to(dtype)
    u = torch.cat((torch.zeros_like(v[:, :1]), v), dim=-1)
    out = {}
    for name, m in manifolds(k).items():
        y = m.expmap0(u)

        def err(i: int, y: torch.Tensor = y) -> float:
            vs = _vec(v[i])
            nv = mp.sqrt(sum(a * a for a in vs))
            t = nv / mp.sqrt(k)
            ref = [mp.sqrt(k) * mp.cosh(t)] + [mp.sqrt(k) * mp.sinh(t) / nv * a for a in vs]
            return float(max(abs(mp.mpf(float(p)) - q) for p, q in zip(y[i].double().tolist(), ref, strict=True)))

        out[name] = worst(err, n)
    return {
        "what": f"expmap0, {str(dtype)[6:]}, |v| = {radius} sqrt(k), k = {k}: max absolute error of the point",
        **out,
    }


def case_dist_close(
    n: int, seed: int, k: float = 2.0, radius: float = 5.0, sep: float = 1e-3, dtype=torch.float32
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    x = points(n, 16, radius, k, gen)
    y = L.expmap(x, tangents(x, sep / math.sqrt(k), k, gen), k=k)
    x, y = x.to(dtype), y.to(dtype)
    refs = [ref_dist(_point(_vec(x[i, 1:]), k), _point(_vec(y[i, 1:]), k), k) for i in range(n)]
    out = {}
    for name, m in manifolds(k).items():
        d = m.dist(x, y)
        out[name] = max(float(abs(mp.mpf(float(d[i])) - refs[i]) / refs[i]) for i in range(n))
    return {
        "what": f"dist, {str(dtype)[6:]}, points {sep} apart at radius {radius} sqrt(k), k = {k}: max relative error",
        **out,
    }


def case_logmap(
    n: int, seed: int, k: float = 2.0, radius: float = 3.0, step: float = 1e-2, dtype=torch.float32
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    x = points(n, 16, radius, k, gen)
    y = L.expmap(x, tangents(x, step, k, gen), k=k)
    x, y = x.to(dtype), y.to(dtype)
    refs = [ref_logmap(_point(_vec(x[i, 1:]), k), _point(_vec(y[i, 1:]), k), k) for i in range(n)]
    out = {name: max(_rel(m.logmap(x, y)[i], refs[i]) for i in range(n)) for name, m in manifolds(k).items()}
    return {
        "what": f"logmap, {str(dtype)[6:]}, points {step} sqrt(k) apart at radius {radius} sqrt(k), k = {k}: "
        "max relative error (ambient components)",
        **out,
    }


def case_expmap(
    n: int,
    seed: int,
    k: float = 2.0,
    radius: float = 3.0,
    step: float = 1e-2,
    dtype=torch.float32,
    inward: bool = False,
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    x = points(n, 16, radius, k, gen)
    # inward: straight towards the origin and on past it, by `step` in all
    u = L.logmap0back(x, k=k) * (step / radius) if inward else tangents(x, step, k, gen)
    x, u = x.to(dtype), u.to(dtype)
    out = {}
    refs = []
    for i in range(n):
        xr = _point(_vec(x[i, 1:]), k)
        refs.append(ref_expmap(xr, _tangent(xr, _vec(u[i, 1:])), k))
    for name, m in manifolds(k).items():
        y = m.expmap(x, u)
        out[name] = max(float(ref_dist(_point(_vec(y[i, 1:]), k), refs[i], k)) for i in range(n))
    where = f"a step of {step} sqrt(k) towards and past the origin" if inward else f"steps of {step} sqrt(k)"
    return {
        "what": f"expmap, {str(dtype)[6:]}, radius {radius} sqrt(k), {where}, k = {k}: "
        "max distance of the result from the exact point",
        **out,
    }


def case_radial_step(k: float = 2.0, radius: float = 10.0, step: float = 1e-2, dtype=torch.float32) -> dict[str, Any]:
    """On the hyperbolic line (D = 1: no sideways rounding), a radial step of ``step sqrt(k)`` outwards
    and one inwards from radius ``radius sqrt(k)``: relative error of the distance travelled."""
    sk = math.sqrt(k)
    x = torch.tensor([[sk * math.cosh(radius), sk * math.sinh(radius)]], dtype=F64)
    out = {}
    for name, m in manifolds(k).items():
        errs = []
        for sgn in (1.0, -1.0):
            u = sgn * step * sk * torch.tensor([[math.sinh(radius), math.cosh(radius)]], dtype=F64)
            y = m.expmap(x.to(dtype), u.to(dtype))
            xr, yr = _point(_vec(x.to(dtype)[0, 1:]), k), _point(_vec(y[0, 1:]), k)
            errs.append(float(abs(ref_dist(xr, yr, k) - step * sk) / (step * sk)))
        out[name] = max(errs)
    return {
        "what": f"expmap, {str(dtype)[6:]}, hyperbolic line, radial steps of {step} sqrt(k) "
        f"at radius {radius} sqrt(k), k = {k}: relative error of the distance travelled",
        **out,
    }


def case_transp(
    n: int, seed: int, k: float = 2.0, radius: float = 3.0, step: float = 1e-3, dtype=torch.float32
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    x = points(n, 16, radius, k, gen)
    y = L.expmap(x, tangents(x, step, k, gen), k=k)
    v = tangents(x, 1.0, k, gen)
    x, y, v = x.to(dtype), y.to(dtype), v.to(dtype)
    refs = []
    for i in range(n):
        xr, yr = _point(_vec(x[i, 1:]), k), _point(_vec(y[i, 1:]), k)
        refs.append(ref_transp(xr, yr, _tangent(xr, _vec(v[i, 1:])), k))
    out = {name: max(_rel(m.transp(x, y, v)[i], refs[i]) for i in range(n)) for name, m in manifolds(k).items()}
    return {
        "what": f"transp, {str(dtype)[6:]}, points {step} sqrt(k) apart at radius {radius} sqrt(k), unit vectors, "
        f"k = {k}: max relative error (ambient components)",
        **out,
    }


def case_centroid(n: int, seed: int, k: float = 2.0, radius: float = 5.0, dtype=torch.float32) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    m = StableLorentz(k=k)
    errs = []
    for _ in range(n):
        x = points(8, 16, radius, k, gen).to(dtype)
        c = m.centroid(x)
        pts = [_point(_vec(x[j, 1:]), k) for j in range(8)]
        mean = [sum(p[i] for p in pts) / 8 for i in range(17)]
        ref = [mp.sqrt(k) * a / mp.sqrt(-_mink(mean, mean)) for a in mean]
        errs.append(float(ref_dist(_point(_vec(c[1:]), k), ref, k)))
    return {
        "what": f"centroid (Law), {str(dtype)[6:]}, 8 points at radius {radius} sqrt(k), k = {k}: "
        "max distance from the exact centroid",
        "geoopt.Lorentz": "no centroid",
        "geoopt.Lorentz(k float64)": "no centroid",
        "StableLorentz": max(errs),
    }


def case_norm_zero(k: float = 2.0) -> dict[str, Any]:
    u = torch.zeros(17)
    return {
        "what": "norm of the zero tangent vector (float32)",
        **{name: float(m.norm(u)) for name, m in manifolds(k).items()},
    }


def case_adam(seed: int, k: float = 2.0, radius: float = 3.0, steps: int = 1200) -> dict[str, Any]:
    """RiemannianAdam, float32: 64 points at radius 3 sqrt(k) pulled to 64 targets at that radius
    by the loss sum_i d(x_i, t_i); lr 0.05, divided by 5 every 200 steps."""
    out = {}
    for name, m in manifolds(k).items():
        gen = torch.Generator().manual_seed(seed)
        x0, tgt = points(64, 16, radius, k, gen), points(64, 16, radius, k, gen)
        p = geoopt.ManifoldParameter(x0.float().clone(), manifold=m)
        opt = geoopt.optim.RiemannianAdam([p], lr=0.05)
        sched = torch.optim.lr_scheduler.StepLR(opt, 200, 0.2)
        for _ in range(steps):
            opt.zero_grad()
            m.dist(p, tgt.float()).sum().backward()
            opt.step()
            sched.step()
        xd = p.detach().double()
        off = ((xd[:, 0] - torch.sqrt(k + xd[:, 1:].square().sum(-1))) / xd[:, 0]).abs().max()
        out[name] = {
            "final max distance": float(L.dist(xd, tgt, k=k).max()),
            "max relative |x_0 - sqrt(k + |x_s|^2)| / x_0": float(off),
        }
    return {
        "what": f"RiemannianAdam, float32, {steps} steps, 64 points at radius {radius} sqrt(k) to 64 targets, "
        f"loss sum of distances, k = {k}",
        **out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="random instances per case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-adam", action="store_true", help="skip the optimizer case")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    cases = [
        case_expmap0(a.n, a.seed),
        case_dist_close(a.n, a.seed),
        case_dist_close(a.n, a.seed, radius=10.0, sep=1e-6, dtype=F64),
        case_logmap(a.n, a.seed),
        case_expmap(a.n, a.seed),
        case_expmap(a.n, a.seed, step=6.0, inward=True),
        case_radial_step(),
        case_transp(a.n, a.seed),
        case_centroid(a.n, a.seed),
        case_norm_zero(),
    ]
    if not a.no_adam:
        cases.append(case_adam(a.seed))
    for c in cases:
        print(c["what"])
        for key, val in c.items():
            if key == "what":
                continue
            if isinstance(val, dict):
                val = ", ".join(f"{a}: {b:.2g}" for a, b in val.items())
            print(f"    {key:28s} {val if isinstance(val, str) else f'{val:.2g}'}")
    save(
        "geoopt_compare",
        {"machine": machine("cpu"), "geoopt": geoopt.__version__, "n": a.n, "seed": a.seed, "cases": cases},
    )


if __name__ == "__main__":
    main()
