"""Presets: the paper's Tables 5/6 transcribed, provenance recorded, bad input rejected."""

import json

import pytest

from hyperdm.distill.presets import PAPER_HDD, DistillConfig, paper_row, resolve

# Independent transcription of Table 5 (DM with HDD) and Table 6 (IDM / Dance with HDD): k, lambda, lr.
TABLE = """
dm fashion-mnist 1 1 20 1 | 10 1 40 1 | 50 1 60 1
dm svhn 1 1 10 1 | 10 1 50 1 | 50 1 100 1
dm cifar10 1 1 1 1 | 10 1 20 1 | 50 1 80 1
dm cifar100 1 1 10 1 | 10 2 100 1 | 50 2 120 1
idm fashion-mnist 1 2 40 0.5 | 10 2 60 1 | 50 2 80 0.2
idm svhn 1 2 120 0.5 | 10 2 120 1 | 50 2 120 0.2
idm cifar10 1 3 80 0.5 | 10 3 100 1 | 50 3 120 0.2
idm cifar100 1 2 60 0.5 | 10 2 80 0.2 | 50 2 100 0.6
idm tinyimagenet 1 2 80 0.5 | 10 2 100 0.5 | 50 2 120 0.6
dance cifar10 1 1.8 20 0.02 | 10 0.2 40 0.2 | 50 2 60 0.5
dance cifar100 1 2 40 0.02 | 10 1.5 80 0.1 | 50 2 120 0.5
dance imagewoof 1 0.6 100 0.1 | 10 0.5 120 0.1
"""


def _table():
    rows = {}
    for line in TABLE.strip().splitlines():
        method, dataset, rest = line.split(" ", 2)
        for cell in rest.split("|"):
            ipc, k, lam, lr = cell.split()
            rows[(method, dataset, int(ipc))] = (float(k), float(lam), float(lr))
    return rows


def test_paper_table_transcribed_exactly():
    expected = _table()
    assert set(PAPER_HDD) == set(expected)
    for key, (k, lam, lr) in expected.items():
        row = PAPER_HDD[key]
        assert (row.k, row.scale, row.lr_img) == (k, lam, lr), key


@pytest.mark.parametrize("key", sorted(_table()))
def test_paper_preset_uses_the_row(key):
    method, dataset, ipc = key
    cfg = resolve(preset="paper", method=method, matcher="hyperbolic", dataset=dataset, ipc=ipc)
    k, lam, lr = _table()[key]
    assert (cfg.k, cfg.scale, cfg.lr_img) == (k, lam, lr)
    assert "paper Tables 5/6" in cfg.sources["k"]
    assert cfg.max_norm == 10.0 and cfg.match_dtype == "float64"
    assert "official HDD code" in cfg.sources["max_norm"]


def test_paper_dm_protocol():
    cfg = resolve(preset="paper", matcher="hyperbolic", dataset="FashionMNIST", ipc=10)
    assert (cfg.iterations, cfg.batch_real, cfg.momentum_img, cfg.eval_epochs) == (20000, 256, 0.5, 1000)
    assert cfg.dataset == "fashion-mnist"
    assert cfg.eval_iterations() == list(range(2000, 20001, 2000))


def test_mmd_is_the_dm_baseline():
    cfg = resolve(preset="paper", matcher="mmd", dataset="cifar10", ipc=10)
    assert cfg.lr_img == 1.0 and cfg.match_dtype == "float32"
    assert "unused" in cfg.sources["k"]


def test_cpu_preset_is_reduced_and_evaluates_at_end():
    cfg = resolve(preset="cpu")
    assert cfg.iterations < 1000 and cfg.eval_epochs < 1000
    assert cfg.eval_iterations() == [cfg.iterations]
    assert (cfg.k, cfg.scale) == (1, 40)  # Fashion-MNIST IPC 10 row


def test_eval_at_adds_evaluations_and_survives_a_round_trip():
    cfg = resolve(preset="cpu", overrides={"iterations": 2000, "eval_at": [1000, 200, 500, 2000, 5000]})
    assert cfg.eval_iterations() == [200, 500, 1000, 2000]  # sorted, the last once, beyond the run dropped
    again = DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.eval_at == (1000, 200, 500, 2000, 5000) and again.eval_iterations() == cfg.eval_iterations()
    both = resolve(preset="paper", overrides={"iterations": 5000, "eval_at": [500]})
    assert both.eval_iterations() == [500, 2000, 4000, 5000]
    with pytest.raises(ValueError, match="eval_at must list iterations >= 1"):
        resolve(preset="cpu", overrides={"eval_at": [0]})


def test_overrides_win_and_are_recorded():
    cfg = resolve(preset="paper", overrides={"iterations": 7, "k": 2.5, "eval_archs": ["ConvNet", "AlexNet"], "seed": None})
    assert cfg.iterations == 7 and cfg.k == 2.5 and cfg.eval_archs == ("ConvNet", "AlexNet")
    assert cfg.sources["k"] == "command line / override"
    assert cfg.seed == 0  # None means "not given"
    assert "k " in cfg.summary() and "command line" in cfg.summary()


def test_round_trip_dict():
    cfg = resolve(preset="cpu", overrides={"eval_archs": ["VGG11"]})
    again = DistillConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_no_paper_row_needs_explicit_k_and_scale():
    with pytest.raises(ValueError, match="--k and --scale"):
        resolve(preset="paper", dataset="mnist", ipc=10)
    cfg = resolve(preset="paper", dataset="mnist", ipc=10, overrides={"k": 1.0, "scale": 30.0})
    assert cfg.scale == 30.0
    assert paper_row("dm", "mnist", 10) is None
    # the cpu preset falls back to the official code's k = 1, lambda = 20 and says so
    cfg = resolve(preset="cpu", dataset="mnist", ipc=10)
    assert (cfg.k, cfg.scale) == (1.0, 20.0) and "official" in cfg.sources["k"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"preset": "fast"}, "unknown preset"),
        ({"method": "gm"}, "unknown method"),
        ({"matcher": "cosine"}, "unknown matcher"),
        ({"dataset": "imagenet-21k"}, "imagenet-21k"),
        ({"ipc": 0}, "positive integer"),
        ({"ipc": 2.5}, "positive integer"),
        ({"overrides": {"k": -1.0}}, "k .* must be > 0"),
        ({"overrides": {"prune_keep": 1.5}}, "prune_keep"),
        ({"overrides": {"lr_img": 0.0}}, "lr_img"),
        ({"overrides": {"nonsense": 1}}, "unknown setting"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve(**kwargs)


def test_a_preset_chosen_model_keeps_its_source():
    c = resolve(preset="paper", method="idm", matcher="hyperbolic", dataset="tinyimagenet", ipc=10)
    assert c.model == "ConvNetD4" and "depth-4" in c.sources["model"]
    assert resolve(preset="cpu", dataset="fashion-mnist", ipc=10).sources["model"].startswith("paper: ConvNet-3")


def test_unknown_dsa_group_is_reported_when_resolving():
    with pytest.raises(ValueError, match=r"unknown DSA group\(s\) \['colour'\].*valid groups"):
        resolve(preset="cpu", dataset="fashion-mnist", ipc=10, overrides={"dsa_strategy": "colour_crop"})
