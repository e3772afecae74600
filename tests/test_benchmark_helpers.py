"""The benchmark scripts' bookkeeping: the shared results file, the summary tables, the verdicts."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _results
import convergence
import pruning_study
import reproduce


def _writer(results_dir: str, shard: int, n: int) -> None:
    _results.RESULTS = Path(results_dir)
    store = _results.RowStore("shared")
    for i in range(n):
        store.put({"id": f"{shard}/{i}", "value": i}, {"benchmark": "t"}, lambda rows: {"count": len(rows)})


def test_rowstore_merges_rows_of_concurrent_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(_results, "RESULTS", tmp_path)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s, 15)) for s in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    data = json.loads((tmp_path / "shared.json").read_text())
    assert sorted(r["id"] for r in data["rows"]) == sorted(f"{s}/{i}" for s in range(3) for i in range(15))
    assert data["count"] == 45 and data["benchmark"] == "t"
    store = _results.RowStore("shared")
    store.put({"id": "0/3", "value": 99}, {}, lambda rows: {})  # replace, not duplicate
    rows = store.rows()
    assert len(rows) == 45 and store.get("0/3")["value"] == 99


def test_same_settings_and_shards():
    assert _results.same_settings({"a": 1, "b": 2}, {"a": 1})
    assert not _results.same_settings({"a": 1}, {"a": 2}) and not _results.same_settings(None, {})
    assert _results.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError, match="expected I/N"):
            _results.parse_shard(bad)


def _row(method, matcher, ipc, seed, mean):
    return {
        "id": reproduce.row_id(method, matcher, ipc, seed),
        "method": method,
        "matcher": matcher,
        "ipc": ipc,
        "seed": seed,
        "mean": mean / 100,
    }


def test_reproduce_table_and_verdicts():
    rows = [_row("dm", "mmd", 10, s, m) for s, m in enumerate((80.0, 81.0, 82.0))]
    rows += [_row("dm", "hyperbolic", 10, s, m) for s, m in enumerate((83.0, 84.0, 85.0))]
    rows += [_row("dm", "mmd", 1, s, m) for s, m in enumerate((70.0, 72.0))]
    rows += [_row("dm", "hyperbolic", 1, s, m) for s, m in enumerate((70.5, 71.5))]
    rows += [_row("random", "-", 10, 0, 73.0)]
    table = reproduce.summarise(rows)
    by = {(t["method"], t["matcher"], t["ipc"]): t for t in table}
    hdd10 = by[("dm", "hyperbolic", 10)]
    assert hdd10["mean"] == pytest.approx(84.0) and hdd10["std"] == pytest.approx((2 / 3) ** 0.5)
    assert hdd10["per_seed"] == [83.0, 84.0, 85.0] and hdd10["paper_mean"] == 84.0 and hdd10["label"] == "DM with HDD"
    assert by[("random", "-", 10)]["std"] is None and by[("random", "-", 10)]["paper_mean"] == 73.8
    assert [t["ipc"] for t in table] == [1, 1, 10, 10, 10]  # by IPC, then in the paper's row order
    v = reproduce.verdicts(table)
    assert any(s.startswith("DM IPC 10: HDD beats MMD (+3.00 points") for s in v), v
    assert any(s.startswith("DM IPC 1: HDD is level with MMD (+0.00 points") for s in v), v
    text = reproduce.format_table(table)
    assert "84.00 +- 0.82" in text and "84.0 +- 0.1" in text
    md = reproduce.format_table(table, markdown=True).splitlines()
    assert md[0] == "| method | IPC | ours (%) | per seed | paper (%) |" and len(md) == 2 + len(table)
    assert "| DM with HDD | 10 | 84.00 +- 0.82 | 83.00, 84.00, 85.00 | 84.0 +- 0.1 |" in md
    assert "| Random real | 10 | 73.00 (1 seed) | 73.00 | 73.8 +- 0.7 |" in md


def test_pruning_stability_is_the_std_of_the_last_evaluations():
    evals = [{"iteration": i, "ConvNet": {"mean": m}} for i, m in ((50, 0.70), (100, 0.80), (150, 0.82), (200, 0.78))]
    assert pruning_study.stability(evals, 3) == pytest.approx(((0.0 + 4.0 + 4.0) / 3) ** 0.5)
    assert pruning_study.stability(evals[:2], 3) is None  # too few evaluations: no number rather than a wrong one
    rows = [
        {
            "matcher": "hyperbolic",
            "score": "radius",
            "keep": 0.2,
            "seed": s,
            "kept_images": 12000,
            "mean": m,
            "std": 0.01,
            "evals": evals,
        }
        for s, m in ((0, 0.78), (1, 0.80))
    ]
    (t,) = pruning_study.summarise(rows, 3)
    assert t["final_mean"] == pytest.approx(79.0) and t["final_std_over_seeds"] == pytest.approx(1.0)
    assert t["curve_std_last"] == pytest.approx(((0.0 + 4.0 + 4.0) / 3) ** 0.5)
    assert t["synthetic_mean_pixel"] is None  # not recorded in every row: no number
    (t,) = pruning_study.summarise([{**r, "synthetic_mean_pixel": p} for r, p in zip(rows, (0.2, 0.3), strict=True)], 3)
    assert t["synthetic_mean_pixel"] == pytest.approx(0.25)


def test_synthetic_mean_pixel_reads_the_run_on_the_pixel_scale(tmp_path):
    from hyperdm.distill.data import DatasetInfo, RealData

    info = DatasetInfo(
        name="t", channels=1, im_size=(2, 2), num_classes=2, mean=(0.5,), std=(0.25,), class_names=("a", "b")
    )
    real = RealData(
        info=info,
        train_images=torch.zeros(2, 1, 2, 2),
        train_labels=torch.tensor([0, 1]),
        test_images=torch.zeros(2, 1, 2, 2),
        test_labels=torch.tensor([0, 1]),
        root=str(tmp_path),
    )
    images = torch.tensor([[[[0.0, 1.0], [2.0, -2.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])  # pixels 0.5 + 0.25 * x
    torch.save({"data": [[images, torch.tensor([0, 1])]]}, tmp_path / "synthetic.pt")
    assert pruning_study.synthetic_mean_pixel(tmp_path, real) == pytest.approx(0.5 + 0.25 * 5.0 / 8)


def test_sensitivity_variants_change_one_setting_each():
    import argparse

    import sensitivity

    a = argparse.Namespace(preset="cpu", dataset="fashion-mnist", ipc=10, device="cpu", seed=3, data_root=None)
    base = sensitivity.configure("hdd", a)
    m = base.matcher
    assert (m.kind, m.k, m.scale, m.max_norm, base.seed) == ("hyperbolic", 1, 40, 10.0, 3)
    expect = {
        "no-clamp": {"matcher.max_norm": None},
        "float32": {"matcher.dtype": "float32"},
        "scale-auto": {"matcher.scale": "auto"},
        "scale-half": {"matcher.scale": 20.0},
        "scale-double": {"matcher.scale": 80.0},
        "k0.5": {"matcher.k": 0.5},
        "k2": {"matcher.k": 2.0},
    }
    for name, change in expect.items():
        cfg = sensitivity.configure(name, a)
        old, new = base.settings(), cfg.settings()
        assert {p: v for p, v in new.items() if v != old[p]} == change, name
        assert all(cfg.sources[path] == f"sensitivity variant {name}" for path in change)
    assert sensitivity.configure("mmd", a).matcher.kind == "mmd"
    row = {
        "variant": "no-clamp",
        "seed": 0,
        "matcher": "hyperbolic",
        "k": 1,
        "scale": 40.0,
        "max_norm": None,
        "match_dtype": "float64",
        "mean": 0.8117,
        "std": 0.0001,
        "loss_per_class_first": 15.9,
        "loss_per_class_last": 7.7,
    }
    line = sensitivity.format_table([row]).splitlines()[-1]
    assert line.split()[:6] == ["no-clamp", "1", "40", "none", "float64", "81.17"]


def test_pruning_curves_plot_the_saved_evaluations():
    import plots

    def row(matcher, score, keep, accs):
        return {
            "matcher": matcher,
            "score": score,
            "keep": keep,
            "seed": 0,
            "evals": [{"iteration": 100 * (i + 1), "ConvNet": {"mean": a}} for i, a in enumerate(accs)],
        }

    res = {
        "dataset": "fashion-mnist",
        "ipc": 10,
        "preset": "cpu",
        "rows": [
            row("hyperbolic", "radius", 0.2, [0.70, 0.72]),
            row("mmd", "none", 1.0, [0.79, 0.81]),
            row("hyperbolic", "none", 1.0, [0.78, 0.80]),
            row("hyperbolic", "random", 0.2, [0.75, 0.77]),
        ],
    }
    res["rows"].append(dict(row("hyperbolic", "radius", 0.2, [0.60, 0.66]), seed=1))
    fig = plots.curve_figure(res)
    left, right, by_keep = fig.axes
    got = {ln.get_label(): list(ln.get_ydata()) for ln in left.get_lines()}
    assert got == {"DM (MMD), seed 0": [79.0, 81.0], "DM + HDD, seed 0": [78.0, 80.0]}
    got = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in right.get_lines()}
    assert got == {
        "100 %, seed 0": ([100, 200], [78.0, 80.0]),
        "20 % radius, seed 0": ([100, 200], [70.0, 72.0]),
        "20 % random, seed 0": ([100, 200], [75.0, 77.0]),
        "20 % radius, seed 1": ([100, 200], [60.0, 66.0]),
    }
    got = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in by_keep.get_lines()}
    assert set(got) == {
        "radius, seed 0",
        "radius, seed 1",
        "random, seed 0",
        "MMD line, 100 %, seed 0",
    }  # no centroid rows
    assert got["radius, seed 0"] == ([20.0, 100.0], [72.0, 80.0])  # ends at the seed's own 100 % row
    assert got["radius, seed 1"] == ([20.0], [66.0])  # seed 1 has no 100 % row: nothing borrowed from seed 0
    assert got["random, seed 0"][1] == [77.0, 80.0]
    assert got["MMD line, 100 %, seed 0"][1] == [81.0, 81.0]
    import matplotlib.pyplot as plt

    plt.close(fig)


def _conv_row(variant, ipc, seed, it, acc):
    return {
        "id": f"dm/{variant}/ipc{ipc}/seed{seed}/it{it}",
        "variant": variant,
        "ipc": ipc,
        "seed": seed,
        "iteration": it,
        "accuracy": acc,
    }


def test_convergence_table_pairs_seeds_and_skips_unpaired():
    rows = [
        _conv_row("mmd", 1, 0, 200, 70.0),
        _conv_row("mmd", 1, 1, 200, 72.0),
        _conv_row("hyperbolic", 1, 0, 200, 71.0),
        _conv_row("hyperbolic", 1, 1, 200, 71.0),
        _conv_row("hyperbolic", 1, 2, 200, 90.0),  # no MMD partner: in the mean, not in the differences
        _conv_row("mmd", 10, 0, 500, 80.0),
    ]
    table = {(e["variant"], e["ipc"], e["iteration"]): e for e in convergence.table(rows)}
    hdd = table[("hyperbolic", 1, 200)]
    assert hdd["seeds"] == [0, 1, 2] and hdd["mean"] == pytest.approx(232 / 3)
    assert hdd["paired_seeds"] == [0, 1] and hdd["diff_per_seed"] == [1.0, -1.0]
    assert hdd["diff_mean"] == 0.0 and hdd["diff_std"] == pytest.approx(2**0.5)
    assert hdd["diff_ci95"] == pytest.approx(12.7062047, rel=1e-7)  # t(0.975, 1 df) * sqrt(2) / sqrt(2)
    assert table[("mmd", 10, 500)]["std"] == 0.0 and "diff_mean" not in table[("mmd", 10, 500)]
    text = convergence.format_table(convergence.table(rows), markdown=True)
    assert "| hyperbolic | 1 | 200 | 0,1,2 | 77.33 +- 10.97 | +1.00, -1.00 | +0.00 +- 1.41 | -12.71 to +12.71 |" in text
    assert "| mmd | 10 | 500 | 0 | 80.00 | - | - | - |" in text  # one seed: no '+- 0.00' spread
    one_pair = convergence.format_table(convergence.table(rows[:1] + rows[2:3]), markdown=True)
    assert "| hyperbolic | 1 | 200 | 0 | 71.00 | +1.00 | +1.00 | - |" in one_pair


def test_convergence_table_against_hdd_as_published_pairs_only_the_other_hdd_settings():
    rows = [
        _conv_row("mmd", 10, 0, 200, 80.0),
        _conv_row("hyperbolic", 10, 0, 200, 81.0),
        _conv_row("hyperbolic", 10, 1, 200, 79.5),
        _conv_row("no-clamp", 10, 0, 200, 82.5),
        _conv_row("no-clamp", 10, 1, 200, 80.0),
        _conv_row("scale-double", 10, 2, 200, 70.0),  # no HDD partner
    ]
    table = {e["variant"]: e for e in convergence.table(rows, "hyperbolic")}
    assert "diff_per_seed" not in table["mmd"] and "diff_per_seed" not in table["hyperbolic"]  # not HDD settings
    assert table["no-clamp"]["against"] == "hyperbolic" and table["no-clamp"]["paired_seeds"] == [0, 1]
    assert table["no-clamp"]["diff_per_seed"] == [1.5, 0.5] and table["no-clamp"]["diff_mean"] == 1.0
    assert table["no-clamp"]["diff_ci95"] == pytest.approx(12.7062047 * 0.5, rel=1e-7)  # std sqrt(0.5), 2 pairs
    assert table["scale-double"]["paired_seeds"] == [] and "diff_mean" not in table["scale-double"]
    against_mmd = {e["variant"]: e for e in convergence.table(rows)}  # the default: every variant minus the MMD line
    assert against_mmd["no-clamp"]["diff_per_seed"] == [2.5] and against_mmd["hyperbolic"]["diff_per_seed"] == [1.0]
    text = convergence.format_table(convergence.table(rows, "hyperbolic"), markdown=True, against="hyperbolic")
    assert "| minus HDD as published per seed |" in text and "minus MMD" not in text
    assert "| no-clamp | 10 | 200 | 0,1 | 81.25 +- 1.77 | +1.50, +0.50 | +1.00 +- 0.71 | -5.35 to +7.35 |" in text
    assert convergence.summary(rows)["table_against_hyperbolic"] == convergence.table(rows, "hyperbolic")
    with pytest.raises(ValueError, match="choose one of mmd, hyperbolic"):
        convergence.table(rows, "no-clamp")


def test_convergence_figure_sets_the_matchers_side_by_side(tmp_path, monkeypatch):
    """Each matcher's points sit just beside the evaluated iteration (MMD left, HDD right), so the error bars of
    the two do not hide each other; the panel per IPC shows only the variants it has."""
    import matplotlib.figure

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    rows = [_conv_row(v, 1, s, it, 70.0 + s) for v in ("mmd", "hyperbolic") for s in (0, 1) for it in (200, 2000)]
    rows.append(_conv_row("mmd", 10, 0, 500, 80.0))
    assert convergence.figure(convergence.table(rows), tmp_path / "f.png") == tmp_path / "f.png"
    (fig,) = saved
    ipc1, ipc10 = fig.axes
    x = {c.get_label(): list(c.lines[0].get_xdata()) for c in ipc1.containers}  # the error bars' data lines
    mmd_x, hdd_x = x["DM (MMD line) (2 seeds)"], x["DM + HDD (2 seeds)"]
    for it, a, b in zip((200, 2000), mmd_x, hdd_x, strict=True):
        assert a < it < b and b / a == pytest.approx(1.03)
    assert [list(c.lines[0].get_xdata()) for c in ipc10.containers] == [[500.0]]


def test_convergence_figure_adds_a_screening_row_for_single_seed_variants(tmp_path, monkeypatch):
    """Variants measured with seed 0 only (a screening) get a second row of panels with seed 0's runs of every
    variant, baselines included; the first row keeps the settings measured with several seeds. Without such
    variants there is no screening table and one row."""
    import matplotlib.figure

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    rows = [_conv_row(v, 1, s, 200, 70.0 + s) for v in ("mmd", "hyperbolic") for s in (0, 1, 2)]
    assert convergence.screening_table(rows) is None
    rows += [_conv_row("radius-2", 1, 0, 200, 69.0), _conv_row("radius-4", 1, 0, 200, 64.0)]
    screening = convergence.screening_table(rows)
    assert screening is not None and {e["variant"] for e in screening} == {"mmd", "hyperbolic", "radius-2", "radius-4"}
    assert all(e["seeds"] == [0] for e in screening)
    assert {e["variant"]: e["mean"] for e in screening}["mmd"] == 70.0  # seed 0 alone, not the mean over seeds
    convergence.figure(convergence.table(rows), tmp_path / "f.png", screening)
    (fig,) = saved
    top, bottom = fig.axes
    assert [c.get_label() for c in top.containers] == ["DM (MMD line) (3 seeds)", "DM + HDD (3 seeds)"]
    assert [c.get_label() for c in bottom.containers] == [
        "DM (MMD line) (1 seed)",
        "DM + HDD (1 seed)",
        "DM + HDD, radius 2 (1 seed)",
        "DM + HDD, radius 4 (1 seed)",
    ]


def test_convergence_harvests_only_runs_with_the_same_settings(tmp_path):
    want = dict.fromkeys(convergence.KEYS)
    want.update(
        iterations=2000, ipc=1, seed=0, batch_real=64, lr_img=1.0, eval_epochs=300, eval_runs=2, match_dtype="float32"
    )
    cfg = {**want, "matcher": "mmd", "k": 1.0, "scale": 20.0, "max_norm": 10.0}  # unused by mmd: not compared
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    evals = [{"iteration": 200, "ConvNet": {"mean": 0.7, "std": 0.01, "accs": [0.69, 0.71]}}]
    (tmp_path / "metrics.json").write_text(json.dumps({"evals": evals, "final": False, "distill_seconds": 12.0}))
    rows = convergence.rows_of_run(tmp_path, "mmd", want)
    assert [(r["id"], r["accuracy"], r["runs"], r["run_finished"]) for r in rows] == [
        ("dm/mmd/ipc1/seed0/it200", pytest.approx(70.0), [pytest.approx(69.0), pytest.approx(71.0)], False)
    ]
    assert convergence.rows_of_run(tmp_path, "mmd", {**want, "iterations": 200}) == []


def test_convergence_harvest_names_the_cpu_of_new_evaluations_and_replaces_a_remeasured_row(tmp_path, monkeypatch):
    monkeypatch.setattr(_results, "RESULTS", tmp_path / "results")
    store = _results.RowStore("conv")
    want = dict.fromkeys(convergence.KEYS)
    want.update(iterations=2000, ipc=10, seed=1, eval_epochs=300, eval_runs=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**want, "matcher": "mmd"}))

    def evaluate(accs, final=False):
        evals = [{"iteration": 200, "ConvNet": {"mean": sum(accs) / 2, "std": 0.0, "accs": accs}}]
        (run / "metrics.json").write_text(json.dumps({"evals": evals, "final": final, "distill_seconds": 5.0}))

    evaluate([0.81, 0.82])
    assert convergence.harvest(store, {"cpu_model": "CPU A"}, run, "mmd", want, {"threads": 1}) == 1
    (first,) = store.rows()
    assert first["cpu_model"] == "CPU A" and first["threads"] == 1 and first["accuracy"] == pytest.approx(81.5)
    # harvested again elsewhere, the same evaluation: nothing changes, the row keeps its CPU and its extras
    assert convergence.harvest(store, {"cpu_model": "CPU B"}, run, "mmd", want) == 0
    assert store.rows() == [first]
    evaluate([0.80, 0.82], final=True)  # measured again (a new trajectory): replaced whole, the old extras gone
    assert convergence.harvest(store, {"cpu_model": "CPU B"}, run, "mmd", want) == 1
    (second,) = store.rows()
    assert second["cpu_model"] == "CPU B" and "threads" not in second and second["accuracy"] == pytest.approx(81.0)
    assert second["run_finished"] and second["run_distill_seconds"] == 5.0


def test_convergence_harvests_a_nested_config_json_like_a_flat_one(tmp_path):
    import argparse

    a = argparse.Namespace(dataset="fashion-mnist", device="cpu", data_root=None, iterations=2000, eval_at=[200])
    cfg = convergence.configure("no-clamp", 1, 0, a)
    assert cfg.matcher.max_norm is None and cfg.sources["matcher.max_norm"] == "convergence variant no-clamp"
    want = convergence.settings(cfg)
    assert want["max_norm"] is None and want["k"] == 1 and want["eval_epochs"] == cfg.eval.epochs
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    evals = [{"iteration": 200, "ConvNet": {"mean": 0.7, "std": 0.01, "accs": [0.69, 0.71]}}]
    (tmp_path / "metrics.json").write_text(json.dumps({"evals": evals, "final": False, "distill_seconds": 12.0}))
    assert [r["id"] for r in convergence.rows_of_run(tmp_path, "no-clamp", want)] == ["dm/no-clamp/ipc1/seed0/it200"]
    assert convergence.rows_of_run(tmp_path, "no-clamp", {**want, "max_norm": 10.0}) == []


def test_convergence_radius_variants_calibrate_with_the_exact_map_and_are_harvested_by_their_settings(tmp_path):
    import argparse

    a = argparse.Namespace(dataset="fashion-mnist", device="cpu", data_root=None, iterations=2000, eval_at=[200])
    cfg = convergence.configure("radius-4", 10, 0, a)
    m = cfg.matcher
    assert (m.radius, m.max_norm, m.hierarchical, m.k, m.scale) == (4.0, None, False, 1.0, 40.0)  # the row's k, lambda
    assert cfg.sources["matcher.radius"] == "convergence variant radius-4"
    hier = convergence.configure("radius-4-hier", 1, 0, a)
    assert hier.matcher.hierarchical is True and hier.matcher.radius == 4.0
    want = convergence.settings(cfg)
    assert want["radius"] == 4.0 and want["hierarchical"] is False
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    evals = [{"iteration": 200, "ConvNet": {"mean": 0.8, "std": 0.01, "accs": [0.79, 0.81]}}]
    metrics = {"evals": evals, "final": False, "distill_seconds": 9.0, "matcher_alpha": 0.155, "radius": {"x": 1}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (row,) = convergence.rows_of_run(tmp_path, "radius-4", want)
    assert row["id"] == "dm/radius-4/ipc10/seed0/it200" and row["matcher"] == "hyperbolic"
    assert row["run_radius"] == 4.0 and row["matcher_alpha"] == 0.155 and row["radius_first_iteration"] == {"x": 1}
    assert (
        convergence.rows_of_run(tmp_path, "radius-2", convergence.settings(convergence.configure("radius-2", 10, 0, a)))
        == []
    )


def test_convergence_harvests_every_variant_found_under_work(tmp_path):
    """A run of the follow-up variants is harvested by a plain ``--harvest-only`` (whose ``--variants`` default to
    mmd and hyperbolic), and only the run directories that exist at the requested IPCs and seeds are read."""
    import argparse

    for name in ("dm-no-clamp-ipc10-seed0", "dm-mmd-ipc1-seed2", "dm-hyperbolic-ipc50-seed0"):
        (tmp_path / name).mkdir()
    (tmp_path / "dm-scale-double-ipc10-seed1").write_text("not a run directory")
    a = argparse.Namespace(work=str(tmp_path), ipcs=[1, 10], seeds=[0, 1, 2], variants=["mmd", "hyperbolic"])
    assert convergence.harvested(a) == [("mmd", 1, 2), ("no-clamp", 10, 0)]


GPU_SESSION = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh"


@pytest.mark.slow
def test_gpu_session_script_parses_and_refuses_a_missing_or_unknown_phase(tmp_path):
    import subprocess

    assert subprocess.run(["bash", "-n", str(GPU_SESSION)], capture_output=True).returncode == 0
    r = subprocess.run(["bash", str(GPU_SESSION)], capture_output=True, text=True)
    assert r.returncode != 0 and "usage: gpu_session.sh prepare|bench|protocol" in r.stderr
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "PYTHON": sys.executable, "DEVICE_DIR": str(tmp_path)}
    r = subprocess.run(["bash", str(GPU_SESSION), "warmup"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "unknown phase warmup" in r.stdout


def test_gpu_session_prepare_names_the_missing_dataset(tmp_path):
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "DEVICE_DIR": str(tmp_path / "dev"), "FMNIST_DIR": str(tmp_path / "none")}
    # no download here: a stand-in python whose "pip download" succeeds without fetching anything
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\nexit 0\n")
    (fake / "python").chmod(0o755)
    env["PATH"] = f"{fake}:{env['PATH']}"
    r = subprocess.run(["bash", str(GPU_SESSION), "prepare"], capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert "missing" in r.stdout and "dataset-fashion-mnist" in r.stdout


def test_bench_matcher_rows_variant_sets_the_row_blocks_for_its_call_only():
    import bench_matcher
    from hyperdm import triton_kernels

    seen = []

    def fn(real, syn):
        seen.append(triton_kernels.ROWS_PER_PROGRAM)
        raise RuntimeError("boom")

    before = triton_kernels.ROWS_PER_PROGRAM
    with pytest.raises(RuntimeError, match="boom"):
        bench_matcher.with_rows_per_program(fn, 16)(None, None)
    after = triton_kernels.ROWS_PER_PROGRAM
    assert seen == [16] and after == before  # restored after an error too
    names = bench_matcher.make_variants(torch.float32, cuda=True)
    assert {f"hdd_triton_rows{r}" for r in bench_matcher.TRITON_ROWS} <= set(names)


@pytest.mark.triton
def test_bench_matcher_ops_only_counts_the_triton_launches(tmp_path):
    """--ops-only: deterministic op counts; the Triton path's three kernels counted once each (under the interpreter
    their own ops are left out), the literal MMD line's 15 ops as documented."""
    import bench_matcher
    from hyperdm import triton_kernels

    if triton_kernels.triton_module() is None or not triton_kernels.interpreting():
        pytest.skip("needs triton under its interpreter (TRITON_INTERPRET=1, set by conftest without CUDA)")
    out = tmp_path / "ops.json"
    argv = ["--ops-only", "--C", "2", "--N", "6", "--M", "2", "--D", "8", "--dtypes", "float64", "--out", str(out)]
    assert bench_matcher.main(argv) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["mmd_line"] == {"all": 15, "kernels": 11, "host_syncs": 0}
    tp = row["hdd_nocheck_triton_path"]
    assert tp["kernel_launches"] == 3 and tp["all_with_launches"] == tp["all"] + 3
    assert tp["all"] <= 15  # the real pass, the synthetic side, the gradient rows: no scalar work on the host
    assert tp["host_syncs"] == 0 and row["hdd"]["host_syncs"] == 1
    assert row["hdd_device_slicing"] == row["hdd"]  # a tiny tensor is one slice either way


