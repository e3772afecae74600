"""The evaluation protocol: the reference schedule, final-epoch numbers, determinism, bad input."""

import re

import numpy as np
import pytest
import torch

from hyperdm.distill import evaluate as E
from hyperdm.distill.data import DatasetInfo

INFO = DatasetInfo("toy", 1, (28, 28), 3, (0.5,), (0.5,), ("a", "b", "c"))


def toy(n_per=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per)
    x = torch.randn(len(y), 1, 28, 28, generator=g) + y.view(-1, 1, 1, 1).float()  # separable by brightness
    return x, y


@pytest.mark.slow
def test_reference_schedule(monkeypatch):
    """epochs + 1 passes; lr x0.1 after pass epochs // 2 + 1 with a rebuilt optimizer (reference evaluate_synset)."""
    made, passes = [], []
    real_sgd = torch.optim.SGD

    def sgd(params, lr, **kw):
        made.append((lr, kw, len(passes)))
        return real_sgd(params, lr=lr, **kw)

    real_ce = E.F.cross_entropy

    def ce(out, y):
        passes.append(1)
        return real_ce(out, y)

    monkeypatch.setattr(E.torch.optim, "SGD", sgd)
    monkeypatch.setattr(E.F, "cross_entropy", ce)
    x, y = toy()
    cfg = E.EvalConfig(epochs=6, runs=1, batch=256)
    E.train_and_test(x, y, x, y, INFO, cfg=cfg, seed=0)
    assert len(passes) == 7  # one batch per pass
    assert [m[0] for m in made] == pytest.approx([0.01, 0.001])
    assert made[1][2] == 6 // 2 + 2  # rebuilt right after pass index 4 (the fifth pass)
    assert made[0][1] == {"momentum": 0.9, "weight_decay": 5e-4}


@pytest.mark.slow
def test_evaluate_reports_final_epoch_mean_and_population_std():
    x, y = toy()
    cfg = E.EvalConfig(epochs=3, runs=3, batch=256)
    r = E.evaluate_synthetic(x, y, x, y, INFO, cfg)["ConvNet"]
    assert len(r["accs"]) == 3 and r["epochs"] == 3
    assert r["mean"] == pytest.approx(np.mean(r["accs"])) and r["std"] == pytest.approx(np.std(r["accs"]))
    again = E.evaluate_synthetic(x, y, x, y, INFO, cfg)["ConvNet"]
    assert again["accs"] == r["accs"]  # seeded
    for run in r["runs"]:
        assert 0 <= run["test_acc"] <= 1 and run["train_loss"] > 0


@pytest.mark.slow
def test_learns_a_separable_toy_problem():
    x, y = toy(8)
    xt, yt = toy(20, seed=1)
    res = E.train_and_test(x, y, xt, yt, INFO, cfg=E.EvalConfig(epochs=30, dsa_strategy=""), seed=0)
    assert res["test_acc"] > 0.9


def test_accuracy_helper():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.flatten(1).mean(1), -x.flatten(1).mean(1)], 1)

    x = torch.tensor([1.0, -1.0, 2.0, -3.0]).view(4, 1, 1, 1)
    assert E.accuracy(Fixed(), x, torch.tensor([0, 1, 1, 1]), batch=3) == 0.75


def test_bad_input():
    x, y = toy()
    with pytest.raises(ValueError, match="NaN"):
        E.train_and_test(x * float("nan"), y, x, y, INFO, cfg=E.EvalConfig(epochs=1))
    with pytest.raises(ValueError, match="empty"):
        E.train_and_test(x[:0], y[:0], x, y, INFO, cfg=E.EvalConfig(epochs=1))


def test_derive_seed_is_stable():
    assert E.derive_seed(0) == E.derive_seed(0) and E.derive_seed(0, 1) != E.derive_seed(1, 0)
    assert E.derive_seed(1, 2, 3) == 2347502745480893085  # fixed across versions: resumed runs depend on it


def test_named_streams_are_distinct_and_keep_their_values():
    from hyperdm.distill.seeding import Stream

    assert len({int(s) for s in Stream}) == len(Stream)  # @unique: no two streams share a value
    # the values the toolkit always used for these streams (resumed runs and pinned results depend on them)
    assert (Stream.NETWORK, Stream.SAMPLE, Stream.INIT, Stream.EVAL) == (101, 202, 303, 404)
    assert (Stream.EXPERT_NET, Stream.EXPERT_EPOCH, Stream.EXPERT_DATA, Stream.PRUNE_SAMPLE) == (505, 606, 707, 102)
    assert E.derive_seed(5, Stream.NETWORK, 0) == E.derive_seed(5, 101, 0)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"epochs": 0}, "epochs (--epochs) must be an integer >= 1; got 0."),  # the run's hint left out
        ({"epochs": 2.5}, "epochs (--epochs) must be an integer >= 1; got 2.5."),
        ({"runs": 0}, "runs (--runs) must be an integer >= 1 (the accuracy is a mean over runs); got 0."),
        ({"runs": -1}, "runs (--runs) must be an integer >= 1 (the accuracy is a mean over runs); got -1."),
        ({"runs": True}, "runs (--runs) must be an integer >= 1"),
        ({"lr": float("nan")}, "lr must be a finite number > 0; got nan."),  # no option of `hyperdm evaluate`
        ({"lr": 0.0}, "lr must be a finite number > 0; got 0.0."),
        ({"momentum": 1.0}, "momentum must lie in [0, 1); got 1.0."),
        ({"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0; got -0.0001."),
        ({"batch": 0}, "batch must be an integer >= 1; got 0."),
        ({"test_batch": 0}, "test_batch must be an integer >= 1; got 0."),
        ({"at": (200, 0)}, "at: 0 must be an integer >= 1; got [200, 0]."),
        ({"every": -1}, "every must be an integer >= 0; got -1."),
        ({"archs": ()}, "archs (--arch) must name at least one architecture."),
    ],
)
def test_eval_config_names_the_evaluate_commands_options(kw, message):
    """The ranges declared on EvalConfig's fields are its checks too, named as `hyperdm evaluate` names them."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        E.EvalConfig(**kw).validate()


def test_eval_ranges_inside_a_run_name_the_runs_options():
    from hyperdm.distill.presets import resolve

    cfg = resolve(preset="cpu", method="dm", matcher="mmd", dataset="fashion-mnist", ipc=1, overrides={})
    with pytest.raises(ValueError, match=r"^eval\.epochs \(--eval-epochs\) must be an integer >= 1 \(--eval-runs 0"):
        resolve(preset="cpu", method="dm", matcher="mmd", dataset="fashion-mnist", ipc=1, overrides={"eval_epochs": 0})
    cfg.eval.validate()  # the run's evaluation settings pass the standalone check
