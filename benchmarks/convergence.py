"""Does HDD pay off with longer distillation? Accuracy against iterations, DM with the MMD line and with HDD.

Each run is one ``hyperdm.distill`` DM run of the ``cpu`` preset (64 real images per class,
300-epoch evaluation x 2 runs) lengthened to ``--iterations`` (default 2,000) and evaluated at
``--eval-at`` (default 200, 500, 1,000) and at the end. HDD uses the paper's row for the dataset
and IPC (Fashion-MNIST: k 1, lambda 20 at IPC 1 and 40 at IPC 10, the exp-map clamp, float64
matching). Optional variants change one HDD setting: ``no-clamp`` (the exact exp-map) and
``scale-double`` (lambda x2).

One row per (method, matcher, variant, IPC, seed, iteration), with the evaluation runs
themselves. Rows are merged into the results file under a lock as each evaluation lands
(read from the run directory's ``metrics.json``), and each run writes a checkpoint every 50
iterations (the ``cpu`` preset), so a stopped study loses at most the 50 iterations since a run's
last checkpoint: the next start continues each run from it.
``--shard I/N`` splits the runs between processes.

    python benchmarks/convergence.py --threads 1                                 # 12 runs, ~30 h on one core
    python benchmarks/convergence.py --ipcs 10 --variants no-clamp scale-double  # the follow-up settings, 6 runs, ~18 h
    python benchmarks/convergence.py --seeds 0 --variants radius-1 radius-2 radius-4 radius-8 --stop-at 1000
                                                        # screening of the radius calibration, paused at 1,000
    python benchmarks/convergence.py --method idm --iterations 300 --eval-at 60 150 --variants mmd radius-2
                                                        # IDM (its cpu preset, five times longer)
    python benchmarks/convergence.py --harvest-only     # merge every variant's unfinished runs, then print
    python benchmarks/convergence.py --table-only [--markdown] [--against hyperbolic]

Results: ``benchmarks/results/convergence_<dataset>_cpu.json`` and ``.png`` beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from _results import RESULTS, RowStore, add_sweep_args, distill_resumable, machine, sweep_setup
from hyperdm.distill import resolve
from hyperdm.distill.config import FLAT, run_setting

#: variant -> (matcher, the one setting changed from the published HDD row)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mmd": ("mmd", {}),
    "hyperbolic": ("hyperbolic", {}),
    "no-clamp": ("hyperbolic", {"max_norm": None}),
    "scale-double": ("hyperbolic", {"scale": 2.0}),  # a factor of the row's lambda
    # radius calibration (exact exp-map): the features scaled so that the first real batch's median radius is r0
    **{f"radius-{r}": ("hyperbolic", {"radius": float(r), "max_norm": None}) for r in (1, 2, 4, 8)},
    **{
        f"radius-{r}-hier": ("hyperbolic", {"radius": float(r), "max_norm": None, "hierarchical": True})
        for r in (1, 2, 4, 8)
    },
}
#: settings recorded in every row; a run directory holding other values is not harvested
KEYS = (
    "iterations",
    "batch_real",
    "lr_img",
    "k",
    "scale",
    "max_norm",
    "radius",
    "hierarchical",
    "match_dtype",
    "eval_epochs",
    "eval_runs",
    "seed",
    "ipc",
)


def configure(variant: str, ipc: int, seed: int, a: argparse.Namespace) -> Any:
    """The resolved config of one run: the ``cpu`` preset of ``--method``, ``--iterations`` long, evaluated at
    ``--eval-at``."""
    matcher, change = VARIANTS[variant]
    common = {
        "device": a.device,
        "seed": seed,
        "data_root": a.data_root,
        "iterations": a.iterations,
        "eval_at": a.eval_at,
    }
    if "scale" in change:  # a factor of the row's lambda
        row = resolve(preset="cpu", method=method_of(a), matcher=matcher, dataset=a.dataset, ipc=ipc, overrides=common)
        change = {**change, "scale": change["scale"] * row.matcher.scale}
    cfg = resolve(
        preset="cpu", method=method_of(a), matcher=matcher, dataset=a.dataset, ipc=ipc, overrides={**common, **change}
    )
    cfg.sources.update({FLAT[key]: f"convergence variant {variant}" for key in change})
    return cfg


def settings(cfg: Any) -> dict[str, Any]:
    out = {key: cfg.setting(key) for key in KEYS}
    if cfg.matcher.kind == "mmd":
        out.update(k=None, scale=None, max_norm=None, radius=None, hierarchical=None)
    return out


def method_of(a: argparse.Namespace) -> str:
    return getattr(a, "method", "dm")


def run_dir(a: argparse.Namespace, variant: str, ipc: int, seed: int) -> Path:
    return Path(a.work) / f"{method_of(a)}-{variant}-ipc{ipc}-seed{seed}"


def runs_of(a: argparse.Namespace, variants: list[str]) -> list[tuple[str, int, int]]:
    """``(variant, ipc, seed)`` at ``--ipcs`` and ``--seeds``, in the one order that ``--shard`` splits."""
    return [(v, ipc, seed) for ipc in a.ipcs for seed in a.seeds for v in variants]


def harvested(a: argparse.Namespace) -> list[tuple[str, int, int]]:
    """The runs whose directories under ``--work`` are harvested: every variant (not only ``--variants``, so that
    ``--harvest-only`` also merges the follow-up settings' runs), at ``--ipcs`` and ``--seeds``, if they exist."""
    return [r for r in runs_of(a, list(VARIANTS)) if run_dir(a, *r).is_dir()]


def rows_of_run(path: Path, variant: str, want: dict[str, Any], method: str = "dm") -> list[dict[str, Any]]:
    """One row per evaluation saved in the run directory ``path`` (none if it holds other settings)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
        m = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        return []
    have = {key: run_setting(cfg, FLAT.get(key, key)) for key in KEYS}  # nested config.json, or the flat one of 0.1
    if run_setting(cfg, "matcher.kind") == "mmd":
        have.update(k=None, scale=None, max_norm=None, radius=None, hierarchical=None)
    if have != want or run_setting(cfg, "method", "dm") != method:
        return []
    matcher = VARIANTS[variant][0]
    rows = []
    for e in m.get("evals", []):
        r = e["ConvNet"]
        rows.append(
            {
                "id": f"{method}/{variant}/ipc{want['ipc']}/seed{want['seed']}/it{e['iteration']}",
                "method": method,
                "matcher": matcher,
                "variant": variant,
                "ipc": want["ipc"],
                "seed": want["seed"],
                "iteration": e["iteration"],
                "accuracy": 100 * r["mean"],
                "runs": [100 * v for v in r["accs"]],
                **{f"run_{k}": v for k, v in want.items()},
                "matcher_scale": m.get("matcher_scale"),
                "matcher_alpha": m.get("matcher_alpha"),
                "radius_first_iteration": m.get("radius"),
                "run_finished": bool(m.get("final")),
                "run_distill_seconds": m.get("distill_seconds") if m.get("final") else None,
            }
        )
    return rows


def harvest(
    store: RowStore,
    header: dict[str, Any],
    path: Path,
    variant: str,
    want: dict[str, Any],
    extra: dict[str, Any] | None = None,
    method: str = "dm",
) -> int:
    """Merge the evaluations found in ``path`` into the results file; returns how many rows were new or changed.

    A new evaluation names the CPU it ran on (``cpu_model``, from ``header``); an evaluation merged before keeps its
    own, and the wall time recorded with it. A changed one (the run was measured again, e.g. on another machine after
    its run directory was lost) replaces the old row whole."""
    have = {r["id"]: r for r in store.rows()}
    n = 0
    for row in rows_of_run(path, variant, want, method):
        old = have.get(row["id"], {})
        if old.get("runs") == row["runs"]:
            row = {**old, **row, **(extra or {})}
        else:
            row = {**row, "cpu_model": header.get("cpu_model"), **(extra or {})}
        if row != old:
            store.put(row, header, summary)
            n += 1
    return n


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _t975(df: int) -> float:
    """Student's t quantile 0.975 with ``df`` degrees of freedom (the half-width factor of a 95 % interval)."""
    from scipy.stats import t  # a dependency of hyperdm[distill]

    return float(t.ppf(0.975, df))


#: the baselines a variant's paired difference can be taken against: the MMD line, HDD as published
BASELINES = {"mmd": "MMD", "hyperbolic": "HDD as published"}


def table(rows: list[dict[str, Any]], against: str = "mmd") -> list[dict[str, Any]]:
    """Per (method, variant, IPC, iteration): accuracy mean +- std over seeds, and the paired difference (same
    method and seed) to the ``against`` baseline: ``"mmd"`` (the MMD line, for every other variant) or
    ``"hyperbolic"`` (HDD as published, for the other HDD settings, which change one of its settings)."""
    if against not in BASELINES:
        raise ValueError(f"against={against!r}: choose one of {', '.join(BASELINES)}")
    by = {(r.get("method", "dm"), r["variant"], r["ipc"], r["iteration"], r["seed"]): r["accuracy"] for r in rows}
    compared = [v for v in VARIANTS if v != against and (against == "mmd" or VARIANTS[v][0] == VARIANTS[against][0])]
    methods = ["dm", "idm", "dance"]
    out = []
    order = sorted(
        {k[:4] for k in by},
        key=lambda k: (methods.index(k[0]) if k[0] in methods else 9, k[2], list(VARIANTS).index(k[1]), k[3]),
    )
    for method, variant, ipc, it in order:
        seeds = sorted(s for (m, v, i, t, s) in by if (m, v, i, t) == (method, variant, ipc, it))
        accs = [by[(method, variant, ipc, it, s)] for s in seeds]
        entry: dict[str, Any] = {
            "method": method,
            "variant": variant,
            "ipc": ipc,
            "iteration": it,
            "seeds": seeds,
            "per_seed": accs,
        }
        entry["mean"], entry["std"] = _mean_std(accs)
        if variant in compared:
            paired = [s for s in seeds if (method, against, ipc, it, s) in by]
            diffs = [by[(method, variant, ipc, it, s)] - by[(method, against, ipc, it, s)] for s in paired]
            entry["against"], entry["paired_seeds"], entry["diff_per_seed"] = against, paired, diffs
            if diffs:
                entry["diff_mean"], entry["diff_std"] = _mean_std(diffs)
            if len(diffs) > 1:  # 95 % interval of the mean paired difference (t, seeds as independent pairs)
                entry["diff_ci95"] = _t975(len(diffs) - 1) * entry["diff_std"] / len(diffs) ** 0.5
        out.append(entry)
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"table": table(rows), "table_against_hyperbolic": table(rows, "hyperbolic")}


