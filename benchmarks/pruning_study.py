"""Pruning the real data (paper Table 2) on Fashion-MNIST: DM with HDD, keeping a fraction of each class.

Kept fractions (default 100 / 50 / 20 / 5 %) chosen by

* ``radius``: the smallest hyperbolic radius under random ConvNets (the paper's hierarchical pruning);
* ``centroid``: the smallest distance to the class's Law centroid;
* ``random``: uniformly at random, the same count per class (the baseline the paper does not show).

Every row is one ``hyperdm distill --prune-keep F --prune-score S`` run, evaluated every
``--eval-every`` iterations, so that besides the final accuracy the table gives the curve's
stability: the std of the mean accuracy over the last ``--last`` evaluations. 100 % is one row
(no pruning). ``--mmd`` adds the MMD line at 100 % (the other curve of the accuracy plot). Rows are
saved as they finish, finished rows are skipped and an interrupted run continues from its
checkpoint; ``--shard I/N`` splits the rows over N processes (see reproduce.py).

    python benchmarks/pruning_study.py --preset cpu --ipc 10 --seeds 0 --mmd --shard 0/2 --threads 1 &
    python benchmarks/pruning_study.py --preset cpu --ipc 10 --seeds 0 --mmd --shard 1/2 --threads 1
    python benchmarks/pruning_study.py --table-only

Results: ``benchmarks/results/pruning_<dataset>_ipc<N>_<preset>_<device>.json``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

from _results import RowStore, add_sweep_args, distill_resumable, machine, same_settings, sweep_setup
from hyperdm.distill import resolve
from hyperdm.distill.presets import PRUNE_SCORES

KEYS = ("iterations", "batch_real", "eval_epochs", "eval_runs", "eval_every", "k", "scale", "lr_img", "prune_nets")


def row_id(matcher: str, score: str, keep: float, seed: int) -> str:
    return f"{matcher}/{score}/keep{keep:g}/seed{seed}"


def stability(evals: list[dict[str, Any]], last: int) -> float | None:
    """Population std of the mean ConvNet accuracy (%) over the last ``last`` evaluations."""
    means = [100 * e["ConvNet"]["mean"] for e in evals[-last:]]
    return statistics.pstdev(means) if len(means) == last and last > 1 else None


def synthetic_mean_pixel(run_dir: Path, real: Any) -> float:
    """Mean pixel value, on the [0, 1] scale, of a finished run's synthetic set (pruned pools can shift it)."""
    from hyperdm.distill.artifacts import load_synthetic

    images, _, _ = load_synthetic(run_dir)
    return float(real.denormalise(images).double().mean())


def summarise(rows: list[dict[str, Any]], last: int) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["matcher"], r["score"], r["keep"]), []).append(r)
    out = []
    for (matcher, score, keep), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0] != "hyperbolic", -kv[0][2], kv[0][1])
    ):
        finals = [100 * r["mean"] for r in rs]
        stabs = [s for s in (stability(r["evals"], last) for r in rs) if s is not None]
        out.append(
            {
                "matcher": matcher,
                "score": score,
                "keep": keep,
                "seeds": sorted(r["seed"] for r in rs),
                "kept_images": rs[0]["kept_images"],
                "final_mean": statistics.fmean(finals),
                "final_std_over_seeds": statistics.pstdev(finals) if len(finals) > 1 else None,
                "final_std_over_eval_runs": statistics.fmean(100 * r["std"] for r in rs),
                "curve_std_last": statistics.fmean(stabs) if stabs else None,
                "last": last,
                "synthetic_mean_pixel": statistics.fmean(r["synthetic_mean_pixel"] for r in rs)
                if all("synthetic_mean_pixel" in r for r in rs)
                else None,
            }
        )
    return out


