"""The first-call self-check of the Triton kernels, their bounds and the switch that turns them off, run under
Triton's interpreter on CPU tensors (``fused="auto"`` is allowed there by ``fused.AUTO_ON_INTERPRETER``)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

if os.environ.get("CI") == "true":
    import triton  # (must be installed in CI: these tests may not be skipped there)
else:
    triton = pytest.importorskip("triton")

from hyperdm import HyperbolicMatcher, fused, kernel_check, triton_kernels

pytestmark = pytest.mark.skipif(
    not triton_kernels.interpreting(),
    reason="needs Triton's interpreter (TRITON_INTERPRET=1 before triton is imported)",
)

F64 = torch.float64


def _features(c, n, d, *, seed, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(c, n, d, generator=g, dtype=F64).relu() + 0.05) * scale).to(dtype)


@pytest.fixture
def auto_on_cpu(monkeypatch):
    """``fused="auto"`` takes the kernels on CPU tensors (the interpreter), with no verdict kept from other tests."""
    monkeypatch.setattr(fused, "AUTO_ON_INTERPRETER", True)
    monkeypatch.delenv(kernel_check.ENV, raising=False)
    kernel_check.reset()
    yield
    kernel_check.reset()


class _Counted:
    """Wraps ``triton_kernels.hdd``, counting calls; ``mode`` makes it wrong or raise."""

    def __init__(self, mode="right"):
        self.real_hdd = triton_kernels.hdd
        self.calls = 0
        self.mode = mode

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.mode == "raise":
            raise RuntimeError("PassManager::run failed (a compiler that does not know this GPU)")
        d, g = self.real_hdd(*args, **kwargs)
        if self.mode == "wrong":
            return d * 1.05, None if g is None else g * 1.05
        return d, g


def _loss_and_grad(matcher, real, syn):
    s = syn.clone().requires_grad_()
    loss = matcher(real, s)
    (g,) = torch.autograd.grad(loss, s)
    return loss.detach(), g


@pytest.mark.slow
def test_a_right_kernel_is_checked_once_per_key_then_trusted(auto_on_cpu, monkeypatch):
    counted = _Counted()
    monkeypatch.setattr(triton_kernels, "hdd", counted)
    real, syn = _features(3, 20, 24, seed=1), _features(3, 4, 24, seed=2)
    m = HyperbolicMatcher(check_finite=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(3):
            loss, g = _loss_and_grad(m, real, syn)
    assert counted.calls == 1 + 3  # the check's own kernel call, then one per call
    want, gw = _loss_and_grad(HyperbolicMatcher(fused=False), real, syn)
    torch.testing.assert_close(loss, want, rtol=2e-6, atol=0)
    torch.testing.assert_close(g, gw, rtol=1e-4, atol=1e-6)
    (status,) = kernel_check.kernel_status().values()
    assert status["status"] == "ok" and status["loss_error"] < 1e-6 and status["tolerance"] == 1e-3
    assert status["triton"] == triton.__version__ and status["torch"] == torch.__version__
    # another key (D, dtype or clamp) is checked on its own first call
    HyperbolicMatcher(max_norm=None)(real, syn)
    HyperbolicMatcher()(real[..., :16], syn[..., :16])
    assert sorted(kernel_check.kernel_status()) == [
        "cpu, float32, D=16, clamp=10",
        "cpu, float32, D=24, clamp=10",
        "cpu, float32, D=24, clamp=300",
    ]


@pytest.mark.parametrize("mode,status", [("wrong", "mismatch"), ("raise", "error")])
def test_a_wrong_or_failing_kernel_falls_back_with_one_warning_and_the_right_loss(
    auto_on_cpu, monkeypatch, mode, status
):
    counted = _Counted(mode)
    monkeypatch.setattr(triton_kernels, "hdd", counted)
    real, syn = _features(3, 20, 24, seed=3), _features(3, 4, 24, seed=4)
    want, gw = _loss_and_grad(HyperbolicMatcher(fused=False), real, syn)
    m = HyperbolicMatcher()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        results = [_loss_and_grad(m, real, syn) for _ in range(3)]
    msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1, msgs
    assert "PyTorch path" in msgs[0] and "triton" in msgs[0] and "torch" in msgs[0] and "HYPERDM_TRITON=0" in msgs[0]
    assert "report" in msgs[0] and "D=24" in msgs[0]
    for loss, g in results:  # every call, the first included, gives the PyTorch path's numbers exactly
        assert torch.equal(loss, want) and torch.equal(g, gw)
    assert counted.calls == 1  # the check only: never again for this key
    (v,) = kernel_check.kernel_status().values()
    assert v["status"] == status
    if mode == "wrong":
        assert v["loss_error"] == pytest.approx(0.05, rel=1e-3) and "disagree" in v["reason"]
    else:
        assert "PassManager::run failed" in v["reason"]


@pytest.mark.parametrize("mode", ["wrong", "raise"])
def test_fused_true_raises_instead(auto_on_cpu, monkeypatch, mode):
    monkeypatch.setattr(triton_kernels, "hdd", _Counted(mode))
    real, syn = _features(2, 8, 16, seed=5), _features(2, 2, 16, seed=6)
    with pytest.raises(kernel_check.KernelMismatchError, match="fused=True: the Triton kernels"):
        HyperbolicMatcher(fused=True)(real, syn)
    with pytest.raises(kernel_check.KernelMismatchError):  # the verdict is kept: raised again, not re-checked
        HyperbolicMatcher(fused=True)(real, syn)


def test_a_kernel_that_fails_on_a_later_shape_falls_back_in_that_call(auto_on_cpu, monkeypatch):
    """Triton compiles again for some new shapes; a failure then still gives the PyTorch path's loss."""
    counted = _Counted()
    monkeypatch.setattr(triton_kernels, "hdd", counted)
    real, syn = _features(2, 8, 16, seed=7), _features(2, 2, 16, seed=8)
    m = HyperbolicMatcher()
    m(real, syn)  # checked: ok
    counted.mode = "raise"
    other = _features(2, 33, 16, seed=9)
    with pytest.warns(RuntimeWarning, match="failed to compile or launch"):
        loss = m(other, syn)
    assert torch.equal(loss, HyperbolicMatcher(fused=False)(other, syn))
    assert next(iter(kernel_check.kernel_status().values()))["status"] == "error"
    calls = counted.calls
    m(other, syn)
    assert counted.calls == calls  # not tried again for this key