def _mean_pm(mean: float, std: float, n: int, spec: str) -> str:
    """``mean +- std``, or the mean alone for one value (whose spread is undefined, not 0)."""
    return f"{mean:{spec}}" + (f" +- {std:.2f}" if n > 1 else "")


def format_table(entries: list[dict[str, Any]], markdown: bool = False, against: str = "mmd") -> str:
    """The entries of ``table(rows, against)`` as aligned text, or as a Markdown table."""
    base = BASELINES[against]
    head = [
        "method",
        "variant",
        "IPC",
        "iteration",
        "seeds",
        "accuracy (%)",
        f"minus {base} per seed",
        f"minus {base} (mean +- std)",
        "95 % interval of the mean",
    ]
    lines = []
    for e in entries:
        diffs = ", ".join(f"{d:+.2f}" for d in e.get("diff_per_seed", [])) or "-"
        dm = _mean_pm(e["diff_mean"], e["diff_std"], len(e["diff_per_seed"]), "+.2f") if "diff_mean" in e else "-"
        ci = "-"
        if "diff_ci95" in e:
            ci = f"{e['diff_mean'] - e['diff_ci95']:+.2f} to {e['diff_mean'] + e['diff_ci95']:+.2f}"
        lines.append(
            [
                e.get("method", "dm").upper(),
                e["variant"],
                str(e["ipc"]),
                str(e["iteration"]),
                ",".join(map(str, e["seeds"])),
                _mean_pm(e["mean"], e["std"], len(e["seeds"]), ".2f"),
                diffs,
                dm,
                ci,
            ]
        )
    if markdown:
        return "\n".join(
            ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(x) + " |" for x in lines]
        )
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) for x in [head, ["-" * w for w in widths], *lines]
    )


