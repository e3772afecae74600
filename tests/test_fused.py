"""The fused HDD loss (``hyperdm.fused``): values and analytic gradients against independent references.

* values and gradients (real, synthetic, ``k``) against the autograd composition of
  ``lorentz.feature_centroid`` and ``lorentz.dist``, and ``gradcheck`` in float64;
* precision at nearly coincident directions far out, against exact (mpmath) references;
* what the no-grad real side costs: no autograd graph, no ``[C, N, D]`` temporary, its passes.
"""

from __future__ import annotations

import collections
import contextlib
import math

import pytest
import torch
from helpers import cluster as _cluster
from helpers import composed as _composed
from helpers import features as _features
from reference import feature, ref_centroid, ref_dist, ref_point
from torch.utils._python_dispatch import TorchDispatchMode

from hyperdm import fused, law
from hyperdm import lorentz as L

F64 = torch.float64


CASES = [(k, mn, h) for k in (0.5, 2.0) for mn in (10.0, None, 1.5) for h in (False, True)]


@pytest.mark.parametrize("k,max_norm,hierarchical", CASES)
@pytest.mark.parametrize("real_grad", [True, False])
def test_value_and_gradients_match_the_autograd_composition(k, max_norm, hierarchical, real_grad):
    # norms ~1-3 sqrt(k): some points beyond max_norm 1.5, the others free
    real = _features(3, 20, 8, scale=1.2 * math.sqrt(k), seed=1).requires_grad_(real_grad)
    syn = _features(3, 4, 8, scale=1.5 * math.sqrt(k), seed=2).requires_grad_()
    kt = torch.tensor(k, dtype=F64, requires_grad=True)
    go = torch.rand(3, dtype=F64, generator=torch.Generator().manual_seed(3)) + 0.5
    inputs = (real, syn, kt) if real_grad else (syn, kt)
    want = _composed(real, syn, kt, max_norm, hierarchical)
    got = fused.hdd_distance(real, syn, k=kt, max_norm=max_norm, hierarchical=hierarchical)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)
    for a, b in zip(
        torch.autograd.grad((got * go).sum(), inputs), torch.autograd.grad((want * go).sum(), inputs), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("chunk", [160, 320, 100])  # one class per slice; two (the last slice one); row blocks
def test_k_gradient_with_the_real_side_in_slices(monkeypatch, chunk):
    """A learned k with real features without grad: k's share from the real side is a second row of each slice's
    mat-vec (the first row alone is the spread's reference); value and gradients as the autograd composition."""
    monkeypatch.setattr(law, "CHUNK_ELEMENTS", chunk)
    real = _features(3, 20, 8, scale=1.2, seed=1)  # 160 elements per class
    syn = _features(3, 4, 8, scale=1.5, seed=2).requires_grad_()
    kt = torch.tensor(1.3, dtype=F64, requires_grad=True)
    go = torch.rand(3, dtype=F64, generator=torch.Generator().manual_seed(3)) + 0.5
    want = _composed(real, syn, kt, 1.5, False)
    got = fused.hdd_distance(real, syn, k=kt, max_norm=1.5)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)
    for a, b in zip(
        torch.autograd.grad((got * go).sum(), (syn, kt)),
        torch.autograd.grad((want * go).sum(), (syn, kt)),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("max_norm", [10.0, None])
def test_masks_exclude_padded_rows(max_norm):
    real = _features(2, 6, 5, seed=4)
    syn = _features(2, 3, 5, seed=5).requires_grad_()
    rmask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    smask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)  # one synthetic point in class 0: no spread
    real = real * rmask.unsqueeze(-1)
    got = fused.hdd_distance(real, syn, k=1.0, max_norm=max_norm, real_mask=rmask, syn_mask=smask)
    want = _composed(real, syn, 1.0, max_norm, False, rmask, smask)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)
    (g1,) = torch.autograd.grad(got.sum(), syn)
    (g2,) = torch.autograd.grad(want.sum(), syn)
    torch.testing.assert_close(g1, g2, rtol=1e-11, atol=1e-13)
    assert (g1[0, 1:] == 0).all()  # padded rows get no gradient


