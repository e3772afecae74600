"""Dance with HDD through the toolkit: cached experts, middle encoders, calibration, 2x2 multi-formation.

Dance's loop calls ``matcher(real_features, synthetic_features)`` per class, under an encoder
interpolated between an expert's initial and trained weights, at the place of DM's MMD line;
``--matcher mmd`` is Dance, ``--matcher hyperbolic`` is Dance with HDD. The experts are trained on
the first run and cached (``--expert-dir``, default ``~/.cache/hyperdm/experts``); later runs on
the same data and expert settings reuse them, whatever the matcher or seed.

    python examples/dance_hdd.py                                  # cpu preset, Fashion-MNIST IPC 10
    python examples/dance_hdd.py --iterations 5 --eval-epochs 5 --out runs/dance-quick
"""

from __future__ import annotations

import argparse
import logging

from hyperdm.distill import distill, resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matcher", choices=["mmd", "hyperbolic"], default="hyperbolic")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--eval-epochs", type=int, default=None)
    ap.add_argument("--experts", type=int, default=None, help="number of experts (cpu preset: 4)")
    ap.add_argument("--expert-epochs", type=int, default=None, help="training epochs per expert (cpu preset: 4)")
    ap.add_argument("--expert-dir", default=None, help="expert cache root")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default="runs/example-dance-hdd")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = resolve(
        preset="cpu",
        method="dance",
        matcher=a.matcher,
        dataset="fashion-mnist",
        ipc=a.ipc,
        overrides={
            "iterations": a.iterations,
            "eval_epochs": a.eval_epochs,
            "experts": a.experts,
            "expert_epochs": a.expert_epochs,
            "expert_dir": a.expert_dir,
            "data_root": a.data_root,
        },
    )
    dance = cfg.dance  # the Dance section (None for the other methods)
    assert dance is not None
    print(
        f"Dance settings: {dance.experts.count} experts x {dance.experts.epochs} epochs, "
        f"multi-formation {cfg.partition}x{cfg.partition}, "
        f"{dance.iter_calib} calibration pass(es) per iteration, lr_img {cfg.lr_img} (pixel units); "
        f"k={cfg.matcher.k} (geoopt's, curvature -1/k), lambda={cfg.matcher.scale}"
    )
    metrics = distill(cfg, a.out, progress=False)
    acc = metrics["experts"]["train_acc"]
    accs = ", ".join(f"{100 * v:.1f}%" for v in acc)
    print(f"experts (last-epoch training accuracy): {accs} in {metrics['experts']['dir']}")
    for e in metrics["evals"]:
        r = e["ConvNet"]
        print(
            f"iteration {e['iteration']}: ConvNet {100 * r['mean']:.2f} +- {100 * r['std']:.2f} % "
            f"(the {cfg.ipc * cfg.partition**2} expanded images per class)"
        )
    print(f"artifacts in {a.out}")


if __name__ == "__main__":
    main()