@pytest.mark.slow
@pytest.mark.triton
def test_kernel_selfcheck_prints_and_saves_a_verdict_per_setting(tmp_path, capsys, monkeypatch):
    import kernel_selfcheck
    from hyperdm import fused, kernel_check, triton_kernels

    if triton_kernels.triton_module() is None or not triton_kernels.interpreting():
        pytest.skip("needs triton under its interpreter (TRITON_INTERPRET=1, set by conftest without CUDA)")
    monkeypatch.setattr(fused, "AUTO_ON_INTERPRETER", False)  # the script turns it on for the CPU
    out = tmp_path / "k.json"
    argv = ["kernel_selfcheck.py", "--device", "cpu", "--quick", "--dtypes", "float32", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    kernel_selfcheck.main()
    res = json.loads(out.read_text())
    assert [(r["D"], r["max_norm"], r["status"]) for r in res["rows"]] == [
        (16, 10.0, "ok"),
        (16, None, "ok"),
        (64, 10.0, "ok"),
        (64, None, "ok"),
    ]
    assert all(r["loss_error"] < 1e-6 and r["tolerance"] == 1e-3 for r in res["rows"])
    assert "4 of 4 settings ok" in capsys.readouterr().out
    kernel_check.reset()


def test_convergence_idm_runs_are_their_own_rows_and_pairs(tmp_path):
    """--method idm: rows named idm/..., harvested only from IDM run directories, paired with IDM's MMD line of the
    same seed (never with DM's), and the figure gets a panel per method and IPC."""
    import argparse

    a = argparse.Namespace(
        dataset="fashion-mnist", device="cpu", data_root=None, iterations=300, eval_at=[60], method="idm", work="w"
    )
    cfg = convergence.configure("radius-2", 1, 0, a)
    assert cfg.method == "idm" and cfg.iterations == 300 and cfg.matcher.radius == 2.0
    assert convergence.run_dir(a, "radius-2", 1, 0) == Path("w") / "idm-radius-2-ipc1-seed0"
    want = convergence.settings(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    evals = [{"iteration": 60, "ConvNet": {"mean": 0.7, "std": 0.0, "accs": [0.7, 0.7]}}]
    (tmp_path / "metrics.json").write_text(json.dumps({"evals": evals, "final": False}))
    (row,) = convergence.rows_of_run(tmp_path, "radius-2", want, "idm")
    assert row["id"] == "idm/radius-2/ipc1/seed0/it60" and row["method"] == "idm"
    assert convergence.rows_of_run(tmp_path, "radius-2", want, "dm") == []  # an IDM run is not a DM row
    rows = [
        {**_conv_row("mmd", 1, 0, 60, 70.0), "method": "idm"},
        {**_conv_row("radius-2", 1, 0, 60, 71.0), "method": "idm"},
        {**_conv_row("mmd", 1, 0, 60, 50.0), "method": "dm"},
    ]
    entries = {(e["method"], e["variant"]): e for e in convergence.table(rows)}
    assert entries[("idm", "radius-2")]["diff_per_seed"] == [pytest.approx(1.0)]
    assert "IDM" in convergence.format_table(convergence.table(rows), markdown=True)


def test_synthetic_norms_of_real_images_are_the_real_norms(tmp_path):
    """A "synthetic" set made of the very real images measured against gives norm ratios of exactly 1 and the real
    pixel spread; a directory without a checkpoint is refused by name."""
    import synthetic_norms

    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 1, 28, 28, generator=g)
    labels = torch.arange(4).repeat_interleave(10)
    torch.save({"images": real, "labels": labels, "iteration": 7}, tmp_path / "checkpoint.pt")
    row = synthetic_norms.measure(tmp_path, real, labels, nets=2, per_class=10)
    assert row["norm_ratio_min"] == row["norm_ratio_max"] == 1.0 and row["iteration"] == 7
    assert row["syn_pixel_std"] == pytest.approx(row["real_pixel_std"], rel=1e-6)
    torch.save({"images": real * 2.0, "labels": labels}, tmp_path / "checkpoint.pt")  # twice the contrast
    doubled = synthetic_norms.measure(tmp_path, real, labels, nets=1, per_class=10)
    assert doubled["syn_pixel_std"] == pytest.approx(2 * row["real_pixel_std"], rel=1e-6)
    with pytest.raises(SystemExit, match=r"no checkpoint\.pt or synset\.pt"):
        synthetic_norms.measure(tmp_path / "nothing", real, labels, nets=1, per_class=10)


def test_centroid_shrinkage_against_the_library_centroid_and_the_flat_limit():
    """The Law centroid's radius over the median radius agrees with the closed form in float64 (k = 1: the
    centroid's radius is atanh(|mean sinh(r) u| / mean cosh(r))); points along one direction shrink only radially;
    at a tiny scale the hyperbolic ratio is the Euclidean one."""
    import synthetic_norms

    g = torch.Generator().manual_seed(3)
    v = torch.randn(33, 16, generator=g, dtype=torch.float64) + 0.5
    for alpha in (0.05, 0.3, 1.0, 8.0):
        law, mean = synthetic_norms.centroid_shrinkage(v, alpha)
        r, u = alpha * v.norm(dim=1), v / v.norm(dim=1, keepdim=True)
        radius = torch.atanh((torch.sinh(r)[:, None] * u).mean(0).norm() / torch.cosh(r).mean())
        assert law == pytest.approx(float(radius / r.median()), rel=1e-10)
        assert mean == pytest.approx(float(v.mean(0).norm() / v.norm(dim=1).median()), rel=1e-12)
    law, mean = synthetic_norms.centroid_shrinkage(v, 1e-6)
    assert law == pytest.approx(mean, rel=1e-6)
    line = torch.linspace(1.0, 2.0, 5, dtype=torch.float64)[:, None] * torch.ones(1, 4, dtype=torch.float64)
    law, mean = synthetic_norms.centroid_shrinkage(line, 1.0)  # one direction: no angular shrinkage
    r = line.norm(dim=1)
    assert law == pytest.approx(float(torch.atanh(torch.sinh(r).mean() / torch.cosh(r).mean()) / r.median()))
    assert mean == pytest.approx(1.0)
