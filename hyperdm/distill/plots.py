"""Figures of a run: real and synthetic features on the Poincare disk, and the loss curve (matplotlib)."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..lorentz import centroid, expmap0, to_poincare
from .artifacts import atomic_write_bytes
from .data import RealData
from .models import seeded_network
from .seeding import Stream, derive_seed

__all__ = ["poincare_coordinates", "plot_poincare", "plot_loss"]

log = logging.getLogger(__name__)


def poincare_coordinates(
    features: Sequence[Tensor], *, k: float = 1.0, max_norm: float | None = 10.0
) -> tuple[list[Tensor], list[Tensor]]:
    """Map groups of Euclidean features ``[N_i, D]`` to a 2-D view of the Poincare ball.

    Each group goes to the hyperboloid (``expmap0`` with the run's clamp), gets its Law centroid,
    and everything is sent to the unit Poincare ball (``to_poincare``), then
    projected orthogonally onto the plane of the two leading principal directions of all ball
    points. An orthogonal projection through the origin never leaves the disk, so the picture
    is a faithful (if flattened) view: distance to the centre is at most the true ball radius.
    Returns ``(points, centroids)`` in float64, scaled to the unit disk.
    """
    zs = [expmap0(f.double(), k=k, max_norm=max_norm) for f in features]
    cents = [centroid(z, k=k, dim=0) for z in zs]
    ps = [to_poincare(z, k=k) for z in zs]
    cs = [to_poincare(c, k=k) for c in cents]
    allp = torch.cat(ps)
    _, _, v = torch.linalg.svd(allp - allp.mean(0), full_matrices=False)
    basis = v[:2].T  # [D, 2], orthonormal columns
    return [p @ basis for p in ps], [c @ basis for c in cs]


def plot_poincare(
    real: RealData,
    images: Tensor,
    labels: Tensor,
    path: str | os.PathLike,
    *,
    k: float = 1.0,
    max_norm: float | None = 10.0,
    model: str = "ConvNet",
    classes: int = 3,
    real_per_class: int = 200,
    seed: int = 0,
) -> None:
    """Save ``poincare.png``: real (dots) and synthetic (stars) features of ``classes`` classes
    under one random ``model``, with each group's centroid, on the Poincare disk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = real.info
    net = seeded_network(
        model, info.channels, info.num_classes, info.im_size, seed=derive_seed(seed, Stream.POINCARE_NET)
    ).eval()
    gen = torch.Generator().manual_seed(derive_seed(seed, Stream.POINCARE_SAMPLE))
    groups, kinds = [], []
    shown = list(range(min(classes, info.num_classes)))
    with torch.no_grad():
        for c in shown:
            idx = torch.nonzero(real.train_labels == c).squeeze(1)
            idx = idx[torch.randperm(idx.numel(), generator=gen)[:real_per_class]]
            groups.append(net.embed(real.train_images[idx]))
            kinds.append(("real", c))
            groups.append(net.embed(images[labels == c].float()))
            kinds.append(("synthetic", c))
    pts, cents = poincare_coordinates(groups, k=k, max_norm=max_norm)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="black", lw=1))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (kind, c), p, m in zip(kinds, pts, cents, strict=True):
        col = colors[c % len(colors)]
        name = info.class_names[c] if c < len(info.class_names) else str(c)
        if kind == "real":
            ax.scatter(p[:, 0], p[:, 1], s=6, alpha=0.35, color=col, label=f"{name} real", zorder=1)
            # the real centroid: a large open ring drawn on top, so that a synthetic centroid under it stays visible
            ax.scatter(m[0], m[1], s=260, marker="o", facecolors="none", edgecolors=col, linewidths=2.2, zorder=4)
        else:
            ax.scatter(
                p[:, 0], p[:, 1], s=60, marker="*", color=col, edgecolors="black", label=f"{name} synthetic", zorder=2
            )
            ax.scatter(m[0], m[1], s=70, marker="D", color=col, edgecolors="black", zorder=3)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    clamp = "no clamp" if max_norm is None else f"clamp {max_norm:g}"
    ax.set_title(
        f"Poincare disk (k={k:.4g}, {clamp}): dots real and stars synthetic features;\n"
        "open rings the real centroids, diamonds the synthetic centroids",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)


def plot_loss(metrics: dict[str, Any], path: str | os.PathLike) -> None:
    """Save the per-class loss curve of a run (and its evaluations, if any) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = metrics.get("loss_per_class") or []
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(loss) + 1), loss, lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("matching loss per class")
    evals = metrics.get("evals") or []
    if evals:
        ax2 = ax.twinx()
        for arch in [a for a in evals[0] if a != "iteration"]:
            ax2.plot(
                [e["iteration"] for e in evals], [100 * e[arch]["mean"] for e in evals], "o-", label=f"{arch} acc %"
            )
        ax2.set_ylabel("test accuracy (%)")
        ax2.legend(fontsize=8)
    _save(fig, path)


def _save(fig: Any, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
