"""hyperdm.pruning: scores against independent float64 math, exact selection, FeatureBank round trips."""

import math

import numpy as np
import pytest
import torch

from hyperdm.pruning import FeatureBank, class_centroid_distance, hyperbolic_radius, select


def test_select_exact_global_and_per_class():
    s = torch.tensor([5.0, 1.0, 3.0, 1.0, 0.0, 9.0, 2.0, 2.0])
    assert select(s, keep=0.5).tolist() == [1, 3, 4, 6]  # ties 6/7 broken by index
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert select(s, keep=0.5, labels=labels).tolist() == [1, 3, 4, 6]
    assert select(s, keep=0.01, labels=labels).tolist() == [1, 4]  # never empty
    assert select(s, keep=1.0).tolist() == list(range(8))


@pytest.mark.parametrize("kw,word", [({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep")])
def test_select_bad_keep(kw, word):
    with pytest.raises(ValueError, match=word):
        select(torch.zeros(3), **kw)


def test_select_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        select(torch.tensor([1.0, float("nan")]), keep=0.5)
    with pytest.raises(ValueError, match="one label per score"):
        select(torch.zeros(3), keep=0.5, labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D"):
        select(torch.zeros(2, 2), keep=0.5)


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0])
def test_radius_is_clamped_norm(k):
    f = torch.randn(50, 7, dtype=torch.float64) * 3
    torch.testing.assert_close(hyperbolic_radius(f, k=k), f.norm(dim=-1))
    torch.testing.assert_close(hyperbolic_radius(f, k=k, max_norm=2.0), f.norm(dim=-1).clamp(max=2.0 * math.sqrt(k)))


def test_class_centroid_distance_against_float64():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2] * 10)
    k = 1.5
    sk = math.sqrt(k)
    n = f.norm(dim=-1, keepdim=True)
    x = torch.cat((sk * torch.cosh(n / sk), sk * torch.sinh(n / sk) * f / n), -1)
    want = torch.empty(30, dtype=torch.float64)
    for c in range(3):
        m = x[y == c].mean(0)
        cen = sk * m / (m[0] ** 2 - (m[1:] ** 2).sum()).sqrt()
        ip = -x[y == c, 0] * cen[0] + x[y == c, 1:] @ cen[1:]
        want[y == c] = sk * torch.acosh(-ip / k)
    got = class_centroid_distance(f, y, k=k)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(class_centroid_distance(f, y, k=k, chunk_size=7), got)


def _bank_inputs():
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(20, 1, 8, 8, generator=g)
    ys = torch.arange(20) % 4
    e1, e2 = torch.nn.Linear(64, 6), torch.nn.Linear(64, 6)
    ex = [lambda x, e=e: e(x.flatten(1)) for e in (e1, e2)]
    batches = [(imgs[i : i + 6], ys[i : i + 6]) for i in range(0, 20, 6)]
    return imgs, ys, ex, batches


def test_feature_bank_build_scores_select(tmp_path):
    imgs, ys, ex, batches = _bank_inputs()
    bank = FeatureBank.build(batches, ex)
    with torch.no_grad():
        direct = torch.stack([e(imgs) for e in ex])
    torch.testing.assert_close(bank.features, direct)
    assert bank.labels.tolist() == ys.tolist()
    want = (direct.double().norm(dim=-1)).mean(0)
    torch.testing.assert_close(bank.scores("radius"), want)
    cen = bank.scores("centroid")
    torch.testing.assert_close(
        cen, (class_centroid_distance(direct[0], ys) + class_centroid_distance(direct[1], ys)) / 2
    )
    assert bank.select(0.5).tolist() == select(want, keep=0.5, labels=ys).tolist()
    bank.save(tmp_path / "bank")
    again = FeatureBank.load(tmp_path / "bank")
    assert torch.equal(again.features, bank.features) and torch.equal(again.labels, bank.labels)


def test_feature_bank_float16_memmap(tmp_path):
    imgs, ys, ex, batches = _bank_inputs()
    bank = FeatureBank.build(batches, ex, dtype=torch.float16, path=tmp_path / "f.npy", num_samples=20)
    assert bank.features.dtype == torch.float16
    with torch.no_grad():
        direct = torch.stack([e(imgs) for e in ex]).half()
    assert torch.equal(bank.features, direct)
    bank.save(tmp_path / "copy")
    assert torch.equal(FeatureBank.load(tmp_path / "copy", mmap=False).features, direct)
    with pytest.raises(ValueError, match="num_samples"):
        FeatureBank.build(batches, ex, path=tmp_path / "g.npy", num_samples=25)
    with pytest.raises(ValueError, match="num_samples"):
        FeatureBank.build(batches, ex, path=tmp_path / "h.npy")
    # scoring a memmap bank chunk by chunk (3 rows at a time) gives the scores of the whole bank at once
    mm = FeatureBank.load(tmp_path / "copy")  # memmap-backed
    assert isinstance(mm._features, np.memmap)
    for method in ("radius", "centroid"):
        whole = mm.scores(method, chunk_size=10**9)
        torch.testing.assert_close(mm.scores(method, chunk_size=3), whole, rtol=1e-12, atol=1e-12)
        ref = (
            sum(
                hyperbolic_radius(direct[e].double())
                if method == "radius"
                else class_centroid_distance(direct[e].double(), ys)
                for e in range(2)
            )
            / 2
        )
        torch.testing.assert_close(whole, ref, rtol=1e-9, atol=1e-9)
    assert mm.select(0.5, chunk_size=3).tolist() == mm.select(0.5).tolist()


def test_feature_bank_rejects_nan():
    _imgs, _ys, ex, batches = _bank_inputs()
    bad = [(b[0].clone(), b[1]) for b in batches]
    bad[1][0][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="batch 1"):
        FeatureBank.build(bad, ex)


def _composed_centroid_distance(f, y, k, max_norm):
    """The per-class composition of ``lorentz`` functions (the scorer before streaming): each class's rows, their
    Law centroid (:func:`lorentz.feature_centroid`), then ``lorentz.dist`` of every row's point to it."""
    from hyperdm import lorentz

    out = torch.empty(y.numel(), dtype=torch.float64)
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).squeeze(1)
        rows = f[idx].double()
        cent = lorentz.feature_centroid(rows[None], k=k, max_norm=max_norm)[0]
        out[idx] = lorentz.dist(lorentz.expmap0(rows, k=k, max_norm=max_norm), cent, k=k)
    return out


