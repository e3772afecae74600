"""The DM loop on real Fashion-MNIST: artifacts, determinism, resume after SIGKILL, NaN stop, batching.

Tiny settings (a few iterations, few real images, short evaluations) keep this file fast on 2 cores.
"""

from __future__ import annotations

import json
import signal

import pytest
import torch
from helpers import RESUME_ARGS, kill_and_resume, needs_fmnist, small, tiny_cfg
from torch import nn

from hyperdm import HyperbolicMatcher, MMDMatcher
from hyperdm.distill.artifacts import load_synthetic
from hyperdm.distill.augment import dsa
from hyperdm.distill.evaluate import derive_seed
from hyperdm.distill.loops import DMLoop, NonFiniteLossError, get_loop
from hyperdm.distill.presets import resolve

# training runs, subprocesses or spawned processes: left out by `pytest -m "not slow"`
pytestmark = pytest.mark.slow


@needs_fmnist
@pytest.mark.parametrize("matcher", ["mmd", "hyperbolic"])
def test_tiny_run_writes_every_artifact(tmp_path, matcher):
    out = tmp_path / "run"
    metrics = DMLoop(tiny_cfg(matcher), small(), str(out), progress=False).run()
    for name in (
        "config.json",
        "checkpoint.pt",
        "synthetic.pt",
        "synthetic.png",
        "metrics.json",
        "poincare.png",
        "run.log",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["matcher"]["kind"] == matcher and cfg["seed"] == 3 and cfg["versions"]["torch"] == torch.__version__
    assert cfg["sources"]["iterations"] == "command line / override"
    images, labels, meta = load_synthetic(out)
    assert images.shape == (10, 1, 28, 28) and labels.tolist() == list(range(10))
    assert meta["normalised"] is True and meta["dataset"] == "fashion-mnist"
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["loss"]) == 4 and all(v > 0 for v in m["loss"]) and m["final"] is True
    assert m["loss_per_class"][0] == pytest.approx(m["loss"][0] / 10)
    assert m["images_per_second"] > 0 and m["images_seen"] == 4 * (10 * 8 + 10 * 1)
    assert m["storage"]["float32_bytes"] == 10 * 784 * 4 and m["storage"]["uint8_bytes"] == 10 * 784
    assert [e["iteration"] for e in m["evals"]] == [4]
    assert 0 <= m["evals"][0]["ConvNet"]["mean"] <= 1
    assert (
        metrics["evals"] == m["evals"] and metrics["images_per_second"] == m["images_per_second"]
    )  # returned = written
    assert "iterations" in (out / "run.log").read_text()  # the resolved settings are logged


@needs_fmnist
def test_same_seed_same_images_and_images_move(tmp_path):
    real = small()
    a = DMLoop(tiny_cfg(eval_runs=0), real, str(tmp_path / "a"), progress=False)
    a.run()
    b = DMLoop(tiny_cfg(eval_runs=0), real, str(tmp_path / "b"), progress=False)
    b.run()
    c = DMLoop(tiny_cfg(eval_runs=0, seed=4), real, str(tmp_path / "c"), progress=False)
    c.run()
    xa, xb, xc = (load_synthetic(tmp_path / n)[0] for n in "abc")
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, xc)
    # the images were actually optimised away from their real initialisation
    init = DMLoop(tiny_cfg(eval_runs=0, iterations=0), real, str(tmp_path / "d"), progress=False)
    init.run()
    assert not torch.allclose(load_synthetic(tmp_path / "d")[0], xa)