def _label(method: str, variant: str) -> str:
    """``DM (MMD line)``, ``IDM + HDD``, ``DM + HDD, radius 2``, ...: a variant as the figure's legend names it."""
    m = method.upper()
    named = {
        "mmd": f"{m} (MMD line)",
        "hyperbolic": f"{m} + HDD",
        "no-clamp": f"{m} + HDD, exact exp-map",
        "scale-double": f"{m} + HDD, lambda x2",
    }
    if variant in named:
        return named[variant]
    if variant.startswith("radius-"):
        r0, *hier = variant.removeprefix("radius-").split("-")
        return f"{m} + HDD, radius {r0}" + (", hierarchical" if hier else "")
    return f"{m} + HDD, {variant}"


def figure(entries: list[dict[str, Any]], path: Path, screening: list[dict[str, Any]] | None = None) -> Path | None:
    """Accuracy against iterations, one line per variant, one panel per method and IPC: the first row mean +- std
    over seeds of the settings measured with several seeds; with ``screening`` (the table of one seed's rows), a
    second row with every variant of that seed, the baselines' same-seed runs included (the screening compares
    same-seed pairs)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is missing (pip install ".[distill]"); no figure')
        return None
    panels = sorted({(e.get("method", "dm"), e["ipc"]) for e in entries}, key=lambda p: (p[0] != "dm", p[0], p[1]))
    if not panels:
        return None
    rows = [(entries, "mean +- std over seeds")]
    if screening:
        rows = [([e for e in entries if len(e["seeds"]) > 1], "mean +- std over seeds")]
        seed = sorted({s for e in screening for s in e["seeds"]})
        rows.append((screening, f"seed {', '.join(map(str, seed))} alone (the screening)"))
    fig, axes = plt.subplots(
        len(rows), len(panels), figsize=(max(6.4, 5.6 * len(panels)), 5.6 * len(rows)), squeeze=False
    )
    colours = {"mmd": "tab:blue", "hyperbolic": "tab:red", "no-clamp": "tab:orange", "scale-double": "tab:purple"}
    others = iter(["tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "gold", "navy", "lime"])
    for variant in VARIANTS:
        if variant not in colours:
            colours[variant] = next(others, "black")
    for (shown_entries, what), ax_row in zip(rows, axes, strict=True):
        for ax, (method, ipc) in zip(ax_row, panels, strict=True):
            _panel(ax, shown_entries, method, ipc, colours)
            ax.set_title(f"Fashion-MNIST, {method.upper()}, IPC {ipc}: {what}", fontsize=9)
    fig.suptitle("Accuracy against iterations (cpu preset, lengthened)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"saved {path}")
    return path


def _panel(ax: Any, entries: list[dict[str, Any]], method: str, ipc: int, colours: dict[str, str]) -> None:
    series = {
        variant: sorted(
            (e["iteration"], e["mean"], e["std"], len(e["seeds"]))
            for e in entries
            if e["ipc"] == ipc and e["variant"] == variant and e.get("method", "dm") == method
        )
        for variant in VARIANTS
    }
    series = {variant: pts for variant, pts in series.items() if pts}
    for place, (variant, pts) in enumerate(series.items()):
        its, mean, std, n = zip(*pts, strict=True)
        # side by side around each evaluated iteration (a few percent on the log axis), so error bars do not overlap
        dodge = 1.03 ** (place - (len(series) - 1) / 2)
        its = tuple(t * dodge for t in its)
        seeds = f"{min(n)}-{max(n)} seeds" if min(n) != max(n) else f"{n[0]} seed{'s' if n[0] > 1 else ''}"
        ax.errorbar(
            its,
            mean,
            yerr=std if max(n) > 1 else None,
            marker="o",
            capsize=3,
            color=colours[variant],
            label=f"{_label(method, variant)} ({seeds})",
        )
    ax.set_xscale("log")
    shown = sorted({e["iteration"] for e in entries if e["ipc"] == ipc and e.get("method", "dm") == method})
    ax.set_xticks(shown, [str(t) for t in shown])
    ax.minorticks_off()
    ax.set_xlabel("distillation iterations")
    ax.set_ylabel("ConvNet test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False
    )  # below: no line hidden


def screening_table(rows: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]] | None:
    """The table of ``seed``'s rows alone, when some variant was measured with that seed only (a screening)."""
    seeds: dict[tuple[str, str, int], set[int]] = {}
    for r in rows:
        seeds.setdefault((r.get("method", "dm"), r["variant"], r["ipc"]), set()).add(r["seed"])
    if not any(s == {seed} for s in seeds.values()):
        return None
    return table([r for r in rows if r["seed"] == seed])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument(
        "--method",
        default="dm",
        choices=["dm", "idm"],
        help="the loop (default dm); idm: the transfer study (e.g. --iterations 300 --eval-at 60 150)",
    )
    ap.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["mmd", "hyperbolic"], choices=list(VARIANTS))
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--eval-at", type=int, nargs="+", default=[200, 500, 1000])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-root", default=None)
    ap.add_argument(
        "--work",
        default="benchmarks/work/convergence",
        help="run directories (an interrupted run there is continued; their small checkpoints are committed so that "
        "another machine can continue them)",
    )
    ap.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="pause each run at this iteration (after its evaluation there); a later start without it continues",
    )
    ap.add_argument(
        "--harvest-only",
        action="store_true",
        help="merge the evaluations saved in the run directories (every variant found under --work) and exit",
    )
    ap.add_argument("--markdown", action="store_true", help="with --table-only: a Markdown table")
    ap.add_argument(
        "--against",
        default="mmd",
        choices=list(BASELINES),
        help="with --table-only: the paired differences against the MMD line (default) or against HDD as published "
        "(for the other HDD settings)",
    )
    add_sweep_args(ap, "runs")
    a = ap.parse_args()
    shard, shards = sweep_setup(ap, a)
    store = RowStore(f"convergence_{a.dataset}_cpu")
    png = RESULTS / f"convergence_{a.dataset}_cpu.png"
    if a.table_only:
        print(format_table(table(store.rows(), a.against), a.markdown, a.against))
        return
    header = {"benchmark": "convergence", "preset": "cpu", "dataset": a.dataset, **machine(a.device)}
    runs = runs_of(a, a.variants)
    for variant, ipc, seed in harvested(a):  # evaluations left by earlier, stopped sittings, of every variant
        cfg = configure(variant, ipc, seed, a)
        harvest(store, header, run_dir(a, variant, ipc, seed), variant, settings(cfg), method=a.method)
    if not a.harvest_only:
        for variant, ipc, seed in runs[shard::shards]:
            cfg = configure(variant, ipc, seed, a)
            want = settings(cfg)
            path = run_dir(a, variant, ipc, seed)
            done = {
                r["iteration"]
                for r in store.rows()
                if r["id"].startswith(f"{a.method}/{variant}/ipc{ipc}/seed{seed}/")
                and (r.get("run_finished") or a.stop_at is not None)
            }
            due = {i for i in cfg.eval_iterations() if a.stop_at is None or i <= a.stop_at}
            if due <= done:
                print(f"{variant} ipc {ipc} seed {seed}: done, skipped", flush=True)
                continue
            t0 = time.perf_counter()
            print(f"{variant} ipc {ipc} seed {seed}: running in {path}", flush=True)
            m, wall = distill_resumable(cfg, path, stop_at=a.stop_at)
            extra = {
                "run_wall_seconds_this_sitting": wall,
                "threads": torch.get_num_threads(),
                "run_distill_seconds": m["distill_seconds"] if m.get("final") else None,
            }
            harvest(store, header, path, variant, want, extra, method=a.method)
            accs = ", ".join(f"it {e['iteration']}: {100 * e['ConvNet']['mean']:.2f}" for e in m["evals"])
            print(f"{variant} ipc {ipc} seed {seed}: {accs}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    entries = table(store.rows())
    print(format_table(entries))
    figure(entries, png, screening_table(store.rows()))


if __name__ == "__main__":
    main()