def test_centroids_that_coincide_decide_nothing(auto_on_cpu, monkeypatch):
    """Where every class's centroids coincide, the distance is rounding and its gradient's direction too: the
    check keeps no verdict (the PyTorch path this call) and decides on a later call."""
    counted = _Counted()
    monkeypatch.setattr(triton_kernels, "hdd", counted)
    syn = _features(2, 3, 12, seed=10)
    m = HyperbolicMatcher()
    m(syn.clone(), syn)
    assert kernel_check.kernel_status() == {}
    m(_features(2, 9, 12, seed=11), syn)
    assert next(iter(kernel_check.kernel_status().values()))["status"] == "ok"


def test_the_environment_turns_the_kernels_off(auto_on_cpu, monkeypatch):
    counted = _Counted()
    monkeypatch.setattr(triton_kernels, "hdd", counted)
    monkeypatch.setenv(kernel_check.ENV, "0")
    real, syn = _features(2, 8, 16, seed=12), _features(2, 2, 16, seed=13)
    HyperbolicMatcher()(real, syn)
    assert counted.calls == 0 and kernel_check.kernel_status() == {}
    with pytest.raises(ValueError, match="turned off for this program by HYPERDM_TRITON=0"):
        HyperbolicMatcher(fused=True)(real, syn)
    monkeypatch.setenv(kernel_check.ENV, "1")
    HyperbolicMatcher()(real, syn)
    assert counted.calls == 2  # the check and the call


