"""DM, IDM or Dance with the MMD line vs with HDD, side by side in one process, through the toolkit.

Runs ``hyperdm.distill`` for each matcher with identical settings and seeds (only the matcher
line differs), then prints and saves accuracy (final-epoch mean +- std), distillation wall
time, images per second and the last losses to ``benchmarks/results/<name>.json``.

    python benchmarks/bench_distill.py --preset cpu --dataset fashion-mnist --ipc 10          # CPU, ~15 min
    python benchmarks/bench_distill.py --preset paper --dataset fashion-mnist --ipc 10 --device cuda
    python benchmarks/bench_distill.py --method dance --preset cpu --dataset fashion-mnist --ipc 10

Dance: the experts are trained once (timed on their own, in a fresh cache under --work) and
both matchers use the same experts.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from _results import machine, save
from hyperdm.distill import NOT_GIVEN, distill, resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="dm", choices=["dm", "idm", "dance"])
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--eval-epochs", type=int, default=None)
    ap.add_argument("--eval-runs", type=int, default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--work", default="runs/bench", help="run directories (replaced)")
    ap.add_argument(
        "--name", default=None, help="results file name (default distill_<preset>_<dataset>_ipc<N>_<device>)"
    )
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    prefix = "distill" if a.method == "dm" else f"distill_{a.method}"
    name = a.name or f"{prefix}_{a.preset}_{a.dataset}_ipc{a.ipc}_{a.device.split(':')[0]}"
    rows = []
    experts = None
    if a.method == "dance":  # train the shared experts once, timed on their own
        from hyperdm.distill.data import load_dataset
        from hyperdm.distill.experts import load_or_train_experts

        cache = Path(a.work) / "experts"
        shutil.rmtree(cache, ignore_errors=True)
        cfg = resolve(
            preset=a.preset,
            method="dance",
            matcher="mmd",
            dataset=a.dataset,
            ipc=a.ipc,
            overrides={"device": a.device, "data_root": a.data_root},
        )
        real = load_dataset(cfg.dataset, cfg.data_root)
        t0 = time.perf_counter()
        ex, _where = load_or_train_experts(
            real.train_images,
            real.train_labels,
            real.info,
            cfg.expert_config(),
            root=cache,
            device=a.device,
            progress=False,
        )
        spec = cfg.expert_config()
        experts = {
            "count": len(ex),
            "epochs": spec.epochs,
            "per_class": spec.per_class,
            "train_acc_last_epoch": [e.train_acc for e in ex],
            "seconds": time.perf_counter() - t0,
        }
        print(f"experts: {len(ex)} x {spec.epochs} epochs in {experts['seconds']:.1f} s", flush=True)
    for seed in a.seeds:
        for matcher in ("mmd", "hyperbolic"):
            cfg = resolve(
                preset=a.preset,
                method=a.method,
                matcher=matcher,
                dataset=a.dataset,
                ipc=a.ipc,
                overrides={
                    "iterations": a.iterations,
                    "eval_epochs": a.eval_epochs,
                    "eval_runs": a.eval_runs,
                    "device": a.device,
                    "seed": seed,
                    "data_root": a.data_root,
                    "expert_dir": str(Path(a.work) / "experts") if a.method == "dance" else NOT_GIVEN,
                },
            )
            out = Path(a.work) / f"{a.method}-{matcher}-seed{seed}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            m = distill(cfg, str(out), progress=False)
            wall = time.perf_counter() - t0
            final = m["evals"][-1]["ConvNet"] if m["evals"] else None
            row = {
                "matcher": matcher,
                "seed": seed,
                "k": cfg.matcher.k if matcher == "hyperbolic" else None,
                "scale": cfg.matcher.scale if matcher == "hyperbolic" else None,
                "lr_img": cfg.lr_img,
                "iterations": cfg.iterations,
                "batch_real": cfg.batch_real,
                "eval_epochs": cfg.eval.epochs,
                "eval_runs": cfg.eval.runs,
                "accs": final["accs"] if final else None,
                "mean": final["mean"] if final else None,
                "std": final["std"] if final else None,
                "evals": m["evals"],
                "distill_seconds": m["distill_seconds"],
                "images_per_second": m["images_per_second"],
                "wall_seconds_with_eval": wall,
                "loss_per_class_first": m["loss_per_class"][:3],
                "loss_per_class_last": m["loss_per_class"][-3:],
                "storage": m.get("storage"),
                "calibration_loss_first_last": [m["calibration_loss"][0], m["calibration_loss"][-1]]
                if m.get("calibration_loss")
                else None,
            }
            rows.append(row)
            acc = f"{100 * row['mean']:.2f} +- {100 * row['std']:.2f} %" if final else "n/a"
            print(
                f"seed {seed} {matcher:>10}: ConvNet {acc}  distill {row['distill_seconds']:.1f} s "
                f"({row['images_per_second']:.0f} img/s)  total {wall:.1f} s",
                flush=True,
            )
    save(
        name,
        {
            "benchmark": "bench_distill",
            "method": a.method,
            "preset": a.preset,
            "dataset": a.dataset,
            "ipc": a.ipc,
            **machine(a.device),
            "experts": experts,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