@needs_fmnist
def test_batched_forward_equals_reference_per_class_loop(tmp_path):
    """The loop's all-class forward gives the reference's per-class loss (instance norm is per-sample)."""
    cfg = tiny_cfg(eval_runs=0, ipc=2)
    loop = DMLoop(cfg, small(), str(tmp_path), progress=False)
    loop._init_synthetic()
    it = 5
    loss = loop.matching_loss(it)
    # the reference: one forward per class, the same draws
    net, gen = loop.fresh_network(it), loop.generator(it)
    matcher = HyperbolicMatcher(cfg.matcher.k, cfg.matcher.scale, max_norm=cfg.matcher.max_norm)
    ref = torch.zeros((), dtype=torch.float64)
    for c in range(10):
        seed = derive_seed(cfg.seed, it, c)
        r = dsa(loop.sample_real(c, cfg.batch_real, gen), cfg.dsa_strategy, seed=seed, siamese=True)
        s = dsa(loop.syn_class(c), cfg.dsa_strategy, seed=seed, siamese=True)
        ref = ref + matcher(net.embed(r).detach().double(), net.embed(s).double())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


@needs_fmnist
def test_mmd_matcher_is_dm_line(tmp_path):
    cfg = tiny_cfg("mmd", eval_runs=0, ipc=2)
    loop = DMLoop(cfg, small(), str(tmp_path), progress=False)
    loop._init_synthetic()
    loss = loop.matching_loss(0)
    net, gen = loop.fresh_network(0), loop.generator(0)
    ref = 0.0
    for c in range(10):
        seed = derive_seed(cfg.seed, 0, c)
        r = net.embed(dsa(loop.sample_real(c, cfg.batch_real, gen), cfg.dsa_strategy, seed=seed, siamese=True))
        s = net.embed(dsa(loop.syn_class(c), cfg.dsa_strategy, seed=seed, siamese=True))
        ref += torch.sum((r.mean(0) - s.mean(0)) ** 2).item()  # DM's MMD line, verbatim
    assert loss.item() == pytest.approx(ref, rel=1e-4)


class _NaNAfter(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.inner, self.calls, self.n = MMDMatcher(check_finite=False), 0, n

    def forward(self, real, syn, **kw):
        self.calls += 1
        loss = self.inner(real, syn, **kw)
        return loss * float("nan") if self.calls > self.n else loss


@needs_fmnist
def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    loop = DMLoop(tiny_cfg("mmd", iterations=10, eval_runs=0), small(), str(out), matcher=_NaNAfter(5), progress=False)
    with pytest.raises(NonFiniteLossError, match=r"iteration 5.*last good checkpoint \(iteration 4\)"):
        loop.run()
    st = torch.load(out / "checkpoint.pt", weights_only=True)
    assert st["iteration"] == 4 and torch.isfinite(st["images"]).all()
    m = json.loads((out / "metrics.json").read_text())
    assert "stopped" in m and len(m["loss"]) == 5
    assert not (out / "synthetic.pt").exists()


@needs_fmnist
def test_nan_before_the_first_checkpoint_does_not_point_at_one(tmp_path):
    out = tmp_path / "run"
    loop = DMLoop(tiny_cfg("mmd", iterations=10, eval_runs=0), small(), str(out), matcher=_NaNAfter(0), progress=False)
    with pytest.raises(
        NonFiniteLossError,
        match=r"iteration 0; stopped before the first checkpoint, so there is nothing to resume\..*--overwrite",
    ):
        loop.run()
    assert not (out / "checkpoint.pt").exists()
    assert "stopped before the first checkpoint" in json.loads((out / "metrics.json").read_text())["stopped"]


@needs_fmnist
def test_existing_run_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    DMLoop(tiny_cfg(eval_runs=0, iterations=2), small(), str(out), progress=False).run()
    with pytest.raises(FileExistsError, match="--resume"):
        DMLoop(tiny_cfg(eval_runs=0, iterations=2), small(), str(out), progress=False).run()
    with pytest.raises(ValueError, match=r"different settings.*seed"):
        DMLoop(tiny_cfg(eval_runs=0, iterations=2, seed=9), small(), str(out), progress=False).run(resume=True)


@needs_fmnist
def test_bad_ipc_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--ipc <= 40"):
        DMLoop(tiny_cfg(ipc=41), small(), str(tmp_path), progress=False)


@needs_fmnist
def test_prune_keep_restricts_the_real_pool(tmp_path):
    cfg = tiny_cfg(eval_runs=0, iterations=1, prune_keep=0.25, prune_nets=1)
    loop = DMLoop(cfg, small(), str(tmp_path), progress=False)
    loop.run()
    assert loop.kept is not None and loop.kept.numel() == 10 * 10
    assert [int(i.numel()) for i in loop.class_indices] == [10] * 10
    st = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert torch.equal(st["kept"], loop.kept)


def test_get_loop_names_every_method():
    assert [get_loop(m).method for m in ("dm", "idm", "dance")] == ["dm", "idm", "dance"]
    with pytest.raises(ValueError, match="unknown method 'gm'; choose one of dm, idm, dance"):
        get_loop("gm")


@needs_fmnist
def test_short_dm_run_beats_chance_on_fashion_mnist(tmp_path):
    cfg = tiny_cfg("mmd", ipc=10, iterations=5, batch_real=16, eval_epochs=30, eval_runs=1)
    m = DMLoop(cfg, small(per_class=200, test=2000), str(tmp_path), progress=False).run()
    acc = m["evals"][-1]["ConvNet"]["mean"]
    assert acc > 0.45, acc  # chance is 0.10


@needs_fmnist
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = kill_and_resume([*RESUME_ARGS, "--out", str(full)], [*RESUME_ARGS, "--out", str(killed)], killed, at=6)
    assert 6 <= done < 30
    a, b = load_synthetic(full)[0], load_synthetic(killed)[0]
    assert torch.equal(a, b)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, killed))
    assert ma["loss"] == mb["loss"] and len(ma["loss"]) == 30