@pytest.mark.parametrize("d", [kernel_check.MAX_BLOCK_D, kernel_check.MAX_BLOCK_D + 1], ids=["at-cap", "past-cap"])
def test_feature_size_just_below_and_above_the_cap(auto_on_cpu, d):
    real, syn = _features(1, 2, d, seed=14, scale=0.3), _features(1, 1, d, seed=15, scale=0.3)
    want = fused.hdd_distance(real, syn, k=1.0, fused=False)
    got = fused.hdd_distance(real, syn, k=1.0)  # auto
    (v,) = kernel_check.kernel_status().values()
    if d <= kernel_check.MAX_BLOCK_D:
        assert v["status"] == "ok"
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
        torch.testing.assert_close(fused.hdd_distance(real, syn, k=1.0, fused=True), want, rtol=1e-5, atol=0)
    else:
        assert v["status"] == "unsupported" and "MAX_BLOCK_D" in v["reason"] and "16384" in v["reason"]
        assert torch.equal(got, want)  # the PyTorch path
        with pytest.raises(ValueError, match="cannot take this size"):
            fused.hdd_distance(real, syn, k=1.0, fused=True)


def test_partial_sums_past_their_cap_take_the_pytorch_path(auto_on_cpu, monkeypatch):
    real, syn = _features(4, 130, 16, seed=16), _features(4, 2, 16, seed=17)
    need = 4 * 3 * (5 + 3 * 16) * 8  # C x splits (130 rows in blocks of 64) x (5 + 3 D) float64
    monkeypatch.setattr(kernel_check, "MAX_PARTIAL_BYTES", need - 1)
    fused.hdd_distance(real, syn, k=1.0)
    (v,) = kernel_check.kernel_status().values()
    assert v["status"] == "unsupported" and "MAX_PARTIAL_BYTES" in v["reason"]
    monkeypatch.setattr(kernel_check, "MAX_PARTIAL_BYTES", need)
    assert kernel_check.bounds(4, 130, 16, triton_kernels.ROWS_PER_PROGRAM) is None


@pytest.mark.slow
def test_many_classes():
    """C = 1,000 classes of 2 real points, D = 64: one program per class (and row block, and synthetic row), all of
    them right (the kernels called directly: one run of each, the interpreter's slowest test)."""
    real, syn = _features(1000, 2, 64, seed=18), _features(1000, 1, 64, seed=19)
    assert kernel_check.bounds(1000, 2, 64, triton_kernels.ROWS_PER_PROGRAM) is None
    d, g = triton_kernels.hdd(real, syn, sk=1.0, tmax=10.0, scale=1.0, grad=True)
    s2 = syn.clone().requires_grad_()
    want = fused.hdd_distance(real, s2, k=1.0, fused=False)
    (gw,) = torch.autograd.grad(want.sum(), s2)
    torch.testing.assert_close(d, want, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(g, gw, rtol=1e-4, atol=1e-5 * float(gw.abs().max()))


@pytest.mark.slow
def test_the_kernels_write_the_norms_the_radius_statistics_read():
    """On the Triton path the statistics come from the norms the kernels take as they go: the same values as on the
    PyTorch path, and no norm pass of their own (no linalg_vector_norm op is dispatched)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    real = torch.cat((_features(2, 30, 16, seed=20, scale=1.0), _features(2, 10, 16, seed=21, scale=9.0)), 1)
    syn = _features(2, 3, 16, seed=22, scale=4.0)
    kernel_check.reset()
    fused.hdd_distance(real, syn, k=1.0, fused=True)  # the first call's check, not counted
    _, stats = fused.hdd_distance_with_stats(real, syn, k=2.0, fused=False)
    with Ops() as ops:
        _, sk = fused.hdd_distance_with_stats(real, syn, k=2.0, fused=True)
    assert "linalg_vector_norm" not in ops.names
    for name, value in stats.as_dict().items():
        assert sk.as_dict()[name] == pytest.approx(value, rel=1e-6), name
    assert 0 < stats.as_dict()["real_clamped"] < 1
    kernel_check.reset()