@pytest.mark.parametrize("max_norm", [1.5, None])
def test_gradcheck_both_sides_and_k(max_norm):
    real = _features(2, 5, 4, scale=1.3, seed=6).requires_grad_()
    syn = _features(2, 3, 4, scale=1.1, seed=7).requires_grad_()
    k = torch.tensor(1.7, dtype=F64, requires_grad=True)

    def fn(r, s, kk):
        return fused.hdd_distance(r, s, k=kk, max_norm=max_norm, hierarchical=True)

    assert torch.autograd.gradcheck(fn, (real, syn, k), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradient_is_zero_where_the_centroids_coincide_and_finite_nearby():
    syn = _features(3, 4, 16, scale=5.0, seed=8)
    real = syn.repeat(1, 3, 1)  # the same points, three times: the same centroid
    s = syn.clone().requires_grad_()
    d = fused.hdd_distance(real, s, k=1.0)
    (g,) = torch.autograd.grad(d.sum(), s)
    assert float(d.detach().abs().max()) < 1e-12 and torch.isfinite(g).all()
    s2 = (syn * (1 + 1e-9)).requires_grad_()
    d2 = fused.hdd_distance(syn, s2, k=1.0, max_norm=None)
    (g2,) = torch.autograd.grad(d2.sum(), s2)
    assert torch.isfinite(g2).all() and g2.abs().max() > 0


# ----------------------------------------------------------------------------- precision far out


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_nearly_coincident_directions_far_out(dtype):
    """Two tight clusters (angular spread 1e-3, so 1 - |u~|^2 ~ 1e-6) at radius 9.5: the exact spread keeps the
    distance of the centroids to ~eps * cosh-free bounds, where the two-sum form B - |m_s|^2/B has no digit left."""
    k, D = 1.0, 64
    real = _cluster(10, 48, D, 1e-3, 9.5, dtype)
    syn = _cluster(10, 6, D, 1e-3, 9.4, dtype)  # same mean direction: the centroids are close
    cr = ref_centroid([ref_point(feature(row), k) for row in real], k)
    cs = ref_centroid([ref_point(feature(row), k) for row in syn], k)
    want = float(ref_dist(cr, cs, k))
    got = float(fused.hdd_distance(real[None], syn[None], k=k, max_norm=None)[0])
    eps = torch.finfo(dtype).eps
    assert abs(got - want) <= 500 * eps * max(want, 1.0), (got, want)  # measured: 70 eps (float32), 79 eps (float64)
    # the two-sum spread, evaluated as well as the dtype allows, misses the reference by orders of magnitude more
    if dtype == torch.float32:

        def two_sum_radius(v):
            n = v.norm(dim=-1).double()
            b = torch.sinh(n) * torch.exp(-n.max())
            ms = ((b / n).float() @ v).double()
            bsum = b.sum()
            spread = bsum - ms.square().sum() / bsum
            q = (torch.exp(-n - n.max())).sum() * (torch.exp(n - n.max())).sum() + bsum * spread
            return float(torch.asinh(ms.norm() / q.clamp_min(1e-300).sqrt()))

        r_ref = float(cr.radius(k))
        r_fused = float(L.dist0(L.feature_centroid(real[None].double(), k=k)[0], k=k))
        assert abs(two_sum_radius(real) - r_ref) > 100 * max(abs(r_fused - r_ref), 1e-6)


# ----------------------------------------------------------------------------- what the real side costs


class _Ops(TorchDispatchMode):
    def __init__(self, big: torch.Tensor) -> None:
        super().__init__()
        self.big = big
        self.largest = 0  # the largest output that is not the big tensor or a view of it
        self.largest_from_big = 0  # the largest output of an op that reads the big tensor
        self.reads: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
        if any(a.untyped_storage().data_ptr() == self.big.untyped_storage().data_ptr() for a in flat):
            self.largest_from_big = max(
                [self.largest_from_big]
                + [o.numel() for o in outs if o.untyped_storage().data_ptr() != self.big.untyped_storage().data_ptr()]
            )
            if func.overloadpacket not in (torch.ops.aten.split, torch.ops.aten.split_with_sizes, torch.ops.aten.slice):
                self.reads[str(func.overloadpacket).split(".")[-1]] += 1
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() != self.big.untyped_storage().data_ptr():
                self.largest = max(self.largest, o.numel())
        return out


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3)], ids=["float32", "float16"])
def test_hierarchical_without_clamp_far_out_in_low_precision(dtype, tol):
    """Hierarchical weights w = t / sinh(t) keep every per-point weight polynomial in t: far out (radius
    95-105 sqrt(k), no clamp) low-precision features give the float64 composition's distances. Rescaling by the
    class's largest e^{-t} made the weights underflow float32 there (the distance came out 0)."""
    g = torch.Generator().manual_seed(31)

    def shell(n):
        x = torch.randn(3, n, 16, generator=g, dtype=F64)
        return x / x.norm(dim=-1, keepdim=True) * (95.0 + 10.0 * torch.rand(3, n, 1, generator=g, dtype=F64))

    real, syn = shell(40).to(dtype), shell(4).to(dtype)
    want = _composed(real.double(), syn.double(), 1.0, None, True)
    syn_g = syn.clone().requires_grad_()
    got = fused.hdd_distance(real, syn_g, k=1.0, max_norm=None, hierarchical=True)
    assert want.min() > 0.1
    torch.testing.assert_close(got, want, rtol=tol, atol=0)
    (grad,) = torch.autograd.grad(got.sum(), syn_g)
    syn64 = syn.double().requires_grad_()
    (want_grad,) = torch.autograd.grad(_composed(real.double(), syn64, 1.0, None, True).sum(), syn64)
    assert torch.isfinite(grad).all()
    assert (grad.double() - want_grad).norm() <= 100 * tol * want_grad.norm()


