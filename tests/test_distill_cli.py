"""The ``hyperdm`` command line: help, bad input, evaluate / prune / plot on a tiny real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperdm.distill.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_documents_every_option():
    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices
    assert set(subs) == {"distill", "evaluate", "prune", "plot"}
    for name, sp in subs.items():
        for action in sp._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, (name, action.option_strings)
    text = subs["distill"].format_help()
    for opt in (
        "--method",
        "--matcher",
        "--dataset",
        "--ipc",
        "--preset",
        "--iterations",
        "--eval-epochs",
        "--eval-runs",
        "--data-root",
        "--out",
        "--seed",
        "--device",
        "--resume",
        "--prune-keep",
        "--download",
    ):
        assert opt in text
    assert "curvature is -1/k" in text


@pytest.mark.slow
def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "hyperdm", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "distill" in r.stdout


@pytest.mark.parametrize(
    "args, match",
    [
        (["distill", "--dataset", "imagenet-21k"], "unknown dataset|imagenet-21k"),
        (["distill", "--dataset", "mnist", "--data-root", "{tmp}"], "{tmp}"),
        (["distill", "--ipc", "0"], "positive integer"),
        (["distill", "--method", "dance", "--match-dsa", "color_blur"], "unknown DSA group"),
        (["distill", "--preset", "paper", "--dataset", "mnist"], "--k and --scale"),
        (["evaluate", "{tmp}/nothing"], "no synthetic set"),
        (["distill", "--no-clamp", "--max-norm", "5"], "contradict"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, args, match):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    import re

    assert re.search(match.replace("{tmp}", re.escape(str(tmp_path))), err), err


def test_bad_preset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["distill", "--preset", "fast"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_distill_evaluate_prune_plot(tmp_path, capsys, tiny_fmnist_root):
    run = tmp_path / "run"
    data = ["--data-root", str(tiny_fmnist_root)]
    distill = [
        "--log-level",
        "WARNING",
        "distill",
        *data,
        "--matcher",
        "hyperbolic",
        "--ipc",
        "1",
        "--iterations",
        "2",
        "--batch-real",
        "8",
        "--eval-epochs",
        "2",
        "--eval-runs",
        "1",
        "--out",
        str(run),
        "--no-progress",
        "--seed",
        "1",
    ]
    rc = main(distill)
    assert rc == 0
    out = capsys.readouterr().out
    assert "ConvNet test accuracy" in out and str(run.resolve()) in out
    cfg = json.loads((run / "config.json").read_text())
    assert (
        cfg["iterations"] == 2 and cfg["matcher"]["k"] == 1 and cfg["matcher"]["scale"] == 20
    )  # Fashion-MNIST IPC 1 row: k 1, lambda 20
    # evaluate the run directory and the .pt; JSON output
    assert (
        main(
            [
                "evaluate",
                str(run),
                *data,
                "--epochs",
                "2",
                "--runs",
                "2",
                "--out",
                str(tmp_path / "ev.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert len(ev["results"]["ConvNet"]["accs"]) == 2
    assert (
        main(
            [
                "evaluate",
                str(run / "synthetic.pt"),
                *data,
                "--epochs",
                "1",
                "--runs",
                "1",
                "--dataset",
                "fashion-mnist",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "ConvNet:" in capsys.readouterr().out
    # prune
    assert (
        main(
            [
                "prune",
                *data,
                "--dataset",
                "fashion-mnist",
                "--keep",
                "0.1",
                "--nets",
                "1",
                "--out",
                str(tmp_path / "kept"),
            ]
        )
        == 0
    )
    kept = np.load(tmp_path / "kept.npy")
    assert kept.shape == (30,) and np.all(np.diff(kept) > 0)
    assert json.loads((tmp_path / "kept.json").read_text())["kept"] == 30
    # plot
    (run / "poincare.png").unlink()
    assert main(["plot", str(run), *data]) == 0
    assert (run / "poincare.png").stat().st_size > 0 and (run / "loss.png").stat().st_size > 0
    # a finished run can be resumed (re-writes artifacts, no new iterations)
    assert main([*distill, "--resume"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert len(m["loss"]) == 2 and len(m["evals"]) == 1


def test_evaluate_rejects_wrong_dataset(tmp_path, capsys, tiny_fmnist_root):
    torch.save({"data": [[torch.zeros(2, 3, 32, 32), torch.tensor([0, 1])]]}, tmp_path / "s.pt")
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "s.pt"),
                "--dataset",
                "fashion-mnist",
                "--data-root",
                str(tiny_fmnist_root),
                "--epochs",
                "1",
                "--runs",
                "1",
            ]
        )
        == 2
    )
    assert "--dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_no_clamp_reaches_the_run(tmp_path, tiny_fmnist_root):
    run = tmp_path / "run"
    assert (
        main(
            [
                "--log-level",
                "WARNING",
                "distill",
                "--data-root",
                str(tiny_fmnist_root),
                "--ipc",
                "1",
                "--iterations",
                "1",
                "--batch-real",
                "4",
                "--eval-runs",
                "0",
                "--no-clamp",
                "--k",
                "2",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    cfg = json.loads((run / "config.json").read_text())
    assert (
        cfg["matcher"]["max_norm"] is None
        and cfg["matcher"]["k"] == 2
        and "no clamp" in cfg["sources"]["matcher.max_norm"]
    )
    assert "max_norm=None" in cfg["matcher_repr"]


@pytest.mark.slow
def test_radius_reaches_the_run_its_log_and_metrics(tmp_path, tiny_fmnist_root):
    """--radius R calibrates the matcher on the first real batch; the radii are logged and kept in metrics.json."""
    run = tmp_path / "run"
    args = ["--log-level", "WARNING", "distill", "--data-root", str(tiny_fmnist_root), "--ipc", "1"]
    args += ["--iterations", "2", "--batch-real", "4", "--eval-runs", "0", "--no-clamp", "--radius", "2"]
    assert main([*args, "--out", str(run), "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["matcher"]["radius"] == 2.0 and "radius calibration" in cfg["sources"]["matcher.radius"]
    assert "radius=2" in cfg["matcher_repr"]
    m = json.loads((run / "metrics.json").read_text())
    r = m["radius"]
    assert r["iteration"] == 0 and r["real_median"] == pytest.approx(2.0, rel=1e-12) and r["real_clamped"] == 0.0
    assert r["alpha"] == m["matcher_alpha"] > 0 and 0 < r["syn_median"] < 10
    log = (run / "run.log").read_text()
    assert "radii at iteration 0: median |v|/sqrt(k) of the real features 2 (0% at the clamp)" in log
    assert "Law centroid" not in log  # radius 2 at IPC 1: under the limit, no warning
    # radius 4 at IPC 1, synthetic points free: one warning, in the log, naming the radius
    far = tmp_path / "far"
    assert main([*args[:-1], "4", "--out", str(far), "--no-progress"]) == 0
    log = (far / "run.log").read_text()
    assert log.count("IPC 1 with the real features at median radius 4 and the synthetic ones free") == 1
    # HDD as published: the log says every real point is at the clamp, and warns once what that means
    pub = tmp_path / "published"
    assert main([*args[:-3], "--out", str(pub), "--no-progress"]) == 0
    r = json.loads((pub / "metrics.json").read_text())["radius"]
    assert r["real_clamped"] == 1.0 and r["real_median"] > 10 and "alpha" not in r
    log = (pub / "run.log").read_text()
    assert "(100% at the clamp)" in log and log.count("only feature directions are matched") == 1
    assert "Law centroid" not in log  # the clamp holds the synthetic points' radius: no IPC 1 warning


def test_scale_takes_a_number_or_auto(capsys):
    assert build_parser().parse_args(["distill", "--scale", "auto"]).scale == "auto"
    assert build_parser().parse_args(["distill", "--scale", "12.5"]).scale == 12.5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--scale", "big"])
    assert "expected a number or 'auto', got 'big'" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_matcher_reaches_the_run_and_gives_the_plain_loss(tmp_path, tiny_fmnist_root):
    losses = {}
    for flag in ([], ["--compile-matcher"]):
        run = tmp_path / ("compiled" if flag else "plain")
        assert (
            main(
                [
                    "--log-level",
                    "WARNING",
                    "distill",
                    "--data-root",
                    str(tiny_fmnist_root),
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
                    *flag,
                ]
            )
            == 0
        )
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["matcher"]["compile"] is bool(flag)
        assert ("compile=True" in cfg["matcher_repr"]) is bool(flag)
        losses[bool(flag)] = json.loads((run / "metrics.json").read_text())["loss"]
    assert np.allclose(losses[True], losses[False], rtol=1e-9, atol=0), losses


# ---------------------------------------------------------------------------------------------
# checks before work, one error boundary, --version, --log-level anywhere, honest sources
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["distill", "--eval-every", "-5"], "argument --eval-every: must be >= 0, got -5"),
        (["distill", "--iterations", "-1"], "argument --iterations: must be >= 0, got -1"),
        (["distill", "--lr-img", "inf"], "argument --lr-img: must be a finite number > 0, got 'inf'"),
        (["distill", "--scale", "nan"], "argument --scale: expected a finite number >= 0 or 'auto', got 'nan'"),
        (["distill", "--prune-keep", "0"], "argument --prune-keep: must be a fraction in (0, 1]"),
        (["distill", "--radius", "0"], "argument --radius: must be a finite number > 0, got '0'"),
        (["distill", "--eval-epochs", "0"], "argument --eval-epochs: must be >= 1, got 0 (--eval-runs 0 skips"),
        (["distill", "--method", "dance", "--experts", "0"], "argument --experts: must be >= 1, got 0"),
        (["distill", "--momentum-img", "1"], "argument --momentum-img: must lie in [0, 1), got '1'"),
        (["distill", "--checkpoint-minutes", "-1"], "argument --checkpoint-minutes: must be a finite number >= 0"),
        (["distill", "--radius", "-2"], "argument --radius: must be a finite number > 0, got '-2'"),
        (["evaluate", "x", "--epochs", "-5"], "argument --epochs: must be >= 1, got -5"),
        (["evaluate", "x", "--runs", "0"], "argument --runs: must be >= 1, got 0"),
        (
            ["prune", "--keep", "0", "--out", "k"],
            "argument --keep: must be a fraction in (0, 1] (0.2 keeps 20 % of each class), got '0'",
        ),
        (["prune", "--keep", "1.5", "--out", "k"], "argument --keep: must be a fraction in (0, 1]"),
        (["prune", "--keep", "0.2", "--nets", "0", "--out", "k"], "argument --nets: must be >= 1, got 0"),
    ],
)
def test_bad_values_are_refused_by_the_parser_in_one_line(args, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err
    assert len(err.strip().splitlines()) == 1 and "--help" in err  # one line, no screenful of usage


@pytest.fixture
def no_work(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("work started before the checks")

    monkeypatch.setattr("hyperdm.distill.data.load_dataset", refuse)


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["distill", "--arch", "FooNet"],
            "unknown architecture 'FooNet'; valid names: ConvNet, AlexNet, VGG11, ResNet18",
        ),
        (["distill", "--model", "FooNet"], "unknown architecture 'FooNet'"),
        (["evaluate", "{tmp}/x.pt", "--arch", "FooNet"], "unknown architecture 'FooNet'"),
        (["distill", "--resume", "--overwrite"], "pass one of them"),
        (["plot", "{tmp}/typo"], "no run directory at {tmp}/typo; pass a directory written by `hyperdm distill`."),
        (["evaluate", "{tmp}/missing.pt"], "no synthetic set at {tmp}/missing.pt"),
    ],
)
def test_bad_names_fail_before_any_work_and_leave_nothing(tmp_path, capsys, no_work, args, says):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(tmp_path.iterdir())
    assert main([*args, "--out", str(tmp_path / "out")] if args[0] == "distill" else args) == 2
    err = capsys.readouterr().err
    assert f"hyperdm {args[0]}: error: " in err and says.replace("{tmp}", str(tmp_path)) in err
    assert sorted(tmp_path.iterdir()) == before  # no run directory, no typo directory


def test_plot_of_a_file_says_to_pass_its_directory(tmp_path, capsys):
    (tmp_path / "res.pt").write_bytes(b"")
    assert main(["plot", str(tmp_path / "res.pt")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'res.pt'} is a file; `hyperdm plot` redraws the figures of a run directory" in err
    assert "File exists" not in err


def test_version_and_log_level_before_or_after_the_subcommand(capsys):
    import hyperdm

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"hyperdm {hyperdm.__version__}"
    parser = build_parser()
    assert parser.parse_args(["--log-level", "ERROR", "distill"]).log_level == "ERROR"
    assert parser.parse_args(["distill", "--log-level", "ERROR"]).log_level == "ERROR"
    assert parser.parse_args(["distill"]).log_level == "INFO"
    assert parser.parse_args(["prune", "--keep", "0.2", "--out", "k", "--debug"]).debug is True


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def bug(*a, **k):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr("hyperdm.distill.presets.resolve", bug)
    assert main(["distill", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "hyperdm distill: internal error: RuntimeError: something nobody expected. This is a bug in "
        "hyperdm; run again with --debug for the traceback and report it."
    )
    assert main(["distill", "--out", str(tmp_path / "r"), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "something nobody expected" in err


def test_sources_say_command_line_only_for_what_was_typed(tmp_path, tiny_fmnist_root, monkeypatch):
    monkeypatch.setattr("hyperdm.distill.plots.plot_poincare", lambda *a, **k: None)
    common = [
        "--log-level",
        "WARNING",
        "distill",
        "--data-root",
        str(tiny_fmnist_root),
        "--ipc",
        "1",
        "--iterations",
        "0",
        "--eval-runs",
        "0",
        "--no-progress",
    ]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    src = json.loads((tmp_path / "a" / "config.json").read_text())["sources"]
    assert "seed" not in src and "device" not in src and "download" not in src  # the defaults: never typed
    assert src["iterations"] == src["data_root"] == "command line / override"
    assert main([*common, "--out", str(tmp_path / "b"), "--seed", "0", "--device", "cpu"]) == 0
    src = json.loads((tmp_path / "b" / "config.json").read_text())["sources"]
    assert src["seed"] == src["device"] == "command line / override"


def test_warning_level_hides_the_run_log_lines_on_the_console(tmp_path, tiny_fmnist_root, capsys, monkeypatch):
    monkeypatch.setattr("hyperdm.distill.plots.plot_poincare", lambda *a, **k: None)
    assert (
        main(
            [
                "distill",
                "--log-level",
                "WARNING",
                "--data-root",
                str(tiny_fmnist_root),
                "--ipc",
                "1",
                "--iterations",
                "0",
                "--eval-runs",
                "0",
                "--no-progress",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    assert " INFO " not in capsys.readouterr().err
    assert "INFO" in (tmp_path / "r" / "run.log").read_text()  # the run's own log keeps everything


@pytest.mark.slow
def test_resume_of_a_run_written_with_the_flat_config_of_hyperdm_0_1(tmp_path, tiny_fmnist_root, capsys, monkeypatch):
    """tests/data/flat_run: `distill --ipc 1 --iterations 4 --batch-real 8 --eval-runs 0 --checkpoint-every 2 --seed 3`
    interrupted after 3 iterations by hyperdm 0.1 (flat config.json and checkpoint); resuming it today must finish
    the run as the uninterrupted 0.1 run did."""
    import shutil

    monkeypatch.setattr("hyperdm.distill.plots.plot_poincare", lambda *a, **k: None)
    src = Path(__file__).parent / "data" / "flat_run"
    run = tmp_path / "run"
    shutil.copytree(src, run)
    args = [
        "--log-level",
        "WARNING",
        "distill",
        "--data-root",
        str(tiny_fmnist_root),
        "--ipc",
        "1",
        "--iterations",
        "4",
        "--batch-real",
        "8",
        "--eval-runs",
        "0",
        "--checkpoint-every",
        "2",
        "--seed",
        "3",
        "--no-progress",
        "--out",
        str(run),
    ]
    assert "matcher" in json.loads((run / "config.json").read_text()) and "k" in json.loads(
        (run / "config.json").read_text()
    )
    # other settings than the checkpoint's: refused with the settings named by path, nothing changed
    assert main([*args, "--k", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was made with different settings (matcher.k: 1 in the checkpoint, 2.0 now)" in err
    assert "resume with the same settings" in err and "matcher.scale" not in err  # said first, in one line
    assert len(err.strip().splitlines()) == 1
    assert main([*args, "--resume"]) == 0
    loss = json.loads((run / "metrics.json").read_text())["loss"]
    want = json.loads((src / "uninterrupted_loss.json").read_text())["loss"]
    assert len(loss) == 4 and loss[:3] == want[:3]  # the first three come from the old checkpoint
    assert loss == pytest.approx(want, rel=1e-6)
    cfg = json.loads((run / "config.json").read_text())  # rewritten in the nested form
    assert cfg["matcher"]["k"] == 1 and cfg["eval"]["runs"] == 0 and "k" not in cfg


#: every `hyperdm distill` option before the options were read from the configuration's fields
OPTIONS_OF_0_1 = (
    "--iterations",
    "--batch-real",
    "--lr-img",
    "--k",
    "--scale",
    "--max-norm",
    "--no-clamp",
    "--match-dtype",
    "--compile-matcher",
    "--model",
    "--init",
    "--dsa",
    "--eval-every",
    "--eval-at",
    "--eval-epochs",
    "--eval-runs",
    "--arch",
    "--partition",
    "--ce-weight",
    "--net-num",
    "--model-train-steps",
    "--net-batch",
    "--experts",
    "--expert-epochs",
    "--expert-per-class",
    "--expert-seed",
    "--expert-dir",
    "--iter-calib",
    "--match-dsa",
    "--checkpoint-every",
    "--prune-keep",
    "--prune-score",
)


def test_distill_has_an_option_for_every_setting_and_keeps_the_old_names():
    from hyperdm.distill.config import FLAT, DistillConfig
    from hyperdm.distill.settings import leaves

    sub = build_parser()._subparsers._group_actions[0].choices["distill"]
    flags = {s for action in sub._actions for s in action.option_strings}
    assert set(OPTIONS_OF_0_1) <= flags
    dests = {action.dest for action in sub._actions}
    assert {flat for _, flat, f, _ in leaves(DistillConfig) if f.metadata["cli"]} <= dests
    assert set(FLAT) - dests == set()  # the rest (method, dataset, ...) are the command's own arguments
    # an option reaches its setting through resolve(): the parsed values are NOT_GIVEN unless typed
    a = sub.parse_args(["--eval-at", "5", "7", "--arch", "ConvNet", "AlexNet", "--no-clamp", "--dsa", "none"])
    assert (a.eval_at, a.eval_archs, a.max_norm__none, a.dsa_strategy) == ([5, 7], ["ConvNet", "AlexNet"], True, "")
    assert repr(a.k) == "NOT_GIVEN"


def test_a_method_option_for_another_method_is_refused_before_work(tmp_path, capsys, no_work):
    assert main(["distill", "--net-num", "5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "idm.net_num (--net-num) is a setting of --method idm; this run is --method dm" in err
    assert not (tmp_path / "o").exists()
