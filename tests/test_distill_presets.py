"""Presets: the paper's Tables 5/6 transcribed, provenance recorded, bad input rejected."""

import json
from pathlib import Path

import pytest

from hyperdm.distill.presets import NOT_GIVEN, PAPER_HDD, DistillConfig, paper_row, resolve

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
    assert (cfg.matcher.k, cfg.matcher.scale, cfg.lr_img) == (k, lam, lr)
    assert "paper Tables 5/6" in cfg.sources["matcher.k"]
    assert cfg.matcher.max_norm == 10.0 and cfg.matcher.dtype == "float64"
    assert "official HDD code" in cfg.sources["matcher.max_norm"]


def test_paper_dm_protocol():
    cfg = resolve(preset="paper", matcher="hyperbolic", dataset="FashionMNIST", ipc=10)
    assert (cfg.iterations, cfg.batch_real, cfg.momentum_img, cfg.eval.epochs) == (20000, 256, 0.5, 1000)
    assert cfg.dataset == "fashion-mnist"
    assert cfg.eval_iterations() == list(range(2000, 20001, 2000))


def test_mmd_is_the_dm_baseline():
    cfg = resolve(preset="paper", matcher="mmd", dataset="cifar10", ipc=10)
    assert cfg.lr_img == 1.0 and cfg.matcher.kind == "mmd" and cfg.matcher.dtype == "float32"
    assert "unused" in cfg.sources["matcher.k"]


def test_cpu_preset_is_reduced_and_evaluates_at_end():
    cfg = resolve(preset="cpu")
    assert cfg.iterations < 1000 and cfg.eval.epochs < 1000
    assert cfg.eval_iterations() == [cfg.iterations]
    assert (cfg.matcher.k, cfg.matcher.scale) == (1, 40)  # Fashion-MNIST IPC 10 row


def test_eval_at_adds_evaluations_and_survives_a_round_trip():
    cfg = resolve(preset="cpu", overrides={"iterations": 2000, "eval_at": [1000, 200, 500, 2000, 5000]})
    assert cfg.eval_iterations() == [200, 500, 1000, 2000]  # sorted, the last once, beyond the run dropped
    again = DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.eval.at == (1000, 200, 500, 2000, 5000) and again.eval_iterations() == cfg.eval_iterations()
    both = resolve(preset="paper", overrides={"iterations": 5000, "eval_at": [500]})
    assert both.eval_iterations() == [500, 2000, 4000, 5000]
    with pytest.raises(ValueError, match=r"eval.at \(--eval-at\): 0 must be an integer >= 1; got \[0\]"):
        resolve(preset="cpu", overrides={"eval_at": [0]})


def test_overrides_win_and_are_recorded():
    cfg = resolve(
        preset="paper", overrides={"iterations": 7, "k": 2.5, "eval_archs": ["ConvNet", "AlexNet"], "seed": NOT_GIVEN}
    )
    assert cfg.iterations == 7 and cfg.matcher.k == 2.5 and cfg.eval.archs == ("ConvNet", "AlexNet")
    assert (
        cfg.sources["matcher.k"] == "command line / override" and cfg.sources["iterations"] == "command line / override"
    )
    assert cfg.seed == 0 and "seed" not in cfg.sources  # NOT_GIVEN: the default decides
    lines = {line.split()[0]: line for line in cfg.summary().splitlines()}
    assert lines["matcher.k"].split()[1] == "2.5" and lines["matcher.k"].endswith("command line / override")
    assert lines["data_root"].split()[1:] == ["None", "default"]


