"""The Dance loop and its experts on real Fashion-MNIST: presets, pixel-space updates, middle encoders,
the expert cache (reuse, resume), both matchers, expansion through the evaluator, resume after SIGKILL."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import fashion_mnist, kill_and_resume, needs_fmnist, small

from hyperdm.distill import experts as experts_mod
from hyperdm.distill.artifacts import load_synthetic
from hyperdm.distill.cli import main
from hyperdm.distill.experts import ExpertConfig, expert_lr, load_or_train_experts
from hyperdm.distill.loops import DanceLoop, get_loop
from hyperdm.distill.presets import resolve

# training runs, subprocesses or spawned processes: left out by `pytest -m "not slow"`
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Never write experts to the user's ~/.cache from the tests."""
    monkeypatch.setenv("HYPERDM_CACHE", str(tmp_path / "cache"))


def dance_cfg(matcher="hyperbolic", **kw):
    base = {
        "iterations": 4,
        "batch_real": 8,
        "eval_epochs": 2,
        "eval_runs": 1,
        "checkpoint_every": 2,
        "seed": 5,
        "experts": 2,
        "expert_epochs": 1,
        "expert_per_class": 10,
    }
    base.update(kw)
    ipc = base.pop("ipc", 1)
    return resolve(preset="cpu", method="dance", matcher=matcher, dataset="fashion-mnist", ipc=ipc, overrides=base)


# ---- presets ----------------------------------------------------------------------------------------


def test_paper_preset_follows_table_6_and_the_reference():
    c = resolve(preset="paper", method="dance", matcher="hyperbolic", dataset="cifar10", ipc=10)
    assert (c.matcher.k, c.matcher.scale, c.lr_img) == (0.2, 40, 0.2)
    assert (c.iterations, c.partition, c.batch_real, c.momentum_img, c.dance.iter_calib) == (10000, 2, 128, 0.5, 1)
    x = c.dance.experts
    assert (x.count, x.epochs, x.lr, x.batch, x.per_class) == (20, 60, 0.01, 64, None)
    assert (c.match_dsa, c.match_aug_mode, c.dsa_strategy) == (
        "color_crop_cutout",
        "M",
        "color_crop_cutout_flip_scale_rotate",
    )
    assert get_loop("dance") is DanceLoop
    # the mmd baseline keeps Dance's own rule lr_img = 0.01 x ipc (pixel units)
    assert resolve(preset="paper", method="dance", matcher="mmd", dataset="cifar10", ipc=50).lr_img == 0.5
    assert resolve(preset="paper", method="dance", matcher="mmd", dataset="cifar100", ipc=1).lr_img == 0.01
    c1 = resolve(preset="paper", method="dance", matcher="hyperbolic", dataset="cifar100", ipc=10)
    assert (c1.matcher.k, c1.matcher.scale, c1.lr_img) == (1.5, 80, 0.1)
    w = resolve(preset="paper", method="dance", matcher="hyperbolic", dataset="imagewoof", ipc=1)
    assert (w.matcher.k, w.matcher.scale, w.lr_img, w.model) == (0.6, 100, 0.1, "ConvNetD5")
    assert (w.dance.experts.count, w.dance.experts.epochs) == (5, 80)
    assert resolve(preset="paper", method="dance", matcher="mmd", dataset="imagewoof", ipc=10).lr_img == 1.0
    assert "depth-5" in w.sources["model"]


