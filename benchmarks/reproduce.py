"""Accuracy against the paper's Table 1: DM and IDM, each with the MMD line and with HDD, per IPC and seed.

Every row is one ``hyperdm.distill`` run (the standard evaluator at the end), plus a
``random`` row per IPC and seed: ``ipc`` real images per class drawn at random, evaluated by
the same evaluator (the paper's "Random real" row). The results file is written after every
row and read back before every row: rows already there (same settings) are skipped, and a row
whose run directory holds a checkpoint with the same settings continues from it, so a stopped
sweep resumes where it stopped. ``--shard I/N`` runs every N-th row (from the I-th): N processes
with ``--threads`` each share one results file (updates are locked and merged). On a 2-core
machine, two single-thread shards finish more rows per hour than one process with two threads.
Prints the table with the paper's numbers beside ours.

    python benchmarks/reproduce.py --preset cpu --methods dm --ipcs 10 1 --seeds 0 1 2   # ~50 min on 2 cores
    python benchmarks/reproduce.py --preset cpu --methods idm --ipcs 10 1 --seeds 0 1 2
    python benchmarks/reproduce.py --preset paper --methods dm --ipcs 10 --device cuda    # the full protocol
    python benchmarks/reproduce.py --methods dm --shard 0/2 --threads 1 &
    python benchmarks/reproduce.py --methods dm --shard 1/2 --threads 1                   # two shards, one file
    python benchmarks/reproduce.py --table-only [--markdown]                              # print the saved table

Results: ``benchmarks/results/reproduce_<dataset>_<preset>_<device>.json``. Accuracy per
(method, matcher, IPC) is the mean +- std over seeds of each seed's final evaluation (the mean
of ``eval_runs`` fresh ConvNets); the paper's numbers are mean +- std over its evaluation runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from _results import RowStore, add_sweep_args, distill_resumable, machine, same_settings, sweep_setup
from hyperdm.distill import resolve
from hyperdm.distill.data import load_dataset
from hyperdm.distill.evaluate import evaluate_synthetic
from hyperdm.distill.seeding import Stream, derive_seed

#: paper Table 1, Fashion-MNIST, IPC 1 / 10 / 50: (mean, std) in %
PAPER = {
    ("dm", "mmd"): {1: (70.7, 0.6), 10: (83.4, 0.1), 50: (88.1, 0.6)},
    ("dm", "hyperbolic"): {1: (72.1, 0.2), 10: (84.0, 0.1), 50: (88.8, 0.4)},
    ("idm", "mmd"): {1: (77.4, 0.3), 10: (82.4, 0.2), 50: (84.5, 0.1)},
    ("idm", "hyperbolic"): {1: (78.5, 0.2), 10: (83.8, 0.2), 50: (86.4, 0.3)},
    ("random", "-"): {1: (51.4, 3.8), 10: (73.8, 0.7), 50: (82.5, 0.7)},
}
LABELS = {
    ("dm", "mmd"): "DM",
    ("dm", "hyperbolic"): "DM with HDD",
    ("idm", "mmd"): "IDM",
    ("idm", "hyperbolic"): "IDM with HDD",
    ("random", "-"): "Random real",
}
#: settings that must agree for a saved row to count as done
KEYS = ("iterations", "batch_real", "eval_epochs", "eval_runs", "k", "scale", "lr_img")


def row_id(method: str, matcher: str, ipc: int, seed: int) -> str:
    return f"{method}/{matcher}/ipc{ipc}/seed{seed}"


def run_distill(method: str, matcher: str, ipc: int, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    cfg = resolve(
        preset=a.preset,
        method=method,
        matcher=matcher,
        dataset=a.dataset,
        ipc=ipc,
        overrides={
            "device": a.device,
            "seed": seed,
            "data_root": a.data_root,
            "iterations": a.iterations,
            "eval_epochs": a.eval_epochs,
            "eval_runs": a.eval_runs,
        },
    )
    m, wall = distill_resumable(cfg, Path(a.work) / row_id(method, matcher, ipc, seed).replace("/", "-"))
    final = m["evals"][-1]["ConvNet"]
    return {
        "k": cfg.matcher.k if matcher == "hyperbolic" else None,
        "scale": m.get("matcher_scale"),
        "lr_img": cfg.lr_img,
        "iterations": cfg.iterations,
        "batch_real": cfg.batch_real,
        "eval_epochs": cfg.eval.epochs,
        "eval_runs": cfg.eval.runs,
        "accs": final["accs"],
        "mean": final["mean"],
        "std": final["std"],
        "evals": m["evals"],
        "distill_seconds": m["distill_seconds"],
        "wall_seconds_with_eval": wall,
        "loss_per_class": m["loss_per_class"],
        "storage": m.get("storage"),
    }


def run_random(ipc: int, seed: int, a: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """``ipc`` random real images per class, evaluated exactly as a DM run with ``cfg`` evaluates its synthetic set."""
    real = load_dataset(a.dataset, a.data_root)
    gen = torch.Generator().manual_seed(derive_seed(seed, Stream.INIT))
    idx = torch.cat(
        [
            (lab := torch.nonzero(real.train_labels == c).squeeze(1))[torch.randperm(lab.numel(), generator=gen)[:ipc]]
            for c in range(real.info.num_classes)
        ]
    )
    t0 = time.perf_counter()
    ecfg = cfg.eval_config(device=a.device)
    res = evaluate_synthetic(
        real.train_images[idx], real.train_labels[idx], real.test_images, real.test_labels, real.info, ecfg
    )["ConvNet"]
    return {
        "k": None,
        "scale": None,
        "lr_img": None,
        "iterations": 0,
        "batch_real": None,
        "eval_epochs": ecfg.epochs,
        "eval_runs": ecfg.runs,
        "accs": res["accs"],
        "mean": res["mean"],
        "std": res["std"],
        "wall_seconds_with_eval": time.perf_counter() - t0,
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, matcher, ipc): mean +- std over seeds of the seeds' final means, beside the paper."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["matcher"], r["ipc"]), []).append(r)
    table = []
    for (method, matcher, ipc), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], list(LABELS).index(kv[0][:2]))):
        means = [100 * r["mean"] for r in sorted(rs, key=lambda r: r["seed"])]
        paper = PAPER.get((method, matcher), {}).get(ipc)
        table.append(
            {
                "method": method,
                "matcher": matcher,
                "ipc": ipc,
                "label": LABELS[(method, matcher)],
                "seeds": sorted(r["seed"] for r in rs),
                "per_seed": means,
                "mean": statistics.fmean(means),
                "std": statistics.pstdev(means) if len(means) > 1 else None,
                "paper_mean": paper[0] if paper else None,
                "paper_std": paper[1] if paper else None,
            }
        )
    return table


def verdicts(table: list[dict[str, Any]]) -> list[str]:
    """HDD against MMD for each method and IPC, in words (beats / level / below)."""
    out = []
    by = {(t["method"], t["matcher"], t["ipc"]): t for t in table}
    for (method, matcher, ipc), t in sorted(by.items()):
        base = by.get((method, "mmd", ipc))
        if matcher != "hyperbolic" or base is None:
            continue
        diff = t["mean"] - base["mean"]
        noise = max(t["std"] or 0.0, base["std"] or 0.0)
        word = "is level with" if abs(diff) <= noise else ("beats" if diff > 0 else "is below")
        out.append(
            f"{method.upper()} IPC {ipc}: HDD {word} MMD ({diff:+.2f} points; larger seed std {noise:.2f}; "
            f"{len(t['seeds'])} vs {len(base['seeds'])} seeds); paper: {t['paper_mean'] - base['paper_mean']:+.1f}"
        )
    return out


def format_table(table: list[dict[str, Any]], markdown: bool = False) -> str:
    if markdown:
        return format_markdown(table)
    lines = [f"{'method':<14}{'IPC':>4}  {'ours (%)':<16}{'seeds':>6}  {'paper (%)':<12}  per seed", "-" * 78]
    for t in table:
        ours = f"{t['mean']:.2f} +- {t['std']:.2f}" if t["std"] is not None else f"{t['mean']:.2f}"
        paper = f"{t['paper_mean']:.1f} +- {t['paper_std']:.1f}" if t["paper_mean"] is not None else "-"
        per = ", ".join(f"{m:.2f}" for m in t["per_seed"])
        lines.append(f"{t['label']:<14}{t['ipc']:>4}  {ours:<16}{len(t['seeds']):>6}  {paper:<12}  {per}")
    return "\n".join(lines)


def format_markdown(table: list[dict[str, Any]]) -> str:
    """The table as README prints it (a Markdown table, ``+-`` as in the text table)."""
    lines = ["| method | IPC | ours (%) | per seed | paper (%) |", "|---|---|---|---|---|"]
    for t in table:
        ours = f"{t['mean']:.2f} +- {t['std']:.2f}" if t["std"] is not None else f"{t['mean']:.2f} (1 seed)"
        paper = f"{t['paper_mean']:.1f} +- {t['paper_std']:.1f}" if t["paper_mean"] is not None else "-"
        lines.append(
            f"| {t['label']} | {t['ipc']} | {ours} | {', '.join(f'{m:.2f}' for m in t['per_seed'])} | {paper} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    table = summarise(rows)
    return {"table": table, "verdicts": verdicts(table)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--methods", nargs="+", default=["dm", "idm"], choices=["dm", "idm"])
    ap.add_argument("--matchers", nargs="+", default=["mmd", "hyperbolic"], choices=["mmd", "hyperbolic"])
    ap.add_argument("--ipcs", type=int, nargs="+", default=[10, 1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-random", action="store_true", help="skip the random-real rows")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--eval-epochs", type=int, default=None)
    ap.add_argument("--eval-runs", type=int, default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument(
        "--work", default="runs/reproduce", help="run directories (a row's interrupted run there is continued)"
    )
    ap.add_argument("--name", default=None, help="results file name (default reproduce_<dataset>_<preset>_<device>)")
    ap.add_argument("--markdown", action="store_true", help="with --table-only: print the table as Markdown (README's)")
    add_sweep_args(ap, "rows of the plan")
    a = ap.parse_args()
    shard, shards = sweep_setup(ap, a)
    store = RowStore(a.name or f"reproduce_{a.dataset}_{a.preset}_{a.device.split(':')[0]}")
    if a.table_only:
        table = summarise(store.rows())
        print(format_table(table, markdown=a.markdown))
        print("\n".join(verdicts(table)))
        return
    header = {"benchmark": "reproduce", "preset": a.preset, "dataset": a.dataset, **machine(a.device)}
    plan: list[tuple[str, str, int, int]] = []
    for method in a.methods:
        for ipc in a.ipcs:
            for seed in a.seeds:
                plan += [(method, m, ipc, seed) for m in a.matchers]
    if not a.no_random:
        plan += [("random", "-", ipc, seed) for ipc in a.ipcs for seed in a.seeds]
    for method, matcher, ipc, seed in plan[shard::shards]:
        rid = row_id(method, matcher, ipc, seed)
        if method == "random":
            cfg = resolve(
                preset=a.preset,
                method="dm",
                matcher="mmd",
                dataset=a.dataset,
                ipc=ipc,
                overrides={"eval_epochs": a.eval_epochs, "eval_runs": a.eval_runs, "seed": seed},
            )
            want = {"eval_epochs": cfg.eval.epochs, "eval_runs": cfg.eval.runs}
        else:
            cfg = resolve(
                preset=a.preset,
                method=method,
                matcher=matcher,
                dataset=a.dataset,
                ipc=ipc,
                overrides={"iterations": a.iterations, "eval_epochs": a.eval_epochs, "eval_runs": a.eval_runs},
            )
            want = {key: cfg.setting(key) for key in KEYS if key not in ("k", "scale") or matcher == "hyperbolic"}
        old = store.get(rid)  # read again before every row: another shard may have done it
        if same_settings(old, want):
            print(f"{rid}: done ({100 * old['mean']:.2f} %), skipped", flush=True)
            continue
        row = run_random(ipc, seed, a, cfg) if method == "random" else run_distill(method, matcher, ipc, seed, a)
        row = {
            "id": rid,
            "method": method,
            "matcher": matcher,
            "ipc": ipc,
            "seed": seed,
            "threads": torch.get_num_threads(),
            **row,
        }
        print(
            f"{rid}: ConvNet {100 * row['mean']:.2f} +- {100 * row['std']:.2f} %  "
            f"({row['wall_seconds_with_eval']:.0f} s with evaluation)",
            flush=True,
        )
        store.put(row, header, summary)  # after every row, merged with what other shards saved meanwhile
    if store.rows():
        store.put(None, header, summary)  # the summary of every row, also when this shard had nothing to do
    table = summarise(store.rows())
    print(format_table(table))
    print("\n".join(verdicts(table)))


if __name__ == "__main__":
    main()