def test_round_trip_dict():
    cfg = resolve(preset="cpu", overrides={"eval_archs": ["VGG11"]})
    again = DistillConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_no_paper_row_needs_explicit_k_and_scale():
    with pytest.raises(ValueError, match="--k and --scale"):
        resolve(preset="paper", dataset="mnist", ipc=10)
    cfg = resolve(preset="paper", dataset="mnist", ipc=10, overrides={"k": 1.0, "scale": 30.0})
    assert cfg.matcher.scale == 30.0
    assert paper_row("dm", "mnist", 10) is None
    # the cpu preset falls back to the official code's k = 1, lambda = 20 and says so
    cfg = resolve(preset="cpu", dataset="mnist", ipc=10)
    assert (cfg.matcher.k, cfg.matcher.scale) == (1.0, 20.0) and "official" in cfg.sources["matcher.k"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"preset": "fast"}, "unknown preset"),
        ({"method": "gm"}, "unknown method"),
        ({"matcher": "cosine"}, "unknown matcher"),
        ({"dataset": "imagenet-21k"}, "imagenet-21k"),
        ({"ipc": 0}, "positive integer"),
        ({"ipc": 2.5}, "positive integer"),
        ({"overrides": {"k": -1.0}}, r"matcher.k \(--k\) must be a finite number > 0; got -1.0"),
        ({"overrides": {"momentum_img": 1.0}}, r"momentum_img \(--momentum-img\) must lie in \[0, 1\); got 1.0"),
        ({"overrides": {"eval_runs": -1}}, r"eval.runs \(--eval-runs\) must be an integer >= 0"),
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


# ---------------------------------------------------------------------------------------------
# the nested configuration: override forms, NOT_GIVEN, checks before work, hyperdm 0.1's flat config.json
# ---------------------------------------------------------------------------------------------

FLAT_RUN = Path(__file__).parent / "data" / "flat_run"


def test_not_given_is_one_named_sentinel():
    import copy
    import pickle

    assert repr(NOT_GIVEN) == "NOT_GIVEN" and not NOT_GIVEN
    assert copy.deepcopy(NOT_GIVEN) is NOT_GIVEN and pickle.loads(pickle.dumps(NOT_GIVEN)) is NOT_GIVEN


def test_the_three_override_forms_give_one_config():
    flat = resolve(overrides={"k": 2.0, "eval_epochs": 5, "expert_per_class": 7}, method="dance")
    dotted = resolve(overrides={"matcher.k": 2.0, "eval.epochs": 5, "dance.experts.per_class": 7}, method="dance")
    nested = resolve(
        overrides={"matcher": {"k": 2.0}, "eval": {"epochs": 5}, "dance": {"experts": {"per_class": 7}}}, method="dance"
    )
    assert flat == dotted == nested
    assert (nested.matcher.k, nested.eval.epochs, nested.dance.experts.per_class) == (2.0, 5, 7)
    assert nested.sources["dance.experts.per_class"] == "command line / override"
    assert resolve(method="dance").dance.experts.per_class == 200  # the cpu preset's, when not given


def test_none_is_a_value_where_a_setting_takes_it():
    cfg = resolve(overrides={"max_norm": None})
    assert cfg.matcher.max_norm is None and "no clamp" in cfg.sources["matcher.max_norm"]
    assert resolve(overrides={"max_norm": NOT_GIVEN}).matcher.max_norm == 10.0
    # the Dance preset sets match_dsa and experts.per_class; None overrides them (every group / every image)
    d = resolve(method="dance", overrides={"match_dsa": None, "expert_per_class": None})
    assert d.match_dsa is None and d.dance.experts.per_class is None
    # where None is no value (an integer setting), it reads as not given: argparse defaults pass through
    assert resolve(overrides={"iterations": None}).iterations == resolve().iterations


