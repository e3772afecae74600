"""The IDM loop on real Fashion-MNIST: both matchers, the model queue, expansion, resume after SIGKILL."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import kill_and_resume, needs_fmnist, small

from hyperdm.distill.artifacts import load_synthetic
from hyperdm.distill.cli import main
from hyperdm.distill.loops import IDMLoop
from hyperdm.distill.presets import resolve

# training runs, subprocesses or spawned processes: left out by `pytest -m "not slow"`
pytestmark = pytest.mark.slow


def idm_cfg(matcher="hyperbolic", **kw):
    base = {
        "iterations": 4,
        "batch_real": 8,
        "eval_epochs": 2,
        "eval_runs": 1,
        "checkpoint_every": 2,
        "seed": 5,
        "net_generate_interval": 2,
        "net_num": 3,
        "net_initial": 2,
        "model_train_steps": 2,
        "net_batch": 16,
        "acc_window": 0,
    }
    base.update(kw)
    ipc = base.pop("ipc", 1)
    return resolve(preset="cpu", method="idm", matcher=matcher, dataset="fashion-mnist", ipc=ipc, overrides=base)


def test_paper_preset_follows_table_and_command_txt():
    c = resolve(preset="paper", method="idm", matcher="hyperbolic", dataset="cifar10", ipc=10)
    assert (c.matcher.k, c.matcher.scale, c.lr_img) == (3, 100, 1) and c.iterations == 10000
    i = c.idm
    assert (c.partition, i.ce_weight, i.net_num, i.net_generate_interval, i.fetch_net_num, i.train_net_num) == (
        2,
        0.5,
        100,
        30,
        2,
        1,
    )
    c1 = resolve(preset="paper", method="idm", matcher="mmd", dataset="cifar10", ipc=1)
    assert (c1.batch_real, c1.idm.net_generate_interval, c1.lr_img) == (5000, 5, 0.2)
    assert resolve(preset="paper", method="idm", dataset="cifar10", ipc=50).idm.ce_weight == 0.1
    f = resolve(preset="paper", method="idm", dataset="fashion-mnist", ipc=10)
    assert (f.matcher.k, f.matcher.scale, f.lr_img) == (2, 60, 1)  # Table 6, a dataset IDM's own code does not support


@needs_fmnist
@pytest.mark.parametrize("matcher", ["mmd", "hyperbolic"])
def test_tiny_idm_run(tmp_path, matcher):
    loop = IDMLoop(idm_cfg(matcher), small(), str(tmp_path), progress=False)
    m = loop.run()
    assert len(m["loss"]) == 4 and all(v > 0 for v in m["loss"])
    # queue: 2 initial + one new at it 0 and 2, capped at 3 (oldest leave)
    assert len(loop.queue) == 3
    images, _, meta = load_synthetic(tmp_path)
    assert images.shape == (10, 1, 28, 28) and meta["partition"] == 2 and meta["method"] == "idm"
    assert 0 <= m["evals"][0]["ConvNet"]["mean"] <= 1


@needs_fmnist
def test_queue_networks_train_and_weight_the_ce_term(tmp_path):
    cfg = idm_cfg("mmd", iterations=3, fetch_net_num=3, model_train_steps=3)
    loop = IDMLoop(cfg, small(), str(tmp_path), progress=False)
    loop.run()
    trained = [q for q in loop.queue if q.seen > 0]
    assert trained and all(q.seen % 16 == 0 for q in trained) and all(0 <= q.accuracy_percent() <= 100 for q in trained)


@needs_fmnist
def test_evaluate_expands_an_idm_set(tmp_path, tiny_fmnist_root, capsys, caplog):
    run = tmp_path / "run"
    data = ["--data-root", str(tiny_fmnist_root)]
    assert (
        main(
            [
                "--log-level",
                "INFO",
                "distill",
                "--method",
                "idm",
                *data,
                "--ipc",
                "1",
                "--iterations",
                "2",
                "--batch-real",
                "4",
                "--eval-runs",
                "0",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(["--log-level", "INFO", "evaluate", str(run), *data, "--epochs", "1", "--runs", "1", "--no-progress"]) == 0
    )
    assert "expanded the 2x2-partitioned set to 40 training images" in caplog.text
    caplog.clear()
    assert main(["--log-level", "INFO", "plot", str(run), *data]) == 0  # the disk shows the expanded images too
    assert "expanded the 2x2-partitioned set to 40 training images" in caplog.text


IDM_ARGS = [
    "distill",
    "--method",
    "idm",
    "--matcher",
    "hyperbolic",
    "--ipc",
    "1",
    "--iterations",
    "16",
    "--batch-real",
    "4",
    "--net-batch",
    "8",
    "--model-train-steps",
    "1",
    "--net-num",
    "4",
    "--eval-runs",
    "0",
    "--checkpoint-every",
    "2",
    "--seed",
    "13",
    "--no-progress",
]


@needs_fmnist
def test_idm_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tiny_fmnist_root):
    data = ["--data-root", str(tiny_fmnist_root)]
    full, killed = tmp_path / "full", tmp_path / "killed"
    kill_and_resume([*IDM_ARGS, *data, "--out", str(full)], [*IDM_ARGS, *data, "--out", str(killed)], killed, at=4)
    assert torch.equal(load_synthetic(full)[0], load_synthetic(killed)[0])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, killed))
    assert ma["loss"] == mb["loss"] and len(ma["loss"]) == 16


@needs_fmnist
def test_idm_bad_ipc_counts_the_partition(tmp_path):
    with pytest.raises(ValueError, match="needs 44 real images per class"):
        IDMLoop(idm_cfg(ipc=11), small(), str(tmp_path), progress=False)


@needs_fmnist
def test_idm_loop_refuses_a_config_without_idm_settings(tmp_path):
    dm = resolve(preset="cpu", method="dm", dataset="fashion-mnist", ipc=1, overrides={"iterations": 1})
    with pytest.raises(ValueError, match=r"IDMLoop needs the idm settings.*--method dm.*method='idm'"):
        IDMLoop(dm, small(), str(tmp_path), progress=False)


@needs_fmnist
def test_resume_refuses_changed_idm_settings(tmp_path):
    IDMLoop(idm_cfg(iterations=2, eval_runs=0), small(), str(tmp_path), progress=False).run()
    with pytest.raises(ValueError, match=r"different settings.*net_num"):
        IDMLoop(idm_cfg(iterations=2, eval_runs=0, net_num=5), small(), str(tmp_path), progress=False).run(resume=True)
    # evaluation settings may change
    IDMLoop(idm_cfg(iterations=2, eval_runs=1, eval_epochs=1), small(), str(tmp_path), progress=False).run(resume=True)


@needs_fmnist
def test_sigterm_inside_an_idm_step_finishes_the_step_and_resume_matches(tmp_path):
    """A SIGTERM that arrives in the middle of an IDM iteration (between its per-class image updates) is acted on
    once the iteration is complete: the checkpoint holds iteration 3 whole, and resuming gives the uninterrupted
    run's images bit for bit."""
    import os
    import signal

    from hyperdm.distill.signals import Stopped

    cfg = idm_cfg(iterations=6, eval_runs=0, checkpoint_every=100)
    real = small()
    full = IDMLoop(cfg, real, str(tmp_path / "full"), progress=False).run()

    class Signalled(IDMLoop):
        def image_step(self, loss, it):
            value = super().image_step(loss, it)
            if it == 2 and not getattr(self, "sent", False):  # after the first class's update of iteration 2
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)
            return value

    with pytest.raises(Stopped) as e:
        Signalled(cfg, real, str(tmp_path / "stopped"), progress=False).run()
    assert e.value.signum == signal.SIGTERM and e.value.exit_code == 143
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3 and len(state["metrics"]["loss"]) == 3
    again = IDMLoop(cfg, real, str(tmp_path / "stopped"), progress=False).run(resume=True)
    assert again["loss"] == full["loss"]
    assert torch.equal(load_synthetic(tmp_path / "stopped")[0], load_synthetic(tmp_path / "full")[0])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run put the default handler back
