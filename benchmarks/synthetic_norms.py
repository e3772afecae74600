"""Where distilled images' features sit, against the real ones': the feature norms and pixel spread of the
synthetic images in run directories (or checkpoints), per class, under fresh random ConvNets.

For each run: the synthetic images of its ``checkpoint.pt`` (or ``synset.pt``), and for each of ``--nets``
random networks (seeds 100, 101, ...) and each class, the median ``|embed(x)|`` of the synthetic images over
the median of ``--real`` real training images of that class; and the synthetic images' pixel standard
deviation (normalised data, so the real images' is about 1). Read with ``torch.load(weights_only=True)``.

    python benchmarks/synthetic_norms.py benchmarks/work/convergence/dm-radius-{1,2,4,8}-ipc1-seed0

Results: ``benchmarks/results/synthetic_norms_<dataset>.json`` (one row per run directory, replaced when the
same directory is measured again).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from _results import RESULTS, machine, save
from hyperdm.distill.data import load_dataset
from hyperdm.distill.models import get_network


def measure(path: Path, real: torch.Tensor, labels: torch.Tensor, nets: int, per_class: int) -> dict[str, Any]:
    """The norm ratios and the pixel spread of the synthetic images saved in the run directory ``path``."""
    for name in ("checkpoint.pt", "synset.pt"):
        if (path / name).is_file():
            saved = torch.load(path / name, weights_only=True)
            break
    else:
        raise SystemExit(f"{path}: no checkpoint.pt or synset.pt; pass a run directory of hyperdm distill.")
    images, syn_labels = saved["images"].float(), saved["labels"]
    classes = sorted(int(c) for c in syn_labels.unique())
    shape = tuple(images.shape[1:])
    ratios = []
    for s in range(nets):
        torch.manual_seed(100 + s)
        net = get_network("ConvNet", shape[0], len(classes), (shape[1], shape[2])).eval()
        with torch.no_grad():
            for c in classes:
                nr = net.embed(real[labels == c][:per_class]).norm(dim=1).median()
                ns = net.embed(images[syn_labels == c]).norm(dim=1).median()
                ratios.append(float(ns / nr))
    return {
        "run": str(path),
        "iteration": saved.get("iteration"),
        "norm_ratio_median": statistics.median(ratios),
        "norm_ratio_min": min(ratios),
        "norm_ratio_max": max(ratios),
        "syn_pixel_std": float(images.std()),
        "real_pixel_std": float(real[: per_class * len(classes)].std()),
        "nets": nets,
        "real_per_class": per_class,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run directories of hyperdm distill")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--nets", type=int, default=5)
    ap.add_argument("--real", type=int, default=256, help="real images per class")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.nets < 1 or a.real < 1:
        ap.error("--nets and --real must be at least 1")
    torch.set_num_threads(a.threads)
    data = load_dataset(a.dataset, a.data_root)
    out = RESULTS / f"synthetic_norms_{a.dataset}.json"
    rows = {r["run"]: r for r in (json.loads(out.read_text())["rows"] if out.is_file() else [])}
    for path in a.runs:
        row = measure(path, data.train_images, data.train_labels, a.nets, a.real)
        rows[row["run"]] = row
        print(
            f"{path}: iteration {row['iteration']}, synthetic / real median feature norm "
            f"{row['norm_ratio_median']:.3f} "
            f"({row['norm_ratio_min']:.3f}-{row['norm_ratio_max']:.3f}), pixel std {row['syn_pixel_std']:.3f} "
            f"(real {row['real_pixel_std']:.3f})"
        )
    save(
        out.stem, {"benchmark": "synthetic_norms", "dataset": a.dataset, **machine("cpu"), "rows": list(rows.values())}
    )


if __name__ == "__main__":
    main()
