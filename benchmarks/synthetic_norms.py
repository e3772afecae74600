"""Where distilled images' features sit, against the real ones': the feature norms and pixel spread of the
synthetic images in run directories (or checkpoints), per class, under fresh random ConvNets.

For each run: the synthetic images of its ``checkpoint.pt`` (or ``synset.pt``), and for each of ``--nets``
random networks (seeds 100, 101, ...) and each class, the median ``|embed(x)|`` of the synthetic images over
the median of ``--real`` real training images of that class; and the synthetic images' pixel standard
deviation (normalised data, so the real images' is about 1). Read with ``torch.load(weights_only=True)``.

    python benchmarks/synthetic_norms.py runs/dm-hyperbolic-fashion-mnist-ipc1-seed0

With ``--centroids R ...`` (radii, or ``exact`` for the exact map of the raw features) it measures instead where
the real Law centroid of a class sits, the target of a single synthetic point at IPC 1: under each random network
the real features are scaled so that their median radius ``|v|/sqrt(k)`` is ``R`` (as ``radius=R`` calibrates),
and the Law centroid's radius (float64) is compared with the median radius of the points, and the Euclidean mean's
norm (the MMD line's target) with the median norm.

    python benchmarks/synthetic_norms.py --centroids 1 2 4 8 exact

Results: ``benchmarks/results/synthetic_norms_<dataset>.json`` (one row per run directory, replaced when the
same directory is measured again; the centroid rows under ``centroids``, one per radius).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from _results import RESULTS, machine, save
from hyperdm import lorentz
from hyperdm.distill.data import load_dataset
from hyperdm.distill.models import Embedder, get_network
from hyperdm.distill.settings import positive_float


def random_nets(shape: tuple[int, ...], num_classes: int, nets: int) -> Iterator[Embedder]:
    """The ``nets`` fresh random ConvNets every measurement uses (seeds 100, 101, ...), in eval mode, for images of
    ``shape`` ``(C, H, W)``."""
    for s in range(nets):
        torch.manual_seed(100 + s)
        yield get_network("ConvNet", shape[0], num_classes, (shape[1], shape[2])).eval()


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
    for net in random_nets(shape, len(classes), nets):
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


def centroid_shrinkage(v: torch.Tensor, alpha: float) -> tuple[float, float]:
    """For the features ``v`` ``[N, D]`` scaled by ``alpha`` and mapped to the hyperboloid (``k`` 1, exact map):
    the radius of their Law centroid (:func:`hyperdm.lorentz.feature_centroid`, float64) over their median radius,
    and the norm of their Euclidean mean over their median norm."""
    v = v.double()
    n = v.norm(dim=1)
    law_radius = lorentz.dist0(lorentz.feature_centroid(alpha * v, k=1.0, max_norm=None), k=1.0)
    return float(law_radius / (alpha * n).median()), float(v.mean(dim=0).norm() / n.median())


def measure_centroids(
    radius: float | None, real: torch.Tensor, labels: torch.Tensor, nets: int, per_class: int
) -> dict[str, Any]:
    """The Law centroid's radius and the Euclidean mean's norm relative to the points', per class and network,
    with the real features of each network scaled so that their median radius is ``radius`` (None: unscaled)."""
    classes = sorted(int(c) for c in labels.unique())
    shape = tuple(real.shape[1:])
    law, mean, medians = [], [], []
    for net in random_nets(shape, len(classes), nets):
        with torch.no_grad():
            feats = {c: net.embed(real[labels == c][:per_class]).double() for c in classes}
        median = float(torch.cat(list(feats.values())).norm(dim=1).median())
        medians.append(median)
        alpha = 1.0 if radius is None else radius / median
        for c in classes:
            a, b = centroid_shrinkage(feats[c], alpha)
            law.append(a)
            mean.append(b)
    return {
        "radius": "exact" if radius is None else radius,
        "law_centroid_over_median_radius": statistics.median(law),
        "law_min": min(law),
        "law_max": max(law),
        "euclidean_mean_over_median_norm": statistics.median(mean),
        "median_feature_norm": statistics.median(medians),
        "nets": nets,
        "real_per_class": per_class,
    }


def _radius_arg(text: str) -> float | None:
    """A radius (a finite number > 0), or ``exact``: None, the raw features."""
    return None if text == "exact" else positive_float(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="run directories of hyperdm distill")
    ap.add_argument(
        "--centroids",
        nargs="+",
        type=_radius_arg,
        metavar="R",
        help="measure the real Law centroid's radius at these median radii ('exact': the raw features)",
    )
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--nets", type=int, default=5)
    ap.add_argument("--real", type=int, default=256, help="real images per class")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.nets < 1 or a.real < 1:
        ap.error("--nets and --real must be at least 1")
    if not a.runs and not a.centroids:
        ap.error("pass run directories, or --centroids R ...")
    torch.set_num_threads(a.threads)
    data = load_dataset(a.dataset, a.data_root)
    out = RESULTS / f"synthetic_norms_{a.dataset}.json"
    saved = json.loads(out.read_text()) if out.is_file() else {}
    rows = {r["run"]: r for r in saved.get("rows", [])}
    centroids = {str(r["radius"]): r for r in saved.get("centroids", [])}
    for radius in a.centroids or []:
        c = measure_centroids(radius, data.train_images, data.train_labels, a.nets, a.real)
        centroids[str(c["radius"])] = c
        print(
            f"median radius {c['radius']}: Law centroid / median point radius "
            f"{c['law_centroid_over_median_radius']:.3f} ({c['law_min']:.3f}-{c['law_max']:.3f}); "
            f"Euclidean mean / median norm {c['euclidean_mean_over_median_norm']:.3f}"
        )
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
        out.stem,
        {
            "benchmark": "synthetic_norms",
            "dataset": a.dataset,
            **machine("cpu"),
            "rows": list(rows.values()),
            "centroids": list(centroids.values()),
        },
    )


if __name__ == "__main__":
    main()