def test_the_sections_hold_only_their_method():
    assert resolve(method="dm").idm is None and resolve(method="dm").dance is None
    idm = resolve(method="idm")
    assert idm.dance is None and idm.idm.net_num == 10 and idm.partition == 2
    assert (
        "idm.net_num" in idm.summary()
        and "dance." not in idm.summary()
        and "unused" not in idm.summary().split("matcher")[0]
    )
    assert "idm" not in resolve(method="dm").summary()
    assert resolve(method="dance").expert_config().model == resolve(method="dance").model


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"net_num": 5}, r"idm.net_num \(--net-num\) is a setting of --method idm; this run is --method dm"),
        ({"dance": {"iter_calib": 2}}, r"dance.iter_calib \(--iter-calib\) is a setting of --method dance"),
        (
            {"matcher": {"kk": 2.0}},
            r"unknown setting 'matcher.kk'; did you mean 'matcher.k'\? the matcher settings are: kind, k, ",
        ),
        (
            {"eval": 5},
            r"override 'eval' is a section: give a dict of its settings, e.g. \{'eval': \{'epochs': \.\.\.\}\}",
        ),
        ({"matcher": {"k": "two"}}, r"setting matcher.k \(--k\) takes a number; got 'two' \(str\)"),
        ({"iterations": 2.5}, r"setting iterations \(--iterations\) takes an integer; got 2.5"),
        ({"eval_archs": "ConvNet"}, r"setting eval.archs \(--arch\) takes a list of a string"),
        ({"max_norm": "none"}, r"takes a number or None"),
        ({"itterations": 5}, r"unknown setting 'itterations'; did you mean 'iterations'\?"),
    ],
)
def test_bad_overrides_are_refused_before_anything_is_resolved(overrides, says, monkeypatch):
    import hyperdm.distill.presets as presets

    monkeypatch.setattr(presets, "_method_table", lambda *a: pytest.fail("resolved before the overrides were checked"))
    with pytest.raises(ValueError, match=says):
        resolve(overrides=overrides)


def test_nested_round_trip_and_readable_json():
    cfg = resolve(method="idm", overrides={"max_norm": None, "eval_at": [5]})
    text = json.dumps(cfg.to_dict(), indent=2)
    d = json.loads(text)
    assert (
        d["matcher"]["max_norm"] is None and d["idm"]["net_num"] == 10 and d["dance"] is None and d["eval"]["at"] == [5]
    )
    assert not {"seed", "device", "dsa_strategy"} & set(d["eval"])  # run-derived: the run's own settings
    assert "model" not in resolve(method="dance").to_dict()["dance"]["experts"]
    assert DistillConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match=r"unknown setting 'matcher.kk'"):
        DistillConfig.from_dict({**d, "matcher": {**d["matcher"], "kk": 1}})
    with pytest.raises(ValueError, match=r"setting eval.epochs \(--eval-epochs\) takes an integer"):
        DistillConfig.from_dict({**d, "eval": {**d["eval"], "epochs": "many"}})


def test_a_flat_config_json_of_hyperdm_0_1_maps_into_the_sections():
    flat = json.loads((FLAT_RUN / "config.json").read_text())
    assert flat["k"] == 1 and "eval_epochs" in flat and "matcher" in flat and flat["matcher"] == "hyperbolic"
    cfg = DistillConfig.from_dict(flat)
    assert (cfg.method, cfg.matcher.kind, cfg.ipc, cfg.seed, cfg.iterations) == ("dm", "hyperbolic", 1, 3, 4)
    assert (cfg.matcher.k, cfg.matcher.scale, cfg.matcher.max_norm, cfg.matcher.dtype) == (1, 20, 10.0, "float64")
    assert (cfg.eval.epochs, cfg.eval.runs, cfg.eval.every, cfg.eval.archs) == (300, 0, 0, ("ConvNet",))
    assert cfg.idm is None and cfg.dance is None  # 0.1 kept every method's settings; a DM run uses neither
    assert cfg.sources["matcher.k"] == flat["sources"]["k"] and cfg.sources["eval.runs"] == flat["sources"]["eval_runs"]
    # the same run resolved today has the same settings
    today = resolve(
        ipc=1,
        overrides={
            "iterations": 4,
            "batch_real": 8,
            "eval_runs": 0,
            "checkpoint_every": 2,
            "seed": 3,
            "data_root": flat["data_root"],
        },
    )
    assert today.settings() == cfg.settings()


def test_flat_attributes_of_hyperdm_0_1_still_read_and_write_with_a_warning():
    cfg = resolve()
    with pytest.warns(DeprecationWarning, match="DistillConfig.max_norm is now DistillConfig.matcher.max_norm"):
        cfg.max_norm = None
    assert cfg.matcher.max_norm is None
    with pytest.warns(DeprecationWarning, match="eval.epochs"):
        assert cfg.eval_epochs == cfg.eval.epochs