def test_fashion_mnist_has_no_dance_row():
    with pytest.raises(ValueError, match=r"no HDD row.*method=dance"):
        resolve(preset="paper", method="dance", matcher="hyperbolic", dataset="fashion-mnist", ipc=10)
    c = resolve(preset="cpu", method="dance", matcher="hyperbolic", dataset="fashion-mnist", ipc=10)
    assert (c.matcher.k, c.matcher.scale, c.lr_img) == (1, 40, 0.1)  # k and lambda of the DM row, Dance's own lr_img
    assert "no Dance row" in c.sources["matcher.k"] and "0.01 x ipc" in c.sources["lr_img"]
    m = resolve(preset="cpu", method="dance", matcher="mmd", dataset="fashion-mnist", ipc=10)
    assert m.lr_img == c.lr_img and (m.dance.experts.count, m.dance.experts.epochs, m.dance.experts.per_class) == (
        4,
        4,
        200,
    )


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"experts": 0}, r"dance.experts.count \(--experts\) must be an integer >= 1; got 0"),
        ({"expert_epochs": 0}, r"dance.experts.epochs \(--expert-epochs\) must be an integer >= 1; got 0"),
        ({"expert_lr": 0.0}, r"dance.experts.lr \(--expert-lr\) must be a finite number > 0; got 0.0"),
        ({"expert_per_class": 0}, r"dance.experts.per_class \(--expert-per-class\) must be an integer >= 1"),
        ({"iter_calib": -1}, r"dance.iter_calib \(--iter-calib\) must be an integer >= 0; got -1"),
        ({"match_dsa": "color_blur"}, r"unknown DSA group\(s\) \['blur'\].*valid groups"),
        ({"match_aug_mode": "X"}, r"match_aug_mode \(--match-aug-mode\) must be one of 'S', 'M'; got 'X'"),
        ({"expert_momentum": 1.0}, r"dance.experts.momentum \(--expert-momentum\) must lie in \[0, 1\)"),
    ],
)
def test_bad_dance_settings_say_what_to_fix(bad, msg):
    with pytest.raises(ValueError, match=msg):
        dance_cfg(**bad)


def test_expert_learning_rate_schedule():
    cfg = ExpertConfig(epochs=60, lr=0.01, gamma=0.2)
    assert cfg.milestones() == (40, 50)
    assert [expert_lr(cfg, e) for e in (0, 39)] == [0.01, 0.01]
    assert expert_lr(cfg, 40) == pytest.approx(0.002) and expert_lr(cfg, 49) == pytest.approx(0.002)
    assert expert_lr(cfg, 50) == pytest.approx(0.0004) and expert_lr(cfg, 59) == pytest.approx(0.0004)
    assert expert_lr(ExpertConfig(epochs=1), 0) == 0.01  # a milestone at epoch 0 is ignored
    assert expert_lr(ExpertConfig(epochs=4), 2) == pytest.approx(0.002)  # milestones (2, 3)


# ---- the loop's pieces ------------------------------------------------------------------------------


@needs_fmnist
def test_image_update_is_sgd_in_pixel_units(tmp_path):
    """Two momentum-SGD steps in normalised units with the 1/std^2 gradient scale equal SGD on the
    pixel images x = z * std + mean, computed here independently in float64."""
    cfg = dance_cfg(lr_img=0.3)
    loop = DanceLoop(cfg, small(), str(tmp_path), progress=False)
    loop._init_synthetic()
    mean, std = fashion_mnist().info.mean[0], fashion_mnist().info.std[0]
    z0 = loop.syn.detach().double().clone()
    w = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(2):
        loop.image_step((loop.syn * w.float()).sum() + (loop.syn**2).sum(), it=0)
    x, buf = z0 * std + mean, torch.zeros_like(z0)
    for _ in range(2):
        z = (x - mean) / std
        grad_x = (w + 2 * z) / std  # dL/dx = dL/dz * dz/dx
        buf = cfg.momentum_img * buf + grad_x
        x = x - cfg.lr_img * buf
    assert torch.allclose(loop.syn.detach().double(), (x - mean) / std, rtol=1e-5, atol=1e-5)


@needs_fmnist
def test_images_are_clamped_to_the_pixel_range_each_iteration(tmp_path):
    loop = DanceLoop(dance_cfg(lr_img=1e-12, iter_calib=0), small(), str(tmp_path), progress=False)
    loop._init_synthetic()
    loop.prepare()
    mean, std = fashion_mnist().info.mean[0], fashion_mnist().info.std[0]
    with torch.no_grad():
        loop.syn[:5] = 100.0
        loop.syn[5:] = -100.0
    loop.step(0)
    assert torch.allclose(loop.syn[:5].detach(), torch.tensor((1 - mean) / std), atol=1e-5)
    assert torch.allclose(loop.syn[5:].detach(), torch.tensor(-mean / std), atol=1e-5)


