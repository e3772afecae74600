"""Where the features sit (radius statistics, the saturation warning) and the radius calibration, against float64
computed here by hand."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hyperdm import HyperbolicMatcher, hyperbolic_matching_loss, lorentz
from hyperdm.radius import RadiusStats, calibration_factor, median

F64 = torch.float64


def _shell(c, n, d, radius, seed, spread=0.15, dtype=F64):
    """Features of norms ``radius * (1 +- spread)`` in random (non-negative, as after a ReLU) directions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c, n, d, generator=g, dtype=F64).abs()
    norms = radius * (1.0 + spread * (2 * torch.rand(c, n, 1, generator=g, dtype=F64) - 1))
    return (x / x.norm(dim=-1, keepdim=True) * norms).to(dtype)


class _Syncs(TorchDispatchMode):
    """Counts the ATen ops that read a tensor value on the host."""

    def __init__(self):
        super().__init__()
        self.reads = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.item, torch.ops.aten.is_nonzero):
            self.reads += 1
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------------------------ the median


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_median_is_numpys_and_masked_entries_do_not_count(n):
    g = torch.Generator().manual_seed(n)
    x = torch.rand(3, n, generator=g, dtype=F64) * 10
    assert float(median(x)) == pytest.approx(float(np.median(x.numpy())), abs=1e-15)
    valid = torch.rand(3, n, generator=g) < 0.6
    valid[0, 0] = True
    garbage = torch.where(valid, x, torch.full_like(x, -1e9))  # masked values must not matter
    assert float(median(garbage, valid)) == pytest.approx(float(np.median(x[valid].numpy())), abs=1e-15)


def test_median_reads_nothing_on_the_host():
    x, valid = torch.rand(4, 9, dtype=F64), torch.rand(4, 9) < 0.5
    valid[0, 0] = True
    with _Syncs() as s:
        median(x)
        median(x, valid)
    assert s.reads == 0 and s.ops > 0


# --------------------------------------------------------------------------------------- the radius statistics