def format_table(table: list[dict[str, Any]]) -> str:
    lines = [
        f"{'matcher':<11}{'score':<10}{'keep':>6}{'images':>8}  {'final acc (%)':<16}{'curve std (last)':>18}"
        f"{'mean pixel':>12}  seeds",
        "-" * 92,
    ]
    for t in table:
        spread = t["final_std_over_seeds"] if t["final_std_over_seeds"] is not None else t["final_std_over_eval_runs"]
        curve = f"{t['curve_std_last']:.2f} ({t['last']})" if t["curve_std_last"] is not None else "-"
        pixel = f"{t['synthetic_mean_pixel']:.4f}" if t.get("synthetic_mean_pixel") is not None else "-"
        lines.append(
            f"{t['matcher']:<11}{t['score']:<10}{100 * t['keep']:>5.0f}%{t['kept_images']:>8}  "
            f"{t['final_mean']:.2f} +- {spread:.2f}  {curve:>18}{pixel:>12}  {t['seeds']}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--keeps", type=float, nargs="+", default=[1.0, 0.5, 0.2, 0.05])
    ap.add_argument("--scores", nargs="+", default=list(PRUNE_SCORES), choices=PRUNE_SCORES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--mmd", action="store_true", help="add the MMD line at 100 %% (no pruning)")
    ap.add_argument("--eval-every", type=int, default=50, help="evaluation interval in iterations (default 50)")
    ap.add_argument("--last", type=int, default=3, help="curve stability over the last N evaluations (default 3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--eval-epochs", type=int, default=None)
    ap.add_argument("--eval-runs", type=int, default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument(
        "--work", default="runs/pruning", help="run directories (a row's interrupted run there is continued)"
    )
    ap.add_argument("--name", default=None, help="results file name")
    add_sweep_args(ap, "rows of the plan")
    a = ap.parse_args()
    if any(not 0 < f <= 1 for f in a.keeps):
        ap.error(f"--keeps takes fractions in (0, 1], e.g. 1 0.5 0.2 0.05; got {a.keeps}")
    shard, shards = sweep_setup(ap, a)
    store = RowStore(a.name or f"pruning_{a.dataset}_ipc{a.ipc}_{a.preset}_{a.device.split(':')[0]}")

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"table": summarise(rows, a.last)}

    if a.table_only:
        print(format_table(summarise(store.rows(), a.last)))
        return
    header = {
        "benchmark": "pruning_study",
        "method": "dm",
        "preset": a.preset,
        "dataset": a.dataset,
        "ipc": a.ipc,
        **machine(a.device),
    }
    loaded: list[Any] = []

    def real() -> Any:
        if not loaded:
            from hyperdm.distill.data import load_dataset

            loaded.append(load_dataset(a.dataset, a.data_root))
        return loaded[0]

    plan: list[tuple[str, str, float, int]] = []
    for seed in a.seeds:
        if a.mmd:
            plan.append(("mmd", "none", 1.0, seed))
        for keep in sorted(set(a.keeps), reverse=True):
            plan += (
                [("hyperbolic", "none", 1.0, seed)] if keep == 1 else [("hyperbolic", s, keep, seed) for s in a.scores]
            )
    for matcher, score, keep, seed in plan[shard::shards]:
        rid = row_id(matcher, score, keep, seed)
        cfg = resolve(
            preset=a.preset,
            method="dm",
            matcher=matcher,
            dataset=a.dataset,
            ipc=a.ipc,
            overrides={
                "device": a.device,
                "seed": seed,
                "data_root": a.data_root,
                "iterations": a.iterations,
                "eval_epochs": a.eval_epochs,
                "eval_runs": a.eval_runs,
                "eval_every": a.eval_every,
                "prune_keep": keep if keep < 1 else None,
                "prune_score": score if keep < 1 else None,
            },
        )
        want = {key: cfg.setting(key) for key in KEYS if key not in ("k", "scale") or matcher == "hyperbolic"}
        old = store.get(rid)
        out = Path(a.work) / rid.replace("/", "-")
        if same_settings(old, want):
            print(f"{rid}: done ({100 * old['mean']:.2f} %), skipped", flush=True)
            # rows saved before it was recorded
            if "synthetic_mean_pixel" not in old and (out / "synthetic.pt").exists():
                store.put({**old, "synthetic_mean_pixel": synthetic_mean_pixel(out, real())}, header, summary)
            continue
        m, wall = distill_resumable(cfg, out)
        final = m["evals"][-1]["ConvNet"]
        n_train = m.get("real_images_used")
        row = {
            "id": rid,
            "matcher": matcher,
            "score": score,
            "keep": keep,
            "seed": seed,
            "threads": torch.get_num_threads(),
            **want,
            "kept_images": n_train,
            "accs": final["accs"],
            "mean": final["mean"],
            "std": final["std"],
            "evals": m["evals"],
            "stability_last": stability(m["evals"], a.last),
            "distill_seconds": m["distill_seconds"],
            "wall_seconds_with_eval": wall,
            "loss_per_class": m["loss_per_class"],
            "synthetic_mean_pixel": synthetic_mean_pixel(out, real()),
        }
        print(
            f"{rid}: ConvNet {100 * row['mean']:.2f} +- {100 * row['std']:.2f} %, curve std "
            f"{row['stability_last']}, {wall:.0f} s",
            flush=True,
        )
        store.put(row, header, summary)
    print(format_table(summarise(store.rows(), a.last)))


if __name__ == "__main__":
    main()
