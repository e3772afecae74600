"""Matching across processes (gloo, 2 CPU processes): loss and synthetic gradient equal one process on the union."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hyperdm import HyperbolicMatcher, MMDMatcher, hyperbolic_matching_loss

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
    ),
]

# name -> matcher factory taking a process group (None: single process)
MATCHERS = {
    "hdd": lambda g: HyperbolicMatcher(k=1.0, scale=20.0, process_group=g),
    "hdd-noclamp-hier-k2": lambda g: HyperbolicMatcher(
        k=2.0, scale=3.0, max_norm=None, hierarchical=True, process_group=g
    ),
    "hdd-auto": lambda g: HyperbolicMatcher(scale="auto", process_group=g),
    "hdd-none": lambda g: HyperbolicMatcher(reduction="none", process_group=g),
    "hdd-radius": lambda g: HyperbolicMatcher(radius=2.0, max_norm=None, process_group=g),
    "hdd-radius-auto": lambda g: HyperbolicMatcher(radius=3.0, scale="auto", process_group=g),
    "mmd": lambda g: MMDMatcher(process_group=g),
}
SPLIT = 7  # rank 0 holds real features [:, :7], rank 1 the other 5: unequal shards


def _data():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(3, 12, 16, generator=g, dtype=torch.float64).relu() * 4.0
    real[1] *= 0.1  # one class well inside the clamp radius
    syn = torch.randn(3, 2, 16, generator=g, dtype=torch.float64).relu() * 4.0
    return real, syn


def _bank():
    g = torch.Generator().manual_seed(1)
    feats = (torch.randn(2, 41, 8, generator=g).relu() * 3).half()  # 2 extractors, 41 samples (odd: unequal shards)
    labels = torch.randint(0, 5, (41,), generator=g)
    labels[labels == 4] = 3  # class 4 has no sample anywhere; fine, as long as no score needs it
    labels[1::2][labels[1::2] == 2] = 0  # class 2 only on rank 0
    return feats, labels


def _loss_and_grad(matcher, real, syn):
    syn = syn.clone().requires_grad_(True)
    loss = matcher(real, syn)
    (grad,) = torch.autograd.grad(loss.sum(), syn)
    return loss.detach(), grad


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        real, syn = _data()
        shard = real[:, :SPLIT] if rank == 0 else real[:, SPLIT:]
        results = {name: _loss_and_grad(make(dist.group.WORLD), shard, syn) for name, make in MATCHERS.items()}
        results["auto_scale"] = None
        m = MATCHERS["hdd-auto"](dist.group.WORLD)
        m(shard, syn)
        results["auto_scale"] = m.scale
        errors = {}
        for name, call in {
            "labels": lambda: hyperbolic_matching_loss(
                shard.flatten(0, 1),
                syn.flatten(0, 1),
                process_group=dist.group.WORLD,
                real_labels=torch.arange(3).repeat_interleave(shard.shape[1]),
                syn_labels=torch.arange(3).repeat_interleave(2),
            ),
            "real_grad": lambda: HyperbolicMatcher(process_group=dist.group.WORLD)(
                shard.clone().requires_grad_(True), syn
            ),
        }.items():
            try:
                call()
            except ValueError as e:
                errors[name] = str(e)
        from hyperdm.distributed import check_process_group

        only_rank0 = dist.new_group([0])  # every rank takes part in making it; rank 1 gets a placeholder
        for name, call in {
            "not_a_group": lambda: check_process_group(object()),
            "not_a_member": lambda: check_process_group(only_rank0),
            "matcher_not_a_member": lambda: rank == 1 and HyperbolicMatcher(process_group=only_rank0)(shard, syn),
        }.items():
            try:
                call()
            except ValueError as e:
                errors[name] = str(e)
        results["errors"] = errors
        # a feature bank sharded by stride: rank r holds samples r, r+2, ...
        feats, labels = _bank()
        from hyperdm.pruning import FeatureBank

        bank = FeatureBank(feats[:, rank::2].numpy(), labels[rank::2])
        for method in ("radius", "centroid"):
            results[f"bank_{method}"] = bank.select(
                0.3, method=method, process_group=dist.group.WORLD, num_classes=5, total=labels.numel()
            )
        results["bank_centroid_scores"] = bank.scores("centroid", process_group=dist.group.WORLD, num_classes=5)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.start_processes(_worker, args=(2, str(tmp / "rendezvous"), str(tmp)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("name", list(MATCHERS))
def test_two_ranks_equal_one_process_on_the_union(two_ranks, name):
    real, syn = _data()
    ref_loss, ref_grad = _loss_and_grad(MATCHERS[name](None), real, syn)
    for rank, res in enumerate(two_ranks):
        loss, grad = res[name]
        assert torch.allclose(loss, ref_loss, rtol=1e-10, atol=0), (rank, loss, ref_loss)
        assert torch.allclose(grad, ref_grad, rtol=1e-9, atol=1e-13), (rank, (grad - ref_grad).abs().max())
    # and a shard alone does not give the union's answer (the check above can fail)
    shard_loss, _ = _loss_and_grad(MATCHERS[name](None), real[:, :SPLIT], syn)
    assert not torch.allclose(shard_loss, ref_loss, rtol=1e-6)


def test_auto_scale_is_the_same_on_every_rank(two_ranks):
    real, syn = _data()
    m = HyperbolicMatcher(scale="auto")
    m(real, syn)
    assert two_ranks[0]["auto_scale"] == pytest.approx(m.scale, rel=1e-12)
    assert two_ranks[1]["auto_scale"] == pytest.approx(m.scale, rel=1e-12)


def test_distributed_misuse_is_a_clear_error(two_ranks):
    for res in two_ranks:
        assert "[C, N, D]" in res["errors"]["labels"]
        assert "must not require grad" in res["errors"]["real_grad"]
    real, syn = _data()
    with pytest.raises(ValueError, match="init_process_group"):
        HyperbolicMatcher(process_group=object())(real, syn)
    with pytest.raises(ValueError, match="compile=True and process_group"):
        HyperbolicMatcher(compile=True, process_group=object())


def test_process_group_must_be_a_group_holding_this_rank(two_ranks):
    for res in two_ranks:
        assert "must be a torch.distributed process group" in res["errors"]["not_a_group"]
    assert "not_a_member" not in two_ranks[0]["errors"]  # rank 0 is in the group
    for name in ("not_a_member", "matcher_not_a_member"):  # rank 1 is not: its all-reduce would do nothing
        assert "rank 1 is not a member of this group" in two_ranks[1]["errors"][name]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("method", ["radius", "centroid"])
def test_sharded_feature_bank_selects_what_one_process_selects(two_ranks, method):
    from hyperdm.pruning import FeatureBank

    feats, labels = _bank()
    whole = FeatureBank(feats.numpy(), labels)
    want = whole.select(0.3, method=method)
    assert torch.equal(two_ranks[0][f"bank_{method}"], want) and torch.equal(two_ranks[1][f"bank_{method}"], want)
    if method == "centroid":  # each rank's scores are the whole bank's scores of its rows
        ref = whole.scores("centroid")
        for rank in range(2):
            torch.testing.assert_close(two_ranks[rank]["bank_centroid_scores"], ref[rank::2], rtol=1e-10, atol=1e-12)
        assert not torch.allclose(FeatureBank(feats[:, 0::2].numpy(), labels[0::2]).scores("centroid"), ref[0::2])