@pytest.mark.parametrize("k,max_norm", [(1.0, 10.0), (2.5, 6.0), (1.0, None)])
def test_last_stats_against_float64_by_hand(k, max_norm):
    """Median of |v|/sqrt(k) and the fraction at the clamp, per side, as computed here from the raw features."""
    real = torch.cat((_shell(2, 20, 12, 5.0, 0), _shell(2, 20, 12, 25.0, 1)), dim=1)  # half inside, half beyond 10
    syn = _shell(2, 3, 12, 9.0, 2, spread=0.5).requires_grad_()
    m = HyperbolicMatcher(k=k, max_norm=max_norm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m(real, syn).backward()
    st = m.last_stats
    assert isinstance(st, RadiusStats)
    clamp = lorentz.SAFE_RADIUS if max_norm is None else max_norm
    for side, x in (("real", real), ("syn", syn.detach())):
        t = (x.norm(dim=-1) / math.sqrt(k)).flatten().numpy()
        assert float(getattr(st, f"{side}_median")) == pytest.approx(float(np.median(t)), rel=1e-13)
        assert float(getattr(st, f"{side}_clamped")) == pytest.approx(float(np.mean(t >= clamp)), abs=1e-15)
    assert st.as_dict()["real_clamped"] == pytest.approx(float(np.mean(real.norm(dim=-1).numpy() / k**0.5 >= clamp)))


def test_stats_with_labels_count_every_row_once():
    """Flat features with labels are padded per class; the padding is not a point."""
    g = torch.Generator().manual_seed(5)
    real = torch.randn(23, 8, generator=g, dtype=F64).abs() * 4
    syn = torch.randn(6, 8, generator=g, dtype=F64).abs() * 4
    yr = torch.tensor([0] * 15 + [1] * 8)  # unequal classes: 7 padded rows in class 1
    ys = torch.tensor([0, 0, 0, 0, 0, 1])
    m = HyperbolicMatcher(k=2.0)
    m(real, syn, real_labels=yr, syn_labels=ys)
    st = m.last_stats.as_dict()
    assert st["real_median"] == pytest.approx(float(np.median(real.norm(dim=-1).numpy())) / 2**0.5, rel=1e-13)
    assert st["syn_median"] == pytest.approx(float(np.median(syn.norm(dim=-1).numpy())) / 2**0.5, rel=1e-13)


def test_stats_add_no_host_read_and_no_pass_over_the_features():
    """After the first call (which checks once for saturation), a call with statistics dispatches exactly the ops of
    a call without them, and reading the statistics as tensors reads nothing on the host."""
    real, syn = _shell(4, 32, 24, 20.0, 3), _shell(4, 4, 24, 20.0, 4).requires_grad_()
    counts = {}
    for stats in (True, False):
        m = HyperbolicMatcher(check_finite=False, stats=stats)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m(real, syn)
        with _Syncs() as s:
            torch.autograd.grad(m(real, syn), syn)
        counts[stats] = (s.ops, s.reads)
    assert counts[True] == counts[False], counts
    assert counts[True][1] == 0
    m = HyperbolicMatcher(check_finite=False)
    with _Syncs() as s, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m(real, syn)
    assert s.reads == 2  # the saturation check, and the median for its message
    inside = HyperbolicMatcher(check_finite=False, k=16.0)
    with _Syncs() as s:
        inside(real, syn)
    assert s.reads == 1  # the saturation check alone
    with _Syncs() as s:
        value = m.last_stats.real_clamped
    assert s.reads == 0 and float(value) == 1.0


# ------------------------------------------------------------------------------------------ the warning


def test_saturated_batch_warns_once_in_one_line():
    real, syn = _shell(3, 40, 16, 22.0, 6), _shell(3, 2, 16, 22.0, 7)
    m = HyperbolicMatcher()  # HDD as published: |v| ~ 22 > 10, every point at the clamp
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            m(real, syn)
    msgs = [str(w.message) for w in rec if "clamp" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "\n" not in msgs[0]
    assert "100% of the real features" in msgs[0] and "only feature directions" in msgs[0]
    assert "k only scales the loss" in msgs[0] and "docs/geometry.md" in msgs[0]
    assert "radius=" in msgs[0]
    assert rec[0].filename == __file__  # points at the caller's line, not at torch's Module machinery


@pytest.mark.parametrize(
    "make",
    [
        lambda: HyperbolicMatcher(radius=2.0),  # calibrated: median 2, far from the clamp at 10
        lambda: HyperbolicMatcher(max_norm=None),  # exact map: nothing near SAFE_RADIUS
        lambda: HyperbolicMatcher(k=9.0),  # |v|/3 ~ 7: inside the clamp
    ],
    ids=["calibrated", "exact", "inside"],
)
def test_unsaturated_batch_does_not_warn(make):
    real, syn = _shell(3, 40, 16, 22.0, 6), _shell(3, 2, 16, 22.0, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make()(real, syn)


def test_just_under_the_threshold_does_not_warn():
    """90 % clamped is not 'more than 90 %'; 37 of 40 (92.5 %) is."""
    inside, outside = _shell(1, 4, 16, 5.0, 8), _shell(1, 36, 16, 22.0, 9)
    syn = _shell(1, 2, 16, 22.0, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HyperbolicMatcher()(torch.cat((inside, outside), 1), syn)
    with pytest.warns(UserWarning, match="92% of the real"):
        HyperbolicMatcher()(torch.cat((inside[:, :3], outside, outside[:, :1]), 1), syn)


# ------------------------------------------------------------------------------------------ the calibration


@pytest.mark.parametrize("r0,k", [(1.0, 1.0), (2.0, 1.0), (4.0, 2.0), (8.0, 0.5)])
def test_calibration_puts_the_first_batch_median_radius_at_r0(r0, k):
    real, syn = _shell(3, 21, 16, 24.0, 11), _shell(3, 2, 16, 24.0, 12)
    m = HyperbolicMatcher(k=k, radius=r0, max_norm=None)
    m(real, syn)
    alpha = m.alpha
    # by hand, in float64: the median over every real point of |alpha v| / sqrt(k)
    t = (alpha * real.norm(dim=-1) / math.sqrt(k)).flatten().numpy()
    assert float(np.median(t)) == pytest.approx(r0, rel=1e-14)
    assert float(m.last_stats.real_median) == pytest.approx(r0, rel=1e-14)  # what the matcher reports
    assert float(m.feature_scale) == alpha
    # fixed after the first batch: a batch twice as far out sits at 2 r0
    m(2 * real, syn)
    assert m.alpha == alpha and float(m.last_stats.real_median) == pytest.approx(2 * r0, rel=1e-14)


@pytest.mark.parametrize("max_norm,hierarchical", [(None, False), (10.0, False), (None, True)])
def test_calibration_equals_scaling_the_features(max_norm, hierarchical):
    """radius=r0 is scale * d_L of the features times alpha (k and the clamp as given): the matcher computes it as
    scale * alpha * d with k / alpha^2; both loss and gradient agree with the scaled features to float64 round-off."""
    real, syn = _shell(3, 30, 16, 24.0, 13, spread=0.4), _shell(3, 4, 16, 24.0, 14, spread=0.4)
    m = HyperbolicMatcher(k=1.5, scale=7.0, radius=3.0, max_norm=max_norm, hierarchical=hierarchical)
    s1 = syn.clone().requires_grad_()
    loss = m(real, s1)
    (g1,) = torch.autograd.grad(loss, s1)
    alpha = m.alpha
    s2 = syn.clone().requires_grad_()
    ref = hyperbolic_matching_loss(
        alpha * real, alpha * s2, k=1.5, scale=7.0, max_norm=max_norm, hierarchical=hierarchical
    )
    (g2,) = torch.autograd.grad(ref, s2)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)
    # and the functional radius= calibrates on its own call the same way
    f = hyperbolic_matching_loss(real, syn, k=1.5, scale=7.0, radius=3.0, max_norm=max_norm, hierarchical=hierarchical)
    assert f.item() == pytest.approx(ref.item(), rel=1e-12)


def test_calibration_factor_by_hand():
    norms = torch.tensor([[3.0, 5.0, 100.0], [4.0, 6.0, 0.0]], dtype=F64)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    # the valid norms 3, 4, 5, 6, 100: median 5; alpha * 5 / sqrt(4) = 2  =>  alpha = 0.8
    assert float(calibration_factor(norms, 2.0, k=4.0, valid=valid)) == pytest.approx(0.8, rel=1e-15)
    with pytest.raises(ValueError, match="median feature norm"):
        calibration_factor(torch.zeros(3, dtype=F64), 2.0, k=1.0)


def test_calibration_survives_a_state_dict_round_trip():
    real, syn = _shell(3, 20, 16, 24.0, 15), _shell(3, 2, 16, 24.0, 16)
    a = HyperbolicMatcher(radius=2.0, max_norm=None, scale="auto")
    a(real, syn)
    state = a.state_dict()
    assert set(state) == {"chosen_scale", "feature_scale"}
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b = HyperbolicMatcher(radius=2.0, max_norm=None, scale="auto")
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.alpha == a.alpha and b.scale == a.scale
    other = 1.7 * _shell(3, 20, 16, 24.0, 17)  # another batch: b must not calibrate again
    assert b(other, syn).item() == pytest.approx(a(other, syn).item(), rel=1e-15)
    assert "radius=2" in repr(b) and f"{a.alpha:.6g}" in repr(b)
    # a matcher that has not calibrated yet saves NaN and loads as not calibrated
    c = HyperbolicMatcher(radius=2.0)
    c.load_state_dict(HyperbolicMatcher(radius=2.0).state_dict())
    assert c.alpha is None


def test_auto_scale_with_calibration_starts_at_the_mmd_line():
    """scale='auto' picks lambda in the calibrated geometry: the first loss equals the first batch's MMD."""
    real, syn = _shell(3, 20, 16, 24.0, 18, spread=0.4), _shell(3, 2, 16, 24.0, 19, spread=0.4)
    m = HyperbolicMatcher(radius=2.0, max_norm=None, scale="auto")
    first = m(real, syn).item()
    mmd = (real.mean(1) - syn.mean(1)).square().sum().item()
    assert first == pytest.approx(mmd, rel=1e-12)
    # lambda is stated for the scaled features: scale * d_L(alpha v) reproduces it
    ref = hyperbolic_matching_loss(m.alpha * real, m.alpha * syn, scale=m.scale, max_norm=None)
    assert ref.item() == pytest.approx(first, rel=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "2"])
def test_bad_radius_is_refused_before_any_work(bad):
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        HyperbolicMatcher(radius=bad)
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        hyperbolic_matching_loss(torch.ones(2, 3), torch.ones(1, 3), radius=bad)


def test_calibrated_k_is_the_equivalent_curvature():
    real, syn = _shell(2, 10, 8, 24.0, 20), _shell(2, 2, 8, 24.0, 21)
    m = HyperbolicMatcher(k=2.0, radius=4.0, max_norm=None)
    assert m.calibrated_k == 2.0
    loss = m(real, syn)
    ref = hyperbolic_matching_loss(real, syn, k=m.calibrated_k, scale=20.0 * m.alpha, max_norm=None)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
