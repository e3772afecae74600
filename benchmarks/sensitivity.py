"""How much each HDD setting matters: one DM configuration, one setting changed at a time.

Variants (all DM on the same data, seed and protocol; only the named setting differs from
``hdd``, the method as published):

* ``mmd``: DM's MMD line (the baseline);
* ``hdd``: DM + HDD with the preset's k and lambda, the exp-map clamp 10, float64 matching;
* ``no-clamp``: the exact exp-map (``max_norm=None``);
* ``float32``: matching in float32;
* ``scale-auto``: lambda chosen on the first batch (``scale="auto"``);
* ``scale-half`` / ``scale-double``: lambda halved / doubled;
* ``k0.5`` / ``k2``: k = 0.5 / 2 instead of the table's value (geoopt's k: curvature -1/k).

Rows are saved as they finish into one results file (``<name>.json``, merged under a lock, see
``_results.RowStore``); finished rows with the same settings are skipped and an interrupted row
continues from its checkpoint, so sweeps can be run in pieces and in parallel (``--shard I/N``).

    python benchmarks/sensitivity.py --preset cpu --dataset fashion-mnist --ipc 10      # ~13 min per variant on 2 cores
    python benchmarks/sensitivity.py --variants no-clamp hdd float32                    # a subset, in this order
    python benchmarks/sensitivity.py --variants k2 scale-auto --shard 0/2 --threads 1 &
    python benchmarks/sensitivity.py --variants k2 scale-auto --shard 1/2 --threads 1
    python benchmarks/sensitivity.py --table-only

Results: ``benchmarks/results/sensitivity_<dataset>_ipc<N>_<preset>.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from _results import RowStore, add_sweep_args, distill_resumable, machine, same_settings, sweep_setup
from hyperdm.distill import resolve
from hyperdm.distill.config import FLAT

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mmd": ("mmd", {}),
    "hdd": ("hyperbolic", {}),
    "no-clamp": ("hyperbolic", {"max_norm": None}),
    "float32": ("hyperbolic", {"match_dtype": "float32"}),
    "scale-auto": ("hyperbolic", {"scale": "auto"}),
    "scale-half": ("hyperbolic", {"scale": 0.5}),  # factors of the preset's lambda
    "scale-double": ("hyperbolic", {"scale": 2.0}),
    "k0.5": ("hyperbolic", {"k": 0.5}),
    "k2": ("hyperbolic", {"k": 2.0}),
}
#: settings that must agree for a saved row to count as done
KEYS = ("matcher", "k", "max_norm", "match_dtype", "lr_img", "iterations", "batch_real", "eval_epochs", "eval_runs")


def configure(name: str, a: argparse.Namespace) -> Any:
    """The resolved config of variant ``name``: the preset's, with one setting changed."""
    matcher, change = VARIANTS[name]
    common = {"device": a.device, "seed": a.seed, "data_root": a.data_root}
    if name.startswith("scale-") and change["scale"] != "auto":  # a factor of the preset's lambda
        row = resolve(preset=a.preset, method="dm", matcher=matcher, dataset=a.dataset, ipc=a.ipc, overrides=common)
        change = {"scale": change["scale"] * row.matcher.scale}
    cfg = resolve(
        preset=a.preset, method="dm", matcher=matcher, dataset=a.dataset, ipc=a.ipc, overrides={**common, **change}
    )
    cfg.sources.update({FLAT[key]: f"sensitivity variant {name}" for key in change})
    return cfg


def format_table(rows: list[dict[str, Any]]) -> str:
    order = {v: i for i, v in enumerate(VARIANTS)}
    lines = [
        f"{'variant':<13}{'k':>5}{'lambda':>9}{'clamp':>7}{'dtype':>9}  "
        f"{'ConvNet acc (%)':<17}loss/class first -> last",
        "-" * 86,
    ]
    for r in sorted(rows, key=lambda r: (r["seed"], order.get(r["variant"], 99))):
        lam = f"{r['scale']:.4g}" if r["scale"] is not None else "-"
        k = f"{r['k']:g}" if r["k"] is not None else "-"
        clamp = "-" if r["matcher"] == "mmd" else (f"{r['max_norm']:g}" if r["max_norm"] is not None else "none")
        dtype = r["match_dtype"] if r["matcher"] == "hyperbolic" else "-"
        lines.append(
            f"{r['variant']:<13}{k:>5}{lam:>9}{clamp:>7}{dtype:>9}  "
            f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f}    "
            f"{r['loss_per_class_first']:.4g} -> {r['loss_per_class_last']:.4g}   seed {r['seed']}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--data-root", default=None)
    ap.add_argument(
        "--work", default="runs/sensitivity", help="run directories (a row's interrupted run there is continued)"
    )
    add_sweep_args(ap, "variants of --variants")
    a = ap.parse_args()
    shard, shards = sweep_setup(ap, a)
    store = RowStore(f"sensitivity_{a.dataset}_ipc{a.ipc}_{a.preset}")
    if a.table_only:
        print(format_table(store.rows()))
        return
    header = {
        "benchmark": "sensitivity",
        "method": "dm",
        "preset": a.preset,
        "dataset": a.dataset,
        "ipc": a.ipc,
        **machine(a.device),
    }
    for name in a.variants[shard::shards]:
        cfg = configure(name, a)
        rid = f"{name}/seed{a.seed}"
        want = {key: cfg.setting(key) for key in KEYS}
        if cfg.matcher.scale != "auto":
            want["scale"] = cfg.matcher.scale if cfg.matcher.kind == "hyperbolic" else None
        old = store.get(rid)
        if same_settings(old, want):
            print(f"{rid}: done ({100 * old['mean']:.2f} %), skipped", flush=True)
            continue
        m, wall = distill_resumable(cfg, Path(a.work) / f"{name}-seed{a.seed}")
        final = m["evals"][-1]["ConvNet"]
        row = {
            "id": rid,
            "variant": name,
            "seed": a.seed,
            "threads": torch.get_num_threads(),
            "change": VARIANTS[name][1],
            **want,
            "scale": m.get("matcher_scale"),
            "accs": final["accs"],
            "mean": final["mean"],
            "std": final["std"],
            "distill_seconds": m["distill_seconds"],
            "wall_seconds_with_eval": wall,
            "loss_per_class_first": m["loss_per_class"][0],
            "loss_per_class_last": m["loss_per_class"][-1],
        }
        lam = f"  lambda {row['scale']:.4g}" if row["scale"] is not None else ""
        print(
            f"{name:>12}: ConvNet {100 * row['mean']:.2f} +- {100 * row['std']:.2f} %  "
            f"distill {row['distill_seconds']:.1f} s"
            f"  loss/class {row['loss_per_class_first']:.4g} -> {row['loss_per_class_last']:.4g}{lam}",
            flush=True,
        )
        store.put(row, header, lambda rows: {})
    print(format_table(store.rows()))


if __name__ == "__main__":
    main()
