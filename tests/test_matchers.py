"""HyperbolicMatcher / MMDMatcher and their functional twins.

References are written here independently, in float64, from the textbook formulas (at
radii where those are accurate), and from geoopt composed the way the official HDD code
composes it.
"""

from __future__ import annotations

import math
import re

import geoopt
import pytest
import torch

import hyperdm
from hyperdm import HyperbolicMatcher, MMDMatcher, hyperbolic_matching_loss, mmd_matching_loss

# ----------------------------------------------------------------------------- references


def ref_expmap0(v: torch.Tensor, k: float, max_norm: float | None) -> torch.Tensor:
    """Textbook exp-map at the origin in float64; the clamp rescales v to radius max_norm*sqrt(k)."""
    v = v.double()
    sk = math.sqrt(k)
    n = v.norm(dim=-1, keepdim=True)
    if max_norm is not None:
        v = torch.where(n / sk > max_norm, v * (max_norm * sk / n), v)
        n = v.norm(dim=-1, keepdim=True)
    t = n / sk
    return torch.cat((sk * torch.cosh(t), sk * torch.sinh(t) * v / n), dim=-1)


def ref_centroid(x: torch.Tensor, k: float, w: torch.Tensor | None = None) -> torch.Tensor:
    m = x.mean(-2) if w is None else (w.unsqueeze(-1) * x).sum(-2) / w.sum(-1, keepdim=True)
    mm = -(m[..., 0] ** 2) + (m[..., 1:] ** 2).sum(-1)
    return math.sqrt(k) * m / (-mm).sqrt().unsqueeze(-1)


def ref_dist(x: torch.Tensor, y: torch.Tensor, k: float) -> torch.Tensor:
    ip = -x[..., 0] * y[..., 0] + (x[..., 1:] * y[..., 1:]).sum(-1)
    return math.sqrt(k) * torch.acosh((-ip / k).clamp_min(1.0))


def ref_hdd(real, syn, k=1.0, scale=20.0, max_norm=10.0, hierarchical=False):
    """Per-class loss [C] for [C, N, D] inputs."""
    xr, xs = ref_expmap0(real, k, max_norm), ref_expmap0(syn, k, max_norm)
    wr = ws = None
    if hierarchical:

        def weight(x):
            r = math.sqrt(k) * torch.acosh(x[..., 0] / math.sqrt(k))
            t = r / math.sqrt(k)
            return torch.where(t > 0, t / torch.sinh(t), torch.ones_like(t))

        wr, ws = weight(xr), weight(xs)
    return scale * ref_dist(ref_centroid(xr, k, wr), ref_centroid(xs, k, ws), k)


def official_hdd(real, syn, k=1.0, scale=20.0, max_norm=10.0):
    """The official DM-HDD composition (per-class loop over geoopt, float64), clamp applied to v."""
    man = geoopt.Lorentz(k=torch.tensor(k, dtype=torch.float64))
    loss = torch.zeros((), dtype=torch.float64)
    for c in range(real.shape[0]):
        r, s = real[c].double(), syn[c].double()
        if max_norm is not None:

            def clamp(v):
                n = v.norm(dim=-1, keepdim=True)
                return torch.where(n > max_norm * math.sqrt(k), v * (max_norm * math.sqrt(k) / n), v)

            r, s = clamp(r), clamp(s)
        x = man.projx(man.expmap0(torch.nn.functional.pad(r, (1, 0))))
        y = man.projx(man.expmap0(torch.nn.functional.pad(s, (1, 0))))

        def cen(z):
            avg = z.mean(-2)
            ip = -(avg[0] ** 2) + (avg[1:] ** 2).sum()
            return math.sqrt(k) * avg / ip.abs().clamp_min(1e-8).sqrt()

        loss = loss + man.dist(cen(x), cen(y)) * scale
    return loss


