"""IDM with HDD through the toolkit: the model queue, 2x2 partition and expansion, the CE term.

IDM's loop calls ``matcher(real_features, synthetic_features)`` per class at the place of DM's
MMD line; ``--matcher mmd`` is IDM, ``--matcher hyperbolic`` is IDM with HDD.

    python examples/idm_hdd.py                                  # cpu preset, Fashion-MNIST IPC 10
    python examples/idm_hdd.py --iterations 5 --eval-epochs 5 --out runs/idm-quick
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
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default="runs/example-idm-hdd")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = resolve(
        preset="cpu",
        method="idm",
        matcher=a.matcher,
        dataset="fashion-mnist",
        ipc=a.ipc,
        overrides={"iterations": a.iterations, "eval_epochs": a.eval_epochs, "data_root": a.data_root},
    )
    idm = cfg.idm  # the IDM section (None for the other methods)
    assert idm is not None
    print(
        f"IDM settings: partition {cfg.partition}x{cfg.partition}, queue of up to {idm.net_num} networks "
        f"(+1 every {idm.net_generate_interval} iterations), ce_weight {idm.ce_weight}; "
        f"k={cfg.matcher.k} (geoopt's, curvature -1/k), lambda={cfg.matcher.scale}, lr_img={cfg.lr_img}"
    )
    metrics = distill(cfg, a.out, progress=False)
    for e in metrics["evals"]:
        r = e["ConvNet"]
        print(
            f"iteration {e['iteration']}: ConvNet {100 * r['mean']:.2f} +- {100 * r['std']:.2f} % "
            f"(the {cfg.ipc * cfg.partition**2} expanded images per class)"
        )
    print(f"artifacts in {a.out}")


if __name__ == "__main__":
    main()
