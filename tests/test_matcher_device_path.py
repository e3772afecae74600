"""The CUDA-friendly matcher path: no host-device sync (checked with the profiler) and the
torch.compile path against the plain one (the reference)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from hyperdm import HyperbolicMatcher, MMDMatcher
from hyperdm import matchers as matchers_mod

SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero")


def _features(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(4, 32, 48, generator=g, dtype=dtype).relu() * 4.0  # |v| ~ 20: clamped, as ConvNet features
    syn = (torch.randn(4, 4, 48, generator=g, dtype=dtype).relu() * 4.0).requires_grad_(True)
    return real, syn


def _profiled_ops(fn) -> list[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


def _forward_backward(matcher, real, syn):
    def run():
        loss = matcher(real, syn)
        (grad,) = torch.autograd.grad(loss, syn)
        return loss, grad

    return run


@pytest.mark.parametrize(
    "matcher",
    [
        HyperbolicMatcher(check_finite=False),
        HyperbolicMatcher(scale=3.0, max_norm=None, check_finite=False),
        HyperbolicMatcher(hierarchical=True, check_finite=False),
        MMDMatcher(check_finite=False),
    ],
    ids=["hdd", "hdd-noclamp", "hdd-hier", "mmd"],
)
def test_batched_path_has_no_host_sync(matcher):
    real, syn = _features()
    with warnings.catch_warnings():  # the first call checks once where the points sit (one host read)
        warnings.simplefilter("ignore")
        _forward_backward(matcher, real, syn)()
    ops = _profiled_ops(_forward_backward(matcher, real, syn))
    assert len(ops) > 10  # the profiler saw the computation
    assert not [o for o in ops if o in SYNC_OPS], "a tensor value was read on the host in forward/backward"
    if isinstance(matcher, HyperbolicMatcher):  # the radius statistics are recorded, still on the device
        assert matcher.last_stats is not None
        ops = _profiled_ops(lambda: matcher.last_stats.real_median)
        assert not [o for o in ops if o in SYNC_OPS]


def test_first_call_reads_one_value_for_the_saturation_check_and_none_without_stats():
    """The one host read a first call adds: whether most real points sit at the clamp (to warn once). With
    ``stats=False`` there is none, and no statistics."""
    real, syn = _features()
    with pytest.warns(UserWarning, match="at the clamp"):
        ops = _profiled_ops(_forward_backward(HyperbolicMatcher(check_finite=False), real, syn))
    assert sum(o in SYNC_OPS for o in ops) >= 1
    quiet = HyperbolicMatcher(check_finite=False, stats=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops = _profiled_ops(_forward_backward(quiet, real, syn))
    assert not [o for o in ops if o in SYNC_OPS]
    assert quiet.last_stats is None


def test_profiler_detects_the_finite_check_sync():
    """The check above can fail: the finite check's one host read is visible to the same profiler."""
    real, syn = _features()
    matcher = HyperbolicMatcher(check_finite=True, stats=False)  # no first-call saturation check
    ops = _profiled_ops(_forward_backward(matcher, real, syn))
    assert sum(o == "aten::_local_scalar_dense" for o in ops) == 1


@pytest.mark.slow
def test_compiled_path_equals_plain_path():
    """One compile (float64, one shape) for the whole test: loss, gradient, coincident centroids, op count."""
    real, syn = _features()
    plain = HyperbolicMatcher(k=1.5, scale=7.0, check_finite=False)
    fused = HyperbolicMatcher(k=1.5, scale=7.0, check_finite=False, compile=True)
    assert "compile=True" in repr(fused)
    lp, gp = _forward_backward(plain, real, syn)()
    lc, gc = _forward_backward(fused, real, syn)()
    assert lc.dtype == lp.dtype == torch.float64
    assert torch.allclose(lc, lp, rtol=1e-12, atol=0)
    assert torch.allclose(gc, gp, rtol=1e-10, atol=1e-14)
    assert gc.abs().max() > 0
    # coincident centroids (the real batch is the synthetic points, each 8 times; same shapes, no recompile):
    # distance ~0 (rounding) and a finite gradient of the plain path's size; its direction is the rounding's
    # (the gradient of a distance at ~0 is a unit direction), so only sizes are compared
    syn_same = real[:, :4].clone().requires_grad_(True)
    real_same = syn_same.detach().repeat(1, 8, 1)
    lc0, gc0 = _forward_backward(fused, real_same, syn_same)()
    lp0, gp0 = _forward_backward(plain, real_same, syn_same)()
    assert torch.isfinite(gc0).all() and torch.isfinite(lc0)
    assert float(lc0.detach()) < 1e-9 and float(lp0.detach()) < 1e-9
    print(f"coincident: |grad| compiled {float(gc0.norm()):.4g}, plain {float(gp0.norm()):.4g}")
    assert 0.2 < float(gc0.norm() / gp0.norm()) < 5.0
    # fusion: the compiled forward + backward runs far fewer ATen ops, and reads nothing on the host
    ops_plain = [o for o in _profiled_ops(_forward_backward(plain, real, syn)) if o.startswith("aten::")]
    ops_fused = [o for o in _profiled_ops(_forward_backward(fused, real, syn)) if o.startswith("aten::")]
    assert len(ops_fused) < len(ops_plain) / 3, (len(ops_fused), len(ops_plain))
    print(f"ATen ops, forward + backward: plain {len(ops_plain)}, compiled {len(ops_fused)}")
    assert not [o for o in ops_fused if o in SYNC_OPS]


def test_compile_failure_names_the_fix(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    def broken(*args, **kwargs):
        raise BackendCompilerFailed("inductor", RuntimeError("no C++ compiler"), None)

    monkeypatch.setitem(matchers_mod._COMPILED, "hyperbolic", broken)
    real, syn = _features()
    with pytest.raises(RuntimeError, match="compile=False"):
        HyperbolicMatcher(compile=True)(real, syn)


@pytest.mark.slow
def test_default_matcher_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) of a function calling HyperbolicMatcher() with its defaults (finite check on):
    no graph break (fullgraph would raise), the same loss and gradient as eager. On CUDA the check is a device-side
    assert; on the CPU, compiled, it is left out."""
    real, syn = _features()
    matcher = HyperbolicMatcher()

    def step(r, s):
        return matcher(r, s)

    compiled = torch.compile(step, fullgraph=True)
    le, ge = _forward_backward(step, real, syn)()
    lc, gc = _forward_backward(compiled, real, syn)()
    torch.testing.assert_close(lc, le, rtol=1e-12, atol=0)
    torch.testing.assert_close(gc, ge, rtol=1e-10, atol=1e-14)
    bad = real.clone()
    bad[0, 0, 0] = float("nan")
    assert torch.isnan(compiled(bad, syn))  # on the CPU the compiled check is left out: NaN comes back as is
    with pytest.raises(ValueError, match="real features contain 1 NaN"):  # eager keeps the clear error
        step(bad, syn)
