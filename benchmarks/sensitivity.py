"""How much each HDD setting matters: one DM configuration, one setting changed at a time, one process.

Variants (all DM on the same data, seed and protocol; only the named setting differs from
``hdd``, the method as published):

* ``mmd``: DM's MMD line (the baseline);
* ``hdd``: DM + HDD with the preset's k and lambda, the exp-map clamp 10, float64 matching;
* ``no-clamp``: the exact exp-map (``max_norm=None``);
* ``float32``: matching in float32;
* ``scale-auto``: lambda chosen on the first batch (``scale="auto"``);
* ``k2``: k = 2 instead of the table's value.

Prints and saves ``benchmarks/results/sensitivity_<dataset>_ipc<N>_<preset>.json``.

    python benchmarks/sensitivity.py --preset cpu --dataset fashion-mnist --ipc 10      # ~13 min per variant on 2 cores
    python benchmarks/sensitivity.py --variants no-clamp hdd float32                    # a subset, in this order
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from hyperdm.distill import distill, resolve

from _results import machine, save

VARIANTS: dict[str, tuple[str, dict]] = {
    "mmd": ("mmd", {}),
    "hdd": ("hyperbolic", {}),
    "no-clamp": ("hyperbolic", {"max_norm": None}),
    "float32": ("hyperbolic", {"match_dtype": "float32"}),
    "scale-auto": ("hyperbolic", {"scale": "auto"}),
    "k2": ("hyperbolic", {"k": 2.0}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--work", default="runs/sensitivity", help="run directories (replaced)")
    a = ap.parse_args()
    rows: list[dict] = []
    cfg0 = resolve(preset=a.preset, method="dm", matcher="hyperbolic", dataset=a.dataset, ipc=a.ipc)
    header = {"benchmark": "sensitivity", "method": "dm", "preset": a.preset, "dataset": a.dataset, "ipc": a.ipc,
              "seed": a.seed, "iterations": cfg0.iterations, "batch_real": cfg0.batch_real, "eval_epochs": cfg0.eval_epochs,
              "eval_runs": cfg0.eval_runs, **machine(a.device)}
    for name in a.variants:
        matcher, change = VARIANTS[name]
        cfg = resolve(preset=a.preset, method="dm", matcher=matcher, dataset=a.dataset, ipc=a.ipc,
                      overrides={"device": a.device, "seed": a.seed, "data_root": a.data_root})
        for key, value in change.items():  # set directly: None (no clamp) is not an override to resolve()
            setattr(cfg, key, value)
            cfg.sources[key] = f"sensitivity variant {name}"
        out = Path(a.work) / name
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        m = distill(cfg, str(out), progress=False)
        final = m["evals"][-1]["ConvNet"]
        row = {"variant": name, "matcher": matcher, "change": change, "k": cfg.k, "scale": m.get("matcher_scale"),
               "max_norm": cfg.max_norm, "match_dtype": cfg.match_dtype, "lr_img": cfg.lr_img, "accs": final["accs"],
               "mean": final["mean"], "std": final["std"], "distill_seconds": m["distill_seconds"],
               "wall_seconds_with_eval": time.perf_counter() - t0,
               "loss_per_class_first": m["loss_per_class"][0], "loss_per_class_last": m["loss_per_class"][-1]}
        rows.append(row)
        lam = f"  lambda {row['scale']:.4g}" if row["scale"] is not None else ""
        print(f"{name:>11}: ConvNet {100 * row['mean']:.2f} +- {100 * row['std']:.2f} %  distill {row['distill_seconds']:.1f} s"
              f"  loss/class {row['loss_per_class_first']:.4g} -> {row['loss_per_class_last']:.4g}{lam}", flush=True)
        # saved after every variant: a stopped sweep keeps what it finished
        save(f"sensitivity_{a.dataset}_ipc{a.ipc}_{a.preset}", {**header, "complete": len(rows) == len(a.variants), "rows": rows})


if __name__ == "__main__":
    main()