@needs_fmnist
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_scheduler_signal_saves_the_step_and_resume_matches_the_uninterrupted_run(tmp_path, sig):
    """SIGTERM (SLURM, Kubernetes, timeout) or SIGUSR1 mid-run: the run finishes its step, writes the checkpoint of
    that step (not only the last one of --checkpoint-every: here every 100 iterations, never reached), exits 143 /
    138 naming --resume, and the resumed run equals the uninterrupted one bit for bit."""
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    args = [a if a != "3" else "100" for a in RESUME_ARGS]  # --checkpoint-every 100: only the signal's checkpoint

    def running():  # the first iteration is done (its radii are logged): send the signal
        log = stopped / "run.log"
        return log.exists() and "radii at iteration 0" in log.read_text()

    done = kill_and_resume(
        [*args, "--out", str(full)], [*args, "--out", str(stopped)], stopped, at=0, sig=sig, ready=running
    )
    assert 1 <= done < 30
    assert torch.equal(load_synthetic(full)[0], load_synthetic(stopped)[0])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, stopped))
    assert ma["loss"] == mb["loss"] and len(ma["loss"]) == 30
    log = (stopped / "run.log").read_text()
    assert f"stopped by {signal.Signals(sig).name}: the checkpoint is at iteration {done}" in log


@needs_fmnist
def test_a_second_sigterm_while_the_stop_is_saved_still_leaves_the_checkpoint(tmp_path):
    """torchrun forwards the SIGTERM it gets to every rank, so ``kill`` of the process group (scancel, a pod's end)
    delivers two: the second, arriving while the first one's checkpoint is written, must not cut the save."""
    import os

    from hyperdm.distill.signals import Stopped

    cfg = tiny_cfg(iterations=6, eval_runs=0, checkpoint_every=100)
    real = small()

    class Signalled(DMLoop):
        sent = 0

        def step(self, it):
            value = super().step(it)
            if it == 2 and not self.sent:
                self.sent = 1
                os.kill(os.getpid(), signal.SIGTERM)
            return value

        def _checkpoint(self, it):
            if self.sent == 1:  # the stop's save: the launcher's forwarded SIGTERM arrives now
                self.sent = 2
                os.kill(os.getpid(), signal.SIGTERM)
            super()._checkpoint(it)

    with pytest.raises(Stopped):
        Signalled(cfg, real, str(tmp_path / "stopped"), progress=False).run()
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3 and len(state["metrics"]["loss"]) == 3
    assert "stopped by SIGTERM: the checkpoint is at iteration 3" in (tmp_path / "stopped" / "run.log").read_text()


