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
from torch import Tensor

if os.environ.get("CI") == "true":
    import triton  # noqa: F401  (must be installed in CI: these tests may not be skipped there)
else:
    pytest.importorskip("triton")  # (conftest leaves the module out first, with one line for all)

from helpers import cluster as _cluster
from reference import feature, ref_centroid, ref_dist, ref_point

from hyperdm import HyperbolicMatcher, fused, hyperbolic_matching_loss, triton_kernels

F64 = torch.float64


pytestmark = pytest.mark.skipif(
    not triton_kernels.interpreting() and not torch.cuda.is_available(),
    reason="needs CUDA or Triton's interpreter (TRITON_INTERPRET=1 before triton is imported)",
)


# where the kernels run: CPU tensors under the interpreter, else (a machine with CUDA) the GPU
DEV = torch.device("cpu") if triton_kernels.interpreting() else torch.device("cuda")


def _features(c, n, d, *, scale, seed, dtype, device=DEV):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(c, n, d, generator=g, dtype=F64).relu() + 0.05) * scale).to(device=device, dtype=dtype)


def _dist_and_grad(real, syn, weight=None, **kw):
    """``hdd_distance(real, syn, **kw)`` and the gradient of ``sum(weight * d)`` with respect to ``syn``."""
    syn = syn.detach().requires_grad_()
    d = fused.hdd_distance(real, syn, **kw)
    (g,) = torch.autograd.grad((d if weight is None else d * weight).sum(), syn)
    return d.detach(), g


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("max_norm", [10.0, None, 1.5])
@pytest.mark.parametrize("n", [1, 5, pytest.param(130, marks=pytest.mark.slow)])  # 130 rows: three row blocks
@pytest.mark.parametrize("m", [1, 4])  # one synthetic point has no spread
def test_kernel_equals_the_pytorch_path(dtype, max_norm, n, m):
    k = 2.0
    real = _features(3, n, 40, scale=0.6 * math.sqrt(k), seed=n, dtype=dtype)
    syn = _features(3, m, 40, scale=0.7 * math.sqrt(k), seed=n + m, dtype=dtype)
    w = torch.tensor([0.5, -2.0, 1.25], dtype=F64, device=DEV)  # an upstream gradient that is not all ones
    a, ga = _dist_and_grad(real, syn, w, k=k, max_norm=max_norm, fused=False, scale=3.0)
    b, gb = _dist_and_grad(real, syn, w, k=k, max_norm=max_norm, fused=True, scale=3.0)
    tol = 1e-13 if dtype == F64 else 2e-6
    torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    torch.testing.assert_close(gb, ga, rtol=tol * 10, atol=tol * float(ga.abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["float16", "float32"])
def test_kernel_against_float64_of_the_same_features(dtype):
    """Half and single precision features: the kernels (float32 sums, float64 scalars) against the float64 path."""
    real = _features(2, 70, 24, scale=3.0, seed=31, dtype=dtype)
    syn = _features(2, 3, 24, scale=2.0, seed=32, dtype=dtype)
    d, g = _dist_and_grad(real, syn, k=1.0, fused=True)
    want, gw = _dist_and_grad(real.double(), syn.double(), k=1.0, fused=False)
    assert g.dtype == dtype
    tol = 2e-3 if dtype == torch.float16 else 2e-5
    torch.testing.assert_close(d, want, rtol=tol, atol=tol)
    torch.testing.assert_close(g.double(), gw, rtol=tol, atol=tol * float(gw.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_kernel_far_out_and_with_the_exact_map(dtype):
    """Radii near 250 sqrt(k) with max_norm=None: both sides rescaled by their largest e^{t}, nothing overflows,
    and e^{-t-T} (near e^{-500}, below float32's range) stays a float64 scalar for float32 features too. The
    reference is the PyTorch path on the same features in float64: in float32, where one point outweighs the
    rest of its class by e^{64}, that path's spread is the top point's rounding (7% off in class 0 here), while
    the kernel's, accumulated about that point, is not (2e-7)."""
    k = 0.5
    real = _features(2, 9, 16, scale=60.0, seed=41, dtype=dtype)
    syn = _features(2, 3, 16, scale=55.0, seed=42, dtype=dtype)
    assert float(real.norm(dim=-1).max()) / math.sqrt(k) > 200
    a, ga = _dist_and_grad(real.double(), syn.double(), k=k, max_norm=None, fused=False)
    b, gb = _dist_and_grad(real, syn, k=k, max_norm=None, fused=True)
    assert torch.isfinite(gb).all()
    tol = 1e-11 if dtype == F64 else 2e-6
    torch.testing.assert_close(b, a, rtol=tol, atol=0)
    # the gradient of float32 features this far out is good to ~1e-3 of its largest entry on either path (9e-4)
    gtol = 1e-9 if dtype == F64 else 2e-3
    torch.testing.assert_close(gb.double(), ga, rtol=gtol, atol=gtol * float(ga.abs().max()))


def test_kernel_one_real_point_far_out_in_float32():
    """One real point per class at radius ~100 (exact map): its centroid is the point itself, Q = e^{-2t} * 2,
    which a float32 sum would flush to 0 (the real pass once returned 1.76 for distances near 100 here)."""
    g = torch.Generator().manual_seed(3)
    real = (torch.randn(2, 1, 16, generator=g, dtype=F64).abs() * 30).float().to(DEV)
    syn = (torch.randn(2, 2, 16, generator=g, dtype=F64).abs() * 30).float().to(DEV)
    assert float(real.norm(dim=-1).min()) > 90
    want = fused.hdd_distance(real.double(), syn.double(), k=1.0, max_norm=None, fused=False)
    got = fused.hdd_distance(real, syn, k=1.0, max_norm=None, fused=True)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("max_norm", [10.0, None])
def test_kernel_gradient_is_zero_where_the_centroids_coincide(max_norm):
    """Real and synthetic sides are the same points: distance 0 to rounding, and a finite gradient (no 0/0)."""
    syn = _features(2, 3, 12, scale=1.5, seed=43, dtype=F64)
    d, g = _dist_and_grad(syn.clone(), syn, k=1.0, max_norm=max_norm, fused=True)
    # the two sides are summed by different kernels, so the centroids differ by rounding: d is ~0 and its
    # gradient (a unit direction's, times the Jacobian of the centroid) is finite and bounded
    assert float(d.abs().max()) < 1e-7
    assert torch.isfinite(g).all() and float(g.abs().max()) < 1.0


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_kernel_spread_when_the_first_feature_is_an_outlier(dtype):
    """A tight cluster (angular spread 1e-3, clamped at radius 10) after a first feature of small norm pointing
    elsewhere: the one-pass spread moves its reference to the point that raises the largest radius, so the
    outlier does not leave the cluster's spread as a small difference of large sums (float32 lost it)."""
    k = 1.0
    cluster = _cluster(10, 43, 32, 1e-3, 25.0, F64)  # the synthetic side: three more points of the cluster
    outlier = torch.zeros(1, 32, dtype=F64)
    outlier[0, -1] = 0.5
    real = torch.cat((outlier, cluster[:40]))[None].to(dtype)
    syn = cluster[None, 40:].to(dtype)
    cr = ref_centroid([ref_point(feature(row), k, max_norm=10.0) for row in real[0].double()], k)
    cs = ref_centroid([ref_point(feature(row), k, max_norm=10.0) for row in syn[0].double()], k)
    want = float(ref_dist(cr, cs, k))
    real, syn = real.to(DEV), syn.to(DEV)
    got = float(fused.hdd_distance(real, syn, k=k, fused=True)[0])
    eager = float(fused.hdd_distance(real, syn, k=k, fused=False)[0])
    tol = 1e-4 if dtype == torch.float32 else 1e-12  # the reference point fixed at the first feature: 2.5e-3, 4e-11
    assert abs(eager - want) <= tol * want  # the PyTorch path's exact spread, as the reference
    assert abs(got - want) <= tol * want, (got, eager, want)


def test_kernel_without_grad_writes_no_gradient():
    real = _features(2, 5, 8, scale=2.0, seed=44, dtype=torch.float32)
    syn = _features(2, 3, 8, scale=2.0, seed=45, dtype=torch.float32)
    d, g = triton_kernels.hdd(real, syn, sk=1.0, tmax=10.0)
    d2, g2 = triton_kernels.hdd(real, syn, sk=1.0, tmax=10.0, grad=False)
    assert g is not None and g.shape == syn.shape and g2 is None
    torch.testing.assert_close(d2, d, rtol=0, atol=0)
    torch.testing.assert_close(d, fused.hdd_distance(real, syn, k=1.0, fused=False), rtol=2e-6, atol=2e-6)
    with pytest.raises(ValueError, match="N, M, D >= 1"):
        triton_kernels.hdd(real, syn[:, :0], sk=1.0, tmax=10.0)


@pytest.mark.slow
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_kernel_any_row_blocks_give_the_same_loss(monkeypatch, rows):
    """The real pass cut into blocks of 1, 7 or 64 rows (each block its own top and reference direction, moved to
    a common one when combined): the loss and gradient of the PyTorch path, in float64 to rounding."""
    real = _features(2, 20, 12, scale=2.5, seed=51, dtype=F64)
    real[:, 5] *= 4.0  # a row far out in the middle: later blocks rescale to it
    syn = _features(2, 3, 12, scale=2.0, seed=52, dtype=F64)
    monkeypatch.setattr(triton_kernels, "ROWS_PER_PROGRAM", rows)
    b, gb = _dist_and_grad(real, syn, k=1.0, max_norm=None, fused=True)
    a, ga = _dist_and_grad(real, syn, k=1.0, max_norm=None, fused=False)
    torch.testing.assert_close(b, a, rtol=1e-13, atol=0)
    torch.testing.assert_close(gb, ga, rtol=1e-12, atol=1e-12 * float(ga.abs().max()))
    with pytest.raises(ValueError, match="rows_per_program must be >= 1"):
        _real_summary(real, sk=1.0, tmax=10.0, rows_per_program=0)


def _real_summary(
    v: Tensor, *, sk: float, tmax: float, rows_per_program: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(m_s [C, D], sums [C, 3] = (B, sum cosh, sum e^{-t}), spread [C])``, float64, each class scaled by
    ``e^{-T}``: the real pass with its row blocks combined on the host (what ``hdd``'s second kernel
    does in-kernel), for inspection and tests."""
    part = triton_kernels.real_partials(v, sk=sk, tmax=tmax, rows_per_program=rows_per_program)[0]
    N, D = v.shape[1], v.shape[2]
    top, stats = part[..., 0], part[..., 1 : triton_kernels.STATS]  # [C, splits], [C, splits, 4]
    ms, dev, p = part[..., triton_kernels.STATS :].unflatten(-1, (3, D)).unbind(-2)  # [C, splits, D] each
    # every row block to the reference of the block with the largest top, then to one scale
    dp = p - p.gather(1, top.argmax(1)[:, None, None].expand(-1, 1, D))
    b = stats[..., :1]
    s2 = stats[..., 3] + 2.0 * (dp * dev).sum(-1) + b[..., 0] * dp.square().sum(-1)
    r = torch.exp(top - top.amax(1, keepdim=True)).unsqueeze(-1)
    sums = (r * stats[..., :3]).sum(1)
    ms, dev, s2 = (r * ms).sum(1), (r * (dev + b * dp)).sum(1), (r[..., 0] * s2).sum(1)
    # the spread about u~, shifted exactly from the one about the reference
    spread = (s2 - dev.square().sum(-1) / sums[:, 0].clamp_min(1e-300)).clamp_min(0.0)
    if N == 1:
        spread = spread * 0.0
    return ms, sums, spread


def test_kernel_summary_against_exact_sums():
    """The kernel's per-class sums are the float64 sums written out directly (one class, no clamp)."""
    v = _features(1, 9, 7, scale=0.8, seed=3, dtype=F64)
    ms, sums, spread = _real_summary(v, sk=1.0, tmax=300.0)
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


def test_triton_path_backward_only_scales_the_gradient_written_forward():
    """With the kernels, the backward is the upstream gradient times the stored one: no mat-vec, no per-point work."""
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
    for fused_ in (False, True):  # (under the interpreter the launch itself dispatches ops, so none in the forward)
        loss = fused.hdd_distance(real, syn, k=1.0, fused=fused_).sum()
        with Ops() as ops:
            torch.autograd.grad(loss, syn)
        seen[fused_] = set(ops.names)
    assert {"bmm", "baddbmm"} <= seen[False]
    assert seen[True] <= {"ones_like", "expand", "_to_copy", "view", "mul", "detach"}, seen[True]


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_kernel_keeps_precision_at_nearly_coincident_directions(dtype):
    """Angular spread 1e-3 at radius 9.5: the spread shifted from the reference point stays exact."""
    k = 1.0
    real = _cluster(10, 48, 64, 1e-3, 9.5, dtype)
    syn = _cluster(10, 6, 64, 1e-3, 9.4, dtype)
    cr = ref_centroid([ref_point(feature(row), k) for row in real], k)
    cs = ref_centroid([ref_point(feature(row), k) for row in syn], k)
    want = float(ref_dist(cr, cs, k))
    got = float(fused.hdd_distance(real[None].to(DEV), syn[None].to(DEV), k=k, max_norm=None, fused=True)[0])
    assert abs(got - want) <= 500 * torch.finfo(dtype).eps * max(want, 1.0), (got, want)


_COMPILE_FOR_CUDA = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hyperdm import _triton_impl as K

v, acc, block, warps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
f64 = v == "*fp64"
kernels = [
    (K.real_pass, dict(v_ptr=v, part_ptr="*fp64", norms_ptr="*fp64", N="i32", NM="i32", D="i32", rows_per="i32",
     splits="i32"), ("inv_sk", "tmax", "tiny"), {}),
    (K.syn_finish, dict(part_ptr="*fp64", v_ptr=v, d_ptr="*fp64", cls_ptr="*fp64", vec_ptr=acc, norms_ptr="*fp64",
     N="i32", M="i32", D="i32", splits="i32"), ("sk", "inv_sk", "tmax", "multi_r", "multi_s", "scale"),
     {"GRAD": True}),
    (K.syn_rows, dict(v_ptr=v, cls_ptr="*fp64", vec_ptr=acc, out_ptr=v, M="i32", D="i32"),
     ("sk", "inv_sk", "tmax", "multi_s"), {}),
]
for fn, sig, floats, extra in kernels:
    # launched with Python floats, which Triton passes as float32 unless the parameter says float64
    assert {p.name for p in fn.params if p.annotation_type == "fp64"} == set(floats), fn.__name__
    consts = {"BLOCK_D": block, "F64": f64, **extra}
    consts.update({n: v for n, v in (("STATS", 5), ("CLS", 7)) if n in {p.name for p in fn.params}})
    sig = {**sig, **{n: "fp64" for n in floats}, **{n: "constexpr" for n in consts}}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps})
    assert k.asm.get("cubin"), fn.__name__
print("compiled")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "v,acc,block,warps",
    [("*fp32", "*fp32", 2048, 8), ("*fp64", "*fp64", 2048, 8), ("*fp16", "*fp32", 4096, 16)],
    ids=["float32", "float64", "float16"],
)
def test_kernels_compile_for_a_cuda_gpu(v, acc, block, warps):
    """The kernels compiled by Triton's CUDA backend to a cubin for an H100/H200 (sm_90), no GPU needed: the
    interpreter runs Python on NumPy and lets through what the compiler refuses (a float32 loop variable the
    loop makes float64; Python floats passed as float32)."""
    import subprocess
    import sys

    if os.environ.get("CI") != "true":
        pytest.importorskip("triton.backends.nvidia")
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_CUDA, v, acc, str(block), str(warps)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


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

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(triton_kernels, "hdd", boom)
    real = _features(2, 6, 8, scale=5.0, seed=6, dtype=torch.float32, device="cpu")
    syn = _features(2, 3, 8, scale=5.0, seed=7, dtype=torch.float32, device="cpu")
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
            real_labels=torch.arange(2, device=DEV).repeat_interleave(6),
            syn_labels=torch.arange(2, device=DEV).repeat_interleave(3),
        ),
        "learn_k": lambda: HyperbolicMatcher(fused=True, learn_k=True)(real, syn),
    }
    with pytest.raises(ValueError, match=match):
        calls[case]()
    with pytest.raises(ValueError, match="fused must be"):
        HyperbolicMatcher(fused="yes")
