"""Figures from the saved results: speed bars, accuracy curves (HDD vs MMD, pruning), the Poincare disk.

Each figure is drawn only from numbers in ``benchmarks/results/*.json`` (or, for the disk, from a
run directory you name), written as PNG next to them, and skipped with a message when its input
is missing. Look at every PNG before committing it.

    python benchmarks/plots.py                                              # every figure whose input exists
    python benchmarks/plots.py --poincare-run runs/reproduce/dm-hyperbolic-ipc10-seed0
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from _results import RESULTS


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def save(fig: Any, name: str) -> None:
    fig.savefig(RESULTS / name, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {RESULTS / name}")


def speed_bars() -> None:
    """One DM iteration (bench_loop) and the matching term alone (bench_matcher), per variant, as measured."""
    loop, matcher = load("loop_cpu.json"), load("matcher_cpu.json")
    if loop is None and matcher is None:
        print("speed bars: no loop_cpu.json / matcher_cpu.json; skipped")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if loop is not None:
        names = list(loop["rows"])
        ms = [1000 * loop["rows"][v]["median_seconds"] for v in names]
        bars = axes[0].barh(names, ms, color=["C0" if "mmd" in v else "C1" for v in names])
        axes[0].bar_label(bars, fmt="%.0f", fontsize=8)
        axes[0].invert_yaxis()
        axes[0].margins(x=0.12)
        axes[0].set_xlabel("ms per DM iteration (median)")
        axes[0].set_title(
            f"one DM iteration, IPC {loop['ipc']}, {loop['batch_real']} real/class\n"
            f"{loop['device_name']}, {loop['threads']} threads",
            fontsize=9,
        )
    if matcher is not None:
        rows = [r for r in matcher["results"] if r["dtype"] == "float32" and r["M"] == 10]
        names = [r["variant"] for r in rows]
        bars = axes[1].barh(names, [r["median_ms"] for r in rows], color=["C0" if v == "mmd" else "C1" for v in names])
        axes[1].bar_label(bars, fmt="%.1f", fontsize=8)
        axes[1].invert_yaxis()
        axes[1].margins(x=0.12)
        axes[1].set_xlabel("ms per forward + backward (median)")
        m = matcher["machine"]
        axes[1].set_title(
            f"matching term alone, float32, C=10 N=256 M=10 D=2048\n{m['device_name']}, "
            f"{m['torch_num_threads']} threads",
            fontsize=9,
        )
    fig.tight_layout()
    save(fig, "speed_cpu.png")


def curves(name: str) -> None:
    """Accuracy vs iteration from a pruning-study results file: MMD vs HDD at 100 %, and HDD per kept fraction."""
    res = load(name)
    if res is None:
        print(f"accuracy curves: no {name}; skipped")
        return
    save(curve_figure(res), name.replace(".json", ".png"))


def curve_figure(res: dict[str, Any]) -> Any:
    """The three-panel figure of :func:`curves` for a loaded pruning-study results dict.

    Left: accuracy vs iteration, HDD against the MMD line at 100 %. Middle: HDD per kept fraction,
    colour by score, line style by fraction. Right: final accuracy vs kept fraction, one line per
    score and seed, ending at that seed's unpruned HDD row; the MMD line is a grey dashed line.
    """
    rows = sorted(res["rows"], key=lambda r: (r["matcher"], -r["keep"], r["score"], r["seed"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colour = {"radius": "tab:red", "centroid": "tab:orange", "random": "tab:blue", "none": "black"}
    keeps = sorted({r["keep"] for r in rows if r["keep"] < 1}, reverse=True)
    dash = {k: ["-", "--", ":", "-."][i % 4] for i, k in enumerate(keeps)}
    for r in rows:
        its = [e["iteration"] for e in r["evals"]]
        acc = [100 * e["ConvNet"]["mean"] for e in r["evals"]]
        if r["keep"] == 1:
            axes[0].plot(
                its, acc, "o-", label=f"{'DM + HDD' if r['matcher'] == 'hyperbolic' else 'DM (MMD)'}, seed {r['seed']}"
            )
        if r["matcher"] == "hyperbolic":
            label = "100 %" if r["keep"] == 1 else f"{100 * r['keep']:g} % {r['score']}"
            axes[1].plot(
                its,
                acc,
                dash.get(r["keep"], "-"),
                color=colour[r["score"]],
                marker="o",
                ms=3,
                label=f"{label}, seed {r['seed']}",
            )
    final = {(r["matcher"], r["score"], r["keep"], r["seed"]): 100 * r["evals"][-1]["ConvNet"]["mean"] for r in rows}
    for score in ("radius", "centroid", "random"):  # one line per score and seed, from that seed's 100 % row
        for i, seed in enumerate(sorted({sd for (m, s, _k, sd) in final if m == "hyperbolic" and s == score})):
            pts = [(k, a) for (m, s, k, sd), a in final.items() if m == "hyperbolic" and s == score and sd == seed]
            if ("hyperbolic", "none", 1.0, seed) in final:
                pts.append((1.0, final[("hyperbolic", "none", 1.0, seed)]))
            xs, ys = zip(*sorted(pts), strict=True)
            axes[2].plot(
                [100 * x for x in xs],
                ys,
                ["o-", "s--", "^:", "v-."][i % 4],
                color=colour[score],
                label=f"{score}, seed {seed}",
            )
    for (m, _s, _k, seed), a in final.items():
        if m == "mmd":
            axes[2].axhline(a, color="gray", ls="--", lw=1, label=f"MMD line, 100 %, seed {seed}")
    axes[2].set_xscale("log")
    ticks = sorted({100 * k for k in keeps} | {100.0})
    axes[2].set_xticks(ticks, [f"{t:g}" for t in ticks])
    axes[2].minorticks_off()
    axes[2].set_xlabel("real data kept (%)")
    axes[2].set_title("final accuracy by kept fraction (per score and seed)", fontsize=9)
    axes[0].set_title(f"{res['dataset']} IPC {res['ipc']}, {res['preset']} preset: HDD vs the MMD line", fontsize=9)
    axes[1].set_title("DM + HDD on a pruned real set (kept fraction, score)", fontsize=9)
    for ax in axes[:2]:
        ax.set_xlabel("distillation iteration")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    lo, hi = axes[1].get_ylim()  # room under the curves for a two-column legend
    axes[1].set_ylim(lo - 0.45 * (hi - lo), hi)
    axes[1].legend(fontsize=6, ncol=2, loc="lower center")
    axes[0].set_ylabel("ConvNet test accuracy (%), mean of the evaluation runs")
    fig.tight_layout()
    return fig


def poincare(run: str | None) -> None:
    """The Poincare disk of a finished run (real vs synthetic features and centroids), via hyperdm.distill.plots."""
    if not run:
        print("poincare disk: pass --poincare-run <run directory>; skipped")
        return
    from hyperdm.distill.artifacts import load_synthetic
    from hyperdm.distill.config import run_setting
    from hyperdm.distill.data import load_dataset
    from hyperdm.distill.plots import plot_poincare
    from hyperdm.distill.synset import expand

    images, labels, meta = load_synthetic(run)
    cfg = meta["config"]
    images, labels = expand(images, labels, int(meta.get("partition", 1)))
    real = load_dataset(cfg["dataset"], cfg.get("data_root"))
    out = RESULTS / f"poincare_{cfg['dataset']}_ipc{cfg['ipc']}_{cfg['method']}-{run_setting(cfg, 'matcher.kind')}.png"
    plot_poincare(
        real,
        images,
        labels,
        out,
        k=run_setting(cfg, "matcher.k"),
        max_norm=run_setting(cfg, "matcher.max_norm"),
        model=cfg["model"],
        seed=cfg["seed"],
    )
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pruning", default="pruning_fashion-mnist_ipc10_cpu_cpu.json", help="pruning-study results file")
    ap.add_argument("--poincare-run", default=None, help="a finished run directory for the Poincare-disk figure")
    a = ap.parse_args()
    speed_bars()
    curves(a.pruning)
    poincare(a.poincare_run)


if __name__ == "__main__":
    main()