@needs_fmnist
def test_under_torchrun_a_signal_cuts_rank_0s_evaluation_and_the_ranks_stop_at_the_agreed_check(tmp_path):
    """The loop's torchrun wiring, in one process: rank 0 of a one-rank gloo group that the loop treats as
    distributed (every collective real). A SIGTERM during the final evaluation ends it at once; the stop waits for
    the agreement (the all-reduce of the largest signal), which comes after the checkpoint; resuming evaluates."""
    import dataclasses
    import os

    import torch.distributed as dist

    from hyperdm.distill.parallel import Parallel
    from hyperdm.distill.signals import Stopped

    @dataclasses.dataclass(frozen=True)
    class OneRankGroup(Parallel):
        agreed: list = dataclasses.field(default_factory=list)

        @property
        def enabled(self) -> bool:
            return True

        def max_int(self, value: int) -> int:
            self.agreed.append(value)
            return super().max_int(value)

    cfg = tiny_cfg(iterations=3, eval_runs=1, eval_epochs=1, checkpoint_every=100)
    real = small()
    evaluated = []

    class Signalled(DMLoop):
        def evaluate(self, it):
            os.kill(os.getpid(), signal.SIGTERM)
            evaluated.append(it)  # not reached: the signal ends the evaluation at once
            return super().evaluate(it)

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        loop = Signalled(cfg, real, str(tmp_path / "run"), progress=False)
        loop.par = par = OneRankGroup(rank=0, world=1, group=dist.group.WORLD)
        with pytest.raises(Stopped):
            loop.run()
    finally:
        dist.destroy_process_group()
    assert evaluated == [] and par.agreed == [0, 0, 0, signal.SIGTERM]  # after each step, then the evaluation
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3 and state["metrics"]["evals"] == []
    assert not (tmp_path / "run" / "synthetic.pt").exists()
    again = DMLoop(cfg, real, str(tmp_path / "run"), progress=False).run(resume=True)
    assert [e["iteration"] for e in again["evals"]] == [3]


@needs_fmnist
def test_scale_auto_starts_at_the_mmd_line_and_is_kept_by_the_checkpoint(tmp_path):
    real = small()
    hdd = DMLoop(tiny_cfg(scale="auto", iterations=2, eval_runs=0), real, str(tmp_path / "hdd"), progress=False)
    m = hdd.run()
    lam = m["matcher_scale"]
    assert lam > 0 and json.loads((tmp_path / "hdd" / "config.json").read_text())["matcher"]["scale"] == "auto"
    # same network, batch, augmentation and images in iteration 0: the hyperbolic loss equals DM's MMD line
    mmd = DMLoop(tiny_cfg("mmd", iterations=1, eval_runs=0), real, str(tmp_path / "mmd"), progress=False).run()
    assert m["loss"][0] == pytest.approx(mmd["loss"][0], rel=1e-5)
    again = DMLoop(tiny_cfg(scale="auto", iterations=2, eval_runs=0), real, str(tmp_path / "again"), progress=False)
    again._resume(torch.load(tmp_path / "hdd" / "checkpoint.pt", weights_only=True))
    assert again.matcher.scale == lam  # restored, not chosen again from another batch