def features(c, n, d, *, norm=25.0, seed=0, dtype=torch.float64):
    """ReLU features with norms around ``norm``, like a random ConvNet's."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(c, n, d, generator=g, dtype=torch.float64).relu() + 0.05
    v = v / v.norm(dim=-1, keepdim=True) * norm * (1 + 0.2 * torch.rand(c, n, 1, generator=g, dtype=torch.float64))
    return v.to(dtype)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("max_norm", [10.0, None])
@pytest.mark.parametrize("hierarchical", [False, True])
def test_hyperbolic_matches_float64_reference(k, max_norm, hierarchical):
    # Norms kept moderate (< 4 sqrt k) so that the textbook float64 reference is accurate.
    real = features(3, 40, 16, norm=2.0 * math.sqrt(k), seed=1)
    syn = features(3, 5, 16, norm=2.5 * math.sqrt(k), seed=2)
    mn = None if max_norm is None else 2.2  # a clamp that bites for some points
    got = HyperbolicMatcher(k, 7.0, max_norm=mn, hierarchical=hierarchical, reduction="none")(real, syn)
    want = ref_hdd(real, syn, k=k, scale=7.0, max_norm=mn, hierarchical=hierarchical)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("m", [1, 10])
def test_defaults_reproduce_official_dm_hdd(m):
    real = features(10, 64, 128, norm=25.0, seed=3)
    syn = features(10, m, 128, norm=22.0, seed=4)
    got = HyperbolicMatcher()(real, syn)
    want = official_hdd(real, syn, k=1.0, scale=20.0, max_norm=10.0)
    # Official code: geoopt acosh in float64 on points at radius 10 — accurate to ~1e-6.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_float32_agrees_with_float64():
    real = features(10, 256, 512, seed=5)
    syn = features(10, 10, 512, seed=6)
    l64 = HyperbolicMatcher(reduction="none")(real, syn)
    l32 = HyperbolicMatcher(reduction="none")(real.float(), syn.float())
    assert l32.dtype == torch.float32
    torch.testing.assert_close(l32.double(), l64, rtol=2e-5, atol=2e-5)


def test_mmd_is_dm_line():
    real = features(4, 30, 8, seed=7)
    syn = features(4, 3, 8, seed=8)
    want = sum(torch.sum((real[c].mean(0) - syn[c].mean(0)) ** 2) for c in range(4))
    torch.testing.assert_close(MMDMatcher()(real, syn), want)
    torch.testing.assert_close(mmd_matching_loss(real, syn), want)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("matcher", [HyperbolicMatcher, MMDMatcher])
def test_batched_equals_per_class_loop(matcher):
    real = features(5, 32, 24, seed=9, dtype=torch.float32)
    syn = features(5, 4, 24, seed=10, dtype=torch.float32)
    loop = torch.stack([matcher()(real[c], syn[c]) for c in range(5)])
    assert matcher()(real[0], syn[0]).shape == ()
    torch.testing.assert_close(matcher(reduction="none")(real, syn), loop)
    torch.testing.assert_close(matcher(reduction="sum")(real, syn), loop.sum())
    torch.testing.assert_close(matcher(reduction="mean")(real, syn), loop.mean())


@pytest.mark.parametrize("matcher", [HyperbolicMatcher, MMDMatcher])
def test_labels_group_without_loop(matcher):
    g = torch.Generator().manual_seed(11)
    labels_r = torch.tensor([7, 2, 2, 9, 7, 7, 2, 9, 9, 9, 2, 7, 7])
    labels_s = torch.tensor([9, 2, 7, 7, 2])
    real = torch.randn(len(labels_r), 6, generator=g, dtype=torch.float64).relu() * 5
    syn = torch.randn(len(labels_s), 6, generator=g, dtype=torch.float64).relu() * 5
    got = matcher(reduction="none")(real, syn, real_labels=labels_r, syn_labels=labels_s)
    want = torch.stack([matcher()(real[labels_r == c], syn[labels_s == c]) for c in (2, 7, 9)])
    torch.testing.assert_close(got, want)
    summed = matcher()(real, syn, real_labels=labels_r, syn_labels=labels_s)
    torch.testing.assert_close(summed, want.sum())


def test_labels_gradient_reaches_the_right_rows():
    labels_r = torch.tensor([0, 1, 0, 1, 1])
    labels_s = torch.tensor([1, 0])
    real = features(1, 5, 6, seed=12)[0]
    syn = features(1, 2, 6, seed=13)[0].requires_grad_()
    HyperbolicMatcher(max_norm=None)(real, syn, real_labels=labels_r, syn_labels=labels_s).backward()
    syn2 = syn.detach().clone().requires_grad_()
    loss = HyperbolicMatcher(max_norm=None)(real[labels_r == 1], syn2[:1]) + HyperbolicMatcher(max_norm=None)(
        real[labels_r == 0], syn2[1:]
    )
    loss.backward()
    torch.testing.assert_close(syn.grad, syn2.grad)


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_matcher_and_learned_k():
    real = features(2, 6, 4, norm=1.5, seed=14)
    syn = features(2, 3, 4, norm=1.2, seed=15).requires_grad_()
    log_k = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def f(s, lk):
        return hyperbolic_matching_loss(real, s, k=lk.exp(), scale=3.0, max_norm=None, hierarchical=True)

    assert torch.autograd.gradcheck(f, (syn, log_k))

    def g(s):
        return hyperbolic_matching_loss(real, s, k=0.7, max_norm=2.0)

    assert torch.autograd.gradcheck(g, (syn,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_norm", [10.0, None])
def test_finite_gradients_in_corner_cases(dtype, max_norm):
    m = HyperbolicMatcher(max_norm=max_norm)
    # Centroids coincide: the loss is exactly 0 and its gradient is 0 (a valid subgradient), not NaN.
    real = features(3, 4, 32, seed=16, dtype=dtype)
    syn = real.clone().requires_grad_()
    loss = m(real, syn)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(syn.grad).all() and syn.grad.abs().max() == 0
    # All-zero features on either side.
    zero = torch.zeros(3, 5, 32, dtype=dtype, requires_grad=True)
    loss = m(real, zero)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zero.grad).all()
    zero_real = torch.zeros(3, 8, 32, dtype=dtype)
    syn = features(3, 2, 32, seed=17, dtype=dtype).requires_grad_()
    m(zero_real, syn).backward()
    assert torch.isfinite(syn.grad).all()
    # Feature norms up to 1e4, IPC 1 and IPC 10.
    for mm in (1, 10):
        real = features(3, 64, 32, norm=1e4, seed=18, dtype=dtype)
        syn = features(3, mm, 32, norm=1e4, seed=19, dtype=dtype).requires_grad_()
        loss = m(real, syn)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(syn.grad).all()
        assert syn.grad.abs().max() > 0


def test_single_far_point_without_clamp_is_exact():
    # IPC 1 with the exact map: the synthetic centroid is the point itself, at radius |v|.
    real = features(1, 64, 16, norm=3.0, seed=20)
    syn = features(1, 1, 16, norm=40.0, seed=21)
    got = HyperbolicMatcher(scale=1.0, max_norm=None)(real, syn)
    xr = ref_centroid(ref_expmap0(real, 1.0, None), 1.0)[0]
    # law of cosines with a far point: d ~ t_s - t_r * cos(theta) + O(e^{-t_s}); use mpmath-free identity
    tr = torch.acosh(xr[0])
    ur = xr[1:] / xr[1:].norm()
    us = syn[0, 0] / syn[0, 0].norm()
    ts = syn[0, 0].norm()
    ch = torch.cosh(tr) * torch.cosh(ts) - torch.sinh(tr) * torch.sinh(ts) * (ur @ us)
    torch.testing.assert_close(got, torch.acosh(ch), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- modules


def test_learn_k_is_geoopts_learnable_k_and_trains():
    m = HyperbolicMatcher(k=2.0, learn_k=True)
    assert [n for n, _ in m.named_parameters()] == ["manifold.k"]
    assert isinstance(m.manifold, hyperdm.StableLorentz) and m.manifold.k.dtype == torch.float64
    assert abs(float(m.k.detach()) - 2.0) < 1e-12
    real = features(2, 16, 8, seed=22)
    syn = features(2, 2, 8, seed=23)
    m(real, syn).backward()
    assert m.manifold.k.grad is not None and torch.isfinite(m.manifold.k.grad) and m.manifold.k.grad != 0
    m2 = HyperbolicMatcher(learn_k=True)
    m2.load_state_dict(m.state_dict())
    assert float(m2.k.detach()) == float(m.k.detach())
    assert "learned" in repr(m) and "k=" in repr(HyperbolicMatcher())
    with torch.no_grad():
        m.manifold.k -= 100.0  # a step that leaves k <= 0 is refused with the fix
    with pytest.raises(ValueError, match="learned k went to -98"):
        m(real, syn)


def test_manifold_is_the_one_source_of_k():
    real = features(2, 16, 8, seed=24)
    syn = features(2, 3, 8, seed=25).requires_grad_()
    man = hyperdm.StableLorentz(torch.tensor(1.7, dtype=torch.float64), learnable=True)
    by_manifold = HyperbolicMatcher(manifold=man, scale=3.0)
    by_k = HyperbolicMatcher(1.7, 3.0)
    loss = by_manifold(real, syn)
    torch.testing.assert_close(loss, by_k(real, syn), rtol=1e-14, atol=0)
    torch.testing.assert_close(hyperbolic_matching_loss(real, syn, manifold=man, scale=3.0), loss, rtol=1e-14, atol=0)
    # the gradient reaches the manifold's k and equals the float64 finite difference
    (gk,) = torch.autograd.grad(loss, man.k)
    h = 1e-6
    fd = (
        hyperbolic_matching_loss(real, syn, k=1.7 + h, scale=3.0)
        - hyperbolic_matching_loss(real, syn, k=1.7 - h, scale=3.0)
    ) / (2 * h)
    assert abs(float(gk) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))
    # geoopt's optimiser moves k, and the matcher follows
    import geoopt

    opt = geoopt.optim.RiemannianAdam(by_manifold.parameters(), lr=0.1)
    opt.zero_grad()
    by_manifold(real, syn).backward()
    opt.step()
    assert abs(float(by_manifold.k.detach()) - 1.7) > 1e-3
    torch.testing.assert_close(
        by_manifold(real, syn), HyperbolicMatcher(float(man.k.detach()), 3.0)(real, syn), rtol=1e-12, atol=0
    )
    with pytest.raises(ValueError, match="pass the curvature once"):
        HyperbolicMatcher(2.0, manifold=man)
    with pytest.raises(ValueError, match="pass the curvature once"):
        hyperbolic_matching_loss(real, syn, k=2.0, manifold=man)
    with pytest.raises(ValueError, match=r"must be a geoopt\.Lorentz"):
        HyperbolicMatcher(manifold=torch.nn.Linear(2, 2))


def test_float16_features_are_upcast():
    real = features(2, 8, 8, seed=24, dtype=torch.float16)
    syn = features(2, 2, 8, seed=25, dtype=torch.float16)
    out = HyperbolicMatcher()(real, syn)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, HyperbolicMatcher()(real.float(), syn.float()))


def test_public_names():
    for name in ("HyperbolicMatcher", "MMDMatcher", "hyperbolic_matching_loss", "mmd_matching_loss", "lorentz"):
        assert hasattr(hyperdm, name)
    assert isinstance(hyperdm.__version__, str)


# ----------------------------------------------------------------------------- bad input


def _raises(fn, word, *words):
    with pytest.raises(ValueError, match=re.escape(word)) as err:
        fn()
    msg = str(err.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


@pytest.mark.parametrize("matcher", [HyperbolicMatcher, MMDMatcher])
def test_bad_inputs(matcher):
    m = matcher()
    real = features(3, 8, 5, seed=26, dtype=torch.float32)
    syn = features(3, 2, 5, seed=27, dtype=torch.float32)
    bad = real.clone()
    bad[1, 2, 3] = float("nan")
    _raises(lambda: m(bad, syn), "real", "NaN")
    bad = syn.clone()
    bad[0, 0, 0] = float("inf")
    _raises(lambda: m(real, bad), "syn", "NaN/inf")
    _raises(lambda: m(real[0, 0], syn[0, 0]), "[C, N, D]")
    _raises(lambda: m(real[None], syn[None]), "[C, N, D]")
    _raises(lambda: m(real, syn[..., :4]), "D=5", "D=4")
    _raises(lambda: m(real, syn[:2]), "C=3", "C=2")
    _raises(lambda: m(real[:, :0], syn), "empty class")
    _raises(lambda: m(real, syn[:, :0]), "empty class")
    _raises(lambda: m(real.long(), syn), "floating point")
    flat_r, flat_s = real.reshape(-1, 5), syn.reshape(-1, 5)
    lr = torch.arange(3).repeat_interleave(8)
    ls = torch.tensor([0, 0, 1, 1, 1, 1])
    _raises(lambda: m(flat_r, flat_s, real_labels=lr, syn_labels=ls), "[2]", "empty class")
    _raises(lambda: m(flat_r, flat_s, real_labels=lr), "both")
    _raises(lambda: m(flat_r, flat_s, real_labels=lr[:-1], syn_labels=ls), "one label per row")
    _raises(lambda: m(flat_r, flat_s, real_labels=lr.float(), syn_labels=ls), "integer")
    _raises(lambda: matcher(reduction="avg"), "'sum'", "'mean'", "'none'")


@pytest.mark.parametrize("k", [0.0, -1.0, float("nan")])
def test_bad_k(k):
    _raises(lambda: HyperbolicMatcher(k=k), "k must be > 0", "curvature -1/k")
    _raises(lambda: hyperbolic_matching_loss(torch.ones(2, 3), torch.ones(1, 3), k=torch.tensor(k)), "k must be > 0")


def test_bad_scale_and_clamp():
    _raises(lambda: HyperbolicMatcher(scale=-1.0), "scale", ">= 0")
    _raises(lambda: HyperbolicMatcher(scale=float("nan")), "scale")
    _raises(lambda: HyperbolicMatcher(max_norm=0.0), "max_norm")


def test_check_finite_can_be_turned_off():
    real = torch.full((2, 3), float("nan"))
    out = HyperbolicMatcher(check_finite=False)(real, torch.ones(1, 3))
    assert torch.isnan(out)


# ---- scale="auto": lambda from the first batch ---------------------------------------------------


def _auto_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(3, 40, 16, generator=g, dtype=torch.float64) * 2 + 1
    syn = torch.randn(3, 5, 16, generator=g, dtype=torch.float64) * 2
    return real, syn


@pytest.mark.parametrize("max_norm", [10.0, None])
def test_auto_scale_starts_at_the_mmd_line_and_then_stays(max_norm):
    real, syn = _auto_batch()
    m = HyperbolicMatcher(k=2.0, scale="auto", max_norm=max_norm)
    assert m.scale is None and "scale='auto'" in repr(m)
    loss = m(real, syn)
    mmd = float(((real.mean(1) - syn.mean(1)) ** 2).sum())  # DM's line, independently
    assert float(loss) == pytest.approx(mmd, rel=1e-12)
    dist = float(hyperbolic_matching_loss(real, syn, k=2.0, scale=1.0, max_norm=max_norm))
    assert m.scale == pytest.approx(mmd / dist, rel=1e-12) and "chose" in repr(m)
    # later batches use the same lambda; it is a constant for the gradient
    syn2 = (syn + 0.5).requires_grad_(True)
    loss2 = m(real, syn2)
    unscaled = hyperbolic_matching_loss(real, syn2.detach(), k=2.0, scale=1.0, max_norm=max_norm)
    assert float(loss2.detach()) == pytest.approx(m.scale * float(unscaled), rel=1e-12)
    (g_auto,) = torch.autograd.grad(loss2, syn2)
    (g_fixed,) = torch.autograd.grad(
        hyperbolic_matching_loss(real, syn2, k=2.0, scale=m.scale, max_norm=max_norm), syn2
    )
    assert torch.allclose(g_auto, g_fixed, rtol=1e-12, atol=0)


def test_auto_scale_survives_a_state_dict_round_trip():
    real, syn = _auto_batch()
    m = HyperbolicMatcher(scale="auto")
    m(real, syn)
    other = HyperbolicMatcher(scale="auto")
    other.load_state_dict(m.state_dict())
    assert other.scale == m.scale
    real2, syn2 = _auto_batch(1)  # not re-chosen on the next batch
    assert float(other(real2, syn2)) == pytest.approx(float(m(real2, syn2)), rel=1e-12)
    fresh = HyperbolicMatcher(scale="auto")
    fresh.load_state_dict(HyperbolicMatcher(scale="auto").state_dict())
    assert fresh.scale is None
    # a fixed-scale matcher's state dict is unchanged (old checkpoints still load)
    assert "chosen_scale" not in HyperbolicMatcher(scale=20.0).state_dict()


def test_auto_scale_bad_inputs():
    real, _ = _auto_batch()
    with pytest.raises(ValueError, match=r"scale='auto' picks lambda from the first batch.*differ"):
        HyperbolicMatcher(scale="auto")(real, real.clone())
    with pytest.raises(ValueError, match=r"needs HyperbolicMatcher\(scale='auto'\)"):
        hyperbolic_matching_loss(real, real[:, :3], scale="auto")
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        HyperbolicMatcher(scale="Auto")


# ---- k under a saturated clamp ------------------------------------------------------------------


@pytest.mark.parametrize("k", [0.5, 2.0, 3.0])
def test_saturated_clamp_makes_k_a_loss_scale(k):
    """With every |v| above max_norm*sqrt(k), each point is sqrt(k) times its k=1 twin, so the loss and
    its gradient are exactly sqrt(k) times those at k=1 (why the k sweep tracks the lambda sweep)."""
    g = torch.Generator().manual_seed(5)

    def far(*shape):
        v = torch.randn(*shape, generator=g, dtype=torch.float64)
        return (
            v / v.norm(dim=-1, keepdim=True) * (20 + 30 * torch.rand(*shape[:-1], 1, generator=g, dtype=torch.float64))
        )

    real, syn = far(3, 40, 16), far(3, 5, 16).requires_grad_(True)
    assert float(real.norm(dim=-1).min()) > 10 * math.sqrt(3.0)
    loss_k = hyperbolic_matching_loss(real, syn, k=k, scale=40.0, max_norm=10.0)
    loss_1 = hyperbolic_matching_loss(real, syn, k=1.0, scale=40.0, max_norm=10.0)
    (grad_k,) = torch.autograd.grad(loss_k, syn)
    (grad_1,) = torch.autograd.grad(loss_1, syn)
    assert float(loss_k.detach()) == pytest.approx(math.sqrt(k) * float(loss_1.detach()), rel=1e-9)
    torch.testing.assert_close(grad_k, math.sqrt(k) * grad_1, rtol=1e-8, atol=1e-12)
    syn = syn.detach()
    exact_k = float(hyperbolic_matching_loss(real, syn, k=k, scale=40.0, max_norm=None))  # no clamp: k is geometry
    exact_1 = float(hyperbolic_matching_loss(real, syn, k=1.0, scale=40.0, max_norm=None))
    assert abs(exact_k - math.sqrt(k) * exact_1) > 1e-3 * exact_k


def test_finite_check_names_the_side_and_class_and_reads_no_feature_when_the_loss_is_finite():
    """The default check reads the scalar loss only; the features are inspected only once it is NaN/inf, and the
    error names the side and the class."""
    from torch.utils._python_dispatch import TorchDispatchMode

    g = torch.Generator().manual_seed(3)
    real = torch.randn(3, 16, 8, generator=g, dtype=torch.float64).abs() * 3
    syn = (torch.randn(3, 2, 8, generator=g, dtype=torch.float64).abs() * 3).requires_grad_()

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            flat = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            if any(a.untyped_storage().data_ptr() == real.untyped_storage().data_ptr() for a in flat):
                self.n += 1
            return func(*args, **(kwargs or {}))

    reads = {}
    for check in (True, False):
        m = HyperbolicMatcher(check_finite=check, stats=False)
        with Reads() as r:
            m(real, syn)
        reads[check] = r.n
    assert reads[True] == reads[False] > 0
    bad = real.clone()
    bad[1, 5, 2] = float("nan")
    with pytest.raises(ValueError, match=r"real features contain 1 NaN/inf values in class 1, so the hyperbolic"):
        HyperbolicMatcher()(bad, syn)
    bad_syn = syn.detach().clone()
    bad_syn[0, 0, 0] = float("inf")
    bad_syn[2, 1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"syn features contain 2 NaN/inf values in classes 0, 2"):
        HyperbolicMatcher()(real, bad_syn)
