"""The Triton kernel of the real side, run by Triton's interpreter on CPU tensors, against the PyTorch path.

CI installs triton, so these tests run there (a missing triton fails them under CI=true). The
interpreter must be on before triton is first imported: conftest.py sets TRITON_INTERPRET=1 for
the session on machines without CUDA.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

if os.environ.get("CI") == "true":
    import triton  # noqa: F401  (must be installed in CI: these tests may not be skipped there)
else:
    pytest.importorskip("triton")

from test_fused import _cluster
from test_lorentz import feature, ref_centroid, ref_dist, ref_point

from hyperdm import HyperbolicMatcher, fused, hyperbolic_matching_loss, triton_kernels

F64 = torch.float64


pytestmark = pytest.mark.skipif(
    not triton_kernels.interpreting() and not torch.cuda.is_available(),
    reason="needs CUDA or Triton's interpreter (TRITON_INTERPRET=1 before triton is imported)",
)


def _features(c, n, d, *, scale, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(c, n, d, generator=g, dtype=F64).relu() + 0.05) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("max_norm", [10.0, None, 1.5])
@pytest.mark.parametrize("n", [1, 5, 130])  # 130 rows: three row blocks combined
def test_kernel_equals_the_pytorch_path(dtype, max_norm, n):
    k = 2.0
    real = _features(3, n, 40, scale=0.6 * math.sqrt(k), seed=n, dtype=dtype)
    syn = _features(3, 4, 40, scale=0.7 * math.sqrt(k), seed=n + 1, dtype=dtype).requires_grad_()
    a = fused.hdd_distance(real, syn, k=k, max_norm=max_norm, fused=False)
    b = fused.hdd_distance(real, syn, k=k, max_norm=max_norm, fused=True)
    (ga,) = torch.autograd.grad(a.sum(), syn)
    (gb,) = torch.autograd.grad(b.sum(), syn)
    tol = 1e-13 if dtype == F64 else 2e-6
    torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    torch.testing.assert_close(gb, ga, rtol=tol * 10, atol=tol * float(ga.abs().max()))


def test_kernel_summary_against_exact_sums():
    """The kernel's per-class sums are the float64 sums written out directly (one class, no clamp)."""
    v = _features(1, 9, 7, scale=0.8, seed=3, dtype=F64)
    ms, sums, spread = triton_kernels.real_summary(v, sk=1.0, tmax=300.0)
    n = v[0].norm(dim=-1)
    top = n.max()
    b = torch.sinh(n) * torch.exp(-top)
    u = v[0] / n.unsqueeze(-1)
    ut = (b.unsqueeze(-1) * u).sum(0) / b.sum()
    torch.testing.assert_close(ms[0], (b.unsqueeze(-1) * u).sum(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(
        sums[0],
        torch.stack((b.sum(), (torch.cosh(n) * torch.exp(-top)).sum(), torch.exp(-n - top).sum())),
        rtol=1e-13,
        atol=0,
    )
    torch.testing.assert_close(spread[0], (b * (u - ut).square().sum(-1)).sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, F64], ids=["float32", "float16", "float64"])
def test_syn_grad_kernel_against_its_formula_in_float64(dtype):
    """grad_i = (a_i (v_i . gam) + b_i (v_i . h) + d_i) v_i + z_i h, and v_i . gam, written out in float64."""
    g = torch.Generator().manual_seed(21)
    v = torch.randn(3, 5, 37, generator=g, dtype=F64).to(dtype)
    gam, h = torch.randn(2, 3, 37, generator=g, dtype=F64)
    coef = torch.randn(3, 5, 4, generator=g, dtype=F64)
    grad, pg = triton_kernels.syn_grad(v, gam, h, coef)
    assert grad.dtype == dtype and grad.shape == v.shape and pg.dtype == F64
    v64 = v.double()
    acc = F64 if dtype == F64 else torch.float32  # the kernel's products: gam and h are rounded to it
    ga, ha = gam.to(acc).double(), h.to(acc).double()
    want_pg = (v64 * ga.unsqueeze(1)).sum(-1)
    want_ph = (v64 * ha.unsqueeze(1)).sum(-1)
    a, b, d, z = coef.unbind(-1)
    want = (a * want_pg + b * want_ph + d).unsqueeze(-1) * v64 + z.unsqueeze(-1) * ha.unsqueeze(1)
    tol = {F64: 1e-13, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(pg, want_pg, rtol=tol, atol=tol * float(want_pg.abs().max()))
    torch.testing.assert_close(grad.double(), want, rtol=tol, atol=tol * float(want.abs().max()))


def test_triton_path_writes_the_synthetic_gradient_in_one_kernel():
    """With the kernels, the backward runs no mat-vec or batched outer product over the synthetic features."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    real = _features(2, 6, 8, scale=5.0, seed=4, dtype=torch.float32)
    syn = _features(2, 3, 8, scale=5.0, seed=5, dtype=torch.float32).requires_grad_()
    seen = {}
    for fused_ in (False, True):  # (under the interpreter the launch itself dispatches ops, so no count here)
        d = fused.hdd_distance(real, syn, k=1.0, fused=fused_)
        with Ops() as ops:
            torch.autograd.grad(d.sum(), syn)
        seen[fused_] = {"bmm", "baddbmm"} & set(ops.names)
    assert seen == {False: {"bmm", "baddbmm"}, True: set()}


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_kernel_keeps_precision_at_nearly_coincident_directions(dtype):
    """Angular spread 1e-3 at radius 9.5: the shifted spread about the first feature stays exact."""
    k = 1.0
    real = _cluster(10, 48, 64, 1e-3, 9.5, dtype)
    syn = _cluster(10, 6, 64, 1e-3, 9.4, dtype)
    cr = ref_centroid([ref_point(feature(row), k) for row in real], k)
    cs = ref_centroid([ref_point(feature(row), k) for row in syn], k)
    want = float(ref_dist(cr, cs, k))
    got = float(fused.hdd_distance(real[None], syn[None], k=k, max_norm=None, fused=True)[0])
    assert abs(got - want) <= 500 * torch.finfo(dtype).eps * max(want, 1.0), (got, want)


def test_matcher_and_function_select_the_kernel():
    real = _features(2, 6, 8, scale=5.0, seed=4, dtype=torch.float32)
    syn = _features(2, 3, 8, scale=5.0, seed=5, dtype=torch.float32)
    want = HyperbolicMatcher(fused=False)(real, syn)
    torch.testing.assert_close(HyperbolicMatcher(fused=True)(real, syn), want, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(hyperbolic_matching_loss(real, syn, fused=True), want, rtol=2e-6, atol=2e-6)
    assert "fused=True" in repr(HyperbolicMatcher(fused=True))


def test_auto_uses_the_kernel_only_on_cuda(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the kernel ran")

    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(triton_kernels, "real_summary", boom)
    real = _features(2, 6, 8, scale=5.0, seed=6, dtype=torch.float32)
    syn = _features(2, 3, 8, scale=5.0, seed=7, dtype=torch.float32)
    HyperbolicMatcher()(real, syn)  # CPU tensors: the PyTorch path
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        HyperbolicMatcher(fused=True)(real, syn)


@pytest.mark.parametrize(
    "case,match",
    [
        ("real_grad", "without grad and a fixed k"),
        ("hierarchical", "hierarchical=False"),
        ("labels", "unmasked"),
        ("learn_k", "fixed k"),
    ],
)
def test_fused_true_says_what_it_does_not_cover(case, match):
    real = _features(2, 6, 8, scale=5.0, seed=8, dtype=torch.float32)
    syn = _features(2, 3, 8, scale=5.0, seed=9, dtype=torch.float32)
    calls = {
        "real_grad": lambda: HyperbolicMatcher(fused=True)(real.requires_grad_(), syn),
        "hierarchical": lambda: HyperbolicMatcher(fused=True, hierarchical=True)(real, syn),
        "labels": lambda: HyperbolicMatcher(fused=True)(
            real.flatten(0, 1),
            syn.flatten(0, 1),
            real_labels=torch.arange(2).repeat_interleave(6),
            syn_labels=torch.arange(2).repeat_interleave(3),
        ),
        "learn_k": lambda: HyperbolicMatcher(fused=True, learn_k=True)(real, syn),
    }
    with pytest.raises(ValueError, match=match):
        calls[case]()
    with pytest.raises(ValueError, match="fused must be"):
        HyperbolicMatcher(fused="yes")