@needs_fmnist
def test_middle_encoder_interpolates_init_and_trained(tmp_path):
    loop = DanceLoop(dance_cfg(), small(), str(tmp_path), progress=False)
    loop.prepare()
    gen = torch.Generator().manual_seed(11)
    lam = loop._load_expert(gen)
    ref = torch.Generator().manual_seed(11)  # the same draws, independently
    j = int(torch.randint(0, 2, (1,), generator=ref))
    assert lam == pytest.approx(float(torch.rand(1, generator=ref)))
    e = loop.experts[j]
    for name, p in loop.middle.named_parameters():
        want = lam * e.init[name].double() + (1 - lam) * e.trained[name].double()
        assert torch.allclose(p.double(), want, atol=1e-6), name
        assert not p.requires_grad
    for name, p in loop.expert_net.state_dict().items():
        assert torch.equal(p, e.trained[name]), name
    assert not torch.equal(e.init["classifier.weight"], e.trained["classifier.weight"])  # the expert did train


# ---- the expert cache ---------------------------------------------------------------------------------


def _tiny_data():
    real = small(per_class=12)
    return real.train_images, real.train_labels, real.info


@needs_fmnist
def test_expert_cache_is_reused_and_keyed_by_settings(tmp_path, monkeypatch, caplog):
    x, y, info = _tiny_data()
    cfg = ExpertConfig(count=2, epochs=1, batch=16)
    first, d1 = load_or_train_experts(x, y, info, cfg, root=tmp_path, progress=False)
    assert sorted(p.name for p in d1.iterdir()) == ["expert000.pt", "expert001.pt", "meta.json"]
    assert json.loads((d1 / "meta.json").read_text())["train_images"] == 120

    def no_training(*a, **k):
        raise AssertionError("a cached expert was trained again")

    monkeypatch.setattr(experts_mod, "train_expert", no_training)
    with caplog.at_level("INFO", logger="hyperdm"):
        again, d2 = load_or_train_experts(x, y, info, cfg, root=tmp_path, progress=False)
    assert d2 == d1 and "reusing 2 of 2 cached" in caplog.text
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(a.trained[k], b.trained[k]) and torch.equal(a.init[k], b.init[k]) for k in a.trained)
    monkeypatch.undo()
    # other settings or other data -> another directory, never a wrong reuse
    assert experts_mod.expert_dir(
        tmp_path, info, ExpertConfig(count=2, epochs=2, batch=16), "x"
    ) != experts_mod.expert_dir(tmp_path, info, cfg, "x")
    other = load_or_train_experts(
        x[1:], y[1:], info, ExpertConfig(count=1, epochs=1, batch=16), root=tmp_path, progress=False
    )[1]
    assert other != d1