@pytest.mark.parametrize("max_norm", [None, 10.0, 1.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_streamed_centroid_distance_equals_the_composition(max_norm, dtype):
    """Shuffled labels over 7 classes (one with a single row, one with a zero row), radii from 0.05 to 60 with the
    exact map (each class's largest radius found in a later chunk than its first rows), chunks of 5 rows: the
    two-pass streaming scorer gives the lorentz composition's distances to float64 round-off."""
    g = torch.Generator().manual_seed(7)
    n, d, k = 120, 9, 1.7
    f = torch.randn(n, d, generator=g, dtype=torch.float64).abs()
    f = f / f.norm(dim=-1, keepdim=True) * torch.linspace(0.05, 60.0, n, dtype=torch.float64).unsqueeze(-1)
    y = torch.randint(0, 6, (n,), generator=g)
    y[17] = 6  # a class of one row
    f[40] = 0.0
    f = f.to(dtype)
    want = _composed_centroid_distance(f, y, k, max_norm)
    for chunk in (5, None):
        got = class_centroid_distance(
            f.numpy() if dtype != torch.float16 else f, y, k=k, max_norm=max_norm, chunk_size=chunk
        )
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert select(got, keep=0.3, labels=y).tolist() == select(want, keep=0.3, labels=y).tolist()


def test_feature_bank_reads_a_memmap_in_order_once_per_pass(tmp_path, monkeypatch):
    """The scorers read the rows in file order, chunk after chunk (no gathering of a class's rows)."""
    from hyperdm import pruning

    g = torch.Generator().manual_seed(8)
    feats = (torch.randn(1, 50, 6, generator=g).abs() * 3).half().numpy()
    np.save(tmp_path / "b.npy", feats)
    (tmp_path / "b.json").write_text('{"labels": ' + str((torch.arange(50) % 4).tolist()) + "}")
    bank = FeatureBank.load(tmp_path / "b")
    seen = []
    real = pruning._float64_rows
    monkeypatch.setattr(pruning, "_float64_rows", lambda f, s, e: seen.append((s, e)) or real(f, s, e))
    bank.scores("centroid", chunk_size=16)
    assert seen == [(0, 16), (16, 32), (32, 48), (48, 50)] * 2
    seen.clear()
    bank.scores("radius", chunk_size=16)
    assert seen == [(0, 16), (16, 32), (32, 48), (48, 50)]


def test_select_equals_the_per_class_loop_and_leaves_float64_banks_untouched():
    """The one-sort selection keeps exactly what sorting each class on its own keeps (ties by index, each class
    max(1, round(keep n_c)) rows, Python's round), on scores with many ties; the scorers never write into the
    features they are given."""
    g = torch.Generator().manual_seed(9)
    for n, classes, keep in ((500, 7, 0.2), (64, 64, 0.5), (300, 3, 0.25), (37, 5, 0.5)):
        scores = torch.randint(0, 20, (n,), generator=g).double()  # many ties
        labels = torch.randint(0, classes, (n,), generator=g) * 3 + 1  # labels need not be 0..C-1
        want = []
        for c in torch.unique(labels).tolist():
            idx = torch.nonzero(labels == c).squeeze(1)
            want.append(idx[torch.argsort(scores[idx], stable=True)[: max(1, round(keep * idx.numel()))]])
        assert select(scores, keep=keep, labels=labels).tolist() == torch.sort(torch.cat(want)).values.tolist()
    f = torch.randn(40, 6, generator=g, dtype=torch.float64)
    before = f.clone()
    FeatureBank(f[None], torch.arange(40) % 3).scores("centroid")
    class_centroid_distance(f, torch.arange(40) % 3)
    assert torch.equal(f, before)