def test_random_prune_score_is_the_uniform_baseline():
    from hyperdm.distill.prune import prune_indices

    labels = torch.arange(10).repeat_interleave(50)[torch.randperm(500, generator=torch.Generator().manual_seed(1))]
    images = torch.zeros(500, 1, 2, 2)  # neither images nor info are read by the random score
    a = prune_indices(images, labels, None, keep=0.2, score="random", seed=0)
    b = prune_indices(images, labels, None, keep=0.2, score="random", seed=0)
    c = prune_indices(images, labels, None, keep=0.2, score="random", seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded
    assert torch.equal(a, torch.sort(a).values) and a.unique().numel() == a.numel()
    assert torch.bincount(labels[a], minlength=10).tolist() == [10] * 10  # the same count per class as radius/centroid
    # uniform: over many seeds every image is kept about keep of the time (binomial 200 draws, p 0.2: 40 +- 5.7)
    counts = torch.zeros(500)
    for s in range(200):
        counts[prune_indices(images, labels, None, keep=0.2, score="random", seed=s)] += 1
    assert counts.min() > 15 and counts.max() < 70 and abs(float(counts.mean()) - 40) < 1e-9


@needs_fmnist
def test_random_prune_score_reaches_the_run(tmp_path):
    cfg = tiny_cfg(eval_runs=0, iterations=1, prune_keep=0.25, prune_score="random")
    loop = DMLoop(cfg, small(), str(tmp_path), progress=False)
    loop.run()
    assert [int(i.numel()) for i in loop.class_indices] == [10] * 10
    with pytest.raises(
        ValueError, match=r"prune_score \(--prune-score\) must be one of 'radius', 'centroid', 'random'"
    ):
        resolve(overrides={"prune_score": "entropy"})


@needs_fmnist
def test_paused_calibrated_run_resumes_bit_for_bit(tmp_path):
    """stop_at pauses a run (checkpoint and metrics, no artifacts); resuming keeps the radius calibration chosen on
    the first batch (not chosen again from the batch at the pause) and ends where an uninterrupted run ends."""
    from hyperdm.distill import distill

    real = small()
    cfg = tiny_cfg(iterations=6, eval_runs=0, radius=2.0, max_norm=None)
    full = DMLoop(cfg, real, str(tmp_path / "full"), progress=False).run()
    paused = DMLoop(cfg, real, str(tmp_path / "paused"), progress=False).run(stop_at=3)
    assert paused["final"] is False and len(paused["loss"]) == 3 and paused["matcher_alpha"] == full["matcher_alpha"]
    assert not (tmp_path / "paused" / "synthetic.pt").exists()
    assert torch.load(tmp_path / "paused" / "checkpoint.pt", weights_only=True)["iteration"] == 3
    again = DMLoop(cfg, real, str(tmp_path / "paused"), progress=False).run(resume=True)
    assert again["loss"] == full["loss"] and again["final"] is True
    assert torch.equal(load_synthetic(tmp_path / "paused")[0], load_synthetic(tmp_path / "full")[0])
    assert again["radius"] == full["radius"]  # the first iteration's radii, recorded once
    with pytest.raises(ValueError, match="stop_at must be an iteration >= 1"):
        distill(cfg, str(tmp_path / "bad"), stop_at=0)
    assert not (tmp_path / "bad").exists()


@needs_fmnist
@pytest.mark.parametrize("minutes,saved", [(0.0, [6]), (1e-9, [1, 2, 3, 4, 5, 6]), (60.0, [6])])
def test_time_based_checkpoints(tmp_path, monkeypatch, minutes, saved):
    """--checkpoint-minutes M writes a checkpoint whenever M minutes have passed since the last one, besides every
    --checkpoint-every iterations (here 100: only the last iteration's); 0 turns it off."""
    cfg = tiny_cfg(iterations=6, eval_runs=0, checkpoint_every=100, checkpoint_minutes=minutes)
    loop = DMLoop(cfg, small(), str(tmp_path), progress=False)
    seen = []
    real = loop._checkpoint
    monkeypatch.setattr(loop, "_checkpoint", lambda it: seen.append(it) or real(it))
    loop.run()
    assert seen == saved
    with pytest.raises(ValueError, match="checkpoint_minutes"):
        resolve(overrides={"checkpoint_minutes": -1.0})