@needs_fmnist
def test_interrupted_expert_training_resumes_bit_for_bit(tmp_path, monkeypatch):
    x, y, info = _tiny_data()
    cfg = ExpertConfig(count=1, epochs=3, batch=16)
    clean, _ = load_or_train_experts(x, y, info, cfg, root=tmp_path / "clean", progress=False)
    real_epoch, calls = experts_mod._epoch, []

    def dies_in_epoch_two(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(experts_mod, "_epoch", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        load_or_train_experts(x, y, info, cfg, root=tmp_path / "killed", progress=False)
    monkeypatch.undo()
    d = next((tmp_path / "killed").iterdir())
    assert (d / "expert000.partial.pt").exists() and not (d / "expert000.pt").exists()
    assert torch.load(d / "expert000.partial.pt", weights_only=True)["epoch"] == 1
    resumed, _ = load_or_train_experts(x, y, info, cfg, root=tmp_path / "killed", progress=False)
    assert not (d / "expert000.partial.pt").exists() and (d / "expert000.pt").exists()
    assert all(torch.equal(clean[0].trained[k], resumed[0].trained[k]) for k in clean[0].trained)


# ---- whole runs -----------------------------------------------------------------------------------------


@needs_fmnist
def test_dance_loop_refuses_a_config_without_dance_settings(tmp_path):
    dm = resolve(preset="cpu", method="dm", dataset="fashion-mnist", ipc=1, overrides={"iterations": 1})
    with pytest.raises(ValueError, match=r"DanceLoop needs the dance settings.*--method dm.*method='dance'"):
        DanceLoop(dm, small(), str(tmp_path), progress=False)


@needs_fmnist
@pytest.mark.parametrize("matcher", ["mmd", "hyperbolic"])
def test_tiny_dance_run(tmp_path, matcher):
    m = DanceLoop(dance_cfg(matcher), small(), str(tmp_path / "run"), progress=False).run()
    assert len(m["loss"]) == 4 and all(v > 0 for v in m["loss"])
    assert len(m["calibration_loss"]) == 4 and all(v > 0 for v in m["calibration_loss"])
    assert len(m["experts"]["train_acc"]) == 2 and str(tmp_path / "cache") in m["experts"]["dir"]
    assert m["images_seen"] == 4 * (10 * 8 + 10 * 4 * 2)  # real + expanded synthetic, matched and calibrated
    images, _, meta = load_synthetic(tmp_path / "run")
    assert images.shape == (10, 1, 28, 28) and meta["partition"] == 2 and meta["method"] == "dance"
    assert 0 <= m["evals"][0]["ConvNet"]["mean"] <= 1


@needs_fmnist
def test_resume_refuses_changed_expert_settings(tmp_path):
    DanceLoop(dance_cfg(iterations=2, eval_runs=0), small(), str(tmp_path / "r"), progress=False).run()
    with pytest.raises(ValueError, match=r"different settings \(dance.experts.epochs: 1 in the checkpoint, 2 now\)"):
        DanceLoop(
            dance_cfg(iterations=2, eval_runs=0, expert_epochs=2), small(), str(tmp_path / "r"), progress=False
        ).run(resume=True)
    # the cache location may change: the experts are retrained identically there
    DanceLoop(
        dance_cfg(iterations=2, eval_runs=0, expert_dir=str(tmp_path / "elsewhere")),
        small(),
        str(tmp_path / "r"),
        progress=False,
    ).run(resume=True)
    assert any((tmp_path / "elsewhere").iterdir())


@needs_fmnist
def test_evaluate_expands_a_dance_set(tmp_path, tiny_fmnist_root, caplog):
    run = tmp_path / "run"
    data = ["--data-root", str(tiny_fmnist_root)]
    assert (
        main(
            [
                "--log-level",
                "INFO",
                "distill",
                "--method",
                "dance",
                *data,
                "--ipc",
                "1",
                "--iterations",
                "2",
                "--batch-real",
                "4",
                "--experts",
                "1",
                "--expert-epochs",
                "1",
                "--expert-per-class",
                "5",
                "--expert-dir",
                str(tmp_path / "experts"),
                "--eval-runs",
                "0",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    cfg = json.loads((run / "config.json").read_text())
    assert (
        cfg["method"] == "dance" and cfg["dance"]["experts"]["count"] == 1 and cfg["match_dsa"] == "color_crop_cutout"
    )
    assert (
        main(["--log-level", "INFO", "evaluate", str(run), *data, "--epochs", "1", "--runs", "1", "--no-progress"]) == 0
    )
    assert "expanded the 2x2-partitioned set to 40 training images" in caplog.text


DANCE_ARGS = [
    "distill",
    "--method",
    "dance",
    "--matcher",
    "hyperbolic",
    "--ipc",
    "1",
    "--iterations",
    "12",
    "--batch-real",
    "4",
    "--experts",
    "2",
    "--expert-epochs",
    "1",
    "--expert-per-class",
    "5",
    "--eval-runs",
    "0",
    "--checkpoint-every",
    "2",
    "--seed",
    "17",
    "--no-progress",
]


@needs_fmnist
def test_dance_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tiny_fmnist_root):
    data = ["--data-root", str(tiny_fmnist_root)]
    full, killed = tmp_path / "full", tmp_path / "killed"
    # separate expert caches: the killed run also trains its own experts, identically
    killed_args = [*DANCE_ARGS, *data, "--out", str(killed), "--expert-dir", str(tmp_path / "eb")]
    kill_and_resume(
        [*DANCE_ARGS, *data, "--out", str(full), "--expert-dir", str(tmp_path / "ea")], killed_args, killed, at=4
    )
    assert torch.equal(load_synthetic(full)[0], load_synthetic(killed)[0])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, killed))
    assert ma["loss"] == mb["loss"] and len(ma["loss"]) == 12
    assert ma["calibration_loss"] == mb["calibration_loss"]