# whole classes per slice (each slice's mat-vec right before its spread); row blocks of each class (one mat-vec first)
@pytest.mark.parametrize("chunk,blocks,matvecs", [(4096, 4, 4), (1024, 12, 1)])
def test_real_side_without_grad_keeps_no_graph_and_no_full_temporary(monkeypatch, chunk, blocks, matvecs):
    monkeypatch.setattr(law, "CHUNK_ELEMENTS", chunk)
    real = _features(4, 64, 40, scale=3.0, seed=11, dtype=torch.float32)  # 2,560 elements per class
    syn = _features(4, 3, 40, scale=3.0, seed=12, dtype=torch.float32).requires_grad_()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), _Ops(real) as ops:
        d = fused.hdd_distance(real, syn, k=1.0)
    assert not [t for t in saved if t.numel() >= real.numel()]  # autograd keeps nothing of the real side's size
    assert ops.largest < real.numel()  # no [C, N, D] temporary
    assert ops.largest_from_big <= chunk  # the spread pass writes one slice at a time
    # the passes over the real features: the norms, the mat-vec, the exact spread in slices
    assert ops.reads == {"linalg_vector_norm": 1, "bmm": matvecs, "addcmul": blocks}, ops.reads
    monkeypatch.setattr(law, "CHUNK_ELEMENTS", 1 << 30)
    torch.testing.assert_close(fused.hdd_distance(real, syn, k=1.0), d, rtol=0, atol=0)  # the slicing changes nothing
    (g,) = torch.autograd.grad(d.sum(), syn)
    assert torch.isfinite(g).all()


def test_dispatched_op_count_of_the_default_matcher():
    """Forward + backward of HyperbolicMatcher() on [C, N, D] features: a bounded number of ATen ops (the
    autograd composition dispatched 414 on [10, 256, 2048] features; this path 169 on torch 2.13 with the spread
    in one slice, as off the CPU), so a GPU launches that many kernels at most."""
    from hyperdm import HyperbolicMatcher

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    real = _features(10, 256, 64, scale=3.0, seed=13, dtype=torch.float32)
    syn = _features(10, 10, 64, scale=3.0, seed=14, dtype=torch.float32).requires_grad_()
    matcher = HyperbolicMatcher(check_finite=False)
    counts = []
    for _ in range(2):  # the first call also checks once whether the points sit at the clamp
        Count.n = 0
        with Count(), pytest.warns(UserWarning, match="at the clamp") if not counts else contextlib.nullcontext():
            loss = matcher(real, syn)
            torch.autograd.grad(loss, syn)
        counts.append(Count.n)
    assert 50 < counts[1] <= 175, counts
    assert counts[1] < counts[0] <= counts[1] + 25, counts  # the check: a few ops on [C, N] scalars, once


@pytest.mark.parametrize(
    "real_shape,syn_shape,match",
    [
        ((2, 0, 4), (2, 3, 4), "at least one real and one synthetic"),
        ((2, 3, 4), (2, 0, 4), "at least one real and one synthetic"),
        ((2, 3, 0), (2, 3, 0), "D >= 1"),
        ((2, 3, 4), (3, 3, 4), "same C and D"),
        ((3, 4), (3, 4), "same C and D"),
    ],
)
def test_bad_shapes_are_refused_with_the_fix(real_shape, syn_shape, match):
    """An empty class gave NaN distances (and a slicing step divided by zero); wrong ranks or sizes failed deep
    inside. Each is refused before any work."""
    with pytest.raises(ValueError, match=match):
        fused.hdd_distance(torch.rand(real_shape), torch.rand(syn_shape, requires_grad=True), k=1.0)
